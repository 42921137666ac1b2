//! A tier's limits as configured, and the key a site is counted under.

/// A tier's limits (enforced by the limits module).
#[derive(Debug, Clone, Default)]
pub struct Tier {
    pub name: String,
    pub requests_per_minute: Option<u64>,
    pub requests_per_hour: Option<u64>,
    pub requests_per_day: Option<u64>,
    pub tokens_per_day: Option<u64>,
    pub concurrent: Option<u64>,
    /// `RateLimit-Policy` header value, built once at load (a clone shares it).
    pub policy: Option<http::HeaderValue>,
}

/// The key a site's counters are stored under: stable across reloads and processes.
pub fn site_limit_key(site_id: &str) -> u64 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(site_id.as_bytes());
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}
