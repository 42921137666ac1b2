//! The validated, immutable data a request runs on ([`Runtime`]) and its parts.
//!
//! Plain data only: live state (circuits, cool-downs, round-robin positions, metric
//! series) sits in `crate::state::Live`, keyed by the stable names here, so a reload
//! swaps this data and keeps the state that still has an owner.

use crate::limits::ip::{AuthFailureLimit, Cidr};
use crate::limits::tier::Tier;
use crate::pii::policy::PiiPolicy;
use crate::upstream::kind::UpstreamKind;
use secrecy::SecretString;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A client key's id (`Signature-Input` `keyid`, `X-Site-Identifier`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub String);

/// A site's id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SiteId(pub String);

/// One provider credential. `Debug` shows the id, never the secret.
pub struct Credential {
    pub id: String,
    pub secret: SecretString,
    /// What goes upstream: the header value for this upstream's kind (`Bearer <key>` or
    /// the key), built once at load. Its bytes are wiped when the last clone is dropped
    /// ([`crate::upstream::headers::credential_value`]); marked sensitive.
    pub header: http::HeaderValue,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credential({})", self.id)
    }
}

/// Certificates trusted for an upstream instead of the system store (shared by clones).
pub type TrustAnchors = Arc<Box<[pingora::tls::x509::X509]>>;

/// A validated upstream (provider endpoint).
#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    /// Position in [`Runtime::upstreams`] (where its live state sits, `crate::state::Live`).
    pub index: usize,
    pub kind: UpstreamKind,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix of `url` (without a trailing slash), prepended to forwarded paths.
    pub base_path: String,
    pub credentials: Vec<Credential>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// From the request's arrival to the answer's last byte (a stream past it is ended
    /// with an `error` event; a stall between reads is caught by `read_timeout`).
    pub total_timeout: Duration,
    pub max_response_bytes: usize,
    /// `Host` header value sent upstream (default port omitted).
    pub authority: String,
    /// SPKI pins; empty means not pinned.
    pub pins: Vec<crate::upstream::pinning::SpkiPin>,
    /// Trust anchors replacing the system store.
    pub ca: Option<TrustAnchors>,
    /// Pingora pool isolation key derived from the pins and CA.
    pub group_key: u64,
    /// Client request headers forwarded besides the built-in list.
    pub request_headers: crate::upstream::headers::HeaderAllow,
    /// Provider response headers returned besides the built-in list.
    pub response_headers: crate::upstream::headers::HeaderAllow,
    /// `circuit_breaker` settings (the breaker's state is live state).
    pub circuit: crate::upstream::circuit::CircuitConfig,
    /// `model_map`: the client's model name → this provider's.
    pub model_map: HashMap<String, String>,
}

impl Upstream {
    /// The name this provider knows `model` by, when `model_map` renames it.
    pub fn provider_model(&self, model: Option<&str>) -> Option<&str> {
        if self.model_map.is_empty() {
            return None;
        }
        model
            .and_then(|m| self.model_map.get(m))
            .map(String::as_str)
    }
}

/// A validated route.
#[derive(Debug)]
pub struct Route {
    pub prefix: String,
    pub upstream: Arc<Upstream>,
    pub models: Option<HashSet<String>>,
    pub max_tokens: Option<u64>,
    /// Output patterns refused (`routes[].block_patterns`).
    pub block_patterns: Option<regex::bytes::RegexSet>,
    /// Personal data in prompts (`routes[].pii`); `None` is `off`.
    pub pii: Option<Arc<PiiPolicy>>,
    /// Values of the provider's beta header allowed (`routes[].betas`); none by default.
    pub betas: Vec<String>,
    /// `routes[].fallbacks`: tried in order after `upstream` (same API family).
    pub fallbacks: Vec<Arc<Upstream>>,
    /// `routes[].realtime`: the limits of a Realtime session.
    pub realtime: crate::realtime::Limits,
    /// `routes[].stored_objects`: every endpoint is served, not only the stateless ones
    /// ([`crate::request::endpoints`]).
    pub stored_objects: bool,
}

