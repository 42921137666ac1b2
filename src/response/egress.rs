//! Secret egress: does a provider answer hand the client a configured secret (or a
//! blocked phrase)? Judged on what the client's parser will see, not only on raw bytes:
//!
//! - the raw bytes (headers, bodies, events);
//! - every JSON string decoded (`"sk-ac\u0063-…"` is the key `sk-acc-…` to a parser),
//!   object keys included;
//! - each text field joined the way a client joins it: in a body, across the items of
//!   arrays (`content[].text`); in a stream, across events, once per choice / tool call /
//!   content block / output item (any integer `index` or `*_index` member tells them
//!   apart) and once across all of them (a client that reads `choices[0]` of each chunk
//!   whatever its index);
//! - that text with JSON escapes undone once more, because tool arguments and
//!   `partial_json` are JSON text the client parses a second time.
//!
//! A body keygate cannot parse strictly (lone surrogates, bytes that are not UTF-8,
//! nesting past serde_json's limit) is refused: a lenient client parser could read a
//! secret from it that keygate never saw.
//!
//! Memory is bounded: a field is named by a 64-bit hash of its path (so a long key costs
//! nothing to keep), at most [`MAX_CHANNELS`] fields per answer (more: refused), each
//! keeping the last few bytes of its text (the longest secret, or [`TEXT_WINDOW`] with
//! block patterns). In a body, identifier fields (`id`, `type`, `model`, …) are checked
//! one string at a time and open no channel; in a stream only `type` is (stream helpers
//! join every other string of a delta, ids and names included).

use crate::response::probe::{Probe, Reader, Role, Value as ProbeValue};
use crate::response::validate::{Rejection, SecretScanner, Tail};
use regex::bytes::RegexSet;
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use std::collections::HashMap;
use std::fmt;

/// Bytes of streamed text kept per channel to match block patterns split over events.
pub const TEXT_WINDOW: usize = 1024;

