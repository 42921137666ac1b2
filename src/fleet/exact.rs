//! Exact fleet-wide request limits for signed requests (`fleet.exact_limits`).
//!
//! A signed request already makes one round trip to Redis for its nonce. With exact
//! limits that round trip is a server-side script (`admit.lua`) that claims the nonce
//! and, in the same atomic step, reads the site's budgets and request windows, decides
//! the admission with the limiter's arithmetic and counts an admitted request. No two
//! nodes can then both take the last unit of a quota. The node replays the decision
//! through its limiter ([`super::store::Decided`]) so that refusals, `Retry-After` and
//! `RateLimit` headers come out as on one node. Bearer keys and browser tokens carry no
//! nonce and keep the synced counts (README "Fleet mode", the overshoot bound).

use super::conn::{RedisDown, Req};
use super::Fleet;
use crate::auth::NonceClaim;
use crate::limits::tier::Tier;
use crate::limits::{Counter, LimitName, Refusal};
use parking_lot::Mutex;
use std::sync::Arc;

/// The script, loaded once per Redis (EVALSHA, EVAL when Redis does not know it).
static SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(include_str!("admit.lua")));

/// What the fleet decided for one signed request.
pub enum Exact {
    /// Another node (or this one) has seen the nonce.
    Replayed,
    Decided(Decision),
}

/// The fleet's decision on one signed request, and the totals it was made on.
pub struct Decision {
    /// The script counted the request in every window.
    pub admitted: bool,
    /// (counter, previous, current) per budget, with this node's uncounted charges.
    pub budgets: Vec<(Counter, i64, i64)>,
    /// (counter, previous, current) per request window, before this request.
    pub windows: Vec<(Counter, i64, i64)>,
    /// What to take back if the request is refused after all (once).
    refund: Mutex<Option<Refund>>,
    /// The time the script decided at: the node replays the decision at the same time
    /// (a later one weighs the previous window less, and could admit what the fleet
    /// refused and never counted).
    pub now_ms: u64,
}

struct Refund {
    fleet: Arc<Fleet>,
    site: u64,
    now_ms: u64,
}

impl Decision {
    /// The totals of `counter` the decision was made on, if it decided that counter.
    pub fn totals(&self, counter: Counter) -> Option<(i64, i64)> {
        self.budgets
            .iter()
            .chain(&self.windows)
            .find(|(c, ..)| *c == counter)
            .map(|&(_, p, c)| (p, c))
    }

    /// The node's replay of the decision, held to it: a replay that would admit what the
    /// fleet refused (and so never counted) is refused too, on the first window or budget
    /// the fleet decided.
    pub fn confirm<A>(&self, replay: Result<A, Refusal>) -> Result<A, Refusal> {
        match replay {
            Ok(_) if !self.admitted => {
                log::warn!(
                    "fleet: the limiter's replay admitted a request the fleet refused; refused"
                );
                let limit = self
                    .windows
                    .iter()
                    .chain(&self.budgets)
                    .next()
                    .map_or(LimitName::RequestsPerMinute, |(c, ..)| c.limit_name());
                Err(Refusal::of(limit, Some(std::time::Duration::from_secs(1))))
            }
            other => other,
        }
    }

    /// Whether `counter` is one of the request windows the script counted in.
    pub fn counts_requests_in(&self, counter: Counter) -> bool {
        self.windows.iter().any(|(c, ..)| *c == counter)
    }

    /// The request was refused after the fleet admitted it (by a check that comes later,
    /// or by concurrency): take its count back, through the next sync. Idempotent.
    pub fn refund(&self) {
        let Some(r) = self.refund.lock().take() else {
            return;
        };
        for &(counter, ..) in &self.windows {
            r.fleet.counters.update(counter, r.site, -1, r.now_ms);
        }
    }
}

