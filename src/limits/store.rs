//! Where a site's counts live: the [`CounterStore`] seam and the process-local counters,
//! one per configured site (see the [module docs](super)).

use super::window::{self, Counts, Period, SlidingWindow};
use std::collections::HashMap;
use std::time::Duration;

/// The counters a site has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counter {
    RequestsMinute,
    RequestsHour,
    RequestsDay,
    TokensDay,
    /// Micro-USD spent.
    UsdDay,
    UsdMonth,
}

/// Sketches per store: one per counter.
pub(super) const COUNTERS: usize = 6;

impl Counter {
    /// All counters, in storage order.
    pub const ALL: [Counter; COUNTERS] = [
        Counter::RequestsMinute,
        Counter::RequestsHour,
        Counter::RequestsDay,
        Counter::TokensDay,
        Counter::UsdDay,
        Counter::UsdMonth,
    ];

    /// The windows the counter is kept over (aligned to the Unix epoch, or months).
    pub fn period(self) -> Period {
        match self {
            Counter::RequestsMinute => Period::every(MINUTE),
            Counter::RequestsHour => Period::every(HOUR),
            Counter::RequestsDay | Counter::TokensDay | Counter::UsdDay => Period::every(DAY),
            Counter::UsdMonth => Period::CalendarMonth,
        }
    }

    /// The limit a refusal on this counter names.
    pub fn limit_name(self) -> super::name::LimitName {
        use super::name::LimitName as L;
        match self {
            Counter::RequestsMinute => L::RequestsPerMinute,
            Counter::RequestsHour => L::RequestsPerHour,
            Counter::RequestsDay => L::RequestsPerDay,
            Counter::TokensDay => L::TokensPerDay,
            Counter::UsdDay => L::UsdPerDay,
            Counter::UsdMonth => L::UsdPerMonth,
        }
    }

    /// Whether the counter counts micro-USD.
    pub fn is_usd(self) -> bool {
        matches!(self, Counter::UsdDay | Counter::UsdMonth)
    }
}

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// A site's key for a store: the stable site key (what a fleet-wide store shares) and the
/// number of its counters in the local store (per process).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SiteKey {
    pub site: u64,
    pub cell: u64,
}

/// Where counts live. Local counters today; a shared store (Redis) can implement the
/// same two calls.
pub trait CounterStore: Send + Sync {
    /// Add `n` (negative refunds) and return the counts after.
    fn add(&self, counter: Counter, key: SiteKey, n: i64, now_ms: u64) -> Counts;
    /// Read without adding.
    fn get(&self, counter: Counter, key: SiteKey, now_ms: u64) -> Counts;
    /// The local counters under the store.
    fn local(&self) -> &LocalStore;
    /// Quotas are divided by this (rounded up): 1, or the fleet size while a shared
    /// store is unreachable and each node enforces its share alone.
    fn quota_divisor(&self) -> u64 {
        1
    }
}

/// Counters past the configured sites', shared by sites not configured when the store was
/// built (each counts in one of them: an overestimate when two share, never an undercount).
const SPARE: usize = 1024;

/// Process-local counters: a counter per configured site (and `models:` entry) in each
/// window, numbered at load, so every configured site's count is exact (module docs).
pub struct LocalStore {
    /// One per [`Counter`]; the USD ones have a single slot unless `spend`.
    windows: [SlidingWindow; COUNTERS],
    /// Whether spend is counted (the config has `prices:`); without, the USD windows
    /// stay empty and take no memory.
    spend: bool,
    /// Site key → its counter's number.
    cells: HashMap<u64, u64, ahash::RandomState>,
}

impl LocalStore {
    /// Counters for these site keys; with USD counters when `spend`.
    pub fn new(sites: &[u64], spend: bool) -> Self {
        let mut cells = crate::alloc::hot_tables(|| {
            HashMap::with_capacity_and_hasher(sites.len(), ahash::RandomState::new())
        });
        for &site in sites {
            let next = cells.len() as u64;
            cells.entry(site).or_insert(next);
        }
        let slots = cells.len() + SPARE;
        let used = |c: Counter| spend || !c.is_usd();
        let windows =
            Counter::ALL.map(|c| SlidingWindow::dense(c.period(), if used(c) { slots } else { 1 }));
        LocalStore {
            windows,
            spend,
            cells,
        }
    }

    fn window(&self, c: Counter) -> &SlidingWindow {
        &self.windows[c as usize]
    }

    /// The counter `site` counts in. A site not configured when the store was built
    /// counts in one of the spare counters, chosen by its key.
    pub fn key(&self, site: u64) -> SiteKey {
        let spare =
            || self.cells.len() as u64 + site.wrapping_mul(0x9E37_79B9_7F4A_7C15) % SPARE as u64;
        SiteKey {
            site,
            cell: self.cells.get(&site).copied().unwrap_or_else(spare),
        }
    }

    /// Load these counters of `key` without locking, so the cache misses overlap before
    /// the locked updates (which would otherwise take them one at a time).
    pub(super) fn touch(&self, key: SiteKey, counters: impl IntoIterator<Item = Counter>) {
        for counter in counters {
            self.window(counter).touch(key.cell);
        }
    }

    /// Whether every one of `sites` has its own counters here, and spend is counted
    /// if it has to be.
    pub fn covers(&self, sites: &[u64], spend: bool) -> bool {
        (self.spend || !spend) && sites.iter().all(|s| self.cells.contains_key(s))
    }

    /// Counters per window.
    pub fn slots(&self) -> usize {
        self.windows[0].slots()
    }

    /// Bytes held by all counters.
    pub fn memory_bytes(&self) -> usize {
        self.windows.iter().map(|w| w.memory_bytes()).sum()
    }

    /// Add the counts of the sites both stores hold from `old` (only what came since
    /// `base` when given); return what was read, as the base for a later pass.
    pub fn copy_from(&self, old: &LocalStore, base: Option<&Copied>) -> Copied {
        let mut read = Copied::default();
        for (&site, &old_cell) in &old.cells {
            let Some(&cell) = self.cells.get(&site) else {
                continue;
            };
            let snaps = std::array::from_fn(|i| old.windows[i].snapshot(old_cell));
            let before = base.and_then(|b| b.0.get(&site));
            for (i, snap) in snaps.iter().enumerate() {
                if Counter::ALL[i].is_usd() && !(old.spend && self.spend) {
                    continue;
                }
                self.windows[i].add_snapshot(cell, *snap, before.map(|b| b[i]));
            }
            read.0.insert(site, snaps);
        }
        read
    }
}

/// Counts read by [`LocalStore::copy_from`], per site and window.
#[derive(Default)]
pub struct Copied(HashMap<u64, [window::Snapshot; COUNTERS]>);

impl CounterStore for LocalStore {
    fn add(&self, counter: Counter, key: SiteKey, n: i64, now_ms: u64) -> Counts {
        self.window(counter).add(key.cell, n, now_ms)
    }
    fn get(&self, counter: Counter, key: SiteKey, now_ms: u64) -> Counts {
        self.window(counter).get(key.cell, now_ms)
    }
    fn local(&self) -> &LocalStore {
        self
    }
}
