//! The response on its way to the client: checked (content type, size, shape, secret
//! egress, block patterns, the total deadline) and read for usage, over a plain
//! [`WatchRules`] value. The gateway counts and logs what is refused.
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

use super::egress::stream_text::{self, StreamText};
use super::egress::{self, Rules};
use super::model_name;
use super::sse::{Event, SseFramer};
use super::usage::{self, Usage};
use super::validate::{self, Endpoint, Rejection, Tail};
use crate::pii::stream::{event_bytes, StreamRestorer};
use crate::pii::Pseudonyms;
use bytes::Bytes;
use http::response::Parts;
use std::time::Instant;

/// What one request's answer is checked against.
pub struct WatchRules<'a> {
    /// Every configured secret, and the route's block patterns.
    pub egress: Rules<'a>,
    /// `max_response_bytes` of the upstream.
    pub max_bytes: usize,
    /// When the whole answer must have arrived (`total_timeout_ms` from the request's
    /// start); `None` without a route.
    pub deadline: Option<Instant>,
    /// For the SSE `error` event that ends a refused stream.
    pub request_id: &'a str,
    /// The request's placeholders, when it was pseudonymized.
    pub pii: Option<&'a Pseudonyms>,
    /// The model the client asked for, when `model_map` sent the request under another
    /// name: the answer names this one ([`super::model_name`]).
    pub client_model: Option<&'a str>,
    /// The stream's usage chunk was asked for by keygate, not the client: read, not
    /// passed on (a last chunk with `"choices": []` breaks clients that index
    /// `choices[0]` of every chunk).
    pub hide_usage_chunk: bool,
}

impl WatchRules<'_> {
    fn past_deadline(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() > d)
    }
}

/// Why the response cannot go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Refused by a check (counted under its reason).
    Rejected(Rejection),
    /// The stream was ended with an error event and the upstream kept sending.
    StreamStopped,
    /// The header could not be rewritten for a body of unknown length.
    BadHeader,
}

/// How the response body is watched.
#[derive(Debug, Default)]
pub enum ResponseWatch {
    /// Nothing to look at (no response yet, or an empty body).
    #[default]
    None,
    /// A JSON body, held back whole (up to `limit`) and checked at its end.
    /// `endpoint`: which API answered (decides the JSON shape expected).
    Json {
        buf: Vec<u8>,
        limit: usize,
        endpoint: Endpoint,
    },
    /// Binary audio from a speech endpoint: passed as it comes, bounded by `limit` bytes
    /// and the deadline. Nothing in it is JSON or text, but its raw bytes are scanned for
    /// the configured secrets (not block patterns: audio is not text), `tail` holding the
    /// end of the last chunk so a secret cut between chunks is found; the chunk that
    /// completes one is not passed and the response is cut.
    Binary { limit: usize, tail: Tail },
    /// A plain-text transcript, held back whole (up to `limit`) and scanned at its end.
    Text { buf: Vec<u8>, limit: usize },
    /// An event stream, checked event by event; `text` holds the tail of each text
    /// field for secrets split over events; `stopped` after a bad event.
    Sse {
        framer: SseFramer,
        text: StreamText,
        stopped: bool,
        /// Upstream chunks dropped since the stream was stopped.
        dropped_after_stop: u32,
        /// Restores placeholders when the request was pseudonymized.
        restorer: Option<StreamRestorer>,
        /// The provider sent an error event (an Anthropic `overloaded_error`, an
        /// `{"error": …}` data): the stream ends without its final usage report.
        errored: bool,
    },
}

/// Does a header name hold a secret, in any letter case (HTTP lower-cases names)? Run on
/// the names the allow-list kept: an allowed prefix (`x-ratelimit-*`) leaves the rest of a
/// name free, and the names it drops never reach the client.
pub fn secret_in_names(headers: &http::HeaderMap, rules: &WatchRules) -> bool {
    headers.keys().any(|n| {
        rules
            .egress
            .secrets
            .contains_any_case(n.as_str().as_bytes())
    })
}