/// Claim the nonce and decide the admission of a request of site `site` under `tier`,
/// in one round trip. `Err` while Redis is down or the call fails (the caller falls back
/// to the outage policy).
pub async fn claim_and_admit(
    fleet: &Arc<Fleet>,
    claim: &NonceClaim,
    site: u64,
    tier: &Tier,
    now_ms: u64,
) -> Result<Exact, RedisDown> {
    if !fleet.is_up() {
        return Err(RedisDown);
    }
    let crate::limits::AdmissionPlan { budgets, windows } = crate::limits::admission_plan(tier);
    let now = crate::clock::secs(now_ms);
    let mut inv = SCRIPT.prepare_invoke();
    inv.key(fleet.nonce_key(claim));
    inv.arg(claim.expires_at.max(now + 1))
        .arg(budgets.len())
        .arg(windows.len());
    let counters = &fleet.counters;
    let mut pending = Vec::with_capacity(budgets.len());
    for &(counter, limit) in &budgets {
        let period = counter.period();
        let epoch = period.epoch(now_ms);
        let (pp, pc) = counters.pending(counter, site, epoch);
        pending.push((pp, pc));
        inv.key(counters.key(counter, site, epoch))
            .key(counters.key(counter, site, epoch.saturating_sub(1)));
        inv.arg(limit)
            .arg(weight(period.prev_weight(now_ms)))
            .arg(pc)
            .arg(pp);
    }
    for &(counter, quota) in &windows {
        let period = counter.period();
        let epoch = period.epoch(now_ms);
        inv.key(counters.key(counter, site, epoch))
            .key(counters.key(counter, site, epoch.saturating_sub(1)));
        inv.arg(quota)
            .arg(weight(period.prev_weight(now_ms)))
            .arg(super::counters::ttl(counter));
    }
    let reply: Vec<i64> = fleet.redis.call("nonce", Req::Script(&inv)).await?;
    let (status, totals) = reply.split_first().ok_or(RedisDown)?;
    if *status == 0 {
        return Ok(Exact::Replayed);
    }
    if totals.len() != 2 * (budgets.len() + windows.len()) {
        log::warn!("fleet: unexpected answer from the admission script; falling back");
        return Err(RedisDown);
    }
    let pair = |i: usize| (totals[2 * i], totals[2 * i + 1]);
    let admitted = *status == 1;
    if admitted {
        for &(counter, _) in &windows {
            counters.counted_by_script(counter, site, now_ms);
        }
    }
    Ok(Exact::Decided(Decision {
        admitted,
        budgets: budgets
            .iter()
            .zip(&pending)
            .enumerate()
            .map(|(i, (&(counter, _), &(pp, pc)))| {
                let (p, c) = pair(i);
                (counter, p + pp, c + pc)
            })
            .collect(),
        windows: windows
            .iter()
            .enumerate()
            .map(|(i, &(counter, _))| {
                let (p, c) = pair(budgets.len() + i);
                (counter, p, c)
            })
            .collect(),
        refund: Mutex::new(admitted.then(|| Refund {
            fleet: fleet.clone(),
            site,
            now_ms,
        })),
        now_ms,
    }))
}

/// A weight as the script reads it: the shortest text that parses back to the same
/// double, so Lua computes bit for bit what the limiter computes.
fn weight(w: f64) -> String {
    format!("{w:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(windows: Vec<(Counter, i64, i64)>, budgets: Vec<(Counter, i64, i64)>) -> Decision {
        Decision {
            admitted: false,
            budgets,
            windows,
            refund: Mutex::new(None),
            now_ms: 0,
        }
    }

    #[test]
    fn a_replay_never_admits_what_the_fleet_refused() {
        let d = refused(vec![(Counter::RequestsHour, 60, 30)], vec![]);
        let r = d.confirm(Ok(())).unwrap_err();
        assert_eq!(r.limit, LimitName::RequestsPerHour);
        assert!(r.retry_after.is_some());
        let d = refused(vec![], vec![(Counter::UsdDay, 0, 9)]);
        assert_eq!(d.confirm(Ok(())).unwrap_err().limit, LimitName::UsdPerDay);
        // The replay's own refusal (with its Retry-After and RateLimit) is kept.
        let own = Refusal::of(LimitName::RequestsPerMinute, None);
        assert!(d.confirm::<()>(Err(own)).unwrap_err().retry_after.is_none());
        // An admission the fleet made passes.
        let mut d = refused(vec![(Counter::RequestsMinute, 0, 0)], vec![]);
        d.admitted = true;
        assert!(d.confirm(Ok(())).is_ok());
    }
}
