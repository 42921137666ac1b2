//! Configuration: YAML (`raw`) → validated, typed [`Runtime`], once, in one place.
//!
//! Every mistake is reported with the YAML path that holds it
//! (`routes[0].upstream: unknown upstream "missing"`), all mistakes at once,
//! and nothing is half-applied: a `Runtime` exists only when the whole file is valid.

pub mod raw;
pub mod secret;

use crate::auth::nonce::NONCE_DEFAULT_CAPACITY;
use raw::*;
use secrecy::SecretString;
use secret::MasterKey;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// One mistake in the config file, with the YAML path that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// All mistakes found in one file.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// How a config is being loaded.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// `serve --demo`: plain-literal secrets are allowed.
    pub demo: bool,
}

/// A client key's id (`Signature-Input` `keyid`, `X-Site-Identifier`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub String);

/// A site's id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SiteId(pub String);

/// The kinds of provider API; they decide how the credential is injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamKind {
    OpenAi,
    OpenAiCompatible,
    Anthropic,
    Gemini,
}

impl UpstreamKind {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "openai" => UpstreamKind::OpenAi,
            "openai-compatible" => UpstreamKind::OpenAiCompatible,
            "anthropic" => UpstreamKind::Anthropic,
            "gemini" => UpstreamKind::Gemini,
            _ => return None,
        })
    }
}

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
    pub ca: Option<Arc<Box<[pingora::tls::x509::X509]>>>,
    /// Pingora pool isolation key derived from the pins and CA.
    pub group_key: u64,
    /// Client request headers forwarded besides the built-in list.
    pub request_headers: crate::upstream::headers::HeaderAllow,
    /// Provider response headers returned besides the built-in list.
    pub response_headers: crate::upstream::headers::HeaderAllow,
    /// `circuit_breaker` settings (the breaker's state is live state).
    pub circuit: crate::upstream::circuit::CircuitConfig,
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
    pub pii: Option<Arc<crate::pii::PiiPolicy>>,
    /// Values of the provider's beta header allowed (`routes[].betas`); none by default.
    pub betas: Vec<String>,
}

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

/// An address block (`10.0.0.0/8`, `::1/128`, or a single address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: std::net::IpAddr,
    pub len: u8,
}

impl Cidr {
    /// Parse `a.b.c.d`, `a.b.c.d/n`, or the IPv6 equivalents.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, len) = parse_cidr(s)?;
        Some(Cidr { addr, len })
    }

    /// Whether `ip` lies in this block (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: &std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(*ip),
            v4 => *v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = if self.len == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.len)
                };
                (u32::from(net) & mask) == (u32::from(a) & mask)
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = if self.len == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.len)
                };
                (u128::from(net) & mask) == (u128::from(a) & mask)
            }
            _ => false,
        }
    }
}

/// `server.auth_failure_limit`.
#[derive(Debug, Clone, Copy)]
pub struct AuthFailureLimit {
    pub per_minute: u64,
    pub cooldown: Duration,
}

/// A validated site.
#[derive(Debug)]
pub struct Site {
    pub id: SiteId,
    /// [`site_limit_key`] of the id.
    pub limit_key: u64,
    pub tier: String,
    /// Route prefixes this site may call; `None` means all routes.
    pub routes: Option<HashSet<String>>,
    pub cors_origins: Vec<String>,
    /// `sites[].pii`, replacing the route's setting: `Some(None)` is `off`.
    pub pii: Option<Option<Arc<crate::pii::PiiPolicy>>>,
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
    pub clock_skew: Duration,
    /// Header names (lower-case) a client may sign in addition to the required components.
    pub signed_headers: HashSet<String>,
    pub body_timeout: Duration,
    /// Peers allowed to set `X-Forwarded-For`.
    pub trusted_proxies: Vec<Cidr>,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub keepalive_timeout: Duration,
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
    /// `work_stealing`). Off: each connection stays on the thread it was given at accept.
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
    pub tiers: HashMap<String, Tier>,
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
    /// Every site's CORS origins (preflights are answered from this set).
    pub cors_origins: HashSet<String>,
    /// `fleet:` with Redis set; `None` keeps all state process-local. Read at start only.
    pub fleet: Option<FleetSettings>,
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
            .finish()
    }
}

/// A URL with the password of its userinfo (`scheme://user:PASSWORD@host`) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "[unparsable URL]".into();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            // Without a colon the lone userinfo may be a password too: hide it all.
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***{}", &rest[at..]),
                None => format!("{scheme}://***{}", &rest[at..]),
            }
        }
        None => url.to_string(),
    }
}

