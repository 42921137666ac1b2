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
