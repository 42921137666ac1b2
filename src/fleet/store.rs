//! The limiter's [`CounterStore`] in fleet mode: the local sketch, judged against the
//! fleet-wide view while Redis answers.

use super::Fleet;
use crate::limits::window::Counts;
use crate::limits::{Counter, CounterStore, LocalStore, SiteKey};
use std::sync::Arc;

/// A [`CounterStore`] over the local sketch and the fleet view.
pub struct FleetStore {
    local: LocalStore,
    fleet: Arc<Fleet>,
}

impl FleetStore {
    pub fn new(local: LocalStore, fleet: Arc<Fleet>) -> Self {
        FleetStore { local, fleet }
    }

    /// Record `n` in the fleet deltas (also while Redis is down: flushed on recovery) and
    /// judge on the larger of the local and the fleet-wide counts while Redis is up.
    fn merge(&self, counter: Counter, key: SiteKey, n: i64, local: Counts, now_ms: u64) -> Counts {
        let (prev, curr) = self.fleet.counters.update(counter, key.site, n, now_ms);
        if !self.fleet.is_up() {
            return local;
        }
        Counts {
            // A fixed window (calendar month) starts from zero: no `prev`.
            prev: if local.sliding {
                local.prev.max(prev)
            } else {
                0
            },
            curr: local.curr.max(curr),
            ..local
        }
    }
}

impl CounterStore for FleetStore {
    fn add(&self, counter: Counter, key: SiteKey, n: i64, now_ms: u64) -> Counts {
        let local = self.local.add(counter, key, n, now_ms);
        self.merge(counter, key, n, local, now_ms)
    }

    fn get(&self, counter: Counter, key: SiteKey, now_ms: u64) -> Counts {
        let local = self.local.get(counter, key, now_ms);
        self.merge(counter, key, 0, local, now_ms)
    }

    fn local(&self) -> &LocalStore {
        &self.local
    }

    fn quota_divisor(&self) -> u64 {
        if self.fleet.is_up() {
            1
        } else {
            self.fleet.settings().nodes
        }
    }
}

/// The fleet store as one signed request's admission sees it once the fleet has decided
/// it ([`super::exact`]): the decided budgets and request windows read the totals the
/// decision was made on, so the limiter reaches the same decision and renders it as
/// usual; counts go to this node's sketch only (Redis already has them). Everything else
/// reads through to the fleet store.
pub struct Decided<'a> {
    inner: &'a dyn CounterStore,
    decision: &'a super::exact::Decision,
}

impl<'a> Decided<'a> {
    pub fn new(inner: &'a dyn CounterStore, decision: &'a super::exact::Decision) -> Self {
        Decided { inner, decision }
    }

    /// `local` (for the window's timing) with the decided totals.
    fn with_totals(local: Counts, (prev, curr): (i64, i64)) -> Counts {
        Counts {
            prev: if local.sliding { prev } else { 0 },
            curr,
            ..local
        }
    }
}

impl CounterStore for Decided<'_> {
    fn add(&self, counter: Counter, key: SiteKey, n: i64, now_ms: u64) -> Counts {
        if !self.decision.counts_requests_in(counter) {
            return self.inner.add(counter, key, n, now_ms);
        }
        let local = self.inner.local().add(counter, key, n, now_ms);
        match self.decision.totals(counter) {
            // The totals are from before this request: an add sees it counted.
            Some((prev, curr)) => Self::with_totals(local, (prev, curr + n.max(0))),
            None => local,
        }
    }

    fn get(&self, counter: Counter, key: SiteKey, now_ms: u64) -> Counts {
        match self.decision.totals(counter) {
            Some(totals) => Self::with_totals(self.inner.local().get(counter, key, now_ms), totals),
            None => self.inner.get(counter, key, now_ms),
        }
    }

    fn local(&self) -> &LocalStore {
        self.inner.local()
    }

    /// The fleet decided on whole quotas.
    fn quota_divisor(&self) -> u64 {
        1
    }
}
