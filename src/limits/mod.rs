//! Tier limits (requests per minute/hour/day, tokens per day, concurrency) and the
//! per-client-IP limit on failed authentications.
//!
//! Counts live behind [`CounterStore`], the one seam a fleet-wide backend plugs into;
//! the gateway only calls [`Limiter::admit`], [`Limiter::charge_tokens`] and the
//! [`ip::AuthFailureLimiter`].
//!
//! Sizing: the site sketches (minute, hour, day, tokens/day; a current and a previous
//! window each) have one row of `slots = next_power_of_two(max(1024, 16 × sites))`
//! counters, 8 bytes each: `4 × 2 × slots × 8` bytes, 64 KiB up to 64 sites, 2 MiB for
//! 1,000 sites, 16 MiB for 10,000 sites. Rows of 2 MiB and more sit on huge pages
//! ([`crate::alloc`]).
//!
//! Error: none for configured sites. A count-min sketch only overestimates, and only
//! through keys sharing a counter. Sites are known when the config loads, so
//! [`LocalStore::new`] chooses the key each site is counted under such that no two sites
//! share a counter in any of the eight sketches (at most a sixteenth full, so a random
//! key is free in all of them with odds ≥ 0.6; a few tries per site). With no sharing, one row
//! is exact: a site under its limit is never refused, and each check touches one counter
//! per sketch (the check stays cache-friendly at 10,000 sites; with four random rows it
//! was memory-bound at 1.7 µs). A reload that adds sites builds new sketches with new
//! keys and copies the surviving sites' counts over ([`LocalStore::copy_from`]). Keys
//! not known in advance (client IPs, browser tokens) use four-row sketches instead.

pub mod ip;
pub mod name;
pub mod price;
pub mod tier;
pub mod window;

pub use name::LimitName;
use pingora_limits::inflight::{Guard, Inflight};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tier::Tier;
use window::{Counts, SlidingWindow};

/// The counters a site has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counter {
    RequestsMinute,
    RequestsHour,
    RequestsDay,
    TokensDay,
}

impl Counter {
    /// All counters, in storage order.
    pub const ALL: [Counter; 4] = [
        Counter::RequestsMinute,
        Counter::RequestsHour,
        Counter::RequestsDay,
        Counter::TokensDay,
    ];

    /// The window the counter is kept over (windows are aligned to the Unix epoch).
    pub fn interval(self) -> Duration {
        match self {
            Counter::RequestsMinute => MINUTE,
            Counter::RequestsHour => HOUR,
            Counter::RequestsDay | Counter::TokensDay => DAY,
        }
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
    windows: [SlidingWindow; 4],
    /// Site key → the key its counters sit under.
    cells: HashMap<u64, u64, ahash::RandomState>,
}

impl LocalStore {
    /// Sketches sized for, and keys placed for, these site keys.
    pub fn new(sites: &[u64]) -> Self {
        let slots = slots_for(sites.len());
        let windows = [MINUTE, HOUR, DAY, DAY].map(|i| SlidingWindow::new(i, SITE_ROWS, slots));
        let cells = place(&windows, sites);
        windows.iter().for_each(SlidingWindow::clear);
        LocalStore { windows, cells }
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

    /// Load every counter of `key` without locking, so the cache misses overlap before
    /// the locked updates (which would otherwise take them one at a time).
    pub fn touch(&self, key: SiteKey, tier: &Tier) {
        let limits = [
            tier.requests_per_minute,
            tier.requests_per_hour,
            tier.requests_per_day,
            tier.tokens_per_day,
        ];
        for (w, limit) in self.windows.iter().zip(limits) {
            if limit.is_some() {
                w.touch(key.cell);
            }
        }
    }

    /// Whether every one of `sites` has its own counters here.
    pub fn covers(&self, sites: &[u64]) -> bool {
        sites.iter().all(|s| self.cells.contains_key(s))
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
                self.windows[i].add_snapshot(cell, *snap, before.map(|b| b[i]));
            }
            read.0.insert(site, snaps);
        }
        read
    }
}

/// Counts read by [`LocalStore::copy_from`], per site and window.
#[derive(Default)]
pub struct Copied(HashMap<u64, [window::Snapshot; 4]>);