/// A validated site.
#[derive(Debug)]
pub struct Site {
    pub id: SiteId,
    /// [`site_limit_key`] of the id.
    pub limit_key: u64,
    pub tier: Arc<Tier>,
    /// Route prefixes this site may call; `None` means all routes.
    pub routes: Option<HashSet<String>>,
    pub cors_origins: Vec<String>,
    /// `sites[].pii`, replacing the route's setting: `Some(None)` is `off`.
    pub pii: Option<Option<Arc<PiiPolicy>>>,
    /// `sites[].disabled`: its keys answer like unknown keys.
    pub disabled: bool,
}

/// How a client key authenticates.
pub enum KeyAuth {
    /// `keygate-v1` HMAC signatures; the secret is the HMAC key.
    Hmac(SecretString),
    /// Virtual key; only its SHA-256 is held.
    Bearer([u8; 32]),
    /// Deprecated `X-Site-Identifier`/`X-Timestamp`/`X-Signature` scheme.
    LegacySiteTimestamp(SecretString),
}

impl KeyAuth {
    /// The name used in config, logs and the audit log.
    pub fn name(&self) -> &'static str {
        match self {
            KeyAuth::Hmac(_) => "hmac",
            KeyAuth::Bearer(_) => "bearer",
            KeyAuth::LegacySiteTimestamp(_) => "legacy-site-timestamp",
        }
    }
}

impl std::fmt::Debug for KeyAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyAuth({}, [REDACTED])", self.name())
    }
}

/// A validated client key.
#[derive(Debug)]
pub struct ClientKey {
    pub id: KeyId,
    /// Index into `Runtime::sites`.
    pub site: usize,
    pub auth: KeyAuth,
    /// `keys[].expires_at` (unix seconds): from then on the key answers like an unknown key.
    pub expires_at: Option<i64>,
    /// What ties browser tokens and Realtime sessions to this key's credential
    /// ([`ClientKey::binding`]), computed once.
    binding: [u8; 8],
}

impl ClientKey {
    pub fn new(id: KeyId, site: usize, auth: KeyAuth, expires_at: Option<i64>) -> ClientKey {
        use secrecy::ExposeSecret;
        let tag = match &auth {
            KeyAuth::Hmac(s) | KeyAuth::LegacySiteTimestamp(s) => {
                crate::auth::signature::mac(s.expose_secret().as_bytes(), "keygate:key-binding:v1")
            }
            KeyAuth::Bearer(hash) => crate::auth::signature::mac(hash, "keygate:key-binding:v1"),
        };
        let mut binding = [0u8; 8];
        binding.copy_from_slice(&tag[..8]);
        ClientKey {
            id,
            site,
            auth,
            expires_at,
            binding,
        }
    }

    /// Whether the key may authenticate at `now` (unix seconds): not expired, and its
    /// site not disabled. Otherwise it answers exactly like an unknown key.
    pub fn usable(&self, sites: &[Site], now: i64) -> bool {
        self.expires_at.is_none_or(|t| now < t) && sites.get(self.site).is_none_or(|s| !s.disabled)
    }

    /// What ties a browser token or a Realtime session to this key's credential: 16 hex
    /// digits of an HMAC under the secret (or of a bearer key's hash). It changes with the
    /// secret, so a token minted under a secret since rotated, or under a key id since
    /// given to another key, stops working. A token shows it to its holder: 64 bits of a
    /// MAC under the secret, against which a guess of the secret could be checked offline
    /// (weak secrets are refused at load; `keygate secret new` makes 192-bit ones).
    pub fn binding(&self) -> String {
        hex::encode(self.binding)
    }

    /// Whether `hex` is this key's [`ClientKey::binding`] (no allocation).
    pub fn binding_is(&self, hex: &str) -> bool {
        let mut mine = [0u8; 16];
        hex::encode_to_slice(self.binding, &mut mine).is_ok() && mine == hex.as_bytes()
    }
}

