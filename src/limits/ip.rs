//! The client's IP and the per-IP limit on failed authentications.

use super::window::SlidingWindow;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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

/// `server.auth_failure_limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthFailureLimit {
    pub per_minute: u64,
    pub cooldown: Duration,
}

impl AuthFailureLimit {
    /// On unless the config says `off`: 30 failures a minute, then 60 s of 429s for
    /// failing requests from that address.
    pub const DEFAULT: AuthFailureLimit = AuthFailureLimit {
        per_minute: 30,
        cooldown: Duration::from_secs(60),
    };
}

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
                    let row = crate::alloc::hot_tables(|| {
                        (0..IP_SLOTS).map(|_| AtomicU64::new(0)).collect()
                    });
                    (row, seeds)
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

/// Failed authentications per IP per minute; past the limit, the address cools down:
/// its failing requests get 429, and its requests that verify still pass.
pub struct AuthFailureLimiter {
    failures: IpRate,
    cooldown: CooldownSketch,
}

impl Default for AuthFailureLimiter {
    fn default() -> Self {
        AuthFailureLimiter {
            failures: IpRate::default(),
            cooldown: CooldownSketch::new(),
        }
    }
}

/// What a per-address limit counts a client as: its IPv4 address, or the /64 of its IPv6
/// address. One IPv6 client holds a /64 (often far more), so counting /128s would let it
/// take a fresh address per request and step past every per-address limit, or lock others
/// out of a shared allowance (registration's pending list) from as many addresses as it likes.
pub fn client_block(ip: &IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(*v6) & !((1u128 << 64) - 1),
            )),
        },
        v4 => *v4,
    }
}

impl AuthFailureLimiter {
    /// If `ip` (its /64 for IPv6) is cooling down at `now_ms`, the time left.
    pub fn blocked(&self, ip: &IpAddr, now_ms: u64) -> Option<Duration> {
        let until = self.cooldown.until(&client_block(ip));
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
        let ip = &client_block(ip);
        if self.failures.count(ip, now_ms) > per_minute as f64 {
            self.cooldown.set(ip, now_ms + cooldown.as_millis() as u64);
            true
        } else {
            false
        }
    }
}

/// A per-client-address rate (failed authentications, browser-token mints,
/// registrations): a sliding window (one minute unless [`IpRate::over`]) over a bounded
/// sketch of addresses (or any other key, e.g. an e-mail address's hash).
pub struct IpRate {
    window: SlidingWindow,
    hasher: ahash::RandomState,
}

impl Default for IpRate {
    fn default() -> Self {
        IpRate::over(Duration::from_secs(60))
    }
}

impl IpRate {
    /// A rate over a sliding window of `window` (one minute by default) instead.
    pub fn over(window: Duration) -> Self {
        IpRate {
            window: SlidingWindow::new(window, super::window::HASHES, IP_SLOTS),
            hasher: ahash::RandomState::new(),
        }
    }

    /// Whether `ip` has room for one more within `per_minute`; else the time until it has.
    /// Nothing is counted: [`IpRate::count`] does that once the request earned it (so
    /// requests that fail authentication cannot use up a shared address's allowance).
    pub fn check(
        &self,
        ip: &impl std::hash::Hash,
        per_minute: u64,
        now_ms: u64,
    ) -> Result<(), Duration> {
        let seen = self.window.get(self.hasher.hash_one(ip), now_ms);
        if seen.estimate() + 1.0 > per_minute as f64 {
            return Err(seen.wait_for_room(per_minute as f64, 1.0));
        }
        Ok(())
    }

    /// Count one from `ip`; the estimate for the last minute, this one included.
    pub fn count(&self, ip: &impl std::hash::Hash, now_ms: u64) -> f64 {
        self.window
            .add(self.hasher.hash_one(ip), 1, now_ms)
            .estimate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|s| Cidr::parse(s).unwrap()).collect()
    }

    #[test]
    fn an_address_rate_refuses_past_its_limit_and_names_the_wait() {
        let r = IpRate::default();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        for _ in 0..3 {
            assert!(r.check(&a, 3, 1_000).is_ok());
            r.count(&a, 1_000);
        }
        let wait = r.check(&a, 3, 1_000).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(120),
            "{wait:?}"
        );
        assert!(
            r.check(&b, 3, 1_000).is_ok(),
            "other addresses are not affected"
        );
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let block = |a: &str| client_block(&a.parse().unwrap()).to_string();
        assert_eq!(block("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::");
        assert_eq!(block("2001:db8:1:2:ffff:ffff:ffff:ffff"), "2001:db8:1:2::");
        assert_eq!(block("2001:db8:1:3::1"), "2001:db8:1:3::");
        assert_eq!(block("192.0.2.7"), "192.0.2.7");
        assert_eq!(block("::ffff:192.0.2.7"), "192.0.2.7");
        // Failures from any address of one /64 cool the whole /64 down.
        let l = AuthFailureLimiter::default();
        for i in 0..6 {
            let a: IpAddr = format!("2001:db8::{i:x}").parse().unwrap();
            l.record_failure(&a, 5, Duration::from_secs(60), 1_000);
        }
        assert!(l
            .blocked(&"2001:db8::ffff".parse().unwrap(), 1_000)
            .is_some());
        assert!(l
            .blocked(&"2001:db8:0:1::1".parse().unwrap(), 1_000)
            .is_none());
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
