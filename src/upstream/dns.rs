//! Asynchronous name resolution with a small cache. Pingora's `HttpPeer::new` on a
//! host name resolves synchronously and panics on failure, so keygate resolves here
//! and hands Pingora a `SocketAddr`.
//!
//! An address older than [`TTL`] is still served while one lookup in the background
//! refreshes it (for up to [`STALE_MAX`]), as nginx's `resolver … valid=` and Envoy's DNS
//! cache do: when the resolver is slow or down, requests keep the address known moments
//! ago instead of each starting a lookup of its own and failing together.

use futures::future::BoxFuture;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a successful lookup is used before it is refreshed.
pub const TTL: Duration = Duration::from_secs(30);
/// How long an address may be served past [`TTL`] while refreshes fail.
pub const STALE_MAX: Duration = Duration::from_secs(600);
/// How long a lookup may take.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);
/// How long after a failed refresh the next may start.
const REFRESH_BACKOFF: Duration = Duration::from_secs(5);
/// Cache bound (entries); upstream hosts come from config, so this is never reached in practice.
const MAX_ENTRIES: usize = 1024;

/// Addresses of one name, when they were looked up, and whether a refresh is running.
struct Entry {
    addrs: Vec<SocketAddr>,
    at: Instant,
    refreshing: bool,
    /// After a failed refresh: no other before this.
    retry_at: Option<Instant>,
}

type Cache = Mutex<HashMap<(String, u16), Entry>>;
type Lookup =
    Arc<dyn Fn(String, u16) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> + Send + Sync>;

/// A resolver with a per-(host, port) cache.
pub struct Resolver {
    cache: Arc<Cache>,
    rr: AtomicUsize,
    lookup: Lookup,
}

impl Default for Resolver {
    fn default() -> Self {
        Resolver::with_lookup(Arc::new(|host: String, port: u16| {
            Box::pin(async move {
                tokio::net::lookup_host((host.as_str(), port))
                    .await
                    .map(Iterator::collect)
            }) as BoxFuture<'static, _>
        }))
    }
}

impl Resolver {
    fn with_lookup(lookup: Lookup) -> Resolver {
        Resolver {
            cache: Arc::default(),
            rr: AtomicUsize::new(0),
            lookup,
        }
    }

    /// Resolve `host:port`, from the cache when fresh (or stale, with a refresh started);
    /// spreads over all addresses.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, String> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        let key = (host.to_string(), port);
        {
            let mut cache = self.cache.lock();
            if let Some(e) = cache.get_mut(&key).filter(|e| !e.addrs.is_empty()) {
                let age = e.at.elapsed();
                if age < TTL + STALE_MAX {
                    let addr = e.addrs[self.rr.fetch_add(1, Ordering::Relaxed) % e.addrs.len()];
                    let due = e.retry_at.is_none_or(|t| Instant::now() >= t);
                    if age >= TTL && !e.refreshing && due {
                        e.refreshing = true;
                        self.refresh(key);
                    }
                    return Ok(addr);
                }
            }
        }
        let addrs = lookup(&self.lookup, host, port).await?;
        let first = addrs[0];
        store(&self.cache, key, addrs);
        Ok(first)
    }

    /// Look `key` up again in the background; a failure keeps the stale addresses.
    fn refresh(&self, key: (String, u16)) {
        let (cache, lookup) = (self.cache.clone(), self.lookup.clone());
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            match self::lookup(&lookup, &key.0, key.1).await {
                Ok(addrs) => store(&cache, key, addrs),
                Err(e) => {
                    log::warn!("upstream: {e}; serving the address looked up before");
                    if let Some(entry) = cache.lock().get_mut(&key) {
                        entry.refreshing = false;
                        entry.retry_at = Some(Instant::now() + REFRESH_BACKOFF);
                    }
                }
            }
        });
    }
}

/// One lookup, bounded by [`LOOKUP_TIMEOUT`]; at least one address.
async fn lookup(lookup: &Lookup, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let addrs = match tokio::time::timeout(LOOKUP_TIMEOUT, lookup(host.to_string(), port)).await {
        Ok(Ok(addrs)) => addrs,
        Ok(Err(e)) => return Err(format!("cannot resolve {host}: {}", e.kind())),
        Err(_) => return Err(format!("resolving {host} timed out")),
    };
    match addrs.is_empty() {
        true => Err(format!("{host} has no addresses")),
        false => Ok(addrs),
    }
}

fn store(cache: &Cache, key: (String, u16), addrs: Vec<SocketAddr>) {
    let mut cache = cache.lock();
    if cache.len() >= MAX_ENTRIES {
        cache.retain(|_, e| e.at.elapsed() < TTL + STALE_MAX);
    }
    if cache.len() < MAX_ENTRIES || cache.contains_key(&key) {
        let entry = Entry {
            addrs,
            at: Instant::now(),
            refreshing: false,
            retry_at: None,
        };
        cache.insert(key, entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ip_literals_and_localhost_resolve() {
        let r = Resolver::default();
        assert_eq!(
            r.resolve("127.0.0.1", 80).await.unwrap(),
            "127.0.0.1:80".parse().unwrap()
        );
        let a = r.resolve("localhost", 81).await.unwrap();
        assert_eq!(a.port(), 81);
        assert!(a.ip().is_loopback());
        assert!(r.cache.lock().contains_key(&("localhost".to_string(), 81)));
    }

    #[tokio::test]
    async fn unknown_names_fail_without_panicking() {
        let r = Resolver::default();
        assert!(r.resolve("no-such-host.invalid", 443).await.is_err());
    }

    /// Each request past the TTL started a lookup of its own, and when the resolver was
    /// down they all failed, though the address was known moments before.
    #[tokio::test]
    async fn a_stale_address_is_served_while_one_refresh_runs_and_fails() {
        let calls = Arc::new(AtomicUsize::new(0));
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (c, u) = (calls.clone(), up.clone());
        let r = Resolver::with_lookup(Arc::new(move |_host: String, port: u16| {
            c.fetch_add(1, Ordering::SeqCst);
            let up = u.load(Ordering::SeqCst);
            Box::pin(async move {
                match up {
                    true => Ok(vec![SocketAddr::from(([192, 0, 2, 1], port))]),
                    false => Err(std::io::Error::other("resolver down")),
                }
            }) as BoxFuture<'static, _>
        }));
        let first = r.resolve("api.example", 443).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Past the TTL, with the resolver down.
        up.store(false, Ordering::SeqCst);
        let key = ("api.example".to_string(), 443);
        r.cache.lock().get_mut(&key).unwrap().at = Instant::now() - TTL - Duration::from_secs(1);
        for _ in 0..50 {
            assert_eq!(r.resolve("api.example", 443).await.unwrap(), first);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "one refresh for 50 requests"
        );
        // Once the resolver answers, the next refresh (after the backoff) takes.
        up.store(true, Ordering::SeqCst);
        r.cache.lock().get_mut(&key).unwrap().retry_at = None;
        r.resolve("api.example", 443).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(r.cache.lock().get(&key).unwrap().at.elapsed() < TTL);
    }
}
