//! Header hygiene in both directions (SPEC §4).

use crate::config::{Credential, Upstream, UpstreamKind};
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use secrecy::ExposeSecret;

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
    let (name, value) = match up.kind {
        UpstreamKind::OpenAi | UpstreamKind::OpenAiCompatible => (
            "authorization",
            format!("Bearer {}", credential.secret.expose_secret()),
        ),
        UpstreamKind::Anthropic => ("x-api-key", credential.secret.expose_secret().to_string()),
        UpstreamKind::Gemini => (
            "x-goog-api-key",
            credential.secret.expose_secret().to_string(),
        ),
    };
    let mut v = HeaderValue::from_str(&value).map_err(|_| {
        // The message names the credential id only.
        pingora::Error::explain(
            pingora::ErrorType::InternalError,
            format!("credential {} is not a valid header value", credential.id),
        )
    })?;
    v.set_sensitive(true);
    req.insert_header(name, v)?;
    Ok(())
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
pub fn clean_response(resp: &mut ResponseHeader) {
    remove_listed(
        &mut resp.headers.keys().cloned().collect::<Vec<_>>(),
        STRIPPED_RESPONSE_HEADERS,
        |n| {
            resp.remove_header(n);
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemini_key_param_is_removed() {
        assert_eq!(strip_key_param("key=abc&alt=sse"), "alt=sse");
        assert_eq!(strip_key_param("alt=sse&key=abc"), "alt=sse");
        assert_eq!(strip_key_param("keys=1"), "keys=1");
    }
}
