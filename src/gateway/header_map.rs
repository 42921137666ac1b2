//! Building response headers without growing maps or allocating names: the helpers
//! every response keygate writes goes through.

use http::header::{HeaderMap, HeaderName};
use http::{HeaderValue, StatusCode};
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType};

/// Headers keygate may add to a response, at most: the room a response header is built
/// with, so adding them never grows its map.
pub const ROOM: usize = 12;

pub fn too_many<E>(_: E) -> Box<Error> {
    Error::explain(ErrorType::InvalidHTTPHeader, "too many headers")
}

/// Set `name`, replacing any value. keygate writes headers into a plain `http::HeaderMap`
/// (no header case kept: names go out lower-case, as Envoy and HTTP/2 send them), so a
/// constant name costs no allocation. Pingora's `insert_header` allocates every name
/// that is not a standard one, and twice when the header keeps case.
pub fn set(h: &mut HeaderMap, name: HeaderName, value: HeaderValue) -> pingora::Result<()> {
    h.try_insert(name, value).map_err(too_many)?;
    Ok(())
}

/// Add a value under `name`, keeping those already there.
pub fn append(h: &mut HeaderMap, name: HeaderName, value: HeaderValue) -> pingora::Result<()> {
    h.try_append(name, value).map_err(too_many)?;
    Ok(())
}

pub fn invalid_value<E>(_: E) -> Box<Error> {
    Error::explain(ErrorType::InvalidHTTPHeader, "invalid header value")
}

/// A header value from text keygate holds (ids, origins, policies).
pub fn value(text: &str) -> pingora::Result<HeaderValue> {
    HeaderValue::from_str(text).map_err(invalid_value)
}

/// A response header (HTTP/1.1, no header case kept) from `status` and `headers`.
pub fn response_header(status: u16, headers: HeaderMap) -> pingora::Result<ResponseHeader> {
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = StatusCode::from_u16(status)
        .map_err(|_| Error::explain(ErrorType::InternalError, "invalid status"))?;
    parts.headers = headers;
    Ok(ResponseHeader::from(parts))
}
