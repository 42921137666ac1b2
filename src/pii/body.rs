//! The text parts of a request body, per body format: what a person or a tool wrote
//! and the model reads. Visited (the covered set, from the providers' request schemas):
//!
//! - OpenAI Chat: `messages[].content` (string, or `text` / `refusal` parts) and
//!   `messages[].refusal`; `prediction.content` (string or `text` parts).
//! - OpenAI Responses and Conversations: `instructions`; `prompt.variables` (strings or
//!   `input_text` parts); `input` / `items` as a string or items: message items'
//!   `content` (string, or `input_text` / `output_text` / `refusal` parts), the `output`
//!   of `function_call_output`, `custom_tool_call_output`, `local_shell_call_output` and
//!   `mcp_call` items, `shell_call_output` items' `stdout` / `stderr`, `reasoning` items'
//!   `summary` and `content` text.
//! - OpenAI embeddings and moderations `input` (strings or `text` parts); legacy
//!   completions `prompt` and `suffix`.
//! - Anthropic: `system`; `messages[].content` (string or blocks): `text` blocks (and
//!   their citations' `cited_text`), `tool_result` and `mcp_tool_result` contents,
//!   `document` blocks with a `text` source (`source.data`) or a `content` source and
//!   their `context` and `title`, `search_result` blocks' `content` and `title`,
//!   `web_fetch_tool_result` documents.
//! - Gemini: `systemInstruction` / `system_instruction`, `contents[]` and `content`
//!   (`embedContent`): `parts[].text`.
//!
//! Left alone: keys, model names, tool schemas, tool-call arguments (JSON the model
//! wrote), Anthropic `thinking` blocks (signed by the provider), Gemini
//! `functionResponse` objects, base64 or URL documents, images, audio, files, and every
//! other member. Batch endpoints are refused on routes with a PII policy (see
//! `request::body`).

use crate::upstream::kind::UpstreamKind;
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
                if let Some(Value::String(s)) = m.get_mut("refusal") {
                    f(s);
                }
            }
            if let Some(p) = obj.get_mut("prediction") {
                content(p.get_mut("content"), f);
            }
            // Responses API (`input`, `instructions`, `prompt` templates), conversation
            // `items`, moderations and embeddings `input`, legacy completions (`prompt`,
            // `suffix`).
            for key in ["input", "prompt", "items"] {
                match obj.get_mut(key) {
                    Some(Value::String(s)) => f(s),
                    Some(Value::Array(items)) => {
                        for it in items {
                            input_item(it, f);
                        }
                    }
                    Some(Value::Object(p)) => {
                        if let Some(Value::Object(vars)) = p.get_mut("variables") {
                            for v in vars.values_mut() {
                                input_item(v, f);
                            }
                        }
                    }
                    _ => {}
                }
            }
            string(obj.get_mut("instructions"), f);
            string(obj.get_mut("suffix"), f);
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
            // `embedContent`.
            if let Some(c) = obj.get_mut("content") {
                gemini_parts(c, f);
            }
        }
    }
}

/// One item of a Responses `input` (or a legacy `prompt` string, a moderations part,
/// a prompt template variable).
fn input_item(it: &mut Value, f: &mut dyn FnMut(&mut String)) {
    match it {
        Value::String(s) => f(s),
        Value::Object(m) => {
            let ty = m.get("type").and_then(Value::as_str).unwrap_or("");
            match ty {
                "function_call_output"
                | "custom_tool_call_output"
                | "local_shell_call_output"
                | "mcp_call" => content(m.get_mut("output"), f),
                "shell_call_output" => {
                    for o in array(m.get_mut("output")) {
                        string(o.get_mut("stdout"), f);
                        string(o.get_mut("stderr"), f);
                    }
                }
                "reasoning" => {
                    content(m.get_mut("summary"), f);
                    content(m.get_mut("content"), f);
                }
                "text" | "input_text" => string(m.get_mut("text"), f),
                _ => content(m.get_mut("content"), f),
            }
        }
        _ => {}
    }
}

fn array(v: Option<&mut Value>) -> std::slice::IterMut<'_, Value> {
    match v {
        Some(Value::Array(a)) => a.iter_mut(),
        _ => [].iter_mut(),
    }
}

/// A message content: a string, or parts/blocks of which the text ones are visited.
fn content(v: Option<&mut Value>, f: &mut dyn FnMut(&mut String)) {
    match v {
        Some(Value::String(s)) => f(s),
        Some(Value::Array(parts)) => {
            for p in parts {
                if let Value::Object(m) = p {
                    part(m, f);
                }
            }
        }
        _ => {}
    }
}

