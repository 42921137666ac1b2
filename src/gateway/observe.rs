//! The response on its way to the client: checked (content type, size, shape, secret
//! egress, block patterns) and read for usage.
//!
//! Pingora sends the response header before the body is seen. Header-level refusals
//! (redirects, content types, declared size, secrets in headers) are clean 502s. A
//! JSON body is held back whole and checked at its end: when the provider's answer
//! arrived in one piece with its header (the common case for small bodies), the
//! header has not been written yet and the client gets a clean 502; otherwise the
//! response is aborted, so the client sees a failed transfer and never the bad body.
//! Streams are checked event by event; a bad event ends the stream with an SSE
//! `error` event and nothing after it is forwarded.
//!
//! When the request was pseudonymized, placeholders are restored after the checks: in
//! the whole JSON body (sent chunked, its length changes) or event by event
//! ([`crate::pii::stream`]).

use super::ctx::{Ctx, ResponseWatch};
use crate::config::Runtime;
use crate::error::GatewayError;
use crate::pii::stream::{event_bytes, StreamRestorer};
use crate::pii::Pseudonyms;
use crate::response::egress::{self, Rules, StreamText};
use crate::response::sse::Event;
use crate::response::sse::{SseFramer, DEFAULT_MAX_EVENT};
use crate::response::usage;
use crate::response::validate::{self, Endpoint, Rejection};
use crate::telemetry::metrics::METRICS;
use bytes::Bytes;
use http::response::Parts;

/// What this request's answer is checked against: every configured secret, and the
/// route's block patterns.
fn rules<'a>(rt: &'a Runtime, route: Option<usize>) -> Rules<'a> {
    Rules {
        secrets: &rt.scanner,
        patterns: route
            .and_then(|i| rt.routes.get(i))
            .and_then(|r| r.block_patterns.as_ref()),
    }
}

fn reject(ctx: &Ctx, r: Rejection) -> GatewayError {
    let up = ctx.route().map_or("none", |r| r.upstream.name.as_str());
    METRICS
        .response_rejected
        .with_label_values(&[up, r.reason()])
        .inc();
    log::warn!(
        "request {}: upstream {up} response refused: {}",
        ctx.request_id,
        r.reason()
    );
    if r == Rejection::Deadline {
        return GatewayError::new(
            crate::error::ErrorCode::UpstreamTimeout,
            "The provider did not answer within the total time allowed.",
        )
        .detail(r.reason());
    }
    let msg = match r {
        Rejection::SecretEgress => {
            "The provider's response was withheld because it contained a secret."
        }
        Rejection::BlockedPattern => "The provider's response was withheld by a content rule.",
        Rejection::TooLarge => "The provider's response is too large.",
        _ => "The provider's response was invalid.",
    };
    GatewayError::upstream(msg).detail(r.reason())
}

/// Check the response header; decide how to watch the body.
pub fn start(resp: &mut Parts, ctx: &mut Ctx) -> Result<(), GatewayError> {
    let status = resp.status.as_u16();
    ctx.upstream_status = Some(status);
    ctx.upstream_answered = Some(std::time::Instant::now());
    if resp.status.is_redirection() {
        return Err(reject(ctx, Rejection::Redirect));
    }
    for (_, v) in resp.headers.iter() {
        if ctx.rt.scanner.contains(v.as_bytes()) {
            return Err(reject(ctx, Rejection::SecretEgress));
        }
    }
    let limit = ctx
        .route()
        .map_or(8 * 1024 * 1024, |r| r.upstream.max_response_bytes);
    let declared = resp
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(reject(ctx, Rejection::TooLarge));
    }
    // Two different types: a browser takes the last, keygate would judge the first.
    let mut types = resp.headers.get_all(http::header::CONTENT_TYPE).iter();
    let first = types.next();
    if types.any(|v| Some(v) != first) {
        return Err(reject(ctx, Rejection::ContentType));
    }
    let ct = first
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let empty = declared == Some(0) || status == 204 || status == 304;
    if !empty && !validate::content_type_allowed(&ct) {
        return Err(reject(ctx, Rejection::ContentType));
    }
    let restoring = ctx.pii.is_some();
    ctx.response = if ct.starts_with("text/event-stream") {
        // keygate may end the stream with its own error event: length is not fixed.
        send_chunked(&mut resp.headers)?;
        ResponseWatch::Sse {
            framer: SseFramer::new(DEFAULT_MAX_EVENT),
            text: StreamText::default(),
            stopped: false,
            dropped_after_stop: 0,
            restorer: restoring.then(Default::default),
        }
    } else if empty {
        ResponseWatch::None
    } else {
        if restoring {
            // Restored values change the body's length.
            send_chunked(&mut resp.headers)?;
        }
        ResponseWatch::Json {
            buf: Vec::new(),
            limit,
        }
    };
    Ok(())
}

