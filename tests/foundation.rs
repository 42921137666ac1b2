//! The signed request path end to end: the real `keygate` binary, the real mock
//! provider, real HTTP over loopback.

mod common;

use base64::Engine;
use common::*;
use hmac::Mac;
use serde_json::Value;

const CHAT: &str = "/openai/v1/chat/completions";
const BODY: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;

async fn signed_post(gw: &Gateway, path: &str, body: &str) -> Resp {
    gw.post_signed(path, body, &[]).await
}

fn with(mut h: Vec<(String, String)>, name: &str, value: &str) -> Vec<(String, String)> {
    h.retain(|(k, _)| k != name);
    h.push((name.into(), value.into()));
    h
}

#[tokio::test]
async fn signed_post_reaches_upstream_with_prefix_stripped_and_credential_swapped() {
    let gw = Gateway::start();
    let mut h = gw.sign("alpha.k1", &gw.secrets.alpha, "POST", CHAT, BODY.as_bytes());
    h.push(("cookie".into(), "session=client".into()));
    h.push(("x-api-key".into(), "client-supplied".into()));
    h.push(("x-request-id".into(), "client-req-42".into()));
    let r = send(
        &client(),
        "POST",
        &gw.url(CHAT),
        &h,
        Some(BODY.as_bytes().to_vec()),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["object"], "chat.completion");
    assert_eq!(r.headers["x-request-id"], "client-req-42");
    assert_eq!(r.headers["x-content-type-options"], "nosniff");
    assert_eq!(r.headers["cache-control"], "no-store");
    assert!(r.headers.contains_key("date"));

    let got = gw.mock.last();
    assert_eq!(got["path"], "/v1/chat/completions");
    let hdrs = &got["headers"];
    assert_eq!(
        hdrs["authorization"],
        format!("Bearer {}", gw.secrets.provider)
    );
    for stripped in [
        "signature",
        "signature-input",
        "content-digest",
        "cookie",
        "x-api-key",
    ] {
        assert!(hdrs.get(stripped).is_none(), "{stripped} was forwarded");
    }
    assert_eq!(hdrs["host"], gw.mock.addr.to_string());
    // Under the cap: the body reaches the provider byte for byte... except the inserted cap.
    let forwarded: Value = serde_json::from_str(got["body"].as_str().unwrap()).unwrap();
    assert_eq!(forwarded["model"], "gpt-4o-mini");
    assert_eq!(
        forwarded["max_completion_tokens"], 4096,
        "route max_tokens inserted"
    );
    assert_eq!(hdrs["content-length"], got["body_len"].to_string());
    gw.assert_no_secret_in_logs();
}

