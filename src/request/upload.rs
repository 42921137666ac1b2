//! Multipart uploads (SPEC §8.1): transcriptions, translations and image edits and
//! variations take `multipart/form-data` up to `server.max_upload_bytes`. The form is
//! parsed with `multer` (the parser axum uses) as the bytes pass, so a large upload is
//! never held whole: keygate reads the `model` field (for `routes[].models`) and checks
//! the form is well made, while the body streams on to the provider one chunk behind
//! (the last chunk waits until the form and the signature's digest are verified, so a
//! refused body never reaches the provider complete).

use crate::auth::{AuthFailure, DigestCheck};
use crate::error::GatewayError;
use bytes::Bytes;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

/// Longest `model` field read.
const MODEL_MAX: u64 = 256;

/// The endpoints that take uploads.
pub fn is_upload_path(path: &str) -> bool {
    let p = path.split('?').next().unwrap_or(path).trim_end_matches('/');
    [
        "/audio/transcriptions",
        "/audio/translations",
        "/images/edits",
        "/images/variations",
    ]
    .iter()
    .any(|e| p.ends_with(e))
}

/// The boundary of a `multipart/form-data` content type on an upload endpoint.
pub fn boundary(path: &str, content_type: Option<&str>) -> Option<String> {
    // The path first: on every other request this is all that runs.
    if !is_upload_path(path) {
        return None;
    }
    let ct = content_type?;
    let mime = ct.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    multer::parse_boundary(ct).ok()
}

fn malformed(e: impl std::fmt::Display) -> GatewayError {
    GatewayError::bad_request("The multipart body is malformed.").detail(e.to_string())
}

/// A part's name as multer read it is its name by the RFC: its `Content-Disposition`
/// is strictly well formed ([`super::disposition`]) and names the same field. (multer keeps
/// the last of a part's repeated headers: a repeat is refused from the raw bytes, by
/// [`super::disposition::PartHeads`].)
fn strictly_named(field: &multer::Field<'_>) -> Result<(), GatewayError> {
    let Some(raw) = field.headers().get(http::header::CONTENT_DISPOSITION) else {
        return Err(malformed("a part has no Content-Disposition"));
    };
    let name = super::disposition::form_data_name(raw.as_bytes())
        .map_err(|e| malformed(format!("a part's Content-Disposition is refused: {e}")))?;
    if field.name() != Some(name.as_str()) {
        return Err(malformed("a part's Content-Disposition is ambiguous"));
    }
    Ok(())
}

/// The bytes handed to the parser so far, and whether the body ended.
#[derive(Default)]
struct Feed {
    queue: VecDeque<Bytes>,
    ended: bool,
}

/// The parser's input: what was fed; pending (not ended) when it has read it all.
struct FeedStream(Arc<Mutex<Feed>>);

impl futures_core::Stream for FeedStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Ok(mut feed) = self.0.lock() else {
            return Poll::Ready(Some(Err(std::io::Error::other("feed poisoned"))));
        };
        match feed.queue.pop_front() {
            Some(b) => Poll::Ready(Some(Ok(b))),
            None if feed.ended => Poll::Ready(None),
            // Polled again by `Form::push` when more arrives (no waker needed).
            None => Poll::Pending,
        }
    }
}

type Parse = Pin<Box<dyn Future<Output = Result<Option<String>, GatewayError>> + Send>>;

/// One form being read: push its bytes as they pass, then `finish` for its `model`.
pub struct Form {
    /// `--boundary`, which the body must begin with (no preamble: a parser that looks
    /// for the first boundary anywhere, as multer does, and one that wants it at the
    /// start of a line could read different parts).
    opening: Vec<u8>,
    /// How much of `opening` has been seen.
    opened: usize,
    /// Each part's raw headers (a repeated `Content-Disposition`).
    heads: super::disposition::PartHeads,
    feed: Arc<Mutex<Feed>>,
    parse: Mutex<Parse>,
    result: Option<Result<Option<String>, GatewayError>>,
}

impl Form {
    /// A form with `boundary`, refused past `limit` bytes.
    pub fn new(boundary: &str, limit: usize) -> Form {
        let feed = Arc::new(Mutex::new(Feed::default()));
        let constraints = multer::Constraints::new().size_limit(
            multer::SizeLimit::new()
                .whole_stream(limit as u64)
                .for_field("model", MODEL_MAX),
        );
        let mut mp =
            multer::Multipart::with_constraints(FeedStream(feed.clone()), boundary, constraints);
        let parse: Parse = Box::pin(async move {
            let mut model: Option<String> = None;
            while let Some(mut field) = mp.next_field().await.map_err(malformed)? {
                strictly_named(&field)?;
                if field.name() == Some("model") {
                    if model.is_some() {
                        return Err(GatewayError::bad_request(
                            "The multipart body has more than one model field.",
                        ));
                    }
                    model = Some(field.text().await.map_err(malformed)?);
                } else {
                    while field.chunk().await.map_err(malformed)?.is_some() {}
                }
            }
            Ok(model)
        });
        Form {
            opening: format!("--{boundary}").into_bytes(),
            opened: 0,
            heads: super::disposition::PartHeads::new(boundary),
            feed,
            parse: Mutex::new(parse),
            result: None,
        }
    }

