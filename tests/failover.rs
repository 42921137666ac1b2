//! Failover and model names (issue #21, SPEC §8.2), against the real binary: the route
//! `/openai/` goes to the harness's mock (`openai`, which is sent the `x-mock-*` failure
//! modes) and falls back to a second mock provider (`backup`, openai-compatible, which is
//! not: it answers normally).

mod common;
use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

const CHAT: &str = "/openai/v1/chat/completions";
const BODY: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;

/// A backup mock and a gateway whose `/openai/` route falls back to it; `backup_extra`:
/// more lines for the backup upstream (indented four spaces).
fn with_backup(backup_extra: &str, opts: Options) -> (Gateway, Mock) {
    let backup = Mock::start();
    let opts = Options {
        extra_upstreams: format!(
            "  backup:\n    kind: openai-compatible\n    url: \"http://{}\"\n    credentials:\n      - {{ id: backup-1, secret: \"file:{{dir}}/provider2.key\" }}\n{backup_extra}",
            backup.addr
        ),
        route_extra_for: vec![("/openai/", "    fallbacks: [backup]\n".into())],
        ..opts
    };
    (Gateway::start_with(opts), backup)
}

fn fallbacks(gw: &Gateway, reason: &str) -> f64 {
    gw.metric(&format!(
        r#"keygate_upstream_fallbacks_total{{from="openai",reason="{reason}",route="/openai/",to="backup"}}"#
    ))
    .unwrap_or(0.0)
}

fn last_audit(gw: &Gateway, n: usize) -> Value {
    gw.audit_lines_at_least(n)[n - 1].clone()
}

