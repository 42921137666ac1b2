//! Time to first token and usage anomalies against the real binary. Anomalies: a steady baseline, then a tenfold spike from
//! one site: one anomaly (metric and audit line), the site throttled to its baseline,
//! another site untouched. Windows of one second (`anomaly.window_s`) to keep it short.

mod common;

use common::*;
use std::time::Duration;

const MODELS: &str = "/openai/v1/models";

/// Sleep until just after the next whole second (windows are aligned to the epoch).
async fn next_second() {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    tokio::time::sleep(Duration::from_millis(1_000 - ms % 1_000 + 20)).await;
}

#[tokio::test]
async fn a_tenfold_spike_is_one_anomaly_and_throttles_that_site_only() {
    let gw = Gateway::start_with(Options {
        tier: "{ requests_per_minute: 100000 }".into(),
        config_extra: "anomaly: { factor: 5, min_per_minute: 60, action: throttle, throttle_s: 30, window_s: 1, warmup_windows: 2 }\n".into(),
        ..Options::default()
    });
    // Baseline: 4 requests a second for four seconds.
    next_second().await;
    for _ in 0..16 {
        assert_eq!(gw.call("alpha.k1", "GET", MODELS, "").await.status, 200);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        gw.metric("keygate_anomalies_total{kind=\"requests\"}"),
        Some(0.0)
    );
    // Ten times that, at once.
    next_second().await;
    let mut ok = 0;
    let mut throttled = 0;
    for _ in 0..40 {
        let r = gw.call("alpha.k1", "GET", MODELS, "").await;
        match r.status {
            200 => ok += 1,
            _ => {
                r.assert_error(429, "rate_limited");
                assert_eq!(r.json()["error"]["limit"], "anomaly", "{}", r.body);
                throttled += 1;
            }
        }
    }
    assert!(
        throttled >= 10 && ok <= 30,
        "{ok} passed, {throttled} throttled"
    );
    assert_eq!(
        gw.metric("keygate_anomalies_total{kind=\"requests\"}"),
        Some(1.0)
    );
    // Another site, untouched.
    for _ in 0..5 {
        assert_eq!(
            gw.call("beta.k1", "GET", "/anthropic/v1/models", "")
                .await
                .status,
            200
        );
    }
    let events = eventually("the anomaly's audit line", || {
        let lines: Vec<_> = gw
            .audit_lines()
            .into_iter()
            .filter(|l| l["event"] == "anomaly")
            .collect();
        (!lines.is_empty()).then_some(lines)
    });
    // One per kind at most (the tokens, estimated per answer, jump with the requests),
    // all of site alpha, exactly one for its requests.
    assert!(events.iter().all(|e| e["site"] == "alpha"), "{events:?}");
    let of = |kind: &str| events.iter().filter(|e| e["kind"] == kind).count();
    assert_eq!((of("requests"), of("tokens") <= 1), (1, true), "{events:?}");
    let e = events.iter().find(|e| e["kind"] == "requests").unwrap();
    assert_eq!(
        (e["action"].as_str(), e["throttle_s"].as_u64()),
        (Some("throttle"), Some(30))
    );
    assert!(e["baseline"].as_f64().unwrap() >= 2.0, "{e}");
}

#[tokio::test]
async fn time_to_first_token_is_observed_for_answers_and_streams_not_for_errors() {
    let gw = Gateway::start();
    let chat = "/openai/v1/chat/completions";
    let json = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
    let stream = r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let count = || gw.metric("keygate_time_to_first_token_seconds_count{route=\"/openai/\"}");
    let sum = || gw.metric("keygate_time_to_first_token_seconds_sum{route=\"/openai/\"}");
    assert_eq!(count(), Some(0.0));
    assert_eq!(gw.post_signed(chat, json, &[]).await.status, 200);
    assert_eq!(gw.post_signed(chat, stream, &[]).await.status, 200);
    assert_eq!(count(), Some(2.0));
    // A provider error is no first token.
    let r = gw
        .post_signed(chat, json, &[("x-mock-mode", "error_500")])
        .await;
    assert_ne!(r.status, 200);
    assert_eq!(count(), Some(2.0));
    // A provider that takes 300 ms to answer: its time to first token shows it.
    let before = sum().unwrap();
    let slow = [("x-mock-mode", "slow"), ("x-mock-delay-ms", "300")];
    assert_eq!(gw.post_signed(chat, stream, &slow).await.status, 200);
    assert!(sum().unwrap() - before >= 0.3, "{:?}", sum());
}
