//! Header hygiene in both directions (SPEC §4).

use crate::config::{Credential, Upstream, UpstreamKind};
use http::HeaderValue;
use pingora::http::RequestHeader;
use secrecy::{ExposeSecret, SecretString};

/// Request headers never forwarded: client credentials and signatures, cookies,
/// hop-by-hop headers, anything naming a provider credential or account, and client
/// addresses (providers do not learn who the end user is from keygate).
pub const STRIPPED_REQUEST_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "x-goog-api-key",
    "api-key",
    "anthropic-api-key",
    "openai-organization",
    "openai-project",
    "cookie",
    "signature",
    "signature-input",
    "content-digest",
    "x-site-identifier",
    "x-timestamp",
    "x-signature",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "accept-encoding",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "forwarded",
    "x-real-ip",
];

/// Response headers never returned to clients: cookies, server identification and
/// provider account details.
pub const STRIPPED_RESPONSE_HEADERS: &[&str] = &[
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
];

/// Remove the present headers that are on `list` (Pingora's removal is linear in the
/// header count, so only names that are there are removed).
fn remove_listed(
    present: &mut Vec<http::HeaderName>,
    list: &[&str],
    mut remove: impl FnMut(&http::HeaderName),
) {
    present.dedup();
    for name in present.iter().filter(|n| list.contains(&n.as_str())) {
        remove(name);
    }
}

/// Rewrite the request for `up`: path, Host, stripped headers, injected credential.
pub fn prepare_upstream_request(
    req: &mut RequestHeader,
    up: &Upstream,
    credential: &Credential,
    path_and_query: &str,
) -> pingora::Result<()> {
    remove_listed(
        &mut req.headers.keys().cloned().collect::<Vec<_>>(),
        STRIPPED_REQUEST_HEADERS,
        |n| {
            req.remove_header(n);
        },
    );
    let uri: http::Uri = path_and_query.parse().map_err(|_| {
        pingora::Error::explain(pingora::ErrorType::InvalidHTTPHeader, "bad upstream path")
    })?;
    req.set_uri(uri);
    req.insert_header(http::header::HOST, up.authority.as_str())?;
    // A clone shares the value built at load: the key is not copied per request.
    req.insert_header(credential_name(up.kind), credential.header.clone())?;
    Ok(())
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

/// Drop the Gemini `key=` query parameter (a client credential) from a query string.
pub fn strip_key_param(query: &str) -> String {
    query
        .split('&')
        .filter(|p| !(p.starts_with("key=") || *p == "key"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Remove response headers clients must not see.
pub fn clean_response(headers: &mut http::HeaderMap) {
    for name in STRIPPED_RESPONSE_HEADERS {
        headers.remove(*name);
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
    fn gemini_key_param_is_removed() {
        assert_eq!(strip_key_param("key=abc&alt=sse"), "alt=sse");
        assert_eq!(strip_key_param("alt=sse&key=abc"), "alt=sse");
        assert_eq!(strip_key_param("keys=1"), "keys=1");
    }
}
