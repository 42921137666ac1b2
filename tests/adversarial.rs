//! Issue #28: what an adversarial review of main found, one test per finding, against
//! the real binary and the mock provider's hostile modes. Each test fails on the main
//! the review looked at (311bee4).

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;

const CHAT: &str = "/openai/v1/chat/completions";
const COMPLETIONS: &str = "/openai/v1/completions";
const RESPONSES: &str = "/openai/v1/responses";
const MODELS: &str = "/openai/v1/models";
const MESSAGES: &str = "/anthropic/v1/messages";
const GEMINI_STREAM: &str = "/gemini/v1beta/models/gemini-1.5-flash:streamGenerateContent?alt=sse";
const TOKENS: &str = "/keygate/v1/tokens";
const BODY: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
const STREAM: &str =
    r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
const ANTHROPIC: &str =
    r#"{"model":"claude-x","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}"#;
const ANTHROPIC_STREAM: &str = r#"{"model":"claude-x","max_tokens":100,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
const GEMINI_BODY: &str = r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#;
const EGRESS: &str =
    "keygate_response_rejected_total{reason=\"secret_egress\",upstream=\"openai\"}";

/// Personal data the built-in detectors find (see tests/pii.rs).
const EMAIL: &str = "jane.doe@example.com";
const PHONE: &str = "+1 415 555 2671";

/// Sign as `alpha.k1` and send, with `extra` headers (`body` as JSON when non-empty).
/// The body is read as a stream: when the transfer is cut, what arrived is kept and
/// the error is returned beside it. Status 0: no response at all.
async fn exchange(
    gw: &Gateway,
    method: &str,
    path: &str,
    body: &str,
    extra: &[(&str, &str)],
) -> (Resp, Option<String>) {
    let mut h = gw.sign("alpha.k1", &gw.secrets.alpha, method, path, body.as_bytes());
    h.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let mut rb = client().request(method.parse().unwrap(), gw.url(path));
    for (k, v) in &h {
        rb = rb.header(k.as_str(), v.as_str());
    }
    if !body.is_empty() {
        rb = rb
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let r = match rb.send().await {
        Ok(r) => r,
        Err(e) => {
            let none = Resp {
                status: 0,
                headers: reqwest::header::HeaderMap::new(),
                body: String::new(),
            };
            return (none, Some(e.to_string()));
        }
    };
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let (bytes, cut) = read_until_cut(r).await;
    let body = String::from_utf8_lossy(&bytes).to_string();
    (
        Resp {
            status,
            headers,
            body,
        },
        cut,
    )
}

/// Undo one level of JSON string escaping, leniently (what a client does when it parses
/// text it concatenated, e.g. tool-call arguments); anything that is not an escape stays.
fn lenient_unescape(s: &str) -> String {
    let c: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < c.len() {
        if c[i] == '\\' && i + 1 < c.len() {
            match c[i + 1] {
                'u' if i + 6 <= c.len() => {
                    let hex: String = c[i + 2..i + 6].iter().collect();
                    if let Some(ch) = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                        out.push(ch);
                        i += 6;
                        continue;
                    }
                }
                '"' | '\\' | '/' => {
                    out.push(c[i + 1]);
                    i += 2;
                    continue;
                }
                'n' => {
                    out.push('\n');
                    i += 2;
                    continue;
                }
                't' => {
                    out.push('\t');
                    i += 2;
                    continue;
                }
                _ => {}
            }
        }
        out.push(c[i]);
        i += 1;
    }
    out
}

/// Every string leaf of `v`, appended to `all` (in order) and to its field's text in
/// `per_field`. Array items and objects with an `index` (choices, tool calls, Anthropic
/// content blocks) are told apart by it, so each choice, tool call and block has its
/// own text, as a client that assembles a stream keeps them.
fn collect_strings(
    v: &Value,
    path: String,
    all: &mut String,
    per_field: &mut BTreeMap<String, String>,
) {
    match v {
        Value::String(s) => {
            all.push_str(s);
            per_field.entry(path).or_default().push_str(s);
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                let tag = x
                    .get("index")
                    .and_then(Value::as_u64)
                    .map(|n| format!("#{n}"))
                    .unwrap_or_else(|| i.to_string());
                collect_strings(x, format!("{path}/{tag}"), all, per_field);
            }
        }
        Value::Object(m) => {
            let path = match m.get("index").and_then(Value::as_u64) {
                Some(n) => format!("{path}@{n}"),
                None => path,
            };
            for (k, x) in m {
                collect_strings(x, format!("{path}/{k}"), all, per_field);
            }
        }
        _ => {}
    }
}

