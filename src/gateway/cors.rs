//! CORS for browser clients: preflights are answered by keygate from the sites'
//! `cors_origins`; actual requests carry `Access-Control-Allow-Origin` only for an origin
//! of the authenticated site, never with credentials, always with `Vary: Origin`.

use super::header_map::{append, response_header, set, value, ROOM};
use crate::config::{Runtime, Site};
use crate::error::GatewayError;
use http::header::{self, HeaderMap, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

const ALLOW_METHODS: &str = "GET, POST, OPTIONS";
/// Any request header (the wildcard holds because keygate never allows credentials), and
/// `authorization`, which the wildcard does not cover. The providers' browser SDKs send
/// their own (`x-stainless-*`, `anthropic-dangerous-direct-browser-access`,
/// `x-goog-api-client`): a fixed list refused them at the preflight. What reaches the
/// provider is still keygate's allow-list.
const ALLOW_HEADERS: &str = "*, authorization";
/// Every response header keygate returns (its allow-list decides which): the SDKs read
/// the provider's retry hints and rate-limit headers.
const EXPOSE_HEADERS: &str = "*";

fn origin(session: &Session) -> Option<String> {
    session
        .req_header()
        .headers
        .get(http::header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(|o| o.trim().to_ascii_lowercase())
}

/// Is this a CORS preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`)?
pub fn is_preflight(session: &Session) -> bool {
    let req = session.req_header();
    req.method == http::Method::OPTIONS
        && req.headers.contains_key(http::header::ORIGIN)
        && req
            .headers
            .contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The preflight answer: 204, with CORS headers only for an origin some site allows.
pub fn preflight(session: &Session, rt: &Runtime) -> pingora::Result<ResponseHeader> {
    let mut h = HeaderMap::with_capacity(ROOM);
    set(&mut h, header::VARY, HeaderValue::from_static("Origin"))?;
    if let Some(o) = origin(session).filter(|o| rt.cors_origins.contains(o)) {
        set(&mut h, header::ACCESS_CONTROL_ALLOW_ORIGIN, value(&o)?)?;
        for (name, v) in [
            (header::ACCESS_CONTROL_ALLOW_METHODS, ALLOW_METHODS),
            (header::ACCESS_CONTROL_ALLOW_HEADERS, ALLOW_HEADERS),
            (header::ACCESS_CONTROL_MAX_AGE, "600"),
        ] {
            set(&mut h, name, HeaderValue::from_static(v))?;
        }
    }
    response_header(204, h)
}

/// For a request with an `Origin`: the origin when `site` allows it, else 403.
pub fn origin_for(session: &Session, site: &Site) -> Result<Option<String>, GatewayError> {
    match origin(session) {
        None => Ok(None),
        Some(o) if site.cors_origins.contains(&o) => Ok(Some(o)),
        Some(_) => Err(GatewayError::forbidden(
            "This origin is not allowed for this site.",
        )),
    }
}

/// Response headers for an allowed origin.
pub fn add_headers(h: &mut HeaderMap, origin: Option<&str>) -> pingora::Result<()> {
    if let Some(o) = origin {
        set(h, header::ACCESS_CONTROL_ALLOW_ORIGIN, value(o)?)?;
        let expose = HeaderValue::from_static(EXPOSE_HEADERS);
        set(h, header::ACCESS_CONTROL_EXPOSE_HEADERS, expose)?;
        append(h, header::VARY, HeaderValue::from_static("Origin"))?;
    }
    Ok(())
}
