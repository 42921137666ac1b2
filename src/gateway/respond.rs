//! Writing keygate's own responses and the headers every response carries.

use super::ctx::Ctx;
pub use super::header_map::{append, invalid_value, response_header, set, too_many, value, ROOM};
use crate::error::{ErrorCode, GatewayError};
use crate::limits;
use crate::telemetry::metrics::METRICS;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::response::Parts;
use http::HeaderValue;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use std::time::SystemTime;

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

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

/// Edit the upstream's response header as plain `http` parts, with room for [`ROOM`]
/// more headers, then hand it back to Pingora without header case and with the
/// status's standard reason phrase.
///
/// Why: Pingora sizes the upstream's two header maps (values, and the original case of
/// each name) exactly, so each header keygate added grew both, and each name it added
/// was allocated twice. The header is put back even when `f` fails.
///
/// The upstream's own reason phrase is dropped (as Envoy does): it is free text that no
/// client needs, and a provider that wrote a credential there (`HTTP/1.1 200 Bearer sk-…`)
/// would hand it to every HTTP/1 client on the status line, past the header checks.
pub fn edit(
    resp: &mut ResponseHeader,
    f: impl FnOnce(&mut Parts) -> pingora::Result<()>,
) -> pingora::Result<()> {
    let placeholder = ResponseHeader::from(http::Response::new(()).into_parts().0);
    let mut parts = Parts::from(std::mem::replace(resp, placeholder));
    let result = parts
        .headers
        .try_reserve(ROOM)
        .map_err(too_many)
        .and_then(|()| f(&mut parts));
    *resp = ResponseHeader::from(parts);
    result
}

/// Headers on every response (SPEC §4).
pub fn add_standard_headers(h: &mut HeaderMap, ctx: &Ctx) -> pingora::Result<()> {
    if !ctx.request_id.is_empty() {
        set(h, X_REQUEST_ID, value(&ctx.request_id)?)?;
    }
    // Constant names and values: nothing is allocated.
    set(
        h,
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    )?;
    set(
        h,
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    )?;
    set(h, header::DATE, http_date())?;
    if ctx.tls {
        set(
            h,
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000; includeSubDomains"),
        )?;
    }
    super::cors::add_headers(h, ctx.cors_origin.as_deref())
}

