//! Realtime WebSocket sessions through keygate (issue #22, SPEC §8.1), with a
//! tungstenite client against the real binary and the mock's Realtime endpoint.

mod common;
use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const REALTIME: &str = "/openai/v1/realtime?model=gpt-realtime";

fn bearer(gw: &Gateway) -> Vec<(String, String)> {
    vec![(
        "authorization".into(),
        format!("Bearer {}", gw.secrets.bearer),
    )]
}

/// The next text event (JSON), skipping nothing; `None` at a close.
async fn next_event(ws: &mut Ws) -> Result<Value, Option<(CloseCode, String)>> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return Ok(serde_json::from_str(&t).unwrap()),
            Ok(Some(Ok(Message::Close(f)))) => {
                return Err(f.map(|f| (f.code, f.reason.to_string())))
            }
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_)) | None) => return Err(None),
            Err(_) => panic!("no event within 10 s"),
        }
    }
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// A response round trip: `response.create` → … → `response.done`.
async fn respond(ws: &mut Ws) -> Value {
    send(ws, json!({"type": "response.create"})).await;
    loop {
        let e = next_event(ws).await.expect("events until response.done");
        if e["type"] == "response.done" {
            return e;
        }
    }
}

#[tokio::test]
async fn a_session_relays_events_and_its_usage_is_charged() {
    let gw = Gateway::start_with(Options {
        tier: "{ requests_per_minute: 1000, tokens_per_day: 50 }".into(),
        ..Options::default()
    });
    let (mut ws, _) = open(&gw, REALTIME, &bearer(&gw)).await.unwrap();
    let created = next_event(&mut ws).await.unwrap();
    assert_eq!(created["type"], "session.created");
    assert_eq!(created["session"]["model"], "gpt-realtime");
    assert_eq!(
        gw.metric(r#"keygate_realtime_sessions{route="/openai/"}"#),
        Some(1.0)
    );
    for _ in 0..2 {
        let done = respond(&mut ws).await;
        assert_eq!(done["response"]["usage"]["total_tokens"], 30);
    }
    // 60 of 50 tokens: the answer that spent the budget arrived, then the session ends.
    assert_closed(&mut ws, CloseCode::Policy, "budget spent").await;
    while ws.next().await.is_some() {}
    let line = gw.audit_lines_at_least(1)[0].clone();
    assert_eq!(line["status"], 101, "{line}");
    assert_eq!(line["model"], "gpt-realtime");
    assert_eq!(
        (line["tokens_in"].as_u64(), line["tokens_out"].as_u64()),
        (Some(20), Some(40)),
        "{line}"
    );
    assert_eq!(line["tokens_estimated"], false);
    assert_eq!(
        gw.metric(r#"keygate_realtime_sessions{route="/openai/"}"#),
        Some(0.0)
    );
    // The provider saw its own credential and the model; never the client's key.
    let hs = gw.mock.last();
    assert_eq!(hs["path"], "/v1/realtime?model=gpt-realtime");
    assert_eq!(
        hs["headers"]["authorization"],
        format!("Bearer {}", gw.secrets.provider)
    );
    assert!(!hs.to_string().contains(&gw.secrets.bearer));
    // 60 tokens charged against 50 a day: the next request is over the budget.
    assert_over_budget(&gw).await;
}

#[tokio::test]
async fn a_handshake_without_credentials_or_with_a_bad_model_is_refused() {
    let gw = Gateway::start();
    assert_eq!(open(&gw, REALTIME, &[]).await.err(), Some(401));
    let wrong = vec![("authorization".into(), "Bearer kgk_not-a-key".into())];
    assert_eq!(open(&gw, REALTIME, &wrong).await.err(), Some(401));
    let other = "/openai/v1/realtime?model=gpt-5-ultra";
    assert_eq!(open(&gw, other, &bearer(&gw)).await.err(), Some(403));
    assert_eq!(gw.mock.count(), 0, "the provider never saw a handshake");
}

/// A route with `pii` checks what goes to the provider; a Realtime session's text and
/// audio, and a minted client secret's (used at the provider directly), pass no check:
/// both are refused before the provider is asked.
#[tokio::test]
async fn realtime_is_refused_on_a_route_with_pii() {
    let gw = Gateway::start_with(Options {
        route_extra: "    pii: { mode: block }\n".into(),
        ..Options::default()
    });
    assert_eq!(open(&gw, REALTIME, &bearer(&gw)).await.err(), Some(400));
    for body in [
        r#"{"session":{"type":"realtime","model":"gpt-realtime"}}"#,
        "",
    ] {
        for path in [
            "/openai/v1/realtime/client_secrets",
            "/openai/v1/realtime/sessions",
        ] {
            let r = gw.post_signed(path, body, &[]).await;
            assert_eq!(r.status, 400, "{path} {body:?}: {}", r.body);
        }
    }
    assert_eq!(gw.mock.count(), 0, "the provider was never asked");
}

/// The site's token budget is spent: a chat request is refused.
async fn assert_over_budget(gw: &Gateway) {
    let r = gw
        .post_signed(
            "/openai/v1/chat/completions",
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#,
            &[],
        )
        .await;
    r.assert_error(429, "rate_limited");
}

/// A gateway with `opts` and a session on it opened with the bearer key, past its
/// `session.created`.
async fn session_with(opts: Options) -> (Gateway, Ws) {
    let gw = Gateway::start_with(opts);
    let (mut ws, _) = open(&gw, REALTIME, &bearer(&gw)).await.unwrap();
    next_event(&mut ws).await.unwrap();
    (gw, ws)
}

/// A browser's handshake: a `kgt_` token of `ttl_s` minted by alpha.k1, sent as the
/// key subprotocol after `realtime` (then `more`), from an origin alpha allows.
async fn browser(gw: &Gateway, ttl_s: u64, more: &str) -> (String, Vec<(String, String)>) {
    let r = gw
        .call(
            "alpha.k1",
            "POST",
            "/keygate/v1/tokens",
            &format!(r#"{{"ttl_s":{ttl_s}}}"#),
        )
        .await;
    let token = r.json()["token"].as_str().unwrap().to_string();
    let h = vec![
        (
            "sec-websocket-protocol".to_string(),
            format!("realtime, openai-insecure-api-key.{token}{more}"),
        ),
        ("origin".to_string(), "https://shop.example".to_string()),
    ];
    (token, h)
}

#[tokio::test]
async fn a_browser_token_in_the_subprotocol_opens_a_session_and_a_signature_does_too() {
    let gw = Gateway::start();
    let (token, h) = browser(&gw, 60, ", openai-project.proj_theirs").await;
    let (mut ws, headers) = open(&gw, REALTIME, &h).await.unwrap();
    assert_eq!(headers["sec-websocket-protocol"], "realtime");
    assert_eq!(
        next_event(&mut ws).await.unwrap()["type"],
        "session.created"
    );
    // The provider is offered `realtime` only: not the key, not a project the client
    // chose to bill.
    let hs = gw.mock.last();
    assert_eq!(hs["headers"]["sec-websocket-protocol"], "realtime", "{hs}");
    assert!(!hs.to_string().contains(&token), "{hs}");
    // A beta subprotocol the route does not list is refused, as the header is.
    let mut beta = h.clone();
    beta[0].1 = format!("realtime, openai-insecure-api-key.{token}, openai-beta.realtime-v1");
    assert_eq!(open(&gw, REALTIME, &beta).await.err(), Some(403));
    // An origin the site does not allow is refused at the handshake.
    let mut bad = h.clone();
    bad[1].1 = "https://evil.example".into();
    assert_eq!(open(&gw, REALTIME, &bad).await.err(), Some(403));
    // A keygate-v1 signature over the handshake.
    let signed = gw.sign("alpha.k1", &gw.secrets.alpha, "GET", REALTIME, b"");
    let (mut ws2, _) = open(&gw, REALTIME, &signed).await.unwrap();
    assert_eq!(
        next_event(&mut ws2).await.unwrap()["type"],
        "session.created"
    );
    // Replayed: refused.
    assert_eq!(open(&gw, REALTIME, &signed).await.err(), Some(401));
}

#[tokio::test]
async fn a_session_past_max_session_s_is_closed() {
    let gw = Gateway::start_with(Options {
        route_extra: "    realtime: { max_session_s: 1 }\n".into(),
        ..Options::default()
    });
    let (code, reason) = closed_by_keygate_within(&gw, Duration::from_secs(3)).await;
    assert_eq!(code, CloseCode::Policy);
    assert!(reason.contains("max_session_s"), "{reason}");
}

/// A reload that moves a key's `expires_at` earlier: the session's lifetime was set from
/// the old expiry, and the reload's check saw the key still valid, so it ran on past it.
#[tokio::test]
async fn a_reload_that_shortens_a_keys_expiry_ends_its_sessions() {
    let gw = Gateway::start();
    let at = |s: u64| {
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(s))
            .to_string()
    };
    let (far, near) = (at(3600), at(600));
    gw.reload_with(|c| {
        c.replace(
            "{ id: alpha.sdk, auth: bearer,",
            &format!("{{ id: alpha.sdk, expires_at: \"{far}\", auth: bearer,"),
        )
    });
    let (mut ws, _) = open(&gw, REALTIME, &bearer(&gw)).await.unwrap();
    assert_eq!(
        next_event(&mut ws).await.unwrap()["type"],
        "session.created"
    );
    gw.reload_with(|c| c.replace(&far, &near));
    assert_closed(&mut ws, CloseCode::Policy, "revoked by a config change").await;
}

/// A new session, left alone after `session.created`: the close keygate sends within
/// `limit`.
async fn closed_by_keygate_within(gw: &Gateway, limit: Duration) -> (CloseCode, String) {
    let (mut ws, _) = open(gw, REALTIME, &bearer(gw)).await.unwrap();
    assert_eq!(
        next_event(&mut ws).await.unwrap()["type"],
        "session.created"
    );
    let t = std::time::Instant::now();
    let closed = next_event(&mut ws).await.unwrap_err();
    assert!(t.elapsed() < limit, "{:?}", t.elapsed());
    closed.expect("a close frame")
}

/// A key with `expires_at` was checked only when the session opened: the session ran on
/// for up to `max_session_s` (24 h at most) after the key stopped working.
#[tokio::test]
async fn a_session_ends_when_its_key_expires() {
    let gw = Gateway::start();
    let at =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(3));
    gw.reload_with(|c| {
        c.replace(
            "{ id: alpha.sdk, auth: bearer,",
            &format!("{{ id: alpha.sdk, expires_at: \"{at}\", auth: bearer,"),
        )
    });
    let (code, reason) = closed_by_keygate_within(&gw, Duration::from_secs(6)).await;
    assert_eq!((code, reason.as_str()), (CloseCode::Policy, "key expired"));
}

/// A new session that sends `message` after `session.created`: the code it is closed with.
async fn closed_after(gw: &Gateway, message: Value) -> CloseCode {
    let (mut ws, _) = open(gw, REALTIME, &bearer(gw)).await.unwrap();
    next_event(&mut ws).await.unwrap();
    send(&mut ws, message).await;
    let (code, _) = next_event(&mut ws)
        .await
        .unwrap_err()
        .expect("a close frame");
    code
}

#[tokio::test]
async fn frames_are_bounded_and_a_secret_from_the_provider_ends_the_session() {
    let gw = Gateway::start_with(Options {
        route_extra: "    realtime: { max_frame_bytes: 4096 }\n".into(),
        ..Options::default()
    });
    // From the client: too big.
    let big = json!({"type": "input_audio_buffer.append", "audio": "A".repeat(10_000)});
    assert_eq!(closed_after(&gw, big).await, CloseCode::Size);
    // From the provider: too big, and a message carrying the provider key.
    let big = json!({"type": "mock.big", "bytes": 10_000});
    assert_eq!(closed_after(&gw, big).await, CloseCode::Size);
    let code = closed_after(&gw, json!({"type": "mock.echo_key"})).await;
    assert_eq!(code, CloseCode::Error);
    assert!(
        gw.metric(r#"keygate_response_rejected_total{reason="secret_egress",upstream="openai"}"#)
            .unwrap_or(0.0)
            >= 1.0
    );
}

/// What a client received after sending `message`, until the close: the `delta` of each
/// text event joined (as an SDK joins them), every text message as sent, the binary
/// messages joined, and the close frame.
struct Received {
    deltas: String,
    texts: Vec<String>,
    binary: Vec<u8>,
    close: Option<(CloseCode, String)>,
}

async fn received_after(gw: &Gateway, message: Value) -> Received {
    let (mut ws, _) = open(gw, REALTIME, &bearer(gw)).await.unwrap();
    next_event(&mut ws).await.unwrap();
    send(&mut ws, message).await;
    let mut r = Received {
        deltas: String::new(),
        texts: vec![],
        binary: vec![],
        close: None,
    };
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                if let Ok(v) = serde_json::from_str::<Value>(&t) {
                    r.deltas.push_str(v["delta"].as_str().unwrap_or(""));
                }
                r.texts.push(t.to_string());
            }
            Ok(Some(Ok(Message::Binary(b)))) => r.binary.extend_from_slice(&b),
            Ok(Some(Ok(Message::Close(f)))) => {
                r.close = f.map(|f| (f.code, f.reason.to_string()));
                return r;
            }
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_)) | None) => return r,
            Err(_) => panic!("no message within 10 s"),
        }
    }
}

