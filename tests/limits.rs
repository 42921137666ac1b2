//! Tier limits, token budgets and the per-IP failure limit over real HTTP.

mod common;

use common::*;

const CHAT: &str = "/openai/v1/chat/completions";

fn tier(t: &str) -> Options {
    Options {
        tier: t.into(),
        ..Options::default()
    }
}

async fn models(gw: &Gateway) -> Resp {
    let h = gw.sign(
        "alpha.k1",
        &gw.secrets.alpha,
        "GET",
        "/openai/v1/models",
        b"",
    );
    send(&client(), "GET", &gw.url("/openai/v1/models"), &h, None).await
}

#[tokio::test]
async fn ten_of_twelve_pass_and_429s_carry_headers() {
    let gw = Gateway::start_with(tier("{ requests_per_minute: 10, requests_per_hour: 100 }"));
    let mut results = Vec::new();
    for _ in 0..12 {
        results.push(models(&gw).await);
    }
    let ok: Vec<_> = results.iter().filter(|r| r.status == 200).collect();
    let limited: Vec<_> = results.iter().filter(|r| r.status == 429).collect();
    assert_eq!((ok.len(), limited.len()), (10, 2));
    assert_eq!(
        ok[0].headers["ratelimit-policy"],
        "\"minute\";q=10;w=60, \"hour\";q=100;w=3600"
    );
    assert!(ok[0].headers["ratelimit"]
        .to_str()
        .unwrap()
        .starts_with("\"minute\";r=9;t="));
    for r in limited {
        assert_eq!(r.code(), "rate_limited");
        assert_eq!(r.json()["error"]["limit"], "requests_per_minute");
        let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
        // Nothing decays in the first window: the wait reaches into the next minute.
        assert!((1..=120).contains(&retry), "retry-after {retry}");
        let rl = r.headers["ratelimit"].to_str().unwrap();
        assert_eq!(rl, format!("\"minute\";r=0;t={retry}"));
        assert_eq!(
            r.headers["ratelimit-policy"],
            "\"minute\";q=10;w=60, \"hour\";q=100;w=3600"
        );
    }
    assert_eq!(gw.mock.count(), 10);
    // Another site (beta, other tier) is unaffected.
    let h = gw.sign(
        "beta.k1",
        &gw.secrets.beta,
        "GET",
        "/anthropic/v1/models",
        b"",
    );
    let r = send(&client(), "GET", &gw.url("/anthropic/v1/models"), &h, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

async fn chat(gw: &Gateway, stream: bool) -> Resp {
    let body = if stream {
        r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#
    } else {
        r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#
    };
    let h = gw.sign("alpha.k1", &gw.secrets.alpha, "POST", CHAT, body.as_bytes());
    let r = send(&client(), "POST", &gw.url(CHAT), &h, Some(body.into())).await;
    // Tokens are charged in the logging phase, just after the response.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    r
}

/// The mock reports 21 tokens per chat (12 in, 9 out).
#[tokio::test]
async fn token_budget_is_enforced_from_json_usage() {
    let gw = Gateway::start_with(tier("{ tokens_per_day: 50 }"));
    assert_eq!(chat(&gw, false).await.status, 200);
    assert_eq!(chat(&gw, false).await.status, 200);
    assert_eq!(chat(&gw, false).await.status, 200); // 42 < 50 before this one
    let r = chat(&gw, false).await; // 63 ≥ 50
    assert_eq!(
        (r.status, r.code().as_str()),
        (429, "rate_limited"),
        "{}",
        r.body
    );
    assert_eq!(r.json()["error"]["limit"], "tokens_per_day");
    assert_eq!(r.json()["error"]["budget"]["tokens_per_day"], 50);
    assert_eq!(r.json()["error"]["budget"]["used"], 63);
    assert_eq!(gw.mock.count(), 3);
}

#[tokio::test]
async fn token_budget_is_enforced_from_streamed_usage() {
    let gw = Gateway::start_with(tier("{ tokens_per_day: 40 }"));
    let r = chat(&gw, true).await;
    assert_eq!(r.status, 200);
    // keygate asked the provider for the usage chunk, read it, and kept it from a client
    // that had not asked for it (`tests/responses.rs`).
    assert!(
        !r.body.contains(r#""choices":[]"#),
        "the usage chunk reached the client"
    );
    let sent: serde_json::Value =
        serde_json::from_str(gw.mock.last()["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    assert_eq!(chat(&gw, true).await.status, 200); // 21 < 40
    let r = chat(&gw, true).await; // 42 ≥ 40
    assert_eq!(
        (r.status, r.json()["error"]["limit"].as_str()),
        (429, Some("tokens_per_day")),
        "{}",
        r.body
    );
    let audit = gw.audit_lines_at_least(3);
    let streamed = audit.iter().find(|a| a["status"] == 200).unwrap();
    assert_eq!(
        (
            streamed["tokens_in"].as_u64(),
            streamed["tokens_out"].as_u64()
        ),
        (Some(12), Some(9))
    );
    assert_eq!(streamed["tokens_estimated"], false);
}

#[tokio::test]
async fn anthropic_stream_usage_is_charged() {
    // beta uses the anthropic route; give its tier a budget through a custom config.
    let gw = Gateway::start_with(Options {
        tier: "{ tokens_per_day: 30 }".into(),
        ..Options::default()
    });
    // alpha may call /anthropic/ too (no route restriction).
    let body = r#"{"model":"claude","max_tokens":50,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let r = gw
            .call("alpha.k1", "POST", "/anthropic/v1/messages", body)
            .await;
        statuses.push(r.status);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // 21 tokens (12 + 9, merged not summed) per stream: 0 → 21 → 42.
    assert_eq!(statuses, vec![200, 200, 429]);
}

#[tokio::test]
async fn repeated_bad_signatures_from_one_ip_turn_into_429() {
    let gw = Gateway::start_with(Options {
        server_extra: "  auth_failure_limit: { per_minute: 5, cooldown_s: 60 }".into(),
        ..Options::default()
    });
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(bad_signature(&gw).await.status);
    }
    assert_eq!(statuses, vec![401, 401, 401, 401, 401, 401, 429, 429]);
    // While cooling down, failing requests from that address get 429 with the time left…
    let r = bad_signature(&gw).await;
    assert_eq!((r.status, r.code().as_str()), (429, "rate_limited"));
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((55..=60).contains(&retry), "{retry}");
    assert_eq!(r.json()["error"]["limit"], "auth_failures");
    // …but a request whose credentials verify still passes: on shared hosting many sites
    // share one address, and one broken plugin must not lock its neighbours out.
    assert_eq!(models(&gw).await.status, 200);
    assert_eq!(gw.mock.count(), 1);
}

/// A request signed with a wrong secret.
async fn bad_signature(gw: &Gateway) -> Resp {
    let h = gw.sign(
        "alpha.k1",
        "kgs_wrong_secret_000000000000",
        "GET",
        "/openai/v1/models",
        b"",
    );
    send(&client(), "GET", &gw.url("/openai/v1/models"), &h, None).await
}

/// With no `server.auth_failure_limit` in the config, 30 failures a minute from one
/// address start a 60 s cool-down for its failing requests.
#[tokio::test]
async fn the_auth_failure_limit_is_on_by_default() {
    let gw = Gateway::start();
    let mut statuses = Vec::new();
    for _ in 0..32 {
        statuses.push(bad_signature(&gw).await.status);
    }
    assert!(statuses[..31].iter().all(|s| *s == 401), "{statuses:?}");
    assert_eq!(statuses[31], 429, "{statuses:?}");
    assert_eq!(models(&gw).await.status, 200, "valid requests still pass");
}

#[tokio::test]
async fn the_auth_failure_limit_can_be_turned_off() {
    let gw = Gateway::start_with(Options {
        server_extra: "  auth_failure_limit: off".into(),
        ..Options::default()
    });
    for _ in 0..40 {
        assert_eq!(bad_signature(&gw).await.status, 401);
    }
}

/// A reload that adds a site rebuilds the sketches (new sites need counters of their
/// own); the sites that stay keep their counts, so a spent minute stays spent.
#[tokio::test]
async fn counts_survive_a_reload_that_adds_sites() {
    let gw = Gateway::start_with(tier("{ requests_per_minute: 5 }"));
    for _ in 0..5 {
        assert_eq!(models(&gw).await.status, 200);
    }
    let secret = format!("kgs_{}", keygate::auth::signature::random_nonce());
    let path = gw.dir.path().join("gamma.secret");
    std::fs::write(&path, &secret).unwrap();
    gw.reload_with(|t| {
        format!(
            "{t}  - id: gamma\n    tier: free\n    keys:\n      - {{ id: gamma.k1, auth: hmac, secret: \"file:{}\" }}\n",
            path.display()
        )
    });
    assert!(gw.logs().contains("config reloaded"), "{}", gw.logs());
    let r = models(&gw).await;
    assert_eq!((r.status, r.code().as_str()), (429, "rate_limited"));
    // The new site has counters of its own.
    let h = gw.sign("gamma.k1", &secret, "GET", "/openai/v1/models", b"");
    let r = send(&client(), "GET", &gw.url("/openai/v1/models"), &h, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

/// A body that does not match its `Content-Digest` is a failed authentication wherever it
/// is sent: minting a browser token counts against the address like a proxied request.
#[tokio::test]
async fn digest_mismatch_on_token_minting_counts_as_an_auth_failure() {
    let gw = Gateway::start_with(Options {
        server_extra: "  auth_failure_limit: { per_minute: 3, cooldown_s: 60 }".into(),
        ..Options::default()
    });
    let path = "/keygate/v1/tokens";
    let mut statuses = Vec::new();
    for _ in 0..5 {
        // Signed over one body, sent with another.
        let h = gw.sign("alpha.k1", &gw.secrets.alpha, "POST", path, b"{}");
        let body = Some(br#"{"ttl_s": 60}"#.to_vec());
        let r = send(&client(), "POST", &gw.url(path), &h, body).await;
        statuses.push(r.status);
    }
    assert_eq!(statuses, vec![401, 401, 401, 401, 429]);
    // The address is cooling down; a request whose signature and body verify passes.
    assert_eq!(models(&gw).await.status, 200);
    assert_eq!(
        gw.metric("keygate_auth_failures_total{reason=\"digest_mismatch\"}"),
        Some(4.0)
    );
}