/// `fleet:` → [`FleetSettings`]; `None` when no Redis is configured.
fn validate_fleet(f: &RawFleet, errs: &mut Errors) -> Option<FleetSettings> {
    let nodes = f.nodes.unwrap_or(1);
    if nodes == 0 || nodes > 10_000 {
        errs.push("fleet.nodes", "must be between 1 and 10000");
    }
    let sync_ms = f.sync_interval_ms.unwrap_or(100);
    if !(10..=10_000).contains(&sync_ms) {
        errs.push("fleet.sync_interval_ms", "must be between 10 and 10000");
    }
    let mut nonces_when_down = NonceFallback::FailClosed;
    if let Some(d) = &f.on_redis_down {
        let window = d.local_window_s.unwrap_or(10);
        if !(1..=300).contains(&window) {
            errs.push(
                "fleet.on_redis_down.local_window_s",
                "must be between 1 and 300",
            );
        }
        match d.nonces.as_deref() {
            None | Some("fail_closed") => {
                if d.local_window_s.is_some() {
                    errs.push(
                        "fleet.on_redis_down.local_window_s",
                        "applies only with nonces: local",
                    );
                }
            }
            Some("local") => {
                nonces_when_down = NonceFallback::Local {
                    window: Duration::from_secs(window),
                }
            }
            Some(other) => errs.push(
                "fleet.on_redis_down.nonces",
                format!("unknown policy \"{other}\" (expected fail_closed or local)"),
            ),
        }
    }
    let redis = f.redis.as_ref()?;
    let redacted_url = redact_url(&redis.url);
    if !(redis.url.starts_with("redis://") || redis.url.starts_with("rediss://")) {
        errs.push(
            "fleet.redis.url",
            format!("\"{redacted_url}\" must start with redis:// or rediss://"),
        );
    } else if redis::Client::open(redis.url.as_str()).is_err() {
        // The client's own message may echo the URL: name the redacted form only.
        errs.push(
            "fleet.redis.url",
            format!("\"{redacted_url}\" is not a usable Redis URL (rediss:// needs a TLS build)"),
        );
    }
    let timeout_ms = redis.timeout_ms.unwrap_or(50);
    if !(1..=10_000).contains(&timeout_ms) {
        errs.push("fleet.redis.timeout_ms", "must be between 1 and 10000");
    }
    let key_prefix = redis
        .key_prefix
        .clone()
        .unwrap_or_else(|| "keygate:".into());
    if key_prefix.len() > 64
        || key_prefix
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        errs.push(
            "fleet.redis.key_prefix",
            "must be at most 64 characters without spaces",
        );
    }
    Some(FleetSettings {
        url: SecretString::from(redis.url.clone()),
        redacted_url,
        timeout: Duration::from_millis(timeout_ms),
        key_prefix,
        nodes: nodes.max(1),
        sync_interval: Duration::from_millis(sync_ms),
        nonces_when_down,
    })
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

fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Largest config file accepted.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// Largest certificate, key or secret file a config may name.
pub const MAX_REFERENCED_FILE_BYTES: u64 = 1 << 20;

/// Read a whole file, refusing one larger than `limit` bytes (a config naming
/// `/dev/zero` or a huge file must fail, not exhaust memory).
pub fn read_file_bounded(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::new();
    std::fs::File::open(path)?
        .take(limit + 1)
        .read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("larger than {limit} bytes"),
        ));
    }
    Ok(buf)
}

/// Load and validate a config file.
pub fn load_file(path: &Path, opts: LoadOptions) -> Result<Runtime, ConfigErrors> {
    let text = read_file_bounded(path, MAX_CONFIG_BYTES)
        .and_then(|b| {
            String::from_utf8(b)
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"))
        })
        .map_err(|e| {
            ConfigErrors(vec![ConfigError {
                path: String::new(),
                message: format!("cannot read {}: {e}", path.display()),
            }])
        })?;
    load_str(&text, opts)
}

/// Parse and validate config text.
pub fn load_str(text: &str, opts: LoadOptions) -> Result<Runtime, ConfigErrors> {
    let raw = parse(text).map_err(|e| ConfigErrors(vec![e]))?;
    validate(raw, opts)
}

/// Parse YAML into the raw structs; type errors and unknown keys name their path.
pub fn parse(text: &str) -> Result<RawConfig, ConfigError> {
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde_yaml appends " at line L column C"; keep it, it helps.
        ConfigError {
            path: if path == "." { String::new() } else { path },
            message: inner,
        }
    })
}

/// Collects errors while validating.
#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }
}

const KIND_NAMES: &str = "openai, openai-compatible, anthropic, gemini";

