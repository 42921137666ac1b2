//! Clock-aligned sliding windows on pingora-limits' count-min sketch.
//!
//! `pingora_limits::Rate` rolls its two windows lazily, on the first call after
//! expiry, so its windows drift from the clock and the wait until a refused client
//! may retry cannot be computed exactly; its rollover also races (PINGORA.md). This
//! type keeps the same two-estimator design but aligns windows to multiples of the
//! interval since the Unix epoch and rolls under a lock that counting does not take:
//! a counter checks a sequence number around its update instead (a seqlock) and counts
//! again when a roll ran meanwhile, so:
//!
//! - counts only ever overestimate (count-min), never undercount, rollover included;
//! - `fraction` is exact, so `Retry-After` is the real wait.

use parking_lot::Mutex;
use pingora_limits::estimator::Estimator;
use std::sync::atomic::{fence, AtomicIsize, AtomicU64, Ordering};
use std::time::Duration;

/// Rows of a sketch over keys not known in advance (browser-token uses). With
/// `slots ≥ 10 × keys`, a key's estimate is exact unless it collides with another key in
/// every row. Sites, known at load, have a counter each instead ([`Cells::Dense`],
/// [`super::LocalStore`]).
pub const HASHES: usize = 4;

/// One window's counters.
pub enum Cells {
    /// A count-min sketch (pingora-limits), for keys not known in advance: a key's count
    /// may include other keys' (an overestimate, never an undercount).
    Sketch(Estimator),
    /// A counter per key for keys numbered at load: key `k` counts in counter
    /// `k % len`, exact for keys below `len`.
    Dense(Box<[AtomicIsize]>),
}

impl Cells {
    fn dense(slots: usize) -> Cells {
        crate::alloc::hot_tables(|| Cells::Dense((0..slots).map(|_| AtomicIsize::new(0)).collect()))
    }

    fn cell(d: &[AtomicIsize], key: u64) -> &AtomicIsize {
        &d[(key % d.len() as u64) as usize]
    }

    /// Add `n` to `key`; its count after.
    fn incr(&self, key: u64, n: isize) -> isize {
        match self {
            Cells::Sketch(e) => e.incr(key, n),
            Cells::Dense(d) => Self::cell(d, key).fetch_add(n, Ordering::Relaxed) + n,
        }
    }

    fn get(&self, key: u64) -> isize {
        match self {
            Cells::Sketch(e) => e.get(key),
            Cells::Dense(d) => Self::cell(d, key).load(Ordering::Relaxed),
        }
    }

    fn reset(&self) {
        match self {
            Cells::Sketch(e) => e.reset(),
            Cells::Dense(d) => d.iter().for_each(|c| c.store(0, Ordering::Relaxed)),
        }
    }
}

/// A key's position in one window, as read for copying into another limiter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub epoch: u64,
    pub prev: i64,
    pub curr: i64,
}

/// A key's counts in the current and previous window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Counts {
    pub prev: i64,
    pub curr: i64,
    /// How far into the current window `now` is, in `[0, 1)`.
    pub fraction: f64,
    /// The current window's length.
    pub interval: Duration,
    /// Whether the previous window decays into the estimate (false: fixed windows, a
    /// new one starts from zero).
    pub sliding: bool,
}

impl Counts {
    /// The sliding-window estimate: `prev × (1 − fraction) + curr`.
    pub fn estimate(&self) -> f64 {
        self.prev.max(0) as f64 * (1.0 - self.fraction) + self.curr.max(0) as f64
    }

    /// Time until the current window ends.
    pub fn window_ends_in(&self) -> Duration {
        self.interval.mul_f64(1.0 - self.fraction)
    }

