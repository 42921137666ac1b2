//! The one error type of the request path: every refusal keygate makes maps to a
//! SPEC §4 status, code and JSON body here, and nowhere else.

use std::time::Duration;

/// The error codes of SPEC §4. Each has exactly one HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    Unauthenticated,
    StaleRequest,
    Replayed,
    Forbidden,
    /// A model without a price under a tier that limits spend.
    ModelNotAllowed,
    NoRoute,
    /// Admin API: no such site or key.
    NotFound,
    /// Admin API: the site or key exists already.
    Conflict,
    /// Registration: the code or the secret was used, or expired.
    Gone,
    BodyTooLarge,
    PiiDetected,
    RateLimited,
    UpstreamError,
    UpstreamUnavailable,
    UpstreamTimeout,
    Internal,
}

impl ErrorCode {
    /// HTTP status for this code.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthenticated | ErrorCode::StaleRequest | ErrorCode::Replayed => 401,
            ErrorCode::Forbidden | ErrorCode::ModelNotAllowed => 403,
            ErrorCode::NoRoute | ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::Gone => 410,
            ErrorCode::BodyTooLarge => 413,
            ErrorCode::PiiDetected => 422,
            ErrorCode::RateLimited => 429,
            ErrorCode::UpstreamError => 502,
            ErrorCode::UpstreamUnavailable => 503,
            ErrorCode::UpstreamTimeout => 504,
            ErrorCode::Internal => 500,
        }
    }

    /// The machine-readable code in the JSON body.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::StaleRequest => "stale_request",
            ErrorCode::Replayed => "replayed",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::ModelNotAllowed => "model_not_allowed",
            ErrorCode::NoRoute => "no_route",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Gone => "gone",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::PiiDetected => "pii_detected",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::UpstreamError => "upstream_error",
            ErrorCode::UpstreamUnavailable => "upstream_unavailable",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
            ErrorCode::Internal => "internal_error",
        }
    }
}

/// A refusal or failure on the request path.
///
/// `message` is shown to the client: it is one sentence and never contains a secret,
/// a signature or body bytes. `detail` goes to the server log only (still no secrets).
#[derive(Clone, Debug)]
pub struct GatewayError {
    pub code: ErrorCode,
    pub message: String,
    pub detail: Option<String>,
    pub retry_after: Option<Duration>,
    /// Close the client connection after the response (framing errors, unread bodies).
    pub close: bool,
    /// Rarely used parts, boxed to keep the error small on the happy path.
    pub extras: Option<Box<Extras>>,
}

/// Extra response headers and JSON members of an error.
#[derive(Clone, Debug, Default)]
pub struct Extras {
    /// Extra response headers (rate-limit headers on a 429).
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Extra members of the JSON `error` object (e.g. a token budget).
    pub members: serde_json::Map<String, serde_json::Value>,
}

impl GatewayError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        GatewayError {
            code,
            message: message.into(),
            detail: None,
            retry_after: None,
            close: false,
            extras: None,
        }
    }

    /// Add a response header.
    pub fn header(mut self, name: http::HeaderName, value: http::HeaderValue) -> Self {
        self.extras
            .get_or_insert_with(Default::default)
            .headers
            .push((name, value));
        self
    }

    /// Add a member to the JSON `error` object.
    pub fn extra(mut self, key: &str, value: serde_json::Value) -> Self {
        self.extras
            .get_or_insert_with(Default::default)
            .members
            .insert(key.to_string(), value);
        self
    }

    /// Attach a log-only detail (never sent to the client).
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn retry_after(mut self, d: Duration) -> Self {
        self.retry_after = Some(d);
        self
    }

    pub fn close(mut self) -> Self {
        self.close = true;
        self
    }

    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, msg).close()
    }

    pub fn forbidden(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, msg)
    }

    pub fn upstream(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::UpstreamError, msg)
    }

    /// The JSON body of SPEC §4.
    pub fn body(&self, request_id: &str) -> Vec<u8> {
        let mut err = serde_json::Map::new();
        err.insert("code".into(), self.code.as_str().into());
        err.insert("message".into(), self.message.clone().into());
        err.insert("request_id".into(), request_id.into());
        if let Some(extras) = &self.extras {
            for (k, v) in &extras.members {
                err.insert(k.clone(), v.clone());
            }
        }
        let v = serde_json::json!({ "error": err });
        // Serialising a json! value of strings cannot fail.
        serde_json::to_vec(&v).unwrap_or_default()
    }
}

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code.as_str())?;
        if let Some(d) = &self.detail {
            write!(f, ": {d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for GatewayError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_spec_shape() {
        let e = GatewayError::new(ErrorCode::Replayed, "nonce already used").detail("keyid x");
        let v: serde_json::Value = serde_json::from_slice(&e.body("req-1")).unwrap();
        assert_eq!(v["error"]["code"], "replayed");
        assert_eq!(v["error"]["request_id"], "req-1");
        assert_eq!(v["error"]["message"], "nonce already used");
        assert!(!String::from_utf8(e.body("r")).unwrap().contains("keyid x"));
        assert_eq!(e.code.status(), 401);
    }
}
