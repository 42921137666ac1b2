//! Traces on the request path: ids made at the first upstream attempt (the client's
//! `traceparent` continued, the request being authenticated by then), each attempt's
//! `traceparent` sent upstream, and the spans handed to the exporter when the request
//! ends ([`crate::telemetry::trace`]). Nothing happens without `telemetry.otlp`.

use super::ctx::Ctx;
use super::service::Gateway;
use crate::telemetry::trace::{new_span_id, AttemptSpan, ServerSpan, TraceIds, Tracing};
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use std::time::SystemTime;

/// The request's trace ids, made on first use: the client's `traceparent` continued only
/// once the client authenticated.
fn ids(t: &Tracing, session: &Session, ctx: &mut Ctx) -> TraceIds {
    let client = session
        .req_header()
        .headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|_| ctx.client.is_some());
    *ctx.trace
        .get_or_insert_with(|| TraceIds::new(client, t.settings.sample_ratio))
}

/// The `traceparent` for the current attempt, when the request has trace ids.
pub(super) fn traceparent(ctx: &Ctx) -> Option<String> {
    let ids = ctx.trace.as_ref()?;
    let span = match ctx.attempt_spans.last() {
        Some(a) if ids.sampled => a.span,
        _ => new_span_id(),
    };
    Some(ids.traceparent(span))
}

impl Gateway {
    /// The tracer, started on first use (after Pingora has daemonized: the export
    /// thread must live in the serving process).
    fn tracer(&self, ctx: &Ctx) -> Option<&Tracing> {
        self.tracing
            .get_or_init(|| {
                let s = ctx.rt.otlp.as_ref()?;
                Tracing::start(s)
                    .map_err(|e| log::error!("traces off: {e}"))
                    .ok()
            })
            .as_ref()
    }

    /// An attempt is about to connect upstream (before the connection, so that one that
    /// cannot be made has its span too): the previous attempt's client span ends, this
    /// one's starts.
    pub(super) fn trace_attempt(&self, session: &Session, ctx: &mut Ctx) {
        let Some(t) = self.tracer(ctx) else {
            return;
        };
        let Some(upstream) = ctx.upstream().cloned() else {
            return;
        };
        if !ids(t, session, ctx).sampled {
            return;
        }
        let now = SystemTime::now();
        if let Some(last) = ctx.attempt_spans.last_mut() {
            last.end.get_or_insert(now);
        }
        ctx.attempt_spans.push(AttemptSpan {
            span: new_span_id(),
            upstream,
            start: now,
            end: None,
            status: None,
        });
    }

    /// The attempt's request header: a `traceparent` naming its client span (a fresh span
    /// id when the trace is not sampled: the provider still continues the trace).
    pub(super) fn trace_header(&self, req: &mut RequestHeader, ctx: &Ctx) {
        if let Some(v) = traceparent(ctx) {
            let _ = req.insert_header("traceparent", v);
        }
    }

    /// The request ended: its spans to the exporter.
    pub(super) fn trace_finish(&self, session: &Session, ctx: &mut Ctx) {
        let Some(t) = self.tracer(ctx) else {
            return;
        };
        let ids = ids(t, session, ctx);
        if !ids.sampled {
            return;
        }
        let end = SystemTime::now();
        let route = ctx.route();
        let server = ServerSpan {
            method: session.req_header().method.as_str(),
            target: route.map_or("unrouted", |r| r.prefix.as_str()),
            start: end - ctx.started.elapsed(),
            end,
            status: ctx.status,
            site: ctx.site().map(|s| s.id.0.as_str()),
            route: route.map(|r| r.prefix.as_str()),
            system: route.map(|r| r.upstream.kind.as_str()),
            model: ctx
                .model
                .as_deref()
                .map(|m| crate::telemetry::audit::truncate(m, crate::telemetry::audit::MODEL_MAX)),
            tokens: ctx.usage.map(|u| (u.input, u.output)),
        };
        t.record(&ids, &server, &ctx.attempt_spans);
    }
}
