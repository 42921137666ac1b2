//! After the response: charge tokens, count metrics, write the audit line.

use super::ctx::Ctx;
use crate::limits;
use crate::response::usage::Usage;
use crate::state::State;
use crate::telemetry::metrics::METRICS;
use pingora::proxy::Session;

/// Settle one finished request.
pub fn finish(state: &State, session: &Session, ctx: &mut Ctx) {
    let route = ctx
        .route()
        .map_or("none", |r| r.prefix.as_str())
        .to_string();
    let status = ctx.status.to_string();
    METRICS
        .requests_total
        .with_label_values(&[route.as_str(), status.as_str()])
        .inc();
    METRICS
        .request_duration
        .with_label_values(&[route.as_str()])
        .observe(ctx.started.elapsed().as_secs_f64());
    if let (Some(up), Some(t)) = (
        ctx.route().map(|r| r.upstream.clone()),
        ctx.upstream_started,
    ) {
        METRICS
            .upstream_duration
            .with_label_values(&[up.name.as_str()])
            .observe(t.elapsed().as_secs_f64());
        // Tokens are charged for every answer the provider produced.
        if ctx.status > 0 && ctx.status < 500 {
            let usage = ctx
                .usage
                .unwrap_or_else(|| Usage::estimate(ctx.request_bytes, ctx.response_bytes));
            ctx.usage = Some(usage);
            METRICS
                .tokens_total
                .with_label_values(&[up.name.as_str(), "in"])
                .inc_by(usage.input);
            METRICS
                .tokens_total
                .with_label_values(&[up.name.as_str(), "out"])
                .inc_by(usage.output);
            if let Some(site) = ctx.site() {
                state
                    .limiter
                    .load()
                    .charge_tokens(site.limit_key, usage.total(), limits::now_ms());
            }
        }
    }
    state.audit.record(session, ctx);
}
