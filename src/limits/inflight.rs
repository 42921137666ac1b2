//! Requests in flight per site, counted exactly.
//!
//! pingora-limits' `Inflight` is a count-min sketch of a fixed 4 × 8,192 cells whatever the
//! number of sites: with a few thousand sites holding requests (a Realtime session holds
//! one for up to `max_session_s`), a `concurrent: 1` site sharing cells with busy ones
//! was refused with nothing of its own in flight, and the colliding pairs stay fixed for
//! the life of the process. A map counts exactly; a site's entry lives only while it has
//! a request in flight, so it holds at most as many entries as there are requests.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

const SHARDS: usize = 16;

/// In-flight counts by site key.
pub struct InFlight {
    shards: Vec<Mutex<HashMap<u64, u64>>>,
}

impl Default for InFlight {
    fn default() -> Self {
        InFlight {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

/// One request's place in its site's count; given back when dropped.
pub struct Guard {
    table: Arc<InFlight>,
    key: u64,
}

impl InFlight {
    fn shard(&self, key: u64) -> &Mutex<HashMap<u64, u64>> {
        &self.shards[(key % SHARDS as u64) as usize]
    }

    /// Count one more request of `key`: its guard, and the count with it.
    pub fn incr(self: &Arc<Self>, key: u64) -> (Guard, u64) {
        let mut shard = self.shard(key).lock();
        let n = shard.entry(key).or_insert(0);
        *n += 1;
        let now = *n;
        drop(shard);
        let guard = Guard {
            table: self.clone(),
            key,
        };
        (guard, now)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut shard = self.table.shard(self.key).lock();
        if let Some(n) = shard.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                shard.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_exact_per_site_whatever_the_number_of_sites() {
        let t = Arc::new(InFlight::default());
        // 100,000 sites with a request each: the sketch's cells were all taken.
        let held: Vec<_> = (0..100_000u64).map(|k| t.incr(k * 7_919).0).collect();
        let (_g, n) = t.incr(123_456_789);
        assert_eq!(n, 1, "a site with nothing in flight counts one");
        let (g2, n) = t.incr(123_456_789);
        assert_eq!(n, 2);
        drop(g2);
        drop(held);
        assert_eq!(t.shards.iter().map(|s| s.lock().len()).sum::<usize>(), 1);
    }
}
