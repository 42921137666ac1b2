//! Fleet-wide counts for tier limits and token budgets.
//!
//! Each node keeps counting in its local sketch (the first line) and records every
//! add as a delta. The sync task ([`super::sync`]) flushes the deltas with `INCRBY` on
//! `<prefix>r:{<site key>}:<m|h|d>:<window>`, `<prefix>t:{<site key>}:<day>` (tokens) and
//! `<prefix>usd:{<site key>}:<d|mo>:<window>` (micro-USD; `mo` windows are calendar months
//! numbered `year × 12 + month − 1`) and reads
//! back the fleet totals of the sites this node served recently, in one pipeline.
//! A request is then judged on `max(local count, fleet total at the last sync + this
//! node's deltas not yet in that total)`.
//!
//! Worst-case overshoot (README "Fleet mode"): a node's view misses other nodes'
//! admissions of at most the last `L = 2 × (sync_interval + RTT)` (one interval until
//! they flush, one until this node reads). So a limit `q` admits at most
//! `q + (N − 1) × r × L` in a window, for `N` nodes each admitting a site at rate `r`.
//! A node that has not served a site for [`REFRESH_HORIZON_MS`] starts from a stale
//! view and may add up to its own `r × (sync_interval + RTT)` once more.

use super::conn::{Redis, Req};
use crate::limits::Counter;
use parking_lot::Mutex;
use std::collections::HashMap;

/// The most counters one sync pipeline reads or flushes.
const SYNC_PIPELINE_ITEMS: usize = 256;

/// Sites served by this node within this time are read back at every sync.
pub const REFRESH_HORIZON_MS: u64 = 5 * 60 * 1000;

/// (counter, site key, window index)
type DeltaKey = (Counter, u64, u64);

/// The fleet totals of one (counter, site) as last read.
#[derive(Debug, Clone, Copy, Default)]
struct View {
    /// Window index the totals were read in.
    epoch: u64,
    curr: i64,
    prev: i64,
    /// Last local use (ms); views unused for [`REFRESH_HORIZON_MS`] are dropped.
    touched_ms: u64,
    read: bool,
}

#[derive(Default)]
struct Inner {
    /// Deltas since the last flush started.
    unsynced: HashMap<DeltaKey, i64>,
    /// Deltas in a flush whose totals are not installed yet (kept after a failed flush).
    flushing: HashMap<DeltaKey, i64>,
    views: HashMap<(Counter, u64), View>,
    /// Everything this node counted in the current and previous windows: sent again
    /// when Redis comes back without its data.
    own: HashMap<DeltaKey, i64>,
    /// The Redis data generation this node's counts went into.
    generation: Option<String>,
}

impl Inner {
    /// Drop what can no longer count: windows older than the previous one, and views
    /// of sites not served for [`REFRESH_HORIZON_MS`].
    fn prune(&mut self, now_ms: u64) {
        let live = |(c, _, e): &DeltaKey, n: &mut i64| *n != 0 && e + 1 >= epoch_of(*c, now_ms);
        self.unsynced.retain(live);
        self.flushing.retain(live);
        self.own.retain(live);
        self.views
            .retain(|_, v| v.touched_ms + REFRESH_HORIZON_MS >= now_ms);
    }
}

/// This node's side of the fleet counts.
pub struct FleetCounters {
    prefix: String,
    inner: Mutex<Inner>,
}

/// Seconds a counter window's key is kept: the window, the next (where it is `prev`), and
/// a minute of clock skew.
pub fn ttl(counter: Counter) -> u64 {
    2 * counter.period().longest().as_secs() + 60
}

fn epoch_of(counter: Counter, now_ms: u64) -> u64 {
    counter.period().epoch(now_ms)
}

