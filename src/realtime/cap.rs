//! A route's `max_tokens` in a Realtime session. A session's output limit is a session
//! setting (`session.max_output_tokens`; `max_response_output_tokens` in the beta
//! interface), `"inf"` by default, and each `response.create` may set its own; with
//! server-side turn detection the provider starts responses by itself, under the session's
//! setting. So on a capped route keygate sets the session's limit first (before the
//! client's 101: [`opening_update`]), takes the provider's answer to it out of the
//! client's stream ([`answer_to_opening`]), and clamps the limits in the client's
//! `session.update` and `response.create` events ([`client_event`]).

use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::borrow::Cow;

/// The `event_id` of keygate's own `session.update`: the provider names it in an error
/// about that event.
pub const EVENT_ID: &str = "keygate_max_tokens";

/// The names of an output limit, in a session or a response: the interface's and the
/// beta's. Both are clamped whichever the session speaks.
const FIELDS: [&str; 2] = ["max_output_tokens", "max_response_output_tokens"];

/// The cap a session on a capped route is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionCap {
    /// The route's `max_tokens`.
    pub cap: u64,
    /// A transcription session (`?intent=transcription`): it makes no responses and takes
    /// no `session.update` of a conversation's shape, so keygate sends it none, and
    /// refuses the client's events that would make it a conversation.
    pub transcription: bool,
}

/// The cap of a session whose handshake has `query`, on a route capped at `route_cap`.
/// `Err` when the query names `intent` more than once (it goes to the provider as it is,
/// and a provider reading another than keygate would run a conversation uncapped).
pub fn session_cap(
    route_cap: Option<u64>,
    query: &str,
) -> Result<Option<SessionCap>, &'static str> {
    let mut intents = form_urlencoded::parse(query.as_bytes()).filter(|(k, _)| k == "intent");
    let transcription = intents.next().is_some_and(|(_, v)| v == "transcription");
    if intents.next().is_some() {
        return Err("the query names intent more than once");
    }
    Ok(route_cap.map(|cap| SessionCap { cap, transcription }))
}

/// Does the session speak the beta interface? Asked for with the `OpenAI-Beta:
/// realtime=v1` header, or (browsers) the `openai-beta.realtime-v1` subprotocol offered
/// to the provider.
pub fn beta_names(header: Option<&http::HeaderValue>, offered: &[String]) -> bool {
    header
        .and_then(|b| b.to_str().ok())
        .is_some_and(|b| b.contains("realtime=v1"))
        || offered
            .iter()
            .any(|p| p.strip_prefix(super::BETA_SUBPROTOCOL) == Some("realtime-v1"))
}

/// keygate's first event to the provider on a capped route: the session's output limit,
/// named as the interface the client asked for names it (`OpenAI-Beta: realtime=v1`).
pub fn opening_update(cap: u64, beta: bool) -> String {
    let session = if beta {
        json!({"max_response_output_tokens": cap})
    } else {
        json!({"type": "realtime", "max_output_tokens": cap})
    };
    json!({"type": "session.update", "event_id": EVENT_ID, "session": session}).to_string()
}

/// What a provider event says about keygate's opening update: `Some(Ok(()))` for the
/// `session.updated` that answers it with the limit in force (not passed to the client,
/// which did not ask), `Some(Err(()))` for one without it (a provider that ignored the
/// field) or an error about the update (the session cannot be held to the cap), `None`
/// for any other event (passed as usual).
pub fn answer_to_opening(text: &str, cap: u64) -> Option<Result<(), ()>> {
    let v: Value = serde_json::from_str(text).ok()?;
    match v.get("type").and_then(Value::as_str)? {
        "session.updated" => {
            let session = v.get("session");
            let held = FIELDS.iter().any(|f| {
                session
                    .and_then(|s| s.get(*f))
                    .and_then(Value::as_u64)
                    .is_some_and(|n| n <= cap)
            });
            Some(if held { Ok(()) } else { Err(()) })
        }
        "error" if v.pointer("/error/event_id").and_then(Value::as_str) == Some(EVENT_ID) => {
            Some(Err(()))
        }
        _ => None,
    }
}