/// `admin:` (SPEC §8.4): the keys that sign `/admin/v1/` calls, and where changes made
/// through the API persist without a fleet.
#[derive(Debug)]
pub struct AdminSettings {
    /// `hmac` keys, each of its own pseudo-site 0 (admin keys belong to no site).
    pub keys: HashMap<KeyId, ClientKey>,
    pub state_file: std::path::PathBuf,
    /// The first `master_keys` entry (id, key): what secrets of keys made through the
    /// API are sealed under (`enc:v1`). `None`: the API can add bearer keys only.
    pub seal: Option<(String, crate::config::secret::MasterKey)>,
}

/// A client-facing listener.
#[derive(Debug, Clone)]
pub struct Listener {
    pub addr: SocketAddr,
    pub tls: Option<Arc<crate::tls::CertKey>>,
}

/// Request-path settings from `server:`.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Allowed `@authority` values (lower-case); `None` accepts any.
    pub hostnames: Option<HashSet<String>>,
    pub max_body_bytes: usize,
    /// `server.max_upload_bytes`: the most a multipart upload may be.
    pub max_upload_bytes: usize,
    pub clock_skew: Duration,
    /// How far in the future `created` may be (`server.clock_skew_future_s`).
    pub clock_skew_future: Duration,
    /// Header names (lower-case) a client may sign in addition to the required components.
    pub signed_headers: HashSet<String>,
    pub body_timeout: Duration,
    /// Peers allowed to set `X-Forwarded-For`.
    pub trusted_proxies: Vec<Cidr>,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub keepalive_timeout: Duration,
    /// `server.send_timeout_s`: a write to the client that makes no progress for this
    /// long ends the request (a client that stops reading, an HTTP/2 window never opened).
    pub send_timeout: Duration,
    pub auth_failure_limit: Option<AuthFailureLimit>,
    /// Deadline for a whole HTTP/1 request header block, from the connection's start
    /// (first request) or the request's first byte (later ones).
    pub header_timeout: Duration,
    /// Open client connections allowed in total, and per socket peer address
    /// (peers in `trusted_proxies` are exempt from the per-address cap).
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
}

/// Process-level settings that only apply at start (listeners, threads, Pingora's own conf).
#[derive(Debug, Clone)]
pub struct ProcessSettings {
    pub listeners: Vec<Listener>,
    pub threads: usize,
    /// Whether an idle worker thread may take over another's requests (Pingora's
    /// `work_stealing`). Off (the default): a worker per thread, each with its own
    /// listening sockets and upstream pool; a connection stays on the worker that accepted it.
    pub work_stealing: bool,
    pub admin_listen: Option<SocketAddr>,
    pub pid_file: String,
    pub upgrade_sock: String,
    pub grace_period_s: u64,
    pub graceful_shutdown_timeout_s: u64,
    pub nonce_store_capacity: usize,
    pub upstream_keepalive_pool_size: usize,
    /// Requests per client connection (`None`: unlimited).
    pub keepalive_requests: Option<u32>,
    /// Concurrent streams per HTTP/2 client connection.
    pub h2_max_concurrent_streams: u32,
    /// `log.audit_path`; `None` writes audit lines to stdout.
    pub audit_path: Option<String>,
}

