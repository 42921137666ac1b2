//! Uses of browser tokens with `max_requests`, counted exactly by token id until the
//! token expires.
//!
//! A count-min sketch over day windows (what this was) overcounts as it fills: at
//! 200,000 uses a day a fresh `max_requests: 1` token was refused on its first use about
//! four times in five. A map is exact; it is bounded by [`TokenUses::CAPACITY`] tokens
//! (about 40 MB when full), expired ones are dropped when room is needed, and a token that
//! finds it full of live ones is refused: it never gets more uses than it was minted with.

use parking_lot::Mutex;
use std::collections::HashMap;

const SHARDS: usize = 16;

/// One shard: token id hash → (uses, the token's expiry in unix seconds).
#[derive(Default)]
struct Shard {
    uses: HashMap<u64, (u64, i64)>,
    /// No entry expires before this second (nothing to prune before it).
    next_expiry: i64,
}

impl Shard {
    fn prune(&mut self, now_s: i64) {
        self.uses.retain(|_, (_, exp)| *exp >= now_s);
        self.next_expiry = self
            .uses
            .values()
            .map(|(_, exp)| exp + 1)
            .min()
            .unwrap_or(i64::MIN);
    }
}

/// Uses per token id.
pub struct TokenUses {
    shards: Vec<Mutex<Shard>>,
    hasher: ahash::RandomState,
    per_shard: usize,
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
        }
    }

    /// Count one use of token `jti` (which expires at `exp`, unix seconds); false (and not
    /// counted) when it has no uses left, or when the map is full of live tokens.
    pub fn admit(&self, jti: &str, max: u64, exp: i64, now_ms: u64) -> bool {
        let key = self.hasher.hash_one(jti);
        let now_s = (now_ms / 1000) as i64;
        let mut shard = self.shards[(key % SHARDS as u64) as usize].lock();
        if !shard.uses.contains_key(&key) && shard.uses.len() >= self.per_shard {
            if now_s >= shard.next_expiry {
                shard.prune(now_s);
            }
            if shard.uses.len() >= self.per_shard {
                return false;
            }
        }
        let next_expiry = shard.next_expiry;
        shard.next_expiry = next_expiry.min(exp + 1);
        let (uses, _) = shard.uses.entry(key).or_insert((0, exp));
        if *uses >= max {
            return false;
        }
        *uses += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_token_gets_exactly_its_uses_however_many_tokens_there_are() {
        let t = TokenUses::default();
        let now_ms = 1_000_000_000;
        // 200,000 other tokens' uses: the sketch refused most fresh tokens by now.
        for i in 0..200_000 {
            assert!(t.admit(&format!("busy-{i}"), 5, 2_000_000, now_ms));
        }
        let fresh = (0..1000)
            .filter(|i| t.admit(&format!("fresh-{i}"), 1, 2_000_000, now_ms))
            .count();
        assert_eq!(fresh, 1000);
        assert!(
            !t.admit("fresh-0", 1, 2_000_000, now_ms),
            "a second use of a one-use token"
        );
        assert!(t.admit("three", 3, 2_000_000, now_ms));
        assert!(t.admit("three", 3, 2_000_000, now_ms));
        assert!(t.admit("three", 3, 2_000_000, now_ms));
        assert!(!t.admit("three", 3, 2_000_000, now_ms));
    }

    #[test]
    fn a_full_map_drops_expired_tokens_and_refuses_when_all_are_live() {
        let t = TokenUses::with_capacity(SHARDS * 4);
        let now_ms = 1_000_000_000;
        let live = (0..SHARDS * 16)
            .filter(|i| t.admit(&format!("t{i}"), 1, 2_000_000, now_ms))
            .count();
        assert_eq!(live, SHARDS * 4, "bounded");
        // Once those expire, new tokens fit again.
        let later_ms = 2_000_001_000;
        assert!(t.admit("new", 1, 3_000_000, later_ms));
    }
}
