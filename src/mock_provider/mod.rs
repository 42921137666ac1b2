//! `keygate mock-provider`: a local stand-in for OpenAI, Anthropic and Gemini, used by
//! tests, load tests and the demo. It answers the common endpoints with realistic
//! JSON and SSE (with `usage`), records what it received, and has failure modes.
//!
//! Failure modes, per request header `x-mock-mode`:
//! `invalid_json`, `error_500`, `error_429`, `slow` (waits `x-mock-delay-ms`, default
//! 2000, before answering), `huge` (a 12 MiB JSON body), `echo_credential` (puts the
//! credential it received into the answer text and a header), `echo_credential_body`
//! (the text only), `set_cookie` (adds `Set-Cookie` and `Server`), `redirect`, `html`,
//! `reset_mid_body` / `reset_mid_stream` (the connection drops part-way through the body),
//! `echo` (answers with the last user message's text; streams send it in deltas of
//! three characters, so anything longer is split across events, and write every event
//! in two halves, so events are split across chunks too).
//! Streams (endless ones too) wait `x-mock-event-delay-ms` between events. `x-mock-429-key: K` answers
//! 429 (Retry-After 30) when the credential received is `K`.
//!
//! Hostile answers (issue #28), built by hand where serde would not write the escape:
//! `escaped_key` (a 200 chat completion whose text is "I received the key " and the
//! credential with its 5th character written as a JSON `\u00XX` escape: the raw bytes
//! never hold the key, a JSON parser yields it), `escaped_key_error` (the same in a 401
//! `{"error":{"message":"Incorrect API key provided: …"}}`), `surrogate_key` (a lone
//! `\ud800` escape before the escaped key), `split_key` (a 200 SSE
//! stream with the credential cut in two halves over two events, each event its own
//! write, `x-mock-event-delay-ms` apart, default 5, in the field named by `x-mock-field`:
//! `tool_arguments` (`choices[0].delta.tool_calls[0].function.arguments`),
//! `tool_arguments_escaped` (the same, but the arguments are JSON text with one key
//! character written `\u00XX`, so the raw bytes hold `\\u00XX`), `refusal`
//! (`choices[0].delta.refusal`), `reasoning_content`, `choice1` (the `content` of the
//! choice with `index` 1, while choice 0 sends other text in between), `choice_switch`
//! (the first half under choice 0, the second under choice 1), `bom` (a byte-order mark,
//! then the key whole in one event with one character escaped), `content`
//! (choice 0's `content`, the default), `anthropic_input_json` (`input_json_delta` of
//! content block 1), `anthropic_thinking` (`thinking_delta`), `gemini_code`
//! (`candidates[0].content.parts[0].executableCode.code`); OpenAI shapes end with
//! `[DONE]`, Anthropic ones with `message_stop`), `hostile_headers` (a normal answer
//! with headers that steer browsers: `Access-Control-Allow-Credentials`,
//! `Access-Control-Allow-Origin: *`, `Refresh`, `Location`, `Link`,
//! `Content-Disposition`, `Content-Security-Policy`, `Strict-Transport-Security:
//! max-age=0`; and ones SDKs read: `x-ratelimit-remaining-requests: 99`,
//! `openai-processing-ms: 12`, `request-id: req_mock123`), `dup_content_type` (a normal
//! answer with a second `Content-Type: text/html` after `application/json`),
//! `wrong_shape` (200 `{"id":"x","object":"thing"}` on any path).
//!
//! Control endpoints (not recorded): `GET /__mock/requests`, `POST /__mock/reset`.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use pingora::tls::ssl::{Ssl, SslAcceptor, SslFiletype, SslMethod};
use pingora::tls::tokio_ssl::SslStream;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Requests remembered for `/__mock/requests`.
const RECORD_LIMIT: usize = 256;
/// Largest request body the mock reads.
const MAX_BODY: usize = 16 * 1024 * 1024;

type Body = BoxBody<Bytes, Infallible>;