    /// Run the parser over what it has been fed, as far as it goes.
    fn poll(&mut self) {
        if self.result.is_some() {
            return;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let polled = match self.parse.lock() {
            Ok(mut parse) => parse.as_mut().poll(&mut cx),
            Err(_) => Poll::Ready(Err(malformed("parser poisoned"))),
        };
        if let Poll::Ready(r) = polled {
            self.result = Some(r);
        }
    }

    /// The next bytes of the body; `Err` as soon as the form is known to be malformed.
    pub fn push(&mut self, chunk: Bytes) -> Result<(), GatewayError> {
        if self.opened < self.opening.len() && self.result.is_none() {
            let want = &self.opening[self.opened..];
            let n = want.len().min(chunk.len());
            if chunk[..n] != want[..n] {
                self.result = Some(Err(malformed("the body must begin with its boundary")));
            }
            self.opened += n;
        }
        if self.result.is_none() {
            if let Err(e) = self.heads.push(&chunk) {
                self.result = Some(Err(malformed(format!("the form has {e}"))));
            }
        }
        if let Ok(mut feed) = self.feed.lock() {
            feed.queue.push_back(chunk);
        }
        self.poll();
        match &self.result {
            Some(Err(e)) => Err(e.clone()),
            _ => Ok(()),
        }
    }

    /// The body ended: the form's `model` field, if it has one.
    pub fn finish(mut self) -> Result<Option<String>, GatewayError> {
        if let Ok(mut feed) = self.feed.lock() {
            feed.ended = true;
        }
        self.poll();
        self.result
            .unwrap_or_else(|| Err(malformed("the form did not end")))
    }
}

/// Read a whole form (a body read before the first attempt).
pub fn read_whole(
    boundary: &str,
    body: &[u8],
    limit: usize,
) -> Result<Option<String>, GatewayError> {
    let mut form = Form::new(boundary, limit);
    form.push(Bytes::copy_from_slice(body))?;
    form.finish()
}

/// A large upload on its way: the form read as it passes, the signature's digest taken,
/// each chunk forwarded when the next arrives.
pub struct Streaming {
    boundary: String,
    limit: usize,
    /// The body's declared length, when it has one (the upstream gets the same).
    pub declared: Option<usize>,
    expected: Option<DigestCheck>,
    digest: Option<DigestCheck>,
    form: Option<Form>,
    seen: usize,
    held: Option<Bytes>,
    too_big: GatewayError,
}

impl std::fmt::Debug for Streaming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streaming")
            .field("limit", &self.limit)
            .field("declared", &self.declared)
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

/// Why a finished upload is refused.
pub enum Refusal {
    /// Its bytes do not hash to the signed `Content-Digest`.
    Digest(AuthFailure),
    /// Too large or malformed.
    Body(GatewayError),
}

impl Streaming {
    pub fn new(
        boundary: String,
        limit: usize,
        declared: Option<usize>,
        digest: Option<DigestCheck>,
        too_big: GatewayError,
    ) -> Streaming {
        let mut s = Streaming {
            form: None,
            boundary,
            limit,
            declared,
            expected: digest,
            digest: None,
            seen: 0,
            held: None,
            too_big,
        };
        s.restart();
        s
    }

    /// From the beginning (another attempt: the body is sent again).
    pub fn restart(&mut self) {
        self.form = Some(Form::new(&self.boundary, self.limit));
        self.digest = self.expected.clone();
        self.seen = 0;
        self.held = None;
    }

    /// One chunk in; what to forward now (the chunk before it). The `last` chunk is held
    /// with the one before it, for [`Streaming::finish`].
    pub fn push(&mut self, chunk: Bytes, last: bool) -> Result<Bytes, GatewayError> {
        if chunk.is_empty() {
            // Pingora passes empty chunks on (a chunked body's `0` line before its final
            // CRLF): one must not take the held chunk's place, which would release it.
            return Ok(Bytes::new());
        }
        self.seen += chunk.len();
        if self.seen > self.limit {
            return Err(self.too_big.clone());
        }
        if let Some(d) = self.digest.as_mut() {
            d.update(&chunk);
        }
        if let Some(f) = self.form.as_mut() {
            f.push(chunk.clone())?;
        }
        let prev = self.held.replace(chunk).unwrap_or_default();
        if !last || prev.is_empty() {
            return Ok(prev);
        }
        let mut both =
            bytes::BytesMut::with_capacity(prev.len() + self.held.as_ref().map_or(0, Bytes::len));
        both.extend_from_slice(&prev);
        both.extend_from_slice(self.held.as_deref().unwrap_or_default());
        self.held = Some(both.freeze());
        Ok(Bytes::new())
    }

