//! Finding personal data in text: one regex alternation compiled at config load, then
//! per-kind checks the regex cannot express (Luhn, IBAN mod-97, address parsing, digit
//! counts, "not part of a longer number or word").
//!
//! Detection is deliberately conservative for numbers: a bare run of digits is only a
//! card (Luhn-valid, 13-19 digits) or part of an IBAN, never a phone number, so order
//! numbers, ids and amounts are left alone. See README "Private prompts (PII)".

use regex::{Regex, RegexSet};
use std::sync::Arc;

/// The built-in kinds, in config spelling.
pub const BUILTIN_KINDS: [&str; 5] = ["email", "phone", "card", "iban", "ip"];

/// How a candidate found by the regex is confirmed. Declared in priority order (for
/// findings that start at the same place).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Check {
    /// Operator regex: the match is taken as is.
    Custom,
    Email,
    Iban,
    Card,
    Ipv6,
    Ipv4,
    Phone,
}

/// One kind of personal data the detector looks for.
#[derive(Debug, Clone)]
pub struct Kind {
    /// Config and metric name (`email`, or an operator pattern's name).
    pub name: Arc<str>,
    /// Placeholder label (`EMAIL` in `[EMAIL_1]`).
    pub label: String,
}

/// An operator-supplied pattern (`pii.patterns[]`), already checked to compile.
#[derive(Debug, Clone)]
pub struct CustomPattern {
    pub name: String,
    pub regex: String,
}

/// A compiled detector for a set of kinds. Built once per route at config load.
///
/// One regex per check, in priority order, and a `RegexSet` of all of them: text
/// without any candidate costs one pass of the set.
#[derive(Debug)]
pub struct Detector {
    set: RegexSet,
    /// Per check: its regex, how a candidate is confirmed, index into `kinds`.
    checks: Vec<(Regex, Check, usize)>,
    kinds: Vec<Kind>,
}

/// One confirmed finding: byte range in the text and index into [`Detector::kinds`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    pub kind: usize,
    pub start: usize,
    pub end: usize,
}

const EMAIL: &str = r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)*\.[A-Za-z]{2,24}";
const IBAN: &str = r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}";
const CARD: &str = r"[0-9](?:[ \-]?[0-9]){12,22}";
const IPV6: &str = r"(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[0-9A-Fa-f]{0,4})";
const IPV4: &str = r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}";
// International (E.164 with optional separators), North American with separators, and
// trunk-prefix national forms (`020 7946 0958`, `06 12 34 56 78`).
const PHONE: &str = r"\+[1-9](?:[ .\-]?(?:\([0-9]{1,4}\)|[0-9]{1,4})){2,7}|(?:\([0-9]{3}\)[ .\-]?|[0-9]{3}[ .\-])[0-9]{3}[ .\-][0-9]{4}|0[0-9]{1,4}[ .\-/][0-9]{2,4}(?:[ .\-]?[0-9]{2,4}){1,3}";