    /// The shortest wait after which `estimate() + need ≤ limit` holds again, assuming
    /// no further events. Never shorter than the real wait.
    pub fn wait_for_room(&self, limit: f64, need: f64) -> Duration {
        let (p, c, f) = (
            self.prev.max(0) as f64,
            self.curr.max(0) as f64,
            self.fraction,
        );
        let i = self.interval;
        if c + need <= limit {
            if p <= 0.0 {
                return Duration::ZERO;
            }
            // p × (1 − f') ≤ limit − need − c
            let f2 = 1.0 - (limit - need - c) / p;
            if f2 <= f {
                Duration::ZERO
            } else {
                i.mul_f64(f2 - f)
            }
        } else if !self.sliding {
            i.mul_f64(1.0 - f)
        } else {
            // Only the next window helps: then prev = c and it decays.
            let g = if c <= 0.0 {
                0.0
            } else {
                (1.0 - (limit - need) / c).clamp(0.0, 1.0)
            };
            i.mul_f64(1.0 - f) + i.mul_f64(g)
        }
    }
}

/// How time is cut into windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// Windows of this many milliseconds, aligned to the Unix epoch; a count is the
    /// sliding estimate over the current and the previous window.
    Every(u64),
    /// Calendar months (UTC). A fixed window: a month's count starts at zero on the
    /// first, the previous month does not carry over.
    CalendarMonth,
}

impl Period {
    pub fn every(d: Duration) -> Period {
        Period::Every(d.as_millis().max(1) as u64)
    }

    /// The index of the window `now_ms` is in (months: since year 0, `year × 12 + month0`).
    pub fn epoch(self, now_ms: u64) -> u64 {
        match self {
            Period::Every(ms) => now_ms / ms,
            Period::CalendarMonth => {
                let d = month_of(now_ms);
                (d.year().max(0) as u64) * 12 + u64::from(d.month0())
            }
        }
    }

    /// (start, length) in ms of the window `now_ms` is in.
    pub fn bounds(self, now_ms: u64) -> (u64, u64) {
        match self {
            Period::Every(ms) => (now_ms - now_ms % ms, ms),
            Period::CalendarMonth => {
                let first = month_of(now_ms).with_day(1).unwrap_or_default();
                let next = first
                    .checked_add_months(chrono::Months::new(1))
                    .unwrap_or(first);
                let ms = |d: chrono::NaiveDate| {
                    d.and_time(chrono::NaiveTime::MIN)
                        .and_utc()
                        .timestamp_millis()
                        .max(0) as u64
                };
                let start = ms(first);
                (start, ms(next).saturating_sub(start).max(1))
            }
        }
    }

    /// The weight of the previous window's count in the estimate at `now_ms`:
    /// `1 − fraction elapsed` for sliding windows, 0 for fixed ones; the same arithmetic
    /// as [`Counts::estimate`], so a server-side script given it decides as the limiter.
    pub fn prev_weight(self, now_ms: u64) -> f64 {
        if !self.slides() {
            return 0.0;
        }
        let (start, len) = self.bounds(now_ms);
        1.0 - (now_ms - start) as f64 / len as f64
    }

    /// The longest window (what a key shared through Redis must outlive).
    pub fn longest(self) -> Duration {
        match self {
            Period::Every(ms) => Duration::from_millis(ms),
            Period::CalendarMonth => Duration::from_secs(31 * 86_400),
        }
    }

    /// Whether the previous window counts (decaying) in the estimate.
    fn slides(self) -> bool {
        matches!(self, Period::Every(_))
    }
}

/// The UTC date of `now_ms`.
fn month_of(now_ms: u64) -> chrono::NaiveDate {
    chrono::DateTime::from_timestamp_millis(now_ms.min(i64::MAX as u64) as i64)
        .unwrap_or_default()
        .date_naive()
}

use chrono::Datelike;

/// Counters per key over aligned windows of a [`Period`], bounded memory:
/// `2 × hashes × slots × 8` bytes (one row for [`SlidingWindow::dense`]).
pub struct SlidingWindow {
    period: Period,
    hashes: usize,
    sketches: [Cells; 2],
    /// The index ([`Period::epoch`]) of the current window; its counts are in
    /// `sketches[epoch % 2]`, the previous window's in the other.
    epoch: AtomicU64,
    /// Held to roll, clear, refund or copy; counting does not take it.
    roll: Mutex<()>,
    /// Odd while a roll resets a sketch; bumped twice per roll.
    seq: AtomicU64,
    slots: usize,
}

