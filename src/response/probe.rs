//! A provider JSON body read only for what keygate checks: which top-level members are
//! arrays (the endpoint's shape), `type`/`object`, and the usage numbers. No JSON tree is
//! built, which keeps the hot path free of per-member allocations. Every part is
//! tolerant: an unexpected type for a member makes that member "other", never an error,
//! so only malformed JSON (or a non-object) is refused.

use super::usage::{self, Report, Usage};
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::fmt;

/// What a member is, as far as the shape check cares.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    #[default]
    Absent,
    Array,
    Other,
}

macro_rules! skip_scalars {
    ($ret:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($ret)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($ret)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($ret)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($ret)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok($ret)
        }
    };
}

struct KindV;
impl<'de> Visitor<'de> for KindV {
    type Value = Kind;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    skip_scalars!(Kind::Other);
    fn visit_u64<E>(self, _: u64) -> Result<Kind, E> {
        Ok(Kind::Other)
    }
    fn visit_str<E>(self, _: &str) -> Result<Kind, E> {
        Ok(Kind::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Kind, A::Error> {
        while a.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Kind::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Kind, A::Error> {
        while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Kind::Other)
    }
}
impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(KindV)
    }
}

/// A string member (`type`, `object`), or nothing if it is not a string.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Text(pub Option<String>);
struct TextV;
impl<'de> Visitor<'de> for TextV {
    type Value = Text;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    skip_scalars!(Text(None));
    fn visit_u64<E>(self, _: u64) -> Result<Text, E> {
        Ok(Text(None))
    }
    fn visit_str<E>(self, v: &str) -> Result<Text, E> {
        Ok(Text(Some(v.to_string())))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, a: A) -> Result<Text, A::Error> {
        KindV.visit_seq(a).map(|_| Text(None))
    }
    fn visit_map<A: MapAccess<'de>>(self, a: A) -> Result<Text, A::Error> {
        KindV.visit_map(a).map(|_| Text(None))
    }
}
impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextV)
    }
}

/// Token counts found in a usage object (any of the providers' names, details objects
/// included), or in an object holding a `usage` member (Anthropic's `message`, OpenAI
/// Responses' `response`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tokens(pub Report);
struct TokensV;
impl<'de> Visitor<'de> for TokensV {
    type Value = Tokens;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    skip_scalars!(Tokens::default());
    fn visit_u64<E>(self, _: u64) -> Result<Tokens, E> {
        Ok(Tokens::default())
    }
    fn visit_str<E>(self, _: &str) -> Result<Tokens, E> {
        Ok(Tokens::default())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, a: A) -> Result<Tokens, A::Error> {
        KindV.visit_seq(a).map(|_| Tokens::default())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Tokens, A::Error> {
        let mut t = Report::default();
        while let Some(k) = a.next_key::<crate::json::Key<'de>>()? {
            let k = k.as_str();
            if let Some(f) = usage::field_of(k) {
                if let Some(n) = a.next_value::<Num>()?.0 {
                    t.set(f, n);
                }
            } else if let Some((inner, f)) = usage::details_of(k) {
                if let Some(n) = a.next_value_seed(Member(inner))? {
                    t.set(f, n);
                }
            } else if k == "usage" {
                t.merge(a.next_value::<Tokens>()?.0);
            } else {
                a.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Tokens(t))
    }
}
impl<'de> Deserialize<'de> for Tokens {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TokensV)
    }
}