/// The second adversarial review (2026-12-04): the provider key hidden over two messages,
/// in the close frame's reason, or behind a lone surrogate a lenient parser accepts. Each
/// reached the client before: messages were checked one at a time, close frames not at all,
/// and a text message that was not strict JSON was only scanned raw.
#[tokio::test]
async fn a_key_spread_over_messages_or_in_a_close_frame_never_reaches_the_client() {
    let gw = Gateway::start();
    let key = gw.secrets.provider.clone();
    let r = received_after(&gw, json!({"type": "mock.split_key"})).await;
    assert!(!r.deltas.contains(&key), "split over deltas: {}", r.deltas);
    assert!(
        r.deltas.starts_with("key "),
        "the first half passed: {}",
        r.deltas
    );
    assert_eq!(r.close.map(|c| c.0), Some(CloseCode::Error));

    let r = received_after(&gw, json!({"type": "mock.split_key_binary"})).await;
    let joined = String::from_utf8_lossy(&r.binary).to_string();
    assert!(
        !joined.contains(&key),
        "split over binary messages: {joined:?}"
    );
    assert_eq!(r.close.map(|c| c.0), Some(CloseCode::Error));

    let r = received_after(&gw, json!({"type": "mock.close_key"})).await;
    let (code, reason) = r.close.expect("a close frame");
    assert!(!reason.contains(&key[..20]), "close reason: {reason}");
    assert_eq!(code, CloseCode::Error);

    let r = received_after(&gw, json!({"type": "mock.lone_surrogate_key"})).await;
    assert!(
        r.texts.iter().all(|t| !t.contains("ud800")),
        "a message that is not strict JSON passed: {:?}",
        r.texts
    );
    assert_eq!(r.close.map(|c| c.0), Some(CloseCode::Error));
    eventually("three secret_egress refusals counted", || {
        gw.metric(r#"keygate_response_rejected_total{reason="secret_egress",upstream="openai"}"#)
            .filter(|n| *n >= 3.0)
    });
}

/// A client that stops reading while the provider streams: the relay's sends to it waited
/// for good, past `max_session_s`, holding the site's concurrent slot (second review,
/// 2026-12-04). Now the session ends on time and gives the slot back.
#[tokio::test]
async fn a_client_that_stops_reading_is_closed_at_max_session_s() {
    let (gw, mut ws) = session_with(Options {
        route_extra: "    realtime: { max_session_s: 2 }\n".into(),
        ..Options::default()
    })
    .await;
    // About 32 MB from the provider, more than the sockets and keygate's pipe hold;
    // this client never reads another byte.
    for _ in 0..32 {
        send(&mut ws, json!({"type": "mock.big", "bytes": 1_000_000})).await;
    }
    let gauge = r#"keygate_realtime_sessions{route="/openai/"}"#;
    let ended = poll_until(Duration::from_secs(15), Duration::from_millis(100), || {
        (gw.metric(gauge) == Some(0.0)).then_some(())
    });
    assert!(
        ended.is_some(),
        "the session is still open: {:?}",
        gw.metric(gauge)
    );
    drop(ws);
}

#[tokio::test]
async fn a_reload_closes_only_the_sessions_whose_key_was_removed() {
    let gw = Gateway::start();
    let (mut by_bearer, _) = open(&gw, REALTIME, &bearer(&gw)).await.unwrap();
    next_event(&mut by_bearer).await.unwrap();
    let signed = gw.sign("alpha.k1", &gw.secrets.alpha, "GET", REALTIME, b"");
    let (mut by_hmac, _) = open(&gw, REALTIME, &signed).await.unwrap();
    next_event(&mut by_hmac).await.unwrap();
    gw.reload_with(|t| {
        t.lines()
            .filter(|l| !l.contains("alpha.sdk"))
            .collect::<Vec<_>>()
            .join("\n")
    });
    assert_revoked(&mut by_bearer).await;
    // The other session goes on.
    let done = respond(&mut by_hmac).await;
    assert_eq!(done["type"], "response.done");
}

/// The session is closed as revoked by a config change (1008).
async fn assert_revoked(ws: &mut Ws) {
    assert_closed(ws, CloseCode::Policy, "revoked by a config change").await;
}

/// A reload that replaces the provider credential a session was opened with (a leaked key
/// rotated) closes it; a new session uses the new one.
#[tokio::test]
async fn a_reload_that_replaces_the_sessions_provider_credential_closes_it() {
    let gw = Gateway::start();
    let (mut ws, _) = open(&gw, REALTIME, &bearer(&gw)).await.unwrap();
    next_event(&mut ws).await.unwrap();
    // The same YAML, the credential's file holding a new key.
    let rotated = random_secret("sk-");
    std::fs::write(gw.dir.path().join("provider.key"), &rotated).unwrap();
    gw.sighup();
    assert_revoked(&mut ws).await;
    let (mut again, _) = open(&gw, REALTIME, &bearer(&gw)).await.unwrap();
    assert_eq!(
        next_event(&mut again).await.unwrap()["type"],
        "session.created"
    );
    assert!(gw.mock.last().to_string().contains(&rotated));
}

#[tokio::test]
async fn a_session_holds_a_concurrent_slot_while_open() {
    let (gw, mut ws) = session_with(Options {
        tier: "{ requests_per_minute: 1000, concurrent: 1 }".into(),
        ..Options::default()
    })
    .await;
    assert_eq!(open(&gw, REALTIME, &bearer(&gw)).await.err(), Some(429));
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
    let h = bearer(&gw);
    let (mut again, _) = eventually_async(|| open(&gw, REALTIME, &h)).await;
    assert_eq!(
        next_event(&mut again).await.unwrap()["type"],
        "session.created"
    );
}

/// Retry `f` for a few seconds until it succeeds (the slot is freed as the session's
/// request ends, a moment after the close).
async fn eventually_async<T, E, F, Fut>(f: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    for _ in 0..50 {
        if let Ok(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never succeeded");
}

#[tokio::test]
async fn the_provider_websocket_is_pinned_like_any_upstream_connection() {
    for (pin, ok) in [("server", true), ("other", false)] {
        let gw = Gateway::start_with(Options {
            mock_tls: Some("server"),
            upstream_ca: true,
            pins: vec![pin],
            ..Options::default()
        });
        let opened = open(&gw, REALTIME, &bearer(&gw)).await;
        if ok {
            let (mut ws, _) = opened.unwrap();
            assert_eq!(
                next_event(&mut ws).await.unwrap()["type"],
                "session.created"
            );
            let hs = gw.mock.last();
            assert_eq!(
                hs["headers"]["authorization"],
                format!("Bearer {}", gw.secrets.provider)
            );
        } else {
            assert_eq!(
                opened.err(),
                Some(502),
                "an unpinned provider key is refused"
            );
            assert_eq!(
                gw.mock.count(),
                0,
                "nothing was sent over the unpinned connection"
            );
        }
    }
}

#[tokio::test]
async fn a_shutdown_closes_open_sessions_with_going_away() {
    let gw = Gateway::start();
    let (mut ws, _) = open(&gw, REALTIME, &bearer(&gw)).await.unwrap();
    next_event(&mut ws).await.unwrap();
    gw.signal("-TERM");
    let (code, _) = next_event(&mut ws)
        .await
        .unwrap_err()
        .expect("a close frame");
    assert_eq!(code, CloseCode::Away);
}

/// A session opened with a browser token ends when the token expires, not at
/// `max_session_s`.
#[tokio::test]
async fn a_token_session_ends_when_its_token_expires() {
    let gw = Gateway::start();
    let (_, h) = browser(&gw, 2, "").await;
    let (mut ws, _) = open(&gw, REALTIME, &h).await.unwrap();
    next_event(&mut ws).await.unwrap();
    let t = std::time::Instant::now();
    assert_closed(&mut ws, CloseCode::Policy, "token expired").await;
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
}

/// A response the client leaves before its `response.done` is still charged (an estimate:
/// nothing reported its usage). Before, it cost nothing.
#[tokio::test]
async fn a_response_left_unfinished_is_charged() {
    let (gw, mut ws) = session_with(Options {
        tier: "{ requests_per_minute: 1000, tokens_per_day: 1 }".into(),
        ..Options::default()
    })
    .await;
    // 400 KB of base64 audio in, 40 KB out, and a few words: the estimate counts the
    // words (a quarter of the audio's bytes would be some 110,000 tokens).
    let audio = "AAAA".repeat(100_000);
    send(
        &mut ws,
        json!({"type": "input_audio_buffer.append", "audio": audio}),
    )
    .await;
    send(&mut ws, json!({"type": "mock.unfinished"})).await;
    assert_eq!(
        next_event(&mut ws).await.unwrap()["type"],
        "response.created"
    );
    until(&mut ws, "response.output_audio.delta").await;
    drop(ws);
    let line = gw.audit_lines_at_least(1)[0].clone();
    assert_eq!(line["status"], 101, "{line}");
    let tokens = |k: &str| line[k].as_u64().unwrap_or(0);
    assert!(tokens("tokens_out") > 0, "{line}");
    assert!(tokens("tokens_in") + tokens("tokens_out") < 100, "{line}");
    assert_eq!(line["tokens_estimated"], true, "{line}");
    assert_over_budget(&gw).await;
}

/// The next message is keygate's close frame, with `code` and `reason`.
async fn assert_closed(ws: &mut Ws, code: CloseCode, reason: &str) {
    let (got, why) = next_event(ws).await.unwrap_err().expect("a close frame");
    assert_eq!((got, why.as_str()), (code, reason));
}

/// The next event of `kind`, skipping others.
async fn until(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let e = next_event(ws).await.expect("events");
        if e["type"] == kind {
            return e;
        }
    }
}

/// A route's `max_tokens` holds in a session (the test route's cap is 4096): keygate sets
/// the session's output limit before the client speaks (the provider's answer to that is
/// not the client's), a client's limit over the cap or `"inf"` is lowered, one within it
/// passes, and an event keygate cannot read ends the session.
#[tokio::test]
async fn a_routes_max_tokens_holds_in_a_session() {
    let (_gw, mut ws) = session_with(Options::default()).await;
    send(&mut ws, json!({"type": "response.create"})).await;
    let created = next_event(&mut ws).await.unwrap();
    assert_eq!(
        created["type"], "response.created",
        "the first event after the client's: {created}"
    );
    assert_eq!(created["response"]["max_output_tokens"], 4096, "{created}");
    until(&mut ws, "response.done").await;

    let update = json!({"type": "session.update",
        "session": {"type": "realtime", "max_output_tokens": "inf", "instructions": "Be brief."}});
    send(&mut ws, update).await;
    let updated = until(&mut ws, "session.updated").await;
    assert_eq!(updated["session"]["max_output_tokens"], 4096, "{updated}");
    assert_eq!(updated["session"]["instructions"], "Be brief.");
    for (asked, ran) in [
        (json!(100_000), 4096),
        (json!(50), 50),
        (json!("inf"), 4096),
    ] {
        send(
            &mut ws,
            json!({"type": "response.create", "response": {"max_output_tokens": asked}}),
        )
        .await;
        let created = until(&mut ws, "response.created").await;
        assert_eq!(
            created["response"]["max_output_tokens"], ran,
            "asked {asked}"
        );
        until(&mut ws, "response.done").await;
    }
    let twice = r#"{"type":"conversation.item.create","type":"session.update","session":{"max_output_tokens":"inf"}}"#;
    ws.send(Message::Text(twice.into())).await.unwrap();
    assert_closed(&mut ws, CloseCode::Policy, "client event not readable").await;
}

/// The cap in the sessions a capped route's clients open otherwise: a browser asking for
/// the beta interface by subprotocol gets the beta's name of the limit (the GA name is an
/// unknown parameter there, and the session would end); a transcription session, which
/// makes no responses, stays one; a binary message, which keygate does not read for
/// limits, ends the session.
#[tokio::test]
async fn the_cap_holds_in_beta_and_transcription_sessions() {
    let gw = Gateway::start_with(Options {
        route_extra_for: vec![("/openai/", "    betas: [\"realtime-v1\"]\n".into())],
        ..Options::default()
    });
    let mut beta = bearer(&gw);
    beta.push((
        "sec-websocket-protocol".into(),
        "realtime, openai-beta.realtime-v1".into(),
    ));
    let (mut ws, _) = open(&gw, REALTIME, &beta).await.unwrap();
    send(&mut ws, json!({"type": "response.create"})).await;
    let created = until(&mut ws, "response.created").await;
    assert_eq!(created["response"]["max_output_tokens"], 4096, "{created}");

    // A transcription session passes its own updates, and makes no response (a
    // `response.create`, or an update to a conversation, ends it); an intent named twice
    // is refused (the provider might read the other).
    let transcription = format!("{REALTIME}&intent=transcription");
    for refused in [
        json!({"type": "response.create", "response": {"max_output_tokens": "inf"}}),
        json!({"type": "session.update", "session": {"type": "realtime"}}),
    ] {
        let (mut ws, _) = open(&gw, &transcription, &bearer(&gw)).await.unwrap();
        until(&mut ws, "session.created").await;
        send(
            &mut ws,
            json!({"type": "session.update", "session": {"type": "transcription"}}),
        )
        .await;
        until(&mut ws, "session.updated").await;
        send(&mut ws, refused).await;
        assert_closed(&mut ws, CloseCode::Policy, "client event not readable").await;
    }
    let twice = format!("{transcription}&intent=conversation");
    assert_eq!(open(&gw, &twice, &bearer(&gw)).await.err(), Some(400));
    // A response the provider starts by itself runs under the session's limit: in a
    // conversation the cap keygate set; in a session keygate took for a transcription
    // (the mock runs a conversation whatever the intent) none, and the session ends.
    let (mut ws, _) = open(&gw, REALTIME, &bearer(&gw)).await.unwrap();
    send(&mut ws, json!({"type": "mock.vad"})).await;
    let created = until(&mut ws, "response.created").await;
    assert_eq!(created["response"]["max_output_tokens"], 4096, "{created}");
    let (mut ws, _) = open(&gw, &transcription, &bearer(&gw)).await.unwrap();
    until(&mut ws, "session.created").await;
    send(&mut ws, json!({"type": "mock.vad"})).await;
    assert_closed(&mut ws, CloseCode::Error, "provider refused max_tokens").await;

    let (mut ws, _) = open(&gw, REALTIME, &bearer(&gw)).await.unwrap();
    until(&mut ws, "session.created").await;
    let update = r#"{"type":"session.update","session":{"max_output_tokens":"inf"}}"#;
    ws.send(Message::Binary(update.as_bytes().to_vec().into()))
        .await
        .unwrap();
    assert_closed(&mut ws, CloseCode::Policy, "client event not readable").await;
}

/// A client that leaves between an answer and its `response.done` (which reports the
/// usage) is charged what the provider reports once keygate cancels the response, not
/// an estimate from the text it had; a second, small response finished meanwhile does
/// not stand in for the first. The client's close is answered at once.
#[tokio::test]
async fn a_client_that_leaves_mid_answer_is_charged_what_the_provider_reports() {
    let (gw, mut ws) = session_with(Options::default()).await;
    send(
        &mut ws,
        json!({"type": "mock.unfinished", "cancel_reports": true}),
    )
    .await;
    until(&mut ws, "response.output_audio.delta").await;
    // An out-of-band response (10 in, 20 out) begun and finished while the first runs.
    send(&mut ws, json!({"type": "response.create"})).await;
    until(&mut ws, "response.done").await;
    ws.close(None).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
    assert!(
        matches!(reply, Ok(Some(Ok(Message::Close(_))))),
        "the close is answered: {reply:?}"
    );
    let line = gw.audit_lines_at_least(1)[0].clone();
    assert_eq!(
        (line["tokens_in"].as_u64(), line["tokens_out"].as_u64()),
        (Some(20), Some(2020)),
        "{line}"
    );
    assert_eq!(line["tokens_estimated"], false, "{line}");
}
