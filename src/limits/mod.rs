//! Tier limits (requests per minute/hour/day, tokens per day, USD per day and per
//! calendar month, concurrency, and per-model limits inside a tier) and the per-client-IP
//! limit on failed authentications.
//!
//! Counts live behind [`CounterStore`], the one seam a fleet-wide backend plugs into;
//! the gateway only calls [`Limiter::admit`], [`Limiter::admit_model`],
//! [`Limiter::charge`] and the [`ip::AuthFailureLimiter`]. Spend is counted in micro-USD.
//!
//! Sizing: the site counters (requests per minute, hour, day; tokens per day; USD per day
//! and per calendar month; a current and a previous window each) are one counter per key
//! and window, 8 bytes: `counters in use × 2 × (keys + 1,024) × 8` bytes, the four request
//! and token counters 0.7 MB for 10,000 keys and 6.5 MB for 100,000 (USD counters only with
//! `prices:`). A key is a site, or a site's `models:` entry of its tier (each counted on its
//! own).
//!
//! Error: none for configured keys. They are known when the config loads, so
//! [`LocalStore::new`] numbers them and each has a counter of its own in every window (an
//! exact count; one counter touched per window per check). A key not configured when the
//! store was built counts in one of 1,024 spare counters, shared (an overestimate, never an
//! undercount). A reload that adds keys builds new counters and copies the surviving keys'
//! counts over ([`LocalStore::copy_from`]). Keys not known in advance (client IPs, browser
//! tokens) use pingora-limits' count-min sketches (four rows) instead.

pub mod anomaly;
mod inflight;
pub mod ip;
pub mod name;
pub mod price;
mod store;
pub mod tier;
mod token_uses;
pub mod window;

pub use token_uses::TokenUses;

use inflight::{Guard, InFlight};
pub use name::LimitName;
use std::sync::Arc;
use std::time::Duration;
pub use store::{Copied, Counter, CounterStore, LocalStore, SiteKey};
use tier::{ModelLimit, Tier};
use window::Counts;

/// A refusal by a limit.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub limit: LimitName,
    /// `None` when waiting will not help (a browser token's requests are used up).
    pub retry_after: Option<Duration>,
    /// `RateLimit` header value for the refusal.
    pub ratelimit: Option<String>,
    /// For token and USD budgets: what was used and the budget, in the limit's unit
    /// (tokens, micro-USD).
    pub budget: Option<(u64, u64)>,
    /// The `models:` entry of the tier whose limit refused (a glob).
    pub model: Option<String>,
}

