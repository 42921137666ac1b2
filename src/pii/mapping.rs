//! One request's pseudonyms: original value ↔ placeholder (`[EMAIL_1]`).
//!
//! The map lives in the request's memory only: it is never logged (its `Debug` shows
//! counts, not values), never stored, and its strings are zeroized when it is dropped.

use super::detect::Detector;
use serde::ser::{Serialize, SerializeMap, Serializer};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use zeroize::Zeroize;

/// Findings per kind (`email` → 2), for the audit log and metrics. Never values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts(pub Vec<(Arc<str>, u64)>);

impl Counts {
    /// Count one finding of `kind`.
    pub fn add(&mut self, kind: &Arc<str>) {
        match self.0.iter_mut().find(|(k, _)| k == kind) {
            Some((_, n)) => *n += 1,
            None => self.0.push((kind.clone(), 1)),
        }
    }

    /// No finding at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The kinds found, in order of first finding.
    pub fn kinds(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| &**k).collect()
    }
}

impl Serialize for Counts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, n) in &self.0 {
            m.serialize_entry(&**k, n)?;
        }
        m.end()
    }
}

/// The placeholders issued for one request, and the values they stand for.
#[derive(Default)]
pub struct Pseudonyms {
    /// (kind index, original) → placeholder.
    by_value: HashMap<(usize, String), String>,
    /// placeholder → original.
    by_placeholder: HashMap<String, String>,
    /// Next number per kind label.
    next: HashMap<String, u32>,
    /// Placeholder-shaped strings already in the request: never issued, so the model
    /// repeating one is not mistaken for ours.
    reserved: HashSet<String>,
    counts: Counts,
    longest: usize,
}

impl std::fmt::Debug for Pseudonyms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Pseudonyms({} values, [REDACTED])",
            self.by_placeholder.len()
        )
    }
}

impl Drop for Pseudonyms {
    fn drop(&mut self) {
        for ((_, mut v), mut p) in self.by_value.drain() {
            v.zeroize();
            p.zeroize();
        }
        for (mut p, mut v) in self.by_placeholder.drain() {
            p.zeroize();
            v.zeroize();
        }
    }
}

impl Pseudonyms {
    /// An empty map that will never issue a placeholder already present in `request`
    /// (the whole body, so placeholder-shaped text anywhere in it is respected).
    pub fn for_request(request: &str) -> Pseudonyms {
        let mut p = Pseudonyms::default();
        p.reserve(request);
        p
    }

    /// Never issue a placeholder that appears in `text` (e.g. a decoded text part whose
    /// JSON spelled it with escapes).
    pub fn reserve(&mut self, text: &str) {
        for (start, end) in placeholder_spans(text) {
            self.reserved.insert(text[start..end].to_string());
        }
    }

    /// Replace every finding of `det` in `text`; `None` when there was none.
    pub fn pseudonymize(&mut self, det: &Detector, text: &str) -> Option<String> {
        let found = det.find(text);
        if found.is_empty() {
            return None;
        }
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for f in found {
            out.push_str(&text[last..f.start]);
            let kind = &det.kinds()[f.kind];
            self.counts.add(&kind.name);
            let mut key = (f.kind, text[f.start..f.end].to_string());
            let placeholder = match self.by_value.get(&key) {
                Some(p) => {
                    let p = p.clone();
                    key.1.zeroize();
                    p
                }
                None => {
                    let p = self.issue(&kind.label);
                    self.by_placeholder.insert(p.clone(), key.1.clone());
                    self.by_value.insert(key, p.clone());
                    p
                }
            };
            out.push_str(&placeholder);
            last = f.end;
        }
        out.push_str(&text[last..]);
        Some(out)
    }

    /// Count the findings of `det` in `text` without replacing anything (`block` mode).
    pub fn count_only(det: &Detector, text: &str, counts: &mut Counts) {
        for f in det.find(text) {
            counts.add(&det.kinds()[f.kind].name);
        }
    }

