//! Provider responses as untrusted input: validation, secret egress, streaming,
//! circuit breaking and credential rotation, against the mock provider's failure modes.

mod common;

use common::*;
use futures::StreamExt;
use std::time::{Duration, Instant};

const CHAT: &str = "/openai/v1/chat/completions";
const BODY: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
const STREAM: &str =
    r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

/// Send with mock headers; returns the status and body, or the transfer error.
async fn send_mode(gw: &Gateway, body: &str, extra: &[(&str, &str)]) -> Result<Resp, String> {
    let mut h = gw.sign("alpha.k1", &gw.secrets.alpha, "POST", CHAT, body.as_bytes());
    for (k, v) in extra {
        h.push((k.to_string(), v.to_string()));
    }
    let mut rb = client()
        .post(gw.url(CHAT))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (k, v) in &h {
        rb = rb.header(k.as_str(), v.as_str());
    }
    let r = rb.send().await.map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.text().await.map_err(|e| format!("body: {e}"))?;
    Ok(Resp {
        status,
        headers,
        body,
    })
}

/// A refused body either becomes a clean 502 (when the whole answer arrived with its
/// header) or an aborted transfer; never the provider's bytes.
fn assert_withheld(r: &Result<Resp, String>, forbidden: &str) {
    match r {
        Ok(r) => {
            assert_eq!(
                (r.status, r.code().as_str()),
                (502, "upstream_error"),
                "{}",
                r.body
            );
            assert!(!r.body.contains(forbidden));
        }
        Err(e) => assert!(!e.contains(forbidden), "{e}"),
    }
}

#[tokio::test]
async fn invalid_json_is_withheld() {
    let gw = Gateway::start();
    for _ in 0..5 {
        let r = send_mode(&gw, BODY, &[("x-mock-mode", "invalid_json")]).await;
        assert_withheld(&r, "chatcmpl-broken");
    }
    assert!(gw.logs().contains("response refused: invalid_json"));
}

#[tokio::test]
async fn oversized_body_is_502() {
    let gw = Gateway::start();
    let r = send_mode(&gw, BODY, &[("x-mock-mode", "huge")])
        .await
        .unwrap();
    assert_eq!((r.status, r.code().as_str()), (502, "upstream_error"));
    assert!(r.body.len() < 1000);
}

#[tokio::test]
async fn redirects_and_html_are_refused() {
    let gw = Gateway::start();
    for mode in ["redirect", "html"] {
        let r = send_mode(&gw, BODY, &[("x-mock-mode", mode)])
            .await
            .unwrap();
        assert_eq!(
            (r.status, r.code().as_str()),
            (502, "upstream_error"),
            "{mode}"
        );
        assert!(!r.headers.contains_key("location"));
    }
}

#[tokio::test]
async fn provider_errors_pass_through_with_their_status() {
    let gw = Gateway::start();
    let r = send_mode(&gw, BODY, &[("x-mock-mode", "error_429")])
        .await
        .unwrap();
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
}

#[tokio::test]
async fn echoed_credential_never_reaches_the_client() {
    let gw = Gateway::start();
    let key = gw.secrets.provider.clone();
    // In a header and the body: refused at the header, cleanly.
    let r = send_mode(&gw, BODY, &[("x-mock-mode", "echo_credential")])
        .await
        .unwrap();
    assert_eq!((r.status, r.code().as_str()), (502, "upstream_error"));
    assert!(!r.body.contains(&key) && !format!("{:?}", r.headers).contains(&key));
    // In the body only.
    for _ in 0..3 {
        let r = send_mode(&gw, BODY, &[("x-mock-mode", "echo_credential_body")]).await;
        assert_withheld(&r, &key);
    }
    // In a stream: the stream is cut with an error event before the secret.
    let r = send_mode(&gw, STREAM, &[("x-mock-mode", "echo_credential_body")])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(!r.body.contains(&key), "{}", r.body);
    assert!(r.body.contains("event: error"), "{}", r.body);
    assert!(
        r.body.contains("data: {\"id\""),
        "events before the secret were forwarded"
    );
    assert!(gw.logs().contains("response refused: secret_egress"));
}

