//! The key egress modes (issue #28): answers built by hand where serde would not write
//! the escape (`escaped_key`, `escaped_key_error`, `surrogate_key`), and `split_key`'s
//! streams that carry the credential cut in two over two events, in the field named by
//! `x-mock-field`.

use hyper::{Response, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

use super::stream::sse;
use super::util::{full, header_ms, header_str, received_credential, Body};

/// `s` as a quoted JSON string.
fn json_str(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// `s` as the inside of a JSON string (no quotes), with its character number `at`
/// (from 0) written as a `\uXXXX` escape: a JSON parser yields `s`, the raw bytes
/// do not hold it.
fn json_inner_escaping(s: &str, at: usize) -> String {
    let mut out = String::with_capacity(s.len() + 12);
    for (i, c) in s.chars().enumerate() {
        if i == at {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        } else {
            let quoted = json_str(&c.to_string());
            out.push_str(&quoted[1..quoted.len() - 1]);
        }
    }
    out
}

/// `s` cut near its middle (at a character boundary, not before byte `min`).
fn split_near_middle(s: &str, min: usize) -> (&str, &str) {
    let mut mid = (s.len() / 2).max(min).min(s.len());
    while !s.is_char_boundary(mid) {
        mid += 1;
    }
    s.split_at(mid)
}

/// The answers of the key egress modes (`escaped_key`, `escaped_key_error`, `split_key`).
pub(super) fn key_egress_answer(
    mode: &str,
    parts: &http::request::Parts,
    model: &str,
) -> Option<Response<Body>> {
    let key = received_credential(&parts.headers);
    match mode {
        "escaped_key" => {
            let body = format!(
                r#"{{"id":"chatcmpl-mock123","object":"chat.completion","created":1767225600,"model":{model},"choices":[{{"index":0,"message":{{"role":"assistant","content":"I received the key {key}"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":12,"completion_tokens":9,"total_tokens":21}}}}"#,
                model = json_str(model),
                key = json_inner_escaping(&key, 4),
            );
            Some(full(StatusCode::OK, "application/json", body))
        }
        // A lone surrogate (which a lenient parser lets through) before the escaped key.
        "surrogate_key" => {
            let body = format!(
                r#"{{"id":"chatcmpl-mock123","object":"chat.completion","model":{model},"choices":[{{"index":0,"message":{{"role":"assistant","content":"\ud800"}},"finish_reason":"stop"}}],"x":"{key}"}}"#,
                model = json_str(model),
                key = json_inner_escaping(&key, 4),
            );
            Some(full(StatusCode::OK, "application/json", body))
        }
        "escaped_key_error" => {
            let body = format!(
                r#"{{"error":{{"message":"Incorrect API key provided: {key}","type":"invalid_request_error"}}}}"#,
                key = json_inner_escaping(&key, 4),
            );
            Some(full(StatusCode::BAD_REQUEST, "application/json", body))
        }
        // The same error as text (on a transcription path a transcript may be text).
        "escaped_key_error_text" => {
            let body = format!(
                r#"{{"error":{{"message":"Incorrect API key provided: {key}","type":"invalid_request_error"}}}}"#,
                key = json_inner_escaping(&key, 4),
            );
            Some(full(StatusCode::BAD_REQUEST, "text/plain", body))
        }
        // A transcript as text whose key is written with one JSON escape.
        "escaped_key_text" => Some(full(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            format!("I received the key {}", json_inner_escaping(&key, 4)),
        )),
        // A coded answer (`x-mock-coding`: its `Content-Encoding`, or `Transfer-Encoding`
        // beside chunked with `te:`), or text in UTF-16 (`charset:utf-16`).
        "coded" => {
            let coding = header_str(parts, "x-mock-coding", "gzip");
            let mut r = full(StatusCode::OK, "application/json", "{}");
            let h = r.headers_mut();
            if let Some(te) = coding.strip_prefix("te:") {
                h.insert(
                    "transfer-encoding",
                    http::HeaderValue::from_str(&format!("{te}, chunked")).ok()?,
                );
            } else if let Some(cs) = coding.strip_prefix("charset:") {
                h.insert(
                    "content-type",
                    http::HeaderValue::from_str(&format!("text/plain; charset={cs}")).ok()?,
                );
            } else {
                h.insert(
                    "content-encoding",
                    http::HeaderValue::from_str(coding).ok()?,
                );
            }
            Some(r)
        }
        "split_key" => {
            let field = header_str(parts, "x-mock-field", "content");
            // A pause between events, so each arrives in its own read.
            let delay = Duration::from_millis(header_ms(parts, "x-mock-event-delay-ms", 5));
            Some(sse(split_key_events(field, model, &key), delay))
        }
        _ => None,
    }
}

/// A stream that carries `key` cut in two halves over two events, in `field`.
fn split_key_events(field: &str, model: &str, key: &str) -> Vec<String> {
    let (a, b) = split_near_middle(key, 0);
    let data = |v: Value| format!("data: {v}\n\n");
    let chunk = |choices: Value| {
        json!({"id": "chatcmpl-mock123", "object": "chat.completion.chunk", "created": 1767225600,
            "model": model, "choices": choices})
    };
    let delta = |d: Value| {
        data(chunk(
            json!([{"index": 0, "delta": d, "finish_reason": null}]),
        ))
    };
    let finish = |reason: &str| {
        data(chunk(
            json!([{"index": 0, "delta": {}, "finish_reason": reason}]),
        ))
    };
    let usage = || {
        data(
            json!({"id": "chatcmpl-mock123", "object": "chat.completion.chunk", "created": 1767225600,
            "model": model, "choices": [],
            "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}}),
        )
    };
    let done = || "data: [DONE]\n\n".to_string();
    let ant = |name: &str, v: Value| format!("event: {name}\ndata: {v}\n\n");
    let ant_start = || {
        ant(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_mock123", "type": "message",
                "role": "assistant", "model": model, "content": [], "stop_reason": null,
                "usage": {"input_tokens": 12, "output_tokens": 1}}}),
        )
    };
    let ant_delta = |index: u64, d: Value| {
        ant(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": index, "delta": d}),
        )
    };
    let ant_block = |index: u64, block: Value| {
        ant(
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": block}),
        )
    };
    let ant_stop = |index: u64| {
        ant(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        )
    };
    let ant_end = |reason: &str| {
        vec![
            ant(
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": null},
                    "usage": {"output_tokens": 9}}),
            ),
            ant("message_stop", json!({"type": "message_stop"})),
        ]
    };
    match field {
        "tool_arguments" | "tool_arguments_escaped" => {
            let (first, second) = if field == "tool_arguments" {
                (format!("{{\"q\": \"{a}"), format!("{b}\"}}"))
            } else {
                // The arguments are JSON text: one key character is a `\u` escape in it
                // (after the event is parsed), so only parsing the arguments yields the key.
                let escaped = json_inner_escaping(key, 4);
                let (ea, eb) = split_near_middle(&escaped, 10);
                (format!("{{\"q\": \"{ea}"), format!("{eb}\"}}"))
            };
            vec![
                delta(
                    json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0,
                    "id": "call_mock1", "type": "function",
                    "function": {"name": "lookup", "arguments": ""}}]}),
                ),
                delta(json!({"tool_calls": [{"index": 0, "function": {"arguments": first}}]})),
                delta(json!({"tool_calls": [{"index": 0, "function": {"arguments": second}}]})),
                finish("tool_calls"),
                usage(),
                done(),
            ]
        }
        "refusal" => vec![
            delta(json!({"role": "assistant", "content": null, "refusal": ""})),
            delta(json!({"refusal": format!("I will not repeat {a}")})),
            delta(json!({"refusal": format!("{b}, sorry.")})),
            finish("stop"),
            usage(),
            done(),
        ],
        "reasoning_content" => vec![
            delta(json!({"role": "assistant", "content": "", "reasoning_content": ""})),
            delta(json!({"reasoning_content": format!("The key is {a}")})),
            delta(json!({"reasoning_content": b})),
            delta(json!({"content": "Done."})),
            finish("stop"),
            usage(),
            done(),
        ],
        // The halves under different choice indexes: a client that reads `choices[0]` of
        // each chunk joins them.
        "choice_switch" => vec![
            data(chunk(
                json!([{"index": 0, "delta": {"role": "assistant", "content": format!("key {a}")}, "finish_reason": null}]),
            )),
            data(chunk(
                json!([{"index": 1, "delta": {"content": b}, "finish_reason": null}]),
            )),
            finish("stop"),
            usage(),
            done(),
        ],
        // A byte-order mark first (EventSource strips it), then the key in one event
        // with one character escaped.
        "bom" => vec![
            format!(
                "\u{feff}data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{}\"}}}}]}}\n\n",
                json_inner_escaping(key, 4)
            ),
            finish("stop"),
            done(),
        ],
        "choice1" => vec![
            data(chunk(json!([
                {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null},
                {"index": 1, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}
            ]))),
            data(chunk(
                json!([{"index": 1, "delta": {"content": format!("key {a}")}, "finish_reason": null}]),
            )),
            data(chunk(
                json!([{"index": 0, "delta": {"content": "Unrelated text from choice zero."}, "finish_reason": null}]),
            )),
            data(chunk(
                json!([{"index": 1, "delta": {"content": b}, "finish_reason": null}]),
            )),
            data(chunk(json!([
                {"index": 0, "delta": {}, "finish_reason": "stop"},
                {"index": 1, "delta": {}, "finish_reason": "stop"}
            ]))),
            usage(),
            done(),
        ],
        "anthropic_input_json" => {
            let mut ev = vec![
                ant_start(),
                ant_block(0, json!({"type": "text", "text": ""})),
                ant_delta(0, json!({"type": "text_delta", "text": "Looking it up."})),
                ant_stop(0),
                ant_block(
                    1,
                    json!({"type": "tool_use", "id": "toolu_mock1", "name": "lookup", "input": {}}),
                ),
                ant_delta(
                    1,
                    json!({"type": "input_json_delta", "partial_json": format!("{{\"q\": \"{a}")}),
                ),
                ant_delta(
                    1,
                    json!({"type": "input_json_delta", "partial_json": format!("{b}\"}}")}),
                ),
                ant_stop(1),
            ];
            ev.extend(ant_end("tool_use"));
            ev
        }
        "anthropic_thinking" => {
            let mut ev = vec![
                ant_start(),
                ant_block(0, json!({"type": "thinking", "thinking": ""})),
                ant_delta(
                    0,
                    json!({"type": "thinking_delta", "thinking": format!("The key is {a}")}),
                ),
                ant_delta(0, json!({"type": "thinking_delta", "thinking": b})),
                ant_delta(
                    0,
                    json!({"type": "signature_delta", "signature": "c2lnLW1vY2s="}),
                ),
                ant_stop(0),
                ant_block(1, json!({"type": "text", "text": ""})),
                ant_delta(1, json!({"type": "text_delta", "text": "Done."})),
                ant_stop(1),
            ];
            ev.extend(ant_end("end_turn"));
            ev
        }
        "gemini_code" => {
            let code = |c: String| {
                data(
                    json!({"candidates": [{"content": {"parts": [{"executableCode":
                    {"language": "PYTHON", "code": c}}], "role": "model"}, "index": 0}]}),
                )
            };
            vec![
                code(format!("print('{a}")),
                code(format!("{b}')")),
                data(
                    json!({"candidates": [{"content": {"parts": [{"text": "Done."}], "role": "model"},
                    "finishReason": "STOP", "index": 0}],
                    "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 9, "totalTokenCount": 21}}),
                ),
            ]
        }
        _ => vec![
            delta(json!({"role": "assistant", "content": ""})),
            delta(json!({"content": format!("key {a}")})),
            delta(json!({"content": b})),
            finish("stop"),
            usage(),
            done(),
        ],
    }
}
