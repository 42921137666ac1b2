//! Header hygiene in both directions (SPEC §4).

use crate::upstream::kind::UpstreamKind;
use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};

/// Request headers that never reach a provider, whatever the config says: client
/// credentials and signatures, cookies, hop-by-hop and framing headers (keygate frames
/// the request), client addresses, and headers that make some server or proxy change
/// the method or the path it serves.
pub const NEVER_FORWARDED: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "x-goog-api-key",
    "api-key",
    "anthropic-api-key",
    "openai-organization",
    "openai-project",
    "x-goog-user-project",
    "cookie",
    "signature",
    "signature-input",
    "content-digest",
    "x-site-identifier",
    "x-timestamp",
    "x-signature",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "accept-encoding",
    "forwarded",
    "x-real-ip",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-original-method",
    "x-rewrite-url",
    "x-envoy-original-path",
];

/// Name prefixes never forwarded (`x-forwarded-for`, `-host`, `-prefix`, …).
pub const NEVER_FORWARDED_PREFIXES: &[&str] = &["x-forwarded-", "proxy-"];

/// Request headers forwarded to every kind of provider: content negotiation only.
const FORWARDED: &[&str] = &["accept", "content-type"];

/// The request header that carries a provider's API version or betas, per kind (its
/// values are checked against `routes[].betas` before anything goes upstream).
pub fn beta_header(kind: UpstreamKind) -> Option<&'static str> {
    match kind {
        UpstreamKind::OpenAi | UpstreamKind::OpenAiCompatible => Some("openai-beta"),
        UpstreamKind::Anthropic => Some("anthropic-beta"),
        UpstreamKind::Gemini => None,
    }
}

/// Further request headers forwarded per kind: the API version and betas.
fn forwarded_for(kind: UpstreamKind) -> &'static [&'static str] {
    match kind {
        UpstreamKind::OpenAi | UpstreamKind::OpenAiCompatible => &["openai-beta"],
        UpstreamKind::Anthropic => &["anthropic-version", "anthropic-beta"],
        UpstreamKind::Gemini => &[],
    }
}

/// Response headers that never reach a client, whatever the config says: cookies,
/// server identification, provider account details, and headers that steer a browser
/// (CORS, redirects, downloads, content and transport security policies).
pub const NEVER_RETURNED: &[&str] = &[
    "set-cookie",
    "set-cookie2",
    "server",
    "x-powered-by",
    "via",
    "x-served-by",
    "alt-svc",
    "openai-organization",
    "openai-project",
    "anthropic-organization-id",
    "cf-ray",
    "x-envoy-upstream-service-time",
    "refresh",
    "location",
    "content-location",
    "link",
    "content-disposition",
    "strict-transport-security",
    "clear-site-data",
    "www-authenticate",
    "proxy-authenticate",
    "connection",
    "keep-alive",
    "upgrade",
    "trailer",
    "content-encoding",
    "x-frame-options",
    "timing-allow-origin",
    "report-to",
    "reporting-endpoints",
    "nel",
    "service-worker-allowed",
    "origin-agent-cluster",
    "x-xss-protection",
    "x-dns-prefetch-control",
    "sourcemap",
    "x-sourcemap",
    "x-permitted-cross-domain-policies",
];

/// Name prefixes never returned.
pub const NEVER_RETURNED_PREFIXES: &[&str] = &[
    "access-control-",
    "content-security-policy",
    "cross-origin-",
    "permissions-policy",
];

/// Response headers returned to clients: framing, request ids, the provider's rate-limit
/// and retry hints (what the OpenAI, Anthropic and Gemini SDKs read).
const RETURNED: &[&str] = &[
    "content-type",
    "content-length",
    "transfer-encoding",
    "request-id",
    "x-request-id",
    "retry-after",
    "retry-after-ms",
    "x-should-retry",
    "openai-processing-ms",
    "openai-version",
];

/// Response header name prefixes returned (rate-limit state).
const RETURNED_PREFIXES: &[&str] = &["x-ratelimit-", "anthropic-ratelimit-"];

fn listed(name: &str, exact: &[&str], prefixes: &[&str]) -> bool {
    exact.contains(&name) || prefixes.iter().any(|p| name.starts_with(p))
}

/// Header names an operator adds to an allow-list (`upstreams.<name>.forward_request_headers`,
/// `forward_response_headers`): exact lower-case names, or prefixes written `name-*`.
#[derive(Debug, Clone, Default)]
pub struct HeaderAllow {
    exact: Vec<String>,
    prefixes: Vec<String>,
}

