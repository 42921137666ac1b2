//! Personal data in prompts (issue #12), end to end: the real binary, the mock provider
//! in `echo` mode (it answers with the last user message, streamed in 3-character
//! deltas, so every placeholder is split across events).

mod common;

use common::*;
use serde_json::{json, Value};

const CHAT: &str = "/openai/v1/chat/completions";
const MESSAGES: &str = "/anthropic/v1/messages";
const GEMINI: &str = "/gemini/v1beta/models/gemini-2.0-flash:generateContent";
const GEMINI_STREAM: &str = "/gemini/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse";

/// Personal data of every built-in kind (email twice), and look-alikes that must pass.
const PROMPT: &str = "Hi, I am Jane (jane.doe@example.com, +1 415 555 2671). \
Card 4111 1111 1111 1111, IBAN DE89 3704 0044 0532 0130 00, laptop 192.168.1.20 and \
2001:db8::8a2e:370:7334. Not a card: 4111 1111 1111 1112. Order 100234987, \
ORD-2024-118-55231. A literal [EMAIL_1] stays. Reply to jane.doe@example.com.";

const VALUES: [&str; 6] = [
    "jane.doe@example.com",
    "+1 415 555 2671",
    "4111 1111 1111 1111",
    "DE89 3704 0044 0532 0130 00",
    "192.168.1.20",
    "2001:db8::8a2e:370:7334",
];

fn pseudonymizing() -> Gateway {
    Gateway::start_with(Options {
        route_extra: "    pii: { mode: pseudonymize }\n".into(),
        ..Options::default()
    })
}

fn openai_body(stream: bool) -> String {
    json!({"model": "gpt-4o", "stream": stream, "messages": [
        {"role": "system", "content": "Repeat the user."},
        {"role": "user", "content": [{"type": "text", "text": PROMPT}]}
    ]})
    .to_string()
}

fn anthropic_body(stream: bool) -> String {
    json!({"model": "claude-x", "max_tokens": 100, "stream": stream,
        "messages": [{"role": "user", "content": PROMPT}]})
    .to_string()
}

fn gemini_body() -> String {
    json!({"systemInstruction": {"parts": [{"text": "Repeat the user."}]},
        "contents": [{"role": "user", "parts": [{"text": PROMPT}]}]})
    .to_string()
}

async fn echo(gw: &Gateway, path: &str, body: &str) -> Resp {
    gw.post_signed(path, body, &[("x-mock-mode", "echo")]).await
}

/// What the provider received in its last request: no value, the look-alikes intact,
/// and a Content-Length that matches the rewritten body.
fn assert_provider_saw_placeholders(gw: &Gateway) {
    let last = gw.mock.last();
    let body = last["body"].as_str().unwrap();
    for v in VALUES {
        assert!(!body.contains(v), "the provider received {v}: {body}");
    }
    for kept in [
        "4111 1111 1111 1112",
        "100234987",
        "ORD-2024-118-55231",
        "[EMAIL_1]",
    ] {
        assert!(body.contains(kept), "{kept} was changed: {body}");
    }
    assert!(body.contains("[EMAIL_2]") && body.contains("[CARD_1]") && body.contains("[IP_2]"));
    assert_eq!(
        last["headers"]["content-length"],
        last["body_len"].to_string(),
        "Content-Length fixed after the rewrite"
    );
}

/// The model's text out of an SSE body (OpenAI or Anthropic deltas), and the event count.
fn stream_text(sse: &str) -> (String, usize) {
    let mut text = String::new();
    let mut events = 0;
    for data in sse.lines().filter_map(|l| l.strip_prefix("data: ")) {
        events += 1;
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            continue;
        };
        for p in [
            "/choices/0/delta/content",
            "/delta/text",
            "/candidates/0/content/parts/0/text",
        ] {
            if let Some(s) = v.pointer(p).and_then(Value::as_str) {
                text.push_str(s);
            }
        }
    }
    (text, events)
}

/// A streamed echo: many small events, the prompt restored, no issued placeholder.
fn assert_restored_stream(r: &Resp) {
    assert_eq!(r.status, 200, "{}", r.body);
    let (text, events) = stream_text(&r.body);
    assert!(events > 60, "the echo came in small deltas ({events})");
    assert_eq!(text, PROMPT);
    for issued in ["[EMAIL_2]", "[PHONE_1]", "[CARD_1]", "[IBAN_1]", "[IP_1]"] {
        assert!(!r.body.contains(issued), "{issued} reached the client");
    }
}

/// The last request upstream carried placeholders only, and once `requests` audit lines
/// are written, no value is in any log line.
fn assert_kept_private(gw: &Gateway, requests: usize) {
    assert_provider_saw_placeholders(gw);
    gw.audit_lines_at_least(requests);
    assert_no_value_in_logs(gw);
}

fn assert_no_value_in_logs(gw: &Gateway) {
    let logs = gw.logs();
    for v in VALUES {
        assert!(!logs.contains(v), "{v} appeared in the logs");
    }
}

