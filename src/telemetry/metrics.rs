//! Prometheus metrics (SPEC §5), in one registry, served only on `server.admin_listen`.
//!
//! No label takes a per-site or per-key value except `keygate_legacy_auth_total{site}`
//! (bounded by the number of legacy sites). Families are pre-initialised at load so
//! every name is present from the first scrape.

use prometheus::{
    CounterVec, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::LazyLock;

/// Buckets spanning sub-millisecond gateway overhead to multi-second LLM calls.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 120.0,
];

/// The `result` labels of `keygate_registrations_total`.
pub const REGISTRATION_RESULTS: [&str; 7] = [
    "accepted",
    "rate_limited",
    "invalid",
    "unavailable",
    "verified",
    "gone",
    "delivered",
];

/// The `result` labels of `keygate_tokens_minted_total`.
pub const MINT_RESULTS: [&str; 4] = ["ok", "unauthenticated", "rate_limited", "refused"];

/// The [`MINT_RESULTS`] label of a mint that failed with `error` (`None`: minted).
pub fn mint_result(error: Option<crate::error::ErrorCode>) -> &'static str {
    use crate::error::ErrorCode::*;
    MINT_RESULTS[match error {
        None => 0,
        Some(Unauthenticated | StaleRequest | Replayed) => 1,
        Some(RateLimited) => 2,
        Some(_) => 3,
    }]
}

/// Every metric keygate exports.
pub struct Metrics {
    pub registry: Registry,
    pub requests_total: IntCounterVec,
    pub request_duration: HistogramVec,
    /// From the request to the answer's first body byte from the provider (a stream's
    /// first event), per route.
    pub time_to_first_token: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub auth_failures: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub tokens_total: IntCounterVec,
    pub upstream_errors: IntCounterVec,
    /// Requests moved from one upstream to the next (SPEC §8.2).
    pub upstream_fallbacks: IntCounterVec,
    /// Realtime WebSocket sessions open now, per route (SPEC §8.1).
    pub realtime_sessions: IntGaugeVec,
    /// What answers cost in USD, per route and `prices:` key (SPEC §8.3).
    pub cost_usd: CounterVec,
    pub circuit_state: IntGaugeVec,
    pub response_rejected: IntCounterVec,
    pub legacy_auth: IntCounterVec,
    pub tokens_minted: IntCounterVec,
    /// The replay store's live entries and capacity (updated every second).
    pub nonce_store_entries: IntGauge,
    pub nonce_store_capacity: IntGauge,
    /// OTLP exports by result (`ok`, `failed`: its spans are dropped), spans recorded.
    pub otlp_exports: IntCounterVec,
    pub otlp_spans: IntCounter,
    pub otlp_dropped: IntCounter,
    /// Usage anomalies started, by kind (`requests`, `tokens`).
    pub anomalies: IntCounterVec,
    /// Registration requests, verifications and polls by result.
    pub registrations: IntCounterVec,
    /// Verification e-mails the relay accepted, and attempts that failed.
    pub emails_sent: IntCounter,
    pub email_errors: IntCounter,
    /// `notAfter` (unix seconds) of each served certificate, by listener address.
    pub tls_cert_not_after: IntGaugeVec,
    /// `notAfter` of the provider's leaf certificate, seen on the last new connection.
    pub upstream_cert_not_after: IntGaugeVec,
    pub config_reloads: IntCounterVec,
    pub config_generation: IntGauge,
    pub audit_dropped: IntCounter,
    pub connections_open: IntGauge,
    pub connections_refused: IntCounterVec,
    pub redis_errors: IntCounterVec,
    pub redis_seconds: HistogramVec,
    pub redis_up: IntGauge,
    /// Values replaced by placeholders, per kind (never the values).
    pub pii_replaced: IntCounterVec,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    r.register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    c
}

fn counter_f64(r: &Registry, name: &str, help: &str, labels: &[&str]) -> CounterVec {
    let c = CounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    r.register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    c
}

fn plain_counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    r.register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    r.register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    g
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    r.register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    g
}