/// Every text a client could assemble from an answer: the raw body; the string leaves
/// of every JSON document in it (the whole body, or each `data:` line of a stream),
/// concatenated in order and per field; each also JSON-unescaped once and twice.
fn assembled_texts(body: &str) -> Vec<String> {
    let mut docs: Vec<Value> = Vec::new();
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        docs.push(v);
    }
    for line in body.lines() {
        if let Some(d) = line.strip_prefix("data:") {
            if let Ok(v) = serde_json::from_str::<Value>(d.trim()) {
                docs.push(v);
            }
        }
    }
    let mut all = String::new();
    let mut per_field = BTreeMap::new();
    for d in &docs {
        collect_strings(d, String::new(), &mut all, &mut per_field);
    }
    let mut out = vec![body.to_string(), all];
    out.extend(per_field.into_values());
    let mut unescaped = Vec::new();
    for t in &out {
        let once = lenient_unescape(t);
        unescaped.push(lenient_unescape(&once));
        unescaped.push(once);
    }
    out.extend(unescaped);
    out
}

#[track_caller]
fn assert_never_assembled(body: &str, key: &str, what: &str) {
    for t in assembled_texts(body) {
        assert!(
            !t.contains(key),
            "{what}: the client can assemble the provider key from the answer:\n{body}"
        );
    }
}

/// The stream ends with keygate's `event: error`, and nothing is forwarded after it.
#[track_caller]
fn assert_ends_with_error_event(body: &str, what: &str) {
    let at = body
        .find("event: error")
        .unwrap_or_else(|| panic!("{what}: no error event in the stream:\n{body}"));
    let rest = &body[at..];
    let end = rest.find("\n\n").map(|i| i + 2).unwrap_or(rest.len());
    assert!(
        rest[end..].trim().is_empty(),
        "{what}: forwarded after the error event:\n{}",
        &rest[end..]
    );
}

/// A non-streamed answer that holds the key is refused whole: 502, the key nowhere.
#[track_caller]
fn assert_refused(r: &Resp, cut: Option<&str>, key: &str, what: &str) {
    assert_eq!(
        (r.status, r.code().as_str()),
        (502, "upstream_error"),
        "{what}: {}",
        r.body
    );
    assert_never_assembled(&r.body, key, what);
    assert!(
        !format!("{:?}", r.headers).contains(key),
        "{what}: a header"
    );
    if let Some(e) = cut {
        assert!(!e.contains(key), "{what}: {e}");
    }
}

fn header<'a>(r: &'a Resp, name: &str) -> Option<&'a str> {
    r.headers.get(name).and_then(|v| v.to_str().ok())
}

fn all_headers<'a>(r: &'a Resp, name: &str) -> Vec<&'a str> {
    r.headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect()
}

// Finding 1: a key with one character written as a JSON `\u` escape.

/// A signed chat answered in mock `mode`: refused as secret egress (counted), the
/// provider key nowhere in what the client got.
async fn assert_mode_refused(gw: &Gateway, mode: &str, what: &str) {
    let key = gw.secrets.provider.clone();
    let (r, cut) = exchange(gw, "POST", CHAT, BODY, &[("x-mock-mode", mode)]).await;
    assert_ne!(
        r.status, 401,
        "{what}: the provider's 401 passed: {}",
        r.body
    );
    assert_refused(&r, cut.as_deref(), &key, what);
    eventually("the secret_egress refusal counted", || {
        gw.metric(EGRESS).filter(|n| *n >= 1.0)
    });
}

