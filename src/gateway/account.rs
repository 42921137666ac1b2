//! After the response: charge tokens, count metrics, write the audit line.

use super::ctx::Ctx;
use crate::limits;
use crate::response::usage::Usage;
use crate::state::State;
use crate::telemetry::metrics::{self, METRICS};
use crate::upstream::circuit::Outcome;
use pingora::proxy::Session;

/// Settle one finished request.
pub fn finish(state: &State, session: &Session, ctx: &mut Ctx) {
    match ctx.route() {
        Some(route) => {
            let series = route.series();
            series.count(ctx.status);
            series.duration.observe(ctx.started.elapsed().as_secs_f64());
            if let Some(t) = ctx.upstream_started {
                route
                    .upstream
                    .series()
                    .duration
                    .observe(t.elapsed().as_secs_f64());
            }
        }
        None => metrics::count_unrouted(ctx.status),
    }
    charge_tokens(state, ctx);
    if let (Some(_), Some(counts)) = (&ctx.pii, &ctx.pii_counts) {
        for (kind, n) in &counts.0 {
            METRICS
                .pii_replaced
                .with_label_values(&[&**kind])
                .inc_by(*n);
        }
    }
    if let (Some(permit), Some(route)) = (ctx.circuit, ctx.route()) {
        let outcome = if ctx.upstream_failed || ctx.upstream_status.is_some_and(|s| s >= 500) {
            Outcome::Failure
        } else if ctx.upstream_status.is_some() {
            Outcome::Success
        } else {
            Outcome::NotTried
        };
        let breaker = &route.upstream.circuit;
        breaker.record(permit, outcome, std::time::Instant::now());
        route
            .upstream
            .series()
            .circuit_state
            .set(breaker.state_code());
    }
    state.audit.record(session, ctx);
}

/// Charge the site's token budget, once per request, for every answer the provider produced:
/// from the response's body filter as the body ends (before the client has the last byte, so
/// the site's next request already meets the new total), or from `finish` for answers that
/// ended any other way. Missing usage is estimated from the bytes.
pub fn charge_tokens(state: &State, ctx: &mut Ctx) {
    if ctx.charged
        || ctx.upstream_started.is_none()
        || !(1..500).contains(&ctx.status)
        || ctx.route().is_none()
    {
        return;
    }
    ctx.charged = true;
    let usage = ctx
        .usage
        .unwrap_or_else(|| Usage::estimate(ctx.request_bytes, ctx.response_bytes));
    ctx.usage = Some(usage);
    let Some(route) = ctx.route() else { return };
    let series = route.upstream.series();
    series.tokens_in.inc_by(usage.input);
    series.tokens_out.inc_by(usage.output);
    if let Some(site) = ctx.site() {
        state
            .limiter
            .load()
            .charge_tokens(site.limit_key, usage.total(), limits::now_ms());
    }
}