/// Shared state: what was received.
#[derive(Default)]
pub struct MockState {
    count: std::sync::atomic::AtomicU64,
    recent: Mutex<VecDeque<Value>>,
}

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    full(status, "application/json", v.to_string())
}

fn received_credential(req: &http::request::Parts) -> String {
    for h in ["authorization", "x-api-key", "x-goog-api-key"] {
        if let Some(v) = req.headers.get(h).and_then(|v| v.to_str().ok()) {
            return v.trim_start_matches("Bearer ").to_string();
        }
    }
    String::new()
}

fn header_ms(req: &http::request::Parts, name: &str, default: u64) -> u64 {
    req.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Every event cut in two writes (at a character boundary near its middle).
fn halves(events: Vec<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(events.len() * 2);
    for e in events {
        let mut mid = e.len() / 2;
        while !e.is_char_boundary(mid) {
            mid += 1;
        }
        let (a, b) = e.split_at(mid);
        out.push(a.to_string());
        out.push(b.to_string());
    }
    out
}

fn sse(events: Vec<String>, delay: Duration) -> Response<Body> {
    let stream = async_stream(events, delay);
    Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

fn async_stream(
    events: Vec<String>,
    delay: Duration,
) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + Sync {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    tokio::spawn(async move {
        for (i, e) in events.into_iter().enumerate() {
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if tx.send(Ok(Frame::data(Bytes::from(e)))).await.is_err() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

fn openai_chat(model: &str, text: &str) -> Value {
    json!({
        "id": "chatcmpl-mock123", "object": "chat.completion", "created": 1767225600, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}
    })
}

/// The text of the last user message (OpenAI, Anthropic or Gemini request shape).
fn last_user_text(req: &Value) -> String {
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

/// Stream pieces: words (with a space before or after), or 3-character deltas for `echo`.
fn pieces(text: &str, echo: bool, space_after: bool) -> Vec<String> {
    if echo {
        let chars: Vec<char> = text.chars().collect();
        return chars.chunks(3).map(|c| c.iter().collect()).collect();
    }
    text.split(' ')
        .enumerate()
        .map(|(i, w)| match (space_after, i) {
            (true, _) => format!("{w} "),
            (false, 0) => w.to_string(),
            (false, _) => format!(" {w}"),
        })
        .collect()
}

fn openai_stream(model: &str, pieces: &[String], include_usage: bool) -> Vec<String> {
    let mut ev = Vec::new();
    for content in pieces {
        let chunk = json!({"id": "chatcmpl-mock123", "object": "chat.completion.chunk", "created": 1767225600, "model": model,
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]});
        ev.push(format!("data: {chunk}\n\n"));
    }
    // Like OpenAI: a usage chunk only when the request asked for it.
    if include_usage {
        let usage = json!({"id": "chatcmpl-mock123", "object": "chat.completion.chunk", "created": 1767225600, "model": model,
            "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}});
        ev.push(format!("data: {usage}\n\n"));
    }
    ev.push("data: [DONE]\n\n".into());
    ev
}

fn anthropic_message(model: &str, text: &str) -> Value {
    json!({"id": "msg_mock123", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 12, "output_tokens": 9}})
}

fn anthropic_stream(model: &str, pieces: &[String]) -> Vec<String> {
    let ev = |name: &str, v: Value| format!("event: {name}\ndata: {v}\n\n");
    let mut out = vec![ev(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_mock123", "type": "message", "role": "assistant", "model": model, "content": [], "usage": {"input_tokens": 12, "output_tokens": 1}}}),
    )];
    out.push(ev("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})));
    for piece in pieces {
        out.push(ev("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}})));
    }
    out.push(ev(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    out.push(ev("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 9}})));
    out.push(ev("message_stop", json!({"type": "message_stop"})));
    out
}

fn gemini_response(text: &str) -> Value {
    json!({"candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 9, "totalTokenCount": 21}})
}

async fn handle(
    state: Arc<MockState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    if path == "/__mock/requests" {
        let recent: Vec<Value> = state.recent.lock().iter().cloned().collect();
        let count = state.count.load(std::sync::atomic::Ordering::SeqCst);
        return Ok(json_response(
            StatusCode::OK,
            &json!({"count": count, "requests": recent}),
        ));
    }
    if path == "/__mock/reset" {
        state.count.store(0, std::sync::atomic::Ordering::SeqCst);
        state.recent.lock().clear();
        return Ok(json_response(StatusCode::OK, &json!({"ok": true})));
    }
    let body = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(json_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                &json!({"error": {"message": "too large"}}),
            ))
        }
    };
    let headers: serde_json::Map<String, Value> = parts
        .headers
        .keys()
        .map(|k| {
            let vals: Vec<&str> = parts
                .headers
                .get_all(k)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            (k.as_str().to_string(), Value::String(vals.join(", ")))
        })
        .collect();
    let record = json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "headers": headers,
        "body_len": body.len(),
        "body_sha256": hex::encode(Sha256::digest(&body)),
        "body": String::from_utf8_lossy(&body[..body.len().min(65536)]),
    });
    state
        .count
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    {
        let mut r = state.recent.lock();
        if r.len() >= RECORD_LIMIT {
            r.pop_front();
        }
        r.push_back(record);
    }

    let mode = parts
        .headers
        .get("x-mock-mode")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let event_delay = Duration::from_millis(header_ms(&parts, "x-mock-event-delay-ms", 0));
    match mode.as_str() {
        "slow" => {
            tokio::time::sleep(Duration::from_millis(header_ms(
                &parts,
                "x-mock-delay-ms",
                2000,
            )))
            .await
        }
        "invalid_json" => {
            return Ok(full(
                StatusCode::OK,
                "application/json",
                "{\"id\": \"chatcmpl-broken\", \"choices\": [",
            ))
        }
        "error_500" => {
            return Ok(json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({"error": {"message": "mock failure", "type": "server_error"}}),
            ))
        }
        "error_429" => {
            let mut r = json_response(
                StatusCode::TOO_MANY_REQUESTS,
                &json!({"error": {"message": "rate limited", "type": "rate_limit_error"}}),
            );
            r.headers_mut()
                .insert("retry-after", http::HeaderValue::from_static("2"));
            return Ok(r);
        }
        "redirect" => {
            let mut r = full(StatusCode::FOUND, "text/html", "moved");
            r.headers_mut().insert(
                "location",
                http::HeaderValue::from_static("https://elsewhere.example/"),
            );
            return Ok(r);
        }
        "html" => {
            return Ok(full(
                StatusCode::OK,
                "text/html",
                "<html>gateway error page</html>",
            ))
        }
        "reset_mid_body" | "reset_mid_stream" => {
            // Promise a longer body than is sent: hyper aborts the connection part-way,
            // as a provider that crashes or a middlebox that resets would.
            let (ctype, body) = if mode == "reset_mid_body" {
                let v = json!({"id": "chatcmpl-cut", "object": "chat.completion",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "x".repeat(4000)}}]});
                ("application/json", v.to_string())
            } else {
                let e = format!("data: {}\n\n", openai_chat("m", "partial"));
                ("text/event-stream", e.repeat(3))
            };
            let sent = if mode == "reset_mid_body" {
                body.len() / 2
            } else {
                body.len()
            };
            // The pause lets hyper flush what was sent before it aborts.
            let parts = vec![body[..sent].to_string(), String::new()];
            let stream = async_stream(parts, Duration::from_millis(200));
            return Ok(Response::builder()
                .status(200)
                .header("content-type", ctype)
                .header("content-length", body.len() + 4096)
                .body(BodyExt::boxed(StreamBody::new(stream)))
                .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed())));
        }
        "endless_stream" => {
            // Events forever (until the client or keygate stops reading).
            let chunk = format!("data: {}\n\n", openai_chat("m", &"x".repeat(1000)));
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
            tokio::spawn(async move {
                while tx
                    .send(Ok(Frame::data(Bytes::from(chunk.clone()))))
                    .await
                    .is_ok()
                {
                    if !event_delay.is_zero() {
                        tokio::time::sleep(event_delay).await;
                    }
                }
            });
            return Ok(Response::builder()
                .status(200)
                .header("content-type", "text/event-stream")
                .body(BodyExt::boxed(StreamBody::new(
                    tokio_stream::wrappers::ReceiverStream::new(rx),
                )))
                .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed())));
        }
        "wrong_shape" => {
            return Ok(full(
                StatusCode::OK,
                "application/json",
                r#"{"id":"x","object":"thing"}"#,
            ))
        }
        "huge" => {
            let filler = "x".repeat(12 * 1024 * 1024);
            return Ok(json_response(
                StatusCode::OK,
                &json!({"id": "chatcmpl-huge", "object": "chat.completion", "filler": filler}),
            ));
        }
        _ => {}
    }
    let req_json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = req_json
        .get("model")
        .and_then(|m| m.as_str())
        .unwrap_or("mock-model")
        .to_string();
    if let Some(r) = key_egress_answer(&mode, &parts, &model) {
        return Ok(r);
    }
    let stream = req_json.get("stream") == Some(&Value::Bool(true));
    let mut text = "Hello from the keygate mock provider.".to_string();
    if mode == "echo_credential" || mode == "echo_credential_body" {
        text = format!("I received the key {}", received_credential(&parts));
    }
    let echo = mode == "echo";
    if echo {
        text = last_user_text(&req_json);
    }
    let sse = |events: Vec<String>, delay| sse(if echo { halves(events) } else { events }, delay);
    // A provider that rate-limits one key: 429 when the received credential is this one.
    if let Some(limited) = parts
        .headers
        .get("x-mock-429-key")
        .and_then(|v| v.to_str().ok())
    {
        if received_credential(&parts) == limited {
            let mut r = json_response(
                StatusCode::TOO_MANY_REQUESTS,
                &json!({"error": {"message": "rate limited", "type": "rate_limit_error"}}),
            );
            r.headers_mut()
                .insert("retry-after", http::HeaderValue::from_static("30"));
            return Ok(r);
        }
    }

    let mut resp = if path.ends_with("/chat/completions") && parts.method == http::Method::POST {
        if stream {
            let include_usage =
                req_json.pointer("/stream_options/include_usage") == Some(&Value::Bool(true));
            sse(
                openai_stream(&model, &pieces(&text, echo, false), include_usage),
                event_delay,
            )
        } else {
            json_response(StatusCode::OK, &openai_chat(&model, &text))
        }
    } else if path.ends_with("/completions") && parts.method == http::Method::POST {
        json_response(
            StatusCode::OK,
            &json!({"id": "cmpl-mock", "object": "text_completion", "model": model,
            "choices": [{"text": text, "index": 0, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}}),
        )
    } else if path.ends_with("/embeddings") && parts.method == http::Method::POST {
        json_response(
            StatusCode::OK,
            &json!({"object": "list", "model": model,
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -0.2, 0.3]}],
            "usage": {"prompt_tokens": 5, "total_tokens": 5}}),
        )
    } else if path.ends_with("/messages") && parts.method == http::Method::POST {
        if stream {
            sse(
                anthropic_stream(&model, &pieces(&text, echo, true)),
                event_delay,
            )
        } else {
            json_response(StatusCode::OK, &anthropic_message(&model, &text))
        }
    } else if path.ends_with(":streamGenerateContent") {
        let words: Vec<String> = pieces(&text, echo, true)
            .iter()
            .map(|w| format!("data: {}\n\n", gemini_response(w)))
            .collect();
        sse(words, event_delay)
    } else if path.ends_with(":generateContent") {
        json_response(StatusCode::OK, &gemini_response(&text))
    } else if path.trim_end_matches('/').ends_with("/models") && parts.method == http::Method::GET {
        json_response(
            StatusCode::OK,
            &json!({"object": "list", "data": [
            {"id": "gpt-4o", "object": "model", "owned_by": "mock"},
            {"id": "gpt-4o-mini", "object": "model", "owned_by": "mock"}]}),
        )
    } else {
        json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": {"message": format!("mock: no endpoint {path}"), "type": "invalid_request_error"}}),
        )
    };
    if mode == "echo_credential" {
        if let Ok(v) = http::HeaderValue::from_str(&received_credential(&parts)) {
            resp.headers_mut().insert("x-echo-credential", v);
        }
    }
    if mode == "set_cookie" {
        resp.headers_mut().insert(
            "set-cookie",
            http::HeaderValue::from_static("session=abc; Path=/"),
        );
        resp.headers_mut().insert(
            "server",
            http::HeaderValue::from_static("mock-provider/1.0"),
        );
        resp.headers_mut().insert(
            "openai-organization",
            http::HeaderValue::from_static("org-mock"),
        );
    }
    if mode == "hostile_headers" {
        let h = resp.headers_mut();
        for (name, value) in [
            // Headers that steer browsers: never for the client.
            ("access-control-allow-credentials", "true"),
            ("access-control-allow-origin", "*"),
            ("refresh", "0; url=https://evil.example/"),
            ("location", "https://evil.example/"),
            (
                "link",
                "<https://evil.example/x.js>; rel=preload; as=script",
            ),
            ("content-disposition", "attachment; filename=x.html"),
            ("content-security-policy", "default-src *"),
            ("strict-transport-security", "max-age=0"),
            // Headers SDKs read: they pass.
            ("x-ratelimit-remaining-requests", "99"),
            ("openai-processing-ms", "12"),
            ("request-id", "req_mock123"),
        ] {
            h.insert(name, http::HeaderValue::from_static(value));
        }
    }
    if mode == "dup_content_type" {
        // Browsers take the last one.
        resp.headers_mut()
            .append("content-type", http::HeaderValue::from_static("text/html"));
    }
    Ok(resp)
}

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
fn key_egress_answer(
    mode: &str,
    parts: &http::request::Parts,
    model: &str,
) -> Option<Response<Body>> {
    let key = received_credential(parts);
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
            Some(full(StatusCode::UNAUTHORIZED, "application/json", body))
        }
        "split_key" => {
            let field = parts
                .headers
                .get("x-mock-field")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("content");
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

/// Serve on an already bound listener until the process ends; with `tls`, every
/// connection is a TLS server handshake first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<SslAcceptor>>,
) -> std::io::Result<()> {
    let state = Arc::new(MockState::default());
    loop {
        let (stream, _) = listener.accept().await?;
        // As providers' edges do: each SSE event goes out when written. With Nagle on, an
        // event waits for the ACK of the one before, which the proxy's kernel may delay by
        // 40 ms (seen in `make bench` streams through both Pingora proxies).
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(state.clone(), req));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            match tls {
                None => {
                    let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                }
                Some(acceptor) => {
                    let Ok(ssl) = Ssl::new(acceptor.context()) else {
                        return;
                    };
                    let Ok(mut s) = SslStream::new(ssl, stream) else {
                        return;
                    };
                    if std::pin::Pin::new(&mut s).accept().await.is_err() {
                        return;
                    }
                    let _ = builder.serve_connection(TokioIo::new(s), svc).await;
                }
            }
        });
    }
}

/// A TLS acceptor for `--tls` (HTTP/1.1 only, to keep the mock simple).
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> std::io::Result<Arc<SslAcceptor>> {
    let err = |e: pingora::tls::error::ErrorStack| std::io::Error::other(e.to_string());
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).map_err(err)?;
    b.set_certificate_chain_file(cert).map_err(err)?;
    b.set_private_key_file(key, SslFiletype::PEM).map_err(err)?;
    Ok(Arc::new(b.build()))
}

/// Bind `addr` and report the bound address (useful with port 0).
pub async fn bind(addr: SocketAddr) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let l = tokio::net::TcpListener::bind(addr).await?;
    let a = l.local_addr()?;
    Ok((l, a))
}

/// `keygate mock-provider`: run in the foreground on its own runtime.
pub fn run(addr: SocketAddr, tls: Option<Arc<SslAcceptor>>) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (l, bound) = bind(addr).await?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        println!("mock-provider listening on {scheme}://{bound}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        serve(l, tls).await
    })
}