#[tokio::test]
async fn json_escaped_key_in_answer_is_withheld() {
    let gw = Gateway::start();
    assert_mode_refused(&gw, "escaped_key", "escaped key in a chat completion").await;
    assert!(gw.logs().contains("response refused: secret_egress"));
    // The same route serves an ordinary answer.
    let (r, _) = exchange(&gw, "POST", CHAT, BODY, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test]
async fn json_escaped_key_in_provider_error_is_withheld() {
    let gw = Gateway::start();
    // A 400 (a 401 or 403 is never passed on at all: below).
    assert_mode_refused(&gw, "escaped_key_error", "escaped key in a provider error").await;
}

/// The provider's own refusal of keygate's credential is not the client's answer: it
/// names the key (OpenAI masks it to its prefix and last four characters), and a client
/// reads a 401 as its own key failing. A 502 in keygate's words.
#[tokio::test]
async fn a_providers_refusal_of_the_credential_is_keygates_502() {
    let gw = Gateway::start_with(Options {
        tier: "{ requests_per_minute: 1000, tokens_per_day: 40 }".into(),
        ..Options::default()
    });
    let key = gw.secrets.provider.clone();
    // A body of some 600 estimated input tokens each: charged, the first would spend
    // the day's 40.
    let big = format!(
        r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "word ".repeat(500)
    );
    for mode in ["error_401", "error_403"] {
        let (r, _) = exchange(&gw, "POST", CHAT, &big, &[("x-mock-mode", mode)]).await;
        assert_eq!(r.status, 502, "{mode}: {}", r.body);
        assert_eq!(r.code(), "upstream_error", "{mode}");
        for leaked in [
            &key[key.len() - 4..],
            &key[..8],
            "org-mock123",
            "proj_mock123",
        ] {
            assert!(!r.body.contains(leaked), "{mode}: {leaked} in {}", r.body);
        }
    }
    assert!(gw.logs().contains("answered 401 to credential prod-1"));
    assert!(gw.logs().contains("answered 403 to credential prod-1"));
    // The upstream answered: its circuit counts no failure.
    assert_eq!(
        gw.metric("keygate_circuit_state{upstream=\"openai\"}"),
        Some(0.0)
    );
    // Nothing the provider produced or bills: nothing charged.
    for line in gw.audit_lines_at_least(2) {
        assert_eq!(line["tokens_in"].as_u64().unwrap_or(0), 0, "{line}");
    }
    let (r, _) = exchange(&gw, "POST", CHAT, BODY, &[]).await;
    assert_eq!(r.status, 200, "the budget is whole: {}", r.body);
    // On a route that serves stored objects a 403 may be the client's own (a file it
    // may not read, or names in a request): it passes.
    let gw = Gateway::start_with(Options {
        route_extra: "    stored_objects: true\n".into(),
        ..Options::default()
    });
    let forbidden = [("x-mock-mode", "error_403")];
    for (method, path, body) in [
        ("GET", "/openai/v1/files/file-abc", ""),
        ("POST", CHAT, BODY),
    ] {
        let (r, _) = exchange(&gw, method, path, body, &forbidden).await;
        assert_eq!(r.status, 403, "{path}: {}", r.body);
    }
}

// Finding 2: a key split across stream events, in every text-bearing field.

#[tokio::test]
async fn key_split_across_events_is_caught_in_every_text_field() {
    let gw = Gateway::start();
    // The `openai` upstream's key; `anthropic` and `gemini` share the other one.
    let openai = gw.secrets.provider.as_str();
    let other = gw.secrets.anthropic.as_str();
    let cases: [(&str, &str, &str, &str); 10] = [
        ("tool_arguments", CHAT, STREAM, openai),
        ("choice_switch", CHAT, STREAM, openai),
        ("bom", CHAT, STREAM, openai),
        ("tool_arguments_escaped", CHAT, STREAM, openai),
        ("refusal", CHAT, STREAM, openai),
        ("reasoning_content", CHAT, STREAM, openai),
        ("choice1", CHAT, STREAM, openai),
        ("anthropic_input_json", MESSAGES, ANTHROPIC_STREAM, other),
        ("anthropic_thinking", MESSAGES, ANTHROPIC_STREAM, other),
        ("gemini_code", GEMINI_STREAM, GEMINI_BODY, other),
    ];
    for (field, path, body, key) in cases {
        let (r, cut) = exchange(
            &gw,
            "POST",
            path,
            body,
            &[("x-mock-mode", "split_key"), ("x-mock-field", field)],
        )
        .await;
        assert_never_assembled(&r.body, key, field);
        if let Some(e) = &cut {
            assert!(!e.contains(key), "{field}: {e}");
        }
        assert_ends_with_error_event(&r.body, field);
    }
    assert_eq!(gw.mock.count(), cases.len() as u64);
    // Each for the key it carried, not as invalid JSON (the escaped cases were refused
    // for their escapes alone when the duplicate-member check parsed the framed event).
    let rejected = |reason: &str| -> f64 {
        ["openai", "anthropic", "gemini"]
            .iter()
            .filter_map(|u| {
                gw.metric(&format!(
                    "keygate_response_rejected_total{{reason=\"{reason}\",upstream=\"{u}\"}}"
                ))
            })
            .sum()
    };
    eventually("every case counted", || {
        (rejected("secret_egress") == cases.len() as f64).then_some(())
    });
    assert_eq!(rejected("invalid_json"), 0.0);
}

/// A body keygate's strict parser refuses (a lone surrogate) cannot carry a key past the
/// scan: a lenient client parser would read the escaped key after it.
#[tokio::test]
async fn a_body_only_a_lenient_parser_reads_is_refused() {
    let gw = Gateway::start();
    let r = gw
        .post_signed(CHAT, BODY, &[("x-mock-mode", "surrogate_key")])
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (502, "upstream_error"),
        "{}",
        r.body
    );
    assert!(!r.body.contains(&gw.secrets.provider[6..]), "{}", r.body);
}

// Finding 4: provider response headers pass by an allow-list.

#[tokio::test]
async fn provider_headers_outside_the_allow_list_are_dropped() {
    let gw = Gateway::start();
    for origin in [None, Some("https://shop.example")] {
        let mut extra = vec![("x-mock-mode", "hostile_headers")];
        if let Some(o) = origin {
            extra.push(("origin", o));
        }
        let r = gw.post_signed(CHAT, BODY, &extra).await;
        let what = format!("origin {origin:?}");
        assert_eq!(r.status, 200, "{what}: {}", r.body);
        for name in [
            "access-control-allow-credentials",
            "refresh",
            "location",
            "link",
            "content-disposition",
        ] {
            assert!(
                r.headers.get(name).is_none(),
                "{what}: the provider's {name} reached the client"
            );
        }
        assert_ne!(
            header(&r, "content-security-policy"),
            Some("default-src *"),
            "{what}"
        );
        // Plain HTTP: keygate sends no HSTS of its own, and the provider's never passes.
        assert!(
            r.headers.get("strict-transport-security").is_none(),
            "{what}: the provider's HSTS reached the client"
        );
        let acao = all_headers(&r, "access-control-allow-origin");
        match origin {
            None => assert!(acao.is_empty(), "{what}: {acao:?}"),
            Some(o) => assert_eq!(acao, vec![o], "{what}: only keygate's own"),
        }
        assert!(
            !format!("{:?}", r.headers).contains("evil.example"),
            "{what}: {:?}",
            r.headers
        );
        // What SDKs read still passes.
        assert_eq!(
            header(&r, "x-ratelimit-remaining-requests"),
            Some("99"),
            "{what}"
        );
        assert_eq!(header(&r, "openai-processing-ms"), Some("12"), "{what}");
        assert_eq!(header(&r, "request-id"), Some("req_mock123"), "{what}");
        assert_eq!(
            all_headers(&r, "content-type"),
            vec!["application/json"],
            "{what}"
        );
    }
}