#[tokio::test]
async fn stream_passes_event_by_event_and_is_charged() {
    let gw = Gateway::start();
    let h = gw.sign(
        "alpha.k1",
        &gw.secrets.alpha,
        "POST",
        CHAT,
        STREAM.as_bytes(),
    );
    let mut rb = client()
        .post(gw.url(CHAT))
        .header("content-type", "application/json")
        .body(STREAM);
    for (k, v) in &h {
        rb = rb.header(k.as_str(), v.as_str());
    }
    rb = rb.header("x-mock-event-delay-ms", "150");
    let started = Instant::now();
    let r = rb.send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut stream = r.bytes_stream();
    let mut first_at = None;
    let mut all = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        if first_at.is_none() && !chunk.is_empty() {
            first_at = Some(started.elapsed());
        }
        all.extend_from_slice(&chunk);
    }
    let total = started.elapsed();
    let first = first_at.unwrap();
    // 8 events 150 ms apart: the first must arrive long before the last was sent.
    assert!(total >= Duration::from_millis(1000), "{total:?}");
    assert!(
        first + Duration::from_millis(700) < total,
        "first {first:?}, total {total:?}"
    );
    let text = String::from_utf8(all).unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"));
    let audit = gw.audit_lines_at_least(1);
    assert_eq!(audit[0]["tokens_out"], 9);
    assert_eq!(audit[0]["tokens_estimated"], false);
}

/// A gateway whose provider's circuit opens after `failures` and probes after 1 s.
fn with_circuit(failures: u32) -> Gateway {
    Gateway::start_with(Options {
        upstream_extra: format!(
            "    circuit_breaker: {{ failures: {failures}, open_s: 1, half_open_successes: 1 }}\n"
        ),
        ..Options::default()
    })
}

#[tokio::test]
async fn circuit_opens_after_failures_and_a_probe_closes_it() {
    let gw = with_circuit(3);
    for _ in 0..3 {
        let r = send_mode(&gw, BODY, &[("x-mock-mode", "error_500")])
            .await
            .unwrap();
        assert_eq!(r.status, 500, "provider errors pass through");
    }
    let r = send_mode(&gw, BODY, &[]).await.unwrap();
    assert_eq!(
        (r.status, r.code().as_str()),
        (503, "upstream_unavailable"),
        "{}",
        r.body
    );
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(
        gw.mock.count(),
        3,
        "an open circuit does not contact the provider"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        send_mode(&gw, BODY, &[]).await.unwrap().status,
        200,
        "the probe"
    );
    assert_eq!(
        send_mode(&gw, BODY, &[]).await.unwrap().status,
        200,
        "closed again"
    );
    assert_eq!(gw.mock.count(), 5);
}

/// A stream (or a Realtime session) as the half-open circuit's probe: its permit was
/// settled only at the stream's end, so every other request to that upstream, from every
/// site, was refused 503 while it lasted. The probe settles at the answer's header now.
#[tokio::test]
async fn a_stream_as_the_probe_does_not_hold_the_circuit_half_open() {
    let gw = with_circuit(1);
    let r = send_mode(&gw, BODY, &[("x-mock-mode", "error_500")])
        .await
        .unwrap();
    assert_eq!(r.status, 500);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The probe: an endless stream, read only up to its first event and kept open.
    let mut h = gw.sign(
        "alpha.k1",
        &gw.secrets.alpha,
        "POST",
        CHAT,
        STREAM.as_bytes(),
    );
    h.push(("x-mock-mode".into(), "endless_stream".into()));
    let mut rb = client()
        .post(gw.url(CHAT))
        .header("content-type", "application/json")
        .body(STREAM);
    for (k, v) in &h {
        rb = rb.header(k.as_str(), v.as_str());
    }
    let probe = rb.send().await.unwrap();
    assert_eq!(probe.status(), 200);
    let mut stream = probe.bytes_stream();
    assert!(stream.next().await.is_some_and(|c| c.is_ok()));
    let r = send_mode(&gw, BODY, &[]).await.unwrap();
    assert_eq!(r.status, 200, "refused while the stream probes: {}", r.body);
    drop(stream);
}

#[tokio::test]
async fn a_rate_limited_credential_rests_while_the_other_serves() {
    let gw = Gateway::start_with(Options {
        second_credential: true,
        ..Options::default()
    });
    let limited = gw.secrets.provider.clone();
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let r = send_mode(&gw, BODY, &[("x-mock-429-key", &limited)])
            .await
            .unwrap();
        statuses.push(r.status);
    }
    // prod-1 answers 429 once, then rests for the Retry-After (30 s); prod-2 serves.
    assert!(
        statuses.iter().filter(|s| **s == 429).count() <= 1,
        "{statuses:?}"
    );
    assert!(statuses[2..].iter().all(|s| *s == 200), "{statuses:?}");
    let reqs = gw.mock.requests();
    let last = reqs["requests"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        last["headers"]["authorization"],
        format!("Bearer {}", gw.secrets.provider2)
    );
    assert!(gw.logs().contains("credential prod-1 answered 429"));
}

