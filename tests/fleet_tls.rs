//! Fleet mode on a Redis as managed services run it: TLS with the operator's CA, mutual
//! TLS, an ACL user whose password is an `enc:v1` secret; and which fleet settings a
//! SIGHUP applies. Real `redis-server` processes, certificates generated at test time.

mod common;

use common::fleet::*;
use common::redis::{Redis, RedisOptions};
use common::*;
use keygate::config::secret::{encrypt, MasterKey};
use std::time::Duration;

const FAIL_CLOSED: &str = "{ nonces: fail_closed }";

/// Two nodes on `redis` with these extra `fleet.redis` keys.
fn two_nodes(
    redis: &Redis,
    redis_extra: &str,
    master_keys: Option<std::path::PathBuf>,
) -> Vec<Gateway> {
    nodes(2, redis, redis_extra, master_keys)
}

fn nodes(
    n: usize,
    redis: &Redis,
    redis_extra: &str,
    master_keys: Option<std::path::PathBuf>,
) -> Vec<Gateway> {
    // These tests are about what TLS and ACLs carry, not about timing.
    let yaml = patient(&fleet_yaml_with(&redis.url(), redis_extra, FAIL_CLOSED));
    let opts = Options {
        config_extra: yaml,
        extra_hostnames: vec![HOST.into()],
        master_keys_from: master_keys,
        ..Options::default()
    };
    start_nodes(opts, n)
}

/// A signed request passes on the first node, and the same request (same nonce) is a
/// replay on the second: the nonce went through Redis.
async fn replay_is_refused_across_nodes(nodes: &[Gateway]) {
    let h = sign_fleet(&nodes[0], "GET", MODELS, b"", now());
    let first = send_signed(&nodes[0], &h, "GET", MODELS, "").await;
    assert_eq!(first.status, 200, "{}", first.body);
    let again = send_signed(&nodes[1], &h, "GET", MODELS, "").await;
    again.assert_error(401, "replayed");
}

fn tls_redis(client_auth: bool) -> Option<Redis> {
    Redis::start_with(RedisOptions {
        tls: true,
        client_auth,
        ..RedisOptions::default()
    })
}

#[tokio::test]
async fn rediss_with_the_configured_ca_carries_the_fleet() {
    let Some(redis) = tls_redis(false) else {
        return;
    };
    let ca = format!(", ca: \"{}/ca.crt\"", redis.certs().display());
    let nodes = two_nodes(&redis, &ca, None);
    wait_redis_up(&nodes, 1.0);
    replay_is_refused_across_nodes(&nodes).await;
    // The nonce key is in this (TLS-only) Redis.
    assert!(!redis.cli(&["--scan", "--pattern", "kgtest:n:*"]).is_empty());
}

#[tokio::test]
async fn mutual_tls_presents_the_client_certificate_and_is_refused_without_it() {
    let Some(redis) = tls_redis(true) else { return };
    let certs = redis.certs();
    let c = certs.display();
    let with_cert = format!(
        ", ca: \"{c}/ca.crt\", client_cert: \"{c}/client.crt\", client_key: \"{c}/client.key\""
    );
    let nodes = two_nodes(&redis, &with_cert, None);
    wait_redis_up(&nodes, 1.0);
    replay_is_refused_across_nodes(&nodes).await;

    // Without a client certificate the handshake fails: Redis is down for this node and
    // its outage policy (fail_closed) refuses signed requests.
    let without = two_nodes(&redis, &format!(", ca: \"{c}/ca.crt\""), None);
    eventually("a failed connection attempt", || {
        let failed = without[0].metric("keygate_redis_errors_total{op=\"ping\"}");
        (failed.unwrap_or(0.0) > 0.0).then_some(())
    });
    assert_eq!(without[0].metric("keygate_redis_up"), Some(0.0));
    let r = models(&without[0]).await;
    r.assert_error(503, "upstream_unavailable");
}

