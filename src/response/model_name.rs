//! Answers name the model the client asked for (SPEC §8.2): when `model_map` sent the
//! request under the provider's name, the fields where providers name the model that
//! answered are given the client's name back.

use serde_json::Value;

/// Where answers name their model: OpenAI and Anthropic bodies and OpenAI stream chunks
/// (`model`), Gemini (`modelVersion`), Anthropic's `message_start` (`message.model`),
/// OpenAI Responses stream events (`response.model`).
const PLACES: [&[&str]; 4] = [
    &["model"],
    &["modelVersion"],
    &["message", "model"],
    &["response", "model"],
];

/// Name `client` wherever `v` names a model; whether anything changed.
pub fn rename(v: &mut Value, client: &str) -> bool {
    let mut changed = false;
    for place in PLACES {
        let Some((last, parents)) = place.split_last() else {
            continue;
        };
        let mut at = Some(&mut *v);
        for key in parents {
            at = at.and_then(|x| x.get_mut(*key));
        }
        if let Some(Value::String(name)) = at.and_then(|x| x.get_mut(*last)) {
            if name != client {
                *name = client.to_string();
                changed = true;
            }
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_place_a_provider_names_its_model_gets_the_clients_name() {
        let mut chat = json!({"id": "c", "model": "my-deployment", "choices": []});
        assert!(rename(&mut chat, "gpt-4o"));
        assert_eq!(chat["model"], "gpt-4o");
        let mut start =
            json!({"type": "message_start", "message": {"model": "claude-x", "usage": {}}});
        assert!(rename(&mut start, "claude"));
        assert_eq!(start["message"]["model"], "claude");
        let mut gemini = json!({"candidates": [], "modelVersion": "gemini-2.0-flash-001"});
        assert!(rename(&mut gemini, "fast"));
        assert_eq!(gemini["modelVersion"], "fast");
        let mut created = json!({"type": "response.created", "response": {"model": "d"}});
        assert!(rename(&mut created, "gpt-4o"));
        assert_eq!(created["response"]["model"], "gpt-4o");
        let mut delta = json!({"type": "content_block_delta", "delta": {"text": "model"}});
        assert!(!rename(&mut delta, "gpt-4o"), "nothing names a model");
        let mut same = json!({"model": "gpt-4o"});
        assert!(!rename(&mut same, "gpt-4o"));
    }
}
