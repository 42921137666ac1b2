//! Money (issue #23, SPEC §8.3): every billed token counted, for each provider's shape,
//! in JSON answers and streams, against the real binary and the mock provider.

mod common;
use common::*;

/// (path, body) for a JSON answer and a stream of each provider.
fn requests() -> Vec<(&'static str, &'static str, &'static str)> {
    vec![
        (
            "openai json",
            "/openai/v1/chat/completions",
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#,
        ),
        (
            "openai stream",
            "/openai/v1/chat/completions",
            r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        ),
        (
            "anthropic json",
            "/anthropic/v1/messages",
            r#"{"model":"claude-x","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}"#,
        ),
        (
            "anthropic stream",
            "/anthropic/v1/messages",
            r#"{"model":"claude-x","max_tokens":100,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        ),
        (
            "gemini json",
            "/gemini/v1beta/models/gemini-x:generateContent",
            r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#,
        ),
        (
            "gemini stream",
            "/gemini/v1beta/models/gemini-x:streamGenerateContent?alt=sse",
            r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#,
        ),
    ]
}

#[tokio::test]
async fn cached_and_reasoning_tokens_are_counted_for_every_provider_shape() {
    let gw = Gateway::start();
    let reqs = requests();
    for (i, (name, path, body)) in reqs.iter().enumerate() {
        let r = gw
            .post_signed(path, body, &[("x-mock-usage", "detailed")])
            .await;
        assert_eq!(r.status, 200, "{name}: {}", r.body);
        let line = gw.audit_lines_at_least(i + 1)[i].clone();
        let got = |k: &str| line[k].as_u64().unwrap_or(u64::MAX);
        let anthropic = name.starts_with("anthropic");
        assert_eq!(
            (got("tokens_in"), got("tokens_out"), got("tokens_cached")),
            (1200, 300, 1000),
            "{name}: {line}"
        );
        assert_eq!(
            got("tokens_reasoning"),
            if anthropic { 0 } else { 200 },
            "{name}: {line}"
        );
        assert_eq!(
            got("tokens_cache_write"),
            if anthropic { 180 } else { 0 },
            "{name}: {line}"
        );
        assert_eq!(line["tokens_estimated"], false, "{name}");
    }
    // Every billed token is in the budget's count too.
    let counted = gw.metric(r#"keygate_tokens_total{direction="in",upstream="anthropic"}"#);
    assert_eq!(counted, Some(2400.0));
}

const PRICES: &str = r#"
prices:
  "gpt-4o": { input: 2.5, cached_input: 1.25, output: 10 }
  "gpt-4o*": { input: 99, output: 99 }
  "claude-*": { input: 3, cached_input: 0.3, cache_write: 3.75, output: 15 }
  "gemini-*": { input: 1.25, cached_input: 0.3125, output: 10 }
"#;

#[tokio::test]
async fn cost_usd_is_the_hand_computed_price_of_every_billed_token() {
    let gw = Gateway::start_with(Options {
        config_extra: PRICES.into(),
        ..Options::default()
    });
    // 1,200 in (1,000 cached; Anthropic: 180 written to the cache) and 300 out, per provider.
    let want = [
        (200.0 * 2.5 + 1000.0 * 1.25 + 300.0 * 10.0) / 1e6,
        (200.0 * 2.5 + 1000.0 * 1.25 + 300.0 * 10.0) / 1e6,
        (20.0 * 3.0 + 1000.0 * 0.3 + 180.0 * 3.75 + 300.0 * 15.0) / 1e6,
        (20.0 * 3.0 + 1000.0 * 0.3 + 180.0 * 3.75 + 300.0 * 15.0) / 1e6,
        (200.0 * 1.25 + 1000.0 * 0.3125 + 300.0 * 10.0) / 1e6,
        (200.0 * 1.25 + 1000.0 * 0.3125 + 300.0 * 10.0) / 1e6,
    ];
    for (i, ((name, path, body), want)) in requests().into_iter().zip(want).enumerate() {
        let r = gw
            .post_signed(path, body, &[("x-mock-usage", "detailed")])
            .await;
        assert_eq!(r.status, 200, "{name}: {}", r.body);
        let line = gw.audit_lines_at_least(i + 1)[i].clone();
        let cost = line["cost_usd"]
            .as_f64()
            .unwrap_or_else(|| panic!("{name}: {line}"));
        assert!((cost - want).abs() < 1e-12, "{name}: {cost} != {want}");
    }
    let metric = gw
        .metric(r#"keygate_cost_usd_total{model="claude-*",route="/anthropic/"}"#)
        .unwrap();
    assert!((metric - 2.0 * 0.005535).abs() < 1e-9, "{metric}");
    // The exact key beat the glob above; another gpt-4o model takes the glob's price.
    let r = gw
        .post_signed(
            "/openai/v1/chat/completions",
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#,
            &[],
        )
        .await;
    assert_eq!(r.status, 200);
    let line = gw.audit_lines_at_least(7)[6].clone();
    assert!(
        (line["cost_usd"].as_f64().unwrap() - 21.0 * 99.0 / 1e6).abs() < 1e-12,
        "{line}"
    );
    // A model without a price has no cost (and no tier limits it in USD here).
    let r = gw
        .post_signed(
            "/gemini/v1beta/models/other-model:generateContent",
            r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#,
            &[],
        )
        .await;
    assert_eq!(r.status, 200);
    let line = gw.audit_lines_at_least(8)[7].clone();
    assert_eq!(line["cost_usd"], serde_json::Value::Null, "{line}");
}