impl FleetCounters {
    pub fn new(prefix: &str) -> Self {
        FleetCounters {
            prefix: prefix.to_string(),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The key prefix (fixed at start).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The Redis key of a counter window.
    pub fn key(&self, counter: Counter, site: u64, epoch: u64) -> String {
        let p = &self.prefix;
        match counter {
            Counter::RequestsMinute => format!("{p}r:{{{site:016x}}}:m:{epoch}"),
            Counter::RequestsHour => format!("{p}r:{{{site:016x}}}:h:{epoch}"),
            Counter::RequestsDay => format!("{p}r:{{{site:016x}}}:d:{epoch}"),
            Counter::TokensDay => format!("{p}t:{{{site:016x}}}:{epoch}"),
            Counter::UsdDay => format!("{p}usd:{{{site:016x}}}:d:{epoch}"),
            Counter::UsdMonth => format!("{p}usd:{{{site:016x}}}:mo:{epoch}"),
        }
    }

    /// Record a local add of `n` (negative: a refund; 0: a read) and return the fleet-wide
    /// (prev, curr) counts: totals at the last sync plus this node's deltas not yet in them.
    /// One lock, so the request path pays for one.
    pub fn update(&self, counter: Counter, site: u64, n: i64, now_ms: u64) -> (i64, i64) {
        let epoch = epoch_of(counter, now_ms);
        let mut g = self.inner.lock();
        if n != 0 {
            *g.unsynced.entry((counter, site, epoch)).or_default() += n;
            *g.own.entry((counter, site, epoch)).or_default() += n;
        }
        let v = g.views.entry((counter, site)).or_default();
        v.touched_ms = now_ms;
        let (mut prev, mut curr) = match v.epoch {
            _ if !v.read => (0, 0),
            e if e == epoch => (v.prev, v.curr),
            e if e + 1 == epoch => (v.curr, 0),
            _ => (0, 0),
        };
        for m in [&g.unsynced, &g.flushing] {
            curr += m.get(&(counter, site, epoch)).copied().unwrap_or(0);
            if let Some(e) = epoch.checked_sub(1) {
                prev += m.get(&(counter, site, e)).copied().unwrap_or(0);
            }
        }
        (prev, curr)
    }

    /// This node's adds to (counter, site) in window `epoch` and the one before that are
    /// not in Redis yet: (previous, current).
    pub fn pending(&self, counter: Counter, site: u64, epoch: u64) -> (i64, i64) {
        let g = self.inner.lock();
        let sum = |e: Option<u64>| {
            e.map_or(0, |e| {
                [&g.unsynced, &g.flushing]
                    .iter()
                    .map(|m| m.get(&(counter, site, e)).copied().unwrap_or(0))
                    .sum()
            })
        };
        (sum(epoch.checked_sub(1)), sum(Some(epoch)))
    }

    /// A request the admission script counted in Redis itself: not a delta to send, but
    /// part of this node's own counts (sent again if Redis loses its data).
    pub fn counted_by_script(&self, counter: Counter, site: u64, now_ms: u64) {
        let epoch = epoch_of(counter, now_ms);
        *self
            .inner
            .lock()
            .own
            .entry((counter, site, epoch))
            .or_default() += 1;
    }

    /// Bound memory while Redis is down (nothing is flushed then).
    pub fn prune(&self, now_ms: u64) {
        self.inner.lock().prune(now_ms);
    }

    /// After an outage: if Redis lost its data (a restart without persistence), the
    /// deltas alone would undercount, so send this node's whole counts of the live windows
    /// instead. Detected by a random generation marker each node remembers.
    pub async fn check_generation(&self, redis: &Redis) -> bool {
        let key = format!("{}generation", self.prefix);
        let mut fresh = [0u8; 8];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut fresh);
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(&key)
            .arg(hex::encode(fresh))
            .arg("NX")
            .ignore();
        pipe.cmd("GET").arg(&key);
        let Ok((current,)) = redis
            .call::<(Option<String>,)>("sync", Req::Pipe(&pipe))
            .await
        else {
            return false;
        };
        let mut g = self.inner.lock();
        if g.generation.is_some() && g.generation != current {
            log::warn!(
                "fleet: Redis lost its data; sending this node's counts of the live windows again"
            );
            g.unsynced = g.own.clone();
            g.flushing.clear();
        }
        g.generation = current;
        true
    }

    /// One sync: flush the deltas and read back the totals of recently served sites,
    /// in one pipeline (in a cluster, one per site, sent together). A pipeline that fails
    /// leaves its deltas for the next attempt.
    pub async fn sync(&self, redis: &Redis, now_ms: u64) -> bool {
        let (flush, refresh) = {
            let mut g = self.inner.lock();
            let unsynced = std::mem::take(&mut g.unsynced);
            for (k, n) in unsynced {
                *g.flushing.entry(k).or_default() += n;
            }
            g.prune(now_ms);
            let flush: Vec<(DeltaKey, i64)> = g.flushing.iter().map(|(k, n)| (*k, *n)).collect();
            let refresh: Vec<(Counter, u64)> = g.views.keys().copied().collect();
            (flush, refresh)
        };
        if flush.is_empty() && refresh.is_empty() {
            return true;
        }
        let items: Vec<(String, Op)> = flush
            .into_iter()
            .map(|((c, site, epoch), n)| (self.key(c, site, epoch), Op::Flush((c, site, epoch), n)))
            .chain(refresh.into_iter().map(|(c, site)| {
                let epoch = epoch_of(c, now_ms);
                (self.key(c, site, epoch), Op::Read(c, site, epoch))
            }))
            .collect();
        let groups = redis.groups(items, |(key, _)| key.as_str());
        // Pipelines of a bounded size: one of every view touched lately would hold the
        // connection (which the request path's nonce calls share) for its whole run.
        let groups = groups.into_iter().flat_map(|mut group| {
            let mut parts = Vec::new();
            while group.len() > SYNC_PIPELINE_ITEMS {
                let rest = group.split_off(SYNC_PIPELINE_ITEMS);
                parts.push(std::mem::replace(&mut group, rest));
            }
            parts.push(group);
            parts
        });
        let calls = groups.map(|group| async move {
            let mut pipe = redis::pipe();
            for (key, op) in &group {
                match op {
                    Op::Flush((c, ..), n) => {
                        pipe.cmd("INCRBY").arg(key).arg(*n).ignore();
                        pipe.cmd("EXPIRE").arg(key).arg(ttl(*c)).ignore();
                    }
                    Op::Read(c, site, epoch) => {
                        pipe.cmd("GET").arg(key);
                        pipe.cmd("GET")
                            .arg(self.key(*c, *site, epoch.saturating_sub(1)));
                    }
                }
            }
            let totals = redis
                .call::<Vec<Option<i64>>>("sync", Req::Pipe(&pipe))
                .await;
            (totals, group)
        });
        // One pipeline at a time, so that a nonce call waits behind one at most; after a
        // failure the rest wait for the next sync (their deltas stay to be flushed).
        let mut done = Vec::new();
        for call in calls {
            let (totals, group) = call.await;
            let failed = totals.is_err();
            done.push((totals, group));
            if failed {
                break;
            }
        }
        let all = done.iter().all(|(totals, _)| totals.is_ok());
        for (totals, group) in done {
            let Ok(totals) = totals else {
                continue;
            };
            let mut g = self.inner.lock();
            let reads = group.iter().filter_map(|(_, op)| match op {
                Op::Flush(k, _) => {
                    g.flushing.remove(k);
                    None
                }
                Op::Read(c, site, epoch) => Some((*c, *site, *epoch)),
            });
            let reads: Vec<_> = reads.collect();
            for (i, (c, site, epoch)) in reads.into_iter().enumerate() {
                let curr = totals.get(2 * i).copied().flatten().unwrap_or(0);
                let prev = totals.get(2 * i + 1).copied().flatten().unwrap_or(0);
                if let Some(v) = g.views.get_mut(&(c, site)) {
                    v.epoch = epoch;
                    v.curr = curr;
                    v.prev = prev;
                    v.read = true;
                }
            }
        }
        all
    }
}

/// One part of a sync: send a delta, or read a window's totals (and its previous's).
enum Op {
    Flush(DeltaKey, i64),
    Read(Counter, u64, u64),
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_000 * 86_400_000; // start of a day (and of every shorter window)

