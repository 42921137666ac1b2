//! After the response: charge tokens, count metrics, write the audit line.

use super::ctx::Ctx;
use crate::limits::Spend;
use crate::response::usage::Usage;
use crate::state::State;
use crate::telemetry::audit;
use crate::telemetry::metrics::{self, METRICS};
use crate::upstream::circuit::Outcome;
use crate::upstream::failure::{Class, Failure};
use pingora::proxy::Session;

/// The attempt's request reached the provider, which did not answer it in time (the
/// answer's header timed out): the provider bills its input (and usually the generation it
/// went on with) though no answer came. Noted once per attempt, whichever hook sees the
/// error first; [`charge`] charges the request's input for each.
pub(super) fn note_unanswered(ctx: &mut Ctx, class: &Class, e: &pingora::Error) {
    let attempt = ctx.attempts.started;
    if matches!(class, Class::Upstream(Failure::Timeout))
        && e.etype() == &pingora::ErrorType::ReadTimedout
        && ctx.upstream_status.is_none()
        && ctx.unanswered.1 != attempt
    {
        ctx.unanswered = (ctx.unanswered.0 + 1, attempt);
    }
}

/// Settle one finished request.
pub fn finish(state: &State, session: &Session, ctx: &mut Ctx) {
    // One clock read for every duration below (the metrics' and the audit line's).
    let end = std::time::Instant::now();
    match ctx.route_series() {
        Some(series) => {
            series.count(ctx.status);
            series
                .duration
                .observe(end.saturating_duration_since(ctx.started).as_secs_f64());
            if let (Some(t), Some(up)) = (ctx.upstream_started, ctx.upstream_live()) {
                up.series()
                    .duration
                    .observe(end.saturating_duration_since(t).as_secs_f64());
            }
        }
        None => metrics::count_unrouted(ctx.status),
    }
    charge(state, ctx);
    if let (Some(_), Some(counts)) = (&ctx.pii, &ctx.pii_counts) {
        for (kind, n) in &counts.0 {
            METRICS
                .pii_replaced
                .with_label_values(&[&**kind])
                .inc_by(*n);
        }
    }
    settle_circuit(state, ctx);
    state.audit.record(&audit_line(session, ctx, end));
}

/// A half-open circuit's probe is settled when the upstream's answer header arrives (a
/// status under 500: the upstream answers). Held to the end, a stream or a Realtime
/// session kept the one probe, and so refused every other request to that upstream, from
/// every site, for its whole life.
pub fn settle_probe(state: &State, ctx: &mut Ctx) {
    if matches!(
        ctx.circuit,
        Some(crate::upstream::circuit::Permit::Probe(_))
    ) && ctx.upstream_status.is_some_and(|s| s < 500)
    {
        super::failover::record_circuit(state, ctx, Outcome::Success);
    }
}

/// Tell the attempt's circuit breaker how it ended, once: when the answer is complete
/// (from the body filter, before the client has its last byte, so that a client's next
/// request after a good half-open probe meets the circuit closed), or at the end of a
/// request that had no complete answer.
pub fn settle_circuit(state: &State, ctx: &mut Ctx) {
    let outcome = if ctx.upstream_failed || ctx.upstream_status.is_some_and(|s| s >= 500) {
        Outcome::Failure
    } else if ctx.upstream_status.is_some() {
        Outcome::Success
    } else {
        Outcome::NotTried
    };
    super::failover::record_circuit(state, ctx, outcome);
}

/// The audit line of a finished request (SPEC §6): ids, outcome, timings and usage;
/// never a secret, a signature or a body.
fn audit_line<'a>(session: &'a Session, ctx: &'a Ctx, end: std::time::Instant) -> audit::Line<'a> {
    let client = ctx.client.as_ref();
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    audit::Line {
        ts: humantime::format_rfc3339_millis(std::time::SystemTime::now()),
        request_id: &ctx.request_id,
        method: session.req_header().method.as_str(),
        path: audit::truncate(session.req_header().uri.path(), audit::PATH_MAX),
        user_agent: session
            .req_header()
            .headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| audit::truncate(ua, audit::USER_AGENT_MAX)),
        site: ctx.site().map(|s| s.id.0.as_str()),
        key_id: client.map(|c| c.key_id.0.as_str()),
        route: ctx.route().map(|r| r.prefix.as_str()),
        upstream: ctx.upstream().map(|u| u.name.as_str()),
        model: ctx
            .model
            .as_deref()
            .map(|m| audit::truncate(m, audit::MODEL_MAX)),
        status: ctx.status,
        error_code: ctx.error.as_ref().map(|e| e.code.as_str()),
        duration_ms: ms(end.saturating_duration_since(ctx.started)),
        upstream_ms: ctx
            .upstream_started
            .map(|t| ms(end.saturating_duration_since(t))),
        upstream_header_ms: ctx
            .upstream_started
            .zip(ctx.upstream_answered)
            .map(|(s, a)| ms(a.saturating_duration_since(s))),
        tokens_in: ctx.usage.map(|u| u.input),
        tokens_out: ctx.usage.map(|u| u.output),
        tokens_estimated: ctx.usage.map(|u| u.estimated),
        tokens_cached: ctx.usage.map(|u| u.cached),
        tokens_cache_write: ctx.usage.map(|u| u.cache_write),
        tokens_reasoning: ctx.usage.map(|u| u.reasoning),
        cost_usd: ctx.cost_usd,
        // The address resolved through `server.trusted_proxies` while the request was
        // admitted, else the socket peer.
        client_ip: ctx.client_ip.or_else(|| {
            session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip())
        }),
        auth: client.map(|c| c.mode.as_str()),
        credential: ctx.credential_id.as_deref(),
        upstream_request_id: ctx.upstream_request_id.as_deref(),
        pii: ctx.pii_counts.as_ref(),
        attempts: ctx.upstream().and_then(|u| {
            let outcome = match (ctx.upstream_status, &ctx.error) {
                (Some(_), _) => "answered",
                (None, Some(_)) => "failed",
                (None, None) => "not_tried",
            };
            ctx.attempts.for_audit(&u.name, outcome)
        }),
    }
}

