use super::*;
use std::time::Duration;

const GOOD: &str = r#"
server:
  listen:
    - addr: "127.0.0.1:8080"
  hostnames: ["localhost:8080"]
upstreams:
  openai:
    kind: openai
    url: "http://127.0.0.1:9999"
    credentials:
      - { id: prod-1, secret: "sk-literal-for-tests-000000000000" }
routes:
  - prefix: "/openai/"
    upstream: openai
    models: ["gpt-4o"]
tiers:
  free: { requests_per_minute: 10 }
sites:
  - id: demo
    tier: free
    keys:
      - { id: demo.k1, auth: hmac, secret: "kgs_literal_for_tests_0000000000" }
"#;

fn demo() -> LoadOptions {
    LoadOptions { demo: true }
}

/// Load GOOD with one textual replacement and return the error lines.
fn errors_after(from: &str, to: &str) -> Vec<String> {
    assert!(GOOD.contains(from), "test fixture lacks {from:?}");
    let text = GOOD.replacen(from, to, 1);
    match load_str(&text, demo()) {
        Ok(_) => vec![],
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

fn assert_error(from: &str, to: &str, expected: &str) {
    let errs = errors_after(from, to);
    assert!(
        errs.iter().any(|e| e.contains(expected)),
        "expected {expected:?} in {errs:?}"
    );
}

#[test]
fn good_config_loads() {
    let rt = load_str(GOOD, demo()).unwrap();
    assert_eq!(rt.routes.len(), 1);
    assert_eq!(rt.upstreams[0].authority, "127.0.0.1:9999");
    assert!(rt.route_for("/openai/v1/models").is_some());
    assert!(rt.route_for("/other").is_none());
}

#[test]
fn dangling_upstream_is_named() {
    assert_error(
        "upstream: openai",
        "upstream: missing",
        r#"routes[0].upstream: unknown upstream "missing""#,
    );
}

#[test]
fn unknown_tier_is_named() {
    assert_error(
        "tier: free",
        "tier: gold",
        r#"sites[0].tier: unknown tier "gold""#,
    );
}

#[test]
fn unknown_key_is_named_with_path() {
    assert_error(
        "    tier: free",
        "    tier: free\n    colour: blue",
        "sites[0]: unknown field `colour`",
    );
}

#[test]
fn wrong_type_is_named_with_path() {
    assert_error(
        "requests_per_minute: 10",
        "requests_per_minute: lots",
        "tiers.free.requests_per_minute",
    );
}

#[test]
fn a_secret_in_the_wrong_place_is_not_repeated_in_the_error() {
    for (from, to) in [
        // OTEL_EXPORTER_OTLP_HEADERS's format where a map is expected.
        (
            "tiers:",
            "telemetry: { otlp: { endpoint: \"http://127.0.0.1:4318\", headers: \"x-api-key=S3CRET-otlp\" } }\ntiers:",
        ),
        // A Redis URL with its password where the `redis:` mapping is expected.
        ("tiers:", "fleet: { redis: \"redis://:S3CRET-redis@10.0.0.5:6379\" }\ntiers:"),
        // A provider key where the list of credentials is expected.
        (
            "credentials:\n      - { id: prod-1, secret: \"sk-literal-for-tests-000000000000\" }",
            "credentials: \"sk-S3CRET-provider\"",
        ),
        // A site secret where the auth mode is expected.
        ("auth: hmac", "auth: kgs_S3CRET_site"),
        // A key in the URL's query, as Gemini's examples write it.
        (
            "url: \"http://127.0.0.1:9999\"",
            "url: \"https://generativelanguage.googleapis.com/v1beta?key=AIzaS3CRET\"",
        ),
    ] {
        let errs = errors_after(from, to);
        assert!(!errs.is_empty(), "{to} was accepted");
        assert!(errs.iter().all(|e| !e.contains("S3CRET")), "{errs:?}");
    }
}

#[test]
fn an_upstream_url_with_user_info_and_a_braced_key_prefix_are_refused() {
    assert_error(
        "url: \"http://127.0.0.1:9999\"",
        "url: \"http://user:pass@127.0.0.1:9999\"",
        "upstreams.openai.url: is not an http(s)://host[:port][/path] URL",
    );
    assert_error(
        "tiers:",
        "fleet: { redis: { url: \"redis://127.0.0.1:6379\", key_prefix: \"a{b\" } }\ntiers:",
        "fleet.redis.key_prefix: must be at most 64 characters without spaces or braces",
    );
}

#[test]
fn work_stealing_is_off_unless_turned_on() {
    let rt = load_str(GOOD, demo()).unwrap();
    assert!(!rt.process.work_stealing);
    assert!(!crate::server::pingora_conf(&rt, false).work_stealing);
    let on = GOOD.replacen("  hostnames:", "  work_stealing: true\n  hostnames:", 1);
    let rt = load_str(&on, demo()).unwrap();
    assert!(rt.process.work_stealing);
    assert!(crate::server::pingora_conf(&rt, false).work_stealing);
    assert_error(
        "  hostnames:",
        "  work_stealing: sometimes\n  hostnames:",
        "server.work_stealing",
    );
}

#[test]
fn credential_that_cannot_be_a_header_is_named() {
    assert_error(
        "sk-literal-for-tests-000000000000",
        "sk-literal for-tests-000000000000",
        "upstreams.openai.credentials[0].secret: contains spaces or control characters",
    );
}

#[test]
fn bad_listen_address_is_named() {
    assert_error(
        "127.0.0.1:8080\"",
        "not-an-address\"",
        "server.listen[0].addr",
    );
}

#[test]
fn unknown_kind_is_named() {
    assert_error(
        "kind: openai",
        "kind: openia",
        r#"upstreams.openai.kind: unknown kind "openia""#,
    );
}

#[test]
fn bad_url_is_named() {
    assert_error("http://127.0.0.1:9999", "ftp://x", "upstreams.openai.url");
}

#[test]
fn unknown_master_key_is_named() {
    assert_error(
        "secret: \"kgs_literal_for_tests_0000000000\"",
        "secret: \"enc:v1:k2025:AAAA\"",
        r#"sites[0].keys[0].secret: unknown master key "k2025""#,
    );
}

#[test]
fn literal_secret_refused_outside_demo() {
    let e = load_str(GOOD, LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("upstreams.openai.credentials[0].secret: plain-text secrets are refused"),
        "{e}"
    );
    assert!(
        e.contains("sites[0].keys[0].secret: plain-text secrets are refused"),
        "{e}"
    );
    assert!(
        !e.contains("kgs_literal_for_tests"),
        "secret leaked into error: {e}"
    );
}

#[test]
fn missing_env_secret_is_named() {
    assert_error(
        "secret: \"kgs_literal_for_tests_0000000000\"",
        "secret: \"env:KEYGATE_TEST_SURELY_UNSET\"",
        "sites[0].keys[0].secret: environment variable KEYGATE_TEST_SURELY_UNSET is not set",
    );
}

#[test]
fn duplicate_key_id_is_named() {
    assert_error(
        "      - { id: demo.k1, auth: hmac, secret: \"kgs_literal_for_tests_0000000000\" }",
        "      - { id: demo.k1, auth: hmac, secret: \"kgs_literal_for_tests_0000000000\" }\n      - { id: demo.k1, auth: hmac, secret: \"kgs_literal_for_tests_0000000001\" }",
        r#"sites[0].keys[1].id: duplicate key id "demo.k1""#,
    );
}

#[test]
fn bad_bearer_hash_is_named() {
    assert_error(
        "{ id: demo.k1, auth: hmac, secret: \"kgs_literal_for_tests_0000000000\" }",
        "{ id: demo.k1, auth: bearer, hash: \"md5:abc\" }",
        "sites[0].keys[0].hash",
    );
}

#[test]
fn unknown_auth_is_named() {
    assert_error(
        "auth: hmac",
        "auth: password",
        "sites[0].keys[0].auth: unknown auth mode of 8 characters",
    );
}

#[test]
fn site_route_must_exist() {
    assert_error(
        "    tier: free",
        "    tier: free\n    routes: [\"/nope/\"]",
        r#"sites[0].routes[0]: unknown route prefix "/nope/""#,
    );
}

#[test]
fn bad_prefix_is_named() {
    assert_error(
        "prefix: \"/openai/\"",
        "prefix: \"/openai/../x/\"",
        "routes[0].prefix",
    );
    assert_error(
        "prefix: \"/openai/\"",
        "prefix: \"openai\"",
        "routes[0].prefix: must start with",
    );
}

#[test]
fn zero_limit_is_named() {
    assert_error(
        "requests_per_minute: 10",
        "requests_per_minute: 0",
        "tiers.free.requests_per_minute: must be at least 1",
    );
}

#[test]
fn wildcard_cors_is_refused() {
    assert_error(
        "    tier: free",
        "    tier: free\n    cors_origins: [\"*\"]",
        "sites[0].cors_origins[0]: wildcard",
    );
}

#[test]
fn missing_tls_file_is_named() {
    assert_error(
        "    - addr: \"127.0.0.1:8080\"",
        "    - addr: \"127.0.0.1:8080\"\n      tls: { cert: /nonexistent/server.crt, key: /nonexistent/server.key }",
        "server.listen[0].tls.cert: file not found",
    );
}

#[test]
fn all_errors_are_reported_at_once() {
    let text = GOOD
        .replacen("upstream: openai", "upstream: missing", 1)
        .replacen("tier: free", "tier: gold", 1);
    let e = load_str(&text, demo()).unwrap_err();
    assert!(e.0.len() >= 2, "{e}");
}

#[test]
fn debug_output_redacts_secrets() {
    let raw = format!("{:?}", parse(GOOD).unwrap());
    assert!(!raw.contains("sk-literal-for-tests"), "{raw}");
    assert!(!raw.contains("kgs_literal_for_tests"), "{raw}");
    let rt = load_str(GOOD, demo()).unwrap();
    let dbg = format!("{rt:?}");
    assert!(!dbg.contains("sk-literal-for-tests"), "{dbg}");
    assert!(!dbg.contains("kgs_literal_for_tests"), "{dbg}");
}

#[test]
fn longest_prefix_wins_at_segment_boundaries() {
    let text = GOOD.replacen(
        "routes:\n",
        "routes:\n  - prefix: \"/openai/v2/\"\n    upstream: openai\n  - prefix: \"/open\"\n    upstream: openai\n",
        1,
    );
    let rt = load_str(&text, demo()).unwrap();
    assert_eq!(rt.route_for("/openai/v2/x").unwrap().prefix, "/openai/v2/");
    assert_eq!(rt.route_for("/openai/v1/x").unwrap().prefix, "/openai/");
    assert_eq!(rt.route_for("/open/x").unwrap().prefix, "/open");
    assert!(rt.route_for("/openx").is_none());
}

fn with_fleet(fleet: &str) -> String {
    format!("{GOOD}fleet:\n{fleet}")
}

fn fleet_errors(fleet: &str) -> Vec<String> {
    match load_str(&with_fleet(fleet), demo()) {
        Ok(_) => vec![],
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn fleet_defaults_apply() {
    let rt = load_str(
        &with_fleet("  redis: { url: \"redis://127.0.0.1:6379\" }\n"),
        demo(),
    )
    .unwrap();
    let f = rt.fleet.unwrap();
    assert_eq!(f.timeout, Duration::from_millis(50));
    assert_eq!(f.key_prefix, "keygate:");
    assert_eq!(f.nodes, 1);
    assert_eq!(f.sync_interval, Duration::from_millis(100));
    assert_eq!(f.nonces_when_down, NonceFallback::FailClosed);
}

#[test]
fn fleet_without_redis_stays_local_with_a_warning() {
    let rt = load_str(&with_fleet("  nodes: 3\n"), demo()).unwrap();
    assert!(rt.fleet.is_none());
    assert!(rt.warnings.iter().any(|w| w.contains("process-local")));
}

#[test]
fn fleet_local_nonce_fallback_parses() {
    let rt = load_str(
        &with_fleet("  redis: { url: \"redis://h:1\" }\n  nodes: 3\n  on_redis_down: { nonces: local, local_window_s: 5 }\n"),
        demo(),
    )
    .unwrap();
    assert_eq!(
        rt.fleet.unwrap().nonces_when_down,
        NonceFallback::Local {
            window: Duration::from_secs(5)
        }
    );
}

#[test]
fn fleet_mistakes_are_named_with_paths() {
    let cases = [
        ("  redis: { url: \"http://h:1\" }\n", "fleet.redis.url: "),
        (
            "  redis: { url: \"redis://h:1\", timeout_ms: 0 }\n",
            "fleet.redis.timeout_ms: ",
        ),
        (
            "  redis: { url: \"redis://h:1\" }\n  nodes: 0\n",
            "fleet.nodes: ",
        ),
        (
            "  redis: { url: \"redis://h:1\" }\n  sync_interval_ms: 1\n",
            "fleet.sync_interval_ms: ",
        ),
        (
            "  redis: { url: \"redis://h:1\" }\n  on_redis_down: { nonces: maybe }\n",
            "fleet.on_redis_down.nonces: unknown policy",
        ),
        (
            "  redis: { url: \"redis://h:1\" }\n  on_redis_down: { local_window_s: 5 }\n",
            "fleet.on_redis_down.local_window_s: applies only",
        ),
        (
            "  redis: { url: \"redis://h:1\", db: 2 }\n",
            "fleet.redis: unknown field `db`",
        ),
    ];
    for (fleet, expected) in cases {
        let errs = fleet_errors(fleet);
        assert!(
            errs.iter().any(|e| e.contains(expected)),
            "expected {expected:?} in {errs:?}"
        );
    }
}

#[test]
fn redis_password_never_shows() {
    let fleet = "  redis: { url: \"redis://app:hunter2secret@h:6379/0\" }\n";
    let raw = format!("{:?}", parse(&with_fleet(fleet)).unwrap());
    assert!(!raw.contains("hunter2secret"), "{raw}");
    let rt = load_str(&with_fleet(fleet), demo()).unwrap();
    let f = rt.fleet.as_ref().unwrap();
    assert_eq!(f.redacted_url, "redis://app:***@h:6379/0");
    assert!(!format!("{rt:?}").contains("hunter2secret"));
    let bad = "  redis: { url: \"http://app:hunter2secret@h:6379\" }\n";
    let errs = fleet_errors(bad).join("\n");
    assert!(
        errs.contains("fleet.redis.url") && !errs.contains("hunter2secret"),
        "{errs}"
    );
}

#[test]
fn endless_secret_file_is_refused_not_read_forever() {
    assert_error(
        "secret: \"kgs_literal_for_tests_0000000000\"",
        "secret: \"file:/dev/zero\"",
        "sites[0].keys[0].secret: cannot read /dev/zero: file too large",
    );
}

#[test]
fn oversized_config_file_is_refused() {
    let err = load_file(Path::new("/dev/zero"), demo()).err().unwrap();
    assert!(err.to_string().contains("larger than"), "{err}");
}

#[test]
fn connection_limits_are_checked_and_named() {
    let with = |line: &str| GOOD.replacen("  hostnames:", &format!("  {line}\n  hostnames:"), 1);
    let errs = |line: &str| match load_str(&with(line), demo()) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    };
    assert!(errs("header_timeout_ms: 0").contains("server.header_timeout_ms: must be between"));
    assert!(errs("max_connections: 0").contains("server.max_connections: must be between"));
    assert!(errs("max_connections_per_ip: 0").contains("server.max_connections_per_ip"));
    assert!(errs("h2_max_concurrent_streams: 0").contains("server.h2_max_concurrent_streams"));
    let rt = load_str(&with("max_connections_per_ip: 3"), demo()).unwrap();
    assert_eq!(rt.server.max_connections_per_ip, 3);
    assert_eq!(rt.server.max_connections, 10_000);
    assert_eq!(rt.server.header_timeout, Duration::from_secs(10));
}

#[test]
fn pii_settings_load_per_route_and_site() {
    let text = GOOD
        .replacen(
            "    models: [\"gpt-4o\"]",
            "    models: [\"gpt-4o\"]\n    pii: { mode: pseudonymize, kinds: [email, ticket], patterns: [{ name: ticket, regex: \"TCK-[0-9]{6}\" }] }",
            1,
        )
        .replacen("    tier: free\n", "    tier: free\n    pii: { mode: off }\n", 1);
    let rt = load_str(&text, demo()).unwrap();
    let route = &rt.routes[0];
    let policy = route.pii.as_ref().unwrap();
    assert_eq!(policy.mode, crate::pii::PiiMode::Pseudonymize);
    let kinds: Vec<&str> = policy.detector.kinds().iter().map(|k| &*k.name).collect();
    assert_eq!(kinds, ["ticket", "email"]);
    assert!(
        route.pii_policy(rt.sites.first()).is_none(),
        "the site's off wins"
    );
    assert!(route.pii_policy(None).is_some());
}

#[test]
fn pii_mistakes_are_named() {
    let at = "    models: [\"gpt-4o\"]";
    let with = |pii: &str| format!("{at}\n    pii: {pii}");
    assert_error(
        at,
        &with("{ mode: anonymize }"),
        "routes[0].pii.mode: unknown mode \"anonymize\"",
    );
    assert_error(
        at,
        &with("{ mode: block, kinds: [email, passport] }"),
        "routes[0].pii.kinds[1]: unknown kind \"passport\"",
    );
    assert_error(
        at,
        &with("{ mode: block, patterns: [{ name: x, regex: \"(\" }] }"),
        "routes[0].pii.patterns[0].regex: not a regex",
    );
    assert_error(
        at,
        &with("{ mode: block, patterns: [{ name: x, regex: \"a*\" }] }"),
        "routes[0].pii.patterns[0].regex: matches the empty string",
    );
    assert_error(
        at,
        &with("{ mode: block, patterns: [{ name: email, regex: \"a\" }] }"),
        "routes[0].pii.patterns[0].name: duplicate kind \"email\"",
    );
    assert_error(
        at,
        &with("{ mode: block, colour: red }"),
        "unknown field `colour`",
    );
}

#[test]
fn auth_failure_limit_is_on_by_default_and_each_form_has_its_own_error() {
    use crate::limits::ip::AuthFailureLimit;
    let rt = load_str(GOOD, demo()).unwrap();
    assert_eq!(
        rt.server.auth_failure_limit,
        Some(AuthFailureLimit::DEFAULT)
    );
    let off = GOOD.replacen("  hostnames:", "  auth_failure_limit: off\n  hostnames:", 1);
    assert_eq!(
        load_str(&off, demo()).unwrap().server.auth_failure_limit,
        None
    );
    let at = "  hostnames:";
    assert_error(
        at,
        "  auth_failure_limit: { per_minute: 5, cooldwn_s: 9 }\n  hostnames:",
        "server.auth_failure_limit: unknown field `cooldwn_s`",
    );
    assert_error(
        at,
        "  auth_failure_limit: of\n  hostnames:",
        "server.auth_failure_limit: must be off or { per_minute, cooldown_s }",
    );
    assert_error(
        at,
        "  auth_failure_limit: { per_minute: 0, cooldown_s: 9 }\n  hostnames:",
        "server.auth_failure_limit.per_minute: must be at least 1",
    );
}

#[test]
fn admin_registration_and_key_lifecycle_errors_name_their_paths() {
    let errs = errors_after(
        "      - { id: demo.k1, auth: hmac,",
        "      - { id: demo.k1, expires_at: \"soon\", auth: hmac,",
    );
    assert!(
        errs[0].starts_with("sites[0].keys[0].expires_at"),
        "{errs:?}"
    );
    let errs = errors_after(
        "sites:",
        "admin: { keys: [] }\nregistration:\n  enabled: true\n  tier: gold\n  verify_url: \"ftp://x\"\n  email_from: \"not an address\"\n  smtp: { url: \"imap://mail\" }\n  code_ttl_s: 0\nsites:",
    );
    let paths: Vec<&str> = errs.iter().map(|e| e.split(':').next().unwrap()).collect();
    for want in [
        "admin.keys",
        "registration.tier",
        "registration.verify_url",
        "registration.email_from",
        "registration.smtp.url",
        "registration.code_ttl_s",
        "registration",
    ] {
        assert!(paths.contains(&want), "{want} missing in {errs:?}");
    }
    // Off: nothing under it is checked.
    let errs = errors_after("sites:", "registration: { enabled: false, tier: gold, verify_url: x, email_from: y, smtp: { url: z } }\nsites:");
    assert!(errs.is_empty(), "{errs:?}");
}

#[test]
fn an_https_otlp_endpoint_is_refused_and_an_http_one_loads() {
    let with = |endpoint: &str| {
        format!("tiers:\n  free: {{ requests_per_minute: 10 }}\ntelemetry:\n  otlp: {{ endpoint: \"{endpoint}\" }}")
    };
    let tiers = "tiers:\n  free: { requests_per_minute: 10 }";
    assert_error(
        tiers,
        &with("https://collector.example:4318"),
        "telemetry.otlp.endpoint: https is not supported",
    );
    assert!(errors_after(tiers, &with("http://127.0.0.1:4318")).is_empty());
    // Headers (a collector's key) in clear text only to loopback, or when allowed.
    let headed = |endpoint: &str, extra: &str| {
        format!("tiers:\n  free: {{ requests_per_minute: 10 }}\ntelemetry:\n  otlp: {{ endpoint: \"{endpoint}\", headers: {{ x-api-key: abc }}{extra} }}")
    };
    assert_error(
        tiers,
        &headed("http://otel-collector:4318", ""),
        "telemetry.otlp.headers: plain http to a collector off this machine",
    );
    for ok in [
        headed("http://otel-collector:4318", ", allow_plaintext: true"),
        headed("http://[::1]:4318", ""),
        headed("http://localhost:4318", ""),
    ] {
        assert!(errors_after(tiers, &ok).is_empty(), "{ok}");
    }
}

#[test]
fn otlp_header_values_are_secrets_when_they_carry_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    std::fs::write(&key, secret::MasterKey::generate_base64().as_bytes()).unwrap();
    let master = secret::MasterKey::from_base64(&std::fs::read_to_string(&key).unwrap()).unwrap();
    let token = dir.path().join("otlp.token");
    std::fs::write(&token, "hny-S3CRET-from-file\n").unwrap();
    let sealed = secret::encrypt(
        "mk1",
        &master,
        "telemetry/otlp/headers/x-api-key",
        b"S3CRET-sealed-otlp",
    );
    let for_other_place = secret::encrypt("mk1", &master, "fleet/redis/password", b"S3CRET-moved");
    let with = |headers: &str| {
        format!(
            "master_keys:\n  - {{ id: mk1, source: \"file:{}\" }}\ntelemetry:\n  otlp: {{ endpoint: \"http://127.0.0.1:4318\", headers: {{ {headers} }} }}\ntiers:",
            key.display()
        )
    };
    // A literal credential is refused outside --demo, by its YAML path, without its value.
    let text = GOOD.replacen(
        "tiers:",
        &with("x-api-key: S3CRET-literal, x-honeycomb-dataset: keygate"),
        1,
    );
    let e = load_str(&text, LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("telemetry.otlp.headers.x-api-key: this header carries a credential"),
        "{e}"
    );
    assert!(!e.contains("S3CRET"), "{e}");
    assert!(
        !e.contains("x-honeycomb-dataset"),
        "a plain setting is not a secret: {e}"
    );
    // An `enc:v1` value sealed for another place does not open here.
    let text = GOOD.replacen(
        "tiers:",
        &with(&format!("x-api-key: \"{for_other_place}\"")),
        1,
    );
    let e = load_str(&text, demo()).unwrap_err().to_string();
    assert!(
        e.contains("telemetry.otlp.headers.x-api-key: cannot decrypt"),
        "{e}"
    );
    // Sealed values and those under a credential's name are secrets: scanned for and
    // redacted like any other. A tenant name from a file is a setting.
    let tenant = dir.path().join("tenant");
    std::fs::write(&tenant, "tenant-prod-eu\n").unwrap();
    let headers = format!(
        "x-api-key: \"{sealed}\", x-honeycomb-team: \"file:{}\", x-honeycomb-dataset: keygate, x-scope-orgid: \"file:{}\"",
        token.display(),
        tenant.display()
    );
    let rt = load_str(&GOOD.replacen("tiers:", &with(&headers), 1), demo()).unwrap();
    let secrets = all_secret_strings(&rt);
    assert!(
        secrets.iter().any(|s| s == "S3CRET-sealed-otlp"),
        "sealed value is not scanned for"
    );
    assert!(
        secrets.iter().any(|s| s == "hny-S3CRET-from-file"),
        "file value is not scanned for"
    );
    assert!(
        !secrets
            .iter()
            .any(|s| s == "keygate" || s == "tenant-prod-eu"),
        "a setting is scanned for"
    );
    let debug = format!("{:?}", rt.otlp);
    assert!(!debug.contains("S3CRET"), "{debug}");
    let raw: raw::RawConfig =
        serde_yaml::from_str(&GOOD.replacen("tiers:", &with(&headers), 1)).unwrap();
    let places: Vec<_> = encrypted_values(&raw)
        .into_iter()
        .map(|(path, place, _)| (path, place))
        .collect();
    assert!(
        places.contains(&(
            "telemetry.otlp.headers.x-api-key".to_string(),
            "telemetry/otlp/headers/x-api-key".to_string()
        )),
        "{places:?}"
    );
    assert!(sensitive_files(&raw)
        .iter()
        .any(|(p, _)| p == "telemetry.otlp.headers.x-honeycomb-team"));
}

#[test]
fn a_send_timeout_out_of_range_is_named() {
    for bad in ["0", "3601"] {
        assert_error(
            "  hostnames:",
            &format!("  send_timeout_s: {bad}\n  hostnames:"),
            "server.send_timeout_s: must be between 1 and 3600",
        );
    }
    assert!(errors_after("  hostnames:", "  send_timeout_s: 5\n  hostnames:").is_empty());
}

#[test]
fn the_admin_api_in_clear_off_loopback_is_refused_unless_allowed() {
    let admin = |extra: &str| {
        format!("  admin_listen: \"0.0.0.0:9100\"\n  hostnames:|admin: {{ keys: [{{ id: ops, secret: \"kga_literal_for_tests_00000000000000\" }}]{extra} }}\ntiers:")
    };
    let with = |extra: &str| {
        let a = admin(extra);
        let (server, rest) = a.split_once('|').unwrap();
        GOOD.replacen("  hostnames:", server, 1)
            .replacen("tiers:", rest, 1)
    };
    let e = load_str(&with(""), demo()).unwrap_err().to_string();
    assert!(e.contains("admin.keys: the admin API answers with new client secrets, in clear on server.admin_listen 0.0.0.0:9100"), "{e}");
    let rt = load_str(&with(", allow_plaintext: true"), demo()).unwrap();
    let found = super::posture::posture(&rt);
    assert!(
        found.iter().any(|f| f.contains("the admin API")),
        "{found:?}"
    );
}
