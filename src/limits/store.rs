//! Where a site's counts live: the [`CounterStore`] seam and the process-local sketches
//! with collision-free site keys (see the [module docs](super)).

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

    /// Whether the counter counts micro-USD.
    pub fn is_usd(self) -> bool {
        matches!(self, Counter::UsdDay | Counter::UsdMonth)
    }
}

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// A site's key for a store: the stable site key (what a fleet-wide store shares) and the
/// key its counters sit under in the local sketches (collision-free, per process).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SiteKey {
    pub site: u64,
    pub cell: u64,
}

/// Where counts live. Local sketches today; a shared store (Redis) can implement the
/// same two calls.
pub trait CounterStore: Send + Sync {
    /// Add `n` (negative refunds) and return the counts after.
    fn add(&self, counter: Counter, key: SiteKey, n: i64, now_ms: u64) -> Counts;
    /// Read without adding.
    fn get(&self, counter: Counter, key: SiteKey, now_ms: u64) -> Counts;
    /// The local sketches under the store.
    fn local(&self) -> &LocalStore;
    /// Quotas are divided by this (rounded up): 1, or the fleet size while a shared
    /// store is unreachable and each node enforces its share alone.
    fn quota_divisor(&self) -> u64 {
        1
    }
}

/// Most attempts at finding a collision-free key for one site.
const PLACE_ATTEMPTS: u64 = 64;

/// Process-local sketches: one row per sketch, each configured site's counters under a
/// key chosen at load so that no two configured sites share a counter (module docs).
pub struct LocalStore {
    /// One per [`Counter`]; the USD ones have a single slot unless `spend`.
    windows: [SlidingWindow; COUNTERS],
    /// Whether spend is counted (the config has `prices:`); without, the USD sketches
    /// stay empty and take no memory (8 MiB for 10,000 sites).
    spend: bool,
    /// Site key → the key its counters sit under.
    cells: HashMap<u64, u64, ahash::RandomState>,
}

impl LocalStore {
    /// Sketches sized for, and keys placed for, these site keys; with USD counters
    /// when `spend`.
    pub fn new(sites: &[u64], spend: bool) -> Self {
        let slots = slots_for(sites.len());
        let used = |c: Counter| spend || !c.is_usd();
        let windows = Counter::ALL
            .map(|c| SlidingWindow::over(c.period(), SITE_ROWS, if used(c) { slots } else { 1 }));
        let placed: Vec<&SlidingWindow> = Counter::ALL
            .iter()
            .filter(|c| used(**c))
            .map(|c| &windows[*c as usize])
            .collect();
        let cells = place(&placed, sites);
        windows.iter().for_each(SlidingWindow::clear);
        LocalStore {
            windows,
            spend,
            cells,
        }
    }

    fn window(&self, c: Counter) -> &SlidingWindow {
        &self.windows[c as usize]
    }

    /// The key `site`'s counters sit under. A site not placed (not configured when the
    /// store was built) uses its own key: counts may then include another site's, an
    /// overestimate, never an undercount.
    pub fn key(&self, site: u64) -> SiteKey {
        SiteKey {
            site,
            cell: self.cells.get(&site).copied().unwrap_or(site),
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

    /// Counter slots per sketch row.
    pub fn slots(&self) -> usize {
        self.windows[0].slots()
    }

    /// Bytes held by all sketches.
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

/// Give each site a key whose counter, in every sketch of `windows`, no other site's key
/// shares: then a site's count is exact. The sketches must be empty; each placed key
/// leaves a 1 behind (clear them after). `slots ≥ 16 × sites` keeps each sketch at most
/// a sixteenth full, so a random key is free in all twelve with odds ≥ 0.94¹² ≈ 0.47; a
/// site that finds none in [`PLACE_ATTEMPTS`] tries (odds below 10⁻¹⁷) keeps its own key.
fn place(windows: &[&SlidingWindow], sites: &[u64]) -> HashMap<u64, u64, ahash::RandomState> {
    let sketches: Vec<_> = windows.iter().flat_map(|w| w.sketches()).collect();
    let mut cells = HashMap::with_capacity_and_hasher(sites.len(), ahash::RandomState::new());
    for &site in sites {
        if cells.contains_key(&site) {
            continue;
        }
        let free = |key: u64| {
            for (i, s) in sketches.iter().enumerate() {
                if s.incr(key, 1) != 1 {
                    sketches[..=i].iter().for_each(|s| s.decr(key, 1));
                    return false;
                }
            }
            true
        };
        let cell = (0..PLACE_ATTEMPTS)
            .map(|a| site ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .find(|&k| free(k));
        if cell.is_none() {
            log::warn!("rate limits: no collision-free counters found for a site; its counts may include another site's");
        }
        cells.insert(site, cell.unwrap_or(site));
    }
    cells
}

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

/// Rows per site sketch: one, since site keys are placed collision-free.
pub const SITE_ROWS: usize = 1;

/// Slots per sketch row for `sites` configured sites (see the module docs).
pub fn slots_for(sites: usize) -> usize {
    (sites.saturating_mul(16)).max(1024).next_power_of_two()
}
