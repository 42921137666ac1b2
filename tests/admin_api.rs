//! The admin API on one node (no Redis): signed calls only, sites and keys changed at
//! runtime, persisted to `admin.state_file` across a restart; `disabled` and
//! `expires_at` in the YAML.

mod common;

use common::admin::*;
use common::*;
use std::time::Duration;

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
    let r = remove_key(&gw, &key, "gamma", &bid).await;
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

/// A SIGHUP that lands while a change is being made: the change is made on one YAML or
/// the other, never stored on disk while memory (on the new YAML) refuses it. The YAML
/// flips between a version that has tier `other` and one that does not while the API
/// moves a site between `other` and `free`.
#[tokio::test]
async fn a_sighup_during_a_change_never_leaves_the_state_file_and_memory_apart() {
    let key = AdminKey::new();
    let gw = node(&key);
    create_site(&gw, &key, "gamma", "free").await;
    let path = gw.config_path();
    let with = std::fs::read_to_string(&path).unwrap();
    let without = with
        .replace("  other: {", "  spare: {")
        .replace("tier: other", "tier: spare");
    assert_ne!(with, without);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flipper = {
        let (stop, path, pid) = (stop.clone(), path.clone(), gw.pid().to_string());
        let (with, without) = (with.clone(), without.clone());
        std::thread::spawn(move || {
            let mut flip = false;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                flip = !flip;
                std::fs::write(&path, if flip { &without } else { &with }).unwrap();
                let _ = std::process::Command::new("kill")
                    .args(["-HUP", &pid])
                    .status();
            }
        })
    };
    let gamma = "/admin/v1/sites/gamma";
    let mut refused = 0;
    for i in 0..150 {
        let tier = if i % 2 == 0 { "other" } else { "free" };
        let r = admin(
            &gw,
            &key,
            "PATCH",
            gamma,
            &format!(r#"{{"tier":"{tier}"}}"#),
        )
        .await;
        match r.status {
            200 => {}
            400 => refused += 1,
            _ => panic!("PATCH {tier} answered {}: {}", r.status, r.body),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flipper.join().unwrap();
    std::fs::write(&path, &with).unwrap();
    gw.sighup();
    // What memory holds is what the file holds.
    let shown = admin(&gw, &key, "GET", gamma, "").await;
    let tier = shown.json()["site"]["tier"].as_str().unwrap().to_string();
    let state = std::fs::read_to_string(key.state_file("sites.yaml")).unwrap();
    assert!(
        state.contains(&format!("tier: {tier}")),
        "memory has tier {tier}, the state file:\n{state}"
    );
    eprintln!("{refused} of 150 changes refused on the YAML without `other`");
}

/// Signed traffic that fills the request nonce store (four keys, each at its quarter of
/// every shard) leaves the admin API working: its nonces are kept in a store of their own,
/// so an operator can still disable the flooding sites.
#[tokio::test]
async fn a_full_request_nonce_store_leaves_the_admin_api_working() {
    let key = AdminKey::new();
    let gw = Gateway::start_with(Options {
        config_extra: key.yaml("sites.yaml"),
        server_extra: "  nonce_store_capacity: 1024\n".into(),
        ..Options::default()
    });
    let mut flooders = vec![];
    for i in 0..4 {
        flooders.push(create_site(&gw, &key, &format!("flood{i}"), "other").await);
    }
    for (kid, secret) in &flooders {
        // A key holds at most a quarter of the store: 256 nonces each fill it.
        let (mut recorded, mut sent) = (0, 0);
        while recorded < 256 {
            sent += 1;
            assert!(
                sent < 5000,
                "{kid} recorded only {recorded} nonces: something else holds part of the store"
            );
            match models_as(&gw, kid, secret, None).await.status {
                200 => recorded += 1,
                503 => {}
                s => panic!("{kid}: {s}"),
            }
        }
    }
    // The store is full for every key, the YAML's too.
    for _ in 0..5 {
        gw.call("alpha.k1", "GET", "/openai/v1/models", "")
            .await
            .assert_error(503, "upstream_unavailable");
    }
    // The admin API still answers, and disables a flooder.
    for i in 0..4 {
        let r = admin(
            &gw,
            &key,
            "POST",
            &format!("/admin/v1/sites/flood{i}/disable"),
            "",
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

/// `serve -u`: the new process reads the state file at start and then waits for the
/// listeners; the old process takes admin calls until it exits. A key removed through the
/// old one in between was served again by the new one, and the new one's next change
/// wrote the file without the removal.
#[tokio::test]
async fn a_change_the_old_process_takes_during_an_upgrade_is_not_lost() {
    let key = AdminKey::new();
    let mut gw = node(&key);
    let (bid, token) = add_key(&gw, &key, "alpha", "bearer").await;
    assert_eq!(models_bearer(&gw, &token).await.status, 200);
    let mut new = gw.spawn_upgrade();
    // The new process has read the state file and waits for the listeners.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let r = remove_key(&gw, &key, "alpha", &bid).await;
    assert_eq!(r.status, 200, "{}", r.body);
    gw.signal("-QUIT");
    assert!(
        gw.wait_exit(Duration::from_secs(20)),
        "the old process did not exit"
    );
    within(
        "the removed key refused by the new process",
        Duration::from_secs(3),
        || async { models_bearer(&gw, &token).await.status == 401 },
    )
    .await;
    // The new process's own change keeps the removal.
    create_site(&gw, &key, "zeta", "free").await;
    let state = std::fs::read_to_string(key.state_file("sites.yaml")).unwrap();
    assert!(state.contains("zeta"), "{state}");
    assert!(
        state.contains(&format!("removed_keys:\n    - {bid}")) || !state.contains(&bid),
        "{state}"
    );
    assert_eq!(models_bearer(&gw, &token).await.status, 401);
    let _ = new.kill();
    let _ = new.wait();
}

/// A change that cannot be stored is 503 to the caller, and its cause is in the log (it
/// was only in the answer's hidden detail: nothing told the operator why).
#[tokio::test]
async fn a_change_that_cannot_be_stored_says_why_in_the_log() {
    let key = AdminKey::new();
    let gw = Gateway::start_with(Options {
        config_extra: key.yaml("state/sites.yaml"),
        ..Options::default()
    });
    // The state file's directory cannot be made: a file is in its place.
    std::fs::write(key.state_file("state"), "not a directory").unwrap();
    let r = admin(
        &gw,
        &key,
        "POST",
        "/admin/v1/sites",
        r#"{"id":"kappa","tier":"free"}"#,
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.body);
    let logs = gw.logs();
    assert!(
        logs.contains("admin: POST /admin/v1/sites failed: cannot lock"),
        "{logs}"
    );
}

/// Every admin change rebuilt the config from the YAML text and read `sites_dir` again: a
/// site file written since the last SIGHUP (unreviewed, perhaps half written) went live
/// with any admin change, and a broken one made every admin change fail with its error.
#[tokio::test]
async fn an_admin_change_puts_no_site_file_in_force_that_no_sighup_loaded() {
    let key = AdminKey::new();
    let gw = node(&key);
    let dir = gw.dir.path().join("sites.d");
    std::fs::create_dir(&dir).unwrap();
    gw.reload_with(|t| format!("sites_dir: \"{}\"\n{t}", dir.display()));
    let secret = format!("kgs_{}", keygate::auth::signature::random_nonce());
    let path = gw.dir.path().join("sneaky.secret");
    std::fs::write(&path, &secret).unwrap();
    let sneaky = format!(
        "- id: sneaky\n  tier: free\n  keys:\n    - {{ id: sneaky.k1, auth: hmac, secret: \"file:{}\" }}\n",
        path.display()
    );
    // Written after the last load.
    std::fs::write(dir.join("b.yaml"), sneaky).unwrap();
    std::fs::write(dir.join("c.yaml"), "- { id: broken, tier: gold }\n").unwrap();
    let (kid, made) = create_site(&gw, &key, "lambda", "free").await;
    assert_eq!(models_as(&gw, &kid, &made, None).await.status, 200);
    assert_eq!(models_as(&gw, "sneaky.k1", &secret, None).await.status, 401);
    // A SIGHUP reads the directory.
    std::fs::remove_file(dir.join("c.yaml")).unwrap();
    gw.sighup();
    assert_eq!(
        models_as(&gw, "sneaky.k1", &secret, None).await.status,
        200,
        "{}",
        gw.logs()
    );
    assert_eq!(models_as(&gw, &kid, &made, None).await.status, 200);
}

/// `keygate check` (the unit's `ExecStartPre`) read the YAML alone: a YAML that drops a
/// tier a site made through the API uses passed it, and the start then failed naming
/// `sites[N]`, a list entry the YAML does not have.
#[tokio::test]
async fn check_validates_the_yaml_with_the_admin_apis_changes() {
    let key = AdminKey::new();
    let gw = node(&key);
    gw.reload_with(|t| {
        t.replacen(
            "tiers:\n",
            "tiers:\n  extra: { requests_per_minute: 10 }\n",
            1,
        )
    });
    create_site(&gw, &key, "gamma", "extra").await;
    let path = gw.config_path();
    let path = path.to_str().unwrap();
    assert_eq!(keygate(&["check", "-c", path], "").0, 0);
    let text = std::fs::read_to_string(path).unwrap();
    std::fs::write(
        path,
        text.replacen("  extra: { requests_per_minute: 10 }\n", "", 1),
    )
    .unwrap();
    let (code, _, err) = keygate(&["check", "-c", path], "");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(r#"admin API site "gamma".tier: unknown tier "extra""#),
        "{err}"
    );
}
