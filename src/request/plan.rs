//! How a request body reaches the upstream, decided from the request head and carried
//! out chunk by chunk, without a Pingora `Session` (the gateway does the I/O).
//!
//! Bodies up to [`PREREAD_LIMIT`] are read whole in `request_filter`, verified, and
//! replayed by Pingora's retry buffer ([`BodyPlan::Buffered`]). Larger bodies must
//! declare their length; they are held back in `request_body_filter` and sent whole once
//! verified ([`BodyPlan::HoldBack`]), with chunked framing upstream so a rewritten body
//! may change length. Every buffer is bounded by an [`Accumulator`].

use crate::error::{ErrorCode, GatewayError};
use bytes::{Bytes, BytesMut};

/// Largest body read and verified before anything is sent upstream (Pingora's retry
/// buffer). Larger bodies must declare their length and are held back instead.
pub const PREREAD_LIMIT: usize = 64 * 1024;

/// Most bytes reserved before any arrive: a declared length is a claim, not data.
const FIRST_RESERVATION: usize = 8 * 1024;

/// What the request head says about the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub content_length: Option<usize>,
    /// `Expect: 100-continue`: answered once the request is admitted.
    pub expects_continue: bool,
}

impl Head {
    /// Read `Content-Length` (digits only) and `Expect` from the request headers.
    pub fn read(headers: &http::HeaderMap) -> Result<Head, GatewayError> {
        let content_length = match headers.get(http::header::CONTENT_LENGTH) {
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse::<usize>().ok())
                    .ok_or_else(|| GatewayError::bad_request("Content-Length is not a number."))?,
            ),
            None => None,
        };
        let expects_continue = headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        Ok(Head {
            content_length,
            expects_continue,
        })
    }
}

/// A body being collected, refused (with `too_big`) past `limit` bytes.
#[derive(Debug)]
pub struct Accumulator {
    buf: BytesMut,
    limit: usize,
    too_big: GatewayError,
}

impl Accumulator {
    pub fn new(limit: usize, too_big: GatewayError) -> Accumulator {
        Accumulator {
            buf: BytesMut::with_capacity(limit.min(FIRST_RESERVATION)),
            limit,
            too_big,
        }
    }

    /// Add a chunk, or refuse it when the body would pass the limit.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), GatewayError> {
        if self.buf.len() + chunk.len() > self.limit {
            return Err(self.too_big.clone());
        }
        self.buf.extend_from_slice(chunk);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The whole body, leaving the accumulator empty.
    pub fn take(&mut self) -> Bytes {
        std::mem::take(&mut self.buf).freeze()
    }
}

/// 413 for a body over `server.max_body_bytes`; the connection is closed (the rest of
/// the body is not read).
pub fn too_large(max: usize) -> GatewayError {
    GatewayError::new(
        ErrorCode::BodyTooLarge,
        format!("The request body is larger than {max} bytes."),
    )
    .close()
}

/// What to do with the body, by its declared length.
#[derive(Debug)]
pub enum Decision {
    /// Read it whole now, then verify.
    Preread(Accumulator),
    /// Hold it back as it streams, verify at its end.
    HoldBack(Accumulator),
    /// An upload: stream it on, verify as it passes (`limit`: the most it may be).
    Stream { limit: usize },
}

/// Decide for a multipart upload: small ones with a declared length are read first (they
/// can be sent again on failover), the rest streamed, up to `max_upload`.
pub fn decide_upload(head: &Head, max_upload: usize) -> Result<Decision, GatewayError> {
    match head.content_length {
        Some(n) if n > max_upload => Err(too_large(max_upload)),
        Some(n) if n <= PREREAD_LIMIT => Ok(Decision::Preread(Accumulator::new(
            n,
            too_large(max_upload),
        ))),
        Some(n) => Ok(Decision::Stream { limit: n }),
        None => Ok(Decision::Stream { limit: max_upload }),
    }
}

/// Decide from the head; a declared length over `max_body` is refused at once.
pub fn decide(head: &Head, max_body: usize) -> Result<Decision, GatewayError> {
    match head.content_length {
        Some(n) if n > max_body => Err(too_large(max_body)),
        Some(n) if n > PREREAD_LIMIT => Ok(Decision::HoldBack(Accumulator::new(
            n,
            GatewayError::new(
                ErrorCode::BodyTooLarge,
                "The request body is longer than its Content-Length.",
            )
            .close(),
        ))),
        Some(n) => Ok(Decision::Preread(Accumulator::new(n, too_large(max_body)))),
        // Unknown length is allowed up to the pre-read limit only: beyond it the body
        // could no longer be verified before the upstream sees it.
        None if max_body > PREREAD_LIMIT => Ok(Decision::Preread(Accumulator::new(
            PREREAD_LIMIT,
            GatewayError::new(
                ErrorCode::BodyTooLarge,
                format!("Bodies without Content-Length are limited to {PREREAD_LIMIT} bytes."),
            )
            .close(),
        ))),
        None => Ok(Decision::Preread(Accumulator::new(
            max_body,
            too_large(max_body),
        ))),
    }
}