/// Check the response header; decide how to watch the body.
pub fn start(
    resp: &mut Parts,
    rules: &WatchRules,
    endpoint: Endpoint,
) -> Result<ResponseWatch, Refused> {
    use Refused::Rejected;
    let status = resp.status.as_u16();
    if resp.status.is_redirection() {
        return Err(Rejected(Rejection::Redirect));
    }
    for (_, v) in resp.headers.iter() {
        if rules.egress.secrets.contains(v.as_bytes()) {
            return Err(Rejected(Rejection::SecretEgress));
        }
    }
    let declared = resp
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > rules.max_bytes) {
        return Err(Rejected(Rejection::TooLarge));
    }
    // Two different types: a browser takes the last, keygate would judge the first.
    let mut types = resp.headers.get_all(http::header::CONTENT_TYPE).iter();
    let first = types.next();
    if types.any(|v| Some(v) != first) {
        return Err(Rejected(Rejection::ContentType));
    }
    let ct = first
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let empty = declared == Some(0) || status == 204 || status == 304;
    // A coded body (gzip, or a coding beside `chunked`) would be scanned in its coded
    // form, which the client decodes: keygate asks for none, and takes none. Text in a
    // charset other than UTF-8 likewise.
    let coded = |name, plain: &str| {
        resp.headers.get_all(name).iter().any(|v| {
            !v.to_str()
                .is_ok_and(|v| v.trim().eq_ignore_ascii_case(plain))
        })
    };
    if !empty
        && (coded(http::header::CONTENT_ENCODING, "identity")
            || coded(http::header::TRANSFER_ENCODING, "chunked")
            || !validate::charset_ok(&ct))
    {
        return Err(Rejected(Rejection::ContentType));
    }
    if endpoint == Endpoint::AudioSpeech && resp.status.is_success() && validate::audio_type(&ct) {
        return Ok(ResponseWatch::Binary {
            limit: rules.max_bytes,
            tail: Tail::default(),
        });
    }
    // A transcript as text on success only: an error is JSON, checked as JSON (a
    // provider's error echoing the key JSON-escaped is read decoded by clients).
    if endpoint == Endpoint::Transcription
        && resp.status.is_success()
        && validate::transcript_type(&ct)
    {
        return Ok(ResponseWatch::Text {
            buf: Vec::new(),
            limit: rules.max_bytes,
        });
    }
    if !empty && !validate::content_type_allowed(&ct) {
        return Err(Rejected(Rejection::ContentType));
    }
    // Restored values and the client's model name change the body's length.
    let rewriting = rules.pii.is_some() || rules.client_model.is_some();
    Ok(if ct.starts_with("text/event-stream") {
        // keygate may end the stream with its own error event: length is not fixed.
        send_chunked(&mut resp.headers)?;
        ResponseWatch::Sse {
            // An event is bounded by the answer's bound: images and audio come in events
            // of several MiB (gpt-image-1's partial images, Gemini's inline data).
            framer: SseFramer::new(rules.max_bytes),
            text: StreamText::default(),
            stopped: false,
            dropped_after_stop: 0,
            restorer: rules.pii.is_some().then(Default::default),
            errored: false,
        }
    } else if empty {
        ResponseWatch::None
    } else {
        if rewriting {
            send_chunked(&mut resp.headers)?;
        }
        ResponseWatch::Json {
            buf: Vec::new(),
            limit: rules.max_bytes,
            endpoint,
        }
    })
}

impl ResponseWatch {
    /// The stream ended short of its final usage report: keygate stopped it (a bad
    /// event, a secret, a blocked pattern, a size or time limit: what followed was
    /// dropped unread), or the provider sent an error event. Its usage so far may be a
    /// first count (Anthropic's `message_start`: 1 output token).
    pub fn cut_short(&self) -> bool {
        matches!(self, ResponseWatch::Sse { stopped, errored, .. } if *stopped || *errored)
    }

    /// A stream's bytes of model output read (what an estimate counts); `None` for
    /// other answers, whose body is the output.
    pub fn output_bytes(&self) -> Option<usize> {
        match self {
            ResponseWatch::Sse { text, .. } => Some(text.output_bytes()),
            _ => None,
        }
    }
}

/// Send the body with a length keygate does not know up front: chunked, never
/// close-delimited, so a body the upstream cut looks cut to the client (no last chunk)
/// instead of ending cleanly. (Pingora drops the header on h2.)
fn send_chunked(headers: &mut http::HeaderMap) -> Result<(), Refused> {
    headers.remove(http::header::CONTENT_LENGTH);
    let chunked = http::HeaderValue::from_static("chunked");
    headers
        .try_insert(http::header::TRANSFER_ENCODING, chunked)
        .map_err(|_| Refused::BadHeader)?;
    Ok(())
}

/// What one chunk did besides passing.
#[derive(Debug, Default)]
pub struct Seen {
    /// A stream was ended with an error event because of this (count it once).
    pub stopped_by: Option<Rejection>,
}