impl Detector {
    /// Build a detector for the built-in `kinds` (config names) and operator `patterns`.
    /// Errors name the pattern that does not compile.
    pub fn new(kinds: &[&str], patterns: &[CustomPattern]) -> Result<Detector, String> {
        let mut parts: Vec<(String, Check, Kind)> = Vec::new();
        // Operator patterns first: where they overlap a built-in, the operator wins.
        for p in patterns {
            parts.push((p.regex.clone(), Check::Custom, kind(&p.name)));
        }
        for k in kinds {
            let checks: &[(&str, Check)] = match *k {
                "email" => &[(EMAIL, Check::Email)],
                "iban" => &[(IBAN, Check::Iban)],
                "card" => &[(CARD, Check::Card)],
                "ip" => &[(IPV6, Check::Ipv6), (IPV4, Check::Ipv4)],
                "phone" => &[(PHONE, Check::Phone)],
                other => return Err(format!("unknown kind \"{other}\"")),
            };
            for (re, check) in checks {
                parts.push((re.to_string(), *check, kind(k)));
            }
        }
        // Findings starting at the same place: email before the number kinds, IBAN
        // and card before phone, IPv6 before IPv4.
        parts.sort_by_key(|(_, c, _)| *c as u8);
        if parts.is_empty() {
            return Err("no kinds to detect".into());
        }
        let set = RegexSet::new(parts.iter().map(|(re, _, _)| re)).map_err(|e| e.to_string())?;
        let mut kinds_out: Vec<Kind> = Vec::new();
        let mut checks = Vec::new();
        for (re, check, k) in parts {
            let ki = match kinds_out.iter().position(|x| x.name == k.name) {
                Some(ki) => ki,
                None => {
                    kinds_out.push(k);
                    kinds_out.len() - 1
                }
            };
            checks.push((Regex::new(&re).map_err(|e| e.to_string())?, check, ki));
        }
        Ok(Detector {
            set,
            checks,
            kinds: kinds_out,
        })
    }

    /// The kinds this detector reports, indexed by [`Finding::kind`].
    pub fn kinds(&self) -> &[Kind] {
        &self.kinds
    }

    /// Every confirmed finding in `text`, left to right, not overlapping. Where two
    /// start at the same place, the check first in priority wins.
    pub fn find(&self, text: &str) -> Vec<Finding> {
        let active: Vec<usize> = self.set.matches(text).into_iter().collect();
        let mut out = Vec::new();
        if active.is_empty() {
            return out;
        }
        let mut next: Vec<Option<Finding>> = active
            .iter()
            .map(|&i| self.next_confirmed(i, text, 0))
            .collect();
        let mut pos = 0;
        loop {
            for (slot, &i) in next.iter_mut().zip(&active) {
                if slot.is_some_and(|f| f.start < pos) {
                    *slot = self.next_confirmed(i, text, pos);
                }
            }
            let best = next
                .iter()
                .enumerate()
                .filter_map(|(j, f)| f.map(|f| (f.start, j)))
                .min();
            let Some(f) = best.and_then(|(_, j)| next[j]) else {
                return out;
            };
            pos = f.end;
            out.push(f);
        }
    }

    /// The first confirmed finding of check `i` at or after `from`. A rejected
    /// candidate is retried one character further, so a real finding starting inside
    /// it is not skipped.
    fn next_confirmed(&self, i: usize, text: &str, mut from: usize) -> Option<Finding> {
        let (re, check, kind) = &self.checks[i];
        while from <= text.len() {
            let m = re.find_at(text, from)?;
            if let Some(end) = confirm(*check, text, m.start(), m.end()) {
                if end > m.start() {
                    return Some(Finding {
                        kind: *kind,
                        start: m.start(),
                        end,
                    });
                }
            }
            from = m.start() + text[m.start()..].chars().next().map_or(1, char::len_utf8);
        }
        None
    }
}

fn kind(name: &str) -> Kind {
    Kind {
        name: Arc::from(name),
        label: name.to_ascii_uppercase(),
    }
}

fn is_word(c: Option<char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric() || c == '_')
}

fn before(text: &str, i: usize) -> Option<char> {
    text[..i].chars().next_back()
}

fn after(text: &str, i: usize) -> Option<char> {
    text[i..].chars().next()
}