/// Turn the raw file into a `Runtime`, or report every mistake.
pub fn validate(raw: RawConfig, opts: LoadOptions) -> Result<Runtime, ConfigErrors> {
    let mut errs = Errors::default();
    let mut warnings = Vec::new();

    let (server, mut process) = validate_server(&raw.server, &mut errs);
    process.audit_path = raw.log.as_ref().and_then(|l| l.audit_path.clone());
    let master_keys = validate_master_keys(&raw.master_keys, &mut errs);

    // Upstreams.
    let mut upstreams = Vec::new();
    let mut upstream_by_name: HashMap<&str, Arc<Upstream>> = HashMap::new();
    for (name, u) in &raw.upstreams {
        let p = format!("upstreams.{name}");
        if let Some(up) =
            validate_upstream(name, u, &p, &master_keys, opts, &mut errs, &mut warnings)
        {
            let up = Arc::new(Upstream {
                index: upstreams.len(),
                ..up
            });
            upstream_by_name.insert(name.as_str(), up.clone());
            upstreams.push(up);
        }
    }
    if raw.upstreams.is_empty() {
        errs.push("upstreams", "at least one upstream is required");
    }

    // Routes.
    let mut routes = Vec::new();
    let mut prefixes = HashSet::new();
    for (i, r) in raw.routes.iter().enumerate() {
        let p = format!("routes[{i}]");
        if !r.prefix.starts_with('/') {
            errs.push(
                format!("{p}.prefix"),
                format!("must start with \"/\", got \"{}\"", r.prefix),
            );
        } else if crate::request::hygiene::check_path(&r.prefix).is_err() {
            errs.push(
                format!("{p}.prefix"),
                "must be a plain path without dot-segments, encoded characters or empty segments",
            );
        }
        if !prefixes.insert(r.prefix.clone()) {
            errs.push(
                format!("{p}.prefix"),
                format!("duplicate prefix \"{}\"", r.prefix),
            );
        }
        let upstream = match upstream_by_name.get(r.upstream.as_str()) {
            Some(u) => Some(u.clone()),
            None => {
                if !raw.upstreams.contains_key(&r.upstream) {
                    errs.push(
                        format!("{p}.upstream"),
                        format!("unknown upstream \"{}\"", r.upstream),
                    );
                }
                None
            }
        };
        if let Some(models) = &r.models {
            if models.is_empty() {
                errs.push(
                    format!("{p}.models"),
                    "empty list would refuse every model; omit it to allow all",
                );
            }
            for (j, m) in models.iter().enumerate() {
                if m.trim().is_empty() {
                    errs.push(format!("{p}.models[{j}]"), "empty model name");
                }
            }
        }
        if r.max_tokens == Some(0) {
            errs.push(format!("{p}.max_tokens"), "must be at least 1");
        }
        for (j, b) in r.betas.iter().enumerate() {
            if b.is_empty() || b.contains(',') || b.bytes().any(|c| !c.is_ascii_graphic()) {
                errs.push(
                    format!("{p}.betas[{j}]"),
                    "must be one beta value (visible ASCII, no comma)",
                );
            }
        }
        let pii = r
            .pii
            .as_ref()
            .and_then(|x| validate_pii(x, &format!("{p}.pii"), &mut errs));
        let mut block_patterns = None;
        if let Some(pats) = &r.block_patterns {
            for (j, pat) in pats.iter().enumerate() {
                if let Err(e) = regex::bytes::Regex::new(pat) {
                    errs.push(
                        format!("{p}.block_patterns[{j}]"),
                        format!("not a regex: {e}"),
                    );
                }
            }
            block_patterns = regex::bytes::RegexSet::new(pats)
                .ok()
                .filter(|s| !s.is_empty());
        }
        if let Some(upstream) = upstream {
            routes.push(Route {
                prefix: r.prefix.clone(),
                upstream,
                models: r.models.as_ref().map(|m| m.iter().cloned().collect()),
                max_tokens: r.max_tokens,
                block_patterns,
                pii,
                betas: r.betas.clone(),
            });
        }
    }
    if raw.routes.is_empty() {
        errs.push("routes", "at least one route is required");
    }
    routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));

    // Tiers.
    let mut tiers = HashMap::new();
    for (name, t) in &raw.tiers {
        let p = format!("tiers.{name}");
        for (field, v) in [
            ("requests_per_minute", t.requests_per_minute),
            ("requests_per_hour", t.requests_per_hour),
            ("requests_per_day", t.requests_per_day),
            ("tokens_per_day", t.tokens_per_day),
            ("concurrent", t.concurrent),
        ] {
            if v == Some(0) {
                errs.push(
                    format!("{p}.{field}"),
                    "must be at least 1 (omit it for no limit)",
                );
            }
        }
        tiers.insert(
            name.clone(),
            Tier {
                name: name.clone(),
                requests_per_minute: t.requests_per_minute,
                requests_per_hour: t.requests_per_hour,
                requests_per_day: t.requests_per_day,
                tokens_per_day: t.tokens_per_day,
                concurrent: t.concurrent,
                policy: None,
            },
        );
    }

    for t in tiers.values_mut() {
        t.policy =
            crate::limits::policy_header(t).and_then(|p| http::HeaderValue::try_from(p).ok());
    }

    // Sites and keys.
    let mut sites = Vec::new();
    let mut keys = HashMap::new();
    let mut bearer_keys = HashMap::new();
    let mut site_ids = HashSet::new();
    for (i, s) in raw.sites.iter().enumerate() {
        let p = format!("sites[{i}]");
        if !valid_id(&s.id) {
            errs.push(
                format!("{p}.id"),
                format!("\"{}\" is not a valid id (letters, digits, . _ -)", s.id),
            );
        }
        if !site_ids.insert(s.id.clone()) {
            errs.push(format!("{p}.id"), format!("duplicate site id \"{}\"", s.id));
        }
        if !raw.tiers.contains_key(&s.tier) {
            errs.push(format!("{p}.tier"), format!("unknown tier \"{}\"", s.tier));
        }
        if let Some(rs) = &s.routes {
            for (j, r) in rs.iter().enumerate() {
                if !raw.routes.iter().any(|x| &x.prefix == r) {
                    errs.push(
                        format!("{p}.routes[{j}]"),
                        format!("unknown route prefix \"{r}\""),
                    );
                }
            }
        }
        let mut cors = Vec::new();
        for (j, o) in s.cors_origins.iter().flatten().enumerate() {
            match validate_origin(o) {
                Ok(o) => cors.push(o),
                Err(m) => errs.push(format!("{p}.cors_origins[{j}]"), m),
            }
        }
        let site_index = sites.len();
        if s.keys.is_empty() {
            warnings.push(format!(
                "{p}.keys: site \"{}\" has no keys and cannot be used",
                s.id
            ));
        }
        for (j, k) in s.keys.iter().enumerate() {
            let kp = format!("{p}.keys[{j}]");
            if !valid_id(&k.id) {
                errs.push(
                    format!("{kp}.id"),
                    format!(
                        "\"{}\" is not a valid key id (letters, digits, . _ -)",
                        k.id
                    ),
                );
            }
            let key_id = KeyId(k.id.clone());
            if keys.contains_key(&key_id) {
                errs.push(format!("{kp}.id"), format!("duplicate key id \"{}\"", k.id));
                continue;
            }
            let place = format!("sites/{}/keys/{}", s.id, k.id);
            let auth = match k.auth.as_deref().unwrap_or("hmac") {
                mode @ ("hmac" | "legacy-site-timestamp") => {
                    if k.hash.is_some() {
                        errs.push(
                            format!("{kp}.hash"),
                            format!("only bearer keys have a hash; {mode} keys need a secret"),
                        );
                    }
                    match &k.secret {
                        None => {
                            errs.push(format!("{kp}.secret"), format!("required for auth {mode}"));
                            None
                        }
                        Some(v) => match secret::resolve(v, &place, &master_keys, opts.demo)
                            .and_then(|sec| strong_enough(sec, opts))
                        {
                            Ok(sec) => Some(if mode == "hmac" {
                                KeyAuth::Hmac(sec)
                            } else {
                                warnings.push(format!("{kp}: legacy-site-timestamp binds no body and no nonce; migrate to hmac"));
                                KeyAuth::LegacySiteTimestamp(sec)
                            }),
                            Err(m) => {
                                errs.push(format!("{kp}.secret"), m);
                                None
                            }
                        },
                    }
                }
                "bearer" => {
                    if k.secret.is_some() {
                        errs.push(
                            format!("{kp}.secret"),
                            "bearer keys are stored as hash: \"sha256:<hex>\", never as a secret",
                        );
                    }
                    match k.hash.as_deref().map(parse_sha256_hash) {
                        None => {
                            errs.push(
                                format!("{kp}.hash"),
                                "required for auth bearer (\"sha256:<64 hex digits>\")",
                            );
                            None
                        }
                        Some(Err(m)) => {
                            errs.push(format!("{kp}.hash"), m);
                            None
                        }
                        Some(Ok(h)) => {
                            if bearer_keys.insert(h, key_id.clone()).is_some() {
                                errs.push(
                                    format!("{kp}.hash"),
                                    "the same bearer key is configured twice",
                                );
                            }
                            Some(KeyAuth::Bearer(h))
                        }
                    }
                }
                other => {
                    errs.push(format!("{kp}.auth"), format!("unknown auth \"{other}\" (expected hmac, bearer or legacy-site-timestamp)"));
                    None
                }
            };
            if let Some(auth) = auth {
                keys.insert(
                    key_id.clone(),
                    ClientKey {
                        id: key_id,
                        site: site_index,
                        auth,
                    },
                );
            }
        }
        sites.push(Site {
            id: SiteId(s.id.clone()),
            limit_key: site_limit_key(&s.id),
            tier: s.tier.clone(),
            routes: s.routes.as_ref().map(|r| r.iter().cloned().collect()),
            cors_origins: cors,
            pii: s
                .pii
                .as_ref()
                .map(|x| validate_pii(x, &format!("{p}.pii"), &mut errs)),
        });
    }

    if let Some(log) = &raw.log {
        if let Some(p) = &log.audit_path {
            if p.is_empty() {
                errs.push("log.audit_path", "must not be empty");
            }
        }
    }
    let mut tokens = crate::auth::token::TokenKeys::default();
    for mk in &raw.master_keys {
        if let Some(k) = master_keys.get(&mk.id) {
            tokens.insert(&mk.id, k.bytes());
        }
    }
    tokens.current = raw.master_keys.first().map(|m| m.id.clone());
    let mut token_max_ttl = Duration::from_secs(300);
    if let Some(t) = &raw.tokens {
        match t.max_ttl_s {
            Some(0) | Some(86_401..) => {
                errs.push("tokens.max_ttl_s", "must be between 1 and 86400")
            }
            Some(s) => token_max_ttl = Duration::from_secs(s),
            None => {}
        }
        if let Some(k) = &t.key {
            if master_keys.contains_key(k) {
                tokens.current = Some(k.clone());
            } else {
                errs.push("tokens.key", format!("unknown master key \"{k}\""));
            }
        }
    }
    let cors_origins: HashSet<String> = sites
        .iter()
        .flat_map(|s| s.cors_origins.iter().cloned())
        .collect();
    let fleet = raw
        .fleet
        .as_ref()
        .and_then(|f| validate_fleet(f, &mut errs));
    if fleet.is_none() && raw.fleet.is_some() {
        warnings.push("fleet: no fleet.redis set; limits and nonces stay process-local".into());
    }

    if !errs.0.is_empty() {
        return Err(ConfigErrors(errs.0));
    }
    let mut rt = Runtime {
        generation: 0,
        server,
        process,
        upstreams,
        routes,
        tiers,
        sites,
        keys,
        bearer_keys,
        warnings,
        scanner: crate::response::validate::SecretScanner::new(&[]),
        tokens,
        token_max_ttl,
        cors_origins,
        fleet,
    };
    rt.scanner = crate::response::validate::SecretScanner::new(&all_secret_strings(&rt));
    Ok(rt)
}