#[tokio::test]
async fn a_refused_primary_fails_over_and_the_audit_names_both() {
    let (mut gw, backup) = with_backup("", Options::default());
    gw.mock.stop();
    let r = gw.post_signed(CHAT, BODY, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["model"], "gpt-4o");
    assert_eq!(backup.count(), 1);
    // The fallback got the provider credential of its own upstream, not the primary's.
    let auth = backup.last()["headers"]["authorization"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(auth, format!("Bearer {}", gw.secrets.provider2));
    let line = last_audit(&gw, 1);
    assert_eq!(line["upstream"], "backup", "{line}");
    assert_eq!(line["credential"], "backup-1", "{line}");
    // The answering provider's own request id, for its support; the client has keygate's.
    assert_eq!(line["upstream_request_id"], "req_mock_1", "{line}");
    let id = r.headers.get("x-request-id").and_then(|v| v.to_str().ok());
    assert_eq!(id, line["request_id"].as_str());
    assert_eq!(
        line["attempts"],
        serde_json::json!([
            {"upstream": "openai", "outcome": "connect"},
            {"upstream": "backup", "outcome": "answered"}
        ])
    );
    assert_eq!(fallbacks(&gw, "connect"), 1.0);
}

#[tokio::test]
async fn a_500_a_429_and_a_stall_before_the_header_each_fail_over() {
    let (gw, backup) = with_backup("", Options::default());
    let modes: [(&[(&str, &str)], &str); 3] = [
        (&[("x-mock-mode", "error_500")], "5xx"),
        (&[("x-mock-mode", "error_429")], "429"),
        // openai's read_timeout_ms is 2000.
        (
            &[("x-mock-mode", "slow"), ("x-mock-delay-ms", "6000")],
            "timeout",
        ),
    ];
    for (i, (headers, reason)) in modes.iter().enumerate() {
        let r = gw.post_signed(CHAT, BODY, headers).await;
        assert_eq!(r.status, 200, "{reason}: {}", r.body);
        assert_eq!(r.json()["object"], "chat.completion", "the backup's answer");
        assert_eq!(gw.mock.count(), i as u64 + 1, "the primary was tried first");
        assert_eq!(backup.count(), i as u64 + 1);
        assert_eq!(fallbacks(&gw, reason), 1.0, "{reason}");
        let line = last_audit(&gw, i + 1);
        assert_eq!(line["attempts"][0]["outcome"], *reason, "{line}");
        assert_eq!(line["status"], 200);
    }
    // A client error is the client's: not retried elsewhere.
    let r = gw
        .post_signed(
            CHAT,
            r#"{"model":"gpt-4o","messages":"x"}"#,
            &[("x-mock-mode", "html")],
        )
        .await;
    assert_eq!(backup.count(), 3, "{}", r.body);
}

/// A client that sent `Expect: 100-continue` has keygate's `100 Continue`, an interim
/// answer: a failed attempt after it still fails over, and keygate's own error answer
/// (a provider refusing keygate's credential: 502) is still sent.
#[tokio::test]
async fn after_100_continue_a_failed_attempt_still_fails_over_or_is_answered() {
    let (gw, backup) = with_backup("", Options::default());
    let (key, secret) = ("alpha.k1", gw.secrets.alpha.clone());
    let mode = |m| [("x-mock-mode", m)];
    let rest = gw.send_after_continue_with(key, &secret, CHAT, BODY.as_bytes(), &mode("error_500"));
    assert!(rest.starts_with("HTTP/1.1 200"), "{rest}");
    assert!(rest.contains("chat.completion"), "{rest}");
    assert_eq!((gw.mock.count(), backup.count()), (1, 1));
    assert_eq!(fallbacks(&gw, "5xx"), 1.0);

    let gw = Gateway::start();
    let secret = gw.secrets.alpha.clone();
    let rest = gw.send_after_continue_with(key, &secret, CHAT, BODY.as_bytes(), &mode("error_401"));
    assert!(rest.starts_with("HTTP/1.1 502"), "{rest}");
    assert!(rest.contains("upstream_error"), "{rest}");
}

/// The provider's request id in the audit line is the answering attempt's: an attempt
/// given up (a 429) names none when the next one never got an answer.
#[tokio::test]
async fn the_audit_names_no_request_id_of_an_attempt_given_up() {
    let (gw, mut backup) = with_backup("", Options::default());
    backup.stop();
    let r = gw
        .post_signed(CHAT, BODY, &[("x-mock-mode", "error_429")])
        .await;
    assert_ne!(r.status, 200, "{}", r.body);
    let line = last_audit(&gw, 1);
    assert_eq!(line["attempts"][0]["outcome"], "429", "{line}");
    assert!(line["upstream_request_id"].is_null(), "{line}");
}

#[tokio::test]
async fn without_a_fallback_the_providers_answer_reaches_the_client() {
    let gw = Gateway::start();
    let r = gw
        .post_signed(CHAT, BODY, &[("x-mock-mode", "error_500")])
        .await;
    assert_eq!(r.status, 500, "{}", r.body);
    let line = last_audit(&gw, 1);
    assert!(line.get("attempts").is_none(), "{line}");
}

#[tokio::test]
async fn a_stream_cut_after_its_first_event_is_not_retried_and_looks_cut() {
    let (gw, backup) = with_backup("", Options::default());
    let body = r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let mut h = gw.sign("alpha.k1", &gw.secrets.alpha, "POST", CHAT, body.as_bytes());
    h.push(("x-mock-mode".into(), "reset_mid_stream".into()));
    let mut rb = client()
        .post(gw.url(CHAT))
        .header("content-type", "application/json");
    for (k, v) in &h {
        rb = rb.header(k.as_str(), v.as_str());
    }
    let resp = rb.body(body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let (got, cut) = read_until_cut(resp).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("data: "), "the first events arrived: {text}");
    assert!(
        cut.is_some(),
        "the client sees a failed transfer, not a clean end: {text}"
    );
    assert!(!text.contains("[DONE]"), "{text}");
    assert_eq!(
        backup.count(),
        0,
        "never retried once bytes went to the client"
    );
}

#[tokio::test]
async fn model_map_renames_the_model_upstream_and_the_client_sees_its_own() {
    let (gw, backup) = with_backup(
        "    model_map: { \"gpt-4o\": \"my-gpt4o-deployment\" }\n",
        Options::default(),
    );
    let r = gw
        .post_signed(CHAT, BODY, &[("x-mock-mode", "error_500")])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let sent: Value = serde_json::from_str(backup.last()["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent["model"], "my-gpt4o-deployment");
    assert_eq!(
        sent["messages"][0]["content"], "hi",
        "the rest of the body is kept"
    );
    assert_eq!(r.json()["model"], "gpt-4o", "{}", r.body);
    // The primary has no map: it got the client's name.
    let primary: Value = serde_json::from_str(gw.mock.last()["body"].as_str().unwrap()).unwrap();
    assert_eq!(primary["model"], "gpt-4o");
    // A stream: every chunk names the client's model.
    let body = r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let r = gw
        .post_signed(CHAT, body, &[("x-mock-mode", "error_500")])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!r.body.contains("my-gpt4o-deployment"), "{}", r.body);
    let chunks: Vec<Value> = r
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect();
    assert!(chunks.len() > 2, "{}", r.body);
    assert!(chunks.iter().all(|c| c["model"] == "gpt-4o"), "{}", r.body);
    assert!(r.body.trim_end().ends_with("data: [DONE]"), "{}", r.body);
}

#[tokio::test]
async fn a_refused_credential_gives_way_to_the_next_before_the_fallback() {
    let (gw, backup) = with_backup(
        "",
        Options {
            second_credential: true,
            ..Options::default()
        },
    );
    let key = gw.secrets.provider.clone();
    for _ in 0..2 {
        let r = gw
            .post_signed(CHAT, BODY, &[("x-mock-429-key", &key)])
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert_eq!(backup.count(), 0, "the primary's other credential answered");
    let lines = gw.audit_lines_at_least(2);
    assert!(
        lines
            .iter()
            .all(|l| l["upstream"] == "openai" && l["credential"] == "prod-2"),
        "{lines:?}"
    );
    // The first found prod-1 refused; the second did not try it again (it rests).
    assert_eq!(
        lines[0]["attempts"],
        serde_json::json!([
            {"upstream": "openai", "outcome": "429"},
            {"upstream": "openai", "outcome": "answered"}
        ])
    );
    assert!(lines[1].get("attempts").is_none(), "{}", lines[1]);
    // Every credential refused (prod-1 rests; prod-2 gets a 429 too): then the fallback.
    let r = gw
        .post_signed(CHAT, BODY, &[("x-mock-mode", "error_429")])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(backup.count(), 1);
    let line = last_audit(&gw, 3);
    assert_eq!(
        line["attempts"],
        serde_json::json!([
            {"upstream": "openai", "outcome": "429"},
            {"upstream": "backup", "outcome": "answered"}
        ])
    );
}

#[tokio::test]
async fn an_open_circuit_is_skipped_without_contacting_its_upstream() {
    let (gw, backup) = with_backup(
        "",
        Options {
            upstream_extra:
                "    circuit_breaker: { failures: 1, open_s: 60, half_open_successes: 1 }\n".into(),
            ..Options::default()
        },
    );
    let r = gw
        .post_signed(CHAT, BODY, &[("x-mock-mode", "error_500")])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        gw.metric(r#"keygate_circuit_state{upstream="openai"}"#),
        Some(1.0)
    );
    for _ in 0..3 {
        let r = gw.post_signed(CHAT, BODY, &[]).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert_eq!(gw.mock.count(), 1, "the open circuit kept requests away");
    assert_eq!(backup.count(), 4);
    assert_eq!(fallbacks(&gw, "circuit_open"), 3.0);
    let line = last_audit(&gw, 4);
    assert_eq!(line["attempts"][0]["outcome"], "circuit_open", "{line}");
}

#[tokio::test]
async fn total_timeout_bounds_all_attempts_together() {
    let (gw, backup) = with_backup(
        "",
        Options {
            upstream_extra: "    total_timeout_ms: 1200\n".into(),
            ..Options::default()
        },
    );
    let t = Instant::now();
    let r = gw
        .post_signed(
            CHAT,
            BODY,
            &[("x-mock-mode", "slow"), ("x-mock-delay-ms", "6000")],
        )
        .await;
    let took = t.elapsed();
    r.assert_error(504, "upstream_timeout");
    assert!(
        took < Duration::from_millis(1900),
        "{took:?}: the first attempt used the budget"
    );
    assert_eq!(backup.count(), 0, "no time was left for another attempt");
}

#[tokio::test]
async fn a_large_body_fails_over_while_unread_and_is_never_sent_half() {
    let (mut gw, backup) = with_backup("", Options::default());
    // Over the 64 KiB pre-read limit: held back and verified as it streams.
    let big = format!(
        r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "a".repeat(100 * 1024)
    );
    // A 500 after the body went to the primary: the body cannot be sent again (Pingora
    // keeps 64 KiB to replay), so the provider's answer is the client's.
    let r = gw
        .post_signed(CHAT, &big, &[("x-mock-mode", "error_500")])
        .await;
    assert_eq!(r.status, 500, "{}", r.body);
    assert_eq!(backup.count(), 0);
    let sent = gw.mock.last();
    assert!(sent["body_len"].as_u64().unwrap() > 100 * 1024);
    // Refused before the body was read: the fallback gets all of it (the same verified
    // body, its output cap added).
    gw.mock.stop();
    let r = gw.post_signed(CHAT, &big, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let got = backup.last();
    assert_eq!(got["body_len"], sent["body_len"]);
    assert_eq!(got["body_sha256"], sent["body_sha256"]);
}

#[test]
fn a_fallback_that_speaks_another_api_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("keygate.yaml");
    std::fs::write(
        &cfg,
        r#"
server: { listen: [{ addr: "127.0.0.1:18080" }] }
upstreams:
  openai: { kind: openai, url: "http://127.0.0.1:9", credentials: [{ id: a, secret: "env:KG_TEST_FAILOVER_KEY" }] }
  claude: { kind: anthropic, url: "http://127.0.0.1:9", credentials: [{ id: b, secret: "env:KG_TEST_FAILOVER_KEY" }] }
routes:
  - { prefix: "/v1/", upstream: openai, fallbacks: [claude, nowhere, openai] }
tiers: { free: { requests_per_minute: 10 } }
sites: []
"#,
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["check", "-c"])
        .arg(&cfg)
        .env("KG_TEST_FAILOVER_KEY", "sk-proj-Zq8vX2mN4rT7yB1cK9wE5hJ3")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("routes[0].fallbacks[0]") && err.contains("same API"),
        "{err}"
    );
    assert!(
        err.contains("routes[0].fallbacks[1]") && err.contains("unknown upstream"),
        "{err}"
    );
    assert!(
        err.contains("routes[0].fallbacks[2]") && err.contains("own upstream"),
        "{err}"
    );
}

#[tokio::test]
async fn gemini_model_map_renames_the_path_and_the_answer_names_the_clients_model() {
    let backup = Mock::start();
    let gw = Gateway::start_with(Options {
        extra_upstreams: format!(
            "  gemini-backup:\n    kind: gemini\n    url: \"http://{}\"\n    model_map: {{ fast: gemini-2.0-flash }}\n    credentials:\n      - {{ id: gb-1, secret: \"file:{{dir}}/provider2.key\" }}\n",
            backup.addr
        ),
        route_extra_for: vec![("/gemini/", "    fallbacks: [gemini-backup]\n".into())],
        ..Options::default()
    });
    let path = "/gemini/v1beta/models/fast:generateContent";
    let body = r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#;
    let r = gw
        .post_signed(path, body, &[("x-mock-mode", "error_500")])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        backup.last()["path"],
        "/v1beta/models/gemini-2.0-flash:generateContent"
    );
    assert_eq!(
        gw.mock.last()["path"],
        "/v1beta/models/fast:generateContent"
    );
    assert_eq!(r.json()["modelVersion"], "fast", "{}", r.body);
    // A stream as one JSON array (no `alt=sse`): every chunk names the client's model.
    let path = "/gemini/v1beta/models/fast:streamGenerateContent";
    let r = gw
        .post_signed(path, body, &[("x-mock-mode", "error_500")])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let chunks: Vec<Value> = serde_json::from_str(&r.body).unwrap();
    assert!(chunks.len() > 1, "{}", r.body);
    assert!(
        chunks.iter().all(|c| c["modelVersion"] == "fast"),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn a_pseudonymized_body_is_what_every_attempt_sends() {
    let (gw, backup) = with_backup(
        "",
        Options {
            route_extra: "    pii: { mode: pseudonymize }\n".into(),
            ..Options::default()
        },
    );
    let body =
        r#"{"model":"gpt-4o","messages":[{"role":"user","content":"mail jane.doe@example.com"}]}"#;
    let r = gw
        .post_signed(CHAT, body, &[("x-mock-mode", "error_500")])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (first, second) = (gw.mock.last(), backup.last());
    for sent in [&first, &second] {
        assert!(
            !sent["body"].as_str().unwrap().contains("jane.doe"),
            "{sent}"
        );
    }
    assert_eq!(
        first["body_sha256"], second["body_sha256"],
        "pseudonymized once"
    );
}

#[tokio::test]
async fn a_pin_mismatch_fails_over_before_any_request_byte() {
    let (gw, backup) = with_backup(
        "",
        Options {
            mock_tls: Some("server"),
            upstream_ca: true,
            pins: vec!["other"],
            ..Options::default()
        },
    );
    let r = gw.post_signed(CHAT, BODY, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        gw.mock.count(),
        0,
        "nothing was sent over the unpinned connection"
    );
    assert_eq!(backup.count(), 1);
    assert_eq!(fallbacks(&gw, "tls"), 1.0);
}

/// A fallback whose `model_map` serves another model is priced at the model it served
/// (what its provider bills), not at the client's.
#[tokio::test]
async fn a_mapped_model_is_priced_as_the_model_served() {
    let (gw, _backup) = with_backup(
        "    model_map: { \"gpt-4o\": \"dear-model\" }\n",
        Options {
            config_extra: "prices:\n  \"gpt-4o\": { input: 1, output: 1 }\n  \"dear-model\": { input: 100000, output: 0 }\n".into(),
            ..Options::default()
        },
    );
    let r = gw.post_signed(CHAT, BODY, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = gw
        .post_signed(CHAT, BODY, &[("x-mock-mode", "error_500")])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let direct = last_audit(&gw, 1);
    let mapped = last_audit(&gw, 2);
    let tokens_in = mapped["tokens_in"].as_f64().unwrap();
    assert!(direct["cost_usd"].as_f64().unwrap() < 0.001, "{direct}");
    // 0.1 USD a token in.
    assert!(
        (mapped["cost_usd"].as_f64().unwrap() - tokens_in / 10.0).abs() < 1e-9,
        "{mapped}"
    );
}
