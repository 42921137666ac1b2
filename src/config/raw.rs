//! The YAML file as written: serde structs that mirror SPEC §2 one to one.
//! Nothing here is trusted; `config::validate` turns it into a `Runtime`.

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub server: RawServer,
    #[serde(default)]
    pub master_keys: Vec<RawMasterKey>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, RawUpstream>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub tiers: BTreeMap<String, RawTier>,
    #[serde(default)]
    pub sites: Vec<RawSite>,
    /// A directory of site files, each a YAML (or JSON) list of sites like `sites:` (README
    /// "Sites in files"); their sites follow `sites:`, in file-name order.
    #[serde(default)]
    pub sites_dir: Option<String>,
    /// Where each site file's sites sit in `sites`: (YAML path prefix, first index, count).
    /// Filled when the directory is read ([`super::site_files::expand`]).
    #[serde(skip)]
    pub site_files: Vec<(String, usize, usize)>,
    #[serde(default)]
    pub log: Option<RawLog>,
    #[serde(default)]
    pub tokens: Option<RawTokens>,
    #[serde(default)]
    pub fleet: Option<RawFleet>,
    /// USD per million tokens, per model or model glob (SPEC §8.3).
    #[serde(default)]
    pub prices: BTreeMap<String, RawPrice>,
    /// The admin API (SPEC §8.4).
    #[serde(default)]
    pub admin: Option<RawAdmin>,
    /// Self-service site registration (SPEC §8.5).
    #[serde(default)]
    pub registration: Option<RawRegistration>,
    /// Usage anomalies per site (SPEC §8.7).
    #[serde(default)]
    pub anomaly: Option<RawAnomaly>,
    /// Traces (SPEC §8.7).
    #[serde(default)]
    pub telemetry: Option<RawTelemetry>,
}

impl RawConfig {
    /// The YAML path of `sites[i]`: in `sites:`, or in the site file it came from
    /// (`sites_dir/<file>[j]`).
    pub fn site_path(&self, i: usize) -> String {
        self.site_at(i).to_string()
    }

    /// [`Self::site_path`], written only when displayed (a load of 100,000 sites names a
    /// path only for its mistakes).
    pub fn site_at(&self, i: usize) -> SitePath<'_> {
        // The files' ranges are in order and do not overlap.
        let f = self.site_files.partition_point(|&(_, start, _)| start <= i);
        match f.checked_sub(1).map(|f| &self.site_files[f]) {
            Some((file, start, n)) if i < start + n => SitePath(file, i - start),
            _ => SitePath("sites", i),
        }
    }
}

/// A list read into a vector of its own length (up to doubling): serde's `Vec` starts at room
/// for 4 when the length is not known beforehand (YAML, JSON), so one key a site kept room
/// for three more, 36 MB of memory written at 100,000 sites.
fn exact_vec<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct ExactVec<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for ExactVec<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a sequence")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
            while let Some(x) = seq.next_element()? {
                if v.len() == v.capacity() {
                    v.reserve_exact(v.len().max(1));
                }
                v.push(x);
            }
            Ok(v)
        }
    }
    d.deserialize_seq(ExactVec(std::marker::PhantomData))
}

/// The YAML path of a site: the list it is in (`sites` or `sites_dir/<file>`) and its index.
#[derive(Clone, Copy)]
pub struct SitePath<'a>(&'a str, usize);

/// How a site made through the admin API is named in errors (`admin API site "gamma"`).
pub const API_SITE: &str = "admin API site ";

