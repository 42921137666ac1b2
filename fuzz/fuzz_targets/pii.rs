//! PII detection and restoration on arbitrary text: never panics, and pseudonymize then
//! restore is the identity; the stream restorer gives the same text however the
//! pseudonymized text is cut into deltas.
#![no_main]
use keygate::pii::detect::{Detector, BUILTIN_KINDS};
use keygate::pii::stream::StreamRestorer;
use keygate::pii::Pseudonyms;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static DETECTOR: OnceLock<Detector> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let det = DETECTOR.get_or_init(|| Detector::new(&BUILTIN_KINDS, &[]).unwrap());
    let mut map = Pseudonyms::for_request(text);
    let sent = map.pseudonymize(det, text).unwrap_or_else(|| text.to_string());
    assert_eq!(map.restore(&sent), text);

    let mut r = StreamRestorer::default();
    let mut got = String::new();
    let step = usize::from(cut % 16) + 1;
    let chars: Vec<char> = sent.chars().collect();
    for piece in chars.chunks(step) {
        let mut v = serde_json::json!({"delta": {"text": piece.iter().collect::<String>()}});
        let (before, _) = r.event(None, &mut v, &map);
        assert!(before.is_empty(), "text events never flush");
        got.push_str(v["delta"]["text"].as_str().unwrap_or(""));
    }
    let tail = r.flush(&map);
    let tail = String::from_utf8(tail).unwrap_or_default();
    if let Some(data) = tail.strip_prefix("data: ") {
        let v: serde_json::Value = serde_json::from_str(data.trim_end()).unwrap();
        got.push_str(v["delta"]["text"].as_str().unwrap_or(""));
    }
    assert_eq!(got, text);
});