    fn issue(&mut self, label: &str) -> String {
        let n = self.next.entry(label.to_string()).or_insert(0);
        loop {
            *n += 1;
            let p = format!("[{label}_{n}]");
            if !self.reserved.contains(&p) {
                self.longest = self.longest.max(p.len());
                return p;
            }
        }
    }

    /// Nothing was replaced.
    pub fn is_empty(&self) -> bool {
        self.by_placeholder.is_empty()
    }

    /// Replacements per kind (each occurrence counts).
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Length of the longest placeholder issued.
    pub fn longest(&self) -> usize {
        self.longest
    }

    /// Is `s` the start of a placeholder issued here (a placeholder split over deltas)?
    pub fn is_issued_prefix(&self, s: &str) -> bool {
        s.starts_with('[')
            && s.len() < self.longest
            && self.by_placeholder.keys().any(|p| p.starts_with(s))
    }

    /// `text` with every issued placeholder replaced by its original. Placeholders
    /// that were never issued (the model made them up) stay as they are.
    pub fn restore<'a>(&self, text: &'a str) -> Cow<'a, str> {
        self.restore_with(text, |orig, out| out.push_str(orig))
    }

    /// Like [`Pseudonyms::restore`] on serialized JSON: originals are inserted
    /// JSON-escaped. `None` when nothing changed.
    pub fn restore_json(&self, json: &[u8]) -> Option<Vec<u8>> {
        let text = std::str::from_utf8(json).ok()?;
        match self.restore_with(text, |orig, out| {
            let quoted = serde_json::Value::String(orig.to_string()).to_string();
            out.push_str(&quoted[1..quoted.len() - 1]);
        }) {
            Cow::Borrowed(_) => None,
            Cow::Owned(s) => Some(s.into_bytes()),
        }
    }

    fn restore_with<'a>(&self, text: &'a str, put: impl Fn(&str, &mut String)) -> Cow<'a, str> {
        if self.is_empty() {
            return Cow::Borrowed(text);
        }
        let mut out: Option<String> = None;
        let mut last = 0;
        for (start, end) in placeholder_spans(text) {
            if let Some(orig) = self.by_placeholder.get(&text[start..end]) {
                let o = out.get_or_insert_with(|| String::with_capacity(text.len() + 64));
                o.push_str(&text[last..start]);
                put(orig, o);
                last = end;
            }
        }
        match out {
            None => Cow::Borrowed(text),
            Some(mut o) => {
                o.push_str(&text[last..]);
                Cow::Owned(o)
            }
        }
    }
}

/// Byte spans of placeholder-shaped tokens `[LABEL_N]` (label `[A-Z][A-Z0-9_]*`).
pub fn placeholder_spans(text: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    let b = text.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < b.len() {
            let start = i;
            i += 1;
            if b[start] != b'[' {
                continue;
            }
            let mut j = start + 1;
            while j < b.len()
                && (b[j].is_ascii_uppercase() || b[j].is_ascii_digit() || b[j] == b'_')
            {
                j += 1;
            }
            if j < b.len() && b[j] == b']' && is_placeholder(&text[start + 1..j]) {
                i = j + 1;
                return Some((start, j + 1));
            }
        }
        None
    })
}

