//! Framing and path hygiene: refuse what a proxy and a provider could read differently.

/// Longest path (bytes) keygate routes.
pub const MAX_PATH_LEN: usize = 4096;

/// Refuse paths with dot-segments, empty segments, backslashes, `;` path parameters,
/// control bytes, encoded `.` `/` `\` `;` `:` NUL, non-ASCII or unreserved bytes, or broken
/// percent-encoding. keygate
/// routes on the exact bytes that were signed, so anything that another component
/// could normalise differently is refused instead of guessed at.
pub fn check_path(path: &str) -> Result<(), &'static str> {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return Err("path must start with /");
    }
    if b.len() > MAX_PATH_LEN {
        return Err("path too long");
    }
    // Segments are judged in the same pass; a bad byte anywhere is reported first.
    let (mut dot, mut empty) = (false, false);
    let mut segment = 1;
    let mut i = 1;
    while i < b.len() {
        if b[i] == b'/' {
            // A segment before a slash: `.`, `..` or empty (only the last may be).
            let seg = &b[segment..i];
            dot |= seg == b"." || seg == b"..";
            empty |= seg.is_empty();
            segment = i + 1;
        }
        i += path_byte(b, i)?;
    }
    let last = b.get(segment..).unwrap_or_default();
    if dot || last == b"." || last == b".." {
        return Err("dot-segment in path");
    }
    if empty {
        return Err("empty path segment");
    }
    Ok(())
}

/// Judge the byte at `i` of a path (with the two after it, for a percent-escape): the
/// bytes it takes, or why it is refused.
fn path_byte(b: &[u8], i: usize) -> Result<usize, &'static str> {
    match b[i] {
        b'%' => {
            let hi = b.get(i + 1).and_then(|c| (*c as char).to_digit(16));
            let lo = b.get(i + 2).and_then(|c| (*c as char).to_digit(16));
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err("broken percent-encoding");
            };
            let byte = (hi * 16 + lo) as u8;
            if matches!(byte, b'.' | b'/' | b'\\' | b';' | b':') || !(0x20..0x7f).contains(&byte) {
                return Err(
                    "encoded dot, slash, backslash, semicolon, colon, control or non-ASCII byte in path",
                );
            }
            // A provider decodes these (RFC 3986 §6.2.2.2): keygate would judge
            // `complet%69ons` as another endpoint than the one served.
            if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'~') {
                return Err("percent-encoded unreserved character in path");
            }
            Ok(3)
        }
        b'\\' => Err("backslash in path"),
        // `..;/` is a dot-segment to servers that strip path parameters.
        b';' => Err("semicolon (path parameter) in path"),
        c if !(0x21..0x7f).contains(&c) => Err("control, space or non-ASCII byte in path"),
        _ => Ok(1),
    }
}

/// True when the raw request header carries both `Content-Length` and
/// `Transfer-Encoding` (Pingora drops `Content-Length` in that case before any
/// filter sees the request, so the raw bytes are the only witness).
pub fn has_cl_and_te(raw_header: &[u8]) -> bool {
    let mut cl = false;
    let mut te = false;
    for line in raw_header.split(|&c| c == b'\n').skip(1) {
        let Some(colon) = line.iter().position(|&c| c == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            cl = true;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te = true;
        }
    }
    cl && te
}

/// The most parameters a `Content-Type` may have.
const MAX_CONTENT_TYPE_PARAMS: usize = 16;

/// Refuse a `Content-Type` that two readers could take differently: two different ones, or
/// a parameter named twice (`boundary=A; boundary=B`: keygate's multipart reader takes the
/// first, some providers' the last, so the `model` keygate checked would not be the one the
/// provider reads). The same value twice is one type. Quoted values may hold `;` and `"`.
pub fn check_content_type<'a>(
    mut values: impl Iterator<Item = &'a [u8]>,
) -> Result<(), &'static str> {
    let Some(ct) = values.next() else {
        return Ok(());
    };
    if values.any(|v| v != ct) {
        return Err("two different Content-Types");
    }
    let mut names: Vec<&[u8]> = Vec::new();
    for param in split_params(ct).skip(1) {
        // Real types carry one or two (`charset`, `boundary`); the check of each against
        // those before is quadratic, so thousands in a 32 KiB header would pin a worker.
        if names.len() == MAX_CONTENT_TYPE_PARAMS {
            return Err("a Content-Type with too many parameters");
        }
        let name = param
            .split(|&c| c == b'=')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        if names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            return Err("a Content-Type parameter is repeated");
        }
        names.push(name);
    }
    Ok(())
}

