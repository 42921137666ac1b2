//! A strict parser for the RFC 8941 dictionaries used by `Signature-Input`,
//! `Signature` and `Content-Digest`. It keeps the raw text of each member's value,
//! because RFC 9421 signs the inner list exactly as received.

/// A bare item.
#[derive(Debug, Clone, PartialEq)]
pub enum Bare {
    Integer(i64),
    Decimal(f64),
    String(String),
    Token(String),
    Bytes(Vec<u8>),
    Bool(bool),
}

/// An item with its parameters, in the order received.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub value: Bare,
    pub params: Vec<(String, Bare)>,
}

/// A dictionary member's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Member {
    Item(Item),
    InnerList {
        items: Vec<Item>,
        params: Vec<(String, Bare)>,
    },
}

/// One dictionary entry: key, value and the raw text of the value.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry<'a> {
    pub key: String,
    pub member: Member,
    pub raw: &'a str,
}

/// Parse failures carry only a short reason, never input bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SfvError(pub &'static str);

const MAX_MEMBERS: usize = 64;
const MAX_ITEMS: usize = 64;
const MAX_PARAMS: usize = 32;

struct P<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
}

impl<'a> P<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
    fn skip_sp(&mut self) {
        while self.peek() == Some(b' ') {
            self.i += 1;
        }
    }
    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ') | Some(b'\t')) {
            self.i += 1;
        }
    }

    fn key(&mut self) -> Result<String, SfvError> {
        let start = self.i;
        match self.peek() {
            Some(c) if c.is_ascii_lowercase() || c == b'*' => self.i += 1,
            _ => return Err(SfvError("key must start with a lower-case letter or *")),
        }
        while let Some(c) = self.peek() {
            if c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || matches!(c, b'_' | b'-' | b'.' | b'*')
            {
                self.i += 1;
            } else {
                break;
            }
        }
        Ok(self.s[start..self.i].to_string())
    }

    fn bare(&mut self) -> Result<Bare, SfvError> {
        match self.peek() {
            Some(b'"') => self.string(),
            Some(b':') => self.bytes(),
            Some(b'?') => {
                self.i += 1;
                match self.peek() {
                    Some(b'1') => {
                        self.i += 1;
                        Ok(Bare::Bool(true))
                    }
                    Some(b'0') => {
                        self.i += 1;
                        Ok(Bare::Bool(false))
                    }
                    _ => Err(SfvError("bad boolean")),
                }
            }
            Some(c) if c == b'-' || c.is_ascii_digit() => self.number(),
            Some(c) if c.is_ascii_alphabetic() || c == b'*' => {
                let start = self.i;
                self.i += 1;
                while let Some(c) = self.peek() {
                    if c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&c) {
                        self.i += 1;
                    } else {
                        break;
                    }
                }
                Ok(Bare::Token(self.s[start..self.i].to_string()))
            }
            _ => Err(SfvError("expected an item")),
        }
    }

    fn string(&mut self) -> Result<Bare, SfvError> {
        self.i += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return Err(SfvError("unterminated string")),
                Some(b'\\') => {
                    self.i += 1;
                    match self.peek() {
                        Some(c @ (b'"' | b'\\')) => {
                            out.push(c as char);
                            self.i += 1;
                        }
                        _ => return Err(SfvError("bad escape in string")),
                    }
                }
                Some(b'"') => {
                    self.i += 1;
                    return Ok(Bare::String(out));
                }
                Some(c) if (0x20..0x7f).contains(&c) => {
                    out.push(c as char);
                    self.i += 1;
                }
                Some(_) => return Err(SfvError("non-printable character in string")),
            }
        }
    }

    fn bytes(&mut self) -> Result<Bare, SfvError> {
        use base64::Engine;
        self.i += 1;
        let start = self.i;
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=') {
                self.i += 1;
            } else {
                break;
            }
        }
        if self.peek() != Some(b':') {
            return Err(SfvError("unterminated byte sequence"));
        }
        let text = &self.s[start..self.i];
        self.i += 1;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map(Bare::Bytes)
            .map_err(|_| SfvError("bad base64 in byte sequence"))
    }

    fn number(&mut self) -> Result<Bare, SfvError> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        let digits_start = self.i;
        while matches!(self.peek(), Some(c) if c.is_ascii_digit()) {
            self.i += 1;
        }
        let int_digits = self.i - digits_start;
        if int_digits == 0 {
            return Err(SfvError("expected a digit"));
        }
        if self.peek() == Some(b'.') {
            if int_digits > 12 {
                return Err(SfvError("decimal too long"));
            }
            self.i += 1;
            let frac_start = self.i;
            while matches!(self.peek(), Some(c) if c.is_ascii_digit()) {
                self.i += 1;
            }
            let frac = self.i - frac_start;
            if frac == 0 || frac > 3 {
                return Err(SfvError("bad decimal fraction"));
            }
            return self.s[start..self.i]
                .parse()
                .map(Bare::Decimal)
                .map_err(|_| SfvError("bad decimal"));
        }
        if int_digits > 15 {
            return Err(SfvError("integer longer than 15 digits"));
        }
        self.s[start..self.i]
            .parse()
            .map(Bare::Integer)
            .map_err(|_| SfvError("bad integer"))
    }

    fn params(&mut self) -> Result<Vec<(String, Bare)>, SfvError> {
        let mut out = Vec::new();
        while self.peek() == Some(b';') {
            self.i += 1;
            self.skip_sp();
            let k = self.key()?;
            let v = if self.peek() == Some(b'=') {
                self.i += 1;
                self.bare()?
            } else {
                Bare::Bool(true)
            };
            if out.len() >= MAX_PARAMS {
                return Err(SfvError("too many parameters"));
            }
            out.push((k, v));
        }
        Ok(out)
    }

    fn item(&mut self) -> Result<Item, SfvError> {
        let value = self.bare()?;
        let params = self.params()?;
        Ok(Item { value, params })
    }

    fn member(&mut self) -> Result<Member, SfvError> {
        if self.peek() == Some(b'(') {
            self.i += 1;
            let mut items = Vec::new();
            loop {
                self.skip_sp();
                if self.peek() == Some(b')') {
                    self.i += 1;
                    break;
                }
                if items.len() >= MAX_ITEMS {
                    return Err(SfvError("too many items in inner list"));
                }
                items.push(self.item()?);
                match self.peek() {
                    Some(b' ') | Some(b')') => {}
                    _ => return Err(SfvError("bad inner list")),
                }
            }
            let params = self.params()?;
            Ok(Member::InnerList { items, params })
        } else {
            Ok(Member::Item(self.item()?))
        }
    }
}