// Finding 5: a duplicate, different Content-Type.

#[tokio::test]
async fn duplicate_differing_content_type_is_refused() {
    let gw = Gateway::start();
    let r = gw
        .post_signed(CHAT, BODY, &[("x-mock-mode", "dup_content_type")])
        .await;
    r.assert_error(502, "upstream_error");
    assert_eq!(all_headers(&r, "content-type"), vec!["application/json"]);
    assert!(!r.body.contains("chatcmpl-mock123"), "{}", r.body);
    // With one Content-Type the same answer passes.
    let r = gw.post_signed(CHAT, BODY, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

// Finding 6: zero and empty token scopes.

#[tokio::test]
async fn empty_or_zero_token_scopes_are_refused_at_mint() {
    let gw = Gateway::start();
    for body in [
        r#"{"max_requests": 0}"#,
        r#"{"routes": []}"#,
        r#"{"models": []}"#,
        r#"{"ttl_s": 60, "routes": [], "models": [], "max_requests": 0}"#,
    ] {
        let r = gw.call("alpha.k1", "POST", TOKENS, body).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "bad_request"),
            "{body}: {}",
            r.body
        );
        assert!(r.json()["token"].is_null(), "{body}: a token was minted");
    }
    // Non-empty scopes still mint.
    let r = gw
        .call(
            "alpha.k1",
            "POST",
            TOKENS,
            r#"{"max_requests": 1, "routes": ["/openai/"], "models": ["gpt-4o"]}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.json()["token"].as_str().unwrap().starts_with("kgt_"));
}

// Finding 7: request headers by an allow-list, `;` and needless encodings in paths.

#[tokio::test]
async fn method_override_and_rewrite_headers_never_reach_the_provider() {
    let gw = Gateway::start();
    let hostile = [
        ("x-http-method-override", "DELETE"),
        ("x-http-method", "DELETE"),
        ("x-method-override", "DELETE"),
        ("x-original-url", "/v1/files"),
        ("x-rewrite-url", "/v1/files"),
        ("x-forwarded-prefix", "/evil"),
    ];
    let mut extra: Vec<(&str, &str)> = hostile.to_vec();
    extra.push(("x-mock-probe", "1"));
    // The client's user agent may identify the end user's browser: keygate sends its own.
    extra.push(("user-agent", "evil-agent/6.6"));
    for (method, path, body) in [("POST", CHAT, BODY), ("GET", MODELS, "")] {
        let (r, _) = exchange(&gw, method, path, body, &extra).await;
        assert_eq!(r.status, 200, "{method} {path}: {}", r.body);
        let seen = gw.mock.last()["headers"].clone();
        for (name, _) in hostile {
            assert!(
                seen.get(name).is_none(),
                "{method} {path}: {name} reached the provider: {seen}"
            );
        }
        assert!(!seen.to_string().contains("evil-agent"), "{seen}");
        assert!(
            seen["user-agent"].as_str().unwrap().starts_with("keygate/"),
            "{seen}"
        );
        assert!(!seen.to_string().contains("/evil"), "{seen}");
        // Configured pass-through headers (`x-mock-*` in the tests) still reach it.
        assert_eq!(seen["x-mock-probe"], "1", "{seen}");
    }
    assert_eq!(gw.mock.count(), 2);
}

#[test]
fn semicolon_and_encoded_unreserved_paths_are_refused() {
    let gw = Gateway::start();
    for path in [
        "/openai/..;/v1/models",
        "/openai/v1/models;x=1",
        "/openai/v1;/models",
        "/openai/;/v1/models",
        "/openai/v1/chat/complet%69ons",
        "/openai/v1/mod%65ls",
        "/openai/v1/models%2D",
        "/openai/v1/models%5f",
        "/openai/v1/models%7E",
    ] {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            gw.port, gw.secrets.bearer
        );
        let resp = raw(gw.port, req.as_bytes());
        let head: String = resp.chars().take(400).collect();
        assert!(resp.starts_with("HTTP/1.1 400"), "{path}: {head}");
        assert!(resp.contains("bad_request"), "{path}: {head}");
    }
    assert_eq!(gw.mock.count(), 0, "nothing reached the provider");
    // The plain path still serves.
    let req = format!(
        "GET {MODELS} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        gw.port, gw.secrets.bearer
    );
    let resp = raw(gw.port, req.as_bytes());
    assert!(
        resp.starts_with("HTTP/1.1 200"),
        "{}",
        resp.chars().take(400).collect::<String>()
    );
    assert_eq!(gw.mock.last()["path"], "/v1/models");
}

