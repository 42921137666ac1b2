//! Secret egress: does a provider answer hand the client a configured secret (or a
//! blocked phrase)? Judged on what the client's parser will see, not only on raw bytes:
//!
//! - the raw bytes (headers, bodies, events);
//! - every JSON string decoded (`"sk-ac\u0063-…"` is the key `sk-acc-…` to a parser),
//!   values concatenated in document order, so text split over blocks or parts is one text;
//! - that text with JSON escapes undone once more, because tool arguments and
//!   `partial_json` are JSON text the client parses a second time;
//! - in streams, each text-bearing field concatenated across events the way a client
//!   concatenates deltas: one channel per field path, per choice / tool call / content
//!   block / output item (any integer `index` or `*_index` member names the channel).
//!
//! Memory is bounded: a stream keeps at most [`MAX_CHANNELS`] channels, each the last
//! few bytes of its text (the longest secret, or [`TEXT_WINDOW`] with block patterns).

use crate::response::validate::{Rejection, SecretScanner, Tail};
use regex::bytes::RegexSet;
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::collections::HashMap;
use std::fmt;

/// Bytes of streamed text kept per channel to match block patterns split over events.
pub const TEXT_WINDOW: usize = 1024;

/// Most text channels one stream may open; a stream that needs more is stopped.
pub const MAX_CHANNELS: usize = 256;

/// What is refused in a provider answer: configured secrets, and a route's block patterns.
#[derive(Clone, Copy)]
pub struct Rules<'a> {
    pub secrets: &'a SecretScanner,
    pub patterns: Option<&'a RegexSet>,
}

impl Rules<'_> {
    /// The first rule `bytes` breaks.
    pub fn hit(&self, bytes: &[u8]) -> Option<Rejection> {
        if self.secrets.contains(bytes) {
            Some(Rejection::SecretEgress)
        } else if self.patterns.is_some_and(|p| p.is_match(bytes)) {
            Some(Rejection::BlockedPattern)
        } else {
            None
        }
    }

    /// Bytes kept from the end of a text so a match split over pieces is found.
    fn keep(&self) -> usize {
        let secrets = self.secrets.overlap();
        if self.patterns.is_some() {
            secrets.max(TEXT_WINDOW)
        } else {
            secrets
        }
    }

    /// Check `text` and, when it holds escapes, `text` unescaped once more.
    fn text(&self, text: &str) -> Option<Rejection> {
        self.hit(text.as_bytes()).or_else(|| {
            if !text.contains('\\') {
                return None;
            }
            let mut once = String::with_capacity(text.len());
            let mut u = Unescaper::default();
            u.push(text, &mut once);
            u.finish(&mut once);
            self.hit(once.as_bytes())
        })
    }
}

/// Check a complete JSON body: raw bytes, then every string decoded, each text field
/// joined across the array items a client joins (`content[].text`,
/// `candidates[].content.parts[].text`), and unescaped once more; object keys on their
/// own. A body that is not JSON is judged on its raw bytes only (its validator refuses it).
pub fn check_json(rules: &Rules, body: &[u8]) -> Result<(), Rejection> {
    if let Some(r) = rules.hit(body) {
        return Err(r);
    }
    let mut walk = BodyWalk {
        rules,
        channels: Channels::default(),
        path: String::new(),
        hit: None,
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    // A parse error is the validator's to report; a hit stops the walk early.
    let _ = de.deserialize_any(&mut walk);
    walk.hit.map_or(Ok(()), Err)
}

/// The walk over a body: the path (array items collapsed to `[]`) names the channel.
struct BodyWalk<'r, 'a> {
    rules: &'r Rules<'a>,
    channels: Channels,
    path: String,
    hit: Option<Rejection>,
}

impl BodyWalk<'_, '_> {
    fn stop<E: serde::de::Error>(&mut self, r: Option<Rejection>) -> Result<(), E> {
        match r {
            Some(r) => {
                self.hit = Some(r);
                Err(E::custom("refused"))
            }
            None => Ok(()),
        }
    }
}

impl<'de> Visitor<'de> for &mut BodyWalk<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        let r = self
            .channels
            .extend(self.rules, &self.path, v, Overflow::Merge)
            .err();
        self.stop(r)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
        let at = self.path.len();
        self.path.push_str("[]");
        while a.next_element_seed(&mut *self)?.is_some() {}
        self.path.truncate(at);
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
        let at = self.path.len();
        while let Some(k) = a.next_key::<crate::json::Key<'de>>()? {
            let r = self.rules.text(k.as_str());
            self.stop(r)?;
            self.path.push('.');
            self.path.push_str(k.as_str());
            a.next_value_seed(&mut *self)?;
            self.path.truncate(at);
        }
        Ok(())
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for &mut BodyWalk<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// Undoes JSON string escapes in text that arrives in pieces (an escape may be cut
/// between two pieces). Lenient: what is not a valid escape passes as it is; a UTF-16
/// surrogate becomes U+FFFD (secrets are ASCII, so no match can run through one).
#[derive(Debug, Default)]
pub struct Unescaper {
    /// A started escape: `\`, `\u`, up to `\uXXX`.
    pending: String,
}

