//! Browser clients: short-lived tokens minted by a site's backend, and CORS.

mod common;

use common::*;
use std::time::Duration;

const CHAT: &str = "/openai/v1/chat/completions";
const TOKENS: &str = "/keygate/v1/tokens";

async fn mint(gw: &Gateway, body: &str) -> String {
    let r = gw.call("alpha.k1", "POST", TOKENS, body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let j = r.json();
    assert!(j["expires_at"].as_i64().unwrap() > now());
    j["token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn token_minting_answers_expect_100_continue() {
    // A backend's HTTP client that sends `Expect: 100-continue` (PHP's curl does for
    // larger bodies) waited for the server's timeout before keygate answered it.
    let gw = Gateway::start();
    let rest = gw.send_after_continue("alpha.k1", &gw.secrets.alpha, TOKENS, br#"{"ttl_s":60}"#);
    assert!(rest.starts_with("HTTP/1.1 200"), "{rest}");
    assert!(rest.contains("kgt_"), "{rest}");
}

async fn with_token(
    gw: &Gateway,
    token: &str,
    path: &str,
    body: Option<&str>,
    origin: Option<&str>,
) -> Resp {
    let mut h = vec![("authorization".to_string(), format!("Bearer {token}"))];
    if let Some(o) = origin {
        h.push(("origin".into(), o.into()));
    }
    let method = if body.is_some() { "POST" } else { "GET" };
    send(
        &client(),
        method,
        &gw.url(path),
        &h,
        body.map(|b| b.as_bytes().to_vec()),
    )
    .await
}

#[tokio::test]
async fn a_token_works_in_scope_and_expires() {
    let gw = Gateway::start();
    let token = mint(
        &gw,
        r#"{"ttl_s": 2, "routes": ["/openai/"], "models": ["gpt-4o-mini"]}"#,
    )
    .await;
    assert!(token.starts_with("kgt_"));
    let ok = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
    let r = with_token(&gw, &token, CHAT, Some(ok), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Another model (allowed by the route, not by the token): 403.
    let other_model = r#"{"model":"gpt-4o","messages":[]}"#;
    let r = with_token(&gw, &token, CHAT, Some(other_model), None).await;
    assert_eq!((r.status, r.code().as_str()), (403, "forbidden"));
    // A body that names no model would get the provider's default one: 403 too, on a
    // route that lists no models (the Anthropic one; this token is scoped to it below).
    let scoped = mint(
        &gw,
        r#"{"routes": ["/anthropic/"], "models": ["claude-x"]}"#,
    )
    .await;
    let unnamed = r#"{"max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#;
    let seen = gw.mock.count();
    let r = with_token(&gw, &scoped, "/anthropic/v1/messages", Some(unnamed), None).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "forbidden"),
        "{}",
        r.body
    );
    assert_eq!(gw.mock.count(), seen, "the provider never saw it");
    // Another route: 403.
    let r = with_token(&gw, &token, "/anthropic/v1/models", None, None).await;
    assert_eq!((r.status, r.code().as_str()), (403, "forbidden"));
    // The token is the site's, not the provider's: the provider sees its own key.
    assert_eq!(
        gw.mock.last()["headers"]["authorization"],
        format!("Bearer {}", gw.secrets.provider)
    );
    assert!(!gw.mock.last()["headers"].to_string().contains(&token));
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let r = with_token(&gw, &token, CHAT, Some(ok), None).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (401, "stale_request"),
        "{}",
        r.body
    );
    assert_eq!(gw.mock.count(), 1);
}

#[tokio::test]
async fn tampered_tokens_and_tokens_minting_tokens_fail() {
    let gw = Gateway::start();
    let token = mint(&gw, r#"{"ttl_s": 60, "max_requests": 100}"#).await;
    // Raise max_requests by editing the claims: the MAC no longer matches.
    let (payload, mac) = token.trim_start_matches("kgt_").split_once('.').unwrap();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims = String::from_utf8(b64.decode(payload).unwrap())
        .unwrap()
        .replace("\"max\":100", "\"max\":100000");
    let forged = format!("kgt_{}.{mac}", b64.encode(claims));
    let r = with_token(&gw, &forged, "/openai/v1/models", None, None).await;
    assert_eq!((r.status, r.code().as_str()), (401, "unauthenticated"));
    // A token cannot mint tokens.
    let r = with_token(&gw, &token, TOKENS, Some("{}"), None).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "forbidden"),
        "{}",
        r.body
    );
    // Neither can a bearer key.
    let h = vec![(
        "authorization".to_string(),
        format!("Bearer {}", gw.secrets.bearer),
    )];
    let r = send(&client(), "POST", &gw.url(TOKENS), &h, Some(b"{}".to_vec())).await;
    assert_eq!(r.status, 403);
    // The TTL is capped by tokens.max_ttl_s (300 by default).
    let r = gw
        .call("alpha.k1", "POST", TOKENS, r#"{"ttl_s": 86400}"#)
        .await;
    assert!(r.json()["expires_at"].as_i64().unwrap() <= now() + 301);
    // Unknown fields are refused.
    assert_eq!(
        gw.call("alpha.k1", "POST", TOKENS, r#"{"ttl": 5}"#)
            .await
            .status,
        400
    );
}

#[tokio::test]
async fn max_requests_holds() {
    let gw = Gateway::start();
    let token = mint(&gw, r#"{"max_requests": 2}"#).await;
    let counts =
        tally((0..4).map(|_| with_token(&gw, &token, "/openai/v1/models", None, None))).await;
    assert_eq!(counts, [(200, 2), (429, 2)].into());
    assert_eq!(gw.mock.count(), 2);
}

#[tokio::test]
async fn cors_preflight_and_origins() {
    let gw = Gateway::start();
    let preflight = |origin: &'static str| {
        let url = gw.url(CHAT);
        async move {
            client()
                .request(reqwest::Method::OPTIONS, url)
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                // What openai-node sends from a browser.
                .header(
                    "access-control-request-headers",
                    "authorization,content-type,x-stainless-arch,x-stainless-lang,x-stainless-os,x-stainless-package-version,x-stainless-retry-count,x-stainless-runtime,x-stainless-runtime-version,x-stainless-timeout",
                )
                .send()
                .await
                .unwrap()
        }
    };
    let r = preflight("https://shop.example").await;
    assert_eq!(r.status(), 204);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    // Every header asked about is allowed: `*` (keygate never allows credentials, so
    // the wildcard holds) and `authorization`, which it does not cover.
    let allowed = r.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap();
    let names: Vec<&str> = allowed.split(',').map(str::trim).collect();
    assert!(
        names.contains(&"*") && names.contains(&"authorization"),
        "{allowed}"
    );
    assert!(r
        .headers()
        .get("access-control-allow-credentials")
        .is_none());
    assert_eq!(r.headers()["vary"], "Origin");
    let r = preflight("https://evil.example").await;
    assert_eq!(r.status(), 204);
    assert!(r.headers().get("access-control-allow-origin").is_none());
    assert_eq!(gw.mock.count(), 0, "preflights never reach the provider");

    let token = mint(&gw, "{}").await;
    let r = with_token(
        &gw,
        &token,
        "/openai/v1/models",
        None,
        Some("https://shop.example"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://shop.example"
    );
    assert!(r
        .headers
        .get_all("vary")
        .iter()
        .any(|v| v.to_str().unwrap().contains("Origin")));
    // beta's origin is not alpha's: refused.
    let r = with_token(
        &gw,
        &token,
        "/openai/v1/models",
        None,
        Some("https://other.example"),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (403, "forbidden"));
    assert!(r.headers.get("access-control-allow-origin").is_none());
    let r = with_token(
        &gw,
        &token,
        "/openai/v1/models",
        None,
        Some("https://evil.example"),
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(gw.mock.count(), 1);
}

#[tokio::test]
async fn tokens_minted_under_the_previous_key_stay_valid() {
    let gw = Gateway::start();
    let old = mint(&gw, r#"{"ttl_s": 120}"#).await;
    // Mint new tokens under k2; k1 stays listed until old tokens expire.
    gw.reload_with(|t| t + "tokens: { max_ttl_s: 120, key: k2 }\n");
    let new = mint(&gw, "{}").await;
    for t in [&old, &new] {
        assert_eq!(
            with_token(&gw, t, "/openai/v1/models", None, None)
                .await
                .status,
            200
        );
    }
    // Once k1 is removed, its tokens die.
    gw.reload_with(|t| {
        t.lines()
            .filter(|l| !l.contains("id: k1,"))
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"
    });
    assert_eq!(
        with_token(&gw, &old, "/openai/v1/models", None, None)
            .await
            .status,
        401
    );
    assert_eq!(
        with_token(&gw, &new, "/openai/v1/models", None, None)
            .await
            .status,
        200
    );
}

/// A token named only its issuing key's id: after the key's secret was rotated (it leaked),
/// tokens minted with the old secret kept working until they expired (up to a day).
#[tokio::test]
async fn a_token_dies_with_the_secret_it_was_minted_under() {
    let gw = Gateway::start();
    let token = mint(&gw, r#"{"ttl_s": 120}"#).await;
    let models = |t: String| {
        let gw = &gw;
        async move {
            with_token(gw, &t, "/openai/v1/models", None, None)
                .await
                .status
        }
    };
    assert_eq!(models(token.clone()).await, 200);
    // Another reload that leaves the key alone keeps its tokens.
    gw.sighup();
    assert_eq!(models(token.clone()).await, 200);
    let rotated = format!("kgs_{}", keygate::auth::signature::random_nonce());
    std::fs::write(gw.dir.path().join("alpha.secret"), &rotated).unwrap();
    gw.sighup();
    assert_eq!(models(token).await, 401);
    let r = gw.call_as("alpha.k1", &rotated, "POST", TOKENS, "{}").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let fresh = r.json()["token"].as_str().unwrap().to_string();
    assert_eq!(models(fresh).await, 200);
}

/// An empty mint from an unscoped token on a route without a model list: keygate's body
/// (the token's lifetime) goes. It did not (the client sent no chunk for keygate to
/// replace), the upstream's `Content-Length` was never met, and each such mint counted as
/// the provider's failure: five opened the circuit for every site.
#[tokio::test]
async fn an_empty_mint_sends_keygates_body_and_opens_no_circuit() {
    let gw = Gateway::start_with(Options {
        // A second OpenAI route, without `models:`.
        route_extra_for: vec![(
            "/gemini/",
            "  - prefix: \"/any/\"\n    upstream: openai\n".into(),
        )],
        ..Options::default()
    });
    let token = mint(&gw, r#"{"ttl_s": 60, "routes": ["/any/"]}"#).await;
    for _ in 0..6 {
        let r = with_token(
            &gw,
            &token,
            "/any/v1/realtime/client_secrets",
            Some(""),
            None,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let sent = gw.mock.last();
        let body: serde_json::Value = serde_json::from_str(sent["body"].as_str().unwrap()).unwrap();
        let s = body["expires_after"]["seconds"].as_i64().unwrap();
        assert!((10..=60).contains(&s), "the provider was asked for {s} s");
        assert_eq!(sent["headers"]["content-type"], "application/json");
    }
    let r = gw.call("alpha.k1", "GET", "/openai/v1/models", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
}

/// A Realtime client secret works straight at the provider, outside keygate's limits: one
/// minted with a browser token lives no longer than the token.
#[tokio::test]
async fn a_client_secret_minted_with_a_token_ends_with_the_token() {
    let gw = Gateway::start();
    let token = mint(&gw, r#"{"ttl_s": 60, "routes": ["/openai/"]}"#).await;
    const SECRETS: &str = "/openai/v1/realtime/client_secrets";
    let sent_seconds = |gw: &Gateway| {
        let body: serde_json::Value =
            serde_json::from_str(gw.mock.last()["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["session"]["model"], "gpt-realtime", "{body}");
        assert_eq!(body["expires_after"]["anchor"], "created_at", "{body}");
        body["expires_after"]["seconds"].as_i64().unwrap()
    };
    for body in [
        r#"{"expires_after":{"anchor":"created_at","seconds":7200},"session":{"type":"realtime","model":"gpt-realtime"}}"#,
        // No lifetime asked for: OpenAI's default (10 minutes) is longer than the token.
        r#"{"session":{"type":"realtime","model":"gpt-realtime"}}"#,
        // Not a whole number (unit test `model_gate::tests`: rewritten however long).
        r#"{"expires_after":{"anchor":"created_at","seconds":7200.0},"session":{"type":"realtime","model":"gpt-realtime"}}"#,
    ] {
        let r = with_token(&gw, &token, SECRETS, Some(body), None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let s = sent_seconds(&gw);
        assert!((10..=60).contains(&s), "the provider was asked for {s} s");
    }
    // An empty body is a session of the provider's default model: not in a scoped token's.
    let scoped = mint(
        &gw,
        r#"{"routes": ["/openai/"], "models": ["gpt-4o-mini"]}"#,
    )
    .await;
    let seen = gw.mock.count();
    let r = with_token(&gw, &scoped, SECRETS, Some(""), None).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "forbidden"),
        "{}",
        r.body
    );
    assert_eq!(gw.mock.count(), seen);
    // The older sessions endpoint sets the lifetime in `client_secret`: dropped (its
    // default is a minute).
    let longer = mint(&gw, r#"{"ttl_s": 120, "routes": ["/openai/"]}"#).await;
    let session = r#"{"model":"gpt-realtime","client_secret":{"expires_after":{"anchor":"created_at","seconds":7200}}}"#;
    let r = with_token(
        &gw,
        &longer,
        "/openai/v1/realtime/sessions",
        Some(session),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let sent: serde_json::Value =
        serde_json::from_str(gw.mock.last()["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent, serde_json::json!({"model": "gpt-realtime"}));
    // A shorter lifetime is kept as it is.
    let short = r#"{"expires_after":{"anchor":"created_at","seconds":30},"session":{"type":"realtime","model":"gpt-realtime"}}"#;
    assert_eq!(
        with_token(&gw, &token, SECRETS, Some(short), None)
            .await
            .status,
        200
    );
    assert_eq!(sent_seconds(&gw), 30);
    // A top-level model beside the session's (which is the one checked) is refused.
    let two = r#"{"model":"gpt-4o","session":{"type":"realtime","model":"gpt-realtime"}}"#;
    let r = with_token(&gw, &token, SECRETS, Some(two), None).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "bad_request"),
        "{}",
        r.body
    );
    // A site's backend (signed) asks for what it wants.
    let long = r#"{"expires_after":{"anchor":"created_at","seconds":7200},"session":{"type":"realtime","model":"gpt-realtime"}}"#;
    assert_eq!(gw.call("alpha.k1", "POST", SECRETS, long).await.status, 200);
    assert_eq!(sent_seconds(&gw), 7200);
}
