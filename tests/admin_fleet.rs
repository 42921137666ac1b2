//! The admin API across a fleet (three nodes, one `redis-server`): a change made through
//! any node is in force on every node within 2 s, and survives restarting every node.

mod common;

use common::admin::*;
use common::fleet::*;
use common::redis::Redis;
use common::*;
use std::time::Duration;

const TWO_S: Duration = Duration::from_secs(2);

fn fleet(redis: &Redis, key: &AdminKey, from: Option<&Gateway>) -> Vec<Gateway> {
    let mut opts = node_options(redis, "{ requests_per_minute: 100000 }");
    opts.config_extra += &key.yaml("unused.yaml");
    if let Some(n) = from {
        opts.secrets = Some(n.secrets.clone());
        opts.master_keys_from = Some(n.dir.path().to_path_buf());
    }
    let nodes = start_fleet_with(opts);
    for n in &nodes {
        eventually("ready", || (n.admin_get("/readyz").0 == 200).then_some(()));
    }
    nodes
}

async fn serves(n: &Gateway, kid: &str, secret: &str) -> bool {
    models_as(n, kid, secret, Some(HOST)).await.status == 200
}

async fn refused(n: &Gateway, kid: &str, secret: &str) -> bool {
    let r = models_as(n, kid, secret, Some(HOST)).await;
    r.status == 401 && r.code() == "unauthenticated"
}

#[tokio::test]
async fn changes_through_one_node_reach_every_node_within_two_seconds_and_survive_restarts() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let key = AdminKey::new();
    let nodes = fleet(&redis, &key, None);
    // Created through node 0, serving on every node.
    let (kid, secret) = create_site(&nodes[0], &key, "gamma", "free").await;
    for n in &nodes {
        within("the new site served", TWO_S, || serves(n, &kid, &secret)).await;
    }
    // A bearer key added through node 1, removed through node 2: gone everywhere.
    let (bid, token) = add_key(&nodes[1], &key, "alpha", "bearer").await;
    for n in &nodes {
        within("the new bearer key", TWO_S, || async {
            models_bearer(n, &token).await.status == 200
        })
        .await;
    }
    let r = remove_key(&nodes[2], &key, "alpha", &bid).await;
    assert_eq!(r.status, 200, "{}", r.body);
    for n in &nodes {
        within("the removed bearer key refused", TWO_S, || async {
            models_bearer(n, &token).await.status == 401
        })
        .await;
    }
    // Disabled through node 1: refused on every node; enabled again: served.
    admin(&nodes[1], &key, "POST", "/admin/v1/sites/gamma/disable", "").await;
    for n in &nodes {
        within("the disabled site refused", TWO_S, || {
            refused(n, &kid, &secret)
        })
        .await;
    }
    admin(&nodes[2], &key, "POST", "/admin/v1/sites/gamma/enable", "").await;
    for n in &nodes {
        within("the enabled site served", TWO_S, || {
            serves(n, &kid, &secret)
        })
        .await;
    }
    // Admin nonces are fleet-wide too: a call replayed to another node is refused.
    let h = admin_headers(
        &nodes[0],
        ADMIN_KEY,
        &key.secret,
        "GET",
        "/admin/v1/sites",
        "",
    );
    assert_eq!(
        admin_send(&nodes[0], &h, "GET", "/admin/v1/sites", "")
            .await
            .status,
        200
    );
    let mut h1 = h.clone();
    h1.retain(|(n, _)| n != "host");
    h1.push(("host".into(), format!("127.0.0.1:{}", nodes[0].admin_port)));
    admin_send(&nodes[1], &h1, "GET", "/admin/v1/sites", "")
        .await
        .assert_error(401, "replayed");
    // Gamma disabled for the restart; every node restarted.
    admin(&nodes[0], &key, "POST", "/admin/v1/sites/gamma/disable", "").await;
    let first = &nodes[0];
    let again = fleet(&redis, &key, Some(first));
    drop(nodes);
    for n in &again {
        assert!(refused(n, &kid, &secret).await);
        models_bearer(n, &token)
            .await
            .assert_error(401, "unauthenticated");
    }
    admin(&again[1], &key, "POST", "/admin/v1/sites/gamma/enable", "").await;
    for n in &again {
        within("served after the restart", TWO_S, || {
            serves(n, &kid, &secret)
        })
        .await;
    }
}

