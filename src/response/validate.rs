//! Provider responses are untrusted input. This module decides, from bytes alone:
//! is the content type allowed, does a JSON body have the shape of its endpoint, does
//! a stream event carry JSON (or `[DONE]`), and does anything contain a secret.

use crate::response::probe::{Kind, Probe};
use crate::upstream::kind::UpstreamKind;
use aho_corasick::AhoCorasick;
use serde_json::Value;

/// Why a response was refused (the `reason` label of `keygate_response_rejected_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    ContentType,
    TooLarge,
    InvalidJson,
    Shape,
    SecretEgress,
    BlockedPattern,
    Redirect,
    InvalidEvent,
    /// The upstream's `total_timeout_ms` passed mid-answer.
    Deadline,
}

impl Rejection {
    pub fn reason(self) -> &'static str {
        match self {
            Rejection::ContentType => "content_type",
            Rejection::TooLarge => "too_large",
            Rejection::InvalidJson => "invalid_json",
            Rejection::Shape => "shape",
            Rejection::SecretEgress => "secret_egress",
            Rejection::BlockedPattern => "blocked_pattern",
            Rejection::Redirect => "redirect",
            Rejection::InvalidEvent => "invalid_event",
            Rejection::Deadline => "deadline",
        }
    }

    /// All reasons (for pre-initialising metrics).
    pub const ALL: [Rejection; 9] = [
        Rejection::ContentType,
        Rejection::TooLarge,
        Rejection::InvalidJson,
        Rejection::Shape,
        Rejection::SecretEgress,
        Rejection::BlockedPattern,
        Rejection::Redirect,
        Rejection::InvalidEvent,
        Rejection::Deadline,
    ];

    /// What the client is told: 504 past the deadline, 502 otherwise.
    pub fn to_error(self) -> crate::error::GatewayError {
        use crate::error::{ErrorCode, GatewayError};
        let msg = match self {
            Rejection::Deadline => {
                return GatewayError::new(
                    ErrorCode::UpstreamTimeout,
                    "The provider did not answer within the total time allowed.",
                )
                .detail(self.reason());
            }
            Rejection::SecretEgress => {
                "The provider's response was withheld because it contained a secret."
            }
            Rejection::BlockedPattern => "The provider's response was withheld by a content rule.",
            Rejection::TooLarge => "The provider's response is too large.",
            _ => "The provider's response was invalid.",
        };
        GatewayError::upstream(msg).detail(self.reason())
    }
}

/// Allowed response content types.
pub fn content_type_allowed(ct: &str) -> bool {
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    matches!(mime.as_str(), "application/json" | "text/event-stream") || mime.ends_with("+json")
}

/// The endpoint a response belongs to, from the path sent upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Responses,
    Embeddings,
    Models,
    AnthropicMessages,
    GeminiGenerate,
    /// `/audio/speech`: binary audio ([`AUDIO_TYPES`]), or SSE when asked for.
    AudioSpeech,
    /// `/audio/transcriptions`, `/audio/translations`: JSON, or plain text, SRT or VTT
    /// when asked for ([`TRANSCRIPT_TYPES`]).
    Transcription,
    /// Anything else: must be a JSON object, no further shape.
    Other,
}

/// The audio types a speech answer may have (SPEC §8.1).
pub const AUDIO_TYPES: [&str; 6] = [
    "audio/mpeg",
    "audio/wav",
    "audio/opus",
    "audio/aac",
    "audio/flac",
    "audio/pcm",
];

/// The text types a transcript may have besides JSON (`response_format` `text`, `srt`,
/// `vtt`).
pub const TRANSCRIPT_TYPES: [&str; 3] = ["text/plain", "application/x-subrip", "text/vtt"];

fn mime_in(ct: &str, types: &[&str]) -> bool {
    let mime = ct.split(';').next().unwrap_or("").trim();
    types.iter().any(|t| mime.eq_ignore_ascii_case(t))
}

/// Is `ct` one of [`AUDIO_TYPES`] (parameters ignored)?
pub fn audio_type(ct: &str) -> bool {
    mime_in(ct, &AUDIO_TYPES)
}