fn is_placeholder(inner: &str) -> bool {
    match inner.rsplit_once('_') {
        Some((label, n)) => {
            label.starts_with(|c: char| c.is_ascii_uppercase())
                && !n.is_empty()
                && n.bytes().all(|c| c.is_ascii_digit())
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::detect::BUILTIN_KINDS;
    use super::*;
    use proptest::prelude::*;

    fn det() -> Detector {
        Detector::new(&BUILTIN_KINDS, &[]).unwrap()
    }

    #[test]
    fn same_value_same_placeholder_and_restore() {
        let d = det();
        let mut p = Pseudonyms::default();
        let t = "a@b.io wrote to c@d.io and a@b.io";
        let out = p.pseudonymize(&d, t).unwrap();
        assert_eq!(out, "[EMAIL_1] wrote to [EMAIL_2] and [EMAIL_1]");
        assert_eq!(p.restore(&out), t);
        assert_eq!(p.counts().0, vec![(Arc::from("email"), 3)]);
        assert_eq!(p.longest(), "[EMAIL_1]".len());
    }

    #[test]
    fn invented_placeholders_stay() {
        let d = det();
        let mut p = Pseudonyms::default();
        p.pseudonymize(&d, "a@b.io").unwrap();
        assert_eq!(
            p.restore("[EMAIL_1] [EMAIL_7] [PHONE_1]"),
            "a@b.io [EMAIL_7] [PHONE_1]"
        );
    }

    #[test]
    fn placeholders_in_the_request_are_never_issued() {
        let d = det();
        let mut p = Pseudonyms::for_request("literal [EMAIL_1] in the prompt");
        let out = p.pseudonymize(&d, "a@b.io and [EMAIL_1]").unwrap();
        assert_eq!(out, "[EMAIL_2] and [EMAIL_1]");
        assert_eq!(p.restore(&out), "a@b.io and [EMAIL_1]");
    }

    #[test]
    fn json_restore_escapes_originals() {
        let d = Detector::new(
            &[],
            &[super::super::detect::CustomPattern {
                name: "quote".into(),
                regex: r#"say "[a-z]+""#.into(),
            }],
        )
        .unwrap();
        let mut p = Pseudonyms::default();
        let out = p.pseudonymize(&d, r#"x say "hi" y"#).unwrap();
        assert_eq!(out, "x [QUOTE_1] y");
        let body = serde_json::json!({ "text": out }).to_string();
        let restored = p.restore_json(body.as_bytes()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&restored).unwrap();
        assert_eq!(v["text"], r#"x say "hi" y"#);
        assert!(p.restore_json(b"{\"a\":\"[QUOTE_9]\"}").is_none());
    }

    #[test]
    fn debug_is_redacted() {
        let mut p = Pseudonyms::default();
        p.pseudonymize(&det(), "secret@example.com").unwrap();
        let s = format!("{p:?}");
        assert!(!s.contains("secret") && s.contains("REDACTED"), "{s}");
    }

    #[test]
    fn issued_prefixes() {
        let mut p = Pseudonyms::default();
        p.pseudonymize(&det(), "a@b.io").unwrap();
        assert!(p.is_issued_prefix("[EMA"));
        assert!(p.is_issued_prefix("["));
        assert!(!p.is_issued_prefix("[PH"));
        assert!(!p.is_issued_prefix("[EMAIL_1]"));
    }

    fn pii_item() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z]{1,8}(\\.[a-z]{1,5})?@[a-z]{2,8}\\.(com|org|io|de)",
            Just("+1 415 555 2671".to_string()),
            Just("(212) 555-0188".to_string()),
            Just("4111 1111 1111 1111".to_string()),
            Just("5500-0000-0000-0004".to_string()),
            Just("DE89 3704 0044 0532 0130 00".to_string()),
            Just("GB82WEST12345698765432".to_string()),
            (0u8..=255, 0u8..=255, 0u8..=255, 1u8..=254)
                .prop_map(|(a, b, c, d)| format!("{a}.{b}.{c}.{d}")),
            Just("2001:db8::ff00:42:8329".to_string()),
        ]
    }

    proptest! {
        /// For random text with embedded personal data, pseudonymize then restore is
        /// the identity, and no original survives in the pseudonymized text.
        #[test]
        fn pseudonymize_then_restore_is_identity(
            parts in proptest::collection::vec(("[ a-zA-Z0-9.,:;!?()\\[\\]_-]{0,30}", pii_item()), 0..8),
            tail in "[ a-zA-Z0-9.,:;()\\[\\]_-]{0,30}",
        ) {
            let d = det();
            let mut text = String::new();
            for (filler, item) in &parts {
                text.push_str(filler);
                text.push(' ');
                text.push_str(item);
                text.push(' ');
            }
            text.push_str(&tail);
            let mut p = Pseudonyms::for_request(&text);
            let out = p.pseudonymize(&d, &text).unwrap_or_else(|| text.clone());
            prop_assert_eq!(p.restore(&out), text.as_str());
            for (_, item) in &parts {
                prop_assert!(!out.contains(item.as_str()) || !text.contains(item.as_str()));
            }
        }
    }
}