/// Does a provider event start a response (`response.created`)? In a session keygate
/// took for a transcription (on the client's word, its query) none should start: one
/// that does runs as a conversation under no limit keygate set. (A conversation's
/// responses are not judged by the limit they name: whether the provider names the
/// session's limit there, or `"inf"`, is not known here; the opening update's answer is
/// what shows the limit in force.)
pub fn starts_response(text: &str) -> bool {
    text.contains("response.created")
        && serde_json::from_str::<Value>(text)
            .is_ok_and(|v| v.get("type").and_then(Value::as_str) == Some("response.created"))
}

/// The one member keygate reads of every client event. Its other members are skipped
/// unread; a second `type` is refused (serde's duplicate-field check), so keygate and the
/// provider read the same kind.
#[derive(Deserialize)]
struct Kind<'a> {
    /// Borrowed from the text unless escaped (`borrow` on a `Cow` field).
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
}

/// The `type` of a client's text event, read without building the rest (an audio
/// append is mostly one long base64 string); `None` when it is not a JSON object with
/// exactly one `type` string.
pub fn event_kind(text: &str) -> Option<Cow<'_, str>> {
    crate::json::read_whole(text.as_bytes(), std::marker::PhantomData::<Kind>)
        .ok()
        .map(|k| k.kind)
}

