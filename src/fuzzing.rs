//! The bodies of the `cargo fuzz` targets (`fuzz/fuzz_targets/*`), in the library so
//! that every input kept under `fuzz/regressions/<target>/` replays in `cargo test`
//! (`tests/fuzz_regressions.rs`). Each function must not panic on any input; the
//! assertions inside are the properties the fuzzer checks.

use crate::auth::{sfv, signature};
use crate::request::hygiene;
use crate::response::sse::SseFramer;
use crate::response::{egress, usage, validate};

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every target by name, as listed in `fuzz/Cargo.toml` and the Makefile.
pub const TARGETS: &[(&str, Target)] = &[
    ("sse_framer", sse_framer),
    ("response_json", response_json),
    ("signature_headers", signature_headers),
    ("request_body", request_body),
    ("request_path", request_path),
    ("config_yaml", config_yaml),
    ("pii", pii),
    ("egress", egress),
    ("multipart", multipart),
];

/// Multipart uploads fed in arbitrary pieces (the first byte picks their size): never a
/// panic, and the same answer however the bytes were cut.
pub fn multipart(data: &[u8]) {
    use crate::request::upload::{read_whole, Form};
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let whole = read_whole("B", rest, 1 << 20).map_err(|e| e.message);
    let mut form = Form::new("B", 1 << 20);
    let mut failed = None;
    for piece in rest.chunks(cut as usize % 97 + 1) {
        if let Err(e) = form.push(bytes::Bytes::copy_from_slice(piece)) {
            failed = Some(e.message);
            break;
        }
    }
    let pieces = match failed {
        Some(m) => Err(m),
        None => form.finish().map_err(|e| e.message),
    };
    assert_eq!(whole.is_ok(), pieces.is_ok(), "cutting changed the outcome");
    if let (Ok(a), Ok(b)) = (whole, pieces) {
        assert_eq!(a, b);
    }
}

/// SSE framing over arbitrary chunking; the first byte picks the chunk size.
pub fn sse_framer(data: &[u8]) {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let mut f = SseFramer::new(4096);
    for chunk in rest.chunks(cut as usize % 64 + 1) {
        match f.push(chunk) {
            Ok(events) => {
                for e in events {
                    let _ = validate::check_event_data(&e.data);
                }
            }
            Err(_) => break,
        }
        assert!(f.pending() <= 4096 + 64, "framer buffer is bounded");
    }
}

/// Upstream JSON bodies through the body walk (egress and probe) and every endpoint's
/// shape check, and the tree-based usage finder.
pub fn response_json(data: &[u8]) {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = usage::find(&v);
    }
    let secrets = validate::SecretScanner::new(&[]);
    let rules = egress::Rules {
        secrets: &secrets,
        patterns: None,
    };
    let Ok(p) = egress::check_json(&rules, data) else {
        return;
    };
    // The walk accepts strict JSON objects only.
    let parsed = serde_json::from_slice::<serde_json::Value>(data);
    assert!(
        parsed.is_ok_and(|v| v.is_object()),
        "the walk passed a non-object"
    );
    let _ = p.usage();
    for ep in [
        validate::Endpoint::ChatCompletions,
        validate::Endpoint::AnthropicMessages,
        validate::Endpoint::GeminiGenerate,
        validate::Endpoint::Embeddings,
        validate::Endpoint::Other,
    ] {
        let _ = validate::check_shape(ep, 200, &p);
    }
}

/// `Signature-Input`, `Signature` and `Content-Digest` parsing.
pub fn signature_headers(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = sfv::parse_dictionary(s);
    let _ = signature::parse_content_digest(s);
    let (input, sig) = s.split_once('\n').unwrap_or((s, "sig1=:AAAA:"));
    let _ = signature::parse(&[input], &[sig], &Default::default());
}

/// Client request bodies (strict JSON: duplicate keys, depth, numbers): the tree-free
/// scan accepts exactly what the tree parser accepts.
pub fn request_body(data: &[u8]) {
    use crate::request::body::{parse_strict, scan};
    let tree = parse_strict(data);
    let top = scan::top(data);
    assert_eq!(tree.is_ok(), top.is_ok());
    if let (Ok(tree), Ok(top)) = (tree, top) {
        assert_eq!(tree.is_object(), top.is_some());
    }
}

