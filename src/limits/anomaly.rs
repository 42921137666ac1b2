//! Usage anomalies per site (SPEC §8.7): requests and tokens per window (a minute unless
//! configured) against the site's own moving baseline, an exponentially weighted mean of
//! its past windows (about the last 30). A window whose count passes `factor` × baseline,
//! and `min_per_minute`, raises one event per episode (the episode ends with the first
//! window back under the threshold); with `throttle`, the site is then held to its baseline
//! rate for `throttle_s`.
//!
//! Bounded and O(1) per request: one small record per site that made a request (sites are
//! configured, so their number is bounded), in 16 locked shards.
//!
//! False positives, by design: a site is not judged before `warmup_windows` windows of
//! history (a new site's first burst is no anomaly); a daily peak that is `factor` times
//! the last half hour's mean is flagged (raise `factor`, or use `alert`, for spiky sites).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::Duration;

/// What a site's anomaly does besides the metric and the audit line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Alert,
    Throttle,
}

/// `anomaly:`.
#[derive(Debug, Clone)]
pub struct AnomalySettings {
    pub factor: f64,
    pub min_per_minute: f64,
    pub action: Action,
    pub throttle: Duration,
    /// The window counts are kept over (60 s; shorter only to test).
    pub window: Duration,
    /// Windows of history before a site is judged.
    pub warmup_windows: u32,
}

/// What was counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Requests,
    Tokens,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Requests, Kind::Tokens];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Requests => "requests",
            Kind::Tokens => "tokens",
        }
    }
}

/// An anomaly's start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Event {
    pub kind: Kind,
    /// This window's count so far, and the baseline per window.
    pub count: f64,
    pub baseline: f64,
    /// Until when the site is throttled (ms since the epoch), with `throttle`.
    pub throttled_until_ms: Option<u64>,
}

/// The weight of the newest window in the baseline (a mean over about 30 windows).
const ALPHA: f64 = 2.0 / 31.0;
const SHARDS: usize = 16;

#[derive(Debug, Default, Clone)]
struct SiteRate {
    window: u64,
    counts: [f64; 2],
    baselines: [f64; 2],
    /// Windows of history so far (saturating).
    seen: u32,
    /// An episode is on, per kind.
    episode: [bool; 2],
    throttle_until_ms: u64,
}

impl SiteRate {
    /// Move to window `w`, folding the finished ones into the baselines.
    fn roll(&mut self, w: u64, s: &AnomalySettings) {
        if w <= self.window {
            return;
        }
        if self.seen == 0 && self.counts == [0.0; 2] {
            // First sight: no history to fold.
            self.window = w;
            self.seen = 1;
            return;
        }
        let gap = (w - self.window).min(1_000) as i32;
        for k in 0..2 {
            let threshold = self.threshold(k, s);
            if self.counts[k] <= threshold {
                self.episode[k] = false;
            }
            // The first whole window seeds the baseline; later ones move it.
            let b = match self.seen {
                0 | 1 => self.counts[k],
                _ => self.baselines[k] + ALPHA * (self.counts[k] - self.baselines[k]),
            };
            // Empty windows after it decay the baseline.
            self.baselines[k] = b * (1.0 - ALPHA).powi(gap - 1);
            if gap > 1 {
                self.episode[k] = false;
            }
            self.counts[k] = 0.0;
        }
        self.seen = self.seen.saturating_add(gap as u32);
        self.window = w;
    }

    fn threshold(&self, k: usize, s: &AnomalySettings) -> f64 {
        let floor = s.min_per_minute * s.window.as_secs_f64() / 60.0;
        (s.factor * self.baselines[k]).max(floor)
    }

    /// Count `n` of kind `k`; the event if this starts an episode.
    fn add(&mut self, k: usize, n: f64, s: &AnomalySettings, now_ms: u64) -> Option<Event> {
        self.counts[k] += n;
        let judged = self.seen > s.warmup_windows;
        if !judged || self.episode[k] || self.counts[k] <= self.threshold(k, s) {
            return None;
        }
        self.episode[k] = true;
        let throttled_until_ms = (s.action == Action::Throttle).then(|| {
            self.throttle_until_ms = now_ms + s.throttle.as_millis() as u64;
            self.throttle_until_ms
        });
        Some(Event {
            kind: Kind::ALL[k],
            count: self.counts[k],
            baseline: self.baselines[k],
            throttled_until_ms,
        })
    }
}

/// Per-site rates.
pub struct Detector {
    shards: [Mutex<HashMap<u64, SiteRate, ahash::RandomState>>; SHARDS],
}

impl Default for Detector {
    fn default() -> Self {
        Detector {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::default())),
        }
    }
}

/// A request refused while its site is throttled: retry after this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled(pub Duration);

impl Detector {
    /// Forget the sites `keep` says are gone (a reload or the admin API removed them), so
    /// that the map holds only configured sites however many come and go.
    pub fn retain(&self, keep: impl Fn(u64) -> bool) {
        for shard in &self.shards {
            shard.lock().retain(|site, _| keep(*site));
        }
    }