/// A credential resting after a provider 429 stays resting when the config is reloaded
/// (its cool-down is live state, carried over by credential id).
#[tokio::test]
async fn a_resting_credential_stays_resting_across_sighup() {
    let gw = Gateway::start_with(Options {
        second_credential: true,
        ..Options::default()
    });
    let limited = gw.secrets.provider.clone();
    for _ in 0..2 {
        let r = send_mode(&gw, BODY, &[("x-mock-429-key", &limited)])
            .await
            .unwrap();
        // prod-1's 429 is not the client's: the request is sent again with prod-2.
        assert_eq!(r.status, 200);
    }
    assert!(
        gw.logs().contains("credential prod-1 answered 429"),
        "prod-1 was never used"
    );
    let before = gw.mock.count() as usize;
    gw.sighup();
    for _ in 0..6 {
        let r = send_mode(&gw, BODY, &[("x-mock-429-key", &limited)])
            .await
            .unwrap();
        assert_eq!(r.status, 200, "prod-1 was used again after the reload");
    }
    let reqs = gw.mock.requests();
    let sent: Vec<&str> = reqs["requests"].as_array().unwrap()[before..]
        .iter()
        .map(|r| r["headers"]["authorization"].as_str().unwrap())
        .collect();
    let prod2 = format!("Bearer {}", gw.secrets.provider2);
    assert!(
        sent.iter().all(|a| *a == prod2),
        "{} of 6 went elsewhere",
        sent.iter().filter(|a| **a != prod2).count()
    );
}

#[tokio::test]
async fn block_patterns_are_opt_in() {
    let gw = Gateway::start();
    // The mock says "Hello from the keygate mock provider." — not blocked by default.
    assert_eq!(send_mode(&gw, BODY, &[]).await.unwrap().status, 200);
    gw.reload_with(|t| {
        t.replace(
            "    max_tokens: 4096",
            "    max_tokens: 4096\n    block_patterns: [\"(?i)mock provider\"]",
        )
    });
    let r = send_mode(&gw, BODY, &[]).await;
    assert_withheld(&r, "Hello from");
    let r = send_mode(&gw, STREAM, &[]).await.unwrap();
    assert!(
        r.body.contains("event: error") && !r.body.contains("mock provider"),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn an_upstream_reset_mid_body_never_passes_as_complete() {
    let gw = Gateway::start();
    // A JSON answer cut in half: withheld (502, or the transfer aborts), never half a body.
    let r = send_mode(&gw, BODY, &[("x-mock-mode", "reset_mid_body")]).await;
    assert_withheld(&r, "xxxxxxxx");
    // A stream cut after some events: the events that arrived pass, then the client sees
    // an `error` event or an aborted transfer (chunked without its last chunk), never a
    // clean end. (Before the fix, keygate sent SSE close-delimited: a cut looked complete.)
    let r = send_mode(&gw, STREAM, &[("x-mock-mode", "reset_mid_stream")]).await;
    match r {
        Ok(r) => {
            assert!(r.body.contains("event: error"), "{}", r.body);
            assert!(!r.body.contains("[DONE]"), "{}", r.body);
        }
        Err(e) => assert!(e.contains("body"), "{e}"),
    }
    assert_eq!(gw.mock.count(), 2);
    // keygate is unharmed.
    let r = gw.call("alpha.k1", "GET", "/openai/v1/models", "").await;
    assert_eq!(r.status, 200);
}

/// Real answers are full of escapes: `\n` in text, `\"` in tool arguments, `\uXXXX` for
/// non-ASCII. Every streamed event with one was refused as invalid JSON (the duplicate-
/// member check parsed the framed event, `data: {…}`, as a JSON document), so a stream
/// ended at its first line break or quote. Three providers' stream shapes.
#[tokio::test]
async fn streamed_text_with_escapes_reaches_the_client_whole() {
    let gw = Gateway::start();
    let prompt = "line one\nline two \"quoted\" caf\u{e9} \\ tab\tend";
    let cases = [
        (
            CHAT,
            serde_json::json!({"model": "gpt-4o", "stream": true,
                "messages": [{"role": "user", "content": prompt}]}),
        ),
        (
            "/anthropic/v1/messages",
            serde_json::json!({"model": "claude-x", "max_tokens": 100, "stream": true,
                "messages": [{"role": "user", "content": prompt}]}),
        ),
        (
            "/gemini/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse",
            serde_json::json!({"contents": [{"role": "user", "parts": [{"text": prompt}]}]}),
        ),
    ];
    for (path, body) in cases {
        let r = gw
            .post_signed(path, &body.to_string(), &[("x-mock-mode", "echo")])
            .await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert!(!r.body.contains("event: error"), "{path}: {}", r.body);
        let mut text = String::new();
        for data in r.body.lines().filter_map(|l| l.strip_prefix("data: ")) {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
                continue;
            };
            for p in [
                "/choices/0/delta/content",
                "/delta/text",
                "/candidates/0/content/parts/0/text",
            ] {
                if let Some(s) = v.pointer(p).and_then(serde_json::Value::as_str) {
                    text.push_str(s);
                }
            }
        }
        assert_eq!(text, prompt, "{path}");
    }
    let (_, metrics) = gw.admin_get("/metrics");
    let refused: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("keygate_response_rejected_total{") && !l.ends_with(" 0"))
        .collect();
    assert!(refused.is_empty(), "answers were refused: {refused:?}");
}