/// Give each site a key whose counter, in every sketch of `windows`, no other site's key
/// shares: then a site's count is exact. The sketches must be empty; each placed key
/// leaves a 1 behind (clear them after). `slots ≥ 16 × sites` keeps each sketch at most
/// a sixteenth full, so a random key is free in all eight with odds ≥ 0.94⁸ ≈ 0.6; a site
/// that finds none in [`PLACE_ATTEMPTS`] tries (odds below 10⁻¹⁵) keeps its own key.
fn place(windows: &[SlidingWindow; 4], sites: &[u64]) -> HashMap<u64, u64, ahash::RandomState> {
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

/// A refusal by a limit.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub limit: LimitName,
    /// `None` when waiting will not help (a browser token's requests are used up).
    pub retry_after: Option<Duration>,
    /// `RateLimit` header value for the refusal.
    pub ratelimit: Option<String>,
    /// For token budgets: (used, budget).
    pub tokens: Option<(u64, u64)>,
}

impl Refusal {
    /// A refusal by a limit outside the tier's windows (no `RateLimit` state).
    pub fn of(limit: LimitName, retry_after: Option<Duration>) -> Refusal {
        Refusal {
            limit,
            retry_after,
            ratelimit: None,
            tokens: None,
        }
    }
}

/// What an admitted request carries to the end.
pub struct Admission {
    /// Holds the site's concurrency slot until dropped.
    pub inflight: Option<Guard>,
    /// The window closest to exhaustion, for the `RateLimit` header (rendered when the
    /// response is written, not during the check).
    pub ratelimit: Option<RateLimitState>,
}

/// One window's state as the `RateLimit` header gives it: `"minute";r=9;t=30`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitState {
    pub window: &'static str,
    pub remaining: u64,
    /// Seconds until the window ends.
    pub reset: u64,
}

impl std::fmt::Display for RateLimitState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let RateLimitState {
            window,
            remaining,
            reset,
        } = self;
        write!(f, "\"{window}\";r={remaining};t={reset}")
    }
}

/// Ceil to whole seconds, at least 1.
pub fn ceil_secs(d: Duration) -> u64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(1)
}

/// The request windows a tier limits, with their policy names.
fn request_windows(tier: &Tier) -> [(Counter, &'static str, LimitName, Option<u64>); 3] {
    [
        (
            Counter::RequestsMinute,
            "minute",
            LimitName::RequestsPerMinute,
            tier.requests_per_minute,
        ),
        (
            Counter::RequestsHour,
            "hour",
            LimitName::RequestsPerHour,
            tier.requests_per_hour,
        ),
        (
            Counter::RequestsDay,
            "day",
            LimitName::RequestsPerDay,
            tier.requests_per_day,
        ),
    ]
}

/// The `RateLimit-Policy` value of a tier (`None` when it limits no requests).
pub fn policy_header(tier: &Tier) -> Option<String> {
    let items: Vec<String> = request_windows(tier)
        .iter()
        .zip([60u64, 3600, 86_400])
        .filter_map(|((_, name, _, q), w)| q.map(|q| format!("\"{name}\";q={q};w={w}")))
        .collect();
    (!items.is_empty()).then(|| items.join(", "))
}

/// Striped locks that serialise check-and-count per key. A sketch's rows are updated one
/// atomic at a time, so two concurrent adds can each see the other's increment in one row
/// but not in another, and both read a minimum below their true position: without this,
/// `n` simultaneous requests could all pass a limit of `n - 1` (seen in CI as 3 of 4
/// parallel uses admitted for a browser token with `max_requests: 2`). Different keys
/// rarely share a stripe, so the lock is uncontended in practice.
pub struct Stripes([parking_lot::Mutex<()>; 64]);

impl Default for Stripes {
    fn default() -> Self {
        Stripes(std::array::from_fn(|_| parking_lot::Mutex::new(())))
    }
}

impl Stripes {
    /// Hold the stripe of `key` while checking and counting it.
    pub fn lock(&self, key: u64) -> parking_lot::MutexGuard<'_, ()> {
        self.0[(key % 64) as usize].lock()
    }
}

/// Tier enforcement over a [`CounterStore`].
pub struct Limiter {
    store: Box<dyn CounterStore>,
    /// Shared with the limiter this one replaced on a reload (in-flight guards of
    /// requests admitted before it still release into it).
    inflight: Arc<Inflight>,
    stripes: Arc<Stripes>,
}

impl Limiter {
    /// Local limiter for these site keys.
    pub fn local(sites: &[u64]) -> Self {
        Self::with_store(Box::new(LocalStore::new(sites)))
    }

    /// A limiter over another store (the fleet's).
    pub fn with_store(store: Box<dyn CounterStore>) -> Self {
        Limiter {
            store,
            inflight: Arc::new(Inflight::new()),
            stripes: Arc::default(),
        }
    }

    /// A limiter over `store` that takes over this one's concurrency counts.
    pub fn successor(&self, store: Box<dyn CounterStore>) -> Self {
        Limiter {
            store,
            inflight: self.inflight.clone(),
            stripes: self.stripes.clone(),
        }
    }