/// `value` cut at each `;` outside a quoted string.
fn split_params(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    let (mut quoted, mut escaped) = (false, false);
    value.split(move |&c| {
        match (quoted, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (_, _, b'"') => quoted = !quoted,
            (false, _, b';') => return true,
            _ => {}
        }
        false
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ambiguous_content_types_are_refused() {
        let one = |v: &'static str| check_content_type(std::iter::once(v.as_bytes()));
        assert_eq!(one("application/json"), Ok(()));
        assert_eq!(one("multipart/form-data; boundary=XyZ"), Ok(()));
        assert_eq!(
            one(r#"multipart/form-data; boundary="a;boundary=b"; charset=utf-8"#),
            Ok(())
        );
        assert_eq!(
            one("multipart/form-data; boundary=AAA; boundary=BBB"),
            Err("a Content-Type parameter is repeated")
        );
        assert_eq!(
            one("multipart/form-data; Boundary=AAA;boundary=BBB"),
            Err("a Content-Type parameter is repeated")
        );
        let two = [b"application/json".as_slice(), b"text/plain".as_slice()];
        assert_eq!(
            check_content_type(two.into_iter()),
            Err("two different Content-Types")
        );
        let same = [
            b"application/json".as_slice(),
            b"application/json".as_slice(),
        ];
        assert_eq!(check_content_type(same.into_iter()), Ok(()));
        assert_eq!(check_content_type(std::iter::empty()), Ok(()));
    }

    #[test]
    fn a_content_type_with_thousands_of_parameters_is_refused_at_once() {
        let with = |n: usize| {
            let params: String = (0..n).map(|i| format!(";p{i}")).collect();
            format!("application/json{params}")
        };
        let check = |v: &str| check_content_type(std::iter::once(v.as_bytes()));
        assert_eq!(check(&with(MAX_CONTENT_TYPE_PARAMS)), Ok(()));
        assert_eq!(
            check(&with(MAX_CONTENT_TYPE_PARAMS + 1)),
            Err("a Content-Type with too many parameters")
        );
        // What fits in a 32 KiB header: refused after 16 comparisons' worth of work.
        assert_eq!(
            check(&with(5_000)),
            Err("a Content-Type with too many parameters")
        );
    }

    #[test]
    fn plain_paths_pass() {
        for p in [
            "/",
            "/openai/v1/chat/completions",
            "/gemini/v1beta/models/gemini-1.5-flash:generateContent",
            "/openai/",
            "/a%20b",
        ] {
            assert_eq!(check_path(p), Ok(()), "{p}");
        }
    }

    #[test]
    fn traversal_and_encodings_are_refused() {
        for p in [
            "/openai/../admin",
            "/openai/./v1",
            "/openai/%2e%2e/admin",
            "/openai/%2E%2e/x",
            "/openai%2fv1",
            "/openai/%5cadmin",
            "/openai//v1",
            "/openai/%00",
            "/openai/%c0%ae%c0%ae/",
            "/a\\b",
            "/a%zz",
            "/a%2",
            "/openai/..;/v1/models",
            "/openai/v1/models;x=1",
            "/openai/v1/chat/complet%69ons",
            "/openai/v1/chat%2Dx",
            "/openai/v1%3b/models",
            "/gemini/v1beta/models/gemini-pro%3AgenerateContent",
            "/..",
            "relative",
            "/a b",
        ] {
            assert!(check_path(p).is_err(), "{p} accepted");
        }
        assert!(check_path(&format!("/{}", "a".repeat(MAX_PATH_LEN))).is_err());
    }

    #[test]
    fn cl_te_detection() {
        assert!(has_cl_and_te(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"));
        assert!(has_cl_and_te(
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length : 5\r\n\r\n"
        ));
        assert!(!has_cl_and_te(
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n"
        ));
        assert!(!has_cl_and_te(
            b"POST / HTTP/1.1\r\nX-Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
        ));
    }

    proptest! {
        #[test]
        fn accepted_paths_have_no_dot_segments(p in "/[a-z./%0-9]{0,30}") {
            if check_path(&p).is_ok() {
                prop_assert!(!p.split('/').any(|s| s == ".." || s == "."));
                prop_assert!(!p.to_ascii_lowercase().contains("%2e"));
            }
        }
    }

    /// The check as it was before it became one pass (every byte first, then the
    /// segments in two more passes): the reference the one pass is held to.
    fn check_path_in_passes(path: &str) -> Result<(), &'static str> {
        let b = path.as_bytes();
        if b.first() != Some(&b'/') || b.len() > MAX_PATH_LEN {
            return check_path(path);
        }
        let mut i = 0;
        while i < b.len() {
            i += path_byte(b, i)?;
        }
        if path[1..].split('/').any(|seg| seg == "." || seg == "..") {
            return Err("dot-segment in path");
        }
        if path.len() > 1 && path[1..].split('/').rev().skip(1).any(|s| s.is_empty()) {
            return Err("empty path segment");
        }
        Ok(())
    }

    proptest::proptest! {
        #[test]
        fn one_pass_judges_as_the_passes_did(p in "[/a-z.%2eE;\\\\ é]{0,14}") {
            proptest::prop_assert_eq!(check_path(&p), check_path_in_passes(&p), "{}", p);
        }
    }
}