#[tokio::test]
async fn provider_never_sees_pii_and_json_answer_is_restored() {
    let gw = pseudonymizing();
    let r = echo(&gw, CHAT, &openai_body(false)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["choices"][0]["message"]["content"], PROMPT);
    assert_provider_saw_placeholders(&gw);

    let audit = gw.audit_lines_at_least(1);
    assert_eq!(
        audit[0]["pii"],
        json!({"email": 2, "phone": 1, "card": 1, "iban": 1, "ip": 2})
    );
    let replaced = eventually("pii metric", || {
        gw.metric("keygate_pii_replaced_total{kind=\"email\"}")
            .filter(|n| *n >= 2.0)
    });
    assert_eq!(replaced, 2.0);
    assert_eq!(
        gw.metric("keygate_pii_replaced_total{kind=\"ip\"}"),
        Some(2.0)
    );
    assert_no_value_in_logs(&gw);
}

#[tokio::test]
async fn streamed_answer_is_restored_across_split_events() {
    let gw = pseudonymizing();
    // Each event arrives in two writes 2 ms apart: placeholders are split across events
    // (3-character deltas) and events across chunks.
    let body = openai_body(true);
    let r = gw
        .post_signed(
            CHAT,
            &body,
            &[("x-mock-mode", "echo"), ("x-mock-event-delay-ms", "2")],
        )
        .await;
    assert_restored_stream(&r);
    assert!(r.body.ends_with("data: [DONE]\n\n"));
    assert_kept_private(&gw, 1);
}

#[tokio::test]
async fn anthropic_json_and_stream_are_restored() {
    let gw = pseudonymizing();
    let r = echo(&gw, MESSAGES, &anthropic_body(false)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["content"][0]["text"], PROMPT);
    assert_provider_saw_placeholders(&gw);

    let r = echo(&gw, MESSAGES, &anthropic_body(true)).await;
    assert_restored_stream(&r);
    assert!(r.body.contains("event: content_block_stop"));
    assert_kept_private(&gw, 2);
}

#[tokio::test]
async fn gemini_json_and_stream_are_restored() {
    let gw = pseudonymizing();
    let r = echo(&gw, GEMINI, &gemini_body()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["candidates"][0]["content"]["parts"][0]["text"],
        PROMPT
    );
    assert_provider_saw_placeholders(&gw);

    let r = echo(&gw, GEMINI_STREAM, &gemini_body()).await;
    assert_restored_stream(&r);
    assert_kept_private(&gw, 2);
}

#[tokio::test]
async fn block_mode_refuses_with_the_kinds_found() {
    let gw = Gateway::start_with(Options {
        route_extra: "    pii: { mode: block, kinds: [email, card, iban] }\n".into(),
        ..Options::default()
    });
    let r = echo(&gw, CHAT, &openai_body(false)).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (422, "pii_detected"),
        "{}",
        r.body
    );
    assert_eq!(r.json()["error"]["kinds"], json!(["email", "card", "iban"]));
    for v in VALUES {
        assert!(!r.body.contains(v), "{v} in the refusal");
    }
    assert_eq!(gw.mock.count(), 0, "nothing reached the provider");

    // Without personal data the same route serves.
    let clean =
        json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Order 100234987"}]})
            .to_string();
    let r = echo(&gw, CHAT, &clean).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "Order 100234987"
    );

    let audit = gw.audit_lines_at_least(2);
    let refused = audit.iter().find(|l| l["status"] == 422).unwrap();
    assert_eq!(refused["error_code"], "pii_detected");
    assert_eq!(refused["pii"], json!({"email": 2, "card": 1, "iban": 1}));
    assert_no_value_in_logs(&gw);
}

#[tokio::test]
async fn pii_is_off_by_default() {
    let gw = Gateway::start();
    let r = echo(&gw, CHAT, &openai_body(false)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(gw.mock.last()["body"]
        .as_str()
        .unwrap()
        .contains("jane.doe@example.com"));
    assert_eq!(gw.audit_lines_at_least(1)[0]["pii"], Value::Null);
}

#[tokio::test]
async fn large_held_back_body_is_pseudonymized_after_verification() {
    let gw = pseudonymizing();
    // Over the 64 KiB pre-read limit: held back, verified at its end, then rewritten.
    let text = format!("{PROMPT} {}", "lorem ipsum ".repeat(6000));
    let body =
        json!({"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}).to_string();
    assert!(body.len() > 64 * 1024);
    let r = echo(&gw, CHAT, &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["choices"][0]["message"]["content"], text);
    let last = gw.mock.last();
    let seen = last["body"].as_str().unwrap();
    assert!(seen.contains("[EMAIL_2]") && seen.contains("[IBAN_1]"));
    for v in VALUES {
        assert!(!seen.contains(v), "the provider received {v}");
    }
    gw.audit_lines_at_least(1);
    assert_no_value_in_logs(&gw);
}
