//! Small pieces every file of the mock shares: the response body type, plain whole
//! answers (`full`, `json_response`), and reading a request's credential and its
//! millisecond headers; what the mock received ([`MockState`]).

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::{Response, StatusCode};
use serde_json::Value;
use std::convert::Infallible;

pub(super) type Body = BoxBody<Bytes, Infallible>;

pub(super) fn full(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

pub(super) fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    full(status, "application/json", v.to_string())
}

pub(super) fn received_credential(headers: &http::HeaderMap) -> String {
    for h in ["authorization", "x-api-key", "x-goog-api-key"] {
        if let Some(v) = headers.get(h).and_then(|v| v.to_str().ok()) {
            return v.trim_start_matches("Bearer ").to_string();
        }
    }
    String::new()
}

pub(super) fn header_ms(req: &http::request::Parts, name: &str, default: u64) -> u64 {
    header_str(req, name, "").parse().unwrap_or(default)
}

/// A request header's text, or `default`.
pub(super) fn header_str<'a>(
    req: &'a http::request::Parts,
    name: &str,
    default: &'a str,
) -> &'a str {
    req.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(default)
}

/// Requests remembered for `/__mock/requests`.
const RECORD_LIMIT: usize = 256;

/// Shared state: what was received.
#[derive(Default)]
pub struct MockState {
    pub(super) count: std::sync::atomic::AtomicU64,
    /// Connections accepted (`/__mock/requests` reports it: the upstream connections a
    /// proxy opened).
    pub(super) connections: std::sync::atomic::AtomicU64,
    pub(super) recent: parking_lot::Mutex<std::collections::VecDeque<Value>>,
}

impl MockState {
    /// Count a request and keep it among the recent ones.
    pub(super) fn record(&self, record: Value) {
        self.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut r = self.recent.lock();
        if r.len() >= RECORD_LIMIT {
            r.pop_front();
        }
        r.push_back(record);
    }
}