/// Refuse weak secrets outside `--demo` (the message never shows the value).
fn strong_enough(sec: SecretString, opts: LoadOptions) -> Result<SecretString, String> {
    use secrecy::ExposeSecret;
    match secret::weakness(sec.expose_secret()) {
        Some(why) if !opts.demo => Err(format!("weak secret: {why}")),
        _ => Ok(sec),
    }
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn parse_sha256_hash(s: &str) -> Result<[u8; 32], String> {
    let hexpart = s
        .strip_prefix("sha256:")
        .ok_or_else(|| "must look like \"sha256:<64 hex digits>\"".to_string())?;
    let bytes = hex::decode(hexpart).map_err(|_| "hash is not hexadecimal".to_string())?;
    bytes
        .try_into()
        .map_err(|_| "a sha256 hash has 64 hex digits".to_string())
}

fn validate_origin(o: &str) -> Result<String, String> {
    if o == "*" {
        return Err("wildcard origins are not allowed; list each origin".into());
    }
    let uri: http::Uri = o.parse().map_err(|_| format!("\"{o}\" is not an origin"))?;
    let ok = matches!(uri.scheme_str(), Some("http") | Some("https"))
        && uri.host().is_some()
        && uri
            .path_and_query()
            .is_none_or(|p| p.as_str() == "/" || p.as_str().is_empty())
        && !o.ends_with('/');
    if !ok {
        return Err(format!(
            "\"{o}\" is not an origin (scheme://host[:port], no path)"
        ));
    }
    Ok(o.to_ascii_lowercase())
}

fn validate_server(s: &RawServer, errs: &mut Errors) -> (ServerSettings, ProcessSettings) {
    let mut listeners = Vec::new();
    if s.listen.is_empty() {
        errs.push("server.listen", "at least one listener is required");
    }
    let mut seen = HashSet::new();
    for (i, l) in s.listen.iter().enumerate() {
        let p = format!("server.listen[{i}]");
        match l.addr.parse::<SocketAddr>() {
            Ok(addr) => {
                if !seen.insert(addr) {
                    errs.push(format!("{p}.addr"), format!("duplicate listener {addr}"));
                }
                let tls = l.tls.as_ref().and_then(|t| {
                    match crate::tls::CertKey::load(Path::new(&t.cert), Path::new(&t.key)) {
                        Ok(ck) => Some(Arc::new(ck)),
                        Err((is_cert, m)) => {
                            let field = if is_cert { "cert" } else { "key" };
                            errs.push(format!("{p}.tls.{field}"), m);
                            None
                        }
                    }
                });
                listeners.push(Listener { addr, tls });
            }
            Err(_) => errs.push(
                format!("{p}.addr"),
                format!("\"{}\" is not an IP:port address", l.addr),
            ),
        }
    }
    let threads = s.threads.unwrap_or(2);
    if threads == 0 || threads > 256 {
        errs.push("server.threads", "must be between 1 and 256");
    }
    let admin_listen = s
        .admin_listen
        .as_ref()
        .and_then(|a| match a.parse::<SocketAddr>() {
            Ok(addr) => {
                if seen.contains(&addr) {
                    errs.push(
                        "server.admin_listen",
                        "must not share an address with a client listener",
                    );
                }
                Some(addr)
            }
            Err(_) => {
                errs.push(
                    "server.admin_listen",
                    format!("\"{a}\" is not an IP:port address"),
                );
                None
            }
        });
    let max_body = s.max_body_bytes.unwrap_or(1024 * 1024);
    if max_body == 0 || max_body > 64 * 1024 * 1024 {
        errs.push("server.max_body_bytes", "must be between 1 and 67108864");
    }
    let skew = s.clock_skew_s.unwrap_or(300);
    if skew == 0 || skew > 3600 {
        errs.push("server.clock_skew_s", "must be between 1 and 3600 seconds");
    }
    let hostnames = s.hostnames.as_ref().map(|h| {
        let mut set = HashSet::new();
        for (i, name) in h.iter().enumerate() {
            let n = name.to_ascii_lowercase();
            if n.is_empty() || n.contains('/') || n.contains(' ') {
                errs.push(
                    format!("server.hostnames[{i}]"),
                    format!("\"{name}\" is not a host[:port]"),
                );
            }
            set.insert(n);
        }
        set
    });
    let mut signed_headers = HashSet::new();
    for (i, h) in s.signed_headers.iter().flatten().enumerate() {
        let lower = h.to_ascii_lowercase();
        if http::HeaderName::from_bytes(lower.as_bytes()).is_err() || lower.starts_with('@') {
            errs.push(
                format!("server.signed_headers[{i}]"),
                format!("\"{h}\" is not a header name"),
            );
        } else if crate::auth::signature::REQUIRED_COMPONENTS.contains(&lower.as_str()) {
            errs.push(
                format!("server.signed_headers[{i}]"),
                format!("\"{h}\" is always signed; do not list it"),
            );
        }
        signed_headers.insert(lower);
    }
    if let Some(afl) = &s.auth_failure_limit {
        if afl.per_minute == 0 {
            errs.push("server.auth_failure_limit.per_minute", "must be at least 1");
        }
        if afl.cooldown_s == 0 || afl.cooldown_s > 86_400 {
            errs.push(
                "server.auth_failure_limit.cooldown_s",
                "must be between 1 and 86400",
            );
        }
    }
    let auth_failure_limit = s.auth_failure_limit.as_ref().map(|a| AuthFailureLimit {
        per_minute: a.per_minute,
        cooldown: Duration::from_secs(a.cooldown_s),
    });
    let mut trusted_proxies = Vec::new();
    for (i, cidr) in s.trusted_proxies.iter().flatten().enumerate() {
        match Cidr::parse(cidr) {
            Some(c) => trusted_proxies.push(c),
            None => errs.push(
                format!("server.trusted_proxies[{i}]"),
                format!("\"{cidr}\" is not an address or CIDR block"),
            ),
        }
    }
    let nonce_cap = s.nonce_store_capacity.unwrap_or(NONCE_DEFAULT_CAPACITY);
    if !(1024..=100_000_000).contains(&nonce_cap) {
        errs.push(
            "server.nonce_store_capacity",
            "must be between 1024 and 100000000",
        );
    }
    if s.max_header_bytes
        .is_some_and(|n| !(1024..=1_048_575).contains(&n))
    {
        errs.push(
            "server.max_header_bytes",
            "must be between 1024 and 1048575",
        );
    }
    if s.max_headers.is_some_and(|n| !(8..=256).contains(&n)) {
        errs.push("server.max_headers", "must be between 8 and 256");
    }
    if s.keepalive_timeout_s.is_some_and(|n| n == 0 || n > 3600) {
        errs.push("server.keepalive_timeout_s", "must be between 1 and 3600");
    }
    if s.keepalive_requests == Some(0) {
        errs.push("server.keepalive_requests", "must be at least 1");
    }
    let body_timeout = s.body_timeout_ms.unwrap_or(30_000);
    if body_timeout == 0 {
        errs.push("server.body_timeout_ms", "must be at least 1");
    }
    let header_timeout = s.header_timeout_ms.unwrap_or(10_000);
    if !(100..=300_000).contains(&header_timeout) {
        errs.push("server.header_timeout_ms", "must be between 100 and 300000");
    }
    let max_connections = s.max_connections.unwrap_or(10_000);
    if !(1..=1_000_000).contains(&max_connections) {
        errs.push("server.max_connections", "must be between 1 and 1000000");
    }
    let max_per_ip = s.max_connections_per_ip.unwrap_or(256);
    if max_per_ip == 0 || max_per_ip > max_connections {
        errs.push(
            "server.max_connections_per_ip",
            format!("must be between 1 and server.max_connections ({max_connections})"),
        );
    }
    let h2_streams = s.h2_max_concurrent_streams.unwrap_or(100);
    if !(1..=1000).contains(&h2_streams) {
        errs.push(
            "server.h2_max_concurrent_streams",
            "must be between 1 and 1000",
        );
    }
    (
        ServerSettings {
            hostnames,
            max_body_bytes: max_body as usize,
            clock_skew: Duration::from_secs(skew),
            signed_headers,
            body_timeout: Duration::from_millis(body_timeout),
            trusted_proxies,
            auth_failure_limit,
            max_header_bytes: s.max_header_bytes.unwrap_or(32 * 1024),
            max_headers: s.max_headers.unwrap_or(100),
            keepalive_timeout: Duration::from_secs(s.keepalive_timeout_s.unwrap_or(60)),
            header_timeout: Duration::from_millis(header_timeout),
            max_connections,
            max_connections_per_ip: max_per_ip,
        },
        ProcessSettings {
            listeners,
            threads,
            work_stealing: s.work_stealing.unwrap_or(false),
            admin_listen,
            pid_file: s
                .pid_file
                .clone()
                .unwrap_or_else(|| "/tmp/keygate.pid".into()),
            upgrade_sock: s
                .upgrade_sock
                .clone()
                .unwrap_or_else(|| "/tmp/keygate_upgrade.sock".into()),
            grace_period_s: s.grace_period_s.unwrap_or(5),
            graceful_shutdown_timeout_s: s.graceful_shutdown_timeout_s.unwrap_or(10),
            nonce_store_capacity: nonce_cap,
            upstream_keepalive_pool_size: s.upstream_keepalive_pool_size.unwrap_or(256),
            audit_path: None,
            keepalive_requests: s.keepalive_requests,
            h2_max_concurrent_streams: h2_streams,
        },
    )
}

/// `pii: { mode, kinds, patterns }` at YAML path `p`; `None` for `off` or on error.
fn validate_pii(raw: &RawPii, p: &str, errs: &mut Errors) -> Option<Arc<crate::pii::PiiPolicy>> {
    use crate::pii::{detect, PiiMode, PiiPolicy};
    let before = errs.0.len();
    let mode = match raw.mode.as_str() {
        "off" => None,
        "pseudonymize" => Some(PiiMode::Pseudonymize),
        "block" => Some(PiiMode::Block),
        other => {
            errs.push(
                format!("{p}.mode"),
                format!("unknown mode \"{other}\" (expected off, pseudonymize or block)"),
            );
            None
        }
    };
    let mut patterns = Vec::new();
    for (i, pat) in raw.patterns.iter().enumerate() {
        let pp = format!("{p}.patterns[{i}]");
        let name_ok = pat.name.starts_with(|c: char| c.is_ascii_lowercase())
            && pat.name.len() <= 32
            && pat
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !name_ok {
            errs.push(
                format!("{pp}.name"),
                format!(
                    "\"{}\" is not a valid name (a-z, 0-9, _; starting with a letter)",
                    pat.name
                ),
            );
        } else if detect::BUILTIN_KINDS.contains(&pat.name.as_str())
            || raw.patterns[..i].iter().any(|q| q.name == pat.name)
        {
            errs.push(
                format!("{pp}.name"),
                format!("duplicate kind \"{}\"", pat.name),
            );
        }
        match regex::Regex::new(&pat.regex) {
            Err(e) => errs.push(format!("{pp}.regex"), format!("not a regex: {e}")),
            Ok(re) if re.is_match("") => {
                errs.push(format!("{pp}.regex"), "matches the empty string")
            }
            Ok(_) => {}
        }
        patterns.push(detect::CustomPattern {
            name: pat.name.clone(),
            regex: pat.regex.clone(),
        });
    }
    let mut builtin: Vec<&str> = Vec::new();
    for (i, k) in raw.kinds.iter().enumerate() {
        if detect::BUILTIN_KINDS.contains(&k.as_str()) {
            builtin.push(k);
        } else if !raw.patterns.iter().any(|q| &q.name == k) {
            errs.push(
                format!("{p}.kinds[{i}]"),
                format!(
                    "unknown kind \"{k}\" (expected {} or a pattern name)",
                    detect::BUILTIN_KINDS.join(", ")
                ),
            );
        }
    }
    if raw.kinds.is_empty() {
        builtin = detect::BUILTIN_KINDS.to_vec();
    } else {
        patterns.retain(|q| raw.kinds.contains(&q.name));
    }
    if errs.0.len() != before {
        return None;
    }
    let mode = mode?;
    match detect::Detector::new(&builtin, &patterns) {
        Ok(detector) => Some(Arc::new(PiiPolicy { mode, detector })),
        Err(e) => {
            errs.push(p, format!("cannot build the detector: {e}"));
            None
        }
    }
}

/// Parse `a.b.c.d`, `a.b.c.d/n`, or the IPv6 equivalents.
pub fn parse_cidr(s: &str) -> Option<(std::net::IpAddr, u8)> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l.parse::<u8>().ok()?)),
        None => (s, None),
    };
    let ip: std::net::IpAddr = addr.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = len.unwrap_or(max);
    (len <= max).then_some((ip, len))
}

