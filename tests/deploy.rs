//! `deploy/`: the Prometheus alert rules and the Grafana dashboard name only metrics
//! keygate exports (`make test` also runs `promtool check rules` on the rules), and the
//! dashboard is valid JSON with one query per panel.

use std::collections::BTreeSet;

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// Every `keygate_…` name in `text`, a histogram's `_bucket`/`_sum`/`_count` folded to
/// its family.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("keygate_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let mut name = &tail[..end];
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(n) = name.strip_suffix(suffix) {
                if n.ends_with("_seconds") {
                    name = n;
                }
            }
        }
        out.insert(name.to_string());
        rest = &tail[end..];
    }
    out
}

/// The metric families keygate registers (their names, as string literals in the
/// registry's source).
fn exported() -> BTreeSet<String> {
    let src = read("src/telemetry/metrics.rs");
    src.split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with("keygate_") && !s.contains(' '))
        .map(String::from)
        .collect()
}

#[test]
fn the_alert_rules_use_exported_metrics_only() {
    let rules = read("deploy/prometheus/keygate.rules.yml");
    let used = metric_names(&rules);
    let known = exported();
    assert!(used.len() >= 8, "{used:?}");
    let unknown: Vec<_> = used.difference(&known).collect();
    assert!(unknown.is_empty(), "not exported: {unknown:?}");
    for alert in [
        "KeygateRedisDown",
        "KeygateCircuitOpen",
        "KeygateNonceStoreNearlyFull",
        "KeygateUsageAnomaly",
    ] {
        assert!(
            rules.contains(&format!("alert: {alert}")),
            "{alert} missing"
        );
    }
}

#[test]
fn the_dashboard_is_json_over_exported_metrics() {
    let text = read("deploy/grafana/keygate.json");
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    for p in panels {
        let expr = p["targets"][0]["expr"].as_str().unwrap();
        assert!(expr.contains("keygate_"), "{}", p["title"]);
    }
    let unknown: Vec<_> = metric_names(&text)
        .difference(&exported())
        .cloned()
        .collect();
    assert!(unknown.is_empty(), "not exported: {unknown:?}");
    assert!(metric_names(&text).contains("keygate_time_to_first_token_seconds"));
}