impl std::fmt::Display for SitePath<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.starts_with(API_SITE) {
            // A site made through the admin API is a list of one: its name says it all.
            true => f.write_str(self.0),
            false => write!(f, "{}[{}]", self.0, self.1),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    pub otlp: Option<RawOtlp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOtlp {
    pub endpoint: String,
    pub sample_ratio: Option<f64>,
    /// Header values: literals, or `env:`/`file:` sources (an API key).
    pub headers: Option<BTreeMap<String, String>>,
    /// Send `headers` over plain http to a collector that is not on loopback.
    pub allow_plaintext: Option<bool>,
}

impl std::fmt::Debug for RawOtlp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RawOtlp({}, {:?}, [HEADERS REDACTED])",
            self.endpoint, self.sample_ratio
        )
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnomaly {
    pub factor: Option<f64>,
    pub min_per_minute: Option<f64>,
    pub action: Option<String>,
    pub throttle_s: Option<u64>,
    pub window_s: Option<u64>,
    pub warmup_windows: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegistration {
    pub enabled: Option<bool>,
    pub tier: String,
    pub verify_url: String,
    pub email_from: String,
    pub smtp: RawSmtp,
    pub code_ttl_s: Option<u64>,
    pub per_ip_per_hour: Option<u64>,
    pub allowed_email_domains: Option<Vec<String>>,
    /// Registrations waiting for their e-mail to be confirmed, at most (per node).
    pub max_pending: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSmtp {
    pub url: String,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for RawSmtp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawSmtp({}, {:?}, [REDACTED])", self.url, self.username)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    #[serde(default)]
    pub keys: Vec<RawAdminKey>,
    pub state_file: Option<String>,
    /// Serve the admin API on a `server.admin_listen` that is not loopback, in clear.
    pub allow_plaintext: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdminKey {
    pub id: String,
    pub secret: String,
}

impl std::fmt::Debug for RawAdminKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawAdminKey({}, [REDACTED])", self.id)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    pub input: f64,
    pub cached_input: Option<f64>,
    pub cache_write: Option<f64>,
    pub output: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Vec<RawListen>,
    pub hostnames: Option<Vec<String>>,
    pub threads: Option<usize>,
    pub work_stealing: Option<bool>,
    pub admin_listen: Option<String>,
    pub max_body_bytes: Option<u64>,
    /// Multipart uploads (transcriptions, image edits): streamed, up to this many bytes.
    pub max_upload_bytes: Option<u64>,
    pub clock_skew_s: Option<u64>,
    /// Per-client-IP limit on failed authentications; on by default, `off` disables it.
    /// `off` or `{ per_minute, cooldown_s }` (read as a value, so a mistake in either form
    /// gets its own message).
    pub auth_failure_limit: Option<serde_yaml::Value>,
    /// How far in the future a signature's `created` may be (fast client clocks).
    pub clock_skew_future_s: Option<u64>,
    pub trusted_proxies: Option<Vec<String>>,
    /// Extra header components a client may sign besides the five required ones.
    pub signed_headers: Option<Vec<String>>,
    /// Capacity of the replay (nonce) store, in entries.
    pub nonce_store_capacity: Option<usize>,
    /// Time allowed to receive a request body.
    pub body_timeout_ms: Option<u64>,
    /// Largest request header block (bytes) and most header fields accepted.
    pub max_header_bytes: Option<usize>,
    pub max_headers: Option<usize>,
    /// Idle time allowed between requests on a kept-alive client connection.
    pub keepalive_timeout_s: Option<u64>,
    /// Time allowed for one write to the client to make progress (nginx `send_timeout`).
    pub send_timeout_s: Option<u64>,
    /// Requests served on one client connection before it is closed.
    pub keepalive_requests: Option<u32>,
    /// Time allowed to send a whole request header block (HTTP/1).
    pub header_timeout_ms: Option<u64>,
    /// Open client connections allowed, in total and per client address.
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    /// Concurrent streams per HTTP/2 connection.
    pub h2_max_concurrent_streams: Option<u32>,
    pub pid_file: Option<String>,
    pub upgrade_sock: Option<String>,
    pub grace_period_s: Option<u64>,
    pub graceful_shutdown_timeout_s: Option<u64>,
    pub upstream_keepalive_pool_size: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    pub addr: String,
    pub tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuthFailureLimit {
    pub per_minute: u64,
    pub cooldown_s: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMasterKey {
    pub id: String,
    pub source: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub kind: String,
    pub url: String,
    #[serde(default)]
    pub credentials: Vec<RawCredential>,
    pub pins: Option<Vec<String>>,
    pub ca: Option<String>,
    pub connect_timeout_ms: Option<u64>,
    pub read_timeout_ms: Option<u64>,
    pub total_timeout_ms: Option<u64>,
    pub circuit_breaker: Option<RawCircuitBreaker>,
    pub max_response_bytes: Option<u64>,
    /// Client request headers passed on besides the built-in allow-list.
    #[serde(default)]
    pub forward_request_headers: Vec<String>,
    /// Provider response headers passed on besides the built-in allow-list.
    #[serde(default)]
    pub forward_response_headers: Vec<String>,
    /// Allow `http://` to a host that is not loopback (the key then travels in clear).
    pub allow_plaintext: Option<bool>,
    /// Client model name → this provider's model name (SPEC §8.2).
    pub model_map: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCredential {
    pub id: String,
    pub secret: String,
}

// The secret may be a plain literal (`--demo`): `Debug` never shows it.
impl std::fmt::Debug for RawCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawCredential({}, [REDACTED])", self.id)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCircuitBreaker {
    pub failures: u32,
    pub open_s: u64,
    pub half_open_successes: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub prefix: String,
    pub upstream: String,
    pub models: Option<Vec<String>>,
    pub max_tokens: Option<u64>,
    pub pii: Option<RawPii>,
    /// Regexes refused in model output (off by default; see README).
    pub block_patterns: Option<Vec<String>>,
    /// Values of the provider's beta header (`openai-beta`, `anthropic-beta`) allowed.
    #[serde(default)]
    pub betas: Vec<String>,
    /// Upstreams tried in order when `upstream` fails before answering (SPEC §8.2).
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// Realtime WebSocket sessions on this route (SPEC §8.1).
    pub realtime: Option<RawRealtime>,
    /// Serve every endpoint, those of objects the provider stores under the shared key
    /// (files, batches, vector stores, ...) too; default: the stateless ones only.
    #[serde(default)]
    pub stored_objects: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRealtime {
    pub max_session_s: Option<u64>,
    pub max_frame_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPii {
    pub mode: String,
    /// Built-in kinds and pattern names to detect; empty means all.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Operator-supplied regexes, each a kind of its own.
    #[serde(default)]
    pub patterns: Vec<RawPiiPattern>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPiiPattern {
    pub name: String,
    pub regex: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTier {
    pub requests_per_minute: Option<u64>,
    pub requests_per_hour: Option<u64>,
    pub requests_per_day: Option<u64>,
    pub tokens_per_day: Option<u64>,
    /// USD budgets (sliding day; calendar month, UTC).
    pub usd_per_day: Option<f64>,
    pub usd_per_month: Option<f64>,
    pub concurrent: Option<u64>,
    /// Per-model limits, by model name or glob.
    #[serde(default)]
    pub models: BTreeMap<String, RawModelLimit>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModelLimit {
    pub requests_per_minute: Option<u64>,
    pub tokens_per_day: Option<u64>,
    pub usd_per_day: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSite {
    pub id: String,
    pub tier: String,
    pub routes: Option<Vec<String>>,
    pub cors_origins: Option<Vec<String>>,
    /// Replaces the route's `pii` setting for this site's requests.
    pub pii: Option<RawPii>,
    #[serde(default, deserialize_with = "exact_vec")]
    pub keys: Vec<RawKey>,
    /// A disabled site's keys answer like unknown keys.
    pub disabled: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub id: String,
    pub auth: Option<String>,
    pub secret: Option<String>,
    pub hash: Option<String>,
    /// RFC 3339; from then on the key answers like an unknown key.
    pub expires_at: Option<String>,
}

impl std::fmt::Debug for RawKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawKey({}, {:?}, [REDACTED])", self.id, self.auth)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub audit_path: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTokens {
    pub max_ttl_s: Option<u64>,
    /// Mints allowed per client address per minute (default 60).
    pub mint_per_ip_per_minute: Option<u64>,
    /// Master key id new browser tokens are minted under (default: the first).
    pub key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFleet {
    pub redis: Option<RawRedis>,
    /// Nodes in the fleet: while Redis is down each enforces `1/nodes` of a quota.
    pub nodes: Option<u64>,
    /// How often local counts are pushed to and fleet totals read from Redis.
    pub sync_interval_ms: Option<u64>,
    pub on_redis_down: Option<RawOnRedisDown>,
    /// Decide signed requests' admissions in Redis with their nonce (default true).
    pub exact_limits: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    pub url: String,
    pub timeout_ms: Option<u64>,
    pub key_prefix: Option<String>,
    /// With `rediss://`: PEM file of the CA(s) trusted for Redis (else the system roots).
    pub ca: Option<String>,
    /// With `rediss://`: PEM files of a client certificate and its key (mutual TLS).
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    /// ACL user (`AUTH username password`); needs `password`.
    pub username: Option<String>,
    /// A secret source: `enc:v1:…` (place `fleet/redis/password`), `env:NAME`, `file:/path`.
    pub password: Option<String>,
    /// A Redis Cluster: `url` and `seeds` are nodes to learn the slot map from.
    pub cluster: Option<bool>,
    pub seeds: Option<Vec<String>>,
}

// The URL may carry a password, and `password` is one: `Debug` shows neither.
impl std::fmt::Debug for RawRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawRedis")
            .field("url", &super::secret::redact_url(&self.url))
            .field("timeout_ms", &self.timeout_ms)
            .field("key_prefix", &self.key_prefix)
            .field("ca", &self.ca)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("cluster", &self.cluster)
            .field(
                "seeds",
                &self
                    .seeds
                    .iter()
                    .flatten()
                    .map(|u| super::secret::redact_url(u))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOnRedisDown {
    /// `fail_closed` (default) or `local`.
    pub nonces: Option<String>,
    /// With `nonces: local`, the shortened `created` window, in seconds.
    pub local_window_s: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sites_keys_take_the_room_they_need() {
        let one: RawSite =
            serde_json::from_str(r#"{"id": "a", "tier": "t", "keys": [{"id": "k"}]}"#).unwrap();
        assert_eq!(one.keys.capacity(), 1);
        let three: RawSite =
            serde_yaml::from_str("{ id: a, tier: t, keys: [{ id: k1 }, { id: k2 }, { id: k3 }] }")
                .unwrap();
        let ids: Vec<_> = three.keys.iter().map(|k| k.id.as_str()).collect();
        assert_eq!(ids, ["k1", "k2", "k3"]);
        assert!(three.keys.capacity() <= 4);
        let none: RawSite = serde_yaml::from_str("{ id: a, tier: t }").unwrap();
        assert!(none.keys.is_empty());
        let wrong = serde_yaml::from_str::<RawSite>("{ id: a, tier: t, keys: { id: k } }");
        let wrong = wrong.err().unwrap().to_string();
        assert!(wrong.contains("expected a sequence"), "{wrong}");
    }
}
