//! A circuit breaker per upstream: after `failures` consecutive failures (connect
//! errors, timeouts, TLS/pin failures, 5xx) the circuit opens and requests are refused
//! (503) without contacting the upstream for `open_s`; then one probe at a time is let
//! through, and `half_open_successes` good probes close it again.
//!
//! Every change of state is logged once, with the upstream and the reason; `open_s`
//! passing moves an open circuit to half-open on time ([`CircuitBreaker::tick`], called
//! every second), not only when a request comes.

use parking_lot::Mutex;
use std::time::{Duration, Instant};

/// `upstreams.<name>.circuit_breaker`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitConfig {
    pub failures: u32,
    pub open: Duration,
    pub half_open_successes: u32,
}

impl Default for CircuitConfig {
    fn default() -> Self {
        CircuitConfig {
            failures: 5,
            open: Duration::from_secs(30),
            half_open_successes: 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// `probe`: when the probe in flight was let through.
    HalfOpen {
        successes: u32,
        probe: Option<Instant>,
    },
}

/// What `admit` granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    Normal,
    /// The one request allowed through a half-open circuit, and when it was let through
    /// (a probe that aged out and reports late must not free a newer probe's slot).
    Probe(Instant),
}

/// How a request that held a permit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    /// Refused before reaching the upstream: counts neither way.
    NotTried,
}

impl St {
    fn code(self) -> i64 {
        match self {
            St::Closed { .. } => 0,
            St::Open { .. } => 1,
            St::HalfOpen { .. } => 2,
        }
    }

    fn name(self) -> &'static str {
        ["closed", "open", "half-open"][self.code() as usize]
    }
}

/// One upstream's breaker.
#[derive(Debug)]
pub struct CircuitBreaker {
    /// The upstream's name, for the log line of each change.
    upstream: String,
    cfg: CircuitConfig,
    st: Mutex<St>,
}

impl CircuitBreaker {
    pub fn new(upstream: &str, cfg: CircuitConfig) -> Self {
        CircuitBreaker {
            upstream: upstream.to_string(),
            cfg,
            st: Mutex::new(St::Closed { failures: 0 }),
        }
    }

    /// Move to `next`, logging a change of state (not a change within one) with `why`
    /// (built only then: this runs for every request).
    fn set(&self, st: &mut St, next: St, why: impl FnOnce() -> String) {
        if st.code() != next.code() {
            let line = format!(
                "upstream {}: circuit {} -> {} ({})",
                self.upstream,
                st.name(),
                next.name(),
                why()
            );
            match next {
                St::Open { .. } => log::warn!("{line}"),
                _ => log::info!("{line}"),
            }
        }
        *st = next;
    }

    /// Move an open circuit whose `open_s` has passed to half-open; the state code
    /// when it changed (for `keygate_circuit_state`).
    pub fn tick(&self, now: Instant) -> Option<i64> {
        let mut st = self.st.lock();
        match *st {
            St::Open { until } if now >= until => {
                let next = St::HalfOpen {
                    successes: 0,
                    probe: None,
                };
                self.set(&mut st, next, || {
                    "open_s passed; the next request probes".into()
                });
                Some(next.code())
            }
            _ => None,
        }
    }

    /// Take over the state of the breaker this one replaces (config reload).
    ///
    /// A probe in flight is not: its outcome is recorded where its permit came from, so
    /// this breaker lets the next request probe instead of waiting for it for ever.
    pub fn inherit(&self, old: &CircuitBreaker) {
        *self.st.lock() = match *old.st.lock() {
            St::HalfOpen { successes, .. } => St::HalfOpen {
                successes,
                probe: None,
            },
            s => s,
        };
    }

    /// 0 closed, 1 open, 2 half-open (`keygate_circuit_state`).
    pub fn state_code(&self) -> i64 {
        self.st.lock().code()
    }

    /// Whether requests would be refused now.
    pub fn is_open(&self, now: Instant) -> bool {
        matches!(*self.st.lock(), St::Open { until } if now < until)
    }

    /// May a request go to the upstream? `Err` carries the time until it might.
    pub fn admit(&self, now: Instant) -> Result<Permit, Duration> {
        let mut st = self.st.lock();
        match *st {
            St::Closed { .. } => Ok(Permit::Normal),
            St::Open { until } if now < until => Err(until - now),
            St::Open { .. } => {
                let next = St::HalfOpen {
                    successes: 0,
                    probe: Some(now),
                };
                self.set(&mut st, next, || "open_s passed; probing".into());
                Ok(Permit::Probe(now))
            }
            // One probe at a time, but not for ever: a probe that has not settled within
            // `open_s` (a client trickling its body, an answer that never comes) lets
            // another through, as the circuit would have after opening again.
            St::HalfOpen {
                probe: Some(since), ..
            } if now < since + self.cfg.open => {
                Err((since + self.cfg.open - now).max(Duration::from_secs(1)))
            }
            St::HalfOpen { successes, .. } => {
                *st = St::HalfOpen {
                    successes,
                    probe: Some(now),
                };
                Ok(Permit::Probe(now))
            }
        }
    }