/// One count member (`.0`) of a details object, or nothing.
struct Member(&'static str);
impl<'de> serde::de::DeserializeSeed<'de> for Member {
    type Value = Option<u64>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<u64>, D::Error> {
        d.deserialize_any(self)
    }
}
impl<'de> Visitor<'de> for Member {
    type Value = Option<u64>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    skip_scalars!(None);
    fn visit_u64<E>(self, _: u64) -> Result<Option<u64>, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Option<u64>, E> {
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, a: A) -> Result<Option<u64>, A::Error> {
        KindV.visit_seq(a).map(|_| None)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Option<u64>, A::Error> {
        let mut found = None;
        while let Some(k) = a.next_key::<crate::json::Key<'de>>()? {
            if k.as_str() == self.0 {
                found = a.next_value::<Num>()?.0.or(found);
            } else {
                a.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// A non-negative integer, or nothing.
struct Num(Option<u64>);
struct NumV;
impl<'de> Visitor<'de> for NumV {
    type Value = Num;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    skip_scalars!(Num(None));
    fn visit_u64<E>(self, v: u64) -> Result<Num, E> {
        Ok(Num(Some(v)))
    }
    fn visit_str<E>(self, _: &str) -> Result<Num, E> {
        Ok(Num(None))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, a: A) -> Result<Num, A::Error> {
        KindV.visit_seq(a).map(|_| Num(None))
    }
    fn visit_map<A: MapAccess<'de>>(self, a: A) -> Result<Num, A::Error> {
        KindV.visit_map(a).map(|_| Num(None))
    }
}
impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NumV)
    }
}

/// The members of a provider body keygate looks at.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Probe {
    pub choices: Kind,
    pub data: Kind,
    pub output: Kind,
    pub content: Kind,
    pub candidates: Kind,
    #[serde(rename = "promptFeedback")]
    pub prompt_feedback: Kind,
    #[serde(rename = "type")]
    pub type_: Text,
    pub object: Text,
    pub usage: Tokens,
    pub message: Tokens,
    pub response: Tokens,
    #[serde(rename = "usageMetadata")]
    pub usage_metadata: Tokens,
}

impl Probe {
    /// Parse a body that must be a JSON object; `None` when it is not one.
    pub fn parse(body: &[u8]) -> Option<Probe> {
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            return None;
        }
        serde_json::from_slice(body).ok()
    }

    /// The usage reported, if any (merged across the places providers put it).
    pub fn usage(&self) -> Option<Usage> {
        let mut found: Option<Usage> = None;
        for t in [self.usage, self.message, self.response, self.usage_metadata] {
            if let Some(u) = t.0.usage() {
                usage::merge(&mut found, u);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn probe_agrees_with_the_tree_based_usage_finder() {
        for v in [
            json!({"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 9}}),
            json!({"type": "message", "content": [], "usage": {"input_tokens": 5, "output_tokens": 7}}),
            json!({"candidates": [], "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 4}}),
            json!({"type": "message_start", "message": {"usage": {"input_tokens": 12, "output_tokens": 1}}}),
            json!({"data": [1, 2], "usage": null, "message": "a string", "object": 7}),
            json!({"choices": [], "usage": {"prompt_tokens": 100, "completion_tokens": 50,
                "prompt_tokens_details": {"cached_tokens": 80, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 30}}}),
            json!({"type": "message", "content": [], "usage": {"input_tokens": 5, "output_tokens": 7,
                "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20}}),
            json!({"candidates": [], "usageMetadata": {"promptTokenCount": 30, "candidatesTokenCount": 4,
                "cachedContentTokenCount": 10, "thoughtsTokenCount": 12}}),
            json!({"object": "response", "output": [], "usage": {"input_tokens": 9, "output_tokens": 3,
                "input_tokens_details": {"cached_tokens": 4}, "output_tokens_details": {"reasoning_tokens": 2}}}),
            json!({"usage": {"prompt_tokens_details": {"cached_tokens": "x"}, "prompt_tokens": 1}}),
        ] {
            let p = Probe::parse(v.to_string().as_bytes()).unwrap();
            assert_eq!(p.usage(), super::super::usage::find(&v), "{v}");
        }
    }

    #[test]
    fn shapes_and_types() {
        let p =
            Probe::parse(br#"{"choices":[{"x":1}],"type":"message","object":{"a":1}}"#).unwrap();
        assert_eq!((p.choices, p.data), (Kind::Array, Kind::Absent));
        assert_eq!(p.type_.0.as_deref(), Some("message"));
        assert_eq!(p.object.0, None);
        assert!(Probe::parse(b"[1,2]").is_none());
        assert!(Probe::parse(br#"{"a":"#).is_none());
        assert!(Probe::parse(b"  {}").is_some());
    }
}
