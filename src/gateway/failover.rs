//! Failover between a route's upstreams (SPEC §8.2), decided here for every hook that
//! sees an attempt fail: whether another attempt may be made, and which.
//!
//! Another attempt is made only while nothing has been sent to the client, the request
//! body can be sent again (Pingora's retry buffer holds it whole: bodies up to 64 KiB, or
//! any body not read yet), the route's `total_timeout_ms` has time left, and fewer than
//! [`MAX_ATTEMPTS`](crate::upstream::failover::MAX_ATTEMPTS) were made. A credential
//! refused (401, 429) gives way to the same upstream's next credential first; otherwise
//! the next upstream of the chain whose circuit lets a request through is tried. A
//! circuit is consulted only when its upstream is about to be tried, so a half-open
//! upstream's probe is never held by a request that goes elsewhere, and a probe that
//! fails costs the client nothing when a fallback answers.

use super::ctx::Ctx;
use super::service::Gateway;
use crate::error::{ErrorCode, GatewayError};
use crate::response::validate::Endpoint;
use crate::state::State;
use crate::telemetry::metrics::METRICS;
use crate::upstream::circuit::{Outcome, Permit};
use crate::upstream::failover::Reason;
use crate::upstream::failure::Failure;
use pingora::proxy::Session;
use std::time::{Duration, Instant};

/// The next attempt's upstream: its chain position, its circuit permit, and the
/// positions before it skipped because their circuits are open.
struct Next {
    pos: usize,
    permit: Permit,
    skipped: Vec<usize>,
}

/// The first upstream from chain position `from` whose circuit lets a request through;
/// `Err`: every one is open, with the shortest wait.
fn admit_from(ctx: &Ctx, from: usize) -> Result<Next, Option<Duration>> {
    let route = ctx.route().ok_or(None)?;
    let now = Instant::now();
    let mut skipped = Vec::new();
    let mut wait: Option<Duration> = None;
    let mut pos = from;
    while let Some(up) = route.chain(pos) {
        if let Some(live) = ctx.live.upstream_for(up) {
            let admitted = live.circuit.admit(now);
            live.series().circuit_state.set(live.circuit.state_code());
            match admitted {
                Ok(permit) => {
                    return Ok(Next {
                        pos,
                        permit,
                        skipped,
                    })
                }
                Err(w) => wait = Some(wait.map_or(w, |x| x.min(w))),
            }
        }
        skipped.push(pos);
        pos += 1;
    }
    Err(wait)
}

/// Record the attempts skipped on the way to `next` (circuit open), each a fallback from
/// the one before it; `from`: the attempt given up, if any, with its reason.
fn move_to(ctx: &mut Ctx, next: Next, from: Option<Reason>) {
    let Some(route) = ctx.route() else { return };
    let name = |pos: usize| route.chain(pos).map_or("", |u| u.name.as_str());
    let mut hops: Vec<(usize, Reason)> = Vec::new();
    if let Some(reason) = from {
        hops.push((ctx.attempts.pos, reason));
    }
    hops.extend(next.skipped.iter().map(|&p| (p, Reason::CircuitOpen)));
    let tos = hops.iter().skip(1).map(|h| h.0).chain([next.pos]);
    let mut given_up = Vec::new();
    for ((pos, reason), to) in hops.iter().zip(tos) {
        METRICS
            .upstream_fallbacks
            .with_label_values(&[&route.prefix, name(*pos), name(to), reason.label()])
            .inc();
        log::info!(
            "request {}: upstream {} given up ({}); trying {}",
            ctx.request_id,
            name(*pos),
            reason.label(),
            name(to)
        );
        given_up.push((name(*pos).to_string(), *reason));
    }
    for (up, reason) in given_up {
        ctx.attempts.give_up(&up, reason);
    }
    ctx.attempts.move_to(next.pos);
    ctx.circuit = Some(next.permit);
}

/// Tell this attempt's circuit breaker how it ended (the breaker in force now: a reload
/// may have come since the request started, and that breaker took over the state the
/// permit came from).
pub(super) fn record_circuit(state: &State, ctx: &mut Ctx, outcome: Outcome) {
    let live = state.live.load();
    let up = ctx.upstream().and_then(|u| live.upstream_for(u));
    if let (Some(permit), Some(up)) = (ctx.circuit.take(), up) {
        up.circuit.record(permit, outcome, Instant::now());
        up.series().circuit_state.set(up.circuit.state_code());
    }
}