    /// Record how a permitted request ended.
    pub fn record(&self, permit: Permit, outcome: Outcome, now: Instant) {
        let mut st = self.st.lock();
        let before = *st;
        let why = || match before {
            St::Closed { .. } => format!("{} consecutive failures", self.cfg.failures),
            _ if outcome == Outcome::Failure => "the probe failed".to_string(),
            _ => format!("{} probes succeeded", self.cfg.half_open_successes),
        };
        // The probe slot this permit held, if it still holds it.
        let current = |probe: Option<Instant>| match permit {
            Permit::Probe(since) if probe == Some(since) => None,
            _ => probe,
        };
        let next = match (*st, permit, outcome) {
            (s, _, Outcome::NotTried) => match s {
                St::HalfOpen { successes, probe } => St::HalfOpen {
                    successes,
                    probe: current(probe),
                },
                s => s,
            },
            (St::Closed { .. }, _, Outcome::Success) => St::Closed { failures: 0 },
            (St::Closed { failures }, _, Outcome::Failure) => {
                if failures + 1 >= self.cfg.failures {
                    St::Open {
                        until: now + self.cfg.open,
                    }
                } else {
                    St::Closed {
                        failures: failures + 1,
                    }
                }
            }
            (St::HalfOpen { successes, probe }, Permit::Probe(_), Outcome::Success) => {
                if successes + 1 >= self.cfg.half_open_successes {
                    St::Closed { failures: 0 }
                } else {
                    St::HalfOpen {
                        successes: successes + 1,
                        probe: current(probe),
                    }
                }
            }
            (St::HalfOpen { .. }, Permit::Probe(_), Outcome::Failure) => St::Open {
                until: now + self.cfg.open,
            },
            // Requests admitted before the circuit changed state do not move it.
            (s, _, _) => s,
        };
        self.set(&mut st, next, why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_in_flight_is_not_inherited() {
        let old = cb();
        let t = Instant::now();
        for _ in 0..3 {
            let p = old.admit(t).unwrap();
            old.record(p, Outcome::Failure, t);
        }
        let later = t + Duration::from_secs(3600);
        assert!(matches!(old.admit(later), Ok(Permit::Probe(_))));
        // A reload while that probe is out: the new breaker probes again.
        let new = cb();
        new.inherit(&old);
        assert_eq!(new.state_code(), 2);
        assert!(matches!(new.admit(later), Ok(Permit::Probe(_))));
    }

    fn cb() -> CircuitBreaker {
        CircuitBreaker::new(
            "test",
            CircuitConfig {
                failures: 3,
                open: Duration::from_secs(10),
                half_open_successes: 2,
            },
        )
    }

    #[test]
    fn opens_after_consecutive_failures_and_closes_after_good_probes() {
        let c = cb();
        let t = Instant::now();
        for _ in 0..2 {
            let p = c.admit(t).unwrap();
            c.record(p, Outcome::Failure, t);
        }
        let p = c.admit(t).unwrap();
        c.record(p, Outcome::Success, t);
        assert_eq!(c.state_code(), 0, "a success resets the count");
        for _ in 0..3 {
            let p = c.admit(t).unwrap();
            c.record(p, Outcome::Failure, t);
        }
        assert_eq!(c.state_code(), 1);
        assert_eq!(
            c.admit(t + Duration::from_secs(4)),
            Err(Duration::from_secs(6))
        );
        let later = t + Duration::from_secs(10);
        let p = c.admit(later).unwrap();
        assert!(matches!(p, Permit::Probe(_)));
        assert!(c.admit(later).is_err(), "one probe at a time");
        c.record(p, Outcome::Success, later);
        let p = c.admit(later).unwrap();
        c.record(p, Outcome::Success, later);
        assert_eq!(c.state_code(), 0);
    }

    #[test]
    fn a_probe_that_never_settles_lets_another_through_after_open_s() {
        let c = cb();
        let t = Instant::now();
        for _ in 0..3 {
            c.record(Permit::Normal, Outcome::Failure, t);
        }
        let half = t + Duration::from_secs(10);
        assert!(matches!(c.admit(half), Ok(Permit::Probe(_))));
        assert_eq!(
            c.admit(half + Duration::from_secs(4)),
            Err(Duration::from_secs(6))
        );
        // The first probe is still out `open_s` later: another may probe.
        let later = half + Duration::from_secs(10);
        let second = c.admit(later).unwrap();
        assert!(matches!(second, Permit::Probe(_)));
        assert!(c.admit(later).is_err(), "still one at a time");
        // The first reports late: the second still holds the slot.
        let first = Permit::Probe(half);
        c.record(first, Outcome::NotTried, later);
        assert!(
            c.admit(later).is_err(),
            "a late probe freed a newer probe's slot"
        );
        c.record(second, Outcome::NotTried, later);
        assert!(c.admit(later).is_ok());
    }

    #[test]
    fn failed_probe_reopens_and_untried_probe_frees_the_slot() {
        let c = cb();
        let t = Instant::now();
        for _ in 0..3 {
            c.record(Permit::Normal, Outcome::Failure, t);
        }
        let later = t + Duration::from_secs(10);
        let p = c.admit(later).unwrap();
        c.record(p, Outcome::NotTried, later);
        let p = c.admit(later).unwrap();
        c.record(p, Outcome::Failure, later);
        assert_eq!(c.state_code(), 1);
        assert!(c.admit(later + Duration::from_secs(1)).is_err());
    }
}