impl SlidingWindow {
    pub fn new(interval: Duration, hashes: usize, slots: usize) -> Self {
        Self::over(Period::every(interval), hashes, slots)
    }

    /// Count-min sketches over windows of `period`.
    pub fn over(period: Period, hashes: usize, slots: usize) -> Self {
        let sketch = || Cells::Sketch(crate::alloc::hot_tables(|| Estimator::new(hashes, slots)));
        Self::with(period, hashes, slots, [sketch(), sketch()])
    }

    /// A counter per key (keys numbered `0..slots`) over windows of `period`.
    pub fn dense(period: Period, slots: usize) -> Self {
        let slots = slots.max(1);
        Self::with(period, 1, slots, [Cells::dense(slots), Cells::dense(slots)])
    }

    fn with(period: Period, hashes: usize, slots: usize, sketches: [Cells; 2]) -> Self {
        SlidingWindow {
            period,
            hashes,
            sketches,
            epoch: AtomicU64::new(0),
            roll: Mutex::new(()),
            seq: AtomicU64::new(0),
            slots,
        }
    }

    /// Bytes held by the sketches.
    pub fn memory_bytes(&self) -> usize {
        2 * self.hashes * self.slots * std::mem::size_of::<isize>()
    }

    /// Read `key`'s counters and drop the values (a prefetch).
    pub fn touch(&self, key: u64) {
        for s in &self.sketches {
            std::hint::black_box(s.get(key));
        }
    }

    /// Zero both sketches.
    pub fn clear(&self) {
        let _w = self.roll.lock();
        self.resetting(|| self.sketches.iter().for_each(Cells::reset));
    }

