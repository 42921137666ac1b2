//! SSE answers: the streamed body (events written one by one, a pause between them),
//! the pieces a text is cut into, and the OpenAI and Anthropic event sequences.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::Response;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::time::Duration;

use super::util::Body;

/// Every event cut in two writes (at a character boundary near its middle).
pub(super) fn halves(events: Vec<String>) -> Vec<String> {
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

pub(super) fn sse(events: Vec<String>, delay: Duration) -> Response<Body> {
    let stream = async_stream(events, delay);
    Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

/// A JSON array written an element at a time (Gemini's `streamGenerateContent` without
/// `alt=sse`, as google-api-core's REST streaming reads it).
pub(super) fn json_array(items: &[serde_json::Value], delay: Duration) -> Response<Body> {
    let mut pieces: Vec<String> = items
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{}{v}", if i == 0 { "[" } else { ",\r\n" }))
        .collect();
    pieces.push("]".into());
    Response::builder()
        .status(200)
        .header("content-type", "application/json; charset=UTF-8")
        .body(BodyExt::boxed(StreamBody::new(async_stream(pieces, delay))))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

pub(super) fn async_stream<T: Into<Bytes> + Send + 'static>(
    events: Vec<T>,
    delay: Duration,
) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + Sync {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    tokio::spawn(async move {
        for (i, e) in events.into_iter().enumerate() {
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if tx.send(Ok(Frame::data(e.into()))).await.is_err() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Stream pieces: words (with a space before or after), or 3-character deltas for `echo`.
pub(super) fn pieces(text: &str, echo: bool, space_after: bool) -> Vec<String> {
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

pub(super) fn openai_stream(model: &str, pieces: &[String], include_usage: bool) -> Vec<String> {
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

pub(super) fn anthropic_stream(model: &str, pieces: &[String]) -> Vec<String> {
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