impl ResponseWatch {
    /// See one chunk of the body (`total`: response bytes so far, this chunk included);
    /// may replace `body`. Usage found is merged into `usage`. `Err` aborts the response.
    pub fn chunk(
        &mut self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        total: usize,
        rules: &WatchRules,
        status: u16,
        usage: &mut Option<Usage>,
    ) -> Result<Seen, Refused> {
        let data = body.take().unwrap_or_default();
        match self {
            ResponseWatch::None => {
                *body = Some(data);
                Ok(Seen::default())
            }
            ResponseWatch::Binary { limit, tail } => {
                if total > *limit {
                    return Err(Refused::Rejected(Rejection::TooLarge));
                }
                if rules.past_deadline() {
                    return Err(Refused::Rejected(Rejection::Deadline));
                }
                let secrets = rules.egress.secrets;
                if tail.scan(&data, secrets.overlap(), |b| secrets.contains(b)) {
                    return Err(Refused::Rejected(Rejection::SecretEgress));
                }
                *body = Some(data);
                Ok(Seen::default())
            }
            ResponseWatch::Text { buf, limit } => {
                if let Some(whole) = hold(buf, *limit, &data, end_of_stream, rules)? {
                    // As text, escapes decoded once too (a client may read it as JSON).
                    let text = std::str::from_utf8(&whole)
                        .map_err(|_| Refused::Rejected(Rejection::ContentType))?;
                    if let Some(r) = rules.egress.text(text) {
                        return Err(Refused::Rejected(r));
                    }
                    *body = Some(Bytes::from(whole));
                }
                Ok(Seen::default())
            }
            ResponseWatch::Json {
                buf,
                limit,
                endpoint,
            } => {
                if let Some(whole) = hold(buf, *limit, &data, end_of_stream, rules)? {
                    *body = Some(finish_json(whole, *endpoint, rules, status, usage)?);
                }
                Ok(Seen::default())
            }
            ResponseWatch::Sse {
                framer,
                text,
                stopped,
                dropped_after_stop,
                restorer,
                errored,
            } => {
                if *stopped {
                    // The client has its error event; further upstream data is dropped,
                    // and an upstream that keeps sending is cut off. Pingora writes
                    // response chunks in batches of at most 4 and drops a batch whose
                    // filter fails, so abort only well after the batch that carried the
                    // error event.
                    *dropped_after_stop += 1;
                    return match *dropped_after_stop > 16 {
                        true => Err(Refused::StreamStopped),
                        false => Ok(Seen::default()),
                    };
                }
                let over = total > rules.max_bytes;
                if over || rules.past_deadline() {
                    // An endless stream is bounded like any body, in size and in time:
                    // end it with an error event.
                    *stopped = true;
                    *body = Some(Bytes::from(validate::error_event(rules.request_id)));
                    let why = if over {
                        Rejection::TooLarge
                    } else {
                        Rejection::Deadline
                    };
                    return Ok(Seen {
                        stopped_by: Some(why),
                    });
                }
                let mut watch = SseWatch {
                    framer,
                    text,
                    restorer,
                    rules,
                    usage,
                    errored,
                };
                let (mut out, stopped_by) = watch.chunk(&data);
                *stopped = stopped_by.is_some();
                if end_of_stream && !*stopped {
                    // Text held back for a split placeholder that never completed.
                    if let (Some(r), Some(map)) = (restorer.as_mut(), rules.pii) {
                        out.extend_from_slice(&r.flush(map));
                    }
                }
                *body = Some(Bytes::from(out));
                Ok(Seen { stopped_by })
            }
        }
    }
}

/// Hold `data` back in `buf` (up to `limit` bytes, before the deadline); the whole body
/// at its end.
fn hold(
    buf: &mut Vec<u8>,
    limit: usize,
    data: &[u8],
    end_of_stream: bool,
    rules: &WatchRules,
) -> Result<Option<Vec<u8>>, Refused> {
    if rules.past_deadline() {
        return Err(Refused::Rejected(Rejection::Deadline));
    }
    if buf.len() + data.len() > limit {
        return Err(Refused::Rejected(Rejection::TooLarge));
    }
    buf.extend_from_slice(data);
    Ok(end_of_stream.then(|| std::mem::take(buf)))
}

/// Check a whole JSON answer; return what the client gets (placeholders restored, the
/// client's model named).
fn finish_json(
    buf: Vec<u8>,
    endpoint: Endpoint,
    rules: &WatchRules,
    status: u16,
    usage: &mut Option<Usage>,
) -> Result<Bytes, Refused> {
    let array = endpoint == Endpoint::GeminiGenerate
        && buf.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    if array {
        // Gemini's `streamGenerateContent` without `alt=sse`: the chunks an event stream
        // would carry, as one JSON array (held whole here). Some must be an answer; a
        // chunk may carry only usage (as an event may), which is read from every chunk.
        let probes =
            stream_text::check_json_items(&rules.egress, &buf).map_err(Refused::Rejected)?;
        let mut answered = false;
        for p in &probes {
            answered |= validate::check_shape(endpoint, status, p).is_ok();
            if let Some(u) = p.usage() {
                usage::merge(usage, u);
            }
        }
        if !answered {
            return Err(Refused::Rejected(Rejection::Shape));
        }
    } else {
        let probe = egress::check_json(&rules.egress, &buf).map_err(Refused::Rejected)?;
        validate::check_shape(endpoint, status, &probe).map_err(Refused::Rejected)?;
        *usage = probe.usage();
    }
    // Placeholders back to the client's values (after the checks, which judge what
    // the provider sent).
    let buf = match rules.pii.and_then(|m| m.restore_json(&buf)) {
        Some(restored) => restored,
        None => buf,
    };
    if let Some(client) = rules.client_model {
        if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&buf) {
            // An array's chunks each name the model.
            let renamed = match &mut v {
                serde_json::Value::Array(items) if array => items
                    .iter_mut()
                    .fold(false, |any, item| model_name::rename(item, client) | any),
                v => model_name::rename(v, client),
            };
            if renamed {
                return Ok(Bytes::from(v.to_string()));
            }
        }
    }
    Ok(Bytes::from(buf))
}

