//! The admin listener (`server.admin_listen`): `/metrics`, `/healthz`, `/readyz`, and
//! the signed admin API under `/admin/v1/` ([`crate::control::api`]).
//! Never on a client-facing port.

use super::metrics::METRICS;
use crate::state::State;
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;

/// The admin endpoints.
pub struct AdminApp {
    pub state: Arc<State>,
    /// Serves `/admin/v1/` (SPEC §8.4).
    pub control: Arc<crate::control::Control>,
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_default()
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        if session.req_header().uri.path().starts_with("/admin/") {
            return crate::control::api::handle(&self.control, session).await;
        }
        match session.req_header().uri.path() {
            "/metrics" => reply(200, "text/plain; version=0.0.4", METRICS.render()),
            "/healthz" => reply(200, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                let live = self.state.live.load();
                let now = std::time::Instant::now();
                // Fleet mode: not before the first contact with Redis was tried, so a
                // fresh node does not take traffic on the fallback policy by accident.
                if self
                    .state
                    .fleet
                    .as_ref()
                    .is_some_and(|f| !f.redis.has_tried())
                {
                    reply(503, "text/plain", b"connecting to Redis\n".to_vec())
                } else if !self.control.is_ready() {
                    reply(
                        503,
                        "text/plain",
                        b"reading the site changes from Redis\n".to_vec(),
                    )
                } else if live.upstreams.iter().any(|u| !u.circuit.is_open(now)) {
                    reply(200, "text/plain", b"ready\n".to_vec())
                } else {
                    reply(503, "text/plain", b"no upstream available\n".to_vec())
                }
            }
            _ => reply(404, "text/plain", b"not found\n".to_vec()),
        }
    }
}