/// Does `ct` name no charset, or UTF-8 (or its subset US-ASCII)? Text in another
/// (UTF-16: a key's bytes apart) would be scanned in a form the client does not read.
pub fn charset_ok(ct: &str) -> bool {
    ct.split(';').skip(1).all(|p| match p.split_once('=') {
        Some((k, v)) if k.trim().eq_ignore_ascii_case("charset") => {
            let v = v.trim().trim_matches('"');
            ["utf-8", "utf8", "us-ascii"]
                .iter()
                .any(|c| v.eq_ignore_ascii_case(c))
        }
        _ => true,
    })
}

/// Is `ct` one of [`TRANSCRIPT_TYPES`] (parameters ignored)?
pub fn transcript_type(ct: &str) -> bool {
    mime_in(ct, &TRANSCRIPT_TYPES)
}

impl Endpoint {
    pub fn of(kind: UpstreamKind, path: &str) -> Endpoint {
        // A trailing slash does not make another endpoint (the provider serves the same).
        let p = path.split('?').next().unwrap_or(path).trim_end_matches('/');
        match kind {
            UpstreamKind::Gemini
                if p.ends_with(":generateContent") || p.ends_with(":streamGenerateContent") =>
            {
                Endpoint::GeminiGenerate
            }
            UpstreamKind::Anthropic if p.ends_with("/messages") => Endpoint::AnthropicMessages,
            // Gemini lists models as `{"models": […]}`, not OpenAI's `data` (its
            // OpenAI-compatible list under `/openai/` has no shape checked either).
            UpstreamKind::Gemini if p.ends_with("/models") => Endpoint::Other,
            _ if p.ends_with("/audio/speech") => Endpoint::AudioSpeech,
            _ if p.ends_with("/audio/transcriptions") || p.ends_with("/audio/translations") => {
                Endpoint::Transcription
            }
            _ if p.ends_with("/chat/completions") => Endpoint::ChatCompletions,
            _ if p.ends_with("/completions") => Endpoint::Completions,
            _ if p.ends_with("/responses") => Endpoint::Responses,
            _ if p.ends_with("/embeddings") => Endpoint::Embeddings,
            _ if p.ends_with("/models") => Endpoint::Models,
            _ => Endpoint::Other,
        }
    }
}

/// Does a successful (2xx) JSON body have its endpoint's shape?
pub fn shape_ok(endpoint: Endpoint, p: &Probe) -> bool {
    let is = |t: &crate::response::probe::Text, v: &str| t.0.as_deref() == Some(v);
    match endpoint {
        Endpoint::ChatCompletions | Endpoint::Completions => p.choices == Kind::Array,
        Endpoint::Responses => p.output == Kind::Array || is(&p.object, "response"),
        Endpoint::Embeddings | Endpoint::Models => p.data == Kind::Array,
        Endpoint::AnthropicMessages => p.content == Kind::Array && is(&p.type_, "message"),
        Endpoint::GeminiGenerate => {
            p.candidates == Kind::Array || p.prompt_feedback != Kind::Absent
        }
        Endpoint::AudioSpeech | Endpoint::Transcription | Endpoint::Other => true,
    }
}

/// Check what a complete JSON body said ([`Probe`], read by the egress walk). Provider
/// error bodies (status ≥ 400) only need to be a JSON object; success bodies need their
/// endpoint's shape.
pub fn check_shape(endpoint: Endpoint, status: u16, p: &Probe) -> Result<(), Rejection> {
    if status >= 400 || shape_ok(endpoint, p) {
        Ok(())
    } else {
        Err(Rejection::Shape)
    }
}

/// Check one stream event's data: JSON or `[DONE]`.
pub fn check_event_data(data: &str) -> Result<Option<Value>, Rejection> {
    let d = data.trim();
    if d == "[DONE]" {
        return Ok(None);
    }
    serde_json::from_str::<Value>(d)
        .map(Some)
        .map_err(|_| Rejection::InvalidEvent)
}

/// Finds any configured secret in response bytes, also across chunk boundaries.
pub struct SecretScanner {
    ac: Option<AhoCorasick>,
    /// The same secrets, matched without regard to ASCII case: for header names, which
    /// HTTP lower-cases on the way (a key in a name reaches the client folded).
    folded: Option<AhoCorasick>,
    /// Longest secret, in bytes.
    max_len: usize,
}

impl std::fmt::Debug for SecretScanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretScanner([REDACTED])")
    }
}

/// Secrets shorter than this are not scanned for (they would match ordinary text).
pub const MIN_SCANNED_SECRET: usize = 8;