    /// The body ended: its `model` and the last chunk to forward, once it all checks out.
    pub fn finish(&mut self) -> Result<(Option<String>, Bytes), Refusal> {
        if let Some(d) = self.digest.take() {
            d.finish().map_err(Refusal::Digest)?;
        }
        let model = match self.form.take() {
            Some(f) => f.finish().map_err(Refusal::Body)?,
            None => None,
        };
        Ok((model, self.held.take().unwrap_or_default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, file, data) in parts {
            out.extend_from_slice(b"--XyZ\r\nContent-Disposition: form-data; name=\"");
            out.extend_from_slice(name.as_bytes());
            out.push(b'"');
            if let Some(f) = file {
                out.extend_from_slice(
                    format!("; filename=\"{f}\"\r\nContent-Type: audio/wav").as_bytes(),
                );
            }
            out.extend_from_slice(b"\r\n\r\n");
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"--XyZ--\r\n");
        out
    }

    /// A form whose parts carry these raw `Content-Disposition` values.
    fn raw_form(dispositions: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, d) in dispositions.iter().enumerate() {
            out.extend_from_slice(
                format!("--XyZ\r\nContent-Disposition: {d}\r\n\r\nv{i}\r\n").as_bytes(),
            );
        }
        out.extend_from_slice(b"--XyZ--\r\n");
        out
    }

