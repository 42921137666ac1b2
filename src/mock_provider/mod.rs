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
//! never hold the key, a JSON parser yields it), `escaped_key_error` (the same in a 400
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
//! `wrong_shape` (200 `{"id":"x","object":"thing"}` on any path), `key_reason` (a normal
//! answer whose status line reads `200 Bearer <credential>`), `key_header_name` (a normal
//! answer with a header `x-ratelimit-<credential, lower-cased>: 1`); on
//! `/v1/audio/speech`, `echo_credential` puts the credential in the audio bytes, across
//! the first two chunks.
//!
//! Failover tests (issue #21) use `error_500`, `error_429` (`Retry-After: 2`), `slow` with a
//! long `x-mock-delay-ms` (a stall before the header), `reset_mid_stream` (cut after its
//! first events) and a stopped mock (connections refused); `load-tests/run.sh` kills and
//! restarts one on a fixed `--listen` port. Answers name the model asked for (`model`,
//! Gemini's `modelVersion` from the path), so a renamed model shows.
//!
//! Control endpoints (not recorded): `GET /__mock/requests`, `POST /__mock/reset`.
//!
//! `POST /v1/traces` is an OTLP/HTTP collector sink (not recorded): the body is read and
//! dropped, the answer is 200 with an empty `ExportTraceServiceResponse`. `make bench`
//! points its traced keygate here, so that the collector it measures against is a Rust
//! process costing about what a real collector's receiver does, not a Python one that
//! takes a core from keygate on a two-core machine.

mod bodies;
mod key_egress;
mod media;
mod modes;
mod realtime;
mod stream;
mod util;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use pingora::tls::ssl::{Ssl, SslAcceptor, SslFiletype, SslMethod};
use pingora::tls::tokio_ssl::SslStream;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bodies::{anthropic_message, gemini_response, last_user_text, openai_chat};
use key_egress::key_egress_answer;
use modes::{add_mode_headers, failure_answer};
use stream::{anthropic_stream, halves, openai_stream, pieces, sse};
use util::{full, header_ms, json_response, received_credential, Body, MockState};

/// Largest request body the mock reads.
const MAX_BODY: usize = 32 * 1024 * 1024;

/// An answer, with the provider's own request id (`x-request-id: req_mock_<n>`, as OpenAI
/// sends) unless the answer names one.
async fn handle(
    state: Arc<MockState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let n = state.count.load(std::sync::atomic::Ordering::SeqCst) + 1;
    let mut r = answer(state, req).await?;
    let h = r.headers_mut();
    if !h.contains_key("x-request-id") && !h.contains_key("request-id") {
        if let Ok(v) = http::HeaderValue::from_str(&format!("req_mock_{n}")) {
            h.insert("x-request-id", v);
        }
    }
    Ok(r)
}

