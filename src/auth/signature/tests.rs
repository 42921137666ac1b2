use super::*;

const SECRET: &str = "kgs_test_7d1f4c2a9b8e6d5c4b3a29181706f5e4";
const BODY: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;

fn headers_with_digest(d: &str) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    h.insert("content-digest", d.parse().unwrap());
    h
}

/// Verify a request as the gateway would: parse, build the base, check the MAC.
fn verifies(
    method: &str,
    authority: &str,
    path: &str,
    query: Option<&str>,
    body: &[u8],
    input: &str,
    sig: &str,
) -> bool {
    let parsed = parse(&[input], &[sig], &HashSet::new()).unwrap();
    let headers = headers_with_digest(&content_digest(body));
    let parts = RequestParts {
        method,
        authority,
        path,
        query,
        headers: &headers,
    };
    let base = signature_base(&parts, &parsed).unwrap();
    verify_mac(SECRET.as_bytes(), &base, &parsed.signature)
}

#[test]
fn spec_vector_1_post() {
    let input = r#"sig1=("@method" "@authority" "@path" "@query" "content-digest");created=1767225600;keyid="demo.k1";alg="hmac-sha256";nonce="q7yN3lH0fI2xT8c4ZkPZVw";tag="keygate-v1""#;
    let sig = "sig1=:x11APkVs369hlKxqNj5RU9vwtLrew3FM1JqySfHp7bM=:";
    assert_eq!(
        content_digest(BODY.as_bytes()),
        "sha-256=:wNM38viEAZkBjvSMkVN7N8b7FjZZS7G9NpKiuO6DrAA=:"
    );
    assert!(verifies(
        "POST",
        "gw.example.com",
        "/openai/v1/chat/completions",
        None,
        BODY.as_bytes(),
        input,
        sig
    ));
    // And our signer produces exactly the same headers.
    let signed = sign(
        SECRET.as_bytes(),
        &SignRequest {
            method: "POST",
            url: "https://gw.example.com/openai/v1/chat/completions",
            body: BODY.as_bytes(),
            key_id: "demo.k1",
            created: 1767225600,
            nonce: "q7yN3lH0fI2xT8c4ZkPZVw",
        },
    )
    .unwrap();
    assert_eq!(signed.signature, sig);
    assert_eq!(signed.signature_input, input);
}

#[test]
fn spec_vector_2_get_with_query() {
    assert_eq!(
        content_digest(b""),
        "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"
    );
    let signed = sign(
        SECRET.as_bytes(),
        &SignRequest {
            method: "GET",
            url: "http://localhost:8080/openai/v1/models?limit=5",
            body: b"",
            key_id: "demo.k1",
            created: 1767225600,
            nonce: "Zm9vYmFyYmF6cXV4MTIzNA",
        },
    )
    .unwrap();
    assert_eq!(
        signed.signature,
        "sig1=:E99OB4RWDRKcyje8+mndUtkSCL9HD+eROv70LBgfvlM=:"
    );
    assert!(verifies(
        "GET",
        "localhost:8080",
        "/openai/v1/models",
        Some("limit=5"),
        b"",
        &signed.signature_input,
        &signed.signature
    ));
}

#[test]
fn spec_vector_3_reordered_params_verify() {
    let input = r#"sig1=("@method" "@authority" "@path" "@query" "content-digest");created=1767225600;nonce="q7yN3lH0fI2xT8c4ZkPZVw";alg="hmac-sha256";keyid="demo.k1";tag="keygate-v1""#;
    let sig = "sig1=:CkdmLI6yWCyNLmnYxbzqPQ/U6UfKtlWcoJXgqjW5rtQ=:";
    assert!(verifies(
        "POST",
        "gw.example.com",
        "/openai/v1/chat/completions",
        None,
        BODY.as_bytes(),
        input,
        sig
    ));
}

