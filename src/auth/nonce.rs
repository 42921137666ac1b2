//! The replay store: each (key id, nonce) pair is accepted once while its signature
//! could still be fresh.
//!
//! Guarantees:
//! - check-and-insert is atomic (a shard lock), so N identical requests racing each
//!   other yield exactly one success;
//! - it is bounded: at most `capacity` live entries;
//! - a live entry is never evicted: when full, inserts fail ([`NonceError::Full`])
//!   until entries expire, so the store can refuse service but never forget a nonce;
//! - one key id holds at most a quarter of it: the nonces of refused requests are kept
//!   too (a replay of a request refused with 429 must stay refused), so one key's flood
//!   of validly signed requests could otherwise fill the store for every site.

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// Default capacity: one million live nonces (about 40 MB when full).
pub const NONCE_DEFAULT_CAPACITY: usize = 1_000_000;

/// Capacity of the admin API's own store: site traffic cannot fill it and lock the
/// operator out of the API that would disable the site.
pub const ADMIN_NONCE_CAPACITY: usize = 65_536;
const SHARDS: usize = 64;

/// Why a nonce was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceError {
    /// Seen before and still live.
    Replayed,
    /// The store holds `capacity` live nonces.
    Full,
}

#[derive(Default)]
struct Shard {
    /// Entry → (unix second after which it may be forgotten, its key id's hash).
    entries: HashMap<[u8; 16], (i64, u64)>,
    /// Live entries per key id hash.
    per_key: HashMap<u64, u32>,
    /// Earliest expiry in `entries` as of the last sweep (no sweep helps before it).
    next_expiry: i64,
}

impl Shard {
    /// Forget the entries that can no longer be replayed, and note the earliest expiry
    /// left (before it, pruning again frees nothing).
    fn prune(&mut self, now: i64) {
        let per_key = &mut self.per_key;
        self.entries.retain(|_, (exp, owner)| {
            let live = is_live(*exp, now);
            if !live {
                if let Some(n) = per_key.get_mut(owner) {
                    *n = n.saturating_sub(1);
                }
            }
            live
        });
        per_key.retain(|_, n| *n > 0);
        self.next_expiry = self
            .entries
            .values()
            .map(|(exp, _)| *exp)
            .min()
            .map_or(i64::MIN, |m| m + 1);
    }

    /// `owner`'s live entries here.
    fn held_by(&self, owner: u64) -> usize {
        self.per_key.get(&owner).map_or(0, |n| *n as usize)
    }
}

/// Seconds a nonce is remembered past the last second its signature is fresh. In a fleet
/// each node judges the window on its own clock while Redis expires the key on its own, so
/// a node a little behind Redis would otherwise accept a replay in the seconds between;
/// and a reload that widens `server.clock_skew_s` by up to this much opens no gap for the
/// nonces recorded before it.
pub const NONCE_GRACE_S: i64 = 60;

/// Whether a nonce that may be replayed until `expires_at` must still be remembered at
/// `now` (the last second of its window included).
pub fn is_live(expires_at: i64, now: i64) -> bool {
    expires_at >= now
}

/// A bounded, sharded, atomic nonce store.
pub struct NonceStore {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    /// What one key id may hold of a shard.
    per_key_shard: usize,
}

/// The share of the store one key id may hold: a quarter.
const KEY_SHARE_DIVISOR: usize = 4;

/// Whose nonce is recorded, and the most live nonces it may hold.
#[derive(Debug, Clone, Copy)]
pub struct Owner {
    pub id: u64,
    /// What its limits let it send in a nonce's lifetime (`None`: a quarter of the store).
    pub share: Option<usize>,
}

impl NonceStore {
    /// A store holding at most about `capacity` live nonces, a quarter of them per key id.
    pub fn new(capacity: usize) -> Self {
        let per_shard = capacity.div_ceil(SHARDS).max(1);
        NonceStore {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard,
            per_key_shard: (per_shard / KEY_SHARE_DIVISOR).max(1),
        }
    }

