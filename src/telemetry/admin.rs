//! The admin listener (`server.admin_listen`): `/metrics`, `/healthz`, `/readyz`.
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