#[test]
fn tampered_path_does_not_verify() {
    let input = r#"sig1=("@method" "@authority" "@path" "@query" "content-digest");created=1767225600;keyid="demo.k1";alg="hmac-sha256";nonce="q7yN3lH0fI2xT8c4ZkPZVw";tag="keygate-v1""#;
    let sig = "sig1=:x11APkVs369hlKxqNj5RU9vwtLrew3FM1JqySfHp7bM=:";
    assert!(!verifies(
        "POST",
        "gw.example.com",
        "/openai/v1/embeddings",
        None,
        BODY.as_bytes(),
        input,
        sig
    ));
    assert!(!verifies(
        "POST",
        "evil.example.com",
        "/openai/v1/chat/completions",
        None,
        BODY.as_bytes(),
        input,
        sig
    ));
    assert!(!verifies(
        "POST",
        "gw.example.com",
        "/openai/v1/chat/completions",
        None,
        b"{}",
        input,
        sig
    ));
}

const GOOD_SIG: &str = "sig1=:x11APkVs369hlKxqNj5RU9vwtLrew3FM1JqySfHp7bM=:";

fn parse_input(input: &str) -> Result<ParsedSignature, SigError> {
    parse(&[input], &[GOOD_SIG], &HashSet::new())
}

const COMPS: &str = r#"("@method" "@authority" "@path" "@query" "content-digest")"#;
const PARAMS: &str =
    r#";created=1767225600;keyid="demo.k1";alg="hmac-sha256";nonce="q7yN3lH0fI2xT8c4ZkPZVw""#;