/// The validated configuration a request runs on. One `Arc<Runtime>` per request.
#[derive(Debug)]
pub struct Runtime {
    /// 0 for the config loaded at start, +1 for each good reload.
    pub generation: u64,
    pub server: ServerSettings,
    pub process: ProcessSettings,
    pub upstreams: Vec<Arc<Upstream>>,
    /// Sorted by prefix length, longest first.
    pub routes: Vec<Route>,
    pub tiers: HashMap<String, Arc<Tier>>,
    pub sites: Vec<Site>,
    pub keys: HashMap<KeyId, ClientKey>,
    /// SHA-256 of a bearer virtual key → key id.
    pub bearer_keys: HashMap<[u8; 32], KeyId>,
    /// Non-fatal findings (`keygate check` prints them; `serve` logs them).
    pub warnings: Vec<String>,
    /// Finds any configured secret in response bytes.
    pub scanner: crate::response::validate::SecretScanner,
    /// Browser-token keys (one per master key) and limits.
    pub tokens: crate::auth::token::TokenKeys,
    pub token_max_ttl: Duration,
    /// Browser tokens a client address may mint per minute.
    pub token_mints_per_ip: u64,
    /// Every site's CORS origins (preflights are answered from this set).
    pub cors_origins: HashSet<String>,
    /// `fleet:` with Redis set; `None` keeps all state process-local. Read at start only.
    pub fleet: Option<FleetSettings>,
    /// `prices:` (USD per million tokens, per model or glob).
    pub prices: crate::limits::price::Prices,
    /// `admin:`; `None` turns the admin API off (every `/admin/v1/` call is 401).
    pub admin: Option<AdminSettings>,
    /// `registration:` when enabled; `None`: the registration endpoints are 404.
    pub registration: Option<RegistrationSettings>,
    /// `anomaly:`; `None`: no detection.
    pub anomaly: Option<crate::limits::anomaly::AnomalySettings>,
    /// `telemetry.otlp:`; `None`: no traces. Applies at start.
    pub otlp: Option<crate::telemetry::otlp::OtlpSettings>,
}

/// `registration:` (SPEC §8.5): self-service sites, confirmed by e-mail.
#[derive(Debug)]
pub struct RegistrationSettings {
    /// The tier new sites get (validated to exist).
    pub tier: String,
    /// The link in the e-mail is `<verify_url>?code=<code>`.
    pub verify_url: String,
    pub email_from: String,
    pub smtp: SmtpSettings,
    pub code_ttl: Duration,
    pub per_ip_per_hour: u64,
    /// Lower-case domains an address must be at; `None`: any.
    pub allowed_email_domains: Option<Vec<String>>,
    pub max_pending: usize,
    /// What a verified site's secret is sealed under until its poll collects it.
    pub seal: (String, crate::config::secret::MasterKey),
}

/// The SMTP relay.
#[derive(Debug, Clone)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    /// `smtps://`: TLS from the first byte.
    pub implicit_tls: bool,
    /// `smtp://` to a host off loopback: STARTTLS or nothing (a loopback relay may be plain).
    pub starttls_required: bool,
    pub username: Option<String>,
    pub password: Option<SecretString>,
}

impl SmtpSettings {
    /// The place name of `smtp.password` as an `enc:v1` value.
    pub const PASSWORD_PLACE: &'static str = "registration/smtp/password";
}

/// What replay protection does while Redis is unreachable (`fleet.on_redis_down.nonces`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceFallback {
    /// Refuse signed requests (503) until Redis answers again.
    FailClosed,
    /// Use the process-local store, accepting only signatures created within `window`
    /// (a replay to another node is possible within that window; see README).
    Local { window: Duration },
}

/// Validated `fleet:` settings (present only when `fleet.redis` is set).
#[derive(Clone)]
pub struct FleetSettings {
    /// The Redis URL, possibly with a password: never logged; see [`FleetSettings::redacted_url`].
    pub url: SecretString,
    /// The URL with any password replaced by `***`.
    pub redacted_url: String,
    /// Bound on every Redis call.
    pub timeout: Duration,
    pub key_prefix: String,
    /// Nodes in the fleet (the `1/N` fallback share).
    pub nodes: u64,
    pub sync_interval: Duration,
    pub nonces_when_down: NonceFallback,
    /// `fleet.exact_limits`: a signed request's admission is decided in Redis, in the
    /// round trip of its nonce.
    pub exact_limits: bool,
    /// With `rediss://`: whom to trust and the client certificate (`None`: system roots).
    pub tls: Option<RedisTls>,
    /// ACL user for `AUTH` (with `password`).
    pub username: Option<String>,
    /// `fleet.redis.password`, resolved from its secret source.
    pub password: Option<SecretString>,
    /// A Redis Cluster, reached first through `url` and `seeds`.
    pub cluster: bool,
    pub seeds: Vec<String>,
}