    /// Run `f` (which resets sketches) with the sequence number odd, so counters that
    /// overlap it count again. Call with `roll` held.
    fn resetting(&self, f: impl FnOnce()) {
        self.seq.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::Release);
        f();
        self.seq.fetch_add(1, Ordering::Release);
    }

    /// Run `f` on the current epoch until no roll overlapped it. `f` may run more than
    /// once: it must only read, or add a positive amount (counted twice at worst, an
    /// overestimate).
    fn stable<T>(&self, f: impl Fn(u64) -> T) -> T {
        loop {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 % 2 == 1 {
                std::thread::yield_now();
                continue;
            }
            let r = f(self.epoch.load(Ordering::Acquire));
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == s1 {
                return r;
            }
        }
    }

    /// The counts of `key` in the windows as they stand (no roll).
    pub fn snapshot(&self, key: u64) -> Snapshot {
        let _r = self.roll.lock();
        let epoch = self.epoch.load(Ordering::Acquire);
        Snapshot {
            epoch,
            curr: self.sketches[(epoch % 2) as usize].get(key) as i64,
            prev: self.sketches[((epoch + 1) % 2) as usize].get(key) as i64,
        }
    }

    /// Add counts read from another window of the same interval (`base`, when given, was
    /// added before: only what came since is added now). A snapshot older than the
    /// previous window adds nothing.
    pub fn add_snapshot(&self, key: u64, snap: Snapshot, base: Option<Snapshot>) {
        let base = base.filter(|b| b.epoch == snap.epoch).unwrap_or(Snapshot {
            epoch: snap.epoch,
            ..Default::default()
        });
        let (dprev, dcurr) = (snap.prev - base.prev, snap.curr - base.curr);
        self.roll_to(snap.epoch);
        let _r = self.roll.lock();
        let cur = self.epoch.load(Ordering::Acquire);
        let curr = &self.sketches[(cur % 2) as usize];
        let prev = &self.sketches[((cur + 1) % 2) as usize];
        if cur == snap.epoch {
            curr.incr(key, dcurr as isize);
            prev.incr(key, dprev as isize);
        } else if cur == snap.epoch + 1 {
            prev.incr(key, dcurr as isize);
        }
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    fn roll_to(&self, epoch: u64) {
        if self.epoch.load(Ordering::Acquire) >= epoch {
            return;
        }
        let _w = self.roll.lock();
        let cur = self.epoch.load(Ordering::Acquire);
        if cur >= epoch {
            return;
        }
        self.resetting(|| {
            if epoch == cur + 1 {
                // The old current becomes previous; the slot for the new window held the
                // window before the previous one.
                self.sketches[(epoch % 2) as usize].reset();
            } else {
                self.sketches[0].reset();
                self.sketches[1].reset();
            }
            self.epoch.store(epoch, Ordering::Release);
        });
    }

    fn counts(&self, prev: i64, curr: i64, now_ms: u64) -> Counts {
        let (start, len) = self.period.bounds(now_ms);
        Counts {
            prev: if self.period.slides() { prev } else { 0 },
            curr,
            fraction: (now_ms - start) as f64 / len as f64,
            interval: Duration::from_millis(len),
            sliding: self.period.slides(),
        }
    }

    /// Add `n` (negative refunds) to `key` at time `now_ms`; return the counts after.
    pub fn add(&self, key: u64, n: i64, now_ms: u64) -> Counts {
        self.roll_to(self.period.epoch(now_ms));
        // A caller whose clock reading predates the last roll is counted in the current
        // window: an overestimate, never a lost event. `incr` returns the key's estimate
        // after the add: no second read needed.
        let add = |cur: u64| {
            let curr = self.sketches[(cur % 2) as usize].incr(key, n as isize) as i64;
            (
                self.sketches[((cur + 1) % 2) as usize].get(key) as i64,
                curr,
            )
        };
        let (prev, curr) = if n >= 0 {
            self.stable(add)
        } else {
            // A refund must not run twice: take the lock rolls take.
            let _r = self.roll.lock();
            add(self.epoch.load(Ordering::Acquire))
        };
        self.counts(prev, curr, now_ms)
    }

    /// The counts of `key` at time `now_ms`, without adding.
    pub fn get(&self, key: u64, now_ms: u64) -> Counts {
        self.roll_to(self.period.epoch(now_ms));
        let (prev, curr) = self.stable(|cur| {
            (
                self.sketches[((cur + 1) % 2) as usize].get(key) as i64,
                self.sketches[(cur % 2) as usize].get(key) as i64,
            )
        });
        self.counts(prev, curr, now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::sync::{Arc, Barrier};

    #[test]
    fn counts_roll_over_aligned_windows() {
        let w = SlidingWindow::new(Duration::from_secs(60), HASHES, 1024);
        let t0 = 1_000 * 60_000; // start of a window
        for _ in 0..5 {
            w.add(7, 1, t0 + 1000);
        }
        let c = w.get(7, t0 + 30_000);
        assert_eq!((c.prev, c.curr), (0, 5));
        assert!((c.fraction - 0.5).abs() < 1e-9);
        let c = w.get(7, t0 + 60_000 + 15_000);
        assert_eq!((c.prev, c.curr), (5, 0));
        assert!((c.estimate() - 3.75).abs() < 1e-9);
        let c = w.get(7, t0 + 180_000);
        assert_eq!(
            (c.prev, c.curr),
            (0, 0),
            "two idle windows forget everything"
        );
    }

    #[test]
    fn calendar_months_are_fixed_windows() {
        let w = SlidingWindow::over(Period::CalendarMonth, 1, 1024);
        // 2026-02-14T12:00:00Z; February 2026 has 28 days.
        let feb14 = 1_771_070_400_000;
        let march1 = 1_772_323_200_000;
        assert_eq!(
            Period::CalendarMonth.bounds(feb14),
            (1_769_904_000_000, 28 * 86_400_000)
        );
        assert_eq!(Period::CalendarMonth.epoch(feb14), 2026 * 12 + 1);
        assert_eq!(Period::CalendarMonth.epoch(march1), 2026 * 12 + 2);
        assert_eq!(Period::CalendarMonth.epoch(march1 - 1), 2026 * 12 + 1);
        w.add(5, 700, feb14);
        let c = w.get(5, march1 - 1);
        assert_eq!(c.curr, 700);
        assert_eq!(c.window_ends_in(), Duration::from_millis(1));
        // Spent: the wait is to the end of the month, not a decay into the next.
        let c = w.get(5, feb14);
        assert_eq!(
            c.wait_for_room(700.0, 1.0),
            Duration::from_millis(march1 - feb14)
        );
        // The first of the month starts from zero: February does not carry over.
        let c = w.get(5, march1);
        assert_eq!((c.prev, c.curr, c.estimate()), (0, 0, 0.0));
        assert_eq!(c.interval, Duration::from_secs(31 * 86_400));
    }

    #[test]
    fn wait_for_room_is_exact() {
        let i = Duration::from_secs(60);
        // Full in the current window, nothing before: wait to the window's end.
        let c = Counts {
            prev: 0,
            curr: 10,
            fraction: 0.25,
            interval: i,
            sliding: true,
        };
        assert_eq!(
            c.wait_for_room(10.0, 1.0),
            Duration::from_secs(45) + i.mul_f64(0.1)
        );
        // Room in the current window, previous decaying: 10 × (1 − f') ≤ 10 − 1 − 0 → f' ≥ 0.1.
        let c = Counts {
            prev: 10,
            curr: 0,
            fraction: 0.0,
            interval: i,
            sliding: true,
        };
        assert_eq!(c.wait_for_room(10.0, 1.0), Duration::from_secs(6));
        let c = Counts {
            prev: 0,
            curr: 3,
            fraction: 0.5,
            interval: i,
            sliding: true,
        };
        assert_eq!(c.wait_for_room(10.0, 1.0), Duration::ZERO);
    }

    /// Phases of a barrier-synchronised run: every thread adds in window k, then all
    /// move to window k+1 together, so rollovers race with adds.
    #[test]
    fn concurrent_rollover_loses_nothing() {
        let w = Arc::new(SlidingWindow::new(Duration::from_millis(10), HASHES, 1024));
        let threads = 8;
        let per_phase = 500;
        let phases = 40u64;
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let w = w.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    for phase in 0..phases {
                        barrier.wait();
                        for i in 0..per_phase {
                            // Spread times over the window; some threads straddle into it late.
                            let now = phase * 10 + ((i + t) % 10) as u64;
                            w.add(42, 1, now);
                        }
                        barrier.wait();
                        let c = w.get(42, phase * 10 + 9);
                        assert_eq!(c.curr, (threads * per_phase) as i64, "phase {phase}");
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }

    proptest! {
        /// The counters never undercount a key, in the current or the previous window,
        /// with four rows (keys as they come), one, or dense (rows 0: the site
        /// counters), crowded (200 keys in 64 slots) so that keys share counters.
        #[test]
        fn never_undercounts(
            events in proptest::collection::vec((0u64..200, 1i64..5, 0u64..3), 1..400),
            rows in prop_oneof![Just(0usize), Just(1usize), Just(HASHES)],
        ) {
            let interval = Duration::from_millis(1000);
            let w = match rows {
                0 => SlidingWindow::dense(Period::every(interval), 64),
                _ => SlidingWindow::new(interval, rows, 64),
            };
            let mut truth: HashMap<(u64, u64), i64> = HashMap::new();
            let mut t = 0u64;
            for (key, n, step) in &events {
                t += step * 300;
                w.add(*key, *n, t);
                *truth.entry((*key, t / 1000)).or_default() += n;
            }
            let epoch = t / 1000;
            for key in 0..200u64 {
                let c = w.get(key, t);
                prop_assert!(c.curr >= *truth.get(&(key, epoch)).unwrap_or(&0));
                if epoch > 0 {
                    prop_assert!(c.prev >= *truth.get(&(key, epoch - 1)).unwrap_or(&0));
                }
            }
        }
    }

    /// A site counter array past 2 MiB (about 260,000 sites) is on huge pages.
    #[test]
    fn large_dense_counters_are_a_hot_table() {
        let w = SlidingWindow::dense(Period::every(Duration::from_secs(60)), 1 << 19);
        for cells in &w.sketches {
            let Cells::Dense(d) = cells else {
                panic!("dense")
            };
            assert!(crate::alloc::marked_huge(d.as_ptr().cast()));
        }
    }
}
