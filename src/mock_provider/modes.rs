//! The failure modes of `x-mock-mode` that replace the normal answer (`invalid_json`,
//! `error_500`, `error_429`, `redirect`, `html`, `reset_mid_body` / `reset_mid_stream`,
//! `endless_stream`, `wrong_shape`, `huge`, and `slow`'s wait), and the ones that add
//! headers to it (`echo_credential`, `set_cookie`, `hostile_headers`,
//! `dup_content_type`).

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Response, StatusCode};
use serde_json::json;
use std::convert::Infallible;
use std::time::Duration;

use super::bodies::openai_chat;
use super::stream::async_stream;
use super::util::{full, header_ms, json_response, received_credential, Body};

/// The answer of a failure mode that replaces the normal one, if `mode` is one; `slow`
/// waits here and then answers normally (`None`).
pub(super) async fn failure_answer(
    mode: &str,
    parts: &http::request::Parts,
    event_delay: Duration,
) -> Option<Response<Body>> {
    match mode {
        "slow" => {
            tokio::time::sleep(Duration::from_millis(header_ms(
                parts,
                "x-mock-delay-ms",
                2000,
            )))
            .await
        }
        "invalid_json" => {
            return Some(full(
                StatusCode::OK,
                "application/json",
                "{\"id\": \"chatcmpl-broken\", \"choices\": [",
            ))
        }
        "error_500" => {
            return Some(json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({"error": {"message": "mock failure", "type": "server_error"}}),
            ))
        }
        // OpenAI's answers to a key it refuses: the key masked to its prefix and last
        // four characters, and the account it belongs to.
        "error_401" | "error_403" => {
            let key = super::util::received_credential(&parts.headers);
            let masked = format!(
                "{}****{}",
                key.get(..8).unwrap_or(""),
                key.get(key.len().saturating_sub(4)..).unwrap_or("")
            );
            let (status, message) = if mode == "error_401" {
                (StatusCode::UNAUTHORIZED, format!("Incorrect API key provided: {masked}. You can find your API key at https://platform.openai.com/account/api-keys."))
            } else {
                (StatusCode::FORBIDDEN, "Project `proj_mock123` does not have access to model `gpt-4o` in organization org-mock123.".to_string())
            };
            return Some(json_response(
                status,
                &json!({"error": {"message": message, "type": "invalid_request_error", "code": "invalid_api_key"}}),
            ));
        }
        "error_429" => {
            let mut r = json_response(
                StatusCode::TOO_MANY_REQUESTS,
                &json!({"error": {"message": "rate limited", "type": "rate_limit_error"}}),
            );
            r.headers_mut()
                .insert("retry-after", http::HeaderValue::from_static("2"));
            return Some(r);
        }
        "redirect" => {
            let mut r = full(StatusCode::FOUND, "text/html", "moved");
            r.headers_mut().insert(
                "location",
                http::HeaderValue::from_static("https://elsewhere.example/"),
            );
            return Some(r);
        }
        // One stream event of 3 MiB (an image's base64, as gpt-image-1's partial images
        // and Gemini's inline data come), then the end.
        "big_event" => {
            let big = json!({"id": "chatcmpl-big", "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"content": "x".repeat(3 << 20)}}]});
            let events = vec![format!("data: {big}\n\n"), "data: [DONE]\n\n".to_string()];
            return Some(super::stream::sse(events, Duration::ZERO));
        }
        "html" => {
            return Some(full(
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
            return Some(
                Response::builder()
                    .status(200)
                    .header("content-type", ctype)
                    .header("content-length", body.len() + 4096)
                    .body(BodyExt::boxed(StreamBody::new(stream)))
                    .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed())),
            );
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
            return Some(
                Response::builder()
                    .status(200)
                    .header("content-type", "text/event-stream")
                    .body(BodyExt::boxed(StreamBody::new(
                        tokio_stream::wrappers::ReceiverStream::new(rx),
                    )))
                    .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed())),
            );
        }
        "wrong_shape" => {
            return Some(full(
                StatusCode::OK,
                "application/json",
                r#"{"id":"x","object":"thing"}"#,
            ))
        }
        "huge" => {
            // A well-formed answer of 12 MiB (over the default `max_response_bytes`).
            let text = "x".repeat(12 * 1024 * 1024);
            return Some(json_response(StatusCode::OK, &openai_chat("gpt-4o", &text)));
        }
        _ => {}
    }
    None
}

/// The headers of the modes that change a normal answer's headers.
pub(super) fn add_mode_headers(
    mode: &str,
    parts: &http::request::Parts,
    resp: &mut Response<Body>,
) {
    if mode == "echo_credential" {
        if let Ok(v) = http::HeaderValue::from_str(&received_credential(&parts.headers)) {
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
    if mode == "key_reason" {
        // The status line's reason phrase: `HTTP/1.1 200 Bearer <credential>`.
        let reason = format!("Bearer {}", received_credential(&parts.headers));
        if let Ok(reason) = hyper::ext::ReasonPhrase::try_from(reason) {
            resp.extensions_mut().insert(reason);
        }
    }
    if mode == "key_header_name" {
        // An allowed prefix, the credential (lower-cased, as HTTP writes names) after it.
        let name = format!(
            "x-ratelimit-{}",
            received_credential(&parts.headers).to_ascii_lowercase()
        );
        if let Ok(name) = http::HeaderName::from_bytes(name.as_bytes()) {
            resp.headers_mut()
                .insert(name, http::HeaderValue::from_static("1"));
        }
    }
    if mode == "dup_content_type" {
        // Browsers take the last one.
        resp.headers_mut()
            .append("content-type", http::HeaderValue::from_static("text/html"));
    }
}