/// A change another node stored that this node's YAML cannot take (a tier only the other
/// has, during a rolling deploy) is applied once a SIGHUP brings the YAML that can: before,
/// the node took the version for seen and stayed on its old changes until the next admin
/// change, revoked keys included (third review, 2026-12-04).
#[tokio::test]
async fn a_change_this_node_could_not_take_applies_after_its_yaml_catches_up() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let key = AdminKey::new();
    let nodes = fleet(&redis, &key, None);
    let gold = |t: String| {
        t.replacen(
            "tiers:\n",
            "tiers:\n  gold: { requests_per_minute: 100000 }\n",
            1,
        )
    };
    // Sites both nodes serve, whose keys are revoked after the change node 1 cannot take.
    let (eta_kid, eta_secret) = create_site(&nodes[0], &key, "eta", "free").await;
    let (zeta_kid, zeta_secret) = create_site(&nodes[0], &key, "zeta", "free").await;
    within("eta and zeta served on node 1", TWO_S, || async {
        serves(&nodes[1], &eta_kid, &eta_secret).await
            && serves(&nodes[1], &zeta_kid, &zeta_secret).await
    })
    .await;
    nodes[0].reload_with(gold);
    let (kid, secret) = create_site(&nodes[0], &key, "delta", "gold").await;
    within("served where gold exists", TWO_S, || {
        serves(&nodes[0], &kid, &secret)
    })
    .await;
    eventually("node 1 says it cannot apply the change", || {
        nodes[1]
            .logs()
            .contains("do not apply to this node's YAML")
            .then_some(())
    });
    assert!(refused(&nodes[1], &kid, &secret).await);
    // The revocation still reaches node 1, though the document it comes in does not build.
    let gone = remove_key(&nodes[0], &key, "eta", &eta_kid).await;
    assert!(gone.status < 300, "{}", gone.body);
    within("eta's key refused on node 1", TWO_S, || {
        refused(&nodes[1], &eta_kid, &eta_secret)
    })
    .await;
    // A revocation made through the node that is behind: it was refused (400, naming
    // delta's tier), so an emergency key removal failed on another site's record.
    let gone = remove_key(&nodes[1], &key, "zeta", &zeta_kid).await;
    assert_eq!(gone.status, 200, "{}", gone.body);
    for n in &nodes {
        within("zeta's key refused on every node", TWO_S, || {
            refused(n, &zeta_kid, &zeta_secret)
        })
        .await;
    }
    nodes[1].reload_with(gold);
    within("served on node 1 after its SIGHUP", TWO_S, || {
        serves(&nodes[1], &kid, &secret)
    })
    .await;
}

/// The same site id created through two nodes, the second before it caught up with the
/// first: it answered 201 and replaced the first site's record, taking its key away.
#[tokio::test]
async fn a_site_created_on_one_node_cannot_be_created_again_on_another() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let key = AdminKey::new();
    let nodes = fleet(&redis, &key, None);
    let (kid, secret) = create_site(&nodes[0], &key, "epsilon", "free").await;
    let again = admin(
        &nodes[1],
        &key,
        "POST",
        "/admin/v1/sites",
        r#"{"id":"epsilon","tier":"free"}"#,
    )
    .await;
    assert_eq!(again.status, 409, "{}", again.body);
    for n in &nodes {
        within("the first site's key served", TWO_S, || {
            serves(n, &kid, &secret)
        })
        .await;
    }
}

