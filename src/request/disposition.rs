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

/// Longest header block of one part read (multer's own bound is 32 headers).
const HEAD_MAX: usize = 16 * 1024;

/// Each part's raw header block, read as the form's bytes pass: a header a part repeats
/// is refused, since multer keeps the last of them (its header map inserts) and another
/// parser may read the first (Go's `mime/multipart`, busboy). Only `Content-Disposition`
/// decides a part's name, so only its repeat is refused.
pub struct PartHeads {
    /// `\r\n--boundary`: what begins every part.
    delimiter: Vec<u8>,
    /// Bytes not yet judged: a tail that may hold the start of a delimiter, or the header
    /// block read so far.
    buf: Vec<u8>,
    in_head: bool,
    /// The closing delimiter was seen: the epilogue is not read.
    done: bool,
}

impl PartHeads {
    pub fn new(boundary: &str) -> PartHeads {
        PartHeads {
            delimiter: format!("\r\n--{boundary}").into_bytes(),
            // The body begins with its boundary (checked by the form): a delimiter.
            buf: b"\r\n".to_vec(),
            in_head: false,
            done: false,
        }
    }

    /// The next bytes of the form.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), &'static str> {
        if self.done {
            return Ok(());
        }
        self.buf.extend_from_slice(chunk);
        loop {
            if self.in_head {
                if self.buf.len() < 2 {
                    return Ok(());
                }
                if self.buf.starts_with(b"--") {
                    self.done = true;
                    self.buf = Vec::new();
                    return Ok(());
                }
                let Some(end) = memchr::memmem::find(&self.buf, b"\r\n\r\n") else {
                    return match self.buf.len() > HEAD_MAX {
                        true => Err("part headers that are too long"),
                        false => Ok(()),
                    };
                };
                one_disposition(&self.buf[..end])?;
                self.buf.drain(..end + 4);
                self.in_head = false;
            } else {
                match memchr::memmem::find(&self.buf, &self.delimiter) {
                    Some(i) => {
                        self.buf.drain(..i + self.delimiter.len());
                        self.in_head = true;
                    }
                    None => {
                        let keep = self.delimiter.len() - 1;
                        let cut = self.buf.len().saturating_sub(keep);
                        self.buf.drain(..cut);
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// A header block (after the delimiter: the rest of its line, then the headers) with at
/// most one `Content-Disposition`.
fn one_disposition(block: &[u8]) -> Result<(), &'static str> {
    let dispositions = block
        .split(|&b| b == b'\n')
        .skip(1)
        .filter(|line| {
            let name = line.split(|&b| b == b':').next().unwrap_or_default();
            name.trim_ascii()
                .eq_ignore_ascii_case(b"content-disposition")
        })
        .count();
    match dispositions {
        0 | 1 => Ok(()),
        _ => Err("a part with two Content-Disposition headers"),
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

    #[test]
    fn a_repeated_disposition_is_found_however_the_bytes_are_cut() {
        use super::PartHeads;
        let body = b"--B\r\nContent-Disposition: form-data; name=\"model\"\r\ncontent-disposition : form-data; name=\"prompt\"\r\n\r\nx\r\n--B--\r\n";
        let ok = b"--B\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nContent-Disposition: in the data\r\n\r\n--B\r\nContent-Disposition: form-data; name=\"model\"\r\nContent-Type: text/plain\r\n\r\nm\r\n--B--\r\nepilogue";
        for size in [1, 2, 3, 7, 64, 4096] {
            let mut p = PartHeads::new("B");
            let r: Result<(), _> = body.chunks(size).try_for_each(|c| p.push(c));
            assert!(r.is_err(), "cut every {size}");
            let mut p = PartHeads::new("B");
            assert!(
                ok.chunks(size).try_for_each(|c| p.push(c)).is_ok(),
                "cut every {size}"
            );
        }
        // A header block that never ends is bounded.
        let mut p = PartHeads::new("B");
        p.push(b"--B\r\nX-A: ").unwrap();
        assert!((0..20).try_for_each(|_| p.push(&[b'a'; 1024])).is_err());
    }
}
