//! JSON helpers shared by the request and response readers.

use serde::de::{Deserialize, DeserializeSeed, Deserializer, Visitor};
use std::borrow::Cow;
use std::fmt;

/// A JSON string borrowed from the body when it has no escapes (serde's own `Cow<str>`
/// always copies), so reading object keys costs no allocation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key<'de>(pub Cow<'de, str>);

impl Key<'_> {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

struct KeyV;
impl<'de> Visitor<'de> for KeyV {
    type Value = Key<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v)))
    }
}

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(KeyV)
    }
}

/// Read a whole JSON document from `body`: what `seed` makes of it, then the end of input.
/// A body that is UTF-8 (any a client or provider should send) is read as text, so that
/// serde_json skips the UTF-8 check it otherwise makes string by string (one pass over the
/// whole body costs less: a chat request and its answer hold 20 to 30 strings). Any other
/// body is read as bytes, and fails there with serde's own error and position.
pub fn read_whole<'de, S: DeserializeSeed<'de>>(
    body: &'de [u8],
    seed: S,
) -> serde_json::Result<S::Value> {
    fn whole<'de, R: serde_json::de::Read<'de>, S: DeserializeSeed<'de>>(
        mut de: serde_json::Deserializer<R>,
        seed: S,
    ) -> serde_json::Result<S::Value> {
        let v = seed.deserialize(&mut de)?;
        de.end()?;
        Ok(v)
    }
    match std::str::from_utf8(body) {
        Ok(text) => whole(serde_json::Deserializer::from_str(text), seed),
        Err(_) => whole(serde_json::Deserializer::from_slice(body), seed),
    }
}

/// A seed that hands the document to `V` as it comes (`deserialize_any`).
pub struct Any<V>(pub V);

impl<'de, V: Visitor<'de>> DeserializeSeed<'de> for Any<V> {
    type Value = V::Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        d.deserialize_any(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_borrow_unless_escaped() {
        let k: Key = serde_json::from_str(r#""model""#).unwrap();
        assert!(matches!(k.0, Cow::Borrowed("model")));
        let k: Key = serde_json::from_str(r#""mo\u0064el""#).unwrap();
        assert!(matches!(k.0, Cow::Owned(ref s) if s == "model"));
    }

    #[test]
    fn a_whole_document_reads_the_same_as_text_or_bytes() {
        use std::marker::PhantomData;
        let read = |b: &[u8]| read_whole(b, PhantomData::<serde_json::Value>);
        let v = read(br#"{"a":["x\u00e9",1,null],"b":{"c":"\u00e9t\u00e9 caf\u00e9"}}"#).unwrap();
        assert_eq!(v["b"]["c"], "\u{e9}t\u{e9} caf\u{e9}");
        // Text: escapes, raw UTF-8, control characters refused, trailing input refused.
        assert_eq!(
            read("\"d\u{e9}j\u{e0}\"".as_bytes()).unwrap(),
            "d\u{e9}j\u{e0}"
        );
        assert!(read(b"\"a\x01b\"").is_err());
        assert!(read(b"{} {}").is_err());
        // Not UTF-8: serde's own error for bytes, with its position.
        let e = read(b"{\"a\":\"\xff\"}").unwrap_err().to_string();
        let bytes: serde_json::Result<serde_json::Value> =
            serde_json::from_slice(b"{\"a\":\"\xff\"}");
        assert_eq!(e, bytes.unwrap_err().to_string());
    }
}