/// Parse a dictionary. Duplicate keys are refused (RFC 8941 would keep the last;
/// for signatures an ambiguous header is an attack, not a convenience).
pub fn parse_dictionary(s: &str) -> Result<Vec<Entry<'_>>, SfvError> {
    let mut p = P {
        s,
        b: s.as_bytes(),
        i: 0,
    };
    let mut out: Vec<Entry<'_>> = Vec::new();
    p.skip_sp();
    if p.peek().is_none() {
        return Err(SfvError("empty dictionary"));
    }
    loop {
        let key = p.key()?;
        let (member, raw) = if p.peek() == Some(b'=') {
            p.i += 1;
            let start = p.i;
            let m = p.member()?;
            (m, &s[start..p.i])
        } else {
            let start = p.i;
            let params = p.params()?;
            (
                Member::Item(Item {
                    value: Bare::Bool(true),
                    params,
                }),
                &s[start..p.i],
            )
        };
        if out.iter().any(|e| e.key == key) {
            return Err(SfvError("duplicate dictionary key"));
        }
        if out.len() >= MAX_MEMBERS {
            return Err(SfvError("too many dictionary members"));
        }
        out.push(Entry { key, member, raw });
        p.skip_ows();
        match p.peek() {
            None => return Ok(out),
            Some(b',') => {
                p.i += 1;
                p.skip_ows();
                if p.peek().is_none() {
                    return Err(SfvError("trailing comma"));
                }
            }
            Some(_) => return Err(SfvError("expected a comma between members")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_signature_input() {
        let s = r#"sig1=("@method" "@path");created=1767225600;keyid="demo.k1", other=:AAEC:"#;
        let d = parse_dictionary(s).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].key, "sig1");
        assert_eq!(
            d[0].raw,
            r#"("@method" "@path");created=1767225600;keyid="demo.k1""#
        );
        match &d[0].member {
            Member::InnerList { items, params } => {
                assert_eq!(items.len(), 2);
                assert_eq!(params[0], ("created".into(), Bare::Integer(1767225600)));
            }
            _ => panic!("not an inner list"),
        }
        assert_eq!(
            d[1].member,
            Member::Item(Item {
                value: Bare::Bytes(vec![0, 1, 2]),
                params: vec![]
            })
        );
    }

    #[test]
    fn refuses_duplicates_and_long_integers() {
        assert!(parse_dictionary("a=1, a=2").is_err());
        assert!(parse_dictionary("a=1234567890123456").is_err());
        assert!(parse_dictionary("a=123456789012345").is_ok());
        assert!(parse_dictionary("a=(\"x\"").is_err());
        assert!(parse_dictionary("a=1,").is_err());
        assert!(parse_dictionary("A=1").is_err());
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,200}") {
            let _ = parse_dictionary(&s);
        }

        #[test]
        fn never_panics_on_near_valid(s in "[a-z0-9=();:\"@ ,.*-]{0,120}") {
            let _ = parse_dictionary(&s);
        }
    }
}