    /// How many sites have a baseline.
    pub fn site_count(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    fn with<T>(
        &self,
        site: u64,
        s: &AnomalySettings,
        now_ms: u64,
        f: impl FnOnce(&mut SiteRate) -> T,
    ) -> T {
        let mut shard = self.shards[(site % SHARDS as u64) as usize].lock();
        let rate = shard.entry(site).or_default();
        let w = now_ms / (s.window.as_millis().max(1) as u64);
        rate.roll(w, s);
        f(rate)
    }

    /// One request of `site`: refused while the site is throttled beyond its baseline;
    /// else counted, with the event if it starts an episode.
    pub fn request(
        &self,
        site: u64,
        s: &AnomalySettings,
        now_ms: u64,
    ) -> Result<Option<Event>, Throttled> {
        let window_ms = s.window.as_millis().max(1) as u64;
        self.with(site, s, now_ms, |r| {
            if now_ms < r.throttle_until_ms && r.counts[0] + 1.0 > r.baselines[0].max(1.0) {
                return Err(Throttled(Duration::from_millis(
                    window_ms - now_ms % window_ms,
                )));
            }
            Ok(r.add(0, 1.0, s, now_ms))
        })
    }

    /// Tokens `site` used; the event if they start an episode.
    pub fn tokens(&self, site: u64, n: u64, s: &AnomalySettings, now_ms: u64) -> Option<Event> {
        self.with(site, s, now_ms, |r| r.add(1, n as f64, s, now_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(action: Action) -> AnomalySettings {
        AnomalySettings {
            factor: 5.0,
            min_per_minute: 30.0,
            action,
            throttle: Duration::from_secs(120),
            window: Duration::from_secs(60),
            warmup_windows: 3,
        }
    }

    /// `per_window` requests in each of `windows` windows from minute `from`.
    fn steady(
        d: &Detector,
        s: &AnomalySettings,
        from: u64,
        windows: u64,
        per_window: u64,
    ) -> Vec<Event> {
        let mut events = vec![];
        for w in from..from + windows {
            for i in 0..per_window {
                let at = w * 60_000 + i * 60_000 / per_window.max(1);
                if let Ok(Some(e)) = d.request(7, s, at) {
                    events.push(e);
                }
            }
        }
        events
    }

    #[test]
    fn retain_forgets_the_sites_that_are_gone() {
        let s = settings(Action::Alert);
        let d = Detector::default();
        for site in 0..100u64 {
            let _ = d.request(site, &s, 1_000);
        }
        assert_eq!(d.site_count(), 100);
        d.retain(|site| site % 10 == 0);
        assert_eq!(d.site_count(), 10);
        // A kept site still has its baseline; a forgotten one starts again.
        assert!(d.shards[(50 % SHARDS as u64) as usize]
            .lock()
            .contains_key(&50));
        assert!(!d.shards[(7 % SHARDS as u64) as usize]
            .lock()
            .contains_key(&7));
    }

    #[test]
    fn a_tenfold_spike_after_a_baseline_is_one_event_and_a_steady_site_none() {
        let s = settings(Action::Alert);
        let d = Detector::default();
        assert!(steady(&d, &s, 0, 10, 20).is_empty());
        let events = steady(&d, &s, 10, 1, 200);
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].kind, Kind::Requests);
        assert!(
            events[0].count > 100.0 && events[0].baseline < 25.0,
            "{events:?}"
        );
        // The spike goes on: the same episode. Back to normal, then a new spike: a new one.
        assert!(steady(&d, &s, 11, 1, 200).is_empty());
        assert!(steady(&d, &s, 12, 1, 20).is_empty());
        assert_eq!(steady(&d, &s, 13, 1, 400).len(), 1);
    }

    #[test]
    fn new_sites_and_small_numbers_are_not_judged() {
        let s = settings(Action::Alert);
        let d = Detector::default();
        // A new site's first burst, inside the warm-up.
        assert!(steady(&d, &s, 0, 1, 500).is_empty());
        // Ten times a baseline of 1 is under min_per_minute.
        let d = Detector::default();
        assert!(steady(&d, &s, 0, 10, 1).is_empty());
        assert!(steady(&d, &s, 10, 1, 10).is_empty());
    }

    #[test]
    fn throttle_holds_the_site_to_its_baseline_then_lets_go() {
        let s = settings(Action::Throttle);
        let d = Detector::default();
        steady(&d, &s, 0, 10, 20);
        let start = 10 * 60_000;
        let mut admitted = 0;
        let mut refused = 0;
        for i in 0..300 {
            match d.request(7, &s, start + i * 100) {
                Ok(_) => admitted += 1,
                Err(Throttled(wait)) => {
                    refused += 1;
                    assert!(wait <= Duration::from_secs(60));
                }
            }
        }
        // 101 pass (the 101st passes five times the baseline of 20), the rest of the
        // window is held to the baseline, which it has used up.
        assert!(
            refused >= 150 && admitted <= 101,
            "{admitted} admitted, {refused} refused"
        );
        // Another site is untouched.
        assert!(d.request(8, &s, start + 30_000).is_ok());
        // Within throttle_s, a new window: held to the baseline (about 23 now).
        let next = 12 * 60_000;
        let passed = (0..60)
            .filter(|i| d.request(7, &s, next + i * 100).is_ok())
            .count();
        assert!((20..=25).contains(&passed), "{passed}");
        // After throttle_s: admitted again.
        let later = 14 * 60_000;
        assert_eq!(
            (0..60)
                .filter(|i| d.request(7, &s, later + i * 100).is_ok())
                .count(),
            60
        );
    }

    #[test]
    fn tokens_count_as_their_own_kind() {
        let s = settings(Action::Alert);
        let d = Detector::default();
        for w in 0..10 {
            assert_eq!(d.tokens(7, 1_000, &s, w * 60_000), None);
        }
        let e = d.tokens(7, 20_000, &s, 10 * 60_000).unwrap();
        assert_eq!(e.kind, Kind::Tokens);
    }
}
