//! Writing keygate's own responses and the headers every response carries.

use super::ctx::Ctx;
use crate::error::{ErrorCode, GatewayError};
use bytes::Bytes;
use http::HeaderValue;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorType};
use std::time::SystemTime;

thread_local! {
    static DATE: std::cell::RefCell<(u64, HeaderValue)> =
        const { std::cell::RefCell::new((u64::MAX, HeaderValue::from_static(""))) };
}

/// The `Date` header value, formatted once per second per thread (a clone shares it).
fn http_date() -> HeaderValue {
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    DATE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(now)) {
                *c = (secs, v);
            }
        }
        c.1.clone()
    })
}

/// Headers on every response (SPEC §4).
pub fn add_standard_headers(resp: &mut ResponseHeader, ctx: &Ctx) -> pingora::Result<()> {
    if !ctx.request_id.is_empty() {
        resp.insert_header("x-request-id", ctx.request_id.as_str())?;
    }
    // Names as `&'static str` and constant values from_static: nothing is allocated.
    resp.insert_header(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    )?;
    resp.insert_header("cache-control", HeaderValue::from_static("no-store"))?;
    resp.insert_header("date", http_date())?;
    if ctx.tls {
        resp.insert_header(
            "strict-transport-security",
            HeaderValue::from_static("max-age=31536000; includeSubDomains"),
        )?;
    }
    super::cors::add_headers(resp, ctx.cors_origin.as_deref())
}

/// `RateLimit-Policy` and `RateLimit` on proxied responses of limited tiers.
pub fn add_ratelimit_headers(resp: &mut ResponseHeader, ctx: &Ctx) -> pingora::Result<()> {
    let policy = ctx
        .site()
        .and_then(|s| ctx.rt.tiers.get(&s.tier))
        .and_then(|t| t.policy.as_deref());
    if let Some(p) = policy {
        resp.insert_header("ratelimit-policy", p)?;
    }
    if let Some(r) = ctx.admission.as_ref().and_then(|a| a.ratelimit) {
        // Sized once: `to_string` would grow the buffer a piece at a time.
        let mut v = String::with_capacity(48);
        let _ = std::fmt::Write::write_fmt(&mut v, format_args!("{r}"));
        resp.insert_header("ratelimit", v)?;
    }
    Ok(())
}

/// Write keygate's own JSON response.
pub async fn send_json(
    session: &mut Session,
    ctx: &mut Ctx,
    status: u16,
    body: Vec<u8>,
) -> pingora::Result<()> {
    send(session, ctx, status, body, None).await
}

/// Write `err` as the SPEC §4 JSON error response.
pub async fn send_error(
    session: &mut Session,
    ctx: &mut Ctx,
    err: &GatewayError,
) -> pingora::Result<()> {
    let body = err.body(&ctx.request_id);
    send(session, ctx, err.code.status(), body, Some(err)).await
}

async fn send(
    session: &mut Session,
    ctx: &mut Ctx,
    status: u16,
    body: Vec<u8>,
    err: Option<&GatewayError>,
) -> pingora::Result<()> {
    ctx.status = status;
    let mut resp = ResponseHeader::build(status, Some(8))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body.len().to_string())?;
    add_standard_headers(&mut resp, ctx)?;
    if let Some(err) = err {
        if let Some(ra) = err.retry_after {
            resp.insert_header("retry-after", crate::limits::ceil_secs(ra).to_string())?;
        }
        for (name, value) in err.extras.iter().flat_map(|x| x.headers.iter()) {
            resp.insert_header(*name, value.as_str())?;
        }
        if err.close {
            session.set_keepalive(None);
            resp.insert_header("connection", "close")?;
        }
    }
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await?;
    Ok(())
}

/// Map a Pingora error that keygate did not raise itself to a gateway error.
/// `None` means the client is gone and nothing should be written.
pub fn from_pingora(e: &Error) -> Option<GatewayError> {
    use ErrorType::*;
    let etype = e.etype();
    if matches!(e.esource(), pingora::ErrorSource::Downstream) {
        return match etype {
            ReadError | WriteError | ConnectionClosed => None,
            ReadTimedout => Some(GatewayError::bad_request(
                "The request was not received in time.",
            )),
            _ => Some(GatewayError::bad_request("The request is malformed.")),
        };
    }
    Some(match etype {
        ReadTimedout | WriteTimedout => GatewayError::new(
            ErrorCode::UpstreamTimeout,
            "The provider did not answer in time.",
        ),
        ConnectTimedout => GatewayError::upstream("The provider could not be reached in time."),
        ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure | BindError
        | SocketError => GatewayError::upstream("The provider could not be reached."),
        TLSHandshakeFailure | TLSHandshakeTimedout | InvalidCert | TLSWantX509Lookup => {
            GatewayError::upstream("The provider's TLS connection could not be verified.")
        }
        _ if matches!(e.esource(), pingora::ErrorSource::Upstream) => {
            GatewayError::upstream("The provider's response was invalid.")
        }
        _ => GatewayError::new(
            ErrorCode::Internal,
            "The gateway failed to handle this request.",
        ),
    })
}
