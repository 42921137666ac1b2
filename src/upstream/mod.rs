//! Reaching the provider: address resolution, the Pingora peer, and the request
//! headers that go upstream (client credentials out, provider credential in).

pub mod circuit;
pub mod dns;
pub mod failover;
pub mod failure;
pub mod headers;
pub mod kind;
pub mod live;
pub mod model_map;
pub mod pinning;

use crate::config::{Credential, Upstream};
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use pinning::PinError;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Whether each worker thread keeps its own upstream connections (set at start when
/// `server.work_stealing` is off).
static PER_WORKER_POOLS: AtomicBool = AtomicBool::new(false);

/// Give each worker thread its own upstream connection pool. Without work stealing
/// every worker runs its own reactor, and a pooled connection opened by one worker
/// and reused by another has its readiness events delivered by the first worker's
/// reactor: each read then needs a wake-up across threads. Per-worker pools (as
/// Envoy keeps them) avoid that, at the cost of more idle upstream connections.
pub fn use_per_worker_pools(on: bool) {
    PER_WORKER_POOLS.store(on, Ordering::Relaxed);
}

/// A value distinct per thread (never 0; mixed so that it is spread over all 64 bits).
fn thread_key() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static KEY: u64 = {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1
        };
    }
    KEY.with(|k| *k)
}

/// Build the peer for one attempt at `up` at the resolved `addr`; `left`: the time left
/// of the request's budget, which no timeout passes. SNI is always the configured host
/// name, so certificate verification is never silently disabled.
pub fn peer(up: &Upstream, addr: SocketAddr, left: Option<Duration>) -> HttpPeer {
    let mut p = HttpPeer::new(addr, up.tls, up.host.clone());
    let within = |d: Duration| left.map_or(d, |l| d.min(l));
    let o = &mut p.options;
    o.connection_timeout = Some(within(up.connect_timeout));
    o.total_connection_timeout = Some(within(up.connect_timeout + Duration::from_secs(2)));
    o.read_timeout = Some(within(up.read_timeout));
    o.write_timeout = Some(up.read_timeout.min(Duration::from_secs(30)));
    o.idle_timeout = Some(Duration::from_secs(60));
    o.verify_cert = true;
    o.verify_hostname = true;
    if up.tls {
        o.ca = up.ca.clone();
        o.upstream_tls_handshake_complete_hook = Some(pinning::HANDSHAKE_HOOK.clone());
    }
    p.group_key = up.group_key;
    if PER_WORKER_POOLS.load(Ordering::Relaxed) {
        p.group_key ^= thread_key();
    }
    p
}