impl Unescaper {
    /// Unescape `input` onto `out`, holding back an escape cut at the end.
    pub fn push(&mut self, input: &str, out: &mut String) {
        for c in input.chars() {
            if self.pending.is_empty() {
                if c == '\\' {
                    self.pending.push(c);
                } else {
                    out.push(c);
                }
                continue;
            }
            self.pending.push(c);
            let p = self.pending.as_bytes();
            if p.len() == 2 {
                let simple = match p[1] {
                    b'n' => Some('\n'),
                    b't' => Some('\t'),
                    b'r' => Some('\r'),
                    b'b' => Some('\u{8}'),
                    b'f' => Some('\u{c}'),
                    b'"' => Some('"'),
                    b'\\' => Some('\\'),
                    b'/' => Some('/'),
                    _ => None,
                };
                match simple {
                    Some(ch) => {
                        out.push(ch);
                        self.pending.clear();
                    }
                    None if p[1] == b'u' => {}
                    None => self.release(out),
                }
            } else if !c.is_ascii_hexdigit() {
                self.release(out);
            } else if p.len() == 6 {
                let code = u32::from_str_radix(&self.pending[2..], 16).unwrap_or(0xFFFD);
                out.push(char::from_u32(code).unwrap_or('\u{FFFD}'));
                self.pending.clear();
            }
        }
    }

    /// An escape that turned out not to be one: its characters pass as they are, and
    /// its last one is looked at again (it may start an escape itself).
    fn release(&mut self, out: &mut String) {
        let held = std::mem::take(&mut self.pending);
        let mut chars = held.chars();
        let last = chars.next_back();
        out.push_str(chars.as_str());
        if let Some(c) = last {
            self.push(c.encode_utf8(&mut [0; 4]), out);
        }
    }

    /// End of the text: an unfinished escape passes as it is.
    pub fn finish(&mut self, out: &mut String) {
        out.push_str(&self.pending);
        self.pending.clear();
    }
}

/// One field's text across pieces (events, or the items of an array).
#[derive(Debug, Default)]
struct Channel {
    /// The decoded text's tail.
    text: Tail,
    /// Escapes undone once more, and that text's tail: started at the channel's first
    /// backslash (until then it is the same text).
    unescaper: Unescaper,
    once: Option<Tail>,
}

/// What to do with a field past [`MAX_CHANNELS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Overflow {
    /// Refuse (a stream with that many text fields is not a model's answer).
    Refuse,
    /// Join it to one shared channel (a whole body is also checked as raw bytes).
    Merge,
}

/// Text fields by path, each the tail of its text so far.
#[derive(Debug, Default)]
struct Channels {
    map: HashMap<String, Channel>,
    scratch: String,
}

impl Channels {
    /// Extend the channel `path` by `s` and check it (and it unescaped once more).
    fn extend(
        &mut self,
        rules: &Rules,
        path: &str,
        s: &str,
        overflow: Overflow,
    ) -> Result<(), Rejection> {
        if s.is_empty() {
            return Ok(());
        }
        let mut path = path;
        if !self.map.contains_key(path) {
            if self.map.len() >= MAX_CHANNELS {
                if overflow == Overflow::Refuse {
                    return Err(Rejection::InvalidEvent);
                }
                path = "*";
            }
            if !self.map.contains_key(path) {
                self.map.insert(path.to_string(), Channel::default());
            }
        }
        let Some(ch) = self.map.get_mut(path) else {
            return Ok(());
        };
        let keep = rules.keep();
        let mut hit = None;
        if ch.once.is_none() && s.contains('\\') {
            ch.once = Some(ch.text.clone());
        }
        if let Some(once) = ch.once.as_mut() {
            self.scratch.clear();
            ch.unescaper.push(s, &mut self.scratch);
            once.scan(self.scratch.as_bytes(), keep, |b| {
                hit = rules.hit(b);
                hit.is_some()
            });
        }
        ch.text.scan(s.as_bytes(), keep, |b| {
            hit = hit.or(rules.hit(b));
            hit.is_some()
        });
        hit.map_or(Ok(()), Err)
    }
}

/// The text fields of a stream, each concatenated across events.
#[derive(Debug, Default)]
pub struct StreamText {
    channels: Channels,
    /// The path being walked (reused between events).
    path: String,
}

impl StreamText {
    /// Check one event: its raw bytes, then (when it is JSON) every string in it, each
    /// extending its channel's text. `Err` at the first rule broken.
    pub fn check(
        &mut self,
        rules: &Rules,
        raw: &[u8],
        parsed: Option<&Value>,
    ) -> Result<(), Rejection> {
        if let Some(r) = rules.hit(raw) {
            return Err(r);
        }
        match parsed {
            Some(v) => {
                self.path.clear();
                self.walk(rules, v)
            }
            None => Ok(()),
        }
    }

    fn walk(&mut self, rules: &Rules, v: &Value) -> Result<(), Rejection> {
        match v {
            Value::String(s) => self.channels.extend(rules, &self.path, s, Overflow::Refuse),
            Value::Array(items) => {
                let at = self.path.len();
                self.path.push_str("[]");
                for x in items {
                    self.walk(rules, x)?;
                }
                self.path.truncate(at);
                Ok(())
            }
            Value::Object(m) => {
                let at = self.path.len();
                // Members that say which choice, tool call, block or item this is.
                for (k, x) in m {
                    if let (true, Some(n)) = (k == "index" || k.ends_with("_index"), x.as_u64()) {
                        self.path.push('#');
                        self.path.push_str(k);
                        self.path.push('=');
                        self.path.push_str(itoa(n, &mut [0; 20]));
                    }
                }
                let here = self.path.len();
                for (k, x) in m {
                    if let Some(r) = rules.text(k) {
                        return Err(r);
                    }
                    self.path.push('.');
                    self.path.push_str(k);
                    self.walk(rules, x)?;
                    self.path.truncate(here);
                }
                self.path.truncate(at);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Channels open (at most [`MAX_CHANNELS`]).
    pub fn channels(&self) -> usize {
        self.channels.map.len()
    }
}

fn itoa(n: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

#[cfg(test)]
mod tests;
