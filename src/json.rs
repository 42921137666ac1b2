//! JSON helpers shared by the request and response readers.

use serde::de::{Deserialize, Deserializer, Visitor};
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
}
