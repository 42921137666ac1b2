//! Uses of browser tokens with `max_requests`, counted exactly by token id until the
//! token expires.
//!
//! A count-min sketch over day windows (what this was) overcounts as it fills: at
//! 200,000 uses a day a fresh `max_requests: 1` token was refused on its first use about
//! four times in five. A map is exact; it is bounded by [`TokenUses::CAPACITY`] tokens
//! (about 48 MB when full), expired ones are dropped when room is needed, and a token that
//! finds it (or its site's quarter of it) full of live ones is refused: it never gets more
//! uses than it was minted with.

use parking_lot::Mutex;
use std::collections::HashMap;

const SHARDS: usize = 16;

/// One token's uses, its expiry (unix seconds) and its site (hashed).
struct Uses {
    n: u64,
    exp: i64,
    site: u64,
}

/// One shard: token id hash → its uses.
#[derive(Default)]
struct Shard {
    uses: HashMap<u64, Uses>,
    /// No entry expires before this second (nothing to prune before it).
    next_expiry: i64,
}

impl Shard {
    /// Drop expired tokens (and their sites' counts).
    fn prune(&mut self, now_s: i64, per_site: &Mutex<HashMap<u64, usize>>) {
        let mut per_site = per_site.lock();
        self.uses.retain(|_, u| {
            let live = u.exp >= now_s;
            if !live {
                if let Some(n) = per_site.get_mut(&u.site) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        per_site.remove(&u.site);
                    }
                }
            }
            live
        });
        let soonest = self.uses.values().map(|u| u.exp + 1).min();
        self.next_expiry = soonest.unwrap_or(i64::MIN);
    }
}

/// Uses per token id.
pub struct TokenUses {
    shards: Vec<Mutex<Shard>>,
    hasher: ahash::RandomState,
    per_shard: usize,
    /// Live tokens tracked per site: one site holds at most a quarter of the map, so one
    /// that mints and spends tokens as fast as it can does not refuse every other site's.
    per_site: Mutex<HashMap<u64, usize>>,
    site_share: usize,
}

impl Default for TokenUses {
    fn default() -> Self {
        TokenUses::with_capacity(TokenUses::CAPACITY)
    }
}

impl TokenUses {
    /// Live tokens with `max_requests` tracked at once, by default.
    pub const CAPACITY: usize = 1_000_000;

    pub fn with_capacity(capacity: usize) -> TokenUses {
        TokenUses {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: ahash::RandomState::new(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            per_site: Mutex::default(),
            site_share: (capacity / 4).max(1),
        }
    }

    /// Count one use of token `jti` of `site` (which expires at `exp`, unix seconds); false
    /// (and not counted) when it has no uses left, or when the map, or the site's share of
    /// it, is full of live tokens.
    pub fn admit(&self, jti: &str, site: &str, max: u64, exp: i64, now_ms: u64) -> bool {
        let key = self.hasher.hash_one(jti);
        let now_s = (now_ms / 1000) as i64;
        let mut shard = self.shards[(key % SHARDS as u64) as usize].lock();
        if !shard.uses.contains_key(&key) {
            if shard.uses.len() >= self.per_shard {
                if now_s >= shard.next_expiry {
                    shard.prune(now_s, &self.per_site);
                }
                if shard.uses.len() >= self.per_shard {
                    return false;
                }
            }
            let site = self.hasher.hash_one(site);
            {
                let mut per_site = self.per_site.lock();
                let held = per_site.entry(site).or_insert(0);
                if *held >= self.site_share {
                    return false;
                }
                *held += 1;
            }
            shard.next_expiry = shard.next_expiry.min(exp + 1);
            shard.uses.insert(key, Uses { n: 0, exp, site });
        }
        let Some(uses) = shard.uses.get_mut(&key) else {
            return false;
        };
        if uses.n >= max {
            return false;
        }
        uses.n += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_MS: u64 = 1_000_000_000;
    const EXP: i64 = 2_000_000;

    #[test]
    fn each_token_gets_exactly_its_uses_however_many_tokens_there_are() {
        let t = TokenUses::default();
        // 200,000 other tokens' uses: the sketch refused most fresh tokens by now.
        for i in 0..200_000 {
            assert!(t.admit(&format!("busy-{i}"), &format!("s{}", i % 8), 5, EXP, NOW_MS));
        }
        let fresh = (0..1000)
            .filter(|i| t.admit(&format!("fresh-{i}"), "fresh", 1, EXP, NOW_MS))
            .count();
        assert_eq!(fresh, 1000);
        assert!(!t.admit("fresh-0", "fresh", 1, EXP, NOW_MS), "a second use");
        for _ in 0..3 {
            assert!(t.admit("three", "s", 3, EXP, NOW_MS));
        }
        assert!(!t.admit("three", "s", 3, EXP, NOW_MS));
    }

    #[test]
    fn a_full_map_drops_expired_tokens_and_refuses_when_all_are_live() {
        let t = TokenUses::with_capacity(SHARDS * 4);
        let live = (0..SHARDS * 16)
            .filter(|i| t.admit(&format!("t{i}"), &format!("s{}", i % 8), 1, EXP, NOW_MS))
            .count();
        assert_eq!(live, SHARDS * 4, "bounded");
        // Once those expire, new tokens fit again.
        assert!(t.admit("new", "s0", 1, 3_000_000, 2_000_001_000));
    }

    /// One site minting and spending tokens as fast as it can filled the map, and every
    /// other site's `max_requests` tokens were refused on their first use.
    #[test]
    fn one_site_holds_at_most_a_quarter_of_the_map() {
        let t = TokenUses::with_capacity(SHARDS * 64);
        let flood = (0..SHARDS * 64)
            .filter(|i| t.admit(&format!("f{i}"), "flood", 1, EXP, NOW_MS))
            .count();
        assert_eq!(flood, SHARDS * 16);
        let other = (0..100)
            .filter(|i| t.admit(&format!("o{i}"), "other", 1, EXP, NOW_MS))
            .count();
        assert_eq!(other, 100);
    }
}
