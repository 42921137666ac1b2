//! Failover (SPEC §8.2): why an attempt at one upstream was given up, and the record of
//! the attempts one request made. The gateway decides *whether* it may try again
//! (nothing sent to the client, the body replayable, time left); this module says
//! *what* a failure is and keeps the list the audit line shows.

use super::failure::Failure;

/// Why an attempt was given up (the `reason` label of
/// `keygate_upstream_fallbacks_total`, and the `outcome` of an audit `attempts` entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Refused, unreachable, or its name did not resolve.
    Connect,
    /// The TLS handshake, certificate, version or pin check failed.
    Tls,
    /// No connection or no response header within the time allowed.
    Timeout,
    /// The answer broke HTTP before its header was complete.
    Protocol,
    /// The provider answered 5xx.
    ServerError,
    /// The provider answered 429 (to this credential).
    RateLimited,
    /// The provider answered 401 (to this credential).
    Unauthorized,
    /// Its circuit breaker is open: not contacted.
    CircuitOpen,
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::Connect,
        Reason::Tls,
        Reason::Timeout,
        Reason::Protocol,
        Reason::ServerError,
        Reason::RateLimited,
        Reason::Unauthorized,
        Reason::CircuitOpen,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Reason::Connect => "connect",
            Reason::Tls => "tls",
            Reason::Timeout => "timeout",
            Reason::Protocol => "protocol",
            Reason::ServerError => "5xx",
            Reason::RateLimited => "429",
            Reason::Unauthorized => "401",
            Reason::CircuitOpen => "circuit_open",
        }
    }

    /// A failure Pingora reported while connecting or waiting for the header.
    pub fn of_failure(f: Failure) -> Reason {
        match f {
            Failure::Connect => Reason::Connect,
            Failure::ConnectTimeout | Failure::Timeout => Reason::Timeout,
            Failure::Tls | Failure::TlsTimeout => Reason::Tls,
            Failure::Protocol => Reason::Protocol,
        }
    }

    /// A response status that is worth another try elsewhere: 5xx, 429, 401.
    pub fn of_status(status: u16) -> Option<Reason> {
        match status {
            500..=599 => Some(Reason::ServerError),
            429 => Some(Reason::RateLimited),
            401 => Some(Reason::Unauthorized),
            _ => None,
        }
    }

    /// The credential was refused, not the provider: its next credential is tried first.
    pub fn blames_credential(self) -> bool {
        matches!(self, Reason::RateLimited | Reason::Unauthorized)
    }

    /// The provider itself failed: a failure for its circuit breaker. (A 401 or 429
    /// answers; the provider is up.)
    pub fn is_provider_failure(self) -> bool {
        !self.blames_credential() && self != Reason::CircuitOpen
    }
}

/// One attempt, as the audit line shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Attempt {
    pub upstream: String,
    /// A [`Reason`] label, or `answered` for the attempt whose answer the client got.
    pub outcome: &'static str,
}

/// Most attempts one request makes, credentials and upstreams together (Pingora's own
/// retry limit is 16; `total_timeout_ms` bounds them in time).
pub const MAX_ATTEMPTS: usize = 8;

/// Where a request is in its route's chain of upstreams, and what it tried so far.
#[derive(Debug, Default)]
pub struct Attempts {
    /// Position in the route's chain ([`crate::config::Route::chain`]) being tried.
    pub pos: usize,
    /// Credentials of the upstream at `pos` already tried by this request.
    pub tried_credentials: Vec<String>,
    /// The attempts given up, in order (the one in progress is not here yet).
    pub given_up: Vec<Attempt>,
    /// Connections started (to bound retries).
    pub started: usize,
}

impl Attempts {
    /// May another attempt start?
    pub fn may_retry(&self) -> bool {
        self.started < MAX_ATTEMPTS
    }

    /// Record that the attempt at `upstream` was given up for `reason`.
    pub fn give_up(&mut self, upstream: &str, reason: Reason) {
        self.given_up.push(Attempt {
            upstream: upstream.to_string(),
            outcome: reason.label(),
        });
    }

    /// Move to position `pos` of the chain (another upstream: its credentials are fresh).
    pub fn move_to(&mut self, pos: usize) {
        self.pos = pos;
        self.tried_credentials.clear();
    }

    /// The audit `attempts`: every attempt given up, then the last one (`upstream`, with
    /// `outcome`); `None` when only one upstream attempt was made.
    pub fn for_audit(&self, upstream: &str, outcome: &'static str) -> Option<Vec<Attempt>> {
        if self.given_up.is_empty() {
            return None;
        }
        let mut all = self.given_up.clone();
        all.push(Attempt {
            upstream: upstream.to_string(),
            outcome,
        });
        Some(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_that_fail_over_and_what_they_blame() {
        assert_eq!(Reason::of_status(503), Some(Reason::ServerError));
        assert_eq!(Reason::of_status(429), Some(Reason::RateLimited));
        assert_eq!(Reason::of_status(401), Some(Reason::Unauthorized));
        for ok in [200, 204, 400, 403, 404, 413, 422] {
            assert_eq!(Reason::of_status(ok), None, "{ok}");
        }
        assert!(
            Reason::RateLimited.blames_credential() && !Reason::RateLimited.is_provider_failure()
        );
        assert!(
            Reason::ServerError.is_provider_failure() && !Reason::CircuitOpen.is_provider_failure()
        );
        assert_eq!(Reason::of_failure(Failure::ConnectTimeout), Reason::Timeout);
        assert_eq!(Reason::of_failure(Failure::TlsTimeout), Reason::Tls);
        let labels: std::collections::HashSet<_> = Reason::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), Reason::ALL.len(), "labels are distinct");
    }

    #[test]
    fn the_audit_lists_attempts_only_when_there_was_more_than_one() {
        let mut a = Attempts::default();
        assert_eq!(a.for_audit("openai", "answered"), None);
        a.give_up("openai", Reason::ServerError);
        a.move_to(1);
        let all = a.for_audit("backup", "answered").unwrap();
        assert_eq!(
            all,
            vec![
                Attempt {
                    upstream: "openai".into(),
                    outcome: "5xx"
                },
                Attempt {
                    upstream: "backup".into(),
                    outcome: "answered"
                },
            ]
        );
        a.started = MAX_ATTEMPTS;
        assert!(!a.may_retry());
    }
}
