//! A tier's limits as configured, and the keys a site is counted under.

use super::price::ModelTable;

/// A tier's limits (enforced by the limits module).
#[derive(Debug, Clone, Default)]
pub struct Tier {
    pub name: String,
    pub requests_per_minute: Option<u64>,
    pub requests_per_hour: Option<u64>,
    pub requests_per_day: Option<u64>,
    pub tokens_per_day: Option<u64>,
    /// Spend budgets in micro-USD: the sliding day, and the calendar month (UTC).
    pub usd_per_day: Option<u64>,
    pub usd_per_month: Option<u64>,
    pub concurrent: Option<u64>,
    /// Per-model limits (`models:`), matched like prices.
    pub models: ModelTable<ModelLimit>,
    /// `RateLimit-Policy` header value, built once at load (a clone shares it).
    pub policy: Option<http::HeaderValue>,
}

/// The limits of one `models:` entry of a tier, counted per site.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelLimit {
    pub requests_per_minute: Option<u64>,
    pub tokens_per_day: Option<u64>,
    /// Micro-USD.
    pub usd_per_day: Option<u64>,
    /// Mixed into the site's key for this entry's counters ([`ModelLimit::key`]).
    pub salt: u64,
}

impl ModelLimit {
    /// The limit for the `models:` entry `glob`.
    pub fn new(glob: &str) -> ModelLimit {
        ModelLimit {
            salt: site_limit_key(&format!("model\0{glob}")),
            ..ModelLimit::default()
        }
    }

    /// The key this entry's counters of `site` (a [`site_limit_key`]) are stored under:
    /// stable across reloads, processes and tiers that name the same glob.
    pub fn key(&self, site: u64) -> u64 {
        site ^ self.salt
    }
}

impl Tier {
    /// Whether the tier limits spend in USD anywhere (then every model needs a price).
    pub fn spends_usd(&self) -> bool {
        self.usd_per_day.is_some()
            || self.usd_per_month.is_some()
            || self.models.iter().any(|(_, m)| m.usd_per_day.is_some())
    }

    /// Whether the tier has a token or USD budget anywhere (its own or a `models:` entry's).
    pub fn has_budgets(&self) -> bool {
        self.spends_usd()
            || self.tokens_per_day.is_some()
            || self.models.iter().any(|(_, m)| m.tokens_per_day.is_some())
    }

    /// Every key counted for `site` under this tier: its own and one per `models:` entry.
    pub fn limit_keys(&self, site: u64) -> impl Iterator<Item = u64> + '_ {
        std::iter::once(site).chain(self.models.iter().map(move |(_, m)| m.key(site)))
    }
}

/// The key a site's counters are stored under: stable across reloads and processes.
pub fn site_limit_key(site_id: &str) -> u64 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(site_id.as_bytes());
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}