/// Enforce `up`'s pins on a connection (new or reused) before any request byte is
/// written. Returns the error to show the client; logs the presented pins so an
/// operator can update the config.
pub fn enforce_pins(
    up: &Upstream,
    digest: Option<&pingora::protocols::Digest>,
) -> Result<(), crate::error::GatewayError> {
    if up.pins.is_empty() {
        return Ok(());
    }
    let presented = digest
        .and_then(|d| d.ssl_digest.as_ref())
        .and_then(|s| s.extension.get::<pinning::PresentedKeys>());
    match pinning::check(&up.pins, presented) {
        Ok(()) => Ok(()),
        Err(e) => {
            crate::telemetry::metrics::METRICS
                .upstream_errors
                .with_label_values(&[up.name.as_str(), "pin_mismatch"])
                .inc();
            let seen = match &e {
                PinError::Missing => "none (no TLS key hashes on the connection)".to_string(),
                PinError::Mismatch(keys) => keys
                    .iter()
                    .map(|k| k.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            };
            log::error!(
                "upstream {}: public-key pin mismatch; the server presented: {seen}; configured pins: {}",
                up.name,
                up.pins.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(", ")
            );
            Err(crate::error::GatewayError::upstream(
                "The provider's TLS key is not pinned.",
            ))
        }
    }
}

/// TLS 1.2 or later on every connection to an https upstream, checked before any request
/// byte (Pingora's connector accepts TLS 1.0); on a new connection, the provider's leaf
/// certificate expiry goes to `keygate_upstream_cert_not_after_seconds`.
pub fn check_tls(
    up: &Upstream,
    digest: Option<&pingora::protocols::Digest>,
    reused: bool,
) -> Result<(), crate::error::GatewayError> {
    if !up.tls {
        return Ok(());
    }
    let ssl = digest.and_then(|d| d.ssl_digest.as_ref());
    let version = ssl.map_or("none", |s| &*s.version);
    if !pinning::tls_version_ok(version) {
        count_failure(&up.name, failure::Failure::Tls);
        log::error!(
            "upstream {}: TLS version {version} refused (TLS 1.2 or later required)",
            up.name
        );
        return Err(crate::error::GatewayError::upstream(
            "The provider's TLS version is below 1.2.",
        ));
    }
    let not_after = ssl
        .and_then(|s| s.extension.get::<pinning::PresentedKeys>())
        .and_then(|p| p.leaf_not_after);
    if let (false, Some(t)) = (reused, not_after) {
        crate::telemetry::metrics::METRICS
            .upstream_cert_not_after
            .with_label_values(&[up.name.as_str()])
            .set(t);
    }
    Ok(())
}

/// Count an upstream failure by kind (`keygate_upstream_errors_total`).
pub fn count_failure(upstream: &str, failure: failure::Failure) {
    crate::telemetry::metrics::METRICS
        .upstream_errors
        .with_label_values(&[upstream, failure.label()])
        .inc();
}

/// A provider 401 or 429 rests the credential that got it (honouring `Retry-After`),
/// so the others carry the traffic.
pub fn note_credential_answer(
    resp: &http::response::Parts,
    upstream: Option<&live::UpstreamLive>,
    credential: Option<&str>,
) {
    let status = resp.status.as_u16();
    if status != 401 && status != 429 {
        return;
    }
    let (Some(up), Some(id)) = (upstream, credential) else {
        return;
    };
    let default = if status == 401 { 300 } else { 30 };
    let secs = resp
        .headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(default)
        .min(3600);
    up.cool_down(id, Duration::from_secs(secs), crate::clock::now_ms());
    log::warn!(
        "upstream {}: credential {id} answered {status}; resting it for {secs}s",
        up.name
    );
}

pub const USER_AGENT: &str = concat!("keygate/", env!("CARGO_PKG_VERSION"));

/// Rewrite the request for `up`: path, Host, stripped headers, injected credential.
pub fn prepare_upstream_request(
    req: &mut RequestHeader,
    up: &Upstream,
    credential: &Credential,
    path_and_query: &str,
) -> pingora::Result<()> {
    // By allow-list: what the client sent that is not known to be safe stays here.
    let dropped: Vec<http::HeaderName> = req
        .headers
        .keys()
        .filter(|n| !headers::forwards(up.kind, &up.request_headers, n.as_str()))
        .cloned()
        .collect();
    for name in &dropped {
        req.remove_header(name);
    }
    let uri: http::Uri = path_and_query.parse().map_err(|_| {
        pingora::Error::explain(pingora::ErrorType::InvalidHTTPHeader, "bad upstream path")
    })?;
    req.set_uri(uri);
    req.insert_header(http::header::HOST, up.authority.as_str())?;
    // No content coding: keygate checks answers as the client reads them, and refuses a
    // coded one (an absent header would allow any coding).
    req.insert_header(
        http::header::ACCEPT_ENCODING,
        http::HeaderValue::from_static("identity"),
    )?;
    // The client's own user agent may identify the end user's browser: keygate's instead.
    req.insert_header(
        http::header::USER_AGENT,
        http::HeaderValue::from_static(USER_AGENT),
    )?;
    // A clone shares the value built at load: the key is not copied per request.
    req.insert_header(headers::credential_name(up.kind), credential.header.clone())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn per_worker_pools_split_the_pool_by_thread_only_when_on() {
        let rt = crate::config::load_str(
            r#"
server: { listen: [{ addr: "127.0.0.1:8080" }] }
upstreams:
  up: { kind: openai, url: "http://127.0.0.1:9", credentials: [{ id: c1, secret: "sk-literal-for-tests-000000000000" }] }
routes: [{ prefix: "/v1/", upstream: up }]
tiers: { t: { requests_per_minute: 10 } }
sites: [{ id: s, tier: t, keys: [{ id: s.k1, auth: hmac, secret: "kgs_literal_for_tests_0000000000" }] }]
"#,
            crate::config::LoadOptions { demo: true },
        )
        .unwrap();
        let up = rt.upstreams[0].clone();
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let key_on_other_thread = |up: Arc<Upstream>| {
            std::thread::spawn(move || peer(&up, addr, None).group_key)
                .join()
                .unwrap()
        };
        // Off (Pingora's shared pool): the upstream's own key, on every thread.
        assert_eq!(peer(&up, addr, None).group_key, up.group_key);
        assert_eq!(key_on_other_thread(up.clone()), up.group_key);
        use_per_worker_pools(true);
        let here = peer(&up, addr, None).group_key;
        let again = peer(&up, addr, None).group_key;
        let other = key_on_other_thread(up.clone());
        use_per_worker_pools(false);
        assert_ne!(here, up.group_key);
        assert_eq!(again, here, "stable on one thread");
        assert_ne!(other, here, "another thread has its own pool");
        assert_ne!(other, up.group_key);
    }
}
