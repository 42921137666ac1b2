//! `anomaly:` → [`AnomalySettings`], and `telemetry.otlp:` → [`OtlpSettings`].

use super::shared::{Errors, LoadOptions};
use crate::config::raw::RawAnomaly;
use crate::config::raw::RawTelemetry;
use crate::config::secret::{self, MasterKey};
use crate::limits::anomaly::{Action, AnomalySettings};
use crate::telemetry::otlp::{OtlpHeader, OtlpSettings};
use secrecy::ExposeSecret;
use std::collections::HashMap;
use std::time::Duration;

pub(super) fn validate(raw: Option<&RawAnomaly>, errs: &mut Errors) -> Option<AnomalySettings> {
    let a = raw?;
    let factor = a.factor.unwrap_or(5.0);
    if !(factor.is_finite() && factor > 1.0) {
        errs.push("anomaly.factor", "must be a number over 1");
    }
    let min = a.min_per_minute.unwrap_or(30.0);
    if !(min.is_finite() && min >= 0.0) {
        errs.push("anomaly.min_per_minute", "must be 0 or more");
    }
    let action = match a.action.as_deref().unwrap_or("alert") {
        "alert" => Action::Alert,
        "throttle" => Action::Throttle,
        other => {
            errs.push(
                "anomaly.action",
                format!("unknown action \"{other}\" (alert or throttle)"),
            );
            Action::Alert
        }
    };
    let throttle_s = a.throttle_s.unwrap_or(300);
    if throttle_s == 0 || throttle_s > 86_400 {
        errs.push("anomaly.throttle_s", "must be 1 to 86400");
    }
    let window_s = a.window_s.unwrap_or(60);
    if window_s == 0 || window_s > 3_600 {
        errs.push("anomaly.window_s", "must be 1 to 3600");
    }
    Some(AnomalySettings {
        factor,
        min_per_minute: min,
        action,
        throttle: Duration::from_secs(throttle_s),
        window: Duration::from_secs(window_s),
        warmup_windows: a.warmup_windows.unwrap_or(10),
    })
}

pub(super) fn otlp(
    raw: Option<&RawTelemetry>,
    master_keys: &HashMap<String, MasterKey>,
    opts: LoadOptions,
    errs: &mut Errors,
) -> Option<OtlpSettings> {
    let o = raw?.otlp.as_ref()?;
    let p = "telemetry.otlp";
    match o.endpoint.parse::<http::Uri>() {
        Ok(u) if u.scheme_str() == Some("http") && u.host().is_some() => {
            let remote = !u.host().is_some_and(super::shared::is_loopback_host);
            if remote && o.headers.as_ref().is_some_and(|h| !h.is_empty()) && o.allow_plaintext != Some(true) {
                errs.push(
                    format!("{p}.headers"),
                    "plain http to a collector off this machine sends these headers (a collector's API key) in clear text: send to a collector on loopback, or set allow_plaintext: true",
                );
            }
        }
        // The exporter's client has no TLS stack: an https collector would fail every
        // export. A local OpenTelemetry Collector forwards over TLS.
        Ok(u) if u.scheme_str() == Some("https") => errs.push(
            format!("{p}.endpoint"),
            "https is not supported: send to a local OpenTelemetry Collector over http (e.g. http://127.0.0.1:4318), which forwards over TLS",
        ),
        _ => errs.push(
            format!("{p}.endpoint"),
            "must be an http URL, e.g. http://collector:4318",
        ),
    }
    let ratio = o.sample_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&ratio) {
        errs.push(format!("{p}.sample_ratio"), "must be 0 to 1");
    }
    let mut headers = vec![];
    for (name, v) in o.headers.iter().flatten() {
        let path = format!("{p}.headers.{name}");
        if http::HeaderName::try_from(name.as_str()).is_err() {
            errs.push(path, "not a header name");
            continue;
        }
        let literal = !v.starts_with("enc:") && !v.starts_with("env:") && !v.starts_with("file:");
        if literal && !opts.demo && OtlpHeader::names_a_credential(name) {
            errs.push(
                path,
                "this header carries a credential: plain-text secrets are refused outside --demo; use enc:v1:…, env:NAME or file:/path",
            );
            continue;
        }
        match secret::resolve(v, &OtlpHeader::place(name), master_keys, true) {
            Ok(value) if http::HeaderValue::from_str(value.expose_secret()).is_ok() => headers
                .push(OtlpHeader {
                    name: name.clone(),
                    value,
                    // A sealed value, or one under a credential's name: a tenant or
                    // dataset name from `env:` is not scanned for in answers.
                    secret: v.starts_with("enc:") || OtlpHeader::names_a_credential(name),
                }),
            // The value is not repeated: it may be a key.
            Ok(_) => errs.push(path, "not a valid header value"),
            Err(m) => errs.push(path, m),
        }
    }
    Some(OtlpSettings {
        endpoint: o.endpoint.clone(),
        sample_ratio: ratio,
        headers,
    })
}