/// `fleet.redis.{ca, client_cert, client_key}`, read and checked at load.
#[derive(Clone, Default)]
pub struct RedisTls {
    /// PEM of the trusted CA(s): only these, not the system roots.
    pub ca: Option<Vec<u8>>,
    /// PEM of the client certificate (chain) for mutual TLS.
    pub client_cert: Option<Vec<u8>>,
    /// Its private key, as PKCS#8 PEM.
    pub client_key: Option<Arc<secrecy::SecretBox<Vec<u8>>>>,
}

impl FleetSettings {
    /// The secret place name (AAD) of `fleet.redis.password`.
    pub const PASSWORD_PLACE: &'static str = "fleet/redis/password";

    /// The YAML keys whose change needs a restart (the connection is made once, at
    /// start); timeouts, the sync interval, `nodes` and `on_redis_down` apply on reload.
    pub fn restart_needed(&self, next: &FleetSettings) -> Vec<&'static str> {
        use secrecy::ExposeSecret;
        // Compared in place: a copy of a secret would be freed without being zeroed.
        fn secret(s: &Option<SecretString>) -> Option<&str> {
            s.as_ref().map(|s| s.expose_secret())
        }
        type Files<'a> = (
            &'a Option<Vec<u8>>,
            &'a Option<Vec<u8>>,
            Option<&'a Vec<u8>>,
        );
        fn tls(t: &Option<RedisTls>) -> Option<Files<'_>> {
            t.as_ref().map(|t| {
                let key = t.client_key.as_ref().map(|k| k.expose_secret());
                (&t.ca, &t.client_cert, key)
            })
        }
        let mut changed = vec![];
        if self.url.expose_secret() != next.url.expose_secret() {
            changed.push("fleet.redis.url");
        }
        if tls(&self.tls) != tls(&next.tls) {
            changed.push("fleet.redis.ca/client_cert/client_key");
        }
        if self.username != next.username {
            changed.push("fleet.redis.username");
        }
        if secret(&self.password) != secret(&next.password) {
            changed.push("fleet.redis.password");
        }
        if self.key_prefix != next.key_prefix {
            changed.push("fleet.redis.key_prefix");
        }
        if (self.cluster, &self.seeds) != (next.cluster, &next.seeds) {
            changed.push("fleet.redis.cluster/seeds");
        }
        changed
    }
}

impl std::fmt::Debug for FleetSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetSettings")
            .field("url", &self.redacted_url)
            .field("timeout", &self.timeout)
            .field("key_prefix", &self.key_prefix)
            .field("nodes", &self.nodes)
            .field("sync_interval", &self.sync_interval)
            .field("nonces_when_down", &self.nonces_when_down)
            .field("exact_limits", &self.exact_limits)
            .field("tls", &self.tls.is_some())
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("cluster", &self.cluster)
            .field("seeds", &self.seeds)
            .finish()
    }
}

impl Runtime {
    /// Longest-prefix route match on the raw request path. A prefix matches at a
    /// segment boundary only (`/openai` does not match `/openaix`).
    pub fn route_for(&self, path: &str) -> Option<&Route> {
        self.route_index(path).and_then(|i| self.routes.get(i))
    }

    /// Index into `routes` of [`Runtime::route_for`].
    pub fn route_index(&self, path: &str) -> Option<usize> {
        self.routes
            .iter()
            .position(|r| prefix_matches(&r.prefix, path))
    }
}

impl Route {
    /// The `n`th upstream a request on this route may try: 0 is `upstream`, then the
    /// `fallbacks` in order.
    pub fn chain(&self, n: usize) -> Option<&Arc<Upstream>> {
        match n {
            0 => Some(&self.upstream),
            n => self.fallbacks.get(n - 1),
        }
    }

    /// The PII policy a request runs under: the site's `pii` when it has one (`off`
    /// included), else the route's.
    pub fn pii_policy<'a>(&'a self, site: Option<&'a Site>) -> Option<&'a PiiPolicy> {
        match site.and_then(|s| s.pii.as_ref()) {
            Some(site_setting) => site_setting.as_deref(),
            None => self.pii.as_deref(),
        }
    }
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}
