//! The admin API on one node (no Redis): signed calls only, sites and keys changed at
//! runtime, persisted to `admin.state_file` across a restart; `disabled` and
//! `expires_at` in the YAML.

mod common;

use common::admin::*;
use common::*;

fn node(key: &AdminKey) -> Gateway {
    Gateway::start_with(Options {
        config_extra: key.yaml("sites.yaml"),
        ..Options::default()
    })
}

#[tokio::test]
async fn unsigned_badly_signed_and_replayed_admin_calls_are_401_and_the_proxy_port_never_answers_admin(
) {
    let key = AdminKey::new();
    let gw = node(&key);
    let path = "/admin/v1/sites";
    let unsigned = admin_send(&gw, &[], "GET", path, "").await;
    unsigned.assert_error(401, "unauthenticated");
    let wrong = admin_headers(
        &gw,
        ADMIN_KEY,
        "kga_not_the_secret_0123456789abcdef",
        "GET",
        path,
        "",
    );
    admin_send(&gw, &wrong, "GET", path, "")
        .await
        .assert_error(401, "unauthenticated");
    // A site key is no admin key.
    let site = admin_headers(&gw, "alpha.k1", &gw.secrets.alpha, "GET", path, "");
    admin_send(&gw, &site, "GET", path, "")
        .await
        .assert_error(401, "unauthenticated");
    // A body that does not match its digest.
    let h = admin_headers(
        &gw,
        ADMIN_KEY,
        &key.secret,
        "POST",
        path,
        r#"{"id":"x","tier":"free"}"#,
    );
    admin_send(&gw, &h, "POST", path, r#"{"id":"y","tier":"free"}"#)
        .await
        .assert_error(401, "unauthenticated");
    let ok = admin_headers(&gw, ADMIN_KEY, &key.secret, "GET", path, "");
    let r = admin_send(&gw, &ok, "GET", path, "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let sites = r.json()["sites"].clone();
    let ids: Vec<&str> = sites
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["alpha", "beta"], "{}", r.body);
    admin_send(&gw, &ok, "GET", path, "")
        .await
        .assert_error(401, "replayed");
    // The proxy port has no admin API, signed or not.
    for h in [
        vec![],
        admin_headers(&gw, ADMIN_KEY, &key.secret, "GET", path, ""),
    ] {
        let r = send(&client(), "GET", &gw.url(path), &h, None).await;
        assert_ne!(r.status, 200, "{}", r.body);
        assert!(!r.body.contains("alpha"), "{}", r.body);
    }
    // Every call has its audit line; none shows a secret.
    let admin_lines = eventually("six admin audit lines", || {
        let lines: Vec<_> = gw
            .audit_lines()
            .into_iter()
            .filter(|l| l["event"] == "admin")
            .collect();
        (lines.len() == 6).then_some(lines)
    });
    assert!(admin_lines
        .iter()
        .any(|l| l["status"] == 200 && l["admin_key"] == ADMIN_KEY && l["action"] == "list_sites"));
    let logs = gw.logs();
    assert!(!logs.contains(&key.secret));
}

#[tokio::test]
async fn sites_and_keys_change_at_runtime_and_the_state_file_carries_them_across_a_restart() {
    let key = AdminKey::new();
    let gw = node(&key);
    let generation = gw.metric("keygate_config_generation").unwrap();
    let (kid, secret) = create_site(&gw, &key, "gamma", "free").await;
    assert_eq!(kid, "gamma.k1");
    assert_eq!(models_as(&gw, &kid, &secret, None).await.status, 200);
    assert!(gw.metric("keygate_config_generation").unwrap() > generation);
    // Conflicts, unknown sites and invalid changes change nothing.
    admin(
        &gw,
        &key,
        "POST",
        "/admin/v1/sites",
        r#"{"id":"gamma","tier":"free"}"#,
    )
    .await
    .assert_error(409, "conflict");
    admin(&gw, &key, "POST", "/admin/v1/sites/nope/disable", "")
        .await
        .assert_error(404, "not_found");
    let patch = |tier: &str| format!(r#"{{"tier":"{tier}"}}"#);
    let gamma = "/admin/v1/sites/gamma";
    let bad = admin(&gw, &key, "PATCH", gamma, &patch("platinum")).await;
    bad.assert_error(400, "bad_request");
    assert!(bad.body.contains("unknown tier"), "{}", bad.body);
    let r = admin(&gw, &key, "PATCH", gamma, &patch("other")).await;
    assert_eq!(r.json()["site"]["tier"], "other", "{}", r.body);
    // A bearer key, then its removal.
    let (bid, token) = add_key(&gw, &key, "gamma", "bearer").await;
    assert_eq!(models_bearer(&gw, &token).await.status, 200);
    let r = admin(
        &gw,
        &key,
        "DELETE",
        &format!("/admin/v1/sites/gamma/keys/{bid}"),
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    models_bearer(&gw, &token)
        .await
        .assert_error(401, "unauthenticated");
    // Disable: refused like an unknown key; enable: back.
    let r = admin(&gw, &key, "POST", "/admin/v1/sites/gamma/disable", "").await;
    assert_eq!(r.json()["site"]["disabled"], true, "{}", r.body);
    models_as(&gw, &kid, &secret, None)
        .await
        .assert_error(401, "unauthenticated");
    admin(&gw, &key, "POST", "/admin/v1/sites/gamma/enable", "").await;
    assert_eq!(models_as(&gw, &kid, &secret, None).await.status, 200);
    // Show: settings, keys without secrets, usage now.
    let r = admin(&gw, &key, "GET", "/admin/v1/sites/gamma", "").await;
    let site = &r.json()["site"];
    assert_eq!(
        (site["source"].as_str(), site["tier"].as_str()),
        (Some("api"), Some("other"))
    );
    assert!(
        site["usage"]["requests"]["minute"].as_f64().unwrap() >= 2.0,
        "{}",
        r.body
    );
    assert!(!r.body.contains(&secret) && !r.body.contains("enc:v1"));
    // A disabled alpha (a YAML site) through the API, for the restart.
    admin(&gw, &key, "POST", "/admin/v1/sites/alpha/disable", "").await;
    // On disk: sealed secrets only.
    let state = std::fs::read_to_string(key.state_file("sites.yaml")).unwrap();
    assert!(state.contains("enc:v1:") && !state.contains(&secret) && !state.contains(&token));
    let audit = eventually("the admin audit lines", || {
        let lines: Vec<_> = gw
            .audit_lines()
            .into_iter()
            .filter(|l| l["event"] == "admin" && l["status"] == 201)
            .collect();
        (lines.len() == 2).then_some(lines)
    });
    assert_eq!(audit[0]["action"], "create_site");
    assert_eq!(audit[0]["site"], "gamma");
    // Restart (a new process on the same YAML and state file).
    let again = Gateway::start_with(Options {
        config_extra: key.yaml("sites.yaml"),
        secrets: Some(gw.secrets.clone()),
        master_keys_from: Some(gw.dir.path().to_path_buf()),
        ..Options::default()
    });
    drop(gw);
    assert_eq!(models_as(&again, &kid, &secret, None).await.status, 200);
    models_bearer(&again, &token)
        .await
        .assert_error(401, "unauthenticated");
    again
        .call("alpha.k1", "GET", "/openai/v1/models", "")
        .await
        .assert_error(401, "unauthenticated");
}

#[tokio::test]
async fn a_disabled_yaml_site_and_an_expired_key_answer_like_unknown_keys() {
    let gw = Gateway::start();
    assert_eq!(
        gw.call("beta.k1", "GET", "/anthropic/v1/models", "")
            .await
            .status,
        200
    );
    let unknown = gw.sign(
        "nobody.k1",
        &gw.secrets.alpha,
        "GET",
        "/openai/v1/models",
        b"",
    );
    let unknown = send(
        &client(),
        "GET",
        &gw.url("/openai/v1/models"),
        &unknown,
        None,
    )
    .await;
    unknown.assert_error(401, "unauthenticated");
    gw.reload_with(|c| {
        c.replace(
            "    routes: [\"/anthropic/\"]\n",
            "    routes: [\"/anthropic/\"]\n    disabled: true\n",
        )
        .replace(
            "{ id: alpha.k1, auth: hmac,",
            "{ id: alpha.k1, expires_at: \"2020-01-01T00:00:00Z\", auth: hmac,",
        )
        .replace(
            "{ id: alpha.sdk, auth: bearer,",
            "{ id: alpha.sdk, expires_at: \"2999-01-01T00:00:00+02:00\", auth: bearer,",
        )
    });
    for r in [
        gw.call("beta.k1", "GET", "/anthropic/v1/models", "").await,
        gw.call("alpha.k1", "GET", "/openai/v1/models", "").await,
    ] {
        r.assert_error(401, "unauthenticated");
        assert_eq!(
            r.json()["error"]["message"],
            unknown.json()["error"]["message"]
        );
    }
    // Not yet expired.
    assert_eq!(models_bearer(&gw, &gw.secrets.bearer).await.status, 200);
    // A bad time is a config error naming its path; the running config stays.
    gw.reload_with(|c| c.replace("2999-01-01T00:00:00+02:00", "next tuesday"));
    assert!(
        gw.logs().contains("sites[0].keys[1].expires_at"),
        "{}",
        gw.logs()
    );
    assert_eq!(models_bearer(&gw, &gw.secrets.bearer).await.status, 200);
}

#[test]
fn the_cli_signs_and_calls_the_admin_api() {
    let key = AdminKey::new();
    let gw = node(&key);
    let run = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .arg("admin")
            .args([
                "--url",
                &format!("http://127.0.0.1:{}", gw.admin_port),
                "--key-id",
                ADMIN_KEY,
            ])
            .args(args)
            .env("KEYGATE_ADMIN_SECRET", &key.secret)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stdout)));
        (out.status.code(), v)
    };
    let (code, v) = run(&["create", "delta", "--tier", "free", "--route", "/openai/"]);
    assert_eq!(code, Some(0), "{v}");
    assert!(v["key"]["secret"].as_str().unwrap().starts_with("kgs_"));
    let (_, v) = run(&["add-key", "delta", "--auth", "bearer"]);
    assert_eq!(v["key"]["id"], "delta.k2");
    let (_, v) = run(&["remove-key", "delta", "delta.k2"]);
    assert_eq!(v["removed"], "delta.k2");
    let (_, v) = run(&["disable", "delta"]);
    assert_eq!(v["site"]["disabled"], true);
    let (_, v) = run(&["enable", "delta"]);
    assert_eq!(v["site"]["disabled"], false);
    let (_, v) = run(&["show", "delta"]);
    assert_eq!(v["site"]["routes"], serde_json::json!(["/openai/"]));
    let (_, v) = run(&["list"]);
    assert_eq!(v["sites"].as_array().unwrap().len(), 3);
    let (code, v) = run(&["show", "nope"]);
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (Some(1), Some("not_found"))
    );
}
