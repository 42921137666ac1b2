//! The gateway's side of watching a response ([`crate::response::watch`]): the rules
//! built from this request's route, and what a refusal costs (the metric, the log line,
//! the client's error).

use super::ctx::Ctx;
use crate::error::GatewayError;
use crate::response::egress::Rules;
use crate::response::validate::{Endpoint, Rejection};
use crate::response::watch::{self, Refused, ResponseWatch, WatchRules};
use crate::telemetry::metrics::METRICS;
use bytes::Bytes;
use http::response::Parts;

/// Bound on an answer without a route (never proxied; a safe default).
const DEFAULT_MAX_RESPONSE: usize = 8 * 1024 * 1024;

/// Count and log a refused response; the error the client gets.
fn reject(ctx: &Ctx, r: Rejection) -> GatewayError {
    let up = ctx.upstream().map_or("none", |u| u.name.as_str());
    METRICS
        .response_rejected
        .with_label_values(&[up, r.reason()])
        .inc();
    log::warn!(
        "request {}: upstream {up} response refused: {}",
        ctx.request_id,
        r.reason()
    );
    r.to_error()
}

fn refused(ctx: &Ctx, r: Refused) -> GatewayError {
    match r {
        Refused::Rejected(r) => reject(ctx, r),
        Refused::StreamStopped => GatewayError::upstream("The provider's stream was stopped."),
        Refused::BadHeader => GatewayError::upstream("The provider's response was invalid."),
    }
}

/// What this request's answer is checked against.
fn rules(ctx: &Ctx) -> WatchRules<'_> {
    WatchRules {
        egress: Rules {
            secrets: &ctx.rt.scanner,
            patterns: ctx.route().and_then(|r| r.block_patterns.as_ref()),
        },
        max_bytes: ctx
            .upstream()
            .map_or(DEFAULT_MAX_RESPONSE, |u| u.max_response_bytes),
        deadline: ctx.deadline(),
        request_id: &ctx.request_id,
        pii: ctx.pii.as_ref(),
        client_model: super::attempt::client_model(ctx),
        hide_usage_chunk: ctx.hide_usage_chunk,
    }
}

/// The names of the headers the client will get (after the allow-list) hold no secret.
pub fn check_names(resp: &Parts, ctx: &Ctx) -> Result<(), GatewayError> {
    match watch::secret_in_names(&resp.headers, &rules(ctx)) {
        true => Err(reject(ctx, Rejection::SecretEgress)),
        false => Ok(()),
    }
}

/// Check the response header; decide how to watch the body.
pub fn start(resp: &mut Parts, ctx: &mut Ctx) -> Result<(), GatewayError> {
    ctx.set_upstream_status(resp.status.as_u16());
    ctx.upstream_answered = Some(std::time::Instant::now());
    let endpoint = ctx.upstream().map_or(Endpoint::Other, |u| {
        Endpoint::of(u.kind, &ctx.upstream_path)
    });
    let watch = watch::start(resp, &rules(ctx), endpoint).map_err(|r| refused(ctx, r))?;
    if let ResponseWatch::Binary { .. } = watch {
        // Audio says nothing of tokens: the text that was spoken is the estimate.
        ctx.usage = Some(crate::response::usage::Usage::estimate(
            ctx.request_bytes,
            0,
        ));
    }
    ctx.response = watch;
    Ok(())
}

/// See one chunk of the body; may replace it. `Err` aborts the response.
pub fn chunk(
    body: &mut Option<Bytes>,
    end_of_stream: bool,
    ctx: &mut Ctx,
) -> Result<(), GatewayError> {
    ctx.response_bytes += body.as_ref().map_or(0, Bytes::len);
    if !ctx.first_token_seen
        && body.as_ref().is_some_and(|b| !b.is_empty())
        && ctx.upstream_status.is_some_and(|s| (200..300).contains(&s))
    {
        ctx.first_token_seen = true;
        if let Some(series) = ctx.route_series() {
            series
                .time_to_first_token
                .observe(ctx.started.elapsed().as_secs_f64());
        }
    }
    let mut watch = std::mem::take(&mut ctx.response);
    let mut usage = ctx.usage.take();
    let status = ctx.upstream_status.unwrap_or(200);
    let seen = watch.chunk(
        body,
        end_of_stream,
        ctx.response_bytes,
        &rules(ctx),
        status,
        &mut usage,
    );
    ctx.usage = usage;
    ctx.response = watch;
    match seen {
        Ok(seen) => {
            if let Some(r) = seen.stopped_by {
                // The stream goes on to its error event: counted, not an abort.
                let _ = reject(ctx, r);
            }
            Ok(())
        }
        Err(r) => Err(refused(ctx, r)),
    }
}