async fn answer(
    state: Arc<MockState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if realtime::is_handshake(&req) {
        return Ok(realtime::accept(state, req));
    }
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    if path == "/__mock/requests" {
        let recent: Vec<Value> = state.recent.lock().iter().cloned().collect();
        let count = state.count.load(std::sync::atomic::Ordering::SeqCst);
        let connections = state.connections.load(std::sync::atomic::Ordering::SeqCst);
        return Ok(json_response(
            StatusCode::OK,
            &json!({"count": count, "connections": connections, "requests": recent}),
        ));
    }
    if path == "/__mock/reset" {
        state.count.store(0, std::sync::atomic::Ordering::SeqCst);
        state.recent.lock().clear();
        return Ok(json_response(StatusCode::OK, &json!({"ok": true})));
    }
    if path == "/v1/traces" && parts.method == http::Method::POST {
        let status = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
            Ok(_) => StatusCode::OK,
            Err(_) => StatusCode::PAYLOAD_TOO_LARGE,
        };
        return Ok(full(status, "application/x-protobuf", bytes::Bytes::new()));
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
    state.record(record);

    let mode = parts
        .headers
        .get("x-mock-mode")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let event_delay = Duration::from_millis(header_ms(&parts, "x-mock-event-delay-ms", 0));
    if let Some(r) = failure_answer(&mode, &parts, event_delay).await {
        return Ok(r);
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
    if let Some(r) = media::upload(&path, &parts, &body).await {
        return Ok(r);
    }
    if let Some(r) = media::answer(&path, &req_json, &parts) {
        return Ok(r);
    }
    let stream = req_json.get("stream") == Some(&Value::Bool(true));
    let mut text = "Hello from the keygate mock provider.".to_string();
    if mode == "echo_credential" || mode == "echo_credential_body" {
        text = format!("I received the key {}", received_credential(&parts.headers));
    }
    let echo = mode == "echo";
    if echo {
        text = last_user_text(&req_json);
    }
    // `x-mock-usage: detailed`: usage with cache and reasoning tokens (bodies::detailed).
    let detailed = parts
        .headers
        .get("x-mock-usage")
        .is_some_and(|v| v == "detailed");
    let body_of = |v: Value| if detailed { bodies::detailed(v) } else { v };
    let sse = |events: Vec<String>, delay| {
        let events = if detailed {
            events.into_iter().map(bodies::detailed_event).collect()
        } else {
            events
        };
        sse(if echo { halves(events) } else { events }, delay)
    };
    // A provider that rate-limits one key: 429 when the received credential is this one.
    if let Some(limited) = parts
        .headers
        .get("x-mock-429-key")
        .and_then(|v| v.to_str().ok())
    {
        if received_credential(&parts.headers) == limited {
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
            json_response(StatusCode::OK, &body_of(openai_chat(&model, &text)))
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
            json_response(StatusCode::OK, &body_of(anthropic_message(&model, &text)))
        }
    } else if path.ends_with(":streamGenerateContent") {
        let chunks: Vec<Value> = pieces(&text, echo, true)
            .iter()
            .map(|w| gemini_response(&gemini_model(&path), w))
            .collect();
        let alt_sse = parts
            .uri
            .query()
            .is_some_and(|q| q.split('&').any(|p| p == "alt=sse"));
        if alt_sse {
            sse(
                chunks.iter().map(|c| format!("data: {c}\n\n")).collect(),
                event_delay,
            )
        } else {
            // Without `alt=sse` Gemini streams one JSON array, an element at a time; the
            // last chunk may carry only the usage (no candidates).
            let mut chunks = chunks;
            chunks.push(json!({"usageMetadata": {"promptTokenCount": 12,
                "candidatesTokenCount": 27, "totalTokenCount": 39},
                "modelVersion": gemini_model(&path)}));
            stream::json_array(&chunks, event_delay)
        }
    } else if path.ends_with(":generateContent") {
        json_response(
            StatusCode::OK,
            &body_of(gemini_response(&gemini_model(&path), &text)),
        )
    } else if path.trim_end_matches('/').ends_with("/v1beta/models")
        && parts.method == http::Method::GET
    {
        // Gemini's own list shape.
        json_response(
            StatusCode::OK,
            &json!({"models": [
            {"name": "models/gemini-2.0-flash", "displayName": "Gemini 2.0 Flash",
             "supportedGenerationMethods": ["generateContent", "countTokens"]}],
            "nextPageToken": "tok"}),
        )
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
    add_mode_headers(&mode, &parts, &mut resp);
    Ok(resp)
}

/// The model a Gemini path names (`…/models/<model>:<method>`).
fn gemini_model(path: &str) -> String {
    path.split("/models/")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .unwrap_or("gemini-mock")
        .to_string()
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
        state
            .connections
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
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
                    let _ = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
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
                    let _ = builder
                        .serve_connection_with_upgrades(TokioIo::new(s), svc)
                        .await;
                }
            }
        });
    }
}

/// A TLS acceptor for `--tls` (HTTP/1.1 only, to keep the mock simple).
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
    legacy: bool,
) -> std::io::Result<Arc<SslAcceptor>> {
    let err = |e: pingora::tls::error::ErrorStack| std::io::Error::other(e.to_string());
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).map_err(err)?;
    if legacy {
        // TLS 1.1 only, with RSA key exchange: no handshake signature, so a client at
        // OpenSSL's default security level still completes it (Pingora's cipher list
        // offers AES128-SHA).
        use pingora::tls::ssl::{SslOptions, SslVersion};
        // The Mozilla profile switches the old versions off by option as well.
        b.clear_options(SslOptions::NO_TLSV1 | SslOptions::NO_TLSV1_1);
        let v = SslVersion::TLS1_1;
        b.set_min_proto_version(Some(v)).map_err(err)?;
        b.set_max_proto_version(Some(v)).map_err(err)?;
        b.set_cipher_list("AES128-SHA:@SECLEVEL=0").map_err(err)?;
    }
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
