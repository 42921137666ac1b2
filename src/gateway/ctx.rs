//! Per-request state, created in `new_ctx` and dropped after `logging`.

use crate::auth::AuthedClient;
use crate::config::{Route, Runtime};
use crate::error::GatewayError;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use std::time::Instant;

/// How the request body reaches the upstream.
#[derive(Debug, Default)]
pub enum BodyPlan {
    /// Not decided yet (request refused before the body was looked at).
    #[default]
    Undecided,
    /// Read and verified in `request_filter` (≤ 64 KiB): Pingora's retry buffer
    /// forwards it; `rewritten` replaces it when validation changed the body.
    Buffered {
        len: usize,
        rewritten: Option<Bytes>,
    },
    /// Larger bodies with a known length: held back in `request_body_filter`, verified
    /// at the end, then emitted whole (upstream framing is chunked, so it may change).
    HoldBack { buf: BytesMut, limit: usize },
}

/// Everything one request carries through the hooks.
pub struct Ctx {
    /// The one config snapshot this request runs on, start to end.
    pub rt: Arc<Runtime>,
    pub request_id: String,
    pub started: Instant,
    pub tls: bool,
    /// Index into `rt.routes`.
    pub route: Option<usize>,
    pub client: Option<AuthedClient>,
    /// Path and query sent upstream.
    pub upstream_path: String,
    pub body: BodyPlan,
    pub model: Option<String>,
    /// The refusal to render in `fail_to_proxy`, when a hook failed on purpose.
    pub error: Option<GatewayError>,
    /// Status sent to the client (for the audit log).
    pub status: u16,
    pub upstream_started: Option<Instant>,
    pub credential_id: Option<String>,
}

impl Ctx {
    pub fn new(rt: Arc<Runtime>) -> Self {
        Ctx {
            rt,
            request_id: String::new(),
            started: Instant::now(),
            tls: false,
            route: None,
            client: None,
            upstream_path: String::new(),
            body: BodyPlan::Undecided,
            model: None,
            error: None,
            status: 0,
            upstream_started: None,
            credential_id: None,
        }
    }

    /// The matched route (set by `request_filter`).
    pub fn route(&self) -> Option<&Route> {
        self.route.and_then(|i| self.rt.routes.get(i))
    }
}