fn validate_master_keys(raw: &[RawMasterKey], errs: &mut Errors) -> HashMap<String, MasterKey> {
    let mut out = HashMap::new();
    for (i, mk) in raw.iter().enumerate() {
        let p = format!("master_keys[{i}]");
        if !valid_id(&mk.id) {
            errs.push(
                format!("{p}.id"),
                format!("\"{}\" is not a valid id", mk.id),
            );
        }
        if out.contains_key(&mk.id) {
            errs.push(
                format!("{p}.id"),
                format!("duplicate master key id \"{}\"", mk.id),
            );
            continue;
        }
        match secret::read_source(&mk.source) {
            Ok(Some(text)) => match MasterKey::from_base64(&text) {
                Ok(k) => {
                    out.insert(mk.id.clone(), k);
                }
                Err(m) => errs.push(format!("{p}.source"), m),
            },
            Ok(None) => errs.push(format!("{p}.source"), "must be env:NAME or file:/path"),
            Err(m) => errs.push(format!("{p}.source"), m),
        }
    }
    out
}

fn validate_upstream(
    name: &str,
    u: &RawUpstream,
    p: &str,
    master_keys: &HashMap<String, MasterKey>,
    opts: LoadOptions,
    errs: &mut Errors,
    warnings: &mut Vec<String>,
) -> Option<Upstream> {
    let before = errs.0.len();
    if !valid_id(name) {
        errs.push(p, format!("\"{name}\" is not a valid upstream name"));
    }
    let kind = UpstreamKind::parse(&u.kind);
    if kind.is_none() {
        errs.push(
            format!("{p}.kind"),
            format!("unknown kind \"{}\" (expected {KIND_NAMES})", u.kind),
        );
    }
    let uri: Option<http::Uri> = u.url.parse().ok();
    let parsed = uri.as_ref().and_then(|uri| {
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return None,
        };
        let host = uri
            .host()?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        if uri.query().is_some() {
            return None;
        }
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let base_path = uri.path().trim_end_matches('/').to_string();
        Some((tls, host, port, base_path))
    });
    if parsed.is_none() {
        errs.push(
            format!("{p}.url"),
            format!("\"{}\" is not an http(s)://host[:port][/path] URL", u.url),
        );
    }
    if let Some((false, host, _, _)) = &parsed {
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            warnings.push(format!(
                "{p}.url: plain http to a non-loopback host sends the provider key in clear text"
            ));
        }
    }
    let mut credentials = Vec::new();
    let mut ids = HashSet::new();
    if u.credentials.is_empty() {
        errs.push(
            format!("{p}.credentials"),
            "at least one credential is required",
        );
    }
    for (i, c) in u.credentials.iter().enumerate() {
        let cp = format!("{p}.credentials[{i}]");
        if !valid_id(&c.id) {
            errs.push(
                format!("{cp}.id"),
                format!("\"{}\" is not a valid id", c.id),
            );
        }
        if !ids.insert(c.id.clone()) {
            errs.push(
                format!("{cp}.id"),
                format!("duplicate credential id \"{}\"", c.id),
            );
        }
        let place = format!("upstreams/{name}/credentials/{}", c.id);
        match secret::resolve(&c.secret, &place, master_keys, opts.demo)
            .and_then(|sec| strong_enough(sec, opts))
        {
            Ok(secret) => {
                let header = crate::upstream::headers::credential_value(
                    kind.unwrap_or(UpstreamKind::OpenAi),
                    &secret,
                );
                match header {
                    Some(header) => credentials.push(Credential {
                        id: c.id.clone(),
                        secret,
                        header,
                    }),
                    None => errs.push(
                        format!("{cp}.secret"),
                        "contains spaces or control characters",
                    ),
                }
            }
            Err(m) => errs.push(format!("{cp}.secret"), m),
        }
    }
    let is_tls = matches!(parsed, Some((true, ..)));
    let mut pins = Vec::new();
    for (i, pin) in u.pins.iter().flatten().enumerate() {
        match crate::upstream::pinning::SpkiPin::parse(pin) {
            Ok(p) => pins.push(p),
            Err(m) => errs.push(format!("{p}.pins[{i}]"), m),
        }
    }
    if !pins.is_empty() && !is_tls {
        errs.push(format!("{p}.pins"), "pins need an https:// url");
    }
    if pins.is_empty() && is_tls {
        warnings.push(format!(
            "{p}: no pins; any certificate trusted by the {} is accepted",
            if u.ca.is_some() {
                "configured ca"
            } else {
                "system store"
            }
        ));
    }
    let ca = match &u.ca {
        None => None,
        Some(_) if !is_tls => {
            errs.push(format!("{p}.ca"), "a ca needs an https:// url");
            None
        }
        Some(path) => match crate::upstream::pinning::load_pem_chain(Path::new(path)) {
            Ok(certs) => Some(Arc::new(certs.into_boxed_slice())),
            Err(m) => {
                errs.push(format!("{p}.ca"), m);
                None
            }
        },
    };
    let connect_ms = u.connect_timeout_ms.unwrap_or(3000);
    if connect_ms == 0 || connect_ms > 60_000 {
        errs.push(
            format!("{p}.connect_timeout_ms"),
            "must be between 1 and 60000",
        );
    }
    let read_ms = u.read_timeout_ms.unwrap_or(120_000);
    if read_ms == 0 || read_ms > 3_600_000 {
        errs.push(
            format!("{p}.read_timeout_ms"),
            "must be between 1 and 3600000",
        );
    }
    if let Some(cb) = &u.circuit_breaker {
        if cb.failures == 0 {
            errs.push(
                format!("{p}.circuit_breaker.failures"),
                "must be at least 1",
            );
        }
        if cb.open_s == 0 {
            errs.push(format!("{p}.circuit_breaker.open_s"), "must be at least 1");
        }
        if cb.half_open_successes == 0 {
            errs.push(
                format!("{p}.circuit_breaker.half_open_successes"),
                "must be at least 1",
            );
        }
    }
    let circuit = u
        .circuit_breaker
        .as_ref()
        .map(|cb| crate::upstream::circuit::CircuitConfig {
            failures: cb.failures,
            open: Duration::from_secs(cb.open_s),
            half_open_successes: cb.half_open_successes,
        })
        .unwrap_or_default();
    let total_ms = u.total_timeout_ms.unwrap_or(600_000);
    if !(1000..=86_400_000).contains(&total_ms) {
        errs.push(
            format!("{p}.total_timeout_ms"),
            "must be between 1000 and 86400000",
        );
    }
    let max_resp = u.max_response_bytes.unwrap_or(8 * 1024 * 1024);
    if max_resp == 0 {
        errs.push(format!("{p}.max_response_bytes"), "must be at least 1");
    }
    use crate::upstream::headers::{Direction, HeaderAllow};
    let mut allow = |names: &[String], field: &str, dir| {
        HeaderAllow::parse(names, dir).unwrap_or_else(|e| {
            for (i, msg) in e {
                errs.push(format!("{p}.{field}[{i}]"), msg);
            }
            HeaderAllow::default()
        })
    };
    let request_headers = allow(
        &u.forward_request_headers,
        "forward_request_headers",
        Direction::Request,
    );
    let response_headers = allow(
        &u.forward_response_headers,
        "forward_response_headers",
        Direction::Response,
    );
    if errs.0.len() != before {
        return None;
    }
    let (tls, host, port, base_path) = parsed?;
    let default_port = if tls { 443 } else { 80 };
    let host_for_header = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    let authority = if port == default_port {
        host_for_header
    } else {
        format!("{host_for_header}:{port}")
    };
    // Connections made under other pins or another CA are never reused.
    let group_key = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let mut sorted = pins.clone();
        sorted.sort();
        sorted.hash(&mut h);
        if let Some(ca) = &ca {
            for c in ca.iter() {
                c.to_der().unwrap_or_default().hash(&mut h);
            }
        }
        h.finish()
    };
    Some(Upstream {
        name: name.to_string(),
        pins,
        ca,
        group_key,
        request_headers,
        response_headers,
        index: 0,
        circuit,
        kind: kind?,
        tls,
        host,
        port,
        base_path,
        credentials,
        connect_timeout: Duration::from_millis(connect_ms),
        read_timeout: Duration::from_millis(read_ms),
        total_timeout: Duration::from_millis(total_ms),
        max_response_bytes: max_resp as usize,
        authority,
    })
}

