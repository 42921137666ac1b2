//! The client's IP and the per-IP limit on failed authentications.

use super::window::SlidingWindow;
use crate::config::Cidr;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The client IP: the socket peer, unless the peer is a trusted proxy; then the
/// right-most `X-Forwarded-For` address that is not itself trusted.
pub fn client_ip(peer: IpAddr, xff: &[&str], trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut candidate = peer;
    for value in xff.iter().rev() {
        for part in value.rsplit(',') {
            let Ok(ip) = part.trim().parse::<IpAddr>() else {
                // Garbage in the chain: stop at the last address we could trust.
                return candidate;
            };
            candidate = ip;
            if !is_trusted(&ip) {
                return ip;
            }
        }
    }
    candidate
}

const IP_SLOTS: usize = 1 << 16;
const COOLDOWN_ROWS: usize = 4;

/// A count-max sketch of "cooled down until" times: bounded, and it can only lengthen
/// a cool-down (when an IP collides with a cooled-down IP in every row), never shorten one.
struct CooldownSketch {
    rows: Vec<(Vec<AtomicU64>, ahash::RandomState)>,
}

impl CooldownSketch {
    fn new() -> Self {
        CooldownSketch {
            rows: (0..COOLDOWN_ROWS)
                .map(|i| {
                    let seeds = ahash::RandomState::with_seeds(
                        0x6b65_7967 + i as u64,
                        0x61_7465,
                        rand::random(),
                        rand::random(),
                    );
                    ((0..IP_SLOTS).map(|_| AtomicU64::new(0)).collect(), seeds)
                })
                .collect(),
        }
    }
    fn set(&self, ip: &IpAddr, until_ms: u64) {
        for (row, h) in &self.rows {
            row[(h.hash_one(ip) as usize) % IP_SLOTS].fetch_max(until_ms, Ordering::Relaxed);
        }
    }
    fn until(&self, ip: &IpAddr) -> u64 {
        self.rows
            .iter()
            .map(|(row, h)| row[(h.hash_one(ip) as usize) % IP_SLOTS].load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    }
}

/// Failed authentications per IP per minute; past the limit, the IP is refused
/// (429) for the cool-down without its requests being verified.
pub struct AuthFailureLimiter {
    failures: SlidingWindow,
    cooldown: CooldownSketch,
    hasher: ahash::RandomState,
}

impl Default for AuthFailureLimiter {
    fn default() -> Self {
        AuthFailureLimiter {
            failures: SlidingWindow::new(Duration::from_secs(60), super::window::HASHES, IP_SLOTS),
            cooldown: CooldownSketch::new(),
            hasher: ahash::RandomState::new(),
        }
    }
}

impl AuthFailureLimiter {
    /// If `ip` is cooling down at `now_ms`, the time left.
    pub fn blocked(&self, ip: &IpAddr, now_ms: u64) -> Option<Duration> {
        let until = self.cooldown.until(ip);
        (until > now_ms).then(|| Duration::from_millis(until - now_ms))
    }

    /// Record a failure; returns true when this failure started a cool-down.
    pub fn record_failure(
        &self,
        ip: &IpAddr,
        per_minute: u64,
        cooldown: Duration,
        now_ms: u64,
    ) -> bool {
        let key = self.hasher.hash_one(ip);
        let c = self.failures.add(key, 1, now_ms);
        if c.estimate() > per_minute as f64 {
            self.cooldown.set(ip, now_ms + cooldown.as_millis() as u64);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|s| Cidr::parse(s).unwrap()).collect()
    }

    #[test]
    fn untrusted_peer_is_the_client() {
        let ip = client_ip(
            "203.0.113.9".parse().unwrap(),
            &["1.2.3.4"],
            &cidrs(&["10.0.0.0/8"]),
        );
        assert_eq!(ip.to_string(), "203.0.113.9");
    }

    #[test]
    fn rightmost_untrusted_forwarded_address_wins() {
        let t = cidrs(&["10.0.0.0/8"]);
        let peer = "10.1.1.1".parse().unwrap();
        assert_eq!(
            client_ip(peer, &["6.6.6.6, 198.51.100.7, 10.2.2.2"], &t).to_string(),
            "198.51.100.7"
        );
        assert_eq!(
            client_ip(peer, &["6.6.6.6", "198.51.100.7"], &t).to_string(),
            "198.51.100.7"
        );
        assert_eq!(client_ip(peer, &[], &t).to_string(), "10.1.1.1");
        assert_eq!(
            client_ip(peer, &["garbage, 10.3.3.3"], &t).to_string(),
            "10.3.3.3"
        );
    }

    #[test]
    fn failures_past_the_limit_start_a_cooldown() {
        let l = AuthFailureLimiter::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let t = 1_000_000;
        for _ in 0..5 {
            assert!(!l.record_failure(&ip, 5, Duration::from_secs(60), t));
        }
        assert!(l.blocked(&ip, t).is_none());
        assert!(l.record_failure(&ip, 5, Duration::from_secs(60), t));
        assert_eq!(l.blocked(&ip, t + 1000), Some(Duration::from_secs(59)));
        assert!(l.blocked(&other, t).is_none());
        assert!(l.blocked(&ip, t + 60_000).is_none());
    }
}
