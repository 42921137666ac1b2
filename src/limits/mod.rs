//! Tier limits (requests per minute/hour/day, tokens per day, concurrency) and the
//! per-client-IP limit on failed authentications.
//!
//! Counts live behind [`CounterStore`], the one seam a fleet-wide backend plugs into;
//! the gateway only calls [`Limiter::admit`], [`Limiter::charge_tokens`] and the
//! [`ip::AuthFailureLimiter`].
//!
//! Sizing: every sketch has `HASHES = 4` rows of `slots = next_power_of_two(max(1024,
//! 16 × sites))` counters, two windows each, 8 bytes a counter. Four windows (minute,
//! hour, day, tokens/day) cost `4 × 2 × 4 × slots × 8` bytes: 256 KiB up to 64 sites,
//! 4 MiB for 1,000 sites, 64 MiB for 10,000 sites.
//!
//! Error: a count-min sketch only overestimates. A counter in one row also holds the
//! counts of the other sites hashed to the same slot. Sites are few and each may be busy,
//! so the noise comes in lumps, a whole site's count at a time: a site at fraction `ρ` of
//! its limit is refused early only if, in every one of the `HASHES` rows, sites whose
//! counts add up to its headroom `(1 − ρ) × limit` share its slot. With `S` sites and `w`
//! slots a given other site shares a row's slot with probability `1/w`, so with every site
//! at half its limit (one colliding site is enough) the chance is about `(S/w)^HASHES`
//! per site and window: `(1/26)^4 ≈ 2·10⁻⁶` at 10,000 sites (w = 262,144), i.e. about a 2 %
//! chance per window that *some* site among 10,000 is refused early; at 30 % load it takes
//! three colliding sites per row and the chance is negligible (< 10⁻¹⁵). Exact per-site
//! counters (sites are known at load) would remove the error entirely; see issue #3's note.

pub mod ip;
pub mod window;

use crate::config::Tier;
use pingora_limits::inflight::{Guard, Inflight};
use std::time::Duration;
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

/// Where counts live. Local sketches today; a shared store (Redis) can implement the
/// same two calls.
pub trait CounterStore: Send + Sync {
    /// Add `n` (negative refunds) and return the counts after.
    fn add(&self, counter: Counter, key: u64, n: i64, now_ms: u64) -> Counts;
    /// Read without adding.
    fn get(&self, counter: Counter, key: u64, now_ms: u64) -> Counts;
    /// Counter slots per window (for sizing checks on reload).
    fn slots(&self) -> usize;
    /// Quotas are divided by this (rounded up): 1, or the fleet size while a shared
    /// store is unreachable and each node enforces its share alone.
    fn quota_divisor(&self) -> u64 {
        1
    }
}

/// Process-local sketches.
pub struct LocalStore {
    windows: [SlidingWindow; 4],
}

impl LocalStore {
    pub fn new(slots: usize) -> Self {
        LocalStore {
            windows: [
                SlidingWindow::new(MINUTE, slots),
                SlidingWindow::new(HOUR, slots),
                SlidingWindow::new(DAY, slots),
                SlidingWindow::new(DAY, slots),
            ],
        }
    }

    fn window(&self, c: Counter) -> &SlidingWindow {
        &self.windows[c as usize]
    }

    /// Bytes held by all sketches.
    pub fn memory_bytes(&self) -> usize {
        self.windows.iter().map(|w| w.memory_bytes()).sum()
    }
}

impl CounterStore for LocalStore {
    fn add(&self, counter: Counter, key: u64, n: i64, now_ms: u64) -> Counts {
        self.window(counter).add(key, n, now_ms)
    }
    fn get(&self, counter: Counter, key: u64, now_ms: u64) -> Counts {
        self.window(counter).get(key, now_ms)
    }
    fn slots(&self) -> usize {
        self.windows[0].slots()
    }
}

/// Slots per sketch for `sites` configured sites (see the module docs).
pub fn slots_for(sites: usize) -> usize {
    (sites.saturating_mul(16)).max(1024).next_power_of_two()
}

