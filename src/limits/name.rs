//! The limits a request can be refused by: the `limit` label of
//! `keygate_rate_limited_total` and the `limit` member of a 429 body.

/// A limit that refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitName {
    RequestsPerMinute,
    RequestsPerHour,
    RequestsPerDay,
    TokensPerDay,
    UsdPerDay,
    UsdPerMonth,
    Concurrent,
    /// The per-client-IP cool-down after repeated failed authentications.
    AuthFailures,
    /// A browser token's `max_requests`.
    TokenMaxRequests,
    /// Browser tokens minted from one client address (`tokens.mint_per_ip_per_minute`).
    TokenMintsPerIp,
    /// A site held to its baseline after a usage anomaly (`anomaly.action: throttle`).
    Anomaly,
}

impl LimitName {
    /// Every limit (metric series are pre-registered from this list).
    pub const ALL: [LimitName; 11] = [
        LimitName::RequestsPerMinute,
        LimitName::RequestsPerHour,
        LimitName::RequestsPerDay,
        LimitName::TokensPerDay,
        LimitName::UsdPerDay,
        LimitName::UsdPerMonth,
        LimitName::Concurrent,
        LimitName::AuthFailures,
        LimitName::TokenMaxRequests,
        LimitName::TokenMintsPerIp,
        LimitName::Anomaly,
    ];

    /// The label value (the tier's config key, for tier limits).
    pub fn as_str(self) -> &'static str {
        match self {
            LimitName::RequestsPerMinute => "requests_per_minute",
            LimitName::RequestsPerHour => "requests_per_hour",
            LimitName::RequestsPerDay => "requests_per_day",
            LimitName::TokensPerDay => "tokens_per_day",
            LimitName::UsdPerDay => "usd_per_day",
            LimitName::UsdPerMonth => "usd_per_month",
            LimitName::Concurrent => "concurrent",
            LimitName::AuthFailures => "auth_failures",
            LimitName::TokenMaxRequests => "token_max_requests",
            LimitName::TokenMintsPerIp => "token_mints_per_ip",
            LimitName::Anomaly => "anomaly",
        }
    }

    /// Whether the limit is a USD budget (counted in micro-USD).
    pub fn is_usd(self) -> bool {
        matches!(self, LimitName::UsdPerDay | LimitName::UsdPerMonth)
    }

    /// What the client is told.
    pub fn message(self) -> &'static str {
        match self {
            LimitName::RequestsPerMinute => "Rate limit exceeded (requests_per_minute).",
            LimitName::RequestsPerHour => "Rate limit exceeded (requests_per_hour).",
            LimitName::RequestsPerDay => "Rate limit exceeded (requests_per_day).",
            LimitName::TokensPerDay => "Rate limit exceeded (tokens_per_day).",
            LimitName::UsdPerDay => "Rate limit exceeded (usd_per_day).",
            LimitName::UsdPerMonth => "Rate limit exceeded (usd_per_month).",
            LimitName::Concurrent => "Rate limit exceeded (concurrent).",
            LimitName::AuthFailures => "Too many failed authentications from this address.",
            LimitName::TokenMaxRequests => "This token has been used for all its requests.",
            LimitName::TokenMintsPerIp => "Too many browser tokens minted from this address.",
            LimitName::Anomaly => "Usage far above this site's usual rate; held to it for a while.",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_limit_once() {
        // A match without a wildcard: a new variant fails to compile until listed here.
        let index = |l: LimitName| match l {
            LimitName::RequestsPerMinute => 0,
            LimitName::RequestsPerHour => 1,
            LimitName::RequestsPerDay => 2,
            LimitName::TokensPerDay => 3,
            LimitName::UsdPerDay => 4,
            LimitName::UsdPerMonth => 5,
            LimitName::Concurrent => 6,
            LimitName::AuthFailures => 7,
            LimitName::TokenMaxRequests => 8,
            LimitName::TokenMintsPerIp => 9,
            LimitName::Anomaly => 10,
        };
        for (i, l) in LimitName::ALL.iter().enumerate() {
            assert_eq!(index(*l), i);
            assert!(l.message().contains(' '));
        }
    }
}
