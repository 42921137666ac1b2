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
            prev: local.prev.max(prev),
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