#[tokio::test]
async fn beta_headers_pass_only_when_the_route_allows_them() {
    let gw = Gateway::start_with(Options {
        route_extra: "    betas: [\"assistants=v2\"]\n".into(),
        ..Options::default()
    });
    let r = gw
        .post_signed(CHAT, BODY, &[("openai-beta", "assistants=v2")])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(gw.mock.last()["headers"]["openai-beta"], "assistants=v2");
    let r = gw
        .post_signed(CHAT, BODY, &[("openai-beta", "other")])
        .await;
    r.assert_error(403, "forbidden");
    let r = gw
        .post_signed(MESSAGES, ANTHROPIC, &[("anthropic-beta", "assistants=v2")])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(gw.mock.last()["headers"]["anthropic-beta"], "assistants=v2");
    let r = gw
        .post_signed(
            MESSAGES,
            ANTHROPIC,
            &[("anthropic-beta", "files-api-2025-04-14")],
        )
        .await;
    r.assert_error(403, "forbidden");
    assert_eq!(gw.mock.count(), 2, "refused betas never reach the provider");
}

// Finding 8: the audit line's client address behind a trusted proxy.

#[tokio::test]
async fn audit_client_ip_is_the_client_behind_a_trusted_proxy() {
    let gw = Gateway::start_with(Options {
        server_extra: "  trusted_proxies: [\"127.0.0.1/32\"]\n".into(),
        ..Options::default()
    });
    let (r, _) = exchange(
        &gw,
        "GET",
        MODELS,
        "",
        &[("x-forwarded-for", "203.0.113.7")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // A refused request is audited with the client's address too.
    let h = vec![
        ("authorization".to_string(), "Bearer kgk_wrong".to_string()),
        ("x-forwarded-for".to_string(), "198.51.100.9".to_string()),
    ];
    let r = send(&client(), "GET", &gw.url(MODELS), &h, None).await;
    assert_eq!(r.status, 401, "{}", r.body);
    let lines = gw.audit_lines_at_least(2);
    let served = lines.iter().find(|l| l["status"] == 200).unwrap();
    assert_eq!(served["client_ip"], "203.0.113.7", "{served}");
    let refused = lines.iter().find(|l| l["status"] == 401).unwrap();
    assert_eq!(refused["client_ip"], "198.51.100.9", "{refused}");
    // The client's address is not sent on to the provider.
    assert!(!gw.mock.last()["headers"]
        .to_string()
        .contains("203.0.113.7"));
}

// Also tightened: choices × output tokens, and shape checks on every spelling of a path.

/// The output-token fields of the last body the provider received, and its `n`.
fn forwarded_output_tokens(gw: &Gateway) -> (Vec<u64>, u64) {
    let last = gw.mock.last();
    let body: Value = serde_json::from_str(last["body"].as_str().unwrap()).unwrap();
    let fields: Vec<u64> = ["max_tokens", "max_completion_tokens", "max_output_tokens"]
        .iter()
        .filter_map(|f| body.get(*f).and_then(Value::as_u64))
        .collect();
    let n = ["n", "best_of"]
        .iter()
        .filter_map(|f| body.get(*f).and_then(Value::as_u64))
        .max()
        .unwrap_or(1);
    (fields, n)
}

#[tokio::test]
async fn choices_times_max_tokens_stays_within_the_route_cap() {
    // The `/openai/` route of the tests has `max_tokens: 4096`.
    let gw = Gateway::start();
    let hi = json!([{"role": "user", "content": "hi"}]);
    // One choice: the whole cap.
    let r = gw.post_signed(CHAT, BODY, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(forwarded_output_tokens(&gw).0, vec![4096u64]);
    let cases = [
        (CHAT, json!({"model": "gpt-4o", "n": 4, "messages": hi})),
        (
            CHAT,
            json!({"model": "gpt-4o", "n": 4, "max_tokens": 3000, "messages": hi}),
        ),
        (
            CHAT,
            json!({"model": "gpt-4o", "n": 4, "max_completion_tokens": 4096, "messages": hi}),
        ),
        (
            COMPLETIONS,
            json!({"model": "gpt-4o", "prompt": "hi", "best_of": 4}),
        ),
        (
            COMPLETIONS,
            json!({"model": "gpt-4o", "prompt": "hi", "n": 2, "best_of": 4, "max_tokens": 4000}),
        ),
    ];
    for (path, body) in cases {
        let body = body.to_string();
        let r = gw.post_signed(path, &body, &[]).await;
        assert_eq!(r.status, 200, "{body}: {}", r.body);
        let (fields, n) = forwarded_output_tokens(&gw);
        assert!(
            !fields.is_empty(),
            "{body}: no output-token field forwarded"
        );
        for f in fields {
            assert!(f <= 1024, "{body}: {f} tokens per choice forwarded");
            assert!(f * n <= 4096, "{body}: {n} × {f} tokens forwarded");
        }
    }
    // Far more choices than the cap has tokens: refused before the provider.
    let before = gw.mock.count();
    let body = json!({"model": "gpt-4o", "n": 5000, "messages": hi}).to_string();
    let r = gw.post_signed(CHAT, &body, &[]).await;
    r.assert_error(400, "bad_request");
    assert_eq!(gw.mock.count(), before);
}

#[tokio::test]
async fn answer_shape_is_checked_on_a_trailing_slash_path() {
    let gw = Gateway::start();
    for path in [MODELS, "/openai/v1/models/"] {
        let (r, _) = exchange(&gw, "GET", path, "", &[("x-mock-mode", "wrong_shape")]).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (502, "upstream_error"),
            "{path}: {}",
            r.body
        );
        assert!(
            !r.body.contains(r#""object":"thing""#),
            "{path}: {}",
            r.body
        );
    }
    // A well-formed list passes on both spellings.
    for path in [MODELS, "/openai/v1/models/"] {
        let (r, _) = exchange(&gw, "GET", path, "", &[]).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
}

// Finding 3: personal data in request fields PII did not look at.

struct PiiCase {
    group: &'static str,
    name: &'static str,
    path: &'static str,
    body: String,
}

/// Each newly covered field, holding an email address or a phone number only there.
fn pii_cases() -> Vec<PiiCase> {
    let case = |group: &'static str, name: &'static str, path: &'static str, body: Value| PiiCase {
        group,
        name,
        path,
        body: body.to_string(),
    };
    vec![
        case(
            "responses",
            "function_call_output with a string output",
            RESPONSES,
            json!({"model": "gpt-4o", "input": [
                {"role": "user", "content": "What did the tool say?"},
                {"type": "function_call_output", "call_id": "c", "output": format!("Contact {EMAIL} today")}
            ]}),
        ),
        case(
            "responses",
            "function_call_output with input_text parts",
            RESPONSES,
            json!({"model": "gpt-4o", "input": [
                {"role": "user", "content": "What did the tool say?"},
                {"type": "function_call_output", "call_id": "c", "output": [
                    {"type": "input_text", "text": format!("Call {PHONE} now")}
                ]}
            ]}),
        ),
        case(
            "anthropic",
            "document with a text source",
            MESSAGES,
            json!({"model": "claude-x", "max_tokens": 100, "messages": [{"role": "user", "content": [
                {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                    "data": format!("Customer file: {EMAIL}")}},
                {"type": "text", "text": "Summarise the file."}
            ]}]}),
        ),
        case(
            "anthropic",
            "document with a content source",
            MESSAGES,
            json!({"model": "claude-x", "max_tokens": 100, "messages": [{"role": "user", "content": [
                {"type": "document", "source": {"type": "content", "content": [
                    {"type": "text", "text": format!("Phone on file: {PHONE}")}
                ]}},
                {"type": "text", "text": "Summarise the file."}
            ]}]}),
        ),
        case(
            "anthropic",
            "search_result block",
            MESSAGES,
            json!({"model": "claude-x", "max_tokens": 100, "messages": [{"role": "user", "content": [
                {"type": "search_result", "source": "https://x", "title": "t", "content": [
                    {"type": "text", "text": format!("Found {EMAIL} in the directory")}
                ]},
                {"type": "text", "text": "Use the search result."}
            ]}]}),
        ),
        case(
            "prediction",
            "prediction with string content",
            CHAT,
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Fix the typo."}],
                "prediction": {"type": "content", "content": format!("Write to {EMAIL}.")}}),
        ),
        case(
            "prediction",
            "prediction with text parts",
            CHAT,
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Fix the typo."}],
            "prediction": {"type": "content", "content": [
                {"type": "text", "text": format!("Call {PHONE}.")}
            ]}}),
        ),
        case(
            "refusal",
            "assistant message refusal field",
            CHAT,
            json!({"model": "gpt-4o", "messages": [
                {"role": "user", "content": "Who is this?"},
                {"role": "assistant", "content": null, "refusal": format!("I will not look up {EMAIL}.")},
                {"role": "user", "content": "Fine."}
            ]}),
        ),
        case(
            "refusal",
            "assistant refusal content part",
            CHAT,
            json!({"model": "gpt-4o", "messages": [
                {"role": "user", "content": "Who is this?"},
                {"role": "assistant", "content": [
                    {"type": "refusal", "refusal": format!("I will not call {PHONE}.")}
                ]},
                {"role": "user", "content": "Fine."}
            ]}),
        ),
    ]
}