/// Send the body with a length keygate does not know up front: chunked, never
/// close-delimited, so a body the upstream cut looks cut to the client (no last chunk)
/// instead of ending cleanly. (Pingora drops the header on h2.)
fn send_chunked(headers: &mut http::HeaderMap) -> Result<(), GatewayError> {
    headers.remove(http::header::CONTENT_LENGTH);
    let chunked = http::HeaderValue::from_static("chunked");
    headers
        .try_insert(http::header::TRANSFER_ENCODING, chunked)
        .map_err(|_| GatewayError::upstream("The provider's response was invalid."))?;
    Ok(())
}

fn endpoint(ctx: &Ctx) -> Endpoint {
    ctx.route().map_or(Endpoint::Other, |r| {
        Endpoint::of(r.upstream.kind, &ctx.upstream_path)
    })
}

/// See one chunk of the body; may replace it. `Err` aborts the response.
pub fn chunk(
    body: &mut Option<Bytes>,
    end_of_stream: bool,
    ctx: &mut Ctx,
) -> Result<(), GatewayError> {
    let data = body.take().unwrap_or_default();
    ctx.response_bytes += data.len();
    let mut watch = std::mem::take(&mut ctx.response);
    let result = match &mut watch {
        ResponseWatch::None => {
            *body = Some(data);
            Ok(())
        }
        ResponseWatch::Json { buf, limit } => {
            if ctx
                .route()
                .is_some_and(|r| ctx.started.elapsed() > r.upstream.total_timeout)
            {
                Err(reject(ctx, Rejection::Deadline))
            } else if buf.len() + data.len() > *limit {
                Err(reject(ctx, Rejection::TooLarge))
            } else {
                buf.extend_from_slice(&data);
                if end_of_stream {
                    finish_json(std::mem::take(buf), body, ctx)
                } else {
                    Ok(())
                }
            }
        }
        ResponseWatch::Sse {
            framer,
            text,
            stopped,
            dropped_after_stop,
            restorer,
        } => {
            let limit = ctx
                .route()
                .map_or(usize::MAX, |r| r.upstream.max_response_bytes);
            let deadline = ctx.route().map(|r| r.upstream.total_timeout);
            if *stopped {
                // The client has its error event; further upstream data is dropped, and an
                // upstream that keeps sending is cut off. Pingora writes response chunks in
                // batches of at most 4 and drops a batch whose filter fails, so abort only
                // well after the batch that carried the error event.
                *dropped_after_stop += 1;
                if *dropped_after_stop > 16 {
                    Err(GatewayError::upstream("The provider's stream was stopped."))
                } else {
                    Ok(())
                }
            } else if ctx.response_bytes > limit
                || deadline.is_some_and(|d| ctx.started.elapsed() > d)
            {
                // An endless stream is bounded like any body, in size and in time: end it
                // with an error event.
                *stopped = true;
                let why = if ctx.response_bytes > limit {
                    Rejection::TooLarge
                } else {
                    Rejection::Deadline
                };
                let _ = reject(ctx, why);
                *body = Some(Bytes::from(validate::error_event(&ctx.request_id)));
                Ok(())
            } else {
                let mut out = sse_chunk(&data, framer, text, stopped, restorer, ctx);
                if end_of_stream && !*stopped {
                    // Text held back for a split placeholder that never completed.
                    if let (Some(r), Some(map)) = (restorer.as_mut(), ctx.pii.as_ref()) {
                        let mut v = out.to_vec();
                        v.extend_from_slice(&r.flush(map));
                        out = Bytes::from(v);
                    }
                }
                *body = Some(out);
                Ok(())
            }
        }
    };
    ctx.response = watch;
    result
}