/// Confirm a candidate `text[start..end]`; returns the end of the confirmed finding
/// (a card or IBAN may be shorter than the candidate), or `None`.
fn confirm(check: Check, text: &str, start: usize, end: usize) -> Option<usize> {
    let cand = &text[start..end];
    let standalone = || !is_word(before(text, start)) && !is_word(after(text, end));
    match check {
        Check::Custom | Check::Email => Some(end),
        Check::Card => longest_group_prefix(
            text,
            (start, end),
            |c| c == ' ' || c == '-',
            |d| (13..=19).contains(&d.len()) && luhn(d) && d.bytes().any(|b| b != b'0'),
        ),
        Check::Iban => longest_group_prefix(
            text,
            (start, end),
            |c| c == ' ',
            |d| (15..=34).contains(&d.len()) && iban_ok(d),
        ),
        Check::Ipv4 => {
            let dotted_neighbour = before(text, start) == Some('.')
                || (after(text, end) == Some('.')
                    && text[end + 1..].starts_with(|c: char| c.is_ascii_digit()));
            (standalone() && !dotted_neighbour && cand.parse::<std::net::Ipv4Addr>().is_ok())
                .then_some(end)
        }
        Check::Ipv6 => {
            let groups = cand.split(':').filter(|g| !g.is_empty()).count();
            (standalone()
                && before(text, start) != Some(':')
                && groups >= 2
                && cand.bytes().any(|b| b.is_ascii_digit())
                && cand.parse::<std::net::Ipv6Addr>().is_ok())
            .then_some(end)
        }
        Check::Phone => {
            let digits = cand.bytes().filter(u8::is_ascii_digit).count();
            let ok_len = if cand.starts_with('+') {
                (8..=15).contains(&digits)
            } else {
                (9..=13).contains(&digits)
            };
            (standalone() && ok_len && !looks_like_date(cand)).then_some(end)
        }
    }
}

/// `01.02.2024 10`, `15/01/24`: dates written like trunk-prefix phone numbers.
fn looks_like_date(s: &str) -> bool {
    let seps: Vec<char> = s.chars().filter(|c| !c.is_ascii_digit()).collect();
    let parts: Vec<&str> = s.split(['.', '-', '/', ' ']).collect();
    match (seps.first(), seps.get(1), parts.as_slice()) {
        (Some(a), Some(b), [d, m, y, rest @ ..]) => {
            a == b
                && *a != ' '
                && d.len() <= 2
                && m.len() <= 2
                && (y.len() == 4 || (y.len() == 2 && rest.is_empty()))
        }
        _ => false,
    }
}

/// The candidate `text[start..end]` is groups of characters split by `sep`. Find the
/// longest prefix ending at a group end (and not followed by a letter or digit) whose
/// characters, separators removed, pass `valid`. Greedy regexes overshoot into a
/// following number or word; this walks back to the real end. A candidate that
/// continues a word or number before it is refused.
fn longest_group_prefix(
    text: &str,
    (start, end): (usize, usize),
    sep: impl Fn(char) -> bool,
    valid: impl Fn(&str) -> bool,
) -> Option<usize> {
    if is_word(before(text, start)) {
        return None;
    }
    let cand = &text[start..end];
    let mut ends: Vec<usize> = cand
        .char_indices()
        .filter(|(_, c)| sep(*c))
        .map(|(i, _)| start + i)
        .collect();
    ends.push(end);
    for &e in ends.iter().rev() {
        if is_word(after(text, e)) {
            continue;
        }
        let compact: String = text[start..e].chars().filter(|c| !sep(*c)).collect();
        if valid(&compact) {
            return Some(e);
        }
    }
    None
}

