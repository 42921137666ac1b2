//! Watching the response body as it passes: usage from JSON bodies and stream events.

use super::ctx::{Ctx, ResponseWatch};
use crate::response::sse::{SseFramer, DEFAULT_MAX_EVENT};
use crate::response::usage;
use bytes::Bytes;
use pingora::http::ResponseHeader;

/// Decide how to watch the body, from the response header.
pub fn start(resp: &ResponseHeader, ctx: &mut Ctx) {
    let ct = resp
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let limit = ctx
        .route()
        .map_or(8 * 1024 * 1024, |r| r.upstream.max_response_bytes);
    ctx.response = if ct.starts_with("text/event-stream") {
        ResponseWatch::Sse(SseFramer::new(DEFAULT_MAX_EVENT))
    } else if ct.starts_with("application/json") {
        ResponseWatch::Json {
            buf: Vec::new(),
            limit,
            overflow: false,
        }
    } else {
        ResponseWatch::None
    };
}

/// See one chunk of the body.
pub fn chunk(body: &Option<Bytes>, end_of_stream: bool, ctx: &mut Ctx) {
    let data = body.as_deref().unwrap_or(&[]);
    ctx.response_bytes += data.len();
    match &mut ctx.response {
        ResponseWatch::None => {}
        ResponseWatch::Json {
            buf,
            limit,
            overflow,
        } => {
            if !*overflow {
                if buf.len() + data.len() > *limit {
                    *overflow = true;
                    buf.clear();
                } else {
                    buf.extend_from_slice(data);
                }
            }
            if end_of_stream && !*overflow {
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(buf) {
                    ctx.usage = usage::find(&v);
                }
            }
        }
        ResponseWatch::Sse(framer) => {
            let Ok(events) = framer.push(data) else {
                ctx.response = ResponseWatch::None;
                return;
            };
            for ev in events {
                if ev.data.starts_with('{') {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&ev.data) {
                        if let Some(u) = usage::find(&v) {
                            usage::merge(&mut ctx.usage, u);
                        }
                    }
                }
            }
        }
    }
}
