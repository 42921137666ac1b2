//! The text parts of a request body, per upstream kind. Only text a person wrote is
//! visited: message contents, system prompts and text parts. Keys, model names, tool
//! schemas, tool-call arguments, images and every other member are left alone.

use crate::config::UpstreamKind;
use serde_json::{Map, Value};

/// Call `f` on every text part of a request body of `kind`.
pub fn for_each_text(
    kind: UpstreamKind,
    obj: &mut Map<String, Value>,
    f: &mut dyn FnMut(&mut String),
) {
    match kind {
        UpstreamKind::OpenAi | UpstreamKind::OpenAiCompatible => {
            // Chat completions.
            for m in array(obj.get_mut("messages")) {
                content(m.get_mut("content"), f);
            }
            // Responses API (`input`, `instructions`) and legacy completions (`prompt`).
            for key in ["input", "prompt"] {
                match obj.get_mut(key) {
                    Some(Value::String(s)) => f(s),
                    Some(Value::Array(items)) => {
                        for it in items {
                            match it {
                                Value::String(s) => f(s),
                                Value::Object(_) => content(it.get_mut("content"), f),
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
            if let Some(Value::String(s)) = obj.get_mut("instructions") {
                f(s);
            }
        }
        UpstreamKind::Anthropic => {
            content(obj.get_mut("system"), f);
            for m in array(obj.get_mut("messages")) {
                content(m.get_mut("content"), f);
            }
        }
        UpstreamKind::Gemini => {
            for key in ["systemInstruction", "system_instruction"] {
                if let Some(si) = obj.get_mut(key) {
                    gemini_parts(si, f);
                }
            }
            for c in array(obj.get_mut("contents")) {
                gemini_parts(c, f);
            }
        }
    }
}

fn array(v: Option<&mut Value>) -> std::slice::IterMut<'_, Value> {
    match v {
        Some(Value::Array(a)) => a.iter_mut(),
        _ => [].iter_mut(),
    }
}

/// A message content: a string, or parts/blocks of which the text ones are visited
/// (OpenAI `text`/`input_text`, Anthropic `text`, and `tool_result` contents).
fn content(v: Option<&mut Value>, f: &mut dyn FnMut(&mut String)) {
    match v {
        Some(Value::String(s)) => f(s),
        Some(Value::Array(parts)) => {
            for p in parts {
                let Value::Object(m) = p else { continue };
                let ty = m.get("type").and_then(Value::as_str).unwrap_or("");
                match ty {
                    "text" | "input_text" | "output_text" => {
                        if let Some(Value::String(s)) = m.get_mut("text") {
                            f(s);
                        }
                    }
                    "tool_result" => content(m.get_mut("content"), f),
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

/// A Gemini `Content`: `parts[].text`.
fn gemini_parts(c: &mut Value, f: &mut dyn FnMut(&mut String)) {
    for p in array(c.get_mut("parts")) {
        if let Some(Value::String(s)) = p.get_mut("text") {
            f(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn texts(kind: UpstreamKind, v: Value) -> Vec<String> {
        let Value::Object(mut obj) = v else { panic!() };
        let mut out = Vec::new();
        for_each_text(kind, &mut obj, &mut |s| out.push(s.clone()));
        out
    }

    #[test]
    fn openai_strings_and_text_parts_only() {
        let v = json!({"model": "a@b.io", "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": [{"type": "text", "text": "part"}, {"type": "image_url", "image_url": {"url": "x"}}]},
            {"role": "assistant", "content": null, "tool_calls": [{"function": {"arguments": "{}"}}]}
        ], "tools": [{"function": {"description": "tool text"}}]});
        assert_eq!(texts(UpstreamKind::OpenAi, v), ["sys", "part"]);
        let v = json!({"input": [{"role": "user", "content": [{"type": "input_text", "text": "r"}]}], "instructions": "i"});
        assert_eq!(texts(UpstreamKind::OpenAi, v), ["r", "i"]);
    }

    #[test]
    fn anthropic_system_and_blocks() {
        let v = json!({"model": "m", "system": [{"type": "text", "text": "sys"}], "messages": [
            {"role": "user", "content": "hi"},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "res"}, {"type": "text", "text": "b"}]}
        ], "tools": [{"name": "n", "description": "d", "input_schema": {}}]});
        assert_eq!(texts(UpstreamKind::Anthropic, v), ["sys", "hi", "res", "b"]);
    }

    #[test]
    fn gemini_contents_and_system_instruction() {
        let v = json!({"systemInstruction": {"parts": [{"text": "sys"}]},
            "contents": [{"role": "user", "parts": [{"text": "a"}, {"inlineData": {"data": "x"}}]}],
            "tools": [{"functionDeclarations": [{"description": "d"}]}]});
        assert_eq!(texts(UpstreamKind::Gemini, v), ["sys", "a"]);
    }
}