#[tokio::test]
async fn signed_get_with_query_keeps_query() {
    let gw = Gateway::start();
    let path = "/openai/v1/models?limit=5";
    let h = gw.sign("alpha.k1", &gw.secrets.alpha, "GET", path, b"");
    let r = send(&client(), "GET", &gw.url(path), &h, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(gw.mock.last()["path"], "/v1/models?limit=5");
}

#[tokio::test]
async fn anthropic_upstream_gets_x_api_key() {
    let gw = Gateway::start();
    let body = r#"{"model":"claude-3-5-sonnet","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}"#;
    let r = gw
        .call("beta.k1", "POST", "/anthropic/v1/messages", body)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let got = gw.mock.last();
    assert_eq!(got["headers"]["x-api-key"], gw.secrets.anthropic.as_str());
    assert!(got["headers"].get("authorization").is_none());
    // The body was under no cap: forwarded byte for byte.
    assert_eq!(got["body"], body);
}

/// The SPEC's third vector: parameters in another order must verify too. The base is
/// built here by hand, independent of keygate's signer.
#[tokio::test]
async fn parameter_reordered_signature_verifies() {
    let gw = Gateway::start();
    let created = now();
    let nonce = keygate::auth::signature::random_nonce();
    let digest = format!(
        "sha-256=:{}:",
        base64::engine::general_purpose::STANDARD
            .encode(<sha2::Sha256 as sha2::Digest>::digest(BODY.as_bytes()))
    );
    let params = format!(
        r#"("@method" "@authority" "@path" "@query" "content-digest");created={created};nonce="{nonce}";alg="hmac-sha256";keyid="alpha.k1";tag="keygate-v1""#
    );
    let base = format!(
        "\"@method\": POST\n\"@authority\": 127.0.0.1:{}\n\"@path\": {CHAT}\n\"@query\": ?\n\"content-digest\": {digest}\n\"@signature-params\": {params}",
        gw.port
    );
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(gw.secrets.alpha.as_bytes()).unwrap();
    mac.update(base.as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let h = vec![
        ("content-digest".to_string(), digest),
        ("signature-input".to_string(), format!("mysig={params}")),
        ("signature".to_string(), format!("mysig=:{sig}:")),
    ];
    let r = send(&client(), "POST", &gw.url(CHAT), &h, Some(BODY.into())).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

/// `server.clock_skew_future_s` widens how far ahead a client's clock may run, for
/// keygate-v1 and the legacy scheme alike; the default stays 60 s.
#[tokio::test]
async fn clock_skew_future_s_admits_fast_client_clocks() {
    let ahead = now() + 200;
    let signed = |gw: &Gateway| {
        sign_at(
            &gw.secrets.alpha,
            "alpha.k1",
            "POST",
            &gw.url(CHAT),
            BODY.as_bytes(),
            ahead,
        )
    };
    let legacy = |gw: &Gateway| {
        let ts = ahead.to_string();
        let sig =
            keygate::auth::legacy_signature(gw.secrets.legacy.as_bytes(), "alpha.legacy", &ts);
        vec![
            ("x-site-identifier".to_string(), "alpha.legacy".to_string()),
            ("x-timestamp".to_string(), ts),
            ("x-signature".to_string(), sig),
        ]
    };
    let c = client();
    let default = Gateway::start();
    let r = send(
        &c,
        "POST",
        &default.url(CHAT),
        &signed(&default),
        Some(BODY.into()),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (401, "stale_request"));
    let r = send(
        &c,
        "POST",
        &default.url(CHAT),
        &legacy(&default),
        Some(BODY.into()),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (401, "stale_request"));

    let wide = Gateway::start_with(Options {
        server_extra: "  clock_skew_future_s: 300".into(),
        ..Options::default()
    });
    let r = send(
        &c,
        "POST",
        &wide.url(CHAT),
        &signed(&wide),
        Some(BODY.into()),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = send(
        &c,
        "POST",
        &wide.url(CHAT),
        &legacy(&wide),
        Some(BODY.into()),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test]
async fn forged_or_stale_requests_are_refused_and_nothing_is_forwarded() {
    let gw = Gateway::start();
    let c = client();
    let url = gw.url(CHAT);
    let good = || gw.sign("alpha.k1", &gw.secrets.alpha, "POST", CHAT, BODY.as_bytes());

    // Tampered body.
    let tampered = BODY.replace("hi", "ho");
    let r = send(&c, "POST", &url, &good(), Some(tampered.into())).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (401, "unauthenticated"),
        "{}",
        r.body
    );

    // Stale and future `created`.
    for created in [now() - 1000, now() + 120] {
        let h = sign_at(
            &gw.secrets.alpha,
            "alpha.k1",
            "POST",
            &url,
            BODY.as_bytes(),
            created,
        );
        let r = send(&c, "POST", &url, &h, Some(BODY.into())).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (401, "stale_request"),
            "{}",
            r.body
        );
        assert!(
            r.headers.contains_key("date"),
            "stale responses show server time"
        );
    }

    // Unknown key and bad MAC: same answer.
    let unknown = gw.sign(
        "nobody.k1",
        &gw.secrets.alpha,
        "POST",
        CHAT,
        BODY.as_bytes(),
    );
    let r1 = send(&c, "POST", &url, &unknown, Some(BODY.into())).await;
    let bad_mac = gw.sign(
        "alpha.k1",
        "kgs_wrong_secret_0000000000000",
        "POST",
        CHAT,
        BODY.as_bytes(),
    );
    let r2 = send(&c, "POST", &url, &bad_mac, Some(BODY.into())).await;
    assert_eq!((r1.status, r1.code().as_str()), (401, "unauthenticated"));
    assert_eq!((r2.status, r2.code().as_str()), (401, "unauthenticated"));
    assert_eq!(r1.json()["error"]["message"], r2.json()["error"]["message"]);

    // Foreign @authority: signed for and sent with another Host.
    let foreign_url = CHAT.to_string();
    let mut h = sign_at(
        &gw.secrets.alpha,
        "alpha.k1",
        "POST",
        &format!("http://evil.example.com{foreign_url}"),
        BODY.as_bytes(),
        now(),
    );
    h.push(("host".into(), "evil.example.com".into()));
    let r = send(&c, "POST", &url, &h, Some(BODY.into())).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (401, "unauthenticated"),
        "{}",
        r.body
    );

    // Missing signature, and a signature over another method.
    let r = send(&c, "POST", &url, &[], Some(BODY.into())).await;
    assert_eq!((r.status, r.code().as_str()), (401, "unauthenticated"));
    let get_sig = gw.sign("alpha.k1", &gw.secrets.alpha, "GET", CHAT, BODY.as_bytes());
    let r = send(&c, "POST", &url, &get_sig, Some(BODY.into())).await;
    assert_eq!(r.status, 401);

    // A digest header that lies about the body.
    let h = with(
        good(),
        "content-digest",
        "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:",
    );
    let r = send(&c, "POST", &url, &h, Some(BODY.into())).await;
    assert_eq!(r.status, 401);

    assert_eq!(
        gw.mock.count(),
        0,
        "the provider received a request it should not have"
    );
    for s in gw.all_secrets() {
        assert!(!r.body.contains(s));
    }
    gw.assert_no_secret_in_logs();
}

#[tokio::test]
async fn replay_is_refused() {
    let gw = Gateway::start();
    let h = gw.sign("alpha.k1", &gw.secrets.alpha, "POST", CHAT, BODY.as_bytes());
    let c = client();
    let r = send(&c, "POST", &gw.url(CHAT), &h, Some(BODY.into())).await;
    assert_eq!(r.status, 200);
    let r = send(&c, "POST", &gw.url(CHAT), &h, Some(BODY.into())).await;
    assert_eq!((r.status, r.code().as_str()), (401, "replayed"));
    assert_eq!(gw.mock.count(), 1);
}

#[tokio::test]
async fn parallel_identical_requests_yield_exactly_one_success() {
    let gw = Gateway::start();
    let h = gw.sign("alpha.k1", &gw.secrets.alpha, "POST", CHAT, BODY.as_bytes());
    let url = gw.url(CHAT);
    let futs = (0..24).map(|_| {
        let h = h.clone();
        let url = url.clone();
        // A client each, so the 24 requests race on separate connections.
        async move { send(&client(), "POST", &url, &h, Some(BODY.into())).await }
    });
    let results = futures::future::join_all(futs).await;
    let ok = results.iter().filter(|r| r.status == 200).count();
    let replayed = results
        .iter()
        .filter(|r| r.status == 401 && r.code() == "replayed")
        .count();
    assert_eq!((ok, replayed), (1, 23));
    assert_eq!(gw.mock.count(), 1);
}

#[tokio::test]
async fn oversized_body_is_refused_and_not_forwarded() {
    let gw = Gateway::start_with(Options {
        max_body_bytes: 2048,
        ..Options::default()
    });
    let big = format!(
        r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(4000)
    );
    let r = signed_post(&gw, CHAT, &big).await;
    assert_eq!((r.status, r.code().as_str()), (413, "body_too_large"));
    assert_eq!(gw.mock.count(), 0);
}

#[tokio::test]
async fn large_bodies_are_held_back_and_verified() {
    let gw = Gateway::start();
    let big = format!(
        r#"{{"model":"gpt-4o","max_tokens":10,"messages":[{{"role":"user","content":"{}"}}]}}"#,
        "y".repeat(200_000)
    );
    let r = signed_post(&gw, CHAT, &big).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let got = gw.mock.last();
    assert_eq!(got["body_len"], big.len());
    assert_eq!(
        got["body_sha256"],
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(big.as_bytes()))
    );

    // Same size, body tampered after signing: refused, and the provider never
    // receives a complete request.
    let h = gw.sign("alpha.k1", &gw.secrets.alpha, "POST", CHAT, big.as_bytes());
    let tampered = big.replace("yyyy", "zzzz");
    let r = send(&client(), "POST", &gw.url(CHAT), &h, Some(tampered.into())).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (401, "unauthenticated"),
        "{}",
        r.body
    );
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(
        gw.mock.count(),
        1,
        "a tampered large body reached the provider"
    );
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused() {
    let gw = Gateway::start();
    for order in [
        "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
    ] {
        let req = format!(
            "POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n{order}Content-Type: application/json\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n",
            gw.port
        );
        let resp = raw(gw.port, req.as_bytes());
        assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
        assert!(resp.contains("bad_request"));
    }
    assert_eq!(gw.mock.count(), 0);
}

#[tokio::test]
async fn chunked_small_body_and_expect_continue_work() {
    let gw = Gateway::start();
    let h = gw.sign("alpha.k1", &gw.secrets.alpha, "POST", CHAT, BODY.as_bytes());
    let mut req = format!("POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n", gw.port);
    for (k, v) in &h {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let (a, b) = BODY.split_at(10);
    req.push_str(&format!(
        "\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    ));
    let resp = raw(gw.port, req.as_bytes());
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");

    // Expect: 100-continue is answered, then the body goes through.
    let rest = gw.send_after_continue("alpha.k1", &gw.secrets.alpha, CHAT, BODY.as_bytes());
    assert!(rest.contains("200 OK"), "{rest}");
    assert!(
        !rest.contains("100 Continue"),
        "the upstream's 100 leaked through"
    );
    assert_eq!(gw.mock.count(), 2);
}

#[tokio::test]
async fn bearer_and_legacy_keys_work_and_wrong_variants_fail() {
    let gw = Gateway::start();
    let c = client();
    let url = gw.url("/openai/v1/models");
    for (name, value) in [
        ("authorization", format!("Bearer {}", gw.secrets.bearer)),
        ("x-api-key", gw.secrets.bearer.clone()),
    ] {
        let r = send(&c, "GET", &url, &[(name.into(), value)], None).await;
        assert_eq!(r.status, 200, "{name}: {}", r.body);
    }
    let r = send(
        &c,
        "GET",
        &url,
        &[("authorization".into(), "Bearer kgk_wrong".into())],
        None,
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (401, "unauthenticated"));
    // The bearer key never reaches the provider; the provider key does.
    assert_eq!(
        gw.mock.last()["headers"]["authorization"],
        format!("Bearer {}", gw.secrets.provider)
    );

    let ts = now().to_string();
    let sig = keygate::auth::legacy_signature(gw.secrets.legacy.as_bytes(), "alpha.legacy", &ts);
    let legacy = |sig: &str, ts: &str| {
        vec![
            ("x-site-identifier".to_string(), "alpha.legacy".to_string()),
            ("x-timestamp".to_string(), ts.to_string()),
            ("x-signature".to_string(), sig.to_string()),
        ]
    };
    let r = send(&c, "GET", &url, &legacy(&sig, &ts), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let wrong = keygate::auth::legacy_signature(b"kgs_not_the_secret", "alpha.legacy", &ts);
    let r = send(&c, "GET", &url, &legacy(&wrong, &ts), None).await;
    assert_eq!(r.status, 401);
    let old = (now() - 1000).to_string();
    let old_sig =
        keygate::auth::legacy_signature(gw.secrets.legacy.as_bytes(), "alpha.legacy", &old);
    let r = send(&c, "GET", &url, &legacy(&old_sig, &old), None).await;
    assert_eq!((r.status, r.code().as_str()), (401, "stale_request"));
    assert_eq!(gw.mock.count(), 3);
    gw.assert_no_secret_in_logs();
}

#[tokio::test]
async fn unknown_route_is_404() {
    let gw = Gateway::start();
    let h = gw.sign(
        "alpha.k1",
        &gw.secrets.alpha,
        "GET",
        "/nowhere/v1/models",
        b"",
    );
    let r = send(&client(), "GET", &gw.url("/nowhere/v1/models"), &h, None).await;
    assert_eq!((r.status, r.code().as_str()), (404, "no_route"));
    assert!(r.json()["error"]["request_id"].is_string());
    assert_eq!(gw.mock.count(), 0);
}

#[tokio::test]
async fn model_outside_allow_list_is_403_and_not_forwarded() {
    let gw = Gateway::start();
    let r = signed_post(&gw, CHAT, r#"{"model":"gpt-5-ultra","messages":[]}"#).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "forbidden"),
        "{}",
        r.body
    );
    assert_eq!(gw.mock.count(), 0);
}

#[tokio::test]
async fn site_outside_its_routes_is_403() {
    let gw = Gateway::start();
    let h = gw.sign("beta.k1", &gw.secrets.beta, "POST", CHAT, BODY.as_bytes());
    let r = send(&client(), "POST", &gw.url(CHAT), &h, Some(BODY.into())).await;
    assert_eq!((r.status, r.code().as_str()), (403, "forbidden"));
    assert_eq!(gw.mock.count(), 0);
}

#[tokio::test]
async fn ambiguous_bodies_and_paths_are_refused() {
    let gw = Gateway::start();
    let r = signed_post(&gw, CHAT, r#"{"model":"gpt-4o","model":"gpt-5-ultra"}"#).await;
    assert_eq!((r.status, r.code().as_str()), (400, "bad_request"));
    let r = signed_post(&gw, CHAT, "not json").await;
    assert_eq!(r.status, 400);
    for path in [
        "/openai/../admin",
        "/openai/%2e%2e/admin",
        "/openai%2fv1/models",
        "/openai//v1/models",
    ] {
        let resp = raw(
            gw.port,
            format!(
                "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
                gw.port
            )
            .as_bytes(),
        );
        assert!(resp.starts_with("HTTP/1.1 400"), "{path}: {resp}");
    }
    assert_eq!(gw.mock.count(), 0);
}

#[tokio::test]
async fn max_tokens_over_the_cap_is_clamped() {
    let gw = Gateway::start();
    let r = signed_post(
        &gw,
        CHAT,
        r#"{"model":"gpt-4o","max_tokens":100000,"messages":[]}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let got = gw.mock.last();
    let fwd: Value = serde_json::from_str(got["body"].as_str().unwrap()).unwrap();
    assert_eq!(fwd["max_tokens"], 4096);
    assert_eq!(
        got["headers"]["content-length"],
        got["body_len"].to_string()
    );
}

#[tokio::test]
async fn upstream_cookies_and_server_headers_are_dropped() {
    let gw = Gateway::start();
    let mut h = gw.sign("alpha.k1", &gw.secrets.alpha, "POST", CHAT, BODY.as_bytes());
    h.push(("x-mock-mode".into(), "set_cookie".into()));
    let r = send(&client(), "POST", &gw.url(CHAT), &h, Some(BODY.into())).await;
    assert_eq!(r.status, 200);
    for dropped in ["set-cookie", "server", "openai-organization"] {
        assert!(
            !r.headers.contains_key(dropped),
            "{dropped} reached the client"
        );
    }
    // A generated request id when the client sent none.
    assert!(r.headers["x-request-id"].len() >= 16);
}

#[tokio::test]
async fn unreachable_upstream_is_a_json_502() {
    let mut gw = Gateway::start();
    gw.mock.stop();
    let r = signed_post(&gw, CHAT, BODY).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (502, "upstream_error"),
        "{}",
        r.body
    );
    assert_eq!(r.headers["content-type"], "application/json");
}

#[tokio::test]
async fn slow_upstream_is_a_504() {
    let gw = Gateway::start();
    let mut h = gw.sign("alpha.k1", &gw.secrets.alpha, "POST", CHAT, BODY.as_bytes());
    h.push(("x-mock-mode".into(), "slow".into()));
    h.push(("x-mock-delay-ms".into(), "4000".into()));
    let r = send(&client(), "POST", &gw.url(CHAT), &h, Some(BODY.into())).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (504, "upstream_timeout"),
        "{}",
        r.body
    );
}