/// Gemini's model list (`GET /v1beta/models`, what google-genai's `models.list()` calls)
/// is `{"models": […]}`: it was refused for lacking OpenAI's `data` array (502 `shape`).
#[tokio::test]
async fn gemini_lists_its_models_in_its_own_shape() {
    let gw = Gateway::start();
    let r = gw
        .call("alpha.k1", "GET", "/gemini/v1beta/models", "")
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["models"][0]["name"], "models/gemini-2.0-flash");
}

/// Stream events that carry an image or audio are several MiB each (gpt-image-1's partial
/// images, the Responses API's image tool, Gemini's inline data over `alt=sse`): a fixed
/// 1 MiB bound on one event stopped them. An event is bounded by `max_response_bytes`.
#[tokio::test]
async fn a_stream_event_of_several_mib_passes() {
    let gw = Gateway::start_with(Options {
        upstream_extra: "    max_response_bytes: 16777216\n".into(),
        ..Options::default()
    });
    let r = gw
        .post_signed(CHAT, STREAM, &[("x-mock-mode", "big_event")])
        .await;
    assert_eq!(r.status, 200);
    assert!(!r.body.contains("event: error"), "stopped");
    assert!(r.body.len() > 3 << 20, "{} bytes", r.body.len());
    assert!(r.body.ends_with("data: [DONE]\n\n"));
}

/// keygate asks OpenAI for a stream's usage (it charges budgets from it). The usage comes
/// in a last chunk with `"choices": []`, which clients that index `choices[0]` of every
/// chunk trip on: passed on only to a client that asked for it.
#[tokio::test]
async fn the_usage_chunk_keygate_asked_for_is_not_passed_on() {
    let gw = Gateway::start();
    let r = gw.post_signed(CHAT, STREAM, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!r.body.contains(r#""choices":[]"#), "{}", r.body);
    assert!(r.body.ends_with("data: [DONE]\n\n"));
    // Charged from the usage it read, not estimated.
    let line = gw.audit_lines_at_least(1).remove(0);
    assert_eq!(line["tokens_estimated"], false, "{line}");
    assert!(line["tokens_out"].as_u64().unwrap_or(0) > 0, "{line}");
    // A client that asked gets it.
    let asked = r#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
    let r = gw.post_signed(CHAT, asked, &[]).await;
    assert!(r.body.contains(r#""choices":[]"#), "{}", r.body);
}

/// Without `alt=sse`, Gemini's `streamGenerateContent` answers one JSON array of chunks
/// (google-api-core's REST streaming: the older SDK with `transport="rest"`, curl): it
/// was refused as invalid JSON, since a body had to be an object. Each chunk is checked as
/// an answer, and usage is read from them.
#[tokio::test]
async fn gemini_streams_as_a_json_array_pass() {
    let gw = Gateway::start();
    let path = "/gemini/v1beta/models/gemini-2.0-flash:streamGenerateContent";
    let body = r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#;
    let r = gw.post_signed(path, body, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let chunks: Vec<serde_json::Value> = serde_json::from_str(&r.body).unwrap();
    let text: String = chunks
        .iter()
        .filter_map(|c| c.pointer("/candidates/0/content/parts/0/text"))
        .filter_map(serde_json::Value::as_str)
        .collect();
    assert_eq!(text.trim(), "Hello from the keygate mock provider.");
    // The last chunk carries only the usage (no candidates): it passes, and is read.
    assert!(chunks.last().unwrap().get("candidates").is_none());
    let line = gw.audit_lines_at_least(1).remove(0);
    assert_eq!(line["tokens_estimated"], false, "{line}");
    assert_eq!(line["tokens_out"], 27, "{line}");
}