/// Charge the site's token and USD budgets (and its tier's `models:` entry), once per request, for every answer the provider produced:
/// from the response's body filter as the body ends (before the client has the last byte, so
/// the site's next request already meets the new total), or from `finish` for answers that
/// ended any other way. Missing usage is estimated from the bytes.
///
/// Whether to charge is decided by what the provider answered, not by what the client got:
/// a client that leaves a stream before its end (status 0), or an answer keygate refused
/// after the provider produced it (`block_patterns`, a secret, a size or time limit), still
/// spent the provider's tokens. A provider 5xx is not charged, nor its refusal of
/// keygate's own credential.
pub fn charge(state: &State, ctx: &mut Ctx) {
    let answered =
        ctx.upstream_status.is_some_and(|s| (1..500).contains(&s)) && !ctx.credential_refused;
    let unanswered = u64::from(ctx.unanswered.0);
    if ctx.charged
        || ctx.upstream_started.is_none()
        || !(answered || unanswered > 0)
        || ctx.route().is_none()
    {
        return;
    }
    ctx.charged = true;
    // A stream's output is its text, not its framing.
    let output_bytes = ctx.response.output_bytes().unwrap_or(ctx.response_bytes);
    let estimate = Usage::estimate(ctx.request_bytes, output_bytes);
    let mut usage = match ctx.usage {
        _ if !answered => Usage {
            estimated: true,
            ..Usage::default()
        },
        None => estimate,
        Some(u) if ctx.answer_complete => u,
        // The answer stopped before its end: the report so far may be a first count
        // (Anthropic's `message_start` says 1 output token), so the output is at least
        // what was read.
        Some(mut u) => {
            if estimate.output > u.output {
                u.output = estimate.output;
                u.estimated = true;
            }
            u
        }
    };
    // Attempts the provider took and never answered in time: their input at least.
    if unanswered > 0 {
        let input = Usage::estimate(ctx.request_bytes, 0).input;
        usage.input = usage.input.saturating_add(input.saturating_mul(unanswered));
        usage.estimated = true;
    }
    ctx.usage = Some(usage);
    let micro_usd = price(ctx, &usage);
    let Some(up) = ctx.upstream_live() else {
        return;
    };
    let series = up.series();
    series.tokens_in.inc_by(usage.input);
    series.tokens_out.inc_by(usage.output);
    if let Some(site) = ctx.site() {
        let spend = Spend {
            tokens: usage.total(),
            micro_usd,
        };
        let now_ms = crate::clock::now_ms();
        let limiter = state.limiter.load();
        limiter.charge(site.limit_key, ctx.model_limit.as_ref(), spend, now_ms);
        super::anomaly::tokens(state, &ctx.rt, site, spend.tokens, now_ms);
    }
}

/// What `usage` cost, when the request's model has a price: into `ctx.cost_usd` and
/// `keygate_cost_usd_total{route,model}` (the label is the `prices:` key, so its values are
/// bounded by the config, not by what clients send). Returns the micro-USD to charge
/// (0 when unpriced).
pub fn price(ctx: &mut Ctx, usage: &Usage) -> u64 {
    let (Some(model), Some(route)) = (ctx.model.as_deref(), ctx.route()) else {
        return 0;
    };
    // The model the provider served and bills: the answering upstream's `model_map` name
    // when it has a price (a fallback may serve a dearer model), else the client's.
    let served = ctx
        .upstream()
        .and_then(|u| u.model_map.get(model))
        .and_then(|m| ctx.rt.prices.find(m));
    let Some((key, p)) = served.or_else(|| ctx.rt.prices.find(model)) else {
        return 0;
    };
    let cost = p.cost(usage);
    metrics::count_cost(&route.prefix, key, cost);
    *ctx.cost_usd.get_or_insert(0.0) += cost;
    p.micro_usd(usage)
}
