//! Usage anomalies on the request path: each admitted request and each answer's tokens
//! counted against the site's own baseline ([`crate::limits::anomaly`]); the start of an
//! anomaly counted and written to the audit log; a throttled site's requests beyond its
//! baseline refused as 429 (`limit: anomaly`).

use super::respond::rate_limited;
use crate::config::{Runtime, Site};
use crate::error::GatewayError;
use crate::limits::anomaly::{Action, AnomalySettings, Event, Throttled};
use crate::limits::{LimitName, Refusal};
use crate::state::State;
use crate::telemetry::audit::AnomalyLine;
use crate::telemetry::metrics::METRICS;

/// One request of `site`, before the tier's limits.
pub(super) fn request(
    state: &State,
    rt: &Runtime,
    site: &Site,
    now_ms: u64,
) -> Result<(), GatewayError> {
    let Some(a) = &rt.anomaly else {
        return Ok(());
    };
    match state.anomalies.request(site.limit_key, a, now_ms) {
        Ok(Some(e)) => report(state, a, site, &e),
        Ok(None) => {}
        Err(Throttled(wait)) => {
            return Err(rate_limited(
                None,
                Refusal::of(LimitName::Anomaly, Some(wait)),
            ))
        }
    }
    Ok(())
}

/// The tokens one answer of `site` used.
pub(super) fn tokens(state: &State, rt: &Runtime, site: &Site, n: u64, now_ms: u64) {
    if let Some(a) = &rt.anomaly {
        if let Some(e) = state.anomalies.tokens(site.limit_key, n, a, now_ms) {
            report(state, a, site, &e);
        }
    }
}

fn report(state: &State, a: &AnomalySettings, site: &Site, e: &Event) {
    METRICS
        .anomalies
        .with_label_values(&[e.kind.as_str()])
        .inc();
    let throttle = a.action == Action::Throttle;
    log::warn!(
        "anomaly: site {} at {:.0} {} this window, {:.1}× its baseline of {:.1}{}",
        site.id.0,
        e.count,
        e.kind.as_str(),
        e.count / e.baseline.max(1e-9),
        e.baseline,
        if throttle {
            "; throttled to its baseline"
        } else {
            ""
        }
    );
    state.audit.record_event(&AnomalyLine {
        ts: humantime::format_rfc3339_millis(std::time::SystemTime::now()),
        event: "anomaly",
        site: &site.id.0,
        kind: e.kind.as_str(),
        count: e.count,
        baseline: (e.baseline * 100.0).round() / 100.0,
        factor: a.factor,
        window_s: a.window.as_secs(),
        action: if throttle { "throttle" } else { "alert" },
        throttle_s: throttle.then_some(a.throttle.as_secs()),
    });
}