/// A change document over the 16 MiB bound, stored by a writer other than keygate (Redis
/// allows 512 MB): each catch-up read it whole, every half second, and logged it each time.
/// Now at most one byte over the bound is read, the node keeps the changes in force, and
/// the refusal is logged once.
#[tokio::test]
async fn a_change_document_over_the_bound_is_not_read_whole() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let key = AdminKey::new();
    let nodes = fleet(&redis, &key, None);
    let (kid, secret) = create_site(&nodes[0], &key, "theta", "free").await;
    within("the new site on node 1", TWO_S, || {
        serves(&nodes[1], &kid, &secret)
    })
    .await;
    let big = (256usize << 20).to_string();
    redis.cli(&["SETRANGE", "kgtest:{admin}:sites", &big, "}"]);
    redis.cli(&["INCR", "kgtest:{admin}:version"]);
    let refusal = "cannot use the stored site changes";
    eventually("the refusal logged", || {
        nodes[1].logs().contains(refusal).then_some(())
    });
    // Several catch-ups later (one every 500 ms).
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", nodes[1].pid())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(
        peak_kib < 128 << 10,
        "peak RSS {peak_kib} KiB: the document was read whole"
    );
    assert_eq!(
        nodes[1].logs().matches(refusal).count(),
        1,
        "{}",
        nodes[1].logs()
    );
    assert!(
        serves(&nodes[1], &kid, &secret).await,
        "the changes in force were dropped"
    );
}

/// A key removed through node 0 while node 1 could not build any config (a `file:`
/// secret of its YAML missing for a moment, as while it is rotated): node 1 took the
/// version for seen and never applied the removal, not even once it could build again.
#[tokio::test]
async fn a_revocation_that_could_not_apply_for_a_moment_applies_once_it_can() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let key = AdminKey::new();
    let nodes = fleet(&redis, &key, None);
    let (kid, secret) = create_site(&nodes[0], &key, "iota", "free").await;
    within("iota served on node 1", TWO_S, || {
        serves(&nodes[1], &kid, &secret)
    })
    .await;
    let beta = nodes[1].dir.path().join("beta.secret");
    let aside = nodes[1].dir.path().join("beta.secret.aside");
    std::fs::rename(&beta, &aside).unwrap();
    let gone = remove_key(&nodes[0], &key, "iota", &kid).await;
    assert!(gone.status < 300, "{}", gone.body);
    eventually("node 1 says the revocation does not apply", || {
        nodes[1]
            .logs()
            .contains("the revocations do not apply either")
            .then_some(())
    });
    std::fs::rename(&aside, &beta).unwrap();
    within(
        "the key refused on node 1 once it builds again",
        Duration::from_secs(5),
        || refused(&nodes[1], &kid, &secret),
    )
    .await;
    let logs = nodes[1].logs();
    assert_eq!(
        logs.matches("the revocations do not apply either").count(),
        1,
        "{logs}"
    );
}

/// A node that starts while the stored change document is over the bound never becomes
/// ready (it cannot know what was revoked), and read the document again, 16 MiB each
/// time, every half second.
#[tokio::test]
async fn a_starting_node_reads_an_unusable_document_once_a_version() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let big = (64usize << 20).to_string();
    redis.cli(&["SETRANGE", "kgtest:{admin}:sites", &big, "}"]);
    redis.cli(&["SET", "kgtest:{admin}:version", "1"]);
    let key = AdminKey::new();
    let mut opts = node_options(&redis, "{ requests_per_minute: 100000 }");
    opts.config_extra += &key.yaml("unused.yaml");
    let node = Gateway::start_with(opts);
    eventually("the refusal logged", || {
        node.logs()
            .contains("cannot use the stored site changes")
            .then_some(())
    });
    // Several catch-ups later (one every 500 ms).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_ne!(
        node.admin_get("/readyz").0,
        200,
        "ready without the fleet's changes"
    );
    let stats = redis.cli(&["INFO", "commandstats"]);
    let reads: u64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_getrange:calls="))
        .and_then(|v| v.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert_eq!(reads, 1, "{stats}");
}
