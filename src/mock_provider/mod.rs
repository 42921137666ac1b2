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
    } else if path.ends_with("/models") && parts.method == http::Method::GET {
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
    Ok(resp)
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