/// Which way an allow-list applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Request,
    Response,
}

impl Direction {
    fn never(self) -> (&'static [&'static str], &'static [&'static str]) {
        match self {
            Direction::Request => (NEVER_FORWARDED, NEVER_FORWARDED_PREFIXES),
            Direction::Response => (NEVER_RETURNED, NEVER_RETURNED_PREFIXES),
        }
    }
}

impl HeaderAllow {
    /// Parse configured names. Errors are (index, message) for the config's path.
    pub fn parse(names: &[String], dir: Direction) -> Result<HeaderAllow, Vec<(usize, String)>> {
        let (never, never_prefixes) = dir.never();
        let mut out = HeaderAllow::default();
        let mut errs = Vec::new();
        for (i, n) in names.iter().enumerate() {
            let (stem, prefix) = match n.strip_suffix('*') {
                Some(stem) => (stem, true),
                None => (n.as_str(), false),
            };
            let valid = !stem.is_empty()
                && stem
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !valid {
                errs.push((
                    i,
                    format!("\"{n}\" is not a lower-case header name (or a prefix ending in *)"),
                ));
            } else if listed(stem, never, never_prefixes)
                || (prefix && never_prefixes.iter().any(|p| p.starts_with(stem)))
            {
                errs.push((i, format!("\"{n}\" is never passed on (credentials, cookies, framing, or a header that steers a client or server)")));
            } else if prefix {
                out.prefixes.push(stem.to_string());
            } else {
                out.exact.push(stem.to_string());
            }
        }
        if errs.is_empty() {
            Ok(out)
        } else {
            Err(errs)
        }
    }

    fn allows(&self, name: &str) -> bool {
        self.exact.iter().any(|e| e == name) || self.prefixes.iter().any(|p| name.starts_with(p))
    }
}

/// May the request header `name` go to a provider of `kind`? The built-in list (never
/// on the never-list), else the operator's unless the never-list has it.
pub fn forwards(kind: UpstreamKind, extra: &HeaderAllow, name: &str) -> bool {
    FORWARDED.contains(&name)
        || forwarded_for(kind).contains(&name)
        || (extra.allows(name) && !listed(name, NEVER_FORWARDED, NEVER_FORWARDED_PREFIXES))
}

/// May the provider's response header `name` reach the client?
pub fn returns(extra: &HeaderAllow, name: &str) -> bool {
    listed(name, RETURNED, RETURNED_PREFIXES)
        || (extra.allows(name) && !listed(name, NEVER_RETURNED, NEVER_RETURNED_PREFIXES))
}

/// The values of `kind`'s beta header that `allowed` does not list (a comma-separated
/// header may be sent several times).
pub fn unlisted_betas<'a>(
    kind: UpstreamKind,
    headers: &'a http::HeaderMap,
    allowed: &[String],
) -> Option<&'a str> {
    let name = beta_header(kind)?;
    for v in headers.get_all(name) {
        let Ok(text) = v.to_str() else {
            return Some("(not text)");
        };
        if let Some(bad) = text
            .split(',')
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .find(|b| !allowed.iter().any(|a| a == b))
        {
            return Some(bad);
        }
    }
    None
}

/// The request header that carries the provider credential for `kind`.
pub fn credential_name(kind: UpstreamKind) -> &'static str {
    match kind {
        UpstreamKind::OpenAi | UpstreamKind::OpenAiCompatible => "authorization",
        UpstreamKind::Anthropic => "x-api-key",
        UpstreamKind::Gemini => "x-goog-api-key",
    }
}

/// The credential header value for `kind` (`Bearer <key>` for OpenAI and compatible
/// upstreams, the key itself otherwise), or `None` when the key has spaces or control
/// characters. Built once per credential at load into one buffer that every clone
/// shares and that is zeroed when the last clone is dropped (after a reload, once the
/// requests still using the old config finish); marked sensitive, so `Debug` and
/// HPACK indexing leave it out.
pub fn credential_value(kind: UpstreamKind, secret: &SecretString) -> Option<HeaderValue> {
    let key = secret.expose_secret().as_bytes();
    if key.iter().any(|b| b.is_ascii_control() || *b == b' ') {
        return None;
    }
    let prefix: &[u8] = match kind {
        UpstreamKind::OpenAi | UpstreamKind::OpenAiCompatible => b"Bearer ",
        UpstreamKind::Anthropic | UpstreamKind::Gemini => b"",
    };
    let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(prefix.len() + key.len()));
    buf.extend_from_slice(prefix);
    buf.extend_from_slice(key);
    let mut v = HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(buf)).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// Drop the query parameters Google reads a credential from (`key`, OAuth's
