//! One pass over a request body that checks it is strict JSON (no duplicate keys at any
//! depth; serde_json's nesting bound) and reads the top-level members keygate decides on,
//! without building a tree: keys and strings are borrowed from the body. A tree is built
//! only for bodies keygate rewrites.

use crate::json::Key;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::collections::HashSet;
use std::fmt;

/// An integer member (the output-token fields), as `clamp_field` would judge it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Int {
    #[default]
    Absent,
    Null,
    U64(u64),
    Other,
}

/// The `model` member.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum Model<'de> {
    #[default]
    Absent,
    Str(Key<'de>),
    Other,
}

/// What the scan learnt of one object.
#[derive(Debug, Default)]
pub struct Top<'de> {
    pub model: Model<'de>,
    /// `"stream": true`.
    pub stream: bool,
    /// `max_tokens`, `max_completion_tokens`, `max_output_tokens`, in that order.
    pub caps: [Int; 4],
    /// `"stream_options": {"include_usage": true}`.
    pub stream_usage: bool,
    /// `n` or `best_of` is present (several choices share the output cap).
    pub choices: bool,
    /// `"background": true` (OpenAI Responses: the work runs after the answer).
    pub background: bool,
    /// This object's own `"include_usage": true`.
    include_usage: bool,
}

/// The output-token field names, in [`Top::caps`] order.
pub const CAP_FIELDS: [&str; 4] = [
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "max_tokens_to_sample",
];

/// A value, as far as [`Top`] cares.
enum Seen<'de> {
    Str(Key<'de>),
    True,
    U64(u64),
    Null,
    Object(Top<'de>),
    Other,
}

/// Keys seen in one object: a short list, a hash set once objects grow.
#[derive(Default)]
struct KeySet<'de> {
    few: Vec<Key<'de>>,
    many: HashSet<Key<'de>>,
}

impl<'de> KeySet<'de> {
    const FEW: usize = 16;

    /// False when `k` was already there.
    fn insert(&mut self, k: Key<'de>) -> bool {
        if self.few.len() < Self::FEW {
            if self.few.contains(&k) {
                return false;
            }
            self.few.push(k);
            return true;
        }
        if self.many.is_empty() {
            self.many.extend(self.few.iter().cloned());
        }
        self.many.insert(k)
    }
}

struct Scanned<'de>(Seen<'de>);

impl<'de> Deserialize<'de> for Scanned<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScanV).map(Scanned)
    }
}

struct ScanV;

impl<'de> Visitor<'de> for ScanV {
    type Value = Seen<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Seen<'de>, E> {
        Ok(if v { Seen::True } else { Seen::Other })
    }
    fn visit_i64<E>(self, _: i64) -> Result<Seen<'de>, E> {
        Ok(Seen::Other)
    }
    fn visit_u64<E>(self, v: u64) -> Result<Seen<'de>, E> {
        Ok(Seen::U64(v))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Seen<'de>, E> {
        Ok(Seen::Other)
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Seen<'de>, E> {
        Ok(Seen::Str(Key(v.into())))
    }
    fn visit_str<E>(self, v: &str) -> Result<Seen<'de>, E> {
        Ok(Seen::Str(Key(v.to_owned().into())))
    }
    fn visit_unit<E>(self) -> Result<Seen<'de>, E> {
        Ok(Seen::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Seen<'de>, A::Error> {
        while seq.next_element::<Scanned>()?.is_some() {}
        Ok(Seen::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Seen<'de>, A::Error> {
        let mut keys = KeySet::default();
        let mut top = Top::default();
        while let Some(k) = map.next_key::<Key>()? {
            let Scanned(v) = map.next_value()?;
            match (k.as_str(), v) {
                ("model", Seen::Str(s)) => top.model = Model::Str(s),
                ("model", _) => top.model = Model::Other,
                ("stream", v) => top.stream = matches!(v, Seen::True),
                ("n" | "best_of", _) => top.choices = true,
                ("background", v) => top.background = matches!(v, Seen::True),
                ("include_usage", v) => top.include_usage = matches!(v, Seen::True),
                ("stream_options", v) => {
                    top.stream_usage = matches!(v, Seen::Object(o) if o.include_usage)
                }
                (name, v) => {
                    if let Some(i) = CAP_FIELDS.iter().position(|f| *f == name) {
                        top.caps[i] = match v {
                            Seen::Null => Int::Null,
                            Seen::U64(n) => Int::U64(n),
                            _ => Int::Other,
                        };
                    }
                }
            }
            if !keys.insert(k) {
                return Err(de::Error::custom("duplicate key in JSON object"));
            }
        }
        Ok(Seen::Object(top))
    }
}

/// Scan `body`: `Ok(None)` when it is valid JSON but not an object.
pub fn top(body: &[u8]) -> Result<Option<Top<'_>>, String> {
    let Scanned(v) = crate::json::read_whole(body, std::marker::PhantomData::<Scanned>)
        .map_err(|e| e.to_string())?;
    Ok(match v {
        Seen::Object(top) => Some(top),
        _ => None,
    })
}

impl Top<'_> {
    /// The output-token fields in `fields` (indexes into [`CAP_FIELDS`]) are already
    /// within `cap`: at least one is an integer, none exceeds `cap`, none is malformed.
    pub fn caps_within(&self, fields: &[usize], cap: u64) -> bool {
        let mut present = false;
        for &i in fields {
            match self.caps[i] {
                Int::Absent | Int::Null => {}
                Int::U64(n) if n <= cap => present = true,
                Int::U64(_) | Int::Other => return false,
            }
        }
        present
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_top_level_members() {
        let t = top(
            br#"{"model":"gpt-4o","stream":true,"max_tokens":7,"max_output_tokens":null,
            "stream_options":{"include_usage":true},"messages":[{"model":"x","stream":false}]}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(t.model, Model::Str(Key("gpt-4o".into())));
        assert!(t.stream && t.stream_usage);
        assert_eq!(t.caps, [Int::U64(7), Int::Absent, Int::Null, Int::Absent]);
        assert!(!t.background);
        assert!(top(br#"{"background":true}"#).unwrap().unwrap().background);
        assert!(!top(br#"{"background":"yes"}"#).unwrap().unwrap().background);
        assert!(t.caps_within(&[0, 1, 2], 7));
        assert!(!t.caps_within(&[0], 6));
        assert!(!t.caps_within(&[1], 100));
        let t = top(br#"{"model":1,"stream":"yes","max_tokens":-1,"stream_options":{}}"#)
            .unwrap()
            .unwrap();
        assert_eq!(t.model, Model::Other);
        assert!(!t.stream && !t.stream_usage);
        assert_eq!(t.caps[0], Int::Other);
        assert!(top(b"[1]").unwrap().is_none());
        // A malformed cap field is the tree's to refuse, even beside a good one.
        let t = top(br#"{"max_tokens":5,"max_completion_tokens":"x"}"#)
            .unwrap()
            .unwrap();
        assert!(!t.caps_within(&[0, 1, 2], 100));
        assert!(t.caps_within(&[0], 100));
    }

    #[test]
    fn duplicates_are_found_in_small_and_large_objects() {
        assert!(top(br#"{"a":{"b":1,"b":2}}"#).is_err());
        let many: Vec<String> = (0..40).map(|i| format!("\"k{i}\":{i}")).collect();
        let ok = format!("{{{}}}", many.join(","));
        assert!(top(ok.as_bytes()).is_ok());
        let dup = format!("{{{},\"k3\":0}}", many.join(","));
        assert!(top(dup.as_bytes()).is_err());
        assert!(top(br#"{"a":1,"\u0061":2}"#).is_err());
    }
}