impl Refusal {
    /// A refusal by a limit outside the tier's windows (no `RateLimit` state).
    pub fn of(limit: LimitName, retry_after: Option<Duration>) -> Refusal {
        Refusal {
            limit,
            retry_after,
            ratelimit: None,
            budget: None,
            model: None,
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

/// Micro-USD per unit of a USD window's `RateLimit` quota: budgets are given in cents.
const MICRO_PER_CENT: u64 = 10_000;

/// A counted request window: (counter, `RateLimit` name, limit, quota).
type RequestWindow = (Counter, &'static str, LimitName, Option<u64>);
/// A budget charged after the answer: (counter, limit, budget, `RateLimit` name when the
/// header shows it: USD windows, in cents).
type BudgetWindow = (Counter, LimitName, Option<u64>, Option<&'static str>);

/// What one set of limits (a tier, or one of its `models:` entries) checks.
struct Quotas {
    requests: [RequestWindow; 3],
    budgets: [BudgetWindow; 3],
}

impl Quotas {
    fn of_tier(tier: &Tier) -> Quotas {
        Quotas {
            requests: request_windows(tier),
            budgets: [
                (
                    Counter::TokensDay,
                    LimitName::TokensPerDay,
                    tier.tokens_per_day,
                    None,
                ),
                (
                    Counter::UsdDay,
                    LimitName::UsdPerDay,
                    tier.usd_per_day,
                    Some("usd_day"),
                ),
                (
                    Counter::UsdMonth,
                    LimitName::UsdPerMonth,
                    tier.usd_per_month,
                    Some("usd_month"),
                ),
            ],
        }
    }

    /// A `models:` entry's limits: requests per minute, tokens and USD per day.
    fn of_model(m: &ModelLimit) -> Quotas {
        let none = (Counter::RequestsHour, "", LimitName::RequestsPerHour, None);
        Quotas {
            requests: [
                (
                    Counter::RequestsMinute,
                    "model_minute",
                    LimitName::RequestsPerMinute,
                    m.requests_per_minute,
                ),
                none,
                none,
            ],
            budgets: [
                (
                    Counter::TokensDay,
                    LimitName::TokensPerDay,
                    m.tokens_per_day,
                    None,
                ),
                (
                    Counter::UsdDay,
                    LimitName::UsdPerDay,
                    m.usd_per_day,
                    Some("model_usd_day"),
                ),
                (Counter::UsdMonth, LimitName::UsdPerMonth, None, None),
            ],
        }
    }

    /// The counters with a limit.
    fn limited(&self) -> impl Iterator<Item = Counter> + '_ {
        let r = self.requests.iter().filter(|w| w.3.is_some()).map(|w| w.0);
        r.chain(self.budgets.iter().filter(|b| b.2.is_some()).map(|b| b.0))
    }
}

/// What a tier's admission checks, for a store that decides it elsewhere (the fleet's
/// server-side script): the budgets (counter, limit) a request is refused at, and the
/// request windows (counter, quota) it is counted in. The same checks, in the same
/// arithmetic, as [`Limiter::admit`] with the whole quota (Redis is up).
pub fn admission_plan(tier: &Tier) -> AdmissionPlan {
    let q = Quotas::of_tier(tier);
    AdmissionPlan {
        budgets: q.budgets.iter().filter_map(|b| Some((b.0, b.2?))).collect(),
        windows: q
            .requests
            .iter()
            .filter_map(|w| Some((w.0, w.3?)))
            .collect(),
    }
}

/// See [`admission_plan`].
pub struct AdmissionPlan {
    /// (counter, limit): refused once used reaches the limit.
    pub budgets: Vec<(Counter, u64)>,
    /// (counter, quota): counted; refused when counting would exceed the quota.
    pub windows: Vec<(Counter, u64)>,
}

/// The request windows a tier limits, with their policy names.
fn request_windows(tier: &Tier) -> [RequestWindow; 3] {
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

/// The `RateLimit-Policy` value of a tier (`None` when it limits no requests and no
/// spend). USD budgets are given in US cents (`qu="usd-cents"`); the calendar month has
/// no fixed `w`.
pub fn policy_header(tier: &Tier) -> Option<String> {
    let requests = request_windows(tier)
        .into_iter()
        .zip([60u64, 3600, 86_400])
        .filter_map(|((_, name, _, q), w)| q.map(|q| format!("\"{name}\";q={q};w={w}")));
    let cents = |b: u64| b.div_ceil(MICRO_PER_CENT);
    let usd = [
        tier.usd_per_day
            .map(|b| format!("\"usd_day\";q={};qu=\"usd-cents\";w=86400", cents(b))),
        tier.usd_per_month
            .map(|b| format!("\"usd_month\";q={};qu=\"usd-cents\"", cents(b))),
    ];
    let items: Vec<String> = requests.chain(usd.into_iter().flatten()).collect();
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
    inflight: Arc<InFlight>,
    stripes: Arc<Stripes>,
}

impl Limiter {
    /// Local limiter for these site keys.
    pub fn local(sites: &[u64]) -> Self {
        Self::with_store(Box::new(LocalStore::new(sites, true)))
    }

    /// A limiter over another store (the fleet's).
    pub fn with_store(store: Box<dyn CounterStore>) -> Self {
        Limiter {
            store,
            inflight: Arc::default(),
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
        self.admit_on(self.store.as_ref(), key, tier, now_ms)
    }

    /// The store this limiter counts in.
    pub fn store(&self) -> &dyn CounterStore {
        self.store.as_ref()
    }

    /// [`Limiter::admit`] with the counts read from and added to `store`: a view over
    /// [`Limiter::store`] in which the fleet has already decided (`fleet.exact_limits`).
    pub fn admit_on(
        &self,
        store: &dyn CounterStore,
        key: u64,
        tier: &Tier,
        now_ms: u64,
    ) -> Result<Admission, Refusal> {
        let site = key;
        let key = store.local().key(site);
        let quotas = Quotas::of_tier(tier);
        store.local().touch(key, quotas.limited());
        let inflight = match tier.concurrent {
            Some(max) => {
                let (guard, n) = self.inflight.incr(site);
                if n > max {
                    return Err(Refusal::of(
                        LimitName::Concurrent,
                        Some(Duration::from_secs(1)),
                    ));
                }
                Some(guard)
            }
            None => None,
        };
        let ratelimit = self.check(store, key, &quotas, now_ms)?;
        Ok(Admission {
            inflight,
            ratelimit,
        })
    }

    /// Admit one request of site `site` for a model under the tier's `models:` entry
    /// `m` (found by `glob`): counted in the entry's requests per minute, refused when
    /// that or the entry's token or USD budget of the day is spent.
    pub fn admit_model(
        &self,
        site: u64,
        glob: &str,
        m: &ModelLimit,
        now_ms: u64,
    ) -> Result<(), Refusal> {
        let key = self.store.local().key(m.key(site));
        self.check(self.store(), key, &Quotas::of_model(m), now_ms)
            .map(|_| ())
            .map_err(|r| Refusal {
                model: Some(glob.to_string()),
                ..r
            })
    }

    /// Whether a budget of site `site` is spent now: the tier's tokens or USD, or those of
    /// the `models:` entry `model`. Nothing is counted. A long session (Realtime) asks
    /// after each charge, and ends when one is.
    pub fn budget_spent(
        &self,
        site: u64,
        tier: &Tier,
        model: Option<&ModelLimit>,
        now_ms: u64,
    ) -> bool {
        let budgets_only = |mut q: Quotas| {
            for w in &mut q.requests {
                w.3 = None;
            }
            q
        };
        let store = self.store();
        let tier_key = store.local().key(site);
        let spent = |key, q| self.check(store, key, &budgets_only(q), now_ms).is_err();
        spent(tier_key, Quotas::of_tier(tier))
            || model.is_some_and(|m| spent(store.local().key(m.key(site)), Quotas::of_model(m)))
    }

    /// Check `quotas` of `key`: budgets (read), then request windows (counted, and
    /// refunded on a refusal). The window closest to exhaustion, for the header.
    fn check(
        &self,
        store: &dyn CounterStore,
        key: SiteKey,
        quotas: &Quotas,
        now_ms: u64,
    ) -> Result<Option<RateLimitState>, Refusal> {
        let share = store.quota_divisor().max(1);
        // (share of the quota left, state)
        let mut tightest: Option<(f64, RateLimitState)> = None;
        let mut consider = |ratio: f64, state: RateLimitState| {
            if tightest.is_none_or(|(r, _)| ratio < r) {
                tightest = Some((ratio, state));
            }
        };
        for &(counter, limit, budget, header) in &quotas.budgets {
            let Some(budget) = budget.map(|b| b.div_ceil(share)) else {
                continue;
            };
            let c = store.get(counter, key, now_ms);
            let used = c.estimate();
            let reset = ceil_secs(c.window_ends_in());
            if used >= budget as f64 {
                let wait = c.wait_for_room(budget as f64, 1.0);
                let state = |window| RateLimitState {
                    window,
                    remaining: 0,
                    reset: ceil_secs(wait),
                };
                return Err(Refusal {
                    limit,
                    retry_after: Some(wait),
                    ratelimit: header.map(|w| state(w).to_string()),
                    budget: Some((used.ceil() as u64, budget)),
                    model: None,
                });
            }
            if let Some(window) = header {
                let left = budget as f64 - used;
                let remaining = (left / MICRO_PER_CENT as f64).floor() as u64;
                let state = RateLimitState {
                    window,
                    remaining,
                    reset,
                };
                consider(left / budget as f64, state);
            }
        }
        let _serial = self.stripes.lock(key.site);
        let windows = &quotas.requests;
        for (i, &(counter, name, limit_name, q)) in windows.iter().enumerate() {
            let Some(q) = q.map(|q| q.div_ceil(share)) else {
                continue;
            };
            let c = store.add(counter, key, 1, now_ms);
            let est = c.estimate();
            if est > q as f64 {
                for &(a, .., q) in &windows[..=i] {
                    if q.is_some() {
                        store.add(a, key, -1, now_ms);
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
                    budget: None,
                    model: None,
                });
            }
            let remaining = (q as f64 - est).floor().max(0.0) as u64;
            let state = RateLimitState {
                window: name,
                remaining,
                reset: ceil_secs(c.window_ends_in()),
            };
            consider(remaining as f64 / q as f64, state);
        }
        Ok(tightest.map(|(_, state)| state))
    }

    /// Charge what one answer of site `site` used: `tokens` against its daily token
    /// budget, `micro_usd` (when priced) against its USD budgets, and both against the
    /// tier's `models:` entry the request was admitted under (`model`), if any.
    pub fn charge(&self, site: u64, model: Option<&ModelLimit>, spend: Spend, now_ms: u64) {
        let amounts = [
            (Counter::TokensDay, spend.tokens),
            (Counter::UsdDay, spend.micro_usd),
            (Counter::UsdMonth, spend.micro_usd),
        ];
        let local = self.store.local();
        let keys = std::iter::once((local.key(site), true))
            .chain(model.map(|m| (local.key(m.key(site)), false)));
        for (key, whole_site) in keys {
            for (counter, n) in amounts {
                // A `models:` entry has no monthly budget.
                if n > 0 && (whole_site || counter != Counter::UsdMonth) {
                    self.store
                        .add(counter, key, n.min(i64::MAX as u64) as i64, now_ms);
                }
            }
        }
    }
}

/// What one answer used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spend {
    pub tokens: u64,
    /// Zero when the model has no price.
    pub micro_usd: u64,
}

#[cfg(test)]
mod tests;