#[tokio::test]
async fn a_redis_certificate_from_another_ca_marks_redis_down_and_the_outage_policy_applies() {
    let Some(redis) = tls_redis(false) else {
        return;
    };
    // Trust only the rogue CA: the server's certificate (from the test CA) is refused.
    let rogue = format!(", ca: \"{}/rogue-ca.crt\"", redis.certs().display());
    let nodes = two_nodes(&redis, &rogue, None);
    std::thread::sleep(Duration::from_millis(4 * SYNC_MS));
    for n in &nodes {
        assert_eq!(n.metric("keygate_redis_up"), Some(0.0));
        models(n).await.assert_error(503, "upstream_unavailable");
    }
    // Nothing reached Redis.
    assert_eq!(redis.cli(&["DBSIZE"]), "0");
}

/// The ACL a production keygate needs (README "Fleet mode"): its keys and its commands.
const ACL: &str =
    "~kgtest:* resetchannels -@all +ping +set +get +mget +incr +incrby +expire +expireat +evalsha +script|load +getdel +getrange";

#[tokio::test]
async fn an_acl_user_with_a_password_from_enc_v1_carries_the_fleet() {
    let password = format!("redis-pw-{}", keygate::auth::signature::random_nonce());
    let Some(redis) = Redis::start_with(RedisOptions {
        acl: Some(("keygate".into(), password.clone(), ACL.into())),
        ..RedisOptions::default()
    }) else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let k1 = MasterKey::generate_base64();
    std::fs::write(keys.path().join("k1.master"), k1.as_str()).unwrap();
    std::fs::write(
        keys.path().join("k2.master"),
        MasterKey::generate_base64().as_str(),
    )
    .unwrap();
    let master = MasterKey::from_base64(&k1).unwrap();
    let sealed = encrypt("k1", &master, "fleet/redis/password", password.as_bytes());
    let extra = format!(", username: keygate, password: \"{sealed}\"");
    let nodes = two_nodes(&redis, &extra, Some(keys.path().to_path_buf()));
    wait_redis_up(&nodes, 1.0);
    replay_is_refused_across_nodes(&nodes).await;
    // Counters reach Redis under the ACL too, and keygate needed nothing it was denied.
    eventually("counts synced", || {
        (!redis.cli(&["--scan", "--pattern", "kgtest:r:*"]).is_empty()).then_some(())
    });
    assert_eq!(
        redis.cli(&["ACL", "LOG"]),
        "",
        "keygate ran a command its ACL denies"
    );
    for n in &nodes {
        assert!(
            !n.logs().contains(&password),
            "the Redis password was logged"
        );
    }

    // The same value sealed for another place does not decrypt: check names the key.
    let elsewhere = encrypt("k1", &master, "fleet/redis/other", password.as_bytes());
    let text = std::fs::read_to_string(nodes[0].config_path())
        .unwrap()
        .replace(&sealed, &elsewhere);
    let (code, out, err) = check_config(&nodes[0], &text);
    assert_ne!(code, 0);
    assert!(
        format!("{out}{err}").contains("fleet.redis.password"),
        "{out}{err}"
    );
}

#[tokio::test]
async fn a_wrong_redis_password_marks_redis_down() {
    let Some(redis) = Redis::start_with(RedisOptions {
        acl: Some((
            "keygate".into(),
            "the-right-one-0123456789".into(),
            ACL.into(),
        )),
        ..RedisOptions::default()
    }) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), "not-the-right-one-0123\n").unwrap();
    let extra = format!(
        ", username: keygate, password: \"file:{}/pw\"",
        dir.path().display()
    );
    let nodes = two_nodes(&redis, &extra, None);
    std::thread::sleep(Duration::from_millis(4 * SYNC_MS));
    assert_eq!(nodes[0].metric("keygate_redis_up"), Some(0.0));
    models(&nodes[0])
        .await
        .assert_error(503, "upstream_unavailable");
}

/// `keygate check` on `text`, written beside `gw`'s config.
fn check_config(gw: &Gateway, text: &str) -> (i32, String, String) {
    let path = gw.dir.path().join("check.yaml");
    std::fs::write(&path, text).unwrap();
    keygate(&["check", "-c", path.to_str().unwrap()], "")
}