/// In `block` mode every case of `group` is refused with 422 and reaches nobody.
async fn assert_blocked(group: &str) {
    let gw = Gateway::start_with(Options {
        route_extra: "    pii: { mode: block }\n".into(),
        ..Options::default()
    });
    let cases: Vec<PiiCase> = pii_cases()
        .into_iter()
        .filter(|c| c.group == group)
        .collect();
    assert!(!cases.is_empty());
    for c in &cases {
        let r = gw.post_signed(c.path, &c.body, &[]).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (422, "pii_detected"),
            "{}: {}",
            c.name,
            r.body
        );
        assert!(
            !r.body.contains(EMAIL) && !r.body.contains(PHONE),
            "{}: the value is in the refusal",
            c.name
        );
    }
    assert_eq!(
        gw.mock.count(),
        0,
        "{group}: a request reached the provider"
    );
    let logs = gw.logs();
    assert!(
        !logs.contains(EMAIL) && !logs.contains(PHONE),
        "a value was logged"
    );
}

#[tokio::test]
async fn pii_block_covers_responses_function_call_output() {
    assert_blocked("responses").await;
}

#[tokio::test]
async fn pii_block_covers_anthropic_document_and_search_result_blocks() {
    assert_blocked("anthropic").await;
}

#[tokio::test]
async fn pii_block_covers_openai_prediction() {
    assert_blocked("prediction").await;
}

