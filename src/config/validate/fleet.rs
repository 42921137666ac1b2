//! `fleet:` → [`FleetSettings`] (only when `fleet.redis` is set).

use super::shared::Errors;
use crate::config::raw::RawFleet;
use crate::config::runtime::{FleetSettings, NonceFallback};
use crate::config::secret::redact_url;
use secrecy::SecretString;
use std::time::Duration;

/// The fleet settings, or `None` (with a warning when a `fleet:` without Redis is set).
pub(super) fn validate(
    raw: Option<&RawFleet>,
    errs: &mut Errors,
    warnings: &mut Vec<String>,
) -> Option<FleetSettings> {
    let raw = raw?;
    let fleet = settings(raw, errs);
    if fleet.is_none() {
        warnings.push("fleet: no fleet.redis set; limits and nonces stay process-local".into());
    }
    fleet
}

/// `fleet:` → [`FleetSettings`]; `None` when no Redis is configured.
fn settings(f: &RawFleet, errs: &mut Errors) -> Option<FleetSettings> {
    let nodes = f.nodes.unwrap_or(1);
    if nodes == 0 || nodes > 10_000 {
        errs.push("fleet.nodes", "must be between 1 and 10000");
    }
    let sync_ms = f.sync_interval_ms.unwrap_or(100);
    if !(10..=10_000).contains(&sync_ms) {
        errs.push("fleet.sync_interval_ms", "must be between 10 and 10000");
    }
    let mut nonces_when_down = NonceFallback::FailClosed;
    if let Some(d) = &f.on_redis_down {
        let window = d.local_window_s.unwrap_or(10);
        if !(1..=300).contains(&window) {
            errs.push(
                "fleet.on_redis_down.local_window_s",
                "must be between 1 and 300",
            );
        }
        match d.nonces.as_deref() {
            None | Some("fail_closed") => {
                if d.local_window_s.is_some() {
                    errs.push(
                        "fleet.on_redis_down.local_window_s",
                        "applies only with nonces: local",
                    );
                }
            }
            Some("local") => {
                nonces_when_down = NonceFallback::Local {
                    window: Duration::from_secs(window),
                }
            }
            Some(other) => errs.push(
                "fleet.on_redis_down.nonces",
                format!("unknown policy \"{other}\" (expected fail_closed or local)"),
            ),
        }
    }
    let redis = f.redis.as_ref()?;
    let redacted_url = redact_url(&redis.url);
    if !(redis.url.starts_with("redis://") || redis.url.starts_with("rediss://")) {
        errs.push(
            "fleet.redis.url",
            format!("\"{redacted_url}\" must start with redis:// or rediss://"),
        );
    } else if redis::Client::open(redis.url.as_str()).is_err() {
        // The client's own message may echo the URL: name the redacted form only.
        errs.push(
            "fleet.redis.url",
            format!("\"{redacted_url}\" is not a usable Redis URL (rediss:// needs a TLS build)"),
        );
    }
    let timeout_ms = redis.timeout_ms.unwrap_or(50);
    if !(1..=10_000).contains(&timeout_ms) {
        errs.push("fleet.redis.timeout_ms", "must be between 1 and 10000");
    }
    let key_prefix = redis
        .key_prefix
        .clone()
        .unwrap_or_else(|| "keygate:".into());
    if key_prefix.len() > 64
        || key_prefix
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        errs.push(
            "fleet.redis.key_prefix",
            "must be at most 64 characters without spaces",
        );
    }
    Some(FleetSettings {
        url: SecretString::from(redis.url.clone()),
        redacted_url,
        timeout: Duration::from_millis(timeout_ms),
        key_prefix,
        nodes: nodes.max(1),
        sync_interval: Duration::from_millis(sync_ms),
        nonces_when_down,
    })
}