/// Most text channels one stream may open; a stream that needs more is stopped.
pub const MAX_CHANNELS: usize = 512;

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
    pub fn keep(&self) -> usize {
        let secrets = self.secrets.overlap();
        if self.patterns.is_some() {
            secrets.max(TEXT_WINDOW)
        } else {
            secrets
        }
    }

    /// Check `text` and, when it holds escapes, `text` unescaped once more.
    pub fn text(&self, text: &str) -> Option<Rejection> {
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
/// joined across the array items a client joins, and unescaped once more; object keys
/// on their own. A body that is not a strict JSON object is refused
/// ([`Rejection::InvalidJson`]). The same walk reads what [`Probe`] holds (the shape and
/// usage), so the body is parsed once.
pub fn check_json(rules: &Rules, body: &[u8]) -> Result<Probe, Rejection> {
    walk_json(rules, body)?
        .finish()
        .ok_or(Rejection::InvalidJson)
}

/// Walk any JSON document (an array too): secrets and patterns in its raw bytes, its
/// strings decoded and joined; the reader of its shape and usage.
fn walk_json(rules: &Rules, body: &[u8]) -> Result<Reader, Rejection> {
    if let Some(r) = rules.hit(body) {
        return Err(r);
    }
    let mut walk = BodyWalk {
        rules,
        // Block patterns may be anchored: they see each string on its own as before.
        escapes: body.contains(&b'\\') || rules.patterns.is_some(),
        channels: Channels::default(),
        path: ROOT,
        key: None,
        hit: None,
        role: Role::Body,
        reader: Reader::default(),
    };
    match crate::json::read_whole(body, crate::json::Any(&mut walk)) {
        Ok(()) => Ok(walk.reader),
        Err(_) => Err(walk.hit.unwrap_or(Rejection::InvalidJson)),
    }
}

/// The probe of a body, no secret looked for (tests of what the walk reads).
#[cfg(test)]
pub fn probe(body: &[u8]) -> Option<Probe> {
    let secrets = SecretScanner::new(&[]);
    let rules = Rules {
        secrets: &secrets,
        patterns: None,
    };
    check_json(&rules, body).ok()
}

/// The hash of the empty path.
const ROOT: u64 = 0x243f_6a88_85a3_08d3;

/// The path `parent` extended by one component (a key's hash, or a marker).
fn extend_path(parent: u64, component: u64) -> u64 {
    (parent.rotate_left(5) ^ component).wrapping_mul(0x517c_c1b7_2722_0a95)
}

/// A member name's hash, keyed per process (a provider cannot pick a name whose path
/// collides with another field's and so break up its text).
fn hash_str(s: &str) -> u64 {
    static KEYS: std::sync::LazyLock<ahash::RandomState> =
        std::sync::LazyLock::new(ahash::RandomState::new);
    KEYS.hash_one(s)
}

/// Array items share their field's path.
const ITEMS: u64 = 0x9e37_79b9_7f4a_7c15;

/// Members whose value is an identifier or a label, never text a client joins: each
/// value is checked alone and opens no channel.
fn is_identifier(key: &str) -> bool {
    matches!(
        key,
        "id" | "type"
            | "object"
            | "model"
            | "role"
            | "name"
            | "status"
            | "finish_reason"
            | "stop_reason"
            | "system_fingerprint"
            | "call_id"
            | "item_id"
            | "tool_call_id"
            | "tool_use_id"
            | "response_id"
            | "event_id"
            | "obfuscation"
            | "service_tier"
    )
}

/// The walk over a body: the path (array items collapsed) names the channel.
struct BodyWalk<'r, 'a> {
    rules: &'r Rules<'a>,
    /// The body has a backslash. Without one every string is its raw bytes, which the
    /// raw scan has seen: keys and identifiers need no check of their own.
    escapes: bool,
    channels: Channels,
    path: u64,
    /// The member whose value is being read (for [`is_identifier`]).
    key: Option<bool>,
    hit: Option<Rejection>,
    /// What the value read next is to the probe, and what the probe has read.
    role: Role,
    reader: Reader,
}

impl BodyWalk<'_, '_> {
    /// A value is entered: the probe sees it in the role it was given.
    fn enter(&mut self, v: ProbeValue) -> Role {
        let role = std::mem::take(&mut self.role);
        self.reader.enter(role, v);
        role
    }

    fn stop<E: serde::de::Error>(&mut self, r: Result<(), Rejection>) -> Result<(), E> {
        match r {
            Err(r) => {
                self.hit = Some(r);
                Err(E::custom("refused"))
            }
            Ok(()) => Ok(()),
        }
    }
}

impl<'de> Visitor<'de> for &mut BodyWalk<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        self.enter(ProbeValue::Other);
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        self.enter(ProbeValue::Other);
        Ok(())
    }
    fn visit_u64<E>(self, n: u64) -> Result<(), E> {
        self.enter(ProbeValue::Count(n));
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        self.enter(ProbeValue::Other);
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        self.enter(ProbeValue::Other);
        Ok(())
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        self.enter(ProbeValue::Str(v));
        let r = if self.key == Some(true) {
            match self.escapes {
                true => self.rules.text(v).map_or(Ok(()), Err),
                false => Ok(()),
            }
        } else {
            self.channels
                .extend(self.rules, self.path, v, !self.escapes)
        };
        self.stop(r)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
        self.enter(ProbeValue::Array);
        let at = self.path;
        self.path = extend_path(at, ITEMS);
        while a.next_element_seed(&mut *self)?.is_some() {}
        self.path = at;
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
        let role = self.enter(ProbeValue::Object);
        let (at, key) = (self.path, self.key);
        while let Some(k) = a.next_key::<crate::json::Key<'de>>()? {
            if self.escapes {
                let r = self.rules.text(k.as_str()).map_or(Ok(()), Err);
                self.stop(r)?;
            }
            self.path = extend_path(at, hash_str(k.as_str()));
            self.key = Some(is_identifier(k.as_str()));
            self.role = role.member(k.as_str());
            a.next_value_seed(&mut *self)?;
        }
        (self.path, self.key) = (at, key);
        self.reader.leave_object(role);
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

/// Path hashes are keyed per process already: the map uses them as they are.
#[derive(Debug, Default, Clone, Copy)]
struct PathHasher(u64);

impl std::hash::Hasher for PathHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Text fields by path hash, each the tail of its text so far.
#[derive(Debug, Default)]
struct Channels {
    map: HashMap<u64, Channel, std::hash::BuildHasherDefault<PathHasher>>,
    scratch: String,
}

impl Channels {
    /// Extend the channel `path` by `s` and check it (and it unescaped once more).
    /// `raw`: `s` stands in the bytes the raw scan checked as it is (no backslash there),
    /// so a channel's first piece needs no check of its own, only what it joins.
    /// Past [`MAX_CHANNELS`] fields the answer is refused ([`Rejection::TooLarge`]).
    fn extend(&mut self, rules: &Rules, path: u64, s: &str, raw: bool) -> Result<(), Rejection> {
        if s.is_empty() {
            return Ok(());
        }
        if !self.map.contains_key(&path) && self.map.len() >= MAX_CHANNELS {
            return Err(Rejection::TooLarge);
        }
        let ch = self.map.entry(path).or_default();
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
        let seen = raw && ch.text.is_empty();
        ch.text.scan(s.as_bytes(), keep, |b| {
            hit = hit.or_else(|| (!seen).then(|| rules.hit(b)).flatten());
            hit.is_some()
        });
        hit.map_or(Ok(()), Err)
    }
}

pub mod stream_text;

#[cfg(test)]
mod tests;
