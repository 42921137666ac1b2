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

/// Prices that make one default chat (12 in, 9 out) cost 1.20 USD: budgets small enough
/// to be spent in a few requests, and amounts the `RateLimit` header's cents show.
const DEAR: &str = r#"
prices:
  "gpt-4o": { input: 25000, output: 100000 }
  "gpt-4o-mini": { input: 2500, output: 10000 }
  "gemini-*": { input: 25000, output: 100000 }
"#;

const CHAT: &str = "/openai/v1/chat/completions";

fn chat(model: &str) -> String {
    format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#)
}

fn priced(tier: &str) -> Gateway {
    Gateway::start_with(Options {
        tier: tier.into(),
        config_extra: DEAR.into(),
        ..Options::default()
    })
}

fn header(r: &Resp, name: &str) -> String {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn a_usd_budget_refuses_the_next_request_once_spent_and_survives_sighup() {
    let gw = priced("{ requests_per_minute: 100000, usd_per_day: 3 }");
    let mut statuses = vec![];
    let mut last = None;
    // 0 → 1.20 → 2.40 → 3.60: the request that crosses the budget finishes.
    for _ in 0..4 {
        let r = gw.post_signed(CHAT, &chat("gpt-4o"), &[]).await;
        statuses.push(r.status);
        last = Some(r);
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
    let r = last.unwrap();
    r.assert_error(429, "rate_limited");
    let e = &r.json()["error"];
    assert_eq!(e["limit"], "usd_per_day", "{e}");
    assert_eq!(e["budget"]["usd_per_day"], 3.0, "{e}");
    assert!(
        (e["budget"]["used"].as_f64().unwrap() - 3.6).abs() < 1e-6,
        "{e}"
    );
    assert!(header(&r, "retry-after").parse::<u64>().unwrap() > 3600);
    assert!(header(&r, "ratelimit").starts_with("\"usd_day\";r=0;t="));
    let lines = gw.audit_lines_at_least(4);
    let cost: f64 = lines.iter().filter_map(|l| l["cost_usd"].as_f64()).sum();
    assert!((cost - 3.6).abs() < 1e-9, "{cost}");

    // A reload that adds counters (a `models:` entry: new sketches, counts copied over)
    // keeps the spend: still refused.
    gw.reload_with(|t| {
        t.replace(
            "other: { requests_per_minute: 100000 }",
            "other: { requests_per_minute: 100000, models: { \"claude-*\": { requests_per_minute: 5 } } }",
        )
    });
    let r = gw.post_signed(CHAT, &chat("gpt-4o"), &[]).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.json()["error"]["limit"], "usd_per_day");
    assert_eq!(
        gw.mock.count(),
        3,
        "refused requests never reach the provider"
    );
}

#[tokio::test]
async fn the_ratelimit_header_names_the_usd_window_closest_to_exhaustion() {
    let gw = priced("{ requests_per_minute: 1000, usd_per_day: 100, usd_per_month: 5 }");
    let policy = |r: &Resp| header(r, "ratelimit-policy");
    let r = gw.post_signed(CHAT, &chat("gpt-4o"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        policy(&r),
        "\"minute\";q=1000;w=60, \"usd_day\";q=10000;qu=\"usd-cents\";w=86400, \"usd_month\";q=500;qu=\"usd-cents\""
    );
    // Nothing spent before the first: the minute (999 of 1000 left) was tightest.
    assert!(
        header(&r, "ratelimit").starts_with("\"minute\";r=999;"),
        "{}",
        header(&r, "ratelimit")
    );
    // 1.20 of 5 spent this month: 380 cents left, 76 % — tighter than the minute and the day.
    let r = gw.post_signed(CHAT, &chat("gpt-4o"), &[]).await;
    let rl = header(&r, "ratelimit");
    assert!(rl.starts_with("\"usd_month\";r=380;t="), "{rl}");
    let t: u64 = rl.rsplit("t=").next().unwrap().parse().unwrap();
    assert!(
        t <= 31 * 86_400,
        "{rl}: resets at the end of the calendar month"
    );
    for _ in 0..3 {
        gw.post_signed(CHAT, &chat("gpt-4o"), &[]).await;
    }
    // 6.00 spent of 5: refused by the month, until the first of the next.
    let r = gw.post_signed(CHAT, &chat("gpt-4o"), &[]).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["limit"], "usd_per_month");
    assert!(header(&r, "ratelimit").starts_with("\"usd_month\";r=0;t="));
}

#[tokio::test]
async fn a_per_model_limit_refuses_one_model_while_another_passes() {
    let gw = priced(
        "{ requests_per_minute: 100000, models: { \"gpt-4o-mini\": { requests_per_minute: 2 }, \"gpt-4o*\": { usd_per_day: 2 } } }",
    );
    let send = |model: &'static str| {
        let gw = &gw;
        async move { gw.post_signed(CHAT, &chat(model), &[]).await }
    };
    assert_eq!(send("gpt-4o-mini").await.status, 200);
    assert_eq!(send("gpt-4o-mini").await.status, 200);
    let r = send("gpt-4o-mini").await;
    r.assert_error(429, "rate_limited");
    assert_eq!(r.json()["error"]["limit"], "requests_per_minute");
    assert_eq!(r.json()["error"]["model"], "gpt-4o-mini");
    assert!(header(&r, "ratelimit").starts_with("\"model_minute\";r=0;"));
    // The other model has its own entry (the most specific glob wins): 1.20, 2.40, refused.
    assert_eq!(send("gpt-4o").await.status, 200);
    assert_eq!(send("gpt-4o").await.status, 200);
    let r = send("gpt-4o").await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.json()["error"]["limit"], "usd_per_day");
    assert_eq!(r.json()["error"]["model"], "gpt-4o*");
    // The mini model's cheap requests were not charged to the gpt-4o* entry.
    assert!((r.json()["error"]["budget"]["used"].as_f64().unwrap() - 2.4).abs() < 1e-6);
    assert_eq!(gw.mock.count(), 4);
    // Another site of another tier is not affected.
    let r = gw
        .call(
            "beta.k1",
            "POST",
            "/anthropic/v1/messages",
            r#"{"model":"claude-x","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test]
async fn an_unpriced_model_under_a_usd_limit_is_refused_before_the_provider() {
    let gw = priced("{ requests_per_minute: 100000, usd_per_month: 50 }");
    // Listed on the route, but without a price.
    let r = gw.post_signed(CHAT, &chat("whisper-1"), &[]).await;
    r.assert_error(403, "model_not_allowed");
    let r = gw
        .post_signed(
            "/anthropic/v1/messages",
            r#"{"model":"claude-x","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#,
            &[],
        )
        .await;
    r.assert_error(403, "model_not_allowed");
    // A body that names no model would get the provider's default one, unpriced.
    let r = gw
        .post_signed(
            "/anthropic/v1/messages",
            r#"{"max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#,
            &[],
        )
        .await;
    r.assert_error(403, "model_not_allowed");
    assert!(r.body.contains("names no model"), "{}", r.body);
    // The Gemini model is in the path; this one is priced by the glob, that one is not.
    let body = r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#;
    let r = gw
        .post_signed("/gemini/v1beta/models/gemini-x:generateContent", body, &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = gw
        .post_signed("/gemini/v1beta/models/gemma-x:generateContent", body, &[])
        .await;
    r.assert_error(403, "model_not_allowed");
    assert_eq!(
        gw.mock.count(),
        1,
        "only the priced model reached the provider"
    );
    // A request naming no model (a listing) costs nothing and passes.
    let r = gw.call("alpha.k1", "GET", "/openai/v1/models", "").await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_usd_limit_without_prices_is_refused_by_check_and_by_reload() {
    let gw = Gateway::start();
    gw.reload_with(|t| {
        t.replace(
            "free: { requests_per_minute: 100000 }",
            "free: { requests_per_minute: 100000, usd_per_day: 5 }",
        )
    });
    let logs = gw.logs();
    assert!(logs.contains("config reload failed"), "{logs}");
    assert!(logs.contains("tiers.free.usd_per_day"), "{logs}");
    // Nothing half-applied: the old config still serves (no USD limit, no 403).
    let r = gw.post_signed(CHAT, &chat("gpt-4o"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let path = gw.config_path();
    let (code, _, err) = keygate(&["check", "-c", path.to_str().unwrap()], "");
    assert_ne!(code, 0);
    assert!(
        err.contains("tiers.free.usd_per_day") && err.contains("prices"),
        "{err}"
    );
}

/// Send a signed stream request over raw TCP (an HTTP client library may keep reading
/// after it is dropped) with events 150 ms apart, read until `until` arrives (`data: `:
/// the first event), close the socket; the request's audit line.
fn leave_after(gw: &Gateway, path: &str, body: &str, until: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let h = gw.sign("alpha.k1", &gw.secrets.alpha, "POST", path, body.as_bytes());
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-mock-event-delay-ms: 150\r\n",
        gw.port,
        body.len()
    );
    for (k, v) in h.iter().filter(|(k, _)| !k.is_empty()) {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    tcp.write_all(format!("{head}\r\n{body}").as_bytes())
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(until) {
        let n = tcp.read(&mut buf).unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    drop(tcp);
    eventually("the left stream's audit line", || {
        gw.audit_lines()
            .into_iter()
            .find(|l| l["path"] == path && l["status"] == 0)
    })
}

/// A token budget is charged for what the provider produced, whatever the client got: a
/// client that leaves a stream at its first event, and an answer keygate refused at its
/// end (`block_patterns`), both spend the budget. Before, both ended with a status outside
/// 1..500 (0, 502) and were never charged: a client could read a whole answer and leave
/// before `[DONE]`, unbilled. And a stream cut after Anthropic's `message_start` (which
/// reports 1 output token) is charged at least the output read, not that first count.
#[tokio::test]
async fn a_stream_left_early_and_a_refused_answer_are_still_charged() {
    let budget = "{ requests_per_minute: 100000, tokens_per_day: 1 }";
    let stream = r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let gw = priced(budget);
    let line = leave_after(&gw, CHAT, stream, "data: ");
    assert!(line["tokens_in"].as_u64().unwrap_or(0) > 0, "{line}");
    let r = gw.post_signed(CHAT, &chat("gpt-4o"), &[]).await;
    r.assert_error(429, "rate_limited");
    assert_eq!(r.json()["error"]["limit"], "tokens_per_day");

    let gw = priced("{ requests_per_minute: 100000 }");
    let messages = "/anthropic/v1/messages";
    // Left after the first text delta: more output read than `message_start`'s count.
    let line = leave_after(
        &gw,
        messages,
        r#"{"model":"claude-x","max_tokens":100,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        "text_delta",
    );
    assert!(line["tokens_out"].as_u64().unwrap_or(0) > 1, "{line}");
    assert_eq!(line["tokens_estimated"], true, "{line}");

    let gw = priced(budget);
    gw.reload_with(|t| {
        t.replace(
            "    max_tokens: 4096",
            "    max_tokens: 4096\n    block_patterns: [\"(?i)mock provider\"]",
        )
    });
    let r = gw.post_signed(CHAT, &chat("gpt-4o"), &[]).await;
    assert_eq!(r.status, 502, "{}", r.body);
    // Charged as the request ends, just after its answer: its audit line says it is done.
    gw.audit_lines_at_least(1);
    let r = gw.post_signed(CHAT, &chat("gpt-4o"), &[]).await;
    r.assert_error(429, "rate_limited");
}

/// Work the provider bills outside the request (a batch, a fine-tuning job, a background
/// response) never reports its usage through keygate: under a tier with a budget it is
/// refused before the provider; without one it passes.
#[tokio::test]
async fn deferred_work_is_refused_under_a_budget() {
    // The Anthropic route lists no models: a batch naming none reaches the budget check.
    let batch = r#"{"requests":[{"custom_id":"a","params":{"model":"claude-x","max_tokens":9000,"messages":[{"role":"user","content":"hi"}]}}]}"#;
    let background = r#"{"model":"gpt-4o","input":"hi","background":true}"#;
    // Batches are stored objects: served only where a route opts in to every endpoint.
    let stored = |tier: &str| {
        Gateway::start_with(Options {
            tier: tier.into(),
            config_extra: DEAR.into(),
            route_extra: "    stored_objects: true\n".into(),
            ..Options::default()
        })
    };
    let gw = stored("{ requests_per_minute: 100000, tokens_per_day: 100000 }");
    for (path, body) in [
        ("/anthropic/v1/messages/batches", batch),
        ("/openai/v1/responses", background),
    ] {
        let r = gw.post_signed(path, body, &[]).await;
        r.assert_error(403, "forbidden");
        assert!(r.body.contains("cannot be charged"), "{}", r.body);
    }
    assert_eq!(gw.mock.count(), 0, "the provider never saw them");
    // The same background request without `background` is an ordinary one.
    let r = gw
        .post_signed(
            "/openai/v1/responses",
            r#"{"model":"gpt-4o","input":"hi"}"#,
            &[],
        )
        .await;
    assert_ne!(r.status, 403, "{}", r.body);
    let gw = stored("{ requests_per_minute: 100000 }");
    let r = gw
        .post_signed("/anthropic/v1/messages/batches", batch, &[])
        .await;
    assert_ne!(r.status, 403, "{}", r.body);
    assert_eq!(gw.mock.count(), 1);
}

/// A stream keygate stopped (here a blocked pattern near its end) ended with its later
/// events dropped unread, the final usage report among them: it was charged from the first
/// report alone (Anthropic's `message_start`: 1 output token), though the client had the
/// whole answer up to the phrase. Now at least the output read.
#[tokio::test]
async fn a_stream_keygate_stopped_is_charged_for_what_was_read() {
    let gw = Gateway::start_with(Options {
        route_extra_for: vec![(
            "/anthropic/",
            "    block_patterns: [\"FORBIDDEN PHRASE\"]\n".into(),
        )],
        ..Options::default()
    });
    let prompt = format!("{} FORBIDDEN PHRASE", "many words here".repeat(60));
    let body = serde_json::json!({"model": "claude-x", "max_tokens": 100, "stream": true,
        "messages": [{"role": "user", "content": prompt}]})
    .to_string();
    let r = gw
        .post_signed("/anthropic/v1/messages", &body, &[("x-mock-mode", "echo")])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("event: error"), "{}", r.body);
    let line = gw.audit_lines_at_least(1).remove(0);
    // The text read (about 900 bytes, a quarter of it in tokens), not the events'
    // framing (about 130 bytes an event of three characters: thousands).
    let out = line["tokens_out"].as_u64().unwrap_or(0);
    assert!(
        (100..=300).contains(&out),
        "charged {out} output tokens: {line}"
    );
    assert_eq!(line["tokens_estimated"], true, "{line}");
}

/// An attempt the provider took and never answered in time (its header timed out) is
/// billed by the provider, for the input at least; it was never charged, so a client could
/// send large prompts that time out, unbilled, as often as its request limits allowed.
#[tokio::test]
async fn an_attempt_the_provider_never_answered_is_charged_its_input() {
    let gw = priced("{ requests_per_minute: 100000, tokens_per_day: 1 }");
    let slow = [("x-mock-mode", "slow"), ("x-mock-delay-ms", "3000")];
    let r = gw.post_signed(CHAT, &chat("gpt-4o"), &slow).await;
    r.assert_error(504, "upstream_timeout");
    let line = gw.audit_lines_at_least(1).remove(0);
    assert!(line["tokens_in"].as_u64().unwrap_or(0) > 0, "{line}");
    let r = gw.post_signed(CHAT, &chat("gpt-4o"), &[]).await;
    r.assert_error(429, "rate_limited");
    assert_eq!(r.json()["error"]["limit"], "tokens_per_day");
}
