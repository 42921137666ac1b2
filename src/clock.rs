//! Wall-clock time, the one place keygate reads it: limit windows, signature `created`
//! and `expires`, nonce expiry, token lifetimes. Durations and deadlines use `Instant`.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch.
pub fn now_s() -> i64 {
    secs(now_ms())
}

/// Whole seconds of a millisecond timestamp (what signatures and tokens count in).
pub fn secs(ms: u64) -> i64 {
    (ms / 1000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_truncate_milliseconds() {
        assert_eq!(secs(1_999), 1);
        assert_eq!(secs(2_000), 2);
        let (s, ms) = (now_s(), now_ms());
        assert!((secs(ms) - s).abs() <= 1);
    }
}