/// A client's text event on a capped route, of kind `kind` ([`event_kind`]): `Ok(None)`
/// to pass it as it is, `Ok(Some)` with the event rewritten (a limit over the cap,
/// `"inf"`, or anything but a count lowered to the cap), `Err` for an event keygate
/// cannot read (the session ends: the provider might read a limit in it that keygate
/// did not), and in a transcription session for one that asks for a response or makes
/// the session a conversation (whose limit keygate never set).
pub fn client_event(
    text: &str,
    kind: Option<&str>,
    cap: SessionCap,
) -> Result<Option<String>, String> {
    let kind = kind.ok_or("not a JSON event with one type")?;
    if cap.transcription && kind == "response.create" {
        return Err("a transcription session makes no responses".into());
    }
    let outer = match kind {
        "session.update" => "session",
        "response.create" => "response",
        _ => return Ok(None),
    };
    let mut v = crate::request::body::parse_strict(text.as_bytes())?;
    let Some(obj) = v.get_mut(outer) else {
        return Ok(None);
    };
    let obj: &mut Map<String, Value> = match obj {
        Value::Object(o) => o,
        Value::Null => return Ok(None),
        _ => return Err(format!("\"{outer}\" is not an object")),
    };
    if cap.transcription && obj.get("type").is_some_and(|t| t != "transcription") {
        return Err("a transcription session stays one".into());
    }
    let mut changed = false;
    for field in FIELDS {
        if let Some(limit) = obj.get_mut(field) {
            if limit.as_u64().is_none_or(|n| n > cap.cap) {
                *limit = Value::from(cap.cap);
                changed = true;
            }
        }
    }
    Ok(changed.then(|| v.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_event(text: &str, cap: u64) -> Result<Option<String>, String> {
        let kind = event_kind(text);
        let cap = SessionCap {
            cap,
            transcription: false,
        };
        super::client_event(text, kind.as_deref(), cap)
    }

    fn limits(text: &str, cap: u64) -> Value {
        let out = client_event(text, cap)
            .unwrap()
            .unwrap_or_else(|| text.into());
        serde_json::from_str(&out).unwrap()
    }

    #[test]
    fn limits_over_the_cap_or_unbounded_are_lowered_in_both_names() {
        let v = limits(
            r#"{"type":"session.update","session":{"max_output_tokens":"inf","max_response_output_tokens":9000,"instructions":"hi"}}"#,
            500,
        );
        assert_eq!(v["session"]["max_output_tokens"], 500);
        assert_eq!(v["session"]["max_response_output_tokens"], 500);
        assert_eq!(v["session"]["instructions"], "hi");
        let v = limits(
            r#"{"type":"response.create","response":{"max_output_tokens":-1}}"#,
            500,
        );
        assert_eq!(v["response"]["max_output_tokens"], 500);
        // An escaped kind is the same kind to the provider.
        let v = limits(
            r#"{"type":"response\u002ecreate","response":{"max_output_tokens":4.5e9}}"#,
            500,
        );
        assert_eq!(v["response"]["max_output_tokens"], 500);
    }

    #[test]
    fn events_within_the_cap_or_of_other_kinds_pass_untouched() {
        for text in [
            r#"{"type":"session.update","session":{"max_output_tokens":200}}"#,
            r#"{"type":"session.update","session":{"instructions":"x"}}"#,
            r#"{"type":"response.create"}"#,
            r#"{"type":"response.create","response":null}"#,
            r#"{"type":"input_audio_buffer.append","audio":"AAAA","max_output_tokens":"inf"}"#,
        ] {
            assert_eq!(client_event(text, 500), Ok(None), "{text}");
        }
    }

    #[test]
    fn events_keygate_cannot_read_are_refused() {
        for text in [
            "not json",
            r#"{"type":"conversation.item.create","type":"session.update"}"#,
            r#"{"type":"session.update","session":{"max_output_tokens":1,"max_output_tokens":"inf"}}"#,
            r#"{"type":"session.update","session":"inf"}"#,
            r#"{"type":"session.update","session":{"instructions":"\ud800"}}"#,
            r#"{"type":"session.update"} trailing"#,
            r#"{"event_id":"e1"}"#,
        ] {
            assert!(client_event(text, 500).is_err(), "{text}");
        }
    }

    #[test]
    fn transcription_sessions_stay_transcriptions_and_browsers_name_the_beta() {
        let cap = |transcription| {
            Ok(Some(SessionCap {
                cap: 50,
                transcription,
            }))
        };
        assert_eq!(session_cap(Some(50), "model=gpt-realtime"), cap(false));
        assert_eq!(session_cap(Some(50), "intent=transcription"), cap(true));
        assert_eq!(session_cap(None, "model=m"), Ok(None));
        let twice = "intent=transcription&intent=conversation";
        assert!(session_cap(Some(50), twice).is_err());
        // A transcription session takes no response and does not become a conversation.
        let held = SessionCap {
            cap: 50,
            transcription: true,
        };
        for text in [
            r#"{"type":"response.create"}"#,
            r#"{"type":"session.update","session":{"type":"realtime"}}"#,
        ] {
            assert!(
                super::client_event(text, event_kind(text).as_deref(), held).is_err(),
                "{text}"
            );
        }
        let own = r#"{"type":"session.update","session":{"type":"transcription"}}"#;
        assert_eq!(
            super::client_event(own, event_kind(own).as_deref(), held),
            Ok(None)
        );
        let offered = [
            "realtime".to_string(),
            "openai-beta.realtime-v1".to_string(),
        ];
        assert!(beta_names(None, &offered));
        assert!(!beta_names(None, &offered[..1]));
        let h = http::HeaderValue::from_static("realtime=v1");
        assert!(beta_names(Some(&h), &[]));
    }

    #[test]
    fn a_response_started_is_seen() {
        assert!(starts_response(
            r#"{"type":"response.created","response":{"id":"r"}}"#
        ));
        assert!(!starts_response(
            r#"{"type":"response.done","response":{"id":"r"}}"#
        ));
        assert!(!starts_response(
            r#"{"type":"response.output_text.delta","delta":"response.created"}"#
        ));
    }

    #[test]
    fn the_opening_update_and_its_answers() {
        let ga: Value = serde_json::from_str(&opening_update(300, false)).unwrap();
        assert_eq!(ga["session"]["max_output_tokens"], 300);
        assert_eq!(ga["session"]["type"], "realtime");
        let beta: Value = serde_json::from_str(&opening_update(300, true)).unwrap();
        assert_eq!(beta["session"]["max_response_output_tokens"], 300);
        let updated =
            |session: &str| format!(r#"{{"type":"session.updated","session":{session}}}"#);
        for held in [
            r#"{"max_output_tokens":300}"#,
            r#"{"max_response_output_tokens":20}"#,
        ] {
            assert_eq!(
                answer_to_opening(&updated(held), 300),
                Some(Ok(())),
                "{held}"
            );
        }
        // A provider that took the update and ignored the limit: the cap does not hold.
        for ignored in [
            "{}",
            r#"{"max_output_tokens":"inf"}"#,
            r#"{"max_output_tokens":301}"#,
        ] {
            assert_eq!(
                answer_to_opening(&updated(ignored), 300),
                Some(Err(())),
                "{ignored}"
            );
        }
        let refused = format!(r#"{{"type":"error","error":{{"event_id":"{EVENT_ID}"}}}}"#);
        assert_eq!(answer_to_opening(&refused, 300), Some(Err(())));
        assert_eq!(
            answer_to_opening(r#"{"type":"error","error":{"event_id":"client_1"}}"#, 300),
            None
        );
        assert_eq!(
            answer_to_opening(r#"{"type":"session.created"}"#, 300),
            None
        );
    }
}