/// How the request body reaches the upstream.
#[derive(Debug, Default)]
pub enum BodyPlan {
    /// Not decided yet (request refused before the body was looked at).
    #[default]
    Undecided,
    /// Read and verified in `request_filter`. Pingora replays the client's bytes from
    /// its retry buffer for each attempt; they are replaced by `body` (the verified body,
    /// or its rewrite when validation changed it), or by `attempt` when this attempt's
    /// upstream renames the model. `sent`: this attempt's body has gone.
    Buffered {
        body: Bytes,
        attempt: Option<Bytes>,
        sent: bool,
    },
    /// Held back in `request_body_filter`, verified at the end, then emitted whole.
    HoldBack(Accumulator),
    /// A large multipart upload, forwarded as it passes one chunk behind; the last chunk
    /// goes once the form and the digest are verified.
    Stream(Box<crate::request::upload::Streaming>),
}

/// How the upstream request is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length: n`, the exact verified (or rewritten) length.
    Length(usize),
    /// No body header at all (a bodiless GET).
    None,
    /// `Transfer-Encoding: chunked` (held back: the final length may change).
    Chunked,
}

/// What `request_body_filter` does with one chunk.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Forward `body` as it now is.
    Pass,
    /// Forward nothing yet (an empty chunk keeps Pingora's loop going).
    Hold,
    /// The whole held-back body: verify it, then forward it (or what replaces it).
    Complete(Bytes),
    /// A streamed upload ended: verify it, then forward its last chunk.
    Release,
}

fn not_planned() -> GatewayError {
    GatewayError::new(ErrorCode::Internal, "Body not planned.")
}

impl BodyPlan {
    /// The verified body, when it was read before the first attempt.
    pub fn verified(&self) -> Option<&Bytes> {
        match self {
            BodyPlan::Buffered { body, .. } => Some(body),
            _ => None,
        }
    }

    /// Before each attempt: a held-back body starts over (Pingora sends what it read
    /// again); a pre-read one is sent as `attempt` when that is given.
    pub fn begin_attempt(&mut self, attempt: Option<Bytes>) {
        match self {
            BodyPlan::Buffered {
                attempt: a, sent, ..
            } => {
                *a = attempt;
                *sent = false;
            }
            BodyPlan::HoldBack(acc) => acc.buf.clear(),
            BodyPlan::Stream(s) => s.restart(),
            BodyPlan::Undecided => {}
        }
    }

    /// The upstream framing for this plan (`method` decides whether an empty body is
    /// announced with `Content-Length: 0`).
    pub fn framing(&self, method: &http::Method) -> Result<Framing, GatewayError> {
        match self {
            BodyPlan::Buffered { body, attempt, .. } => {
                let n = attempt.as_ref().unwrap_or(body).len();
                if n > 0 || method != http::Method::GET {
                    Ok(Framing::Length(n))
                } else {
                    Ok(Framing::None)
                }
            }
            BodyPlan::HoldBack(_) => Ok(Framing::Chunked),
            BodyPlan::Stream(s) => Ok(s.declared.map_or(Framing::Chunked, Framing::Length)),
            BodyPlan::Undecided => Err(not_planned()),
        }
    }

