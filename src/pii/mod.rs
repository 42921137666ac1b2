//! Personal data in prompts (`routes[].pii`, `sites[].pii`): found in the text parts
//! of a request body and either replaced by per-request placeholders (`[EMAIL_1]`,
//! restored in the answer) or refused with 422 `pii_detected`.
//!
//! [`detect`] finds values, [`mapping`] holds one request's placeholders, [`body`]
//! knows where the text is in each provider's request shape, and [`stream`] restores
//! placeholders in streamed answers. See README "Private prompts (PII)".

pub mod body;
pub mod detect;
pub mod mapping;
pub mod policy;
pub mod stream;

use crate::error::{ErrorCode, GatewayError};
use crate::upstream::kind::UpstreamKind;
pub use mapping::{Counts, Pseudonyms};
pub use policy::{PiiMode, PiiPolicy};
use serde_json::{Map, Value};

/// What a policy did to a request body.
#[derive(Debug)]
pub enum Outcome {
    /// Values were replaced (the map is never empty).
    Replaced(Pseudonyms),
    /// `block` mode found these kinds.
    Found(Counts),
}

/// Apply `policy` to the text parts of a parsed body. `raw` is the body as received
/// (placeholder-shaped text in it is never issued). Returns `None` when nothing was
/// found; `obj` is rewritten only for [`Outcome::Replaced`].
pub fn apply(
    policy: &PiiPolicy,
    kind: UpstreamKind,
    obj: &mut Map<String, Value>,
    raw: &[u8],
) -> Option<Outcome> {
    let det = &policy.detector;
    match policy.mode {
        PiiMode::Block => {
            let mut counts = Counts::default();
            body::for_each_text(kind, obj, &mut |s| {
                Pseudonyms::count_only(det, s, &mut counts)
            });
            (!counts.is_empty()).then_some(Outcome::Found(counts))
        }
        PiiMode::Pseudonymize => {
            let mut map = Pseudonyms::for_request(&String::from_utf8_lossy(raw));
            body::for_each_text(kind, obj, &mut |s| map.reserve(s));
            body::for_each_text(kind, obj, &mut |s| {
                if let Some(new) = map.pseudonymize(det, s) {
                    *s = new;
                }
            });
            (!map.is_empty()).then_some(Outcome::Replaced(map))
        }
    }
}

/// The 422 for `block` mode: the kinds found, never the values.
pub fn refusal(found: &Counts) -> GatewayError {
    let kinds = found.kinds();
    GatewayError::new(
        ErrorCode::PiiDetected,
        format!(
            "The request contains personal data ({}) and this route refuses it.",
            kinds.join(", ")
        ),
    )
    .extra("kinds", kinds.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(mode: PiiMode) -> PiiPolicy {
        PiiPolicy {
            mode,
            detector: detect::Detector::new(&detect::BUILTIN_KINDS, &[]).unwrap(),
        }
    }

    #[test]
    fn pseudonymize_rewrites_text_parts_only() {
        let mut obj =
            json!({"model": "a@b.io", "messages": [{"role": "user", "content": "mail a@b.io"}]})
                .as_object()
                .cloned()
                .unwrap();
        let out = apply(
            &policy(PiiMode::Pseudonymize),
            UpstreamKind::OpenAi,
            &mut obj,
            b"",
        );
        let Some(Outcome::Replaced(map)) = out else {
            panic!("expected replacement")
        };
        assert_eq!(obj["messages"][0]["content"], "mail [EMAIL_1]");
        assert_eq!(obj["model"], "a@b.io");
        assert_eq!(map.restore("[EMAIL_1]"), "a@b.io");
    }

    #[test]
    fn escaped_placeholders_in_the_body_are_reserved() {
        let raw = br#"{"messages":[{"role":"user","content":"\u005bEMAIL_1] a@b.io"}]}"#;
        let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(raw) else {
            panic!()
        };
        let Some(Outcome::Replaced(map)) = apply(
            &policy(PiiMode::Pseudonymize),
            UpstreamKind::OpenAi,
            &mut obj,
            raw,
        ) else {
            panic!("expected replacement")
        };
        assert_eq!(obj["messages"][0]["content"], "[EMAIL_1] [EMAIL_2]");
        assert_eq!(map.restore("[EMAIL_1] [EMAIL_2]"), "[EMAIL_1] a@b.io");
    }

    #[test]
    fn block_lists_kinds_not_values() {
        let mut obj = json!({"contents": [{"parts": [{"text": "a@b.io 4111 1111 1111 1111"}]}]})
            .as_object()
            .cloned()
            .unwrap();
        let Some(Outcome::Found(c)) =
            apply(&policy(PiiMode::Block), UpstreamKind::Gemini, &mut obj, b"")
        else {
            panic!("expected findings")
        };
        let e = refusal(&c);
        assert_eq!(e.code.status(), 422);
        let body = String::from_utf8(e.body("r")).unwrap();
        assert!(body.contains(r#""kinds":["email","card"]"#), "{body}");
        assert!(!body.contains("a@b.io") && !body.contains("4111"), "{body}");
        assert!(apply(
            &policy(PiiMode::Block),
            UpstreamKind::Gemini,
            &mut Map::new(),
            b""
        )
        .is_none());
    }
}