impl SecretScanner {
    pub fn new(secrets: &[String]) -> SecretScanner {
        let pats: Vec<&str> = secrets
            .iter()
            .map(String::as_str)
            .filter(|s| s.len() >= MIN_SCANNED_SECRET)
            .collect();
        let max_len = pats.iter().map(|s| s.len()).max().unwrap_or(0);
        let (ac, folded) = if pats.is_empty() {
            (None, None)
        } else {
            (
                AhoCorasick::new(&pats).ok(),
                AhoCorasick::builder()
                    .ascii_case_insensitive(true)
                    .build(&pats)
                    .ok(),
            )
        };
        SecretScanner {
            ac,
            folded,
            max_len,
        }
    }

    /// Does `bytes` contain a secret?
    pub fn contains(&self, bytes: &[u8]) -> bool {
        self.ac.as_ref().is_some_and(|ac| ac.is_match(bytes))
    }

    /// `text` with every secret in it written as `[REDACTED]`; `None` when it holds none.
    pub fn redact(&self, text: &str) -> Option<String> {
        let ac = self.ac.as_ref().filter(|ac| ac.is_match(text))?;
        Some(ac.replace_all(text, &vec!["[REDACTED]"; ac.patterns_len()]))
    }

    /// Does `bytes` contain a secret in any ASCII case (a header name)?
    pub fn contains_any_case(&self, bytes: &[u8]) -> bool {
        self.folded.as_ref().is_some_and(|ac| ac.is_match(bytes))
    }

    /// Bytes to keep from the end of one chunk so a secret split across chunks is found.
    pub fn overlap(&self) -> usize {
        self.max_len.saturating_sub(1)
    }
}

/// A rolling window over a stream, so matches straddling chunks are seen.
#[derive(Debug, Default, Clone)]
pub struct Tail {
    buf: Vec<u8>,
}

impl Tail {
    /// Nothing held yet.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Append `chunk`, test `f` on (tail + chunk), keep the last `keep` bytes.
    pub fn scan(&mut self, chunk: &[u8], keep: usize, mut f: impl FnMut(&[u8]) -> bool) -> bool {
        if self.buf.is_empty() {
            // Nothing held: test the chunk where it is, keep only its end.
            let hit = f(chunk);
            self.buf
                .extend_from_slice(&chunk[chunk.len().saturating_sub(keep)..]);
            return hit;
        }
        self.buf.extend_from_slice(chunk);
        let hit = f(&self.buf);
        if self.buf.len() > keep {
            let cut = self.buf.len() - keep;
            self.buf.drain(..cut);
        }
        hit
    }
}

