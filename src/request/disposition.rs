//! A multipart part's `Content-Disposition`, read strictly (RFC 7578 §4.2, RFC 6266
//! grammar): `form-data`, then `; name="…"` and optionally `filename` or `filename*`,
//! parameter names in any case, each at most once, values as tokens or quoted strings.
//!
//! The form parser (multer) reads a field's name leniently: the first `name=` after a space
//! or `;`, even inside another parameter's quoted value, and only in lower case. A
//! provider that reads the header by the RFC could then see another field as `model` than
//! keygate did. A part whose strict reading differs from multer's is refused
//! ([`super::upload`]).

/// The `name` of a strictly well-formed `form-data` disposition; `Err` says what is wrong.
pub fn form_data_name(raw: &[u8]) -> Result<String, &'static str> {
    let s = std::str::from_utf8(raw).map_err(|_| "not UTF-8")?;
    let (kind, mut rest) = s.split_once(';').unwrap_or((s, ""));
    if !kind.trim_matches(ows).eq_ignore_ascii_case("form-data") {
        return Err("not form-data");
    }
    let (mut name, mut filename, mut filename_ext) = (None, false, false);
    while !rest.trim_matches(ows).is_empty() {
        let (param, value, after) = parameter(rest)?;
        let seen = match param.to_ascii_lowercase().as_str() {
            "name" => name.replace(value).is_some(),
            "filename" => std::mem::replace(&mut filename, true),
            "filename*" => std::mem::replace(&mut filename_ext, true),
            _ => return Err("unknown parameter"),
        };
        if seen {
            return Err("repeated parameter");
        }
        rest = after;
    }
    name.ok_or("no name")
}

fn ows(c: char) -> bool {
    c == ' ' || c == '\t'
}

fn is_token(c: char) -> bool {
    c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?={}".contains(c)
}

/// One `param=value` from the start of `s` (spaces allowed around `=`), the value
/// unquoted, and what follows it (after the next `;`, or empty at the end).
fn parameter(s: &str) -> Result<(&str, String, &str), &'static str> {
    let s = s.trim_start_matches(ows);
    let end = s.find(|c| !is_token(c)).unwrap_or(s.len());
    let (param, s) = s.split_at(end);
    let s = s.trim_start_matches(ows);
    let s = s.strip_prefix('=').ok_or("a parameter without a value")?;
    let s = s.trim_start_matches(ows);
    if param.is_empty() {
        return Err("an empty parameter name");
    }
    let (value, s) = match s.strip_prefix('"') {
        Some(quoted) => {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            loop {
                match chars.next() {
                    Some((i, '"')) => break (value, &quoted[i + 1..]),
                    Some((_, '\\')) => match chars.next() {
                        Some((_, c)) if c != '\r' && c != '\n' => value.push(c),
                        _ => return Err("a bad escape"),
                    },
                    Some((_, c)) if c != '\r' && c != '\n' => value.push(c),
                    _ => return Err("an unterminated quoted string"),
                }
            }
        }
        None => {
            let end = s.find(|c| !is_token(c)).unwrap_or(s.len());
            if end == 0 {
                return Err("an empty value");
            }
            (s[..end].to_string(), &s[end..])
        }
    };
    let s = s.trim_start_matches(ows);
    match s.strip_prefix(';') {
        Some(after) => Ok((param, value, after)),
        None if s.is_empty() => Ok((param, value, s)),
        None => Err("text after a value"),
    }
}

#[cfg(test)]
mod tests {
    use super::form_data_name;

    #[test]
    fn what_clients_send_is_read() {
        for (raw, name) in [
            (r#"form-data; name="model""#, "model"),
            (r#"form-data; name="file"; filename="a.wav""#, "file"),
            (r#"Form-Data;name=model"#, "model"),
            (
                r#"form-data; name="file"; filename*=UTF-8''%C3%A4.wav"#,
                "file",
            ),
            (r#"form-data; name="a\"b""#, "a\"b"),
            ("form-data ; name = \"x\" ;", "x"),
            // Parameter names in any case (multer reads only `name`: the form refuses the
            // part when the two readings differ).
            (r#"form-data; NAME="model""#, "model"),
        ] {
            assert_eq!(form_data_name(raw.as_bytes()).as_deref(), Ok(name), "{raw}");
        }
    }

    #[test]
    fn what_a_lenient_parser_reads_otherwise_is_refused() {
        for raw in [
            // A `name=` inside another parameter's quoted value (multer reads "model").
            r#"form-data; x=" name=model;"; name="prompt""#,
            r#"form-data; name="model"; name="prompt""#,
            r#"form-data; name="model"; Name="prompt""#,
            r#"form-data; name="a"; filename="x"; filename="y""#,
            r#"form-data; name="model" x"#,
            r#"form-data; name="model"#,
            r#"form-data; name=mo del"#,
            r#"form-data; name="#,
            r#"form-data; ="model""#,
            r#"form-data; filename="a.wav""#,
            r#"attachment; name="model""#,
            "form-data; name=\"a\rb\"",
        ] {
            assert!(form_data_name(raw.as_bytes()).is_err(), "{raw}");
        }
        assert!(form_data_name(b"form-data; name=\"\xff\"").is_err());
    }
}