fn histogram(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec()),
        labels,
    )
    .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    r.register(Box::new(h.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    h
}

impl Metrics {
    fn new() -> Self {
        // Metric definitions are constants: a failure here is a programming error.
        let r = Registry::new();
        let circuit_state = gauge_vec(
            &r,
            "keygate_circuit_state",
            "Circuit state per upstream: 0 closed, 1 open, 2 half-open",
            &["upstream"],
        );
        let realtime_sessions = gauge_vec(
            &r,
            "keygate_realtime_sessions",
            "Realtime sessions open, per route",
            &["route"],
        );
        let config_generation = gauge(
            &r,
            "keygate_config_generation",
            "Generation of the running config",
        );
        let audit_dropped = plain_counter(
            &r,
            "keygate_audit_dropped_total",
            "Audit lines dropped because the writer fell behind",
        );
        let redis_up = gauge(
            &r,
            "keygate_redis_up",
            "Fleet mode: 1 while Redis answers, 0 while the fallback policy applies",
        );
        Metrics {
            connections_open: gauge(
                &r,
                "keygate_connections_open",
                "Open client connections on the proxy listeners",
            ),
            connections_refused: counter(
                &r,
                "keygate_connections_refused_total",
                "Client connections closed at accept by a connection cap",
                &["cap"],
            ),
            redis_errors: counter(
                &r,
                "keygate_redis_errors_total",
                "Fleet mode: failed or timed-out Redis calls by operation",
                &["op"],
            ),
            redis_seconds: histogram(
                &r,
                "keygate_redis_seconds",
                "Fleet mode: Redis round trips by operation",
                &["op"],
            ),
            redis_up,
            requests_total: counter(
                &r,
                "keygate_requests_total",
                "Requests by route and status",
                &["route", "status"],
            ),
            request_duration: histogram(
                &r,
                "keygate_request_duration_seconds",
                "Time from request to last byte",
                &["route"],
            ),
            time_to_first_token: histogram(
                &r,
                "keygate_time_to_first_token_seconds",
                "Time from request to the first byte of a successful answer's body (a stream's first event)",
                &["route"],
            ),
            upstream_duration: histogram(
                &r,
                "keygate_upstream_duration_seconds",
                "Time spent on the upstream",
                &["upstream"],
            ),
            auth_failures: counter(
                &r,
                "keygate_auth_failures_total",
                "Failed authentications by reason",
                &["reason"],
            ),
            rate_limited: counter(
                &r,
                "keygate_rate_limited_total",
                "Requests refused by a limit",
                &["limit"],
            ),
            tokens_total: counter(
                &r,
                "keygate_tokens_total",
                "Tokens by upstream and direction",
                &["upstream", "direction"],
            ),
            upstream_errors: counter(
                &r,
                "keygate_upstream_errors_total",
                "Upstream failures by kind",
                &["upstream", "kind"],
            ),
            realtime_sessions,
            cost_usd: counter_f64(
                &r,
                "keygate_cost_usd_total",
                "USD spent per route and model (the prices: key that priced it)",
                &["route", "model"],
            ),
            upstream_fallbacks: counter(
                &r,
                "keygate_upstream_fallbacks_total",
                "Requests moved from one upstream of a route to the next, by why",
                &["route", "from", "to", "reason"],
            ),
            circuit_state,
            response_rejected: counter(
                &r,
                "keygate_response_rejected_total",
                "Upstream responses refused",
                &["upstream", "reason"],
            ),
            legacy_auth: counter(
                &r,
                "keygate_legacy_auth_total",
                "Deprecated legacy-site-timestamp uses",
                &["site"],
            ),
            tokens_minted: counter(
                &r,
                "keygate_tokens_minted_total",
                "Browser-token mint requests by result",
                &["result"],
            ),
            nonce_store_entries: gauge(
                &r,
                "keygate_nonce_store_entries",
                "Nonces remembered now (process-local store)",
            ),
            nonce_store_capacity: gauge(
                &r,
                "keygate_nonce_store_capacity",
                "Nonces the process-local store can hold (server.nonce_store_capacity)",
            ),
            otlp_exports: counter(
                &r,
                "keygate_otlp_exports_total",
                "OTLP trace exports by result (a failed export's spans are dropped)",
                &["result"],
            ),
            otlp_spans: plain_counter(
                &r,
                "keygate_otlp_spans_total",
                "Spans queued for OTLP export",
            ),
            otlp_dropped: plain_counter(
                &r,
                "keygate_otlp_spans_dropped_total",
                "Spans dropped because the export queue was full",
            ),
            anomalies: counter(
                &r,
                "keygate_anomalies_total",
                "Usage anomalies started (a site past anomaly.factor times its baseline), by kind",
                &["kind"],
            ),
            registrations: counter(
                &r,
                "keygate_registrations_total",
                "Self-service registration requests, verifications and polls by result",
                &["result"],
            ),
            emails_sent: plain_counter(
                &r,
                "keygate_emails_sent_total",
                "Verification e-mails accepted by the SMTP relay",
            ),
            email_errors: plain_counter(
                &r,
                "keygate_email_errors_total",
                "Verification e-mail attempts that failed (each retry counts)",
            ),
            tls_cert_not_after: gauge_vec(
                &r,
                "keygate_tls_cert_not_after_seconds",
                "Expiry (unix seconds) of the certificate served on each TLS listener",
                &["listener"],
            ),
            upstream_cert_not_after: gauge_vec(
                &r,
                "keygate_upstream_cert_not_after_seconds",
                "Expiry (unix seconds) of each provider's leaf certificate",
                &["upstream"],
            ),
            config_reloads: counter(
                &r,
                "keygate_config_reloads_total",
                "Config reloads by result",
                &["result"],
            ),
            pii_replaced: counter(
                &r,
                "keygate_pii_replaced_total",
                "Personal data values replaced by placeholders, by kind",
                &["kind"],
            ),
            config_generation,
            audit_dropped,
            registry: r,
        }
    }

    /// Create the series a config implies, so every family shows up at zero.
    pub fn init_for(&self, rt: &crate::config::Runtime) {
        for cap in ["global", "per_ip"] {
            self.connections_refused.with_label_values(&[cap]);
        }
        for u in &rt.upstreams {
            let n = u.name.as_str();
            let kinds = crate::upstream::failure::Failure::LABELS;
            for k in kinds.iter().chain(&["pin_mismatch"]) {
                self.upstream_errors.with_label_values(&[n, k]);
            }
            for r in crate::response::validate::Rejection::ALL {
                self.response_rejected.with_label_values(&[n, r.reason()]);
            }
        }
        for r in &rt.routes {
            self.realtime_sessions.with_label_values(&[&r.prefix]);
            let chain: Vec<_> = (0..).map_while(|i| r.chain(i)).collect();
            for (i, from) in chain.iter().enumerate() {
                for to in &chain[i + 1..] {
                    for reason in crate::upstream::failover::Reason::ALL {
                        self.upstream_fallbacks.with_label_values(&[
                            &r.prefix,
                            &from.name,
                            &to.name,
                            reason.label(),
                        ]);
                    }
                }
            }
        }
        for reason in crate::auth::reason::AuthReason::ALL {
            self.auth_failures.with_label_values(&[reason.as_str()]);
        }
        for limit in crate::limits::name::LimitName::ALL {
            self.rate_limited.with_label_values(&[limit.as_str()]);
        }
        for result in ["ok", "failed"] {
            self.otlp_exports.with_label_values(&[result]);
        }
        for kind in crate::limits::anomaly::Kind::ALL {
            self.anomalies.with_label_values(&[kind.as_str()]);
        }
        for result in REGISTRATION_RESULTS {
            self.registrations.with_label_values(&[result]);
        }
        for result in MINT_RESULTS {
            self.tokens_minted.with_label_values(&[result]);
        }
        for l in &rt.process.listeners {
            let not_after = l.tls.as_ref().and_then(|t| t.chain.first());
            if let Some(s) = not_after.and_then(|c| crate::upstream::pinning::not_after_unix(c)) {
                let addr = l.addr.to_string();
                self.tls_cert_not_after.with_label_values(&[&addr]).set(s);
            }
        }
        for k in rt.keys.values() {
            if matches!(k.auth, crate::config::KeyAuth::LegacySiteTimestamp(_)) {
                if let Some(site) = rt.sites.get(k.site) {
                    self.legacy_auth.with_label_values(&[site.id.0.as_str()]);
                }
            }
        }
        if rt.fleet.is_some() {
            for op in ["nonce", "token", "sync", "ping"] {
                self.redis_errors.with_label_values(&[op]);
                self.redis_seconds.with_label_values(&[op]);
            }
        }
        for result in ["ok", "error"] {
            self.config_reloads.with_label_values(&[result]);
        }
        let policies = rt
            .routes
            .iter()
            .filter_map(|r| r.pii.as_ref())
            .chain(rt.sites.iter().filter_map(|s| s.pii.as_ref()?.as_ref()));
        for p in policies {
            for k in p.detector.kinds() {
                self.pii_replaced.with_label_values(&[&*k.name]);
            }
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// The label text of a status code, without allocating for real ones.
fn status_label(status: u16, f: impl FnOnce(&str)) {
    match http::StatusCode::from_u16(status) {
        Ok(s) => f(s.as_str()),
        Err(_) => f(&status.to_string()),
    }
}

/// Count `usd` spent on `route` for a model priced by the `prices:` key `model`.
pub fn count_cost(route: &str, model: &str, usd: f64) {
    METRICS
        .cost_usd
        .with_label_values(&[route, model])
        .inc_by(usd);
}

/// Count a finished request that matched no route.
pub fn count_unrouted(status: u16) {
    status_label(status, |s| {
        METRICS.requests_total.with_label_values(&["none", s]).inc()
    });
}

/// One route's series, resolved on first use and kept with the route, so a request does
/// not hash labels or take the family's lock.
#[derive(Debug)]
pub struct RouteSeries {
    prefix: String,
    pub duration: Histogram,
    pub time_to_first_token: Histogram,
    ok: IntCounter,
}

impl RouteSeries {
    pub fn new(prefix: &str) -> Self {
        RouteSeries {
            prefix: prefix.to_string(),
            duration: METRICS.request_duration.with_label_values(&[prefix]),
            time_to_first_token: METRICS.time_to_first_token.with_label_values(&[prefix]),
            ok: METRICS.requests_total.with_label_values(&[prefix, "200"]),
        }
    }

    /// Count a finished request with `status`.
    pub fn count(&self, status: u16) {
        if status == 200 {
            return self.ok.inc();
        }
        status_label(status, |s| {
            METRICS
                .requests_total
                .with_label_values(&[self.prefix.as_str(), s])
                .inc()
        });
    }
}

/// One upstream's series (see [`RouteSeries`]).
#[derive(Debug)]
pub struct UpstreamSeries {
    pub duration: Histogram,
    pub tokens_in: IntCounter,
    pub tokens_out: IntCounter,
    pub circuit_state: IntGauge,
}

impl UpstreamSeries {
    pub fn new(name: &str) -> Self {
        UpstreamSeries {
            duration: METRICS.upstream_duration.with_label_values(&[name]),
            tokens_in: METRICS.tokens_total.with_label_values(&[name, "in"]),
            tokens_out: METRICS.tokens_total.with_label_values(&[name, "out"]),
            circuit_state: METRICS.circuit_state.with_label_values(&[name]),
        }
    }
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_label_is_there_at_zero() {
        let rt = crate::demo::runtime(18082).unwrap();
        METRICS.init_for(&rt);
        let text = String::from_utf8(METRICS.render()).unwrap();
        for series in [
            r#"keygate_auth_failures_total{reason="nonce_store_full"}"#,
            r#"keygate_auth_failures_total{reason="redis_down"}"#,
            r#"keygate_rate_limited_total{limit="token_max_requests"}"#,
        ] {
            assert!(text.contains(series), "{series} missing");
        }
    }

    #[test]
    fn route_series_count_into_the_status_series() {
        let s = RouteSeries::new("/series-test/");
        let get = |st: &str| {
            METRICS
                .requests_total
                .with_label_values(&["/series-test/", st])
                .get()
        };
        s.count(200);
        s.count(200);
        s.count(429);
        s.count(0);
        assert_eq!((get("200"), get("429"), get("0")), (2, 1, 1));
        let unrouted = || {
            METRICS
                .requests_total
                .with_label_values(&["none", "421"])
                .get()
        };
        let before = unrouted();
        count_unrouted(421);
        assert_eq!(unrouted(), before + 1);
    }
}