/// `access_token` and `oauth_token`) from a Gemini query string, whatever their name's
/// encoding (`%6Bey=`, `ke%79=` are `key=` to Google's parser): a client's own credential
/// never goes beside keygate's. Also the parameters that do what the headers keygate never
/// forwards do: Google's system parameters (`$httpMethod`, `$ct`, `$userProject`, ...: a
/// method or content type other than the one keygate checked), and the billing project
/// and quota user (`userProject`, `quotaUser`).
pub fn strip_key_param(query: &str) -> String {
    query
        .split('&')
        .filter(|p| {
            let name = p.split('=').next().unwrap_or("");
            let decoded = form_urlencoded::parse(name.as_bytes())
                .next()
                .map(|(k, _)| k)
                .unwrap_or_default();
            !matches!(
                &*decoded,
                "key" | "access_token" | "oauth_token" | "userProject" | "quotaUser"
            ) && !decoded.starts_with('$')
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Keep only the response headers clients may see ([`returns`]).
pub fn clean_response(headers: &mut http::HeaderMap, extra: &HeaderAllow) {
    let dropped: Vec<http::HeaderName> = headers
        .keys()
        .filter(|n| !returns(extra, n.as_str()))
        .cloned()
        .collect();
    for name in dropped {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_values_are_built_once_per_kind_and_sensitive() {
        let key = SecretString::from("sk-test-0123456789");
        let bearer = credential_value(UpstreamKind::OpenAi, &key).unwrap();
        assert_eq!(bearer.as_bytes(), b"Bearer sk-test-0123456789");
        assert!(bearer.is_sensitive());
        assert!(!format!("{bearer:?}").contains("sk-test"));
        // Clones share the one buffer: a request does not copy the key.
        assert_eq!(
            bearer.clone().as_bytes().as_ptr(),
            bearer.as_bytes().as_ptr()
        );
        for kind in [UpstreamKind::Anthropic, UpstreamKind::Gemini] {
            assert_eq!(
                credential_value(kind, &key).unwrap().as_bytes(),
                b"sk-test-0123456789"
            );
        }
        assert_eq!(
            credential_name(UpstreamKind::OpenAiCompatible),
            "authorization"
        );
        assert_eq!(credential_name(UpstreamKind::Anthropic), "x-api-key");
        assert_eq!(credential_name(UpstreamKind::Gemini), "x-goog-api-key");
        for bad in ["sk test", "sk-\u{7f}", "sk-\n"] {
            assert!(credential_value(UpstreamKind::OpenAi, &SecretString::from(bad)).is_none());
        }
    }

    #[test]
    fn request_headers_pass_by_allow_list() {
        let none = HeaderAllow::default();
        for n in ["content-type", "accept"] {
            assert!(forwards(UpstreamKind::OpenAi, &none, n), "{n}");
        }
        assert!(forwards(
            UpstreamKind::Anthropic,
            &none,
            "anthropic-version"
        ));
        assert!(!forwards(UpstreamKind::OpenAi, &none, "anthropic-version"));
        for n in [
            "x-http-method-override",
            "x-original-url",
            "x-rewrite-url",
            "x-forwarded-prefix",
            "user-agent",
            "x-stainless-os",
            "cookie",
            "x-mock-mode",
        ] {
            assert!(!forwards(UpstreamKind::OpenAi, &none, n), "{n}");
        }
        let extra =
            HeaderAllow::parse(&["x-mock-*".into(), "x-trace".into()], Direction::Request).unwrap();
        assert!(forwards(UpstreamKind::OpenAi, &extra, "x-mock-mode"));
        assert!(forwards(UpstreamKind::OpenAi, &extra, "x-trace"));
        // The never-list wins over a configured prefix.
        let wide = HeaderAllow::parse(&["x-http-*".into()], Direction::Request).unwrap();
        assert!(!forwards(
            UpstreamKind::OpenAi,
            &wide,
            "x-http-method-override"
        ));
        assert!(forwards(UpstreamKind::OpenAi, &wide, "x-http-other"));
    }

    #[test]
    fn built_in_lists_never_name_a_never_passed_header() {
        for n in FORWARDED
            .iter()
            .chain(forwarded_for(UpstreamKind::OpenAi))
            .chain(forwarded_for(UpstreamKind::Anthropic))
        {
            assert!(!listed(n, NEVER_FORWARDED, NEVER_FORWARDED_PREFIXES), "{n}");
        }
        for n in RETURNED.iter().chain(RETURNED_PREFIXES) {
            assert!(!listed(n, NEVER_RETURNED, NEVER_RETURNED_PREFIXES), "{n}");
        }
    }

    #[test]
    fn configured_names_are_checked() {
        let errs = HeaderAllow::parse(
            &["Cookie".into(), "cookie".into(), "x-ok".into(), "*".into()],
            Direction::Request,
        )
        .unwrap_err();
        assert_eq!(errs.iter().map(|e| e.0).collect::<Vec<_>>(), [0, 1, 3]);
        assert!(HeaderAllow::parse(&["location".into()], Direction::Response).is_err());
        // A prefix that is itself never passed on, or covers a never-passed prefix.
        assert!(HeaderAllow::parse(&["x-forwarded-*".into()], Direction::Request).is_err());
        assert!(HeaderAllow::parse(&["access-*".into()], Direction::Response).is_err());
        assert!(HeaderAllow::parse(&["x-mock-*".into()], Direction::Request).is_ok());
        assert!(HeaderAllow::parse(&["x-custom".into()], Direction::Response).is_ok());
    }

    #[test]
    fn response_headers_pass_by_allow_list() {
        let mut h = http::HeaderMap::new();
        for (n, v) in [
            ("content-type", "application/json"),
            ("x-ratelimit-remaining-requests", "9"),
            ("anthropic-ratelimit-tokens-reset", "x"),
            ("request-id", "req_1"),
            ("retry-after", "2"),
            ("access-control-allow-credentials", "true"),
            ("access-control-allow-origin", "*"),
            ("refresh", "0; url=https://evil.example/"),
            ("location", "https://evil.example/"),
            ("link", "<https://evil.example/x.js>; rel=preload"),
            ("content-disposition", "attachment"),
            ("content-security-policy", "default-src *"),
            ("strict-transport-security", "max-age=0"),
            ("set-cookie", "a=1"),
            ("x-custom", "1"),
        ] {
            h.append(
                http::HeaderName::from_static(n),
                HeaderValue::from_static(v),
            );
        }
        clean_response(&mut h, &HeaderAllow::default());
        let mut kept: Vec<_> = h.keys().map(|k| k.as_str().to_string()).collect();
        kept.sort();
        assert_eq!(
            kept,
            [
                "anthropic-ratelimit-tokens-reset",
                "content-type",
                "request-id",
                "retry-after",
                "x-ratelimit-remaining-requests"
            ]
        );
    }

    #[test]
    fn betas_must_be_listed() {
        let mut h = http::HeaderMap::new();
        h.append("openai-beta", HeaderValue::from_static("assistants=v2"));
        let allowed = vec!["assistants=v2".to_string()];
        assert_eq!(unlisted_betas(UpstreamKind::OpenAi, &h, &allowed), None);
        assert_eq!(
            unlisted_betas(UpstreamKind::OpenAi, &h, &[]),
            Some("assistants=v2")
        );
        h.append("openai-beta", HeaderValue::from_static("assistants=v2, x"));
        assert_eq!(
            unlisted_betas(UpstreamKind::OpenAi, &h, &allowed),
            Some("x")
        );
        // Another kind's header is not this kind's beta (it is not forwarded either).
        assert_eq!(unlisted_betas(UpstreamKind::Anthropic, &h, &[]), None);
    }

    #[test]
    fn gemini_key_param_is_removed() {
        assert_eq!(strip_key_param("key=abc&alt=sse"), "alt=sse");
        assert_eq!(strip_key_param("alt=sse&key=abc"), "alt=sse");
        assert_eq!(strip_key_param("keys=1"), "keys=1");
        // However the name is encoded, and OAuth's token too.
        for q in [
            "%6Bey=abc",
            "ke%79=abc",
            "key",
            "access_token=t",
            "access%5Ftoken=t",
            "oauth_token=t",
            // Method and content-type overrides, another billing project, a quota user.
            "$httpMethod=DELETE",
            "%24httpMethod=DELETE",
            "$ct=text/plain",
            "$userProject=p",
            "userProject=p",
            "quotaUser=u",
        ] {
            assert_eq!(strip_key_param(&format!("alt=sse&{q}")), "alt=sse", "{q}");
        }
    }
}