#[tokio::test]
async fn pii_block_covers_assistant_refusals() {
    assert_blocked("refusal").await;
}

#[tokio::test]
async fn pii_pseudonymize_keeps_the_newly_covered_fields_from_the_provider() {
    let gw = Gateway::start_with(Options {
        route_extra: "    pii: { mode: pseudonymize }\n".into(),
        ..Options::default()
    });
    for (i, c) in pii_cases().iter().enumerate() {
        let r = gw.post_signed(c.path, &c.body, &[]).await;
        assert_ne!(r.status, 422, "{}: {}", c.name, r.body);
        assert_eq!(
            gw.mock.count(),
            i as u64 + 1,
            "{}: not forwarded: {}",
            c.name,
            r.body
        );
        let last = gw.mock.last();
        let seen = last["body"].as_str().unwrap();
        assert!(
            !seen.contains(EMAIL) && !seen.contains(PHONE),
            "{}: the provider received the value: {seen}",
            c.name
        );
        assert!(
            seen.contains("[EMAIL_") || seen.contains("[PHONE_"),
            "{}: no placeholder: {seen}",
            c.name
        );
    }
    gw.audit_lines_at_least(pii_cases().len());
    let logs = gw.logs();
    assert!(
        !logs.contains(EMAIL) && !logs.contains(PHONE),
        "a value was logged"
    );
}

// The second review (2026-12-04): places the provider key could still take to the client.

/// The provider's status line: `HTTP/1.1 200 Bearer sk-…` reached HTTP/1 clients as it was.
#[tokio::test]
async fn a_key_in_the_status_line_never_reaches_the_client() {
    let gw = Gateway::start();
    let key = gw.secrets.provider.clone();
    let req = format!(
        "GET {MODELS} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: Bearer {}\r\nx-mock-mode: key_reason\r\nConnection: close\r\n\r\n",
        gw.port, gw.secrets.bearer
    );
    let resp = raw(gw.port, req.as_bytes());
    let head: String = resp.chars().take(400).collect();
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(!resp.contains(&key), "{head}");
    assert_eq!(gw.mock.last()["path"], "/v1/models");
}

/// A header name after an allowed prefix (`x-ratelimit-<key>`), which HTTP lower-cases.
#[tokio::test]
async fn a_key_in_a_response_header_name_is_refused() {
    let gw = Gateway::start();
    assert_mode_refused(&gw, "key_header_name", "a key in a header name").await;
}

/// Speech audio was passed unscanned: the key in the bytes, cut between two chunks.
#[tokio::test]
async fn a_key_in_speech_audio_is_cut_off() {
    let gw = Gateway::start();
    let key = gw.secrets.provider.clone();
    let body = r#"{"model":"gpt-4o-mini-tts","voice":"alloy","input":"Hello there."}"#;
    let r = client()
        .post(gw.url("/openai/v1/audio/speech"))
        .header("authorization", format!("Bearer {}", gw.secrets.bearer))
        .header("content-type", "application/json")
        .header("x-mock-mode", "echo_credential")
        .body(body)
        .send()
        .await
        .unwrap();
    // Refused before the header went out (the two chunks arrived together): a clean 502;
    // after it: the transfer is cut.
    let status = r.status().as_u16();
    let (got, cut) = read_until_cut(r).await;
    match status {
        502 => assert!(String::from_utf8_lossy(&got).contains("upstream_error")),
        200 => assert!(
            cut.is_some(),
            "the transfer was not cut ({} bytes)",
            got.len()
        ),
        s => panic!("status {s}"),
    }
    assert!(
        !String::from_utf8_lossy(&got).contains(&key),
        "the key reached the client"
    );
    assert!(got.len() < 4096, "{} bytes passed", got.len());
    eventually("the secret_egress refusal counted", || {
        gw.metric(EGRESS).filter(|n| *n >= 1.0)
    });
}

/// Pingora's own error lines name the request: without its query, which is the client's
/// (a key put there by mistake), and with keygate's request id.
#[tokio::test]
async fn pingora_error_lines_name_the_path_without_its_query() {
    let gw = Gateway::start();
    let path = format!("{MODELS}?note={}", gw.secrets.bearer);
    let sent = client()
        .get(gw.url(&path))
        .header("authorization", format!("Bearer {}", gw.secrets.bearer))
        .header("x-mock-mode", "reset_mid_body")
        .send()
        .await;
    if let Ok(r) = sent {
        let _ = r.bytes().await;
    }
    let line = eventually("Pingora's error line", || {
        gw.logs()
            .lines()
            .find(|l| l.contains("Fail to proxy"))
            .map(str::to_string)
    });
    assert!(line.contains("GET /openai/v1/models, request "), "{line}");
    // Dropping the gateway checks that no secret, the bearer key included, was logged.
}