/// A refusal by a limit.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// `requests_per_minute`, `tokens_per_day`, `concurrent`, …
    pub limit: &'static str,
    pub retry_after: Duration,
    /// `RateLimit` header value for the refusal.
    pub ratelimit: Option<String>,
    /// For token budgets: (used, budget).
    pub tokens: Option<(u64, u64)>,
}

/// What an admitted request carries to the end.
pub struct Admission {
    /// Holds the site's concurrency slot until dropped.
    pub inflight: Option<Guard>,
    /// `RateLimit` header value (the window closest to exhaustion).
    pub ratelimit: Option<String>,
}

/// Ceil to whole seconds, at least 1.
pub fn ceil_secs(d: Duration) -> u64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(1)
}

/// The request windows a tier limits, with their policy names.
fn request_windows(tier: &Tier) -> [(Counter, &'static str, &'static str, Option<u64>); 3] {
    [
        (
            Counter::RequestsMinute,
            "minute",
            "requests_per_minute",
            tier.requests_per_minute,
        ),
        (
            Counter::RequestsHour,
            "hour",
            "requests_per_hour",
            tier.requests_per_hour,
        ),
        (
            Counter::RequestsDay,
            "day",
            "requests_per_day",
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
    inflight: Inflight,
    stripes: Stripes,
}

impl Limiter {
    /// Local limiter sized for `sites`.
    pub fn local(sites: usize) -> Self {
        Limiter {
            store: Box::new(LocalStore::new(slots_for(sites))),
            inflight: Inflight::new(),
            stripes: Stripes::default(),
        }
    }

    /// A limiter over another store (the fleet's).
    pub fn with_store(store: Box<dyn CounterStore>) -> Self {
        Limiter {
            store,
            inflight: Inflight::new(),
            stripes: Stripes::default(),
        }
    }

    pub fn slots(&self) -> usize {
        self.store.slots()
    }

    /// Admit one request of site `key` under `tier` at `now_ms`, counting it; or refuse
    /// (and count nothing).
    pub fn admit(&self, key: u64, tier: &Tier, now_ms: u64) -> Result<Admission, Refusal> {
        let inflight = match tier.concurrent {
            Some(max) => {
                let (guard, n) = self.inflight.incr(key, 1);
                if n as u64 > max {
                    return Err(Refusal {
                        limit: "concurrent",
                        retry_after: Duration::from_secs(1),
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
                    limit: "tokens_per_day",
                    retry_after: c.wait_for_room(budget as f64, 1.0),
                    ratelimit: None,
                    tokens: Some((c.estimate().ceil() as u64, budget)),
                });
            }
        }
        let _serial = self.stripes.lock(key);
        let mut added: Vec<Counter> = Vec::with_capacity(3);
        let mut tightest: Option<(f64, String)> = None;
        for (counter, name, limit_name, q) in request_windows(tier) {
            let Some(q) = q.map(|q| q.div_ceil(share)) else {
                continue;
            };
            let c = self.store.add(counter, key, 1, now_ms);
            added.push(counter);
            let est = c.estimate();
            if est > q as f64 {
                for a in &added {
                    self.store.add(*a, key, -1, now_ms);
                }
                let before = Counts {
                    curr: c.curr - 1,
                    ..c
                };
                let wait = before.wait_for_room(q as f64, 1.0);
                let t = ceil_secs(wait);
                return Err(Refusal {
                    limit: limit_name,
                    retry_after: wait,
                    ratelimit: Some(format!("\"{name}\";r=0;t={t}")),
                    tokens: None,
                });
            }
            let remaining = (q as f64 - est).floor().max(0.0);
            let ratio = remaining / q as f64;
            if tightest.as_ref().is_none_or(|(r, _)| ratio < *r) {
                let t = ceil_secs(c.window_ends_in());
                tightest = Some((ratio, format!("\"{name}\";r={remaining};t={t}")));
            }
        }
        Ok(Admission {
            inflight,
            ratelimit: tightest.map(|(_, h)| h),
        })
    }

    /// Charge `tokens` used by site `key` against its daily budget.
    pub fn charge_tokens(&self, key: u64, tokens: u64, now_ms: u64) {
        if tokens > 0 {
            self.store.add(
                Counter::TokensDay,
                key,
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
            window: SlidingWindow::new(DAY, 1 << 16),
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

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
