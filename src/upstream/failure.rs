//! What a Pingora error means, decided in one place: whether the provider failed (and
//! so counts against its circuit and `keygate_upstream_errors_total{kind}`), whether the
//! client did, and what the client is told.

use crate::error::{ErrorCode, GatewayError};
use pingora::{ErrorSource, ErrorType};

/// How talking to the provider failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Refused, no route, or a socket error while connecting.
    Connect,
    ConnectTimeout,
    /// No answer (or no room to write) within `read_timeout`.
    Timeout,
    Tls,
    TlsTimeout,
    /// The answer broke HTTP.
    Protocol,
}

impl Failure {
    /// The `kind` labels of `keygate_upstream_errors_total` (with `pin_mismatch`, counted
    /// where the pin is checked).
    pub const LABELS: [&'static str; 4] = ["connect", "timeout", "tls", "protocol"];

    pub fn label(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::ConnectTimeout | Failure::Timeout | Failure::TlsTimeout => "timeout",
            Failure::Tls => "tls",
            Failure::Protocol => "protocol",
        }
    }

    /// What the client is told (502, or 504 when the provider was too slow to answer).
    pub fn to_error(self) -> GatewayError {
        match self {
            Failure::Timeout => GatewayError::new(
                ErrorCode::UpstreamTimeout,
                "The provider did not answer in time.",
            ),
            Failure::ConnectTimeout => {
                GatewayError::upstream("The provider could not be reached in time.")
            }
            Failure::Connect => GatewayError::upstream("The provider could not be reached."),
            Failure::Tls | Failure::TlsTimeout => {
                GatewayError::upstream("The provider's TLS connection could not be verified.")
            }
            Failure::Protocol => GatewayError::upstream("The provider's response was invalid."),
        }
    }
}

/// Who a Pingora error is the fault of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The client went away: nothing is written.
    ClientGone,
    /// The client's request was malformed or too slow (400).
    Client { timed_out: bool },
    /// The provider failed: counted against its circuit and in its error metric.
    Upstream(Failure),
    /// Reported like a provider failure, but Pingora did not attribute it to the upstream
    /// (no source set, not a connect or TLS error): not counted against the provider.
    Unattributed(Failure),
    /// keygate itself (500).
    Internal,
}

impl Class {
    /// The error the client gets; `None` when there is nobody to tell.
    pub fn to_error(self) -> Option<GatewayError> {
        Some(match self {
            Class::ClientGone => return None,
            Class::Client { timed_out: true } => {
                GatewayError::bad_request("The request was not received in time.")
            }
            Class::Client { timed_out: false } => {
                GatewayError::bad_request("The request is malformed.")
            }
            Class::Upstream(f) | Class::Unattributed(f) => f.to_error(),
            Class::Internal => GatewayError::new(
                ErrorCode::Internal,
                "The gateway failed to handle this request.",
            ),
        })
    }
}

/// Classify an error Pingora raised (keygate's own refusals never get here).
pub fn classify(e: &pingora::Error) -> Class {
    use ErrorType::*;
    let etype = e.etype();
    if matches!(e.esource(), ErrorSource::Downstream) {
        return match etype {
            ReadError | WriteError | ConnectionClosed => Class::ClientGone,
            ReadTimedout => Class::Client { timed_out: true },
            _ => Class::Client { timed_out: false },
        };
    }
    // keygate's own request body shorter than the length it announced: never the
    // provider's doing, so never counted against its circuit.
    if matches!(etype, Custom("PrematureBodyEnd")) {
        return Class::Internal;
    }
    let from_upstream = matches!(e.esource(), ErrorSource::Upstream);
    // Connecting and the TLS handshake are the provider's whatever source Pingora set.
    let connecting = matches!(
        etype,
        ConnectTimedout
            | ConnectRefused
            | ConnectNoRoute
            | ConnectError
            | TLSHandshakeFailure
            | TLSHandshakeTimedout
            | InvalidCert
    );
    let failure = match etype {
        ReadTimedout | WriteTimedout => Failure::Timeout,
        ConnectTimedout => Failure::ConnectTimeout,
        ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure | BindError
        | SocketError => Failure::Connect,
        TLSHandshakeTimedout => Failure::TlsTimeout,
        TLSHandshakeFailure | InvalidCert | TLSWantX509Lookup => Failure::Tls,
        _ if from_upstream => Failure::Protocol,
        _ => return Class::Internal,
    };
    if from_upstream || connecting {
        Class::Upstream(failure)
    } else {
        Class::Unattributed(failure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::Error;

    #[test]
    fn the_source_decides_whose_fault_it_is() {
        let down = |t| classify(&Error::new_down(t));
        let up = |t| classify(&Error::new_up(t));
        assert_eq!(down(ErrorType::ConnectionClosed), Class::ClientGone);
        // keygate's own body short of its announced length: not the provider's.
        assert_eq!(up(ErrorType::Custom("PrematureBodyEnd")), Class::Internal);
        assert_eq!(
            down(ErrorType::ReadTimedout),
            Class::Client { timed_out: true }
        );
        assert_eq!(
            up(ErrorType::ReadTimedout),
            Class::Upstream(Failure::Timeout)
        );
        assert_eq!(
            up(ErrorType::ConnectRefused),
            Class::Upstream(Failure::Connect)
        );
        assert_eq!(
            up(ErrorType::TLSHandshakeTimedout),
            Class::Upstream(Failure::TlsTimeout)
        );
        assert_eq!(
            up(ErrorType::InvalidHTTPHeader),
            Class::Upstream(Failure::Protocol)
        );
        assert_eq!(
            classify(&Error::new(ErrorType::InternalError)),
            Class::Internal
        );
    }

    #[test]
    fn connect_errors_from_any_source_count_against_the_upstream() {
        // Connect and handshake errors are the provider's whatever the source.
        for t in [
            ErrorType::ConnectTimedout,
            ErrorType::ConnectRefused,
            ErrorType::TLSHandshakeFailure,
        ] {
            assert!(matches!(classify(&Error::new(t)), Class::Upstream(_)));
        }
        // Others only when Pingora says so: a slow client must not open a circuit.
        for t in [
            ErrorType::WriteTimedout,
            ErrorType::SocketError,
            ErrorType::ConnectProxyFailure,
        ] {
            assert!(matches!(
                classify(&Error::new(t.clone())),
                Class::Unattributed(_)
            ));
            assert!(matches!(classify(&Error::new_up(t)), Class::Upstream(_)));
        }
        assert_eq!(
            classify(&Error::new(ErrorType::ReadTimedout))
                .to_error()
                .map(|e| e.code.status()),
            Some(504),
            "reported the same way"
        );
    }

    #[test]
    fn a_slow_provider_is_504_and_every_failure_has_a_label() {
        assert_eq!(Failure::Timeout.to_error().code.status(), 504);
        assert_eq!(Failure::Connect.to_error().code.status(), 502);
        for f in [
            Failure::Connect,
            Failure::ConnectTimeout,
            Failure::Timeout,
            Failure::Tls,
            Failure::TlsTimeout,
            Failure::Protocol,
        ] {
            assert!(Failure::LABELS.contains(&f.label()));
        }
        assert!(Class::ClientGone.to_error().is_none());
    }
}