/// The Luhn checksum of a string of ASCII digits.
pub fn luhn(digits: &str) -> bool {
    let mut sum = 0u32;
    for (i, b) in digits.bytes().rev().enumerate() {
        if !b.is_ascii_digit() {
            return false;
        }
        let mut d = u32::from(b - b'0');
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    !digits.is_empty() && sum.is_multiple_of(10)
}

/// ISO 13616 check: move the first four characters to the end, letters to numbers,
/// remainder mod 97 must be 1.
pub fn iban_ok(iban: &str) -> bool {
    let b = iban.as_bytes();
    if b.len() < 5 || !b[..2].iter().all(u8::is_ascii_uppercase) {
        return false;
    }
    let mut rem = 0u32;
    for &c in b[4..].iter().chain(&b[..4]) {
        let v = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'A'..=b'Z' => u32::from(c - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Detector {
        Detector::new(&BUILTIN_KINDS, &[]).unwrap()
    }

    fn found(text: &str) -> Vec<(String, String)> {
        let d = all();
        d.find(text)
            .into_iter()
            .map(|f| {
                (
                    d.kinds()[f.kind].name.to_string(),
                    text[f.start..f.end].to_string(),
                )
            })
            .collect()
    }

    fn kinds_of(text: &str) -> Vec<String> {
        found(text).into_iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn checksums() {
        assert!(luhn("4111111111111111"));
        assert!(!luhn("4111111111111112"));
        assert!(iban_ok("DE89370400440532013000"));
        assert!(iban_ok("GB82WEST12345698765432"));
        assert!(!iban_ok("DE89370400440532013001"));
    }

    #[test]
    fn finds_each_builtin_kind() {
        assert_eq!(
            found("mail jane.doe+x@example.co.uk now"),
            [("email".into(), "jane.doe+x@example.co.uk".into())]
        );
        assert_eq!(
            found("card 4111 1111 1111 1111, thanks"),
            [("card".into(), "4111 1111 1111 1111".into())]
        );
        assert_eq!(
            found("IBAN DE89 3704 0044 0532 0130 00 please"),
            [("iban".into(), "DE89 3704 0044 0532 0130 00".into())]
        );
        assert_eq!(
            found("from 192.168.1.20 and 2001:db8::8a2e:370:7334."),
            [
                ("ip".into(), "192.168.1.20".into()),
                ("ip".into(), "2001:db8::8a2e:370:7334".into())
            ]
        );
        for phone in [
            "+1 415 555 2671",
            "+44 20 7946 0958",
            "+4915112345678",
            "(415) 555-2671",
            "415-555-2671",
            "020 7946 0958",
            "06 12 34 56 78",
        ] {
            assert_eq!(
                found(&format!("call {phone} today")),
                [("phone".into(), phone.into())],
                "{phone}"
            );
        }
    }

    #[test]
    fn leaves_lookalikes_alone() {
        for text in [
            "card 4111 1111 1111 1112 is invalid",
            "order 100234987 shipped",
            "order ORD-2024-118-55231 shipped",
            "version 1.2.3.4.5 and v10.0.0.1",
            "use std::net::IpAddr and a::b",
            "at 12:30:45 on 2024-01-15 or 01.02.2024 10 people",
            "mac 00:1a:2b:3c:4d:5e",
            "id 1234567890123456789012",
            "DE89370400440532013001 is not an IBAN",
            "call 0612345678",
        ] {
            assert_eq!(kinds_of(text), Vec::<String>::new(), "{text}");
        }
    }

    #[test]
    fn card_followed_by_a_number_is_cut_at_the_group() {
        assert_eq!(
            found("4111 1111 1111 1111 2024"),
            [("card".into(), "4111 1111 1111 1111".into())]
        );
    }

    #[test]
    fn only_selected_kinds_and_operator_patterns() {
        let d = Detector::new(
            &["email"],
            &[CustomPattern {
                name: "ticket".into(),
                regex: r"TCK-[0-9]{6}".into(),
            }],
        )
        .unwrap();
        let t = "a@b.io TCK-123456 +1 415 555 2671";
        let f = d.find(t);
        assert_eq!(f.len(), 2);
        assert_eq!(&*d.kinds()[f[1].kind].name, "ticket");
        assert_eq!(d.kinds()[f[1].kind].label, "TICKET");
        assert!(Detector::new(&["nope"], &[]).is_err());
    }

    #[test]
    fn never_panics_on_unicode() {
        let d = all();
        for t in [
            "é4111 1111 1111 1111é",
            "📞 +1 415 555 2671 📞",
            "ü@ü.de",
            "::",
        ] {
            let _ = d.find(t);
        }
    }
}
