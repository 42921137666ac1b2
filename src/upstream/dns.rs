//! Asynchronous name resolution with a small cache. Pingora's `HttpPeer::new` on a
//! host name resolves synchronously and panics on failure, so keygate resolves here
//! and hands Pingora a `SocketAddr`.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a successful lookup is reused.
pub const TTL: Duration = Duration::from_secs(30);
/// How long a lookup may take.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);
/// Cache bound (entries); upstream hosts come from config, so this is never reached in practice.
const MAX_ENTRIES: usize = 1024;

/// Addresses of one name and when they were looked up.
type Resolved = (Vec<SocketAddr>, Instant);

/// A resolver with a per-(host, port) cache.
#[derive(Default)]
pub struct Resolver {
    cache: Mutex<HashMap<(String, u16), Resolved>>,
    rr: AtomicUsize,
}

impl Resolver {
    /// Resolve `host:port`, from the cache when fresh; spreads over all addresses.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, String> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        let key = (host.to_string(), port);
        if let Some((addrs, at)) = self.cache.lock().get(&key) {
            if at.elapsed() < TTL && !addrs.is_empty() {
                return Ok(addrs[self.rr.fetch_add(1, Ordering::Relaxed) % addrs.len()]);
            }
        }
        let lookup = tokio::net::lookup_host((host, port));
        let addrs: Vec<SocketAddr> = match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
            Ok(Ok(it)) => it.collect(),
            Ok(Err(e)) => return Err(format!("cannot resolve {host}: {}", e.kind())),
            Err(_) => return Err(format!("resolving {host} timed out")),
        };
        let first = *addrs
            .first()
            .ok_or_else(|| format!("{host} has no addresses"))?;
        let mut cache = self.cache.lock();
        if cache.len() >= MAX_ENTRIES {
            cache.retain(|_, (_, at)| at.elapsed() < TTL);
        }
        if cache.len() < MAX_ENTRIES {
            cache.insert(key, (addrs, Instant::now()));
        }
        Ok(first)
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
}
