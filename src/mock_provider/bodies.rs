//! The JSON answer bodies per provider (OpenAI chat completion, Anthropic message,
//! Gemini response) and the text of the last user message of a request.

use serde_json::{json, Value};

pub(super) fn openai_chat(model: &str, text: &str) -> Value {
    json!({
        "id": "chatcmpl-mock123", "object": "chat.completion", "created": 1767225600, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}
    })
}

/// The text of the last user message (OpenAI, Anthropic or Gemini request shape).
pub(super) fn last_user_text(req: &Value) -> String {
    let mut out = String::new();
    let parts_text = |v: &Value, out: &mut String| match v {
        Value::String(s) => out.push_str(s),
        Value::Array(parts) => {
            for p in parts {
                if let Some(t) = p.get("text").and_then(Value::as_str) {
                    out.push_str(t);
                }
            }
        }
        _ => {}
    };
    let is_user = |m: &&Value| m.get("role").is_none_or(|r| r == "user");
    if let Some(m) = req
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().rev().find(is_user))
    {
        parts_text(m.get("content").unwrap_or(&Value::Null), &mut out);
    } else if let Some(c) = req
        .get("contents")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().rev().find(is_user))
    {
        parts_text(c.get("parts").unwrap_or(&Value::Null), &mut out);
    }
    out
}

pub(super) fn anthropic_message(model: &str, text: &str) -> Value {
    json!({"id": "msg_mock123", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 12, "output_tokens": 9}})
}

pub(super) fn gemini_response(model: &str, text: &str) -> Value {
    json!({"candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 9, "totalTokenCount": 21},
        "modelVersion": model})
}

/// `x-mock-usage: detailed`: the usage of an answer (or one stream event) with every kind
/// of billed token, each provider in its own convention. Normalised, all three come to
/// 1,200 input tokens (1,000 of them cached) and 300 output tokens (200 of them reasoning;
/// Anthropic: 180 input tokens written to the cache, no reasoning).
pub(super) fn detailed(mut v: Value) -> Value {
    let set = |u: &mut Value, pairs: &[(&str, Value)]| {
        if let Some(o) = u.as_object_mut() {
            for (k, n) in pairs {
                o.insert(k.to_string(), n.clone());
            }
        }
    };
    if let Some(u) = v
        .get_mut("usage")
        .filter(|u| u.get("prompt_tokens").is_some())
    {
        set(
            u,
            &[
                ("prompt_tokens", json!(1200)),
                ("completion_tokens", json!(300)),
                ("total_tokens", json!(1500)),
                ("prompt_tokens_details", json!({"cached_tokens": 1000})),
                (
                    "completion_tokens_details",
                    json!({"reasoning_tokens": 200}),
                ),
            ],
        );
    }
    for at in ["/message/usage", "/usage"] {
        let Some(u) = v.pointer_mut(at) else {
            continue;
        };
        if u.get("input_tokens").is_some() {
            set(
                u,
                &[
                    ("input_tokens", json!(20)),
                    ("cache_read_input_tokens", json!(1000)),
                    ("cache_creation_input_tokens", json!(180)),
                ],
            );
        }
        if u.get("output_tokens")
            .and_then(Value::as_u64)
            .is_some_and(|n| n > 1)
        {
            set(u, &[("output_tokens", json!(300))]);
        }
    }
    if let Some(u) = v.get_mut("usageMetadata") {
        set(
            u,
            &[
                ("promptTokenCount", json!(1200)),
                ("candidatesTokenCount", json!(100)),
                ("cachedContentTokenCount", json!(1000)),
                ("thoughtsTokenCount", json!(200)),
                ("totalTokenCount", json!(1500)),
            ],
        );
    }
    v
}

/// [`detailed`] on one SSE event (`event:` line kept; non-JSON data as it is).
pub(super) fn detailed_event(event: String) -> String {
    let Some(at) = event.find("data: ") else {
        return event;
    };
    let data = event[at + 6..].trim_end();
    match serde_json::from_str::<Value>(data) {
        Ok(v) => format!("{}data: {}\n\n", &event[..at], detailed(v)),
        Err(_) => event,
    }
}
