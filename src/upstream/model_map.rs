//! `upstreams.<name>.model_map` on the way out: the provider's name for the client's
//! model, in the body's `model` or, on Gemini's own API, in the path. (On the way back
//! the answer names the client's model again: [`crate::response::model_name`].)

use crate::error::{ErrorCode, GatewayError};
use bytes::Bytes;
use std::collections::HashMap;

/// `body` (a JSON object that names a model) with `model` in place of its model.
pub fn body_with_model(body: &[u8], model: &str) -> Result<Bytes, GatewayError> {
    let failed = |detail: String| {
        GatewayError::new(ErrorCode::Internal, "The model could not be renamed.").detail(detail)
    };
    let mut v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| failed(e.to_string()))?;
    match v.get_mut("model") {
        Some(m @ serde_json::Value::String(_)) => *m = serde_json::Value::from(model),
        _ => return Err(failed("no model in the body".into())),
    }
    serde_json::to_vec(&v)
        .map(Bytes::from)
        .map_err(|e| failed(e.to_string()))
}

/// A Gemini path (`…/models/<model>:<method>…`) naming the provider's model when `map`
/// renames the one it names; `None` when it does not.
pub fn gemini_path_for(path: &str, map: &HashMap<String, String>) -> Option<String> {
    let at = path.find("/models/")? + "/models/".len();
    let rest = &path[at..];
    let end = rest.find(':')?;
    let to = map.get(&rest[..end])?;
    Some(format!("{}{to}{}", &path[..at], &rest[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_names_the_provider_model_and_keeps_the_rest_in_order() {
        let body =
            br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
        let out = body_with_model(body, "my-deployment").unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"model":"my-deployment","messages":[{"role":"user","content":"hi"}],"stream":true}"#
        );
        assert!(body_with_model(br#"{"messages":[]}"#, "x").is_err());
        assert!(body_with_model(b"not json", "x").is_err());
    }

    #[test]
    fn the_gemini_path_names_the_provider_model() {
        let map = HashMap::from([("fast".to_string(), "gemini-2.0-flash".to_string())]);
        assert_eq!(
            gemini_path_for("/v1beta/models/fast:streamGenerateContent?alt=sse", &map).as_deref(),
            Some("/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse")
        );
        assert_eq!(
            gemini_path_for("/v1beta/models/other:generateContent", &map),
            None
        );
        assert_eq!(gemini_path_for("/v1beta/models", &map), None);
    }
}