impl Gateway {
    /// At admission: the first attempt goes to the first upstream of the route's chain
    /// whose circuit lets it through. `Err`: 503 with `Retry-After` when none does.
    pub(super) fn first_attempt(ctx: &mut Ctx) -> Result<(), GatewayError> {
        match admit_from(ctx, 0) {
            Ok(next) => {
                move_to(ctx, next, None);
                Ok(())
            }
            Err(wait) => {
                let e = GatewayError::new(
                    ErrorCode::UpstreamUnavailable,
                    "The provider is unavailable; try again later.",
                );
                Err(match wait {
                    Some(w) => e.retry_after(w),
                    None => e,
                })
            }
        }
    }

    /// Give this attempt up for `reason` if another may be made, and choose it; `false`
    /// leaves the attempt as it failed (the client gets its answer or its error).
    /// `failure`: what Pingora reported, counted against the upstream given up.
    pub(super) fn fail_over(
        &self,
        session: &Session,
        ctx: &mut Ctx,
        reason: Reason,
        failure: Option<Failure>,
    ) -> bool {
        if super::respond::final_header_written(session)
            || session.as_downstream().retry_buffer_truncated()
            || !ctx.attempts.may_retry()
            || ctx.deadline().is_some_and(|d| Instant::now() >= d)
        {
            return false;
        }
        let Some(up) = ctx.upstream().cloned() else {
            return false;
        };
        if reason.blames_credential() {
            if let Some(id) = ctx.credential_id.clone() {
                ctx.attempts.tried_credentials.push(id);
            }
            let now_ms = crate::clock::now_ms();
            let tried = &ctx.attempts.tried_credentials;
            if ctx
                .upstream_live()
                .is_some_and(|l| l.has_fresh_credential(&up, now_ms, tried))
            {
                log::info!(
                    "request {}: upstream {} refused credential {} ({}); trying another",
                    ctx.request_id,
                    up.name,
                    ctx.credential_id.as_deref().unwrap_or("-"),
                    reason.label()
                );
                ctx.attempts.give_up(&up.name, reason);
                ctx.begin_attempt();
                return true;
            }
        }
        let Ok(next) = admit_from(ctx, ctx.attempts.pos + 1) else {
            return false;
        };
        if let Some(f) = failure {
            crate::upstream::count_failure(&up.name, f);
        }
        let outcome = match reason.is_provider_failure() {
            true => Outcome::Failure,
            false => Outcome::Success,
        };
        record_circuit(&self.state, ctx, outcome);
        move_to(ctx, next, Some(reason));
        ctx.begin_attempt();
        true
    }
}

/// Is the provider's answer `status` its refusal of keygate's credential (a 401), or of
/// the account's access to a stateless endpoint or a model (a 403 there)? Such an answer
/// is not the client's: it names the key (OpenAI: its prefix and last four characters),
/// the organization and the project, and a client reads it as its own key failing; it
/// becomes keygate's 502 and is not charged. A 403 passes on any other endpoint, and on a
/// `stored_objects` route: there it may be the client's (a stored file it may not read,
/// or name in a request).
pub(super) fn refuses_credential(ctx: &Ctx, status: u16) -> bool {
    let endpoint = ctx.upstream().map_or(Endpoint::Other, |u| {
        Endpoint::of(u.kind, &ctx.upstream_path)
    });
    let stored = ctx.route().is_some_and(|r| r.stored_objects);
    status == 401 || (status == 403 && endpoint != Endpoint::Other && !stored)
}

/// Whose fault Pingora's error `e` is. A timeout while the client's body is still coming
/// is the client's: the upstream's timer ran while keygate held the body back (or passed
/// on a trickle), and counted against the provider it opened circuits for every site.
pub(super) fn classify(
    session: &mut Session,
    e: &pingora::Error,
) -> crate::upstream::failure::Class {
    use crate::upstream::failure::{Class, Failure};
    match crate::upstream::failure::classify(e) {
        // Only waiting for the answer: an upstream that stops reading an upload (a write
        // timeout, the client's body held up by the back-pressure) is the upstream's.
        Class::Upstream(Failure::Timeout) | Class::Unattributed(Failure::Timeout)
            if e.etype() == &pingora::ErrorType::ReadTimedout
                && !session.as_downstream_mut().is_body_done() =>
        {
            Class::Client { timed_out: true }
        }
        class => class,
    }
}