    /// The local sketches.
    pub fn local_store(&self) -> &LocalStore {
        self.store.local()
    }

    /// Admit one request of site `key` under `tier` at `now_ms`, counting it; or refuse
    /// (and count nothing).
    pub fn admit(&self, key: u64, tier: &Tier, now_ms: u64) -> Result<Admission, Refusal> {
        let site = key;
        let key = self.store.local().key(site);
        self.store.local().touch(key, tier);
        let inflight = match tier.concurrent {
            Some(max) => {
                let (guard, n) = self.inflight.incr(site, 1);
                if n as u64 > max {
                    return Err(Refusal {
                        limit: LimitName::Concurrent,
                        retry_after: Some(Duration::from_secs(1)),
                        ratelimit: None,
                        tokens: None,
                    });
                }
                Some(guard)
            }
            None => None,
        };
        let share = self.store.quota_divisor().max(1);
        if let Some(budget) = tier.tokens_per_day.map(|b| b.div_ceil(share)) {
            let c = self.store.get(Counter::TokensDay, key, now_ms);
            if c.estimate() >= budget as f64 {
                return Err(Refusal {
                    limit: LimitName::TokensPerDay,
                    retry_after: Some(c.wait_for_room(budget as f64, 1.0)),
                    ratelimit: None,
                    tokens: Some((c.estimate().ceil() as u64, budget)),
                });
            }
        }
        let _serial = self.stripes.lock(key.site);
        // (share of the quota left, name, remaining, seconds to the window's end)
        let mut tightest: Option<(f64, RateLimitState)> = None;
        let windows = request_windows(tier);
        for (i, &(counter, name, limit_name, q)) in windows.iter().enumerate() {
            let Some(q) = q.map(|q| q.div_ceil(share)) else {
                continue;
            };
            let c = self.store.add(counter, key, 1, now_ms);
            let est = c.estimate();
            if est > q as f64 {
                for &(a, .., q) in &windows[..=i] {
                    if q.is_some() {
                        self.store.add(a, key, -1, now_ms);
                    }
                }
                let before = Counts {
                    curr: c.curr - 1,
                    ..c
                };
                let wait = before.wait_for_room(q as f64, 1.0);
                let t = ceil_secs(wait);
                return Err(Refusal {
                    limit: limit_name,
                    retry_after: Some(wait),
                    ratelimit: Some(
                        RateLimitState {
                            window: name,
                            remaining: 0,
                            reset: t,
                        }
                        .to_string(),
                    ),
                    tokens: None,
                });
            }
            let remaining = (q as f64 - est).floor().max(0.0) as u64;
            let ratio = remaining as f64 / q as f64;
            if tightest.is_none_or(|(r, _)| ratio < r) {
                let state = RateLimitState {
                    window: name,
                    remaining,
                    reset: ceil_secs(c.window_ends_in()),
                };
                tightest = Some((ratio, state));
            }
        }
        Ok(Admission {
            inflight,
            ratelimit: tightest.map(|(_, state)| state),
        })
    }

    /// Charge `tokens` used by site `key` against its daily budget.
    pub fn charge_tokens(&self, key: u64, tokens: u64, now_ms: u64) {
        if tokens > 0 {
            self.store.add(
                Counter::TokensDay,
                self.store.local().key(key),
                tokens.min(i64::MAX as u64) as i64,
                now_ms,
            );
        }
    }
}

/// Uses of browser tokens with `max_requests`, counted by token id in a sketch (bounded;
/// it can only overcount, so a token never gets more than its uses). Tokens live at most a
/// day, so the previous and current day windows together hold all of a token's uses.
pub struct TokenUses {
    window: SlidingWindow,
    hasher: ahash::RandomState,
    stripes: Stripes,
}

impl Default for TokenUses {
    fn default() -> Self {
        TokenUses {
            window: SlidingWindow::new(DAY, window::HASHES, 1 << 16),
            hasher: ahash::RandomState::new(),
            stripes: Stripes::default(),
        }
    }
}

impl TokenUses {
    /// Count one use of token `jti`; false (and not counted) when it has no uses left.
    pub fn admit(&self, jti: &str, max: u64, now_ms: u64) -> bool {
        let key = self.hasher.hash_one(jti);
        let _serial = self.stripes.lock(key);
        let c = self.window.add(key, 1, now_ms);
        if (c.prev.max(0) + c.curr.max(0)) as u64 > max {
            self.window.add(key, -1, now_ms);
            false
        } else {
            true
        }
    }
}

#[cfg(test)]
mod tests;