/// The SSE event keygate sends when it stops a stream.
pub fn error_event(request_id: &str) -> String {
    let v = serde_json::json!({"error": {
        "code": "upstream_error",
        "message": "The provider's stream was invalid and has been stopped.",
        "request_id": request_id,
    }});
    format!("event: error\ndata: {v}\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_utf8_text_is_taken() {
        for ok in [
            "application/json",
            "text/plain; charset=utf-8",
            "text/plain;charset=\"UTF-8\"",
            "text/event-stream; charset=us-ascii",
            "text/vtt; foo=bar",
        ] {
            assert!(charset_ok(ok), "{ok}");
        }
        for bad in [
            "text/plain; charset=utf-16",
            "application/json; charset=latin1",
        ] {
            assert!(!charset_ok(bad), "{bad}");
        }
    }

    #[test]
    fn all_lists_every_rejection_once() {
        // A match without a wildcard: a new variant fails to compile until listed here.
        let index = |r: Rejection| match r {
            Rejection::ContentType => 0,
            Rejection::TooLarge => 1,
            Rejection::InvalidJson => 2,
            Rejection::Shape => 3,
            Rejection::SecretEgress => 4,
            Rejection::BlockedPattern => 5,
            Rejection::Redirect => 6,
            Rejection::InvalidEvent => 7,
            Rejection::Deadline => 8,
        };
        for (i, r) in Rejection::ALL.iter().enumerate() {
            assert_eq!(index(*r), i);
        }
        assert_eq!(Rejection::Deadline.to_error().code.status(), 504);
    }
    use proptest::prelude::*;

    /// A body's probe (no secrets looked for), then its shape.
    fn check_json_body(endpoint: Endpoint, status: u16, body: &[u8]) -> Result<Probe, Rejection> {
        let p = crate::response::egress::probe(body).ok_or(Rejection::InvalidJson)?;
        check_shape(endpoint, status, &p).map(|()| p)
    }

    #[test]
    fn shapes() {
        let chat = Endpoint::of(UpstreamKind::OpenAi, "/v1/chat/completions");
        assert!(check_json_body(chat, 200, br#"{"choices":[]}"#).is_ok());
        assert_eq!(
            check_json_body(chat, 200, br#"{"id":"x"}"#).unwrap_err(),
            Rejection::Shape
        );
        assert_eq!(
            check_json_body(chat, 200, br#"{"choices":["#).unwrap_err(),
            Rejection::InvalidJson
        );
        assert!(
            check_json_body(chat, 429, br#"{"error":{"message":"slow down"}}"#).is_ok(),
            "errors pass with any shape"
        );
        let msg = Endpoint::of(UpstreamKind::Anthropic, "/v1/messages");
        assert!(check_json_body(msg, 200, br#"{"type":"message","content":[]}"#).is_ok());
        let gem = Endpoint::of(UpstreamKind::Gemini, "/v1beta/models/g:generateContent");
        assert!(check_json_body(gem, 200, br#"{"candidates":[]}"#).is_ok());
        assert_eq!(
            Endpoint::of(UpstreamKind::OpenAi, "/v1/models?limit=2"),
            Endpoint::Models
        );
        assert_eq!(
            Endpoint::of(UpstreamKind::OpenAi, "/v1/models/"),
            Endpoint::Models
        );
        assert!(check_json_body(Endpoint::Embeddings, 200, br#"{"data":[]}"#).is_ok());
        assert!(check_json_body(Endpoint::Other, 200, br#"[1]"#).is_err());
        assert_eq!(
            check_json_body(chat, 200, br#"{"choices":{"a":1}}"#).unwrap_err(),
            Rejection::Shape
        );
    }

    #[test]
    fn content_types() {
        assert!(content_type_allowed("application/json; charset=utf-8"));
        assert!(content_type_allowed("text/event-stream"));
        assert!(content_type_allowed("application/problem+json"));
        assert!(!content_type_allowed("text/html"));
        assert!(!content_type_allowed(""));
    }

    #[test]
    fn events() {
        assert_eq!(check_event_data("[DONE]"), Ok(None));
        assert!(check_event_data("{\"a\":1}").unwrap().is_some());
        assert_eq!(check_event_data("<html>"), Err(Rejection::InvalidEvent));
    }

    #[test]
    fn secrets_are_found_across_chunks() {
        let s = SecretScanner::new(&["sk-supersecret-123".to_string(), "short".to_string()]);
        assert!(s.contains(b"xx sk-supersecret-123 yy"));
        assert!(!s.contains(b"short"), "short secrets are not scanned");
        let mut tail = Tail::default();
        assert!(!tail.scan(b"...sk-super", s.overlap(), |b| s.contains(b)));
        assert!(tail.scan(b"secret-123...", s.overlap(), |b| s.contains(b)));
        assert!(format!("{s:?}").contains("REDACTED"));
    }

    #[test]
    fn header_names_are_matched_in_any_case() {
        let s = SecretScanner::new(&["AIzaSyMixedCase-123".to_string()]);
        assert!(!s.contains(b"x-ratelimit-aizasymixedcase-123"));
        assert!(s.contains_any_case(b"x-ratelimit-aizasymixedcase-123"));
        assert!(!s.contains_any_case(b"x-ratelimit-remaining-requests"));
        assert!(!SecretScanner::new(&[]).contains_any_case(b"anything"));
    }

    proptest! {
        /// A secret is found however the stream is cut.
        #[test]
        fn secret_found_at_any_split(prefix in "[a-z ]{0,40}", suffix in "[a-z ]{0,40}", cut in 0usize..200) {
            let secret = "sk-live-0123456789abcdef".to_string();
            let s = SecretScanner::new(std::slice::from_ref(&secret));
            let text = format!("{prefix}{secret}{suffix}");
            let cut = cut % (text.len() + 1);
            let mut tail = Tail::default();
            let a = tail.scan(&text.as_bytes()[..cut], s.overlap(), |b| s.contains(b));
            let b = tail.scan(&text.as_bytes()[cut..], s.overlap(), |b| s.contains(b));
            prop_assert!(a || b);
        }

        #[test]
        fn validators_never_panic(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = check_json_body(Endpoint::ChatCompletions, 200, &body);
            let _ = check_event_data(&String::from_utf8_lossy(&body));
        }
    }
}
