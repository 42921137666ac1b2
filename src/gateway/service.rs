//! The gateway service value the Pingora hooks run on (the hooks are in `gateway/mod.rs`,
//! the admission steps in `admit.rs` and `tokens.rs`).

use super::ctx::Ctx;
use crate::error::GatewayError;
use crate::state::State;
use crate::upstream::dns::Resolver;
use pingora::{Error, ErrorType};
use std::sync::Arc;

/// The gateway service: shared state plus the resolver cache. With a worker per thread
/// (`server.work_stealing: false`) each worker has its own value ([`Gateway::worker`]),
/// sharing everything but its connector.
pub struct Gateway {
    pub state: Arc<State>,
    pub resolver: Arc<Resolver>,
    /// Connections keygate opens itself (Realtime WebSockets), with the upstream's TLS.
    pub connector: pingora::connectors::TransportConnector,
    /// Self-service registration (set at start; answers only while `registration` is on).
    pub registrar: Option<Arc<crate::register::Registrar>>,
    /// The trace exporter, started on first use when `telemetry.otlp` is set at start.
    pub tracing: Arc<std::sync::OnceLock<Option<crate::telemetry::trace::Tracing>>>,
}

impl Gateway {
    pub fn new(state: Arc<State>) -> Self {
        Gateway {
            state,
            resolver: Arc::default(),
            connector: pingora::connectors::TransportConnector::new(None),
            registrar: None,
            tracing: Arc::default(),
        }
    }

    /// Another worker's gateway: the same state, resolver cache, registrar and trace
    /// exporter; its own connector (and so its own pooled connections).
    pub fn worker(&self) -> Self {
        Gateway {
            state: self.state.clone(),
            resolver: self.resolver.clone(),
            connector: pingora::connectors::TransportConnector::new(None),
            registrar: self.registrar.clone(),
            tracing: self.tracing.clone(),
        }
    }

    /// Remember `err` for `fail_to_proxy` and return the Pingora error that aborts the request.
    pub(super) fn abort(ctx: &mut Ctx, err: GatewayError) -> Box<Error> {
        let msg = err.message.clone();
        ctx.error = Some(err);
        Error::explain(ErrorType::InternalError, msg)
    }
}