#[tokio::test]
async fn bad_redis_tls_and_credential_settings_are_named_by_check() {
    let Some(redis) = tls_redis(false) else {
        return;
    };
    let ca = format!(", ca: \"{}/ca.crt\"", redis.certs().display());
    let one = nodes(1, &redis, &ca, None);
    let gw = &one[0];
    let base = std::fs::read_to_string(gw.config_path()).unwrap();
    let c = redis.certs().display().to_string();
    let plain_url = format!("redis://127.0.0.1:{}", redis.port);
    // The config with more keys after `ca:`.
    let with = |extra: &str| base.replace("/ca.crt\"", &format!("/ca.crt\", {extra}"));
    let cases = [
        // A CA with a plain-text connection would protect nothing.
        (
            base.replace(&redis.url(), &plain_url),
            "fleet.redis.ca",
            "rediss://",
        ),
        (
            with(&format!("client_cert: \"{c}/client.crt\"")),
            "fleet.redis.client_key",
            "required with client_cert",
        ),
        (
            with(&format!(
                "client_cert: \"{c}/client.crt\", client_key: \"{c}/other.key\""
            )),
            "fleet.redis.client_key",
            "is not the key of",
        ),
        (
            with("username: keygate"),
            "fleet.redis.username",
            "needs fleet.redis.password",
        ),
        (
            with("password: hunter2-in-plain-text"),
            "fleet.redis.password",
            "plain-text",
        ),
        (
            base.replace("rediss://127.0.0.1", "rediss://:hunter2-in-url@127.0.0.1"),
            "fleet.redis.url",
            "plain-text password",
        ),
        (
            base.replace("/ca.crt\"", "/no-such-ca.crt\""),
            "fleet.redis.ca",
            "not found",
        ),
    ];
    for (text, path, what) in cases {
        let (code, out, err) = check_config(gw, &text);
        let all = format!("{out}{err}");
        assert_ne!(code, 0, "{path}: {all}");
        assert!(
            all.contains(path) && all.contains(what),
            "{path} / {what}: {all}"
        );
        assert!(!all.contains("hunter2"), "a password was echoed: {all}");
    }
}

#[tokio::test]
async fn sighup_applies_the_outage_policy_and_names_a_restart_for_a_new_url() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let opts = Options {
        config_extra: fleet_yaml(&redis.url(), FAIL_CLOSED),
        extra_hostnames: vec![HOST.into()],
        ..Options::default()
    };
    let gw = start_nodes(opts, 1).remove(0);
    wait_redis_up(std::slice::from_ref(&gw), 1.0);
    let elsewhere = format!("redis://127.0.0.1:{}", free_port());
    gw.reload_with(|t| {
        t.replace(FAIL_CLOSED, "{ nonces: local, local_window_s: 10 }")
            .replace("timeout_ms: 50", "timeout_ms: 80")
            .replace(&redis.url(), &elsewhere)
    });
    eventually("the restart warning", || {
        gw.logs()
            .contains("fleet.redis.url changed in the reloaded config")
            .then_some(())
    });
    // Still on the Redis it started with.
    assert_eq!(gw.metric("keygate_redis_up"), Some(1.0));
    replay_is_refused_on(&gw).await;
    // The outage policy was reloaded: with Redis gone, signed requests pass on the
    // local store instead of 503.
    redis.stop();
    let mut last = 0;
    for _ in 0..50 {
        last = models(&gw).await.status;
        if last == 200 && gw.metric("keygate_redis_up") == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last, 200, "nonces: local applies after SIGHUP");
}

/// A replay to the same node is refused (the fleet is in use).
async fn replay_is_refused_on(gw: &Gateway) {
    let h = sign_fleet(gw, "GET", MODELS, b"", now());
    assert_eq!(send_signed(gw, &h, "GET", MODELS, "").await.status, 200);
    send_signed(gw, &h, "GET", MODELS, "")
        .await
        .assert_error(401, "replayed");
}