    /// The hash that counts a key id's entries.
    fn owner(key_id: &str) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key_id.hash(&mut h);
        h.finish()
    }

    /// Total capacity.
    pub fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }

    /// Live entries (approximate under concurrency; for metrics and tests).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().entries.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn entry_key(key_id: &str, nonce: &str) -> [u8; 16] {
        let mut h = Sha256::new();
        h.update(key_id.as_bytes());
        h.update([0u8]);
        h.update(nonce.as_bytes());
        let d = h.finalize();
        let mut k = [0u8; 16];
        k.copy_from_slice(&d[..16]);
        k
    }

    /// Record `(key_id, nonce)` as used until `expires_at` (unix seconds), unless it is
    /// already live. `now` is the current unix time.
    pub fn check_and_insert(
        &self,
        key_id: &str,
        nonce: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<(), NonceError> {
        let owner = Owner {
            id: Self::owner(key_id),
            share: None,
        };
        self.check_and_insert_for(owner, key_id, nonce, expires_at, now)
    }

    /// [`NonceStore::check_and_insert`] counted against `owner` (a site: its keys share
    /// one share, so a site with four keys cannot take the whole store).
    pub fn check_and_insert_for(
        &self,
        owner: Owner,
        key_id: &str,
        nonce: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<(), NonceError> {
        let key = Self::entry_key(key_id, nonce);
        let per_owner = owner.share.map_or(self.per_key_shard, |n| {
            // Spread over the shards at random: twice the mean, and a few, per shard.
            (n.div_ceil(SHARDS) * 2 + 4).min(self.per_key_shard)
        });
        let owner = owner.id;
        let shard = &self.shards[(key[0] as usize) % SHARDS];
        let mut s = shard.lock();
        let old = s.entries.get(&key).copied();
        if let Some((exp, _)) = old {
            if is_live(exp, now) {
                return Err(NonceError::Replayed);
            }
        }
        let over = |s: &Shard| s.entries.len() >= self.per_shard || s.held_by(owner) >= per_owner;
        if old.is_none() && over(&s) {
            if now < s.next_expiry {
                return Err(NonceError::Full);
            }
            s.prune(now);
            if over(&s) {
                return Err(NonceError::Full);
            }
        }
        // A growing shard's new table is a hot one.
        let replaced = crate::alloc::hot_tables(|| s.entries.insert(key, (expires_at, owner)));
        if let Some((_, previous)) = replaced {
            // An expired entry of the same pair: counted once.
            if let Some(n) = s.per_key.get_mut(&previous) {
                *n = n.saturating_sub(1);
            }
        }
        *s.per_key.entry(owner).or_insert(0) += 1;
        Ok(())
    }

    /// Drop expired entries in every shard (called periodically, off the request path).
    pub fn sweep(&self, now: i64) {
        for shard in &self.shards {
            shard.lock().prune(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn replayed_nonce_is_rejected_until_it_expires() {
        let s = NonceStore::new(1024);
        assert_eq!(s.check_and_insert("k", "n1", 100, 10), Ok(()));
        assert_eq!(
            s.check_and_insert("k", "n1", 100, 50),
            Err(NonceError::Replayed)
        );
        assert_eq!(
            s.check_and_insert("k2", "n1", 100, 50),
            Ok(()),
            "pairs are per key id"
        );
        assert_eq!(
            s.check_and_insert("k", "n1", 200, 101),
            Ok(()),
            "expired entries are forgotten"
        );
    }

    #[test]
    fn full_store_refuses_instead_of_evicting_live_nonces() {
        let s = NonceStore::new(SHARDS); // one entry per shard
        let mut accepted = Vec::new();
        let mut full = 0;
        for i in 0..(SHARDS * 20) {
            let n = format!("nonce-{i}");
            match s.check_and_insert("k", &n, 1000, 10) {
                Ok(()) => accepted.push(n),
                Err(NonceError::Full) => full += 1,
                Err(NonceError::Replayed) => panic!("fresh nonce reported as replay"),
            }
        }
        assert!(full > 0);
        assert!(accepted.len() <= s.capacity());
        // Every accepted nonce is still remembered.
        for n in &accepted {
            assert_eq!(
                s.check_and_insert("k", n, 1000, 10),
                Err(NonceError::Replayed)
            );
        }
        // Once they expire, the store accepts again.
        assert_eq!(s.check_and_insert("k", "later-nonce", 2000, 1001), Ok(()));
    }

    #[test]
    fn one_key_fills_at_most_a_quarter_and_the_others_still_record() {
        let s = NonceStore::new(SHARDS * 40);
        let mut accepted = 0;
        for i in 0..(SHARDS * 40) {
            if s.check_and_insert("flood", &format!("n{i}"), 1000, 10)
                .is_ok()
            {
                accepted += 1;
            }
        }
        assert!(
            accepted <= s.capacity() / 4,
            "{accepted} of {}",
            s.capacity()
        );
        assert!(accepted >= s.capacity() / 5, "{accepted}");
        // Another key still records (and is refused only past its own quarter).
        for i in 0..SHARDS * 2 {
            assert_eq!(
                s.check_and_insert("other", &format!("n{i}"), 1000, 10),
                Ok(())
            );
        }
        // Expired, the flood's share is free again.
        assert_eq!(s.check_and_insert("flood", "later", 2000, 1001), Ok(()));
        s.sweep(1001);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn parallel_identical_inserts_yield_exactly_one_success() {
        let s = Arc::new(NonceStore::new(4096));
        let handles: Vec<_> = (0..24)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || s.check_and_insert("k", "same-nonce", 100, 1).is_ok())
            })
            .collect();
        let ok = handles
            .into_iter()
            .filter(|_| true)
            .map(|h| h.join().unwrap())
            .filter(|x| *x)
            .count();
        assert_eq!(ok, 1);
    }

    #[test]
    fn sweep_frees_expired_entries() {
        let s = NonceStore::new(1024);
        for i in 0..100 {
            s.check_and_insert("k", &format!("n{i}"), 5, 1).unwrap();
        }
        assert_eq!(s.len(), 100);
        s.sweep(6);
        assert!(s.is_empty());
    }

    /// Four keys of one site took a quarter of the store each, and so all of it: every
    /// other site's signed requests got 503. A site's keys share its one share, and a
    /// site whose tier sends little gets a share the size of what it may send.
    #[test]
    fn a_sites_keys_share_one_share_and_a_small_tier_a_small_one() {
        let s = NonceStore::new(64 * 64);
        let site = Owner { id: 1, share: None };
        let mut held = 0;
        for k in 0..4 {
            for i in 0..2000 {
                let key = format!("flood.k{k}");
                if s.check_and_insert_for(site, &key, &format!("n{i}"), 1000, 10)
                    .is_ok()
                {
                    held += 1;
                }
            }
        }
        assert!(
            held <= s.capacity() / KEY_SHARE_DIVISOR,
            "{held} of {}",
            s.capacity()
        );
        let other = Owner { id: 2, share: None };
        assert_eq!(
            s.check_and_insert_for(other, "other.k1", "n", 1000, 10),
            Ok(())
        );
        // A share of 64 live nonces: a few per shard, far under a quarter.
        let small = Owner {
            id: 3,
            share: Some(64),
        };
        let held = (0..2000)
            .filter(|i| {
                s.check_and_insert_for(small, "small.k1", &format!("n{i}"), 1000, 10)
                    .is_ok()
            })
            .count();
        assert!((64..=6 * SHARDS).contains(&held), "{held}");
    }
}
