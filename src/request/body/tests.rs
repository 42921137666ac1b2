use super::*;
use crate::config::{load_str, LoadOptions, Runtime};

fn rt(kind: &str, models: &str, max_tokens: &str) -> Runtime {
    let text = format!(
        r#"
server:
  listen: [{{ addr: "127.0.0.1:8080" }}]
upstreams:
  up:
    kind: {kind}
    url: "http://127.0.0.1:9"
    credentials: [{{ id: c, secret: "sk-test-credential-000000000" }}]
routes:
  - prefix: "/p/"
    upstream: up
{models}{max_tokens}
"#
    );
    load_str(&text, LoadOptions { demo: true }).unwrap()
}

const CT: Option<&str> = Some("application/json");

#[test]
fn duplicate_keys_are_refused_at_any_depth() {
    assert!(parse_strict(br#"{"model":"a","model":"b"}"#).is_err());
    assert!(parse_strict(br#"{"x":{"y":1,"y":2}}"#).is_err());
    assert!(parse_strict(br#"[{"y":1},{"y":2}]"#).is_ok());
}

#[test]
fn deep_nesting_and_huge_numbers_are_refused() {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(parse_strict(deep.as_bytes()).is_err());
    assert!(parse_strict(b"{\"n\": 1e999}").is_err());
    assert!(parse_strict(b"{\"a\":1} trailing").is_err());
}

#[test]
fn model_allow_list() {
    let rt = rt("openai", "    models: [\"gpt-4o\"]\n", "");
    let route = &rt.routes[0];
    assert!(check(
        route,
        "POST",
        "/v1/chat/completions",
        CT,
        br#"{"model":"gpt-4o"}"#
    )
    .is_ok());
    let e = check(
        route,
        "POST",
        "/v1/chat/completions",
        CT,
        br#"{"model":"gpt-5"}"#,
    )
    .unwrap_err();
    assert_eq!(e.code.status(), 403);
    let e = check(
        route,
        "POST",
        "/v1/chat/completions",
        CT,
        br#"{"messages":[]}"#,
    )
    .unwrap_err();
    assert_eq!(e.code.status(), 403);
    // No body (GET /v1/models) is fine.
    assert!(check(route, "GET", "/v1/models", None, b"").is_ok());
}

#[test]
fn non_json_bodies_are_refused() {
    let rt = rt("openai", "", "");
    let route = &rt.routes[0];
    assert_eq!(
        check(route, "POST", "/v1/x", Some("text/plain"), b"{}")
            .unwrap_err()
            .code
            .status(),
        400
    );
    assert_eq!(
        check(route, "POST", "/v1/x", CT, b"[1,2]")
            .unwrap_err()
            .code
            .status(),
        400
    );
    assert_eq!(
        check(route, "POST", "/v1/x", CT, b"{\"a\":")
            .unwrap_err()
            .code
            .status(),
        400
    );
    assert_eq!(
        check(route, "POST", "/v1/x", CT, b"\xff\xfe")
            .unwrap_err()
            .code
            .status(),
        400
    );
    assert!(check(
        route,
        "POST",
        "/v1/x",
        Some("application/json; charset=utf-8"),
        b"{}"
    )
    .is_ok());
}

#[test]
fn max_tokens_is_clamped_or_inserted() {
    let rt = rt("openai", "", "    max_tokens: 100\n");
    let route = &rt.routes[0];
    let out = check(
        route,
        "POST",
        "/v1/chat/completions",
        CT,
        br#"{"model":"m","max_tokens":5000}"#,
    )
    .unwrap();
    let v: Value = serde_json::from_slice(&out.rewritten.unwrap()).unwrap();
    assert_eq!(v["max_tokens"], 100);
    let out = check(
        route,
        "POST",
        "/v1/chat/completions",
        CT,
        br#"{"model":"m","max_tokens":50}"#,
    )
    .unwrap();
    assert!(
        out.rewritten.is_none(),
        "under the cap the body is forwarded untouched"
    );
    let out = check(
        route,
        "POST",
        "/v1/chat/completions",
        CT,
        br#"{"model":"m"}"#,
    )
    .unwrap();
    let v: Value = serde_json::from_slice(&out.rewritten.unwrap()).unwrap();
    assert_eq!(v["max_completion_tokens"], 100);
    // Embeddings take no output cap.
    assert!(
        check(route, "POST", "/v1/embeddings", CT, br#"{"model":"m"}"#)
            .unwrap()
            .rewritten
            .is_none()
    );
    assert_eq!(
        check(
            route,
            "POST",
            "/v1/chat/completions",
            CT,
            br#"{"max_tokens":"lots"}"#
        )
        .unwrap_err()
        .code
        .status(),
        400
    );
}

#[test]
fn gemini_model_comes_from_path_and_cap_goes_in_generation_config() {
    let rt = rt(
        "gemini",
        "    models: [\"gemini-1.5-flash\"]\n",
        "    max_tokens: 64\n",
    );
    let route = &rt.routes[0];
    let out = check(
        route,
        "POST",
        "/v1beta/models/gemini-1.5-flash:generateContent",
        CT,
        br#"{"contents":[]}"#,
    )
    .unwrap();
    assert_eq!(out.model.as_deref(), Some("gemini-1.5-flash"));
    let v: Value = serde_json::from_slice(&out.rewritten.unwrap()).unwrap();
    assert_eq!(v["generationConfig"]["maxOutputTokens"], 64);
    assert!(check(
        route,
        "POST",
        "/v1beta/models/gemini-pro:generateContent",
        CT,
        b"{}"
    )
    .is_err());
}
