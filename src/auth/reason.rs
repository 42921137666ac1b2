//! Why authentication failed: the `reason` label of `keygate_auth_failures_total` and the
//! audit line, one variant each, so every series can be created at start.

/// The reason an authentication failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthReason {
    Missing,
    Malformed,
    BadSignature,
    BadAuthority,
    Stale,
    Replayed,
    DigestMismatch,
    NonceStoreFull,
    RedisDown,
}

impl AuthReason {
    /// Every reason (metric series are pre-registered from this list).
    pub const ALL: [AuthReason; 9] = [
        AuthReason::Missing,
        AuthReason::Malformed,
        AuthReason::BadSignature,
        AuthReason::BadAuthority,
        AuthReason::Stale,
        AuthReason::Replayed,
        AuthReason::DigestMismatch,
        AuthReason::NonceStoreFull,
        AuthReason::RedisDown,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthReason::Missing => "missing",
            AuthReason::Malformed => "malformed",
            AuthReason::BadSignature => "bad_signature",
            AuthReason::BadAuthority => "bad_authority",
            AuthReason::Stale => "stale",
            AuthReason::Replayed => "replayed",
            AuthReason::DigestMismatch => "digest_mismatch",
            AuthReason::NonceStoreFull => "nonce_store_full",
            AuthReason::RedisDown => "redis_down",
        }
    }

    /// What the client is told. An unknown key and a bad MAC share one message.
    pub fn message(self) -> &'static str {
        match self {
            AuthReason::Missing => "The request carries no credentials.",
            AuthReason::Malformed => "The request signature headers are malformed.",
            AuthReason::BadAuthority => "The signed authority is not served by this gateway.",
            AuthReason::DigestMismatch => "The body does not match its Content-Digest.",
            AuthReason::Stale => "The request signature is outside the accepted time window.",
            AuthReason::Replayed => "This nonce has already been used.",
            AuthReason::NonceStoreFull | AuthReason::RedisDown => {
                "The gateway cannot accept new signed requests right now."
            }
            AuthReason::BadSignature => "The request could not be authenticated.",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_reason_once() {
        // A match without a wildcard: a new variant fails to compile until listed here.
        let index = |r: AuthReason| match r {
            AuthReason::Missing => 0,
            AuthReason::Malformed => 1,
            AuthReason::BadSignature => 2,
            AuthReason::BadAuthority => 3,
            AuthReason::Stale => 4,
            AuthReason::Replayed => 5,
            AuthReason::DigestMismatch => 6,
            AuthReason::NonceStoreFull => 7,
            AuthReason::RedisDown => 8,
        };
        for (i, r) in AuthReason::ALL.iter().enumerate() {
            assert_eq!(index(*r), i);
        }
    }
}