#[test]
fn duplicate_keygate_tags_are_refused() {
    let input =
        format!(r#"sig1={COMPS}{PARAMS};tag="keygate-v1", sig2={COMPS}{PARAMS};tag="keygate-v1""#);
    assert_eq!(
        parse_input(&input).unwrap_err(),
        SigError::Malformed("several keygate-v1 signatures")
    );
}

#[test]
fn foreign_tags_are_skipped_and_label_is_free() {
    let input = format!(
        r#"other={COMPS}{PARAMS};tag="someone-else", mine={COMPS}{PARAMS};tag="keygate-v1""#
    );
    let sig = "mine=:x11APkVs369hlKxqNj5RU9vwtLrew3FM1JqySfHp7bM=:";
    let p = parse(&[&input], &[sig], &HashSet::new()).unwrap();
    assert_eq!(p.label, "mine");
    let none = format!(r#"sig1={COMPS}{PARAMS};tag="other""#);
    assert_eq!(
        parse_input(&none).unwrap_err(),
        SigError::Malformed("no keygate-v1 signature")
    );
}

#[test]
fn missing_params_are_refused() {
    for drop in [
        "created=1767225600",
        "keyid=\"demo.k1\"",
        "alg=\"hmac-sha256\"",
        "nonce=\"q7yN3lH0fI2xT8c4ZkPZVw\"",
    ] {
        let params = PARAMS.replace(&format!(";{drop}"), "");
        let input = format!(r#"sig1={COMPS}{params};tag="keygate-v1""#);
        assert!(parse_input(&input).is_err(), "accepted without {drop}");
    }
}

#[test]
fn wrong_alg_is_refused() {
    let params = PARAMS.replace("hmac-sha256", "rsa-pss-sha512");
    let input = format!(r#"sig1={COMPS}{params};tag="keygate-v1""#);
    assert_eq!(
        parse_input(&input).unwrap_err(),
        SigError::Malformed("alg is not hmac-sha256")
    );
}

#[test]
fn component_with_parameters_is_refused() {
    let comps = COMPS.replace(r#""@query""#, r#""@query";req"#);
    let input = format!(r#"sig1={comps}{PARAMS};tag="keygate-v1""#);
    assert_eq!(
        parse_input(&input).unwrap_err(),
        SigError::Malformed("component with parameters")
    );
}

#[test]
fn missing_or_extra_components_are_refused() {
    let fewer = COMPS.replace(r#" "content-digest""#, "");
    let input = format!(r#"sig1={fewer}{PARAMS};tag="keygate-v1""#);
    assert!(parse_input(&input).is_err());
    let more = COMPS.replace(")", r#" "x-extra")"#);
    let input = format!(r#"sig1={more}{PARAMS};tag="keygate-v1""#);
    assert_eq!(
        parse_input(&input).unwrap_err(),
        SigError::Malformed("component not allowed")
    );
    let allowed: HashSet<String> = ["x-extra".to_string()].into();
    assert!(parse(&[&input], &[GOOD_SIG], &allowed).is_ok());
    let dup = COMPS.replace(")", r#" "@path")"#);
    let input = format!(r#"sig1={dup}{PARAMS};tag="keygate-v1""#);
    assert_eq!(
        parse_input(&input).unwrap_err(),
        SigError::Malformed("duplicate component")
    );
}

#[test]
fn duplicate_or_unknown_params_and_bad_nonce_are_refused() {
    let input = format!(r#"sig1={COMPS}{PARAMS};created=1;tag="keygate-v1""#);
    assert!(parse_input(&input).is_err());
    let input = format!(r#"sig1={COMPS}{PARAMS};foo=1;tag="keygate-v1""#);
    assert!(parse_input(&input).is_err());
    let short = PARAMS.replace("q7yN3lH0fI2xT8c4ZkPZVw", "short");
    assert!(parse_input(&format!(r#"sig1={COMPS}{short};tag="keygate-v1""#)).is_err());
    let bad = PARAMS.replace("q7yN3lH0fI2xT8c4ZkPZVw", "q7yN3lH0fI2xT8c4Z/PZVw");
    assert!(parse_input(&format!(r#"sig1={COMPS}{bad};tag="keygate-v1""#)).is_err());
    let long = PARAMS.replace("1767225600", "1767225600000000");
    assert!(parse_input(&format!(r#"sig1={COMPS}{long};tag="keygate-v1""#)).is_err());
}

#[test]
fn missing_headers_and_mismatched_label() {
    assert_eq!(
        parse(&[], &[GOOD_SIG], &HashSet::new()).unwrap_err(),
        SigError::Missing
    );
    let input = format!(r#"sig1={COMPS}{PARAMS};tag="keygate-v1""#);
    assert!(parse(
        &[&input],
        &["sig2=:x11APkVs369hlKxqNj5RU9vwtLrew3FM1JqySfHp7bM=:"],
        &HashSet::new()
    )
    .is_err());
}

#[test]
fn authority_normalisation() {
    assert_eq!(
        normalize_authority("GW.Example.com:443", true),
        "gw.example.com"
    );
    assert_eq!(
        normalize_authority("localhost:8080", false),
        "localhost:8080"
    );
    assert_eq!(normalize_authority("localhost:80", false), "localhost");
    assert_eq!(normalize_authority("localhost:443", false), "localhost:443");
}

#[test]
fn content_digest_parsing() {
    let d = parse_content_digest(
        "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:, sha-512=:AA==:",
    )
    .unwrap();
    assert_eq!(d[0], 0xe3);
    assert!(parse_content_digest("sha-512=:AA==:").is_err());
    assert!(parse_content_digest("sha-256=:AA==:").is_err());
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parse_never_panics(input in "\\PC{0,300}", sig in "\\PC{0,100}") {
            let _ = parse(&[&input], &[&sig], &HashSet::new());
        }

        #[test]
        fn sign_then_verify_round_trips(path in "/[a-z0-9/]{0,40}", query in proptest::option::of("[a-z0-9=&]{1,20}"), body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let url = match &query { Some(q) => format!("http://h.example{path}?{q}"), None => format!("http://h.example{path}") };
            let s = sign(b"secret-key-123456", &SignRequest { method: "POST", url: &url, body: &body, key_id: "k", created: 1, nonce: "abcdefghijklmnop" }).unwrap();
            let parsed = parse(&[&s.signature_input], &[&s.signature], &HashSet::new()).unwrap();
            let headers = headers_with_digest(&s.content_digest);
            let parts = RequestParts { method: "POST", authority: "h.example", path: &path, query: query.as_deref(), headers: &headers };
            let base = signature_base(&parts, &parsed).unwrap();
            prop_assert!(verify_mac(b"secret-key-123456", &base, &parsed.signature));
        }
    }
}