/// One stream chunk's view of the stream state.
struct SseWatch<'w, 'r> {
    framer: &'w mut SseFramer,
    text: &'w mut StreamText,
    restorer: &'w mut Option<StreamRestorer>,
    rules: &'w WatchRules<'r>,
    usage: &'w mut Option<Usage>,
    errored: &'w mut bool,
}

impl SseWatch<'_, '_> {
    /// The complete events of `data`, checked; at the first bad one, an error event
    /// instead and the reason.
    fn chunk(&mut self, data: &[u8]) -> (Vec<u8>, Option<Rejection>) {
        let error_event = || validate::error_event(self.rules.request_id).into_bytes();
        let events = match self.framer.push(data) {
            Ok(ev) => ev,
            Err(_) => return (error_event(), Some(Rejection::InvalidEvent)),
        };
        let mut out = Vec::with_capacity(data.len());
        for ev in events {
            match self.check(&ev) {
                Ok(Some(v)) if self.rules.hide_usage_chunk && is_usage_chunk(&v) => {}
                Ok(mut parsed) => {
                    let renamed = match (self.rules.client_model, parsed.as_mut()) {
                        (Some(client), Some(v)) => model_name::rename(v, client),
                        _ => false,
                    };
                    match (self.restorer.as_mut(), self.rules.pii, &parsed) {
                        (Some(r), Some(map), _) => {
                            restore_event(r, map, &ev, parsed, renamed, &mut out)
                        }
                        (_, _, Some(v)) if renamed => {
                            out.extend_from_slice(&event_bytes(ev.event.as_deref(), &v.to_string()))
                        }
                        _ => out.extend_from_slice(&ev.raw),
                    }
                }
                Err(r) => {
                    out.extend_from_slice(&error_event());
                    return (out, Some(r));
                }
            }
        }
        (out, None)
    }

    /// One event: secrets and patterns in its raw bytes and text, its JSON, its usage.
    fn check(&mut self, ev: &Event) -> Result<Option<serde_json::Value>, Rejection> {
        let rules = &self.rules.egress;
        if ev.data.is_empty() {
            return self.text.check(rules, &ev.raw, None).map(|()| None);
        }
        let parsed = validate::check_event_data(&ev.data);
        // Raw bytes first: a secret in an event that is not JSON is still a secret.
        self.text.check(
            rules,
            &ev.raw,
            parsed
                .as_ref()
                .ok()
                .and_then(Option::as_ref)
                .map(|v| (ev.data.as_bytes(), v)),
        )?;
        let parsed = parsed?;
        if let Some(v) = parsed.as_ref() {
            if let Some(u) = usage::find(v) {
                usage::merge(self.usage, u);
            }
            let error = v.get("error").is_some_and(|e| !e.is_null());
            if error || v.get("type").and_then(|t| t.as_str()) == Some("error") {
                *self.errored = true;
            }
        }
        Ok(parsed)
    }
}

/// OpenAI's usage chunk: no choices, the usage.
fn is_usage_chunk(v: &serde_json::Value) -> bool {
    v.get("choices")
        .and_then(|c| c.as_array())
        .is_some_and(|c| c.is_empty())
        && v.get("usage").is_some_and(|u| u.is_object())
}

/// Forward one checked event with placeholders restored: held text first, then the
/// event as received when nothing changed (`renamed`: the model name did), else rebuilt
/// from its restored JSON.
fn restore_event(
    r: &mut StreamRestorer,
    map: &Pseudonyms,
    ev: &Event,
    parsed: Option<serde_json::Value>,
    renamed: bool,
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
    let (before, changed) = r.event(ev.event.as_deref(), &mut v, ev.data.len(), map);
    out.extend_from_slice(&before);
    if changed || renamed {
        out.extend_from_slice(&event_bytes(ev.event.as_deref(), &v.to_string()));
    } else {
        out.extend_from_slice(&ev.raw);
    }
}

#[cfg(test)]
mod tests;
