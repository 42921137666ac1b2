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

/// [`check_with`] under the route's own PII setting.
fn check(
    route: &Route,
    method: &str,
    upstream_path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<BodyOutcome, GatewayError> {
    let pii = route.pii.as_deref();
    check_with(route, pii, method, upstream_path, content_type, body)
}

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
fn several_choices_share_the_output_cap() {
    let rt = rt("openai", "", "    max_tokens: 100\n");
    let route = &rt.routes[0];
    let forwarded = |path: &str, body: &[u8]| -> Value {
        let out = check(route, "POST", path, CT, body).unwrap();
        serde_json::from_slice(&out.rewritten.unwrap()).unwrap()
    };
    // Under the cap for one choice, over it for four: each gets a quarter.
    let v = forwarded(
        "/v1/chat/completions",
        br#"{"model":"m","n":4,"max_tokens":50}"#,
    );
    assert_eq!(v["max_tokens"], 25);
    let v = forwarded("/v1/chat/completions", br#"{"model":"m","n":3}"#);
    assert_eq!(v["max_completion_tokens"], 33);
    let v = forwarded("/v1/completions", br#"{"model":"m","best_of":5,"n":2}"#);
    assert_eq!(v["max_tokens"], 20);
    // A trailing slash is the same endpoint.
    let v = forwarded("/v1/chat/completions/", br#"{"model":"m","n":2}"#);
    assert_eq!(v["max_completion_tokens"], 50);
    for bad in [
        &br#"{"model":"m","n":101}"#[..],
        br#"{"model":"m","n":0}"#,
        br#"{"model":"m","n":"2"}"#,
    ] {
        let e = check(route, "POST", "/v1/chat/completions", CT, bad).unwrap_err();
        assert_eq!(e.code.status(), 400);
    }
    let rt = rt_gemini_capped();
    let out = check(
        &rt.routes[0],
        "POST",
        "/v1beta/models/g:generateContent",
        CT,
        br#"{"contents":[],"generationConfig":{"candidateCount":4}}"#,
    )
    .unwrap();
    let v: Value = serde_json::from_slice(&out.rewritten.unwrap()).unwrap();
    assert_eq!(v["generationConfig"]["maxOutputTokens"], 25);
    // Gemini takes the proto names too; keygate, reading the JSON names, would pass
    // eight candidates of the whole cap each.
    for alias in [
        &br#"{"contents":[],"generationConfig":{"candidate_count":8,"maxOutputTokens":100}}"#[..],
        br#"{"contents":[],"generationConfig":{"max_output_tokens":100000}}"#,
        br#"{"contents":[],"generation_config":{"candidateCount":8}}"#,
    ] {
        let path = "/v1beta/models/g:generateContent";
        assert_eq!(refused(&rt.routes[0], path, alias), 400);
    }
}

#[test]
fn openai_endpoints_of_other_providers_are_read_as_openai_bodies() {
    let rt = rt_gemini_capped();
    let route = &rt.routes[0];
    let out = check(
        route,
        "POST",
        "/v1beta/openai/chat/completions",
        CT,
        br#"{"model":"gemini-2.0-flash","n":2,"max_tokens":65536}"#,
    )
    .unwrap();
    assert_eq!(out.model.as_deref(), Some("gemini-2.0-flash"));
    let v: Value = serde_json::from_slice(&out.rewritten.unwrap()).unwrap();
    assert_eq!(v["max_tokens"], 50);
    assert!(v.get("stream_options").is_none());
    assert_eq!(
        body_format(UpstreamKind::Anthropic, "/v1/chat/completions"),
        UpstreamKind::OpenAiCompatible
    );
    assert_eq!(
        body_format(UpstreamKind::Anthropic, "/v1/messages"),
        UpstreamKind::Anthropic
    );
    assert_eq!(
        body_format(UpstreamKind::OpenAi, "/v1/chat/completions"),
        UpstreamKind::OpenAi
    );
    // Batches carry requests keygate does not check one by one: refused under a cap.
    let path = "/v1beta/models/g:batchGenerateContent";
    assert_eq!(refused(route, path, br#"{"batch":{}}"#), 400);
    // An embedding batch generates nothing to cap (google-genai sends every
    // `embed_content` so): it passes.
    let embed = br#"{"requests":[{"model":"models/g","content":{"parts":[{"text":"hi"}]}}]}"#;
    assert!(check(
        route,
        "POST",
        "/v1beta/models/g:batchEmbedContents",
        CT,
        embed
    )
    .is_ok());
}

fn rt_gemini_capped() -> Runtime {
    rt("gemini", "", "    max_tokens: 100\n")
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

mod scan_agrees_with_tree {
    use super::*;
    use proptest::prelude::*;

    /// JSON text (not a `Value`, so duplicate keys and escapes can be generated) built
    /// from the members the scan reads, at any depth.
    fn json_text() -> impl Strategy<Value = String> {
        let key = prop::sample::select(vec![
            "model",
            "stream",
            "max_tokens",
            "max_completion_tokens",
            "max_output_tokens",
            "stream_options",
            "include_usage",
            "generationConfig",
            "maxOutputTokens",
            "messages",
            "mo\\u0064el",
        ]);
        let leaf = prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            Just("false".to_string()),
            (0u64..300).prop_map(|n| n.to_string()),
            Just("-1".to_string()),
            Just("2.5".to_string()),
            Just("\"gpt-4o\"".to_string()),
            Just("\"gpt-\\u0034o\"".to_string()),
            Just("\"other\"".to_string()),
            Just("{\"include_usage\":true}".to_string()),
            Just("{}".to_string()),
        ];
        let object = |key: BoxedStrategy<&'static str>, value: BoxedStrategy<String>| {
            prop::collection::vec((key, value), 0..6).prop_map(|kv| {
                let members: Vec<String> = kv.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                format!("{{{}}}", members.join(","))
            })
        };
        let key = key.boxed();
        let k = key.clone();
        let value = leaf.clone().prop_recursive(3, 30, 5, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                object(k.clone(), inner),
            ]
        });
        // Mostly objects at the top (what the decisions are about), sometimes anything.
        let member = prop_oneof![3 => leaf, 1 => value.clone()].boxed();
        prop_oneof![4 => object(key, member), 1 => value]
    }

    type Seen = Result<(Option<String>, bool, Option<Vec<u8>>), (u16, String)>;

    fn outcome(route: &Route, path: &str, body: &[u8], force_tree: bool) -> Seen {
        check_inner(route, None, "POST", path, CT, body, force_tree)
            .map(|o| (o.model, o.stream, o.rewritten.map(|b| b.to_vec())))
            .map_err(|e| (e.code.status(), e.message))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]
        /// The scan reads the members as the tree would, and refuses what it refuses.
        #[test]
        fn scan_reads_what_the_tree_holds(body in json_text()) {
            let tree = parse_strict(body.as_bytes());
            let top = scan::top(body.as_bytes());
            prop_assert_eq!(tree.is_err(), top.is_err(), "{}", body);
            let (Ok(tree), Ok(top)) = (tree, top) else { return Ok(()) };
            let Value::Object(obj) = tree else {
                prop_assert!(top.is_none());
                return Ok(());
            };
            let top = top.expect("an object");
            let model = match obj.get("model") {
                Some(Value::String(s)) => scan::Model::Str(crate::json::Key(s.clone().into())),
                Some(_) => scan::Model::Other,
                None => scan::Model::Absent,
            };
            prop_assert_eq!(&top.model, &model);
            prop_assert_eq!(top.stream, obj.get("stream") == Some(&Value::Bool(true)));
            for (i, f) in scan::CAP_FIELDS.iter().enumerate() {
                let want = match obj.get(*f) {
                    None => scan::Int::Absent,
                    Some(Value::Null) => scan::Int::Null,
                    Some(v) => v.as_u64().map_or(scan::Int::Other, scan::Int::U64),
                };
                prop_assert_eq!(top.caps[i], want, "{}", f);
            }
            let usage = obj
                .get("stream_options")
                .and_then(Value::as_object)
                .and_then(|o| o.get("include_usage"))
                == Some(&Value::Bool(true));
            prop_assert_eq!(top.stream_usage, usage);
        }

        /// The scan decides exactly as the tree does: same model, stream flag, rewritten
        /// body and error, for every upstream kind, with and without an output cap.
        #[test]
        fn same_decision(body in json_text(), kind in 0usize..4, capped: bool, stream_path: bool, listed: bool) {
            let kind = ["openai", "anthropic", "gemini", "openai-compatible"][kind];
            let cap = if capped { "    max_tokens: 100\n" } else { "" };
            let models = if listed { "    models: [\"gpt-4o\", \"other\"]\n" } else { "" };
            let rt = rt(kind, models, cap);
            let path = match (kind, stream_path) {
                ("gemini", true) => "/v1beta/models/gpt-4o:streamGenerateContent",
                ("gemini", false) => "/v1beta/models/gpt-4o:generateContent",
                ("anthropic", _) => "/v1/messages",
                _ => "/v1/chat/completions",
            };
            let route = &rt.routes[0];
            let wrapped = format!("{{\"model\":\"gpt-4o\",\"x\":{body}}}");
            for b in [body.as_str(), wrapped.as_str()] {
                prop_assert_eq!(outcome(route, path, b.as_bytes(), false), outcome(route, path, b.as_bytes(), true), "{}", b);
            }
        }
    }
}

#[test]
fn stream_usage_is_asked_for_on_chat_completions_only() {
    let rt = rt("openai", "", "");
    let route = &rt.routes[0];
    let body = br#"{"model":"gpt-4o","stream":true,"input":"hi"}"#;
    let out = check(route, "POST", "/v1/chat/completions", CT, body).unwrap();
    let v: Value = serde_json::from_slice(&out.rewritten.unwrap()).unwrap();
    assert_eq!(v["stream_options"]["include_usage"], true);
    // A Responses stream reports its usage by itself and takes no `stream_options`.
    let out = check(route, "POST", "/v1/responses", CT, body).unwrap();
    assert!(out.rewritten.is_none());
}

/// Anthropic's legacy Text Completions (`/v1/complete`) takes `max_tokens_to_sample`:
/// the route's cap skipped it.
#[test]
fn anthropic_text_completions_take_the_cap() {
    let rt = rt("anthropic", "", "    max_tokens: 1024\n");
    let route = &rt.routes[0];
    for (body, want) in [
        (&br#"{"model":"m","prompt":"\n\nHuman: hi\n\nAssistant:","max_tokens_to_sample":100000}"#[..], 1024),
        (br#"{"model":"m","prompt":"\n\nHuman: hi\n\nAssistant:"}"#, 1024),
        (br#"{"model":"m","prompt":"x","max_tokens_to_sample":10}"#, 10),
    ] {
        let out = check(route, "POST", "/v1/complete", CT, body).unwrap();
        let v: Value = out
            .rewritten
            .map(|b| serde_json::from_slice(&b).unwrap())
            .unwrap_or_else(|| serde_json::from_slice(body).unwrap());
        assert_eq!(v["max_tokens_to_sample"], want, "{v}");
        assert!(v.get("max_tokens").is_none(), "{v}");
    }
    // On Messages it is no output limit: `max_tokens` is still inserted.
    let body = br#"{"model":"m","messages":[],"max_tokens_to_sample":1}"#;
    let out = check(route, "POST", "/v1/messages", CT, body).unwrap();
    let v: Value = serde_json::from_slice(&out.rewritten.unwrap()).unwrap();
    assert_eq!(v["max_tokens"], 1024, "{v}");
}

/// A Gemini path with two `models` segments: keygate read the first, the endpoint filter
/// matched the last two, and a proxy routing on the last would serve that one.
#[test]
fn a_gemini_path_names_one_model() {
    let rt = rt("gemini", "    models: [\"gemini-flash\"]\n", "");
    let route = &rt.routes[0];
    let body = br#"{"contents":[]}"#;
    for path in [
        "/v1beta/models/gemini-flash/models/gemini-ultra:generateContent",
        "/v1beta/models/gemini-flash:generateContent/models/gemini-ultra:generateContent",
    ] {
        assert_eq!(refused(route, path, body), 400, "{path}");
    }
    // A long-running operation is polled under its model, which is the one segment
    // (a route with a list, and one without).
    let open = rt_gemini_capped();
    let poll = "/v1beta/models/veo-3/operations/op-1";
    assert!(check(&open.routes[0], "GET", poll, None, b"").is_ok());
    let listed = "/v1beta/models/gemini-flash/operations/op-1";
    assert!(check(route, "GET", listed, None, b"").is_ok());
    let unlisted = check(route, "GET", poll, None, b"").unwrap_err();
    assert_eq!(unlisted.code.status(), 403);
    let out = check(
        route,
        "POST",
        "/v1beta/models/gemini-flash:generateContent",
        CT,
        body,
    )
    .unwrap();
    assert_eq!(out.model.as_deref(), Some("gemini-flash"));
}

/// The status of a POST `check` refuses.
fn refused(route: &Route, path: &str, body: &[u8]) -> u16 {
    check(route, "POST", path, CT, body)
        .unwrap_err()
        .code
        .status()
}

/// Anthropic requires `thinking.budget_tokens` below `max_tokens`: lowering `max_tokens`
/// to the cap under a larger budget made a request the provider refused.
#[test]
fn a_thinking_budget_is_lowered_with_the_cap() {
    let capped = rt("anthropic", "", "    max_tokens: 4096\n");
    let route = &capped.routes[0];
    let body = br#"{"model":"m","max_tokens":16000,"thinking":{"type":"enabled","budget_tokens":10000},"messages":[]}"#;
    let out = check(route, "POST", "/v1/messages", CT, body).unwrap();
    let v: Value = serde_json::from_slice(&out.rewritten.unwrap()).unwrap();
    assert_eq!(v["max_tokens"], 4096);
    assert_eq!(v["thinking"]["budget_tokens"], 4095);
    // A budget already below the cap is left alone.
    let body = br#"{"model":"m","max_tokens":16000,"thinking":{"type":"enabled","budget_tokens":2000},"messages":[]}"#;
    let out = check(route, "POST", "/v1/messages", CT, body).unwrap();
    let v: Value = serde_json::from_slice(&out.rewritten.unwrap()).unwrap();
    assert_eq!(v["thinking"]["budget_tokens"], 2000);
    // A cap with no room for the smallest budget: keygate's own 400.
    let small = rt("anthropic", "", "    max_tokens: 1000\n");
    let body = br#"{"model":"m","max_tokens":16000,"thinking":{"type":"enabled","budget_tokens":2000},"messages":[]}"#;
    assert_eq!(refused(&small.routes[0], "/v1/messages", body), 400);
}