/// Request paths and raw header blocks.
pub fn request_path(data: &[u8]) {
    let _ = hygiene::has_cl_and_te(data);
    if let Ok(s) = std::str::from_utf8(data) {
        if hygiene::check_path(s).is_ok() {
            assert!(!s.split('/').any(|seg| seg == ".." || seg == "."));
        }
    }
}

/// The config loader: any text gives a Runtime or path-named errors.
pub fn config_yaml(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(errs) = crate::config::load_str(text, crate::config::LoadOptions { demo: true })
        {
            assert!(!errs.0.is_empty());
            let _ = errs.to_string();
        }
    }
}

/// PII detection and restoration on arbitrary text: pseudonymize then restore is the
/// identity, and the stream restorer gives the same text however the pseudonymized text
/// is cut into deltas (the first byte picks the delta size).
pub fn pii(data: &[u8]) {
    use crate::pii::detect::{Detector, BUILTIN_KINDS};
    use crate::pii::stream::StreamRestorer;
    use crate::pii::Pseudonyms;
    use std::sync::OnceLock;
    static DETECTOR: OnceLock<Option<Detector>> = OnceLock::new();

    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let Some(det) = DETECTOR
        .get_or_init(|| Detector::new(&BUILTIN_KINDS, &[]).ok())
        .as_ref()
    else {
        panic!("the built-in detector must build");
    };
    let mut map = Pseudonyms::for_request(text);
    let sent = map
        .pseudonymize(det, text)
        .unwrap_or_else(|| text.to_string());
    assert_eq!(map.restore(&sent), text);

    let mut r = StreamRestorer::default();
    let mut got = String::new();
    let step = usize::from(cut % 16) + 1;
    let chars: Vec<char> = sent.chars().collect();
    for piece in chars.chunks(step) {
        let mut v = serde_json::json!({"delta": {"text": piece.iter().collect::<String>()}});
        let (before, _) = r.event(None, &mut v, piece.len(), &map);
        assert!(before.is_empty(), "text events never flush");
        got.push_str(v["delta"]["text"].as_str().unwrap_or(""));
    }
    let tail = String::from_utf8(r.flush(&map)).unwrap_or_default();
    if let Some(data) = tail.strip_prefix("data: ") {
        let v: serde_json::Value = serde_json::from_str(data.trim_end()).unwrap_or_default();
        got.push_str(v["delta"]["text"].as_str().unwrap_or(""));
    }
    assert_eq!(got, text);
}

/// The egress scan over upstream bytes: a JSON body whose decoded strings hold the key
/// is always refused; an SSE stream (cut into chunks of a size the first byte picks)
/// never grows past the channel bound, and a stream whose event text holds the key
/// is refused by some event.
pub fn egress(data: &[u8]) {
    use crate::response::egress::stream_text::StreamText;
    use crate::response::egress::{check_json, Rules, MAX_CHANNELS};
    use crate::response::validate::SecretScanner;
    use std::sync::OnceLock;
    const KEY: &str = "sk-fuzz-0123456789";
    static SCANNER: OnceLock<SecretScanner> = OnceLock::new();
    let secrets = SCANNER.get_or_init(|| SecretScanner::new(&[KEY.to_string()]));
    let rules = Rules {
        secrets,
        patterns: None,
    };
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let verdict = check_json(&rules, rest);
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(rest) {
        if v.to_string().contains(KEY) {
            assert!(verdict.is_err(), "a key a parser yields passed");
        }
    }
    let mut framer = SseFramer::new(4096);
    let mut text = StreamText::default();
    for chunk in rest.chunks(cut as usize % 64 + 1) {
        let Ok(events) = framer.push(chunk) else {
            return;
        };
        for e in events {
            let parsed = validate::check_event_data(&e.data).ok().flatten();
            if text
                .check(
                    &rules,
                    &e.raw,
                    parsed.as_ref().map(|v| (e.data.as_bytes(), v)),
                )
                .is_err()
            {
                return;
            }
            assert!(text.channels() <= MAX_CHANNELS);
        }
    }
}