/// `RateLimit-Policy` and `RateLimit` on proxied responses of limited tiers.
pub fn add_ratelimit_headers(h: &mut HeaderMap, ctx: &Ctx) -> pingora::Result<()> {
    let policy = ctx.site().and_then(|s| s.tier.policy.clone());
    if let Some(p) = policy {
        set(h, RATELIMIT_POLICY, p)?;
    }
    if let Some(r) = ctx.admission.as_ref().and_then(|a| a.ratelimit) {
        // Sized once: `to_string` would grow the buffer a piece at a time.
        let mut v = String::with_capacity(48);
        let _ = std::fmt::Write::write_fmt(&mut v, format_args!("{r}"));
        set(
            h,
            RATELIMIT,
            HeaderValue::try_from(v).map_err(invalid_value)?,
        )?;
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
    let mut h = HeaderMap::with_capacity(ROOM);
    let json = HeaderValue::from_static("application/json");
    set(&mut h, header::CONTENT_TYPE, json)?;
    set(
        &mut h,
        header::CONTENT_LENGTH,
        HeaderValue::from(body.len()),
    )?;
    add_standard_headers(&mut h, ctx)?;
    if let Some(err) = err {
        if let Some(ra) = err.retry_after {
            let secs = crate::limits::ceil_secs(ra);
            set(&mut h, header::RETRY_AFTER, HeaderValue::from(secs))?;
        }
        for (name, v) in err.extras.iter().flat_map(|x| x.headers.iter()) {
            set(&mut h, name.clone(), v.clone())?;
        }
        if err.close {
            session.set_keepalive(None);
            set(
                &mut h,
                header::CONNECTION,
                HeaderValue::from_static("close"),
            )?;
        }
    }
    let resp = response_header(status, h)?;
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await?;
    Ok(())
}

/// The provider's own id of a request, from its answer's `x-request-id` (OpenAI) or
/// `request-id` (Anthropic): at most 128 characters of `[A-Za-z0-9._:-]` holding no
/// configured secret (an upstream that echoes its credential there), else none (it goes
/// into the audit line as it is).
pub(super) fn provider_request_id(
    h: &http::HeaderMap,
    secrets: &crate::response::validate::SecretScanner,
) -> Option<String> {
    let v = h.get("x-request-id").or_else(|| h.get("request-id"))?;
    let b = v.as_bytes();
    let plain = |c: &u8| c.is_ascii_alphanumeric() || b"._:-".contains(c);
    (!b.is_empty() && b.len() <= 128 && b.iter().all(plain) && !secrets.contains(b))
        .then(|| String::from_utf8_lossy(b).into_owned())
}

/// Has the client been sent a final response header? An interim one (keygate's own
/// `100 Continue`, a provider's `103 Early Hints`) leaves room for failover and for
/// keygate's error answer.
pub(super) fn final_header_written(session: &Session) -> bool {
    session
        .response_written()
        .is_some_and(|h| !h.status.is_informational())
}

/// The 429 for any limit's refusal, with SPEC §4's headers (`policy`: the tier's
/// `RateLimit-Policy`, for tier limits), counted in `keygate_rate_limited_total`.
pub(super) fn rate_limited(policy: Option<&http::HeaderValue>, r: limits::Refusal) -> GatewayError {
    let name = r.limit.as_str();
    METRICS.rate_limited.with_label_values(&[name]).inc();
    let mut e =
        GatewayError::new(ErrorCode::RateLimited, r.limit.message()).extra("limit", name.into());
    if let Some(wait) = r.retry_after {
        e = e.retry_after(wait);
    }
    if let Some(p) = policy {
        e = e.header(RATELIMIT_POLICY, p.clone());
    }
    if let Some(h) = r
        .ratelimit
        .and_then(|h| http::HeaderValue::try_from(h).ok())
    {
        e = e.header(RATELIMIT, h);
    }
    if let Some((used, budget)) = r.budget {
        let amount = |n: u64| match r.limit.is_usd() {
            true => serde_json::json!(limits::price::to_usd(n)),
            false => serde_json::json!(n),
        };
        e = e.extra(
            "budget",
            serde_json::json!({name: amount(budget), "used": amount(used)}),
        );
    }
    if let Some(glob) = r.model {
        e = e.extra("model", glob.into());
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::{Error, ErrorType};

    #[test]
    fn a_provider_request_id_is_plain_short_and_holds_no_secret() {
        let scanner =
            crate::response::validate::SecretScanner::new(&["sk-provider-0123456789".into()]);
        let id = |name: &'static str, v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(name, http::HeaderValue::from_str(v).unwrap());
            provider_request_id(&h, &scanner)
        };
        assert_eq!(
            id("x-request-id", "req_abc-1.2:3").as_deref(),
            Some("req_abc-1.2:3")
        );
        assert_eq!(id("request-id", "req_011CV").as_deref(), Some("req_011CV"));
        for bad in [
            "a b",
            "a\"b",
            &"x".repeat(129),
            "req_sk-provider-0123456789",
        ] {
            assert_eq!(id("x-request-id", bad), None, "{bad}");
        }
    }

    fn wire(resp: &ResponseHeader) -> String {
        let mut buf = Vec::new();
        resp.header_to_h1_wire(&mut buf);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn edit_keeps_values_drops_the_reason_and_adds_without_growing() {
        let mut resp = ResponseHeader::build(200, Some(5)).unwrap();
        resp.set_reason_phrase(Some("Bearer sk-from-the-status-line"))
            .unwrap();
        resp.append_header("Server", "nginx").unwrap();
        resp.append_header("OpenAI-Processing-Ms", "12").unwrap();
        resp.append_header("Set-Cookie", "a=1").unwrap();
        resp.append_header("X-Ratelimit-Multi", "one").unwrap();
        resp.append_header("X-Ratelimit-Multi", "two").unwrap();
        edit(&mut resp, |parts| {
            let none = crate::upstream::headers::HeaderAllow::default();
            crate::upstream::headers::clean_response(&mut parts.headers, &none);
            let room = parts.headers.capacity();
            for i in 0..ROOM {
                let name = HeaderName::from_bytes(format!("x-added-{i}").as_bytes()).unwrap();
                set(&mut parts.headers, name, HeaderValue::from(i))?;
            }
            // The room was made up front: adding keygate's headers does not grow the map.
            assert_eq!(parts.headers.capacity(), room);
            Ok(())
        })
        .unwrap();
        assert!(!resp.has_case());
        assert_eq!(resp.get_reason_phrase(), Some("OK"));
        assert_eq!(resp.status, 200);
        let text = wire(&resp);
        assert!(!text.contains("sk-from"), "{text}");
        assert!(!text.contains("nginx") && !text.contains("a=1"), "{text}");
        assert!(text.contains("openai-processing-ms: 12\r\n"), "{text}");
        assert!(
            text.contains("x-ratelimit-multi: one\r\nx-ratelimit-multi: two\r\n"),
            "{text}"
        );
        assert!(text.contains("x-added-11: 11\r\n"), "{text}");
    }

    #[test]
    fn edit_puts_the_header_back_when_the_edit_fails() {
        let mut resp = ResponseHeader::build(502, None).unwrap();
        resp.append_header("X-Kept", "yes").unwrap();
        let failed = edit(&mut resp, |_| {
            Err(Error::explain(ErrorType::InternalError, "refused"))
        });
        assert!(failed.is_err());
        assert_eq!(resp.status, 502);
        assert_eq!(resp.headers.get("x-kept").unwrap(), "yes");
    }
}