/// Every `enc:v1` value of a raw config with its place name (the AAD) and YAML path.
pub fn encrypted_values(raw: &RawConfig) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (name, u) in &raw.upstreams {
        for (i, c) in u.credentials.iter().enumerate() {
            if c.secret.starts_with("enc:") {
                out.push((
                    format!("upstreams.{name}.credentials[{i}].secret"),
                    format!("upstreams/{name}/credentials/{}", c.id),
                    c.secret.clone(),
                ));
            }
        }
    }
    for (i, s) in raw.sites.iter().enumerate() {
        for (j, k) in s.keys.iter().enumerate() {
            if let Some(v) = k.secret.as_ref().filter(|v| v.starts_with("enc:")) {
                out.push((
                    format!("sites[{i}].keys[{j}].secret"),
                    format!("sites/{}/keys/{}", s.id, k.id),
                    v.clone(),
                ));
            }
        }
    }
    out
}

/// Files holding secret material that a config refers to, with their YAML paths.
pub fn sensitive_files(raw: &RawConfig) -> Vec<(String, std::path::PathBuf)> {
    let mut out = Vec::new();
    let mut file = |path: String, v: &str| {
        if let Some(p) = v.strip_prefix("file:") {
            out.push((path, std::path::PathBuf::from(p)));
        }
    };
    for (i, m) in raw.master_keys.iter().enumerate() {
        file(format!("master_keys[{i}].source"), &m.source);
    }
    for (name, u) in &raw.upstreams {
        for (i, c) in u.credentials.iter().enumerate() {
            file(
                format!("upstreams.{name}.credentials[{i}].secret"),
                &c.secret,
            );
        }
    }
    for (i, s) in raw.sites.iter().enumerate() {
        for (j, k) in s.keys.iter().enumerate() {
            if let Some(v) = &k.secret {
                file(format!("sites[{i}].keys[{j}].secret"), v);
            }
        }
    }
    for (i, l) in raw.server.listen.iter().enumerate() {
        if let Some(t) = &l.tls {
            out.push((
                format!("server.listen[{i}].tls.key"),
                std::path::PathBuf::from(&t.key),
            ));
        }
    }
    out
}

/// Every secret string of a runtime (client secrets and provider credentials), for
/// leak checks in tests and egress scanning.
pub fn all_secret_strings(rt: &Runtime) -> Vec<String> {
    use secrecy::ExposeSecret;
    let mut out = BTreeSet::new();
    for u in &rt.upstreams {
        for c in &u.credentials {
            out.insert(c.secret.expose_secret().to_string());
        }
    }
    for k in rt.keys.values() {
        match &k.auth {
            KeyAuth::Hmac(s) | KeyAuth::LegacySiteTimestamp(s) => {
                out.insert(s.expose_secret().to_string());
            }
            KeyAuth::Bearer(_) => {}
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests;