/// One part or block: OpenAI `text` / `input_text` / `output_text` / `refusal` /
/// `summary_text` / `reasoning_text`; Anthropic `text` (and its citations' quoted
/// text), `tool_result`, `mcp_tool_result`, `document`, `search_result`,
/// `web_fetch_tool_result`.
fn part(m: &mut Map<String, Value>, f: &mut dyn FnMut(&mut String)) {
    let ty = m.get("type").and_then(Value::as_str).unwrap_or("");
    match ty {
        "text" | "input_text" | "output_text" | "summary_text" | "reasoning_text" => {
            string(m.get_mut("text"), f);
            for c in array(m.get_mut("citations")) {
                string(c.get_mut("cited_text"), f);
            }
        }
        "refusal" => string(m.get_mut("refusal"), f),
        "tool_result" | "mcp_tool_result" => content(m.get_mut("content"), f),
        "search_result" => {
            string(m.get_mut("title"), f);
            content(m.get_mut("content"), f);
        }
        "document" => {
            string(m.get_mut("title"), f);
            string(m.get_mut("context"), f);
            if let Some(Value::Object(src)) = m.get_mut("source") {
                match src.get("type").and_then(Value::as_str) {
                    Some("text") => string(src.get_mut("data"), f),
                    Some("content") => content(src.get_mut("content"), f),
                    _ => {}
                }
            }
        }
        // `{"content": {"type": "web_fetch_result", "content": <document>}}`.
        "web_fetch_tool_result" => {
            if let Some(Value::Object(result)) = m.get_mut("content") {
                if let Some(Value::Object(doc)) = result.get_mut("content") {
                    part(doc, f);
                }
            }
        }
        _ => {}
    }
}

fn string(v: Option<&mut Value>, f: &mut dyn FnMut(&mut String)) {
    if let Some(Value::String(s)) = v {
        f(s);
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
    fn openai_tool_outputs_predictions_and_refusals() {
        let v = json!({"input": [
            {"type": "function_call", "call_id": "c", "arguments": "{\"a\":1}"},
            {"type": "function_call_output", "call_id": "c", "output": "out"},
            {"type": "function_call_output", "call_id": "d", "output": [{"type": "input_text", "text": "part"}]},
            {"type": "custom_tool_call_output", "call_id": "e", "output": "custom"},
            {"type": "message", "role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]}
        ]});
        assert_eq!(
            texts(UpstreamKind::OpenAi, v),
            ["out", "part", "custom", "no"]
        );
        let v = json!({"messages": [{"role": "assistant", "content": null, "refusal": "r"}],
            "prediction": {"type": "content", "content": [{"type": "text", "text": "p"}]}});
        assert_eq!(texts(UpstreamKind::OpenAi, v), ["r", "p"]);
        let v = json!({"prediction": {"type": "content", "content": "ps"}});
        assert_eq!(texts(UpstreamKind::OpenAi, v), ["ps"]);
    }

    #[test]
    fn openai_templates_reasoning_shell_moderation_and_suffix() {
        let v = json!({"prompt": {"id": "pmpt_1", "variables": {"name": "Jane", "doc": {"type": "input_text", "text": "d"}}},
            "input": [
                {"type": "reasoning", "summary": [{"type": "summary_text", "text": "s"}]},
                {"type": "shell_call_output", "output": [{"stdout": "o", "stderr": "e"}]},
                {"type": "mcp_call", "output": "m"},
                {"type": "text", "text": "mod"}
            ],
            "suffix": "sfx"});
        let mut got = texts(UpstreamKind::OpenAi, v);
        got.sort();
        assert_eq!(got, ["Jane", "d", "e", "m", "mod", "o", "s", "sfx"]);
        let v = json!({"items": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "conv"}]}]});
        assert_eq!(texts(UpstreamKind::OpenAi, v), ["conv"]);
    }

    #[test]
    fn anthropic_documents_and_search_results() {
        let v = json!({"messages": [{"role": "user", "content": [
            {"type": "document", "title": "t", "context": "ctx", "source": {"type": "text", "media_type": "text/plain", "data": "doc"}},
            {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": "inner"}]}},
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBER"}},
            {"type": "search_result", "source": "https://x", "title": "st", "content": [{"type": "text", "text": "found"}]}
        ]}]});
        assert_eq!(
            texts(UpstreamKind::Anthropic, v),
            ["t", "ctx", "doc", "inner", "st", "found"]
        );
        let v = json!({"messages": [{"role": "assistant", "content": [
            {"type": "text", "text": "a", "citations": [{"type": "char_location", "cited_text": "c"}]},
            {"type": "mcp_tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "mcp"}]},
            {"type": "web_fetch_tool_result", "tool_use_id": "w", "content": {"type": "web_fetch_result", "url": "https://x",
                "content": {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "page"}}}},
            {"type": "thinking", "thinking": "signed", "signature": "sig"}
        ]}]});
        assert_eq!(texts(UpstreamKind::Anthropic, v), ["a", "c", "mcp", "page"]);
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