    #[test]
    fn unsynced_deltas_count_until_totals_arrive() {
        let c = FleetCounters::new("kg:");
        c.update(Counter::RequestsMinute, 7, 1, T0 + 10);
        assert_eq!(c.update(Counter::RequestsMinute, 7, 1, T0 + 20), (0, 2));
        assert_eq!(c.update(Counter::RequestsMinute, 7, 0, T0 + 30), (0, 2));
        assert_eq!(c.update(Counter::RequestsMinute, 8, 0, T0 + 30), (0, 0));
        // A delta from the previous minute counts as `prev` in the next.
        assert_eq!(c.update(Counter::RequestsMinute, 7, 0, T0 + 60_000), (2, 0));
    }

    #[test]
    fn keys_carry_the_site_as_hash_tag() {
        let c = FleetCounters::new("kg:");
        assert_eq!(
            c.key(Counter::RequestsMinute, 0xab, 5),
            "kg:r:{00000000000000ab}:m:5"
        );
        assert_eq!(
            c.key(Counter::TokensDay, 0xab, 5),
            "kg:t:{00000000000000ab}:5"
        );
        assert_eq!(
            c.key(Counter::UsdMonth, 0xab, 24_313),
            "kg:usd:{00000000000000ab}:mo:24313"
        );
    }
}