// The second review's request side (2026-12-04): what keygate checks must be what the
// provider reads.

/// Two Content-Types, or a repeated `boundary`: keygate's multipart reader takes the first,
/// a provider may take the last, and so read a `model` keygate never checked.
#[tokio::test]
async fn an_ambiguous_content_type_is_refused() {
    let gw = Gateway::start();
    let form =
        "--AAA\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--AAA--\r\n";
    let cases = [
        vec!["multipart/form-data; boundary=AAA; boundary=BBB"],
        vec![
            "multipart/form-data; boundary=AAA",
            "multipart/form-data; boundary=BBB",
        ],
        vec!["application/json", "text/plain"],
    ];
    for types in cases {
        let mut req = format!(
            "POST /openai/v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            gw.port,
            gw.secrets.bearer,
            form.len()
        );
        for t in &types {
            req.push_str(&format!("Content-Type: {t}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(form);
        let resp = raw(gw.port, req.as_bytes());
        let head: String = resp.chars().take(300).collect();
        assert!(resp.starts_with("HTTP/1.1 400"), "{types:?}: {head}");
        assert!(
            resp.contains("Content-Type is ambiguous"),
            "{types:?}: {head}"
        );
    }
    assert_eq!(gw.mock.count(), 0, "nothing reached the provider");
}

/// A Realtime handshake naming `model` twice: keygate admitted the first, the query went
/// to the provider as it was.
#[tokio::test]
async fn a_realtime_query_naming_two_models_is_refused() {
    let gw = Gateway::start();
    let req = format!(
        "GET /openai/v1/realtime?model=gpt-realtime&model=gpt-realtime-unlisted HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: Bearer {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        gw.port, gw.secrets.bearer
    );
    let resp = raw(gw.port, req.as_bytes());
    let head: String = resp.chars().take(300).collect();
    assert!(resp.starts_with("HTTP/1.1 400"), "{head}");
    assert!(resp.contains("named twice"), "{head}");
    assert_eq!(gw.mock.count(), 0, "nothing reached the provider");
}

/// Every site on a route shares the provider's account: what it stores (files, batches,
/// stored responses, cached contents, ...) must not be listed, read or deleted through
/// keygate by another site, unless the route opts in to every endpoint.
#[tokio::test]
async fn stored_objects_of_the_shared_provider_account_are_not_reachable() {
    let stored = [
        ("GET", "/openai/v1/files", ""),
        ("GET", "/openai/v1/files/file-abc/content", ""),
        ("DELETE", "/openai/v1/files/file-abc", ""),
        ("GET", "/openai/v1/batches", ""),
        (
            "POST",
            "/openai/v1/vector_stores/vs_1/search",
            r#"{"query":"x"}"#,
        ),
        ("GET", "/openai/v1/responses/resp_1", ""),
        ("DELETE", "/openai/v1/responses/resp_1", ""),
        ("GET", "/openai/v1/chat/completions/chatcmpl-1/messages", ""),
        ("GET", "/anthropic/v1/messages/batches", ""),
        ("GET", "/gemini/v1beta/cachedContents", ""),
        ("GET", "/gemini/v1beta/batches/b1", ""),
    ];
    let gw = Gateway::start();
    for (method, path, body) in stored {
        let r = gw.call("alpha.k1", method, path, body).await;
        r.assert_error(403, "forbidden");
        assert!(
            r.body.contains("not served on this route"),
            "{method} {path}: {}",
            r.body
        );
    }
    // A background response is read back later, from a stored response.
    let background = r#"{"model":"gpt-4o","input":"hi","background":true}"#;
    let r = gw
        .post_signed("/openai/v1/responses", background, &[])
        .await;
    r.assert_error(403, "forbidden");
    assert_eq!(gw.mock.count(), 0, "the provider never saw them");
    // The stateless endpoints are served as before.
    let ok = gw.call("alpha.k1", "GET", "/openai/v1/models", "").await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let chat = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
    let ok = gw
        .post_signed("/openai/v1/chat/completions", chat, &[])
        .await;
    assert_eq!(ok.status, 200, "{}", ok.body);

    // A route that opts in (`stored_objects: true`) forwards them.
    let gw = Gateway::start_with(Options {
        route_extra: "    stored_objects: true\n".into(),
        ..Options::default()
    });
    // (The OpenAI route lists models: a body that names none is refused for that.)
    let bodiless: Vec<_> = stored.iter().filter(|(_, _, b)| b.is_empty()).collect();
    for (method, path, _) in &bodiless {
        let r = gw.call("alpha.k1", method, path, "").await;
        assert_ne!(r.status, 403, "{method} {path}: {}", r.body);
    }
    assert_eq!(gw.mock.count(), bodiless.len() as u64);
}