    /// One chunk on its way upstream (`body` is Pingora's, replaced in place).
    pub fn on_chunk(
        &mut self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
    ) -> Result<Step, GatewayError> {
        match self {
            BodyPlan::Buffered {
                body: verified,
                attempt,
                sent,
            } => {
                // Pingora replays the client's body from its retry buffer as one chunk,
                // once per attempt. An empty client body comes as no chunk at all, only
                // its end: a body keygate made (a token's mint with its lifetime) must
                // still go, or the upstream's `Content-Length` is never met.
                let ours = attempt.as_ref().unwrap_or(verified);
                if *sent {
                    *body = None;
                } else if body.is_some() || (end_of_stream && !ours.is_empty()) {
                    *body = Some(ours.clone());
                    *sent = true;
                }
                Ok(Step::Pass)
            }
            BodyPlan::HoldBack(acc) => {
                if let Some(chunk) = body.take() {
                    acc.push(&chunk)?;
                }
                if end_of_stream {
                    Ok(Step::Complete(acc.take()))
                } else {
                    *body = Some(Bytes::new());
                    Ok(Step::Hold)
                }
            }
            BodyPlan::Stream(s) => {
                if let Some(chunk) = body.take() {
                    *body = Some(s.push(chunk, end_of_stream)?);
                }
                Ok(if end_of_stream {
                    Step::Release
                } else {
                    Step::Pass
                })
            }
            BodyPlan::Undecided => Err(not_planned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(len: Option<usize>) -> Head {
        Head {
            content_length: len,
            expects_continue: false,
        }
    }

    #[test]
    fn the_head_is_read_strictly() {
        let mut h = http::HeaderMap::new();
        h.insert("content-length", "12".parse().unwrap());
        h.insert("expect", "100-Continue".parse().unwrap());
        let got = Head::read(&h).unwrap();
        assert_eq!(got.content_length, Some(12));
        assert!(got.expects_continue);
        h.insert("content-length", "+12".parse().unwrap());
        assert!(Head::read(&h).is_err());
        h.insert("content-length", "".parse().unwrap());
        assert!(Head::read(&h).is_err());
    }

    #[test]
    fn small_and_unknown_bodies_are_preread_large_ones_held_back() {
        let max = 1 << 20;
        assert!(matches!(
            decide(&head(Some(10)), max),
            Ok(Decision::Preread(_))
        ));
        assert!(matches!(
            decide(&head(Some(PREREAD_LIMIT + 1)), max),
            Ok(Decision::HoldBack(_))
        ));
        let e = decide(&head(Some(max + 1)), max).unwrap_err();
        assert_eq!(e.code, ErrorCode::BodyTooLarge);
        let Ok(Decision::Preread(mut acc)) = decide(&head(None), max) else {
            panic!("unknown length is pre-read");
        };
        assert!(acc.push(&vec![0; PREREAD_LIMIT]).is_ok());
        let e = acc.push(b"x").unwrap_err();
        assert!(
            e.message.contains("without Content-Length"),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_declared_length_reserves_little_and_bounds_the_body() {
        let Ok(Decision::HoldBack(mut acc)) = decide(&head(Some(1 << 20)), 1 << 21) else {
            panic!("held back");
        };
        assert!(acc.buf.capacity() <= FIRST_RESERVATION);
        assert!(acc.push(&vec![1; 1 << 20]).is_ok());
        assert!(acc.push(b"1").is_err(), "longer than declared");
    }

    #[test]
    fn a_held_back_body_is_released_whole_at_its_end() {
        let mut plan =
            BodyPlan::HoldBack(Accumulator::new(10, GatewayError::bad_request("too big")));
        let mut body = Some(Bytes::from_static(b"hello "));
        assert_eq!(plan.on_chunk(&mut body, false).unwrap(), Step::Hold);
        assert_eq!(body.as_deref(), Some(&b""[..]), "nothing forwarded yet");
        let mut body = Some(Bytes::from_static(b"body"));
        assert_eq!(
            plan.on_chunk(&mut body, true).unwrap(),
            Step::Complete(Bytes::from_static(b"hello body"))
        );
        // Another attempt gets the body again from its start.
        plan.begin_attempt(None);
        let mut again = Some(Bytes::from_static(b"hello body"));
        assert_eq!(
            plan.on_chunk(&mut again, true).unwrap(),
            Step::Complete(Bytes::from_static(b"hello body"))
        );
        let mut over = Some(Bytes::from_static(b"0123456789x"));
        assert!(plan.on_chunk(&mut over, true).is_err());
        assert_eq!(plan.framing(&http::Method::POST).unwrap(), Framing::Chunked);
    }

    #[test]
    fn a_buffered_body_is_replaced_on_every_attempt_and_framed_exactly() {
        let mut plan = BodyPlan::Buffered {
            body: Bytes::from_static(b"rewritten"),
            attempt: None,
            sent: false,
        };
        assert_eq!(
            plan.framing(&http::Method::POST).unwrap(),
            Framing::Length(9)
        );
        for _ in 0..2 {
            plan.begin_attempt(None);
            let mut body = Some(Bytes::from_static(b"hello"));
            assert_eq!(plan.on_chunk(&mut body, true).unwrap(), Step::Pass);
            assert_eq!(body.as_deref(), Some(&b"rewritten"[..]), "every attempt");
            // Once a body has gone, nothing more does in this attempt.
            let mut end = None;
            plan.on_chunk(&mut end, true).unwrap();
            assert_eq!(end, None);
        }
        plan.begin_attempt(Some(Bytes::from_static(b"renamed body")));
        assert_eq!(
            plan.framing(&http::Method::POST).unwrap(),
            Framing::Length(12)
        );
        let mut body = Some(Bytes::from_static(b"hello"));
        plan.on_chunk(&mut body, true).unwrap();
        assert_eq!(body.as_deref(), Some(&b"renamed body"[..]));
        // The client sent no body (Pingora calls with its end only); keygate's goes.
        let mut made = BodyPlan::Buffered {
            body: Bytes::from_static(b"{\"expires_after\":{}}"),
            attempt: None,
            sent: false,
        };
        for _ in 0..2 {
            made.begin_attempt(None);
            let mut none = None;
            made.on_chunk(&mut none, true).unwrap();
            assert_eq!(none.as_deref(), Some(&b"{\"expires_after\":{}}"[..]));
        }
        let empty_get = BodyPlan::Buffered {
            body: Bytes::new(),
            attempt: None,
            sent: false,
        };
        assert_eq!(
            empty_get.framing(&http::Method::GET).unwrap(),
            Framing::None
        );
        assert!(BodyPlan::Undecided.framing(&http::Method::GET).is_err());
    }
}
