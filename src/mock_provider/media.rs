//! The mock's voice and media endpoints (OpenAI shapes, SPEC §8.1): speech as audio bytes
//! (or SSE with `stream_format: "sse"`), transcriptions, translations and image edits
//! from multipart uploads, and Realtime client secrets.

use super::stream::{async_stream, sse};
use super::util::{json_response, Body};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::{Response, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

/// The content type OpenAI answers each `response_format` with.
fn audio_type(format: &str) -> &'static str {
    match format {
        "wav" => "audio/wav",
        "opus" => "audio/opus",
        "aac" => "audio/aac",
        "flac" => "audio/flac",
        "pcm" => "audio/pcm",
        _ => "audio/mpeg",
    }
}

/// Audio for `text`: an MP3-like header and `len` bytes made from the text (every byte
/// value occurs, as in real audio), in chunks.
fn audio_bytes(text: &str, len: usize) -> Vec<u8> {
    let seed: Vec<u8> = text.bytes().chain(0..=255u8).collect();
    let mut out = b"ID3\x04\x00\x00\x00\x00\x00\x00".to_vec();
    out.extend((0..len).map(|i| seed[i % seed.len()].wrapping_mul(31).wrapping_add(i as u8)));
    out
}

/// `POST /v1/audio/speech`: audio in the asked format (`x-mock-audio-bytes` sets the
/// length, default 4096), sent in 1 KiB chunks; with `stream_format: "sse"`,
/// `speech.audio.delta` events and a `speech.audio.done` with usage.
pub(super) fn speech(req: &Value, parts: &http::request::Parts) -> Response<Body> {
    let text = req.get("input").and_then(Value::as_str).unwrap_or("");
    let len = parts
        .headers
        .get("x-mock-audio-bytes")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(4096);
    let mut audio = audio_bytes(text, len);
    if parts
        .headers
        .get("x-mock-mode")
        .is_some_and(|m| m == "echo_credential")
    {
        // The credential in the audio, across the first two 1 KiB chunks.
        let key = super::util::received_credential(&parts.headers);
        let at = 1024usize.saturating_sub(key.len() / 2);
        audio.splice(at..at, key.bytes());
    }
    if req.get("stream_format").and_then(Value::as_str) == Some("sse") {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut events: Vec<String> = audio
            .chunks(1024)
            .map(|c| {
                format!(
                    "data: {}\n\n",
                    json!({"type": "speech.audio.delta", "audio": b64.encode(c)})
                )
            })
            .collect();
        let tokens = text.len().div_ceil(4);
        events.push(format!(
            "data: {}\n\n",
            json!({"type": "speech.audio.done", "usage": {"input_tokens": tokens, "output_tokens": audio.len() / 100, "total_tokens": tokens + audio.len() / 100}})
        ));
        return sse(events, Duration::ZERO);
    }
    let format = req
        .get("response_format")
        .and_then(Value::as_str)
        .unwrap_or("mp3");
    let chunks: Vec<Bytes> = audio.chunks(1024).map(Bytes::copy_from_slice).collect();
    let stream = async_stream(chunks, Duration::ZERO);
    Response::builder()
        .status(200)
        .header("content-type", audio_type(format))
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

/// The answer to a JSON request on a media endpoint the mock knows, if `path` is one.
pub(super) fn answer(
    path: &str,
    req: &Value,
    parts: &http::request::Parts,
) -> Option<Response<Body>> {
    if parts.method != http::Method::POST {
        return None;
    }
    Some(if path.ends_with("/audio/speech") {
        speech(req, parts)
    } else if path.ends_with("/realtime/client_secrets") {
        json_response(
            StatusCode::OK,
            &json!({"value": ephemeral(), "expires_at": expires(), "session": {"type": "realtime", "model": req.pointer("/session/model").cloned().unwrap_or(Value::Null)}}),
        )
    } else if path.ends_with("/realtime/sessions") {
        json_response(
            StatusCode::OK,
            &json!({"id": "sess_mock", "object": "realtime.session", "model": req.get("model").cloned().unwrap_or(Value::Null), "client_secret": {"value": ephemeral(), "expires_at": expires()}}),
        )
    } else {
        return None;
    })
}

/// A fresh ephemeral client secret, as OpenAI mints them (`ek_…`).
fn ephemeral() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    format!("ek_{}", hex::encode(b))
}

fn expires() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() + 60)
}

/// What the mock read of an upload's form.
#[derive(Default)]
struct Upload {
    model: String,
    file_name: String,
    file_bytes: usize,
    file_sha256: String,
    response_format: String,
}

async fn read_form(content_type: &str, body: Bytes) -> Result<Upload, multer::Error> {
    use sha2::{Digest, Sha256};
    let boundary = multer::parse_boundary(content_type)?;
    let stream = futures_util_once(body);
    let mut mp = multer::Multipart::new(stream, boundary);
    let mut up = Upload::default();
    while let Some(field) = mp.next_field().await? {
        match field.name().unwrap_or("") {
            "model" => up.model = field.text().await?,
            "response_format" => up.response_format = field.text().await?,
            "file" | "image" | "image[]" => {
                up.file_name = field.file_name().unwrap_or("").to_string();
                let data = field.bytes().await?;
                up.file_bytes += data.len();
                up.file_sha256 = hex::encode(Sha256::digest(&data));
            }
            _ => {
                field.bytes().await?;
            }
        }
    }
    Ok(up)
}

/// A one-item stream of `body`.
fn futures_util_once(
    body: Bytes,
) -> impl futures_core::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
    tokio_stream::iter([Ok(body)])
}

/// The answer to a multipart upload (transcriptions, translations, image edits and
/// variations), if `path` takes one: what was received, so tests can compare.
pub(super) async fn upload(
    path: &str,
    parts: &http::request::Parts,
    body: &Bytes,
) -> Option<Response<Body>> {
    let ct = parts.headers.get("content-type")?.to_str().ok()?;
    if !ct.starts_with("multipart/form-data") {
        return None;
    }
    let up = match read_form(ct, body.clone()).await {
        Ok(up) => up,
        Err(e) => {
            return Some(json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": {"message": format!("mock: bad multipart: {e}"), "type": "invalid_request_error"}}),
            ))
        }
    };
    let text = format!(
        "Transcript of {} ({} bytes, sha256 {}) by {}.",
        up.file_name, up.file_bytes, up.file_sha256, up.model
    );
    Some(
        if path.ends_with("/audio/transcriptions") || path.ends_with("/audio/translations") {
            if up.response_format == "text" {
                super::util::full(
                    StatusCode::OK,
                    "text/plain; charset=utf-8",
                    format!("{text}\n"),
                )
            } else {
                let input = up.file_bytes.div_ceil(1000);
                json_response(
                    StatusCode::OK,
                    &json!({"text": text, "usage": {"type": "tokens", "input_tokens": input, "output_tokens": 12, "total_tokens": input + 12}}),
                )
            }
        } else {
            use base64::Engine;
            let png = base64::engine::general_purpose::STANDARD.encode(b"\x89PNG\r\n\x1a\nmock");
            json_response(
                StatusCode::OK,
                &json!({"created": expires(), "data": [{"b64_json": png, "revised_prompt": text}]}),
            )
        },
    )
}