fn finish_json(buf: Vec<u8>, body: &mut Option<Bytes>, ctx: &mut Ctx) -> Result<(), GatewayError> {
    let status = ctx.upstream_status.unwrap_or(200);
    let probe =
        validate::check_json_body(endpoint(ctx), status, &buf).map_err(|r| reject(ctx, r))?;
    let rt = ctx.rt.clone();
    egress::check_json(&rules(&rt, ctx.route), &buf).map_err(|r| reject(ctx, r))?;
    ctx.usage = probe.usage();
    // Placeholders back to the client's values (after the checks, which judge what
    // the provider sent).
    let buf = match ctx.pii.as_ref().and_then(|m| m.restore_json(&buf)) {
        Some(restored) => restored,
        None => buf,
    };
    *body = Some(Bytes::from(buf));
    Ok(())
}

/// Forward the complete events of `data`, checked; stop at the first bad one.
fn sse_chunk(
    data: &[u8],
    framer: &mut SseFramer,
    text: &mut StreamText,
    stopped: &mut bool,
    restorer: &mut Option<StreamRestorer>,
    ctx: &mut Ctx,
) -> Bytes {
    let events = match framer.push(data) {
        Ok(ev) => ev,
        Err(_) => {
            *stopped = true;
            let _ = reject(ctx, Rejection::InvalidEvent);
            return Bytes::from(validate::error_event(&ctx.request_id));
        }
    };
    let mut out = Vec::with_capacity(data.len());
    let rt = ctx.rt.clone();
    let rules = rules(&rt, ctx.route);
    for ev in events {
        let verdict = (|| {
            if ev.data.is_empty() {
                return text.check(&rules, &ev.raw, None).map(|()| None);
            }
            let parsed = validate::check_event_data(&ev.data);
            // Raw bytes first: a secret in an event that is not JSON is still a secret.
            text.check(
                &rules,
                &ev.raw,
                parsed.as_ref().ok().and_then(Option::as_ref),
            )?;
            let parsed = parsed?;
            if let Some(u) = parsed.as_ref().and_then(usage::find) {
                usage::merge(&mut ctx.usage, u);
            }
            Ok(parsed)
        })();
        match verdict {
            Ok(parsed) => match (restorer.as_mut(), ctx.pii.as_ref()) {
                (Some(r), Some(map)) => restore_event(r, map, &ev, parsed, &mut out),
                _ => out.extend_from_slice(&ev.raw),
            },
            Err(r) => {
                *stopped = true;
                let _ = reject(ctx, r);
                out.extend_from_slice(validate::error_event(&ctx.request_id).as_bytes());
                break;
            }
        }
    }
    Bytes::from(out)
}

/// Forward one checked event with placeholders restored: held text first, then the
/// event as received when nothing changed, else rebuilt from its restored JSON.
fn restore_event(
    r: &mut StreamRestorer,
    map: &Pseudonyms,
    ev: &Event,
    parsed: Option<serde_json::Value>,
    out: &mut Vec<u8>,
) {
    let Some(mut v) = parsed else {
        // `[DONE]`: anything held goes out before it (not before a keep-alive comment).
        if !ev.data.is_empty() {
            out.extend_from_slice(&r.flush(map));
        }
        out.extend_from_slice(&ev.raw);
        return;
    };
    let (before, changed) = r.event(ev.event.as_deref(), &mut v, map);
    out.extend_from_slice(&before);
    if changed {
        out.extend_from_slice(&event_bytes(ev.event.as_deref(), &v.to_string()));
    } else {
        out.extend_from_slice(&ev.raw);
    }
}