    #[test]
    fn a_model_field_only_a_lenient_parser_finds_is_refused() {
        // The review's form: multer reads the first part as `model` (whisper-1, allowed), an
        // RFC parser reads it as `prompt` and the second part as `model`.
        let smuggled = raw_form(&[
            r#"form-data; x=" name=model;"; name="prompt""#,
            r#"form-data; x=" name=skip;"; name="model""#,
        ]);
        let e = read_whole("XyZ", &smuggled, 1 << 20).unwrap_err();
        assert_eq!(e.code.status(), 400);
        // A parameter name multer does not read (it matches `name` in lower case only).
        let upper = raw_form(&[r#"form-data; name="prompt""#, r#"form-data; NAME="model""#]);
        assert!(read_whole("XyZ", &upper, 1 << 20).is_err());
        // Two dispositions in one part: multer keeps the last, Go and busboy read the first.
        let two = b"--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\ngpt-4o-transcribe\r\n--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--XyZ--\r\n";
        assert!(read_whole("XyZ", two, 1 << 20).is_err());
        // A preamble: multer would find a boundary that is not at the start of a line.
        let mut preamble = b"x--XyZ\r\n".to_vec();
        preamble.extend_from_slice(&form(&[("model", None, b"whisper-1")]));
        assert!(read_whole("XyZ", &preamble, 1 << 20).is_err());
        // The same forms, well made, pass; a boundary split across chunks too.
        let ok = raw_form(&[
            r#"form-data; name="prompt""#,
            r#"form-data; name="model"; filename="m""#,
        ]);
        assert_eq!(
            read_whole("XyZ", &ok, 1 << 20).unwrap().as_deref(),
            Some("v1")
        );
        let mut f = Form::new("XyZ", 1 << 20);
        let body = form(&[("model", None, b"whisper-1")]);
        for b in body.chunks(2) {
            f.push(Bytes::copy_from_slice(b)).unwrap();
        }
        assert_eq!(f.finish().unwrap().as_deref(), Some("whisper-1"));
    }

    #[test]
    fn only_upload_endpoints_with_a_multipart_type_are_uploads() {
        let ct = Some("multipart/form-data; boundary=XyZ");
        assert_eq!(
            boundary("/v1/audio/transcriptions", ct).as_deref(),
            Some("XyZ")
        );
        assert_eq!(boundary("/v1/images/edits?x=1", ct).as_deref(), Some("XyZ"));
        assert_eq!(boundary("/v1/chat/completions", ct), None);
        assert_eq!(
            boundary("/v1/audio/transcriptions", Some("application/json")),
            None
        );
        assert_eq!(
            boundary("/v1/audio/transcriptions", Some("multipart/form-data")),
            None
        );
    }

    #[test]
    fn the_model_is_read_wherever_it_is_in_the_form() {
        let audio = vec![7u8; 300_000];
        for body in [
            form(&[
                ("model", None, b"whisper-1"),
                ("file", Some("a.wav"), &audio),
            ]),
            form(&[
                ("file", Some("a.wav"), &audio),
                ("model", None, b"whisper-1"),
            ]),
        ] {
            // Fed in uneven pieces, as a network would.
            let mut f = Form::new("XyZ", 1 << 20);
            for piece in body.chunks(7_919) {
                f.push(Bytes::copy_from_slice(piece)).unwrap();
            }
            assert_eq!(f.finish().unwrap().as_deref(), Some("whisper-1"));
        }
        let none = form(&[("file", Some("a.wav"), b"RIFF")]);
        assert_eq!(read_whole("XyZ", &none, 1 << 20).unwrap(), None);
    }

    #[test]
    fn malformed_ambiguous_or_oversized_forms_are_refused() {
        assert!(read_whole("XyZ", b"--XyZ\r\nnot a header\r\n\r\n", 1 << 20).is_err());
        assert!(
            read_whole("XyZ", &form(&[("file", Some("a"), b"x")])[..30], 1 << 20).is_err(),
            "cut"
        );
        let two = form(&[
            ("model", None, b"whisper-1"),
            ("model", None, b"gpt-4o-transcribe"),
        ]);
        let e = read_whole("XyZ", &two, 1 << 20).unwrap_err();
        assert!(e.message.contains("more than one model"), "{}", e.message);
        let long_model = "m".repeat(300);
        assert!(read_whole(
            "XyZ",
            &form(&[("model", None, long_model.as_bytes())]),
            1 << 20
        )
        .is_err());
        let big = form(&[("file", Some("a"), &vec![0u8; 5000])]);
        assert!(read_whole("XyZ", &big, 1000).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_file_cut_anywhere_gives_the_same_model(
            file in proptest::collection::vec(proptest::num::u8::ANY, 0..4000),
            cut in 1usize..700,
            model_first in proptest::bool::ANY,
        ) {
            let parts: Vec<(&str, Option<&str>, &[u8])> = if model_first {
                vec![("model", None, b"whisper-1"), ("file", Some("a"), &file)]
            } else {
                vec![("file", Some("a"), &file), ("model", None, b"whisper-1")]
            };
            let body = form(&parts);
            let mut f = Form::new("XyZ", 1 << 20);
            let mut ok = true;
            for piece in body.chunks(cut) {
                ok &= f.push(Bytes::copy_from_slice(piece)).is_ok();
            }
            // A file may itself hold the boundary line: then the form is not the one built,
            // and whole or cut, the parser must agree.
            let whole = read_whole("XyZ", &body, 1 << 20).ok();
            let cut_result = if ok { f.finish().ok() } else { None };
            proptest::prop_assert_eq!(whole, cut_result);
        }
    }

    #[test]
    fn a_streamed_upload_forwards_one_chunk_behind_and_the_last_after_checks() {
        let body = form(&[
            ("model", None, b"whisper-1"),
            ("file", Some("a.wav"), &[1u8; 5000]),
        ]);
        let too_big = GatewayError::bad_request("too big");
        let mut s = Streaming::new("XyZ".into(), 1 << 20, Some(body.len()), None, too_big);
        let mut sent = Vec::new();
        let pieces: Vec<&[u8]> = body.chunks(1000).collect();
        for (i, piece) in pieces.iter().enumerate() {
            let last = i + 1 == pieces.len();
            sent.extend_from_slice(&s.push(Bytes::copy_from_slice(piece), last).unwrap());
        }
        assert!(sent.len() < body.len(), "the last chunk waits");
        let Ok((model, tail)) = s.finish() else {
            panic!("refused")
        };
        sent.extend_from_slice(&tail);
        assert_eq!(sent, body);
        assert_eq!(model.as_deref(), Some("whisper-1"));
    }

    #[test]
    fn an_empty_chunk_does_not_release_the_held_one() {
        let body = form(&[
            ("model", None, b"whisper-1"),
            ("file", Some("a.wav"), &[1u8; 900]),
        ]);
        let too_big = GatewayError::bad_request("too big");
        let mut s = Streaming::new("XyZ".into(), 1 << 20, None, None, too_big);
        // The whole form in one chunk, then the chunked body's `0` line, then its end.
        let sent = s.push(Bytes::copy_from_slice(&body), false).unwrap();
        assert!(sent.is_empty());
        assert!(
            s.push(Bytes::new(), false).unwrap().is_empty(),
            "released early"
        );
        assert!(
            s.push(Bytes::new(), true).unwrap().is_empty(),
            "released early"
        );
        let Ok((model, tail)) = s.finish() else {
            panic!("refused")
        };
        assert_eq!(tail, body, "held until the checks");
        assert_eq!(model.as_deref(), Some("whisper-1"));
    }
}
