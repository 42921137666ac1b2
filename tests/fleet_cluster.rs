//! Fleet mode on a Redis Cluster: three primaries with a replica each on loopback
//! (`redis-cli --cluster create`), three keygate nodes. Replays are refused across nodes,
//! signed requests' limits are exact (the admission script's keys share the site's slot),
//! and killing a primary whose replica takes over keeps the fleet serving.

mod common;

use common::fleet::*;
use common::redis::RedisCluster;
use common::*;
use std::time::{Duration, Instant};

fn cluster_yaml(c: &RedisCluster, nonces: &str) -> String {
    let urls = c.urls();
    let seeds: Vec<String> = urls[1..].iter().map(|u| format!("\"{u}\"")).collect();
    let extra = format!(", cluster: true, seeds: [{}]", seeds.join(", "));
    fleet_yaml_with(&urls[0], &extra, nonces)
}

fn cluster_fleet(c: &RedisCluster, tier: &str, nonces: &str) -> Vec<Gateway> {
    start_fleet_with(Options {
        tier: tier.into(),
        config_extra: cluster_yaml(c, nonces),
        extra_hostnames: vec![HOST.into()],
        ..Options::default()
    })
}

#[tokio::test]
async fn a_three_primary_cluster_refuses_replays_across_nodes_and_holds_exact_limits() {
    let Some(cluster) = RedisCluster::start(3) else {
        return;
    };
    let tier = "{ requests_per_minute: 30, tokens_per_day: 1000000 }";
    let nodes = cluster_fleet(&cluster, tier, "{ nonces: fail_closed }");
    within_one_minute(15).await;
    let h = sign_fleet(&nodes[0], "GET", MODELS, b"", now());
    assert_eq!(
        send_signed(&nodes[0], &h, "GET", MODELS, "").await.status,
        200
    );
    for n in &nodes[1..] {
        send_signed(n, &h, "GET", MODELS, "")
            .await
            .assert_error(401, "replayed");
    }
    // A chat: its tokens reach the cluster through the sync's pipelines.
    let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
    let ch = sign_fleet(&nodes[2], "POST", CHAT, body.as_bytes(), now());
    let r = send_signed(&nodes[2], &ch, "POST", CHAT, body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // 43 more at once, round-robin: exactly 28 more pass (30 in the minute).
    let racing = (0..43).map(|i| models(&nodes[i % NODES]));
    assert_eq!(tally(racing).await, [(200, 28), (429, 15)].into());
    eventually("nonce, request and token keys in the cluster", || {
        let nonces = cluster.keys("kgtest:n:*").len();
        let minute = cluster.keys("kgtest:r:*:m:*").len();
        let tokens = cluster.keys("kgtest:t:*").len();
        (nonces == 45 && minute == 1 && tokens == 1).then_some(())
    });
}

#[tokio::test]
async fn killing_a_primary_promotes_its_replica_and_the_fleet_keeps_serving() {
    let Some(mut cluster) = RedisCluster::start(3) else {
        return;
    };
    let nodes = cluster_fleet(
        &cluster,
        "{ requests_per_minute: 100000 }",
        "{ nonces: local, local_window_s: 10 }",
    );
    assert_eq!(models(&nodes[0]).await.status, 200);
    // The primary that holds site alpha's slot (its nonce went there).
    let owner = cluster
        .primaries()
        .into_iter()
        .find(|&p| {
            !cluster
                .cli(p, &["--scan", "--pattern", "kgtest:n:*"])
                .is_empty()
        })
        .expect("a primary with alpha's keys");
    cluster.kill(owner);
    // While the replica takes over, every request is answered (on the outage policy
    // while the cluster is unreachable).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut i = 0;
    loop {
        let r = models(&nodes[i % NODES]).await;
        assert_eq!(r.status, 200, "request {i} during the failover: {}", r.body);
        i += 1;
        let back = nodes
            .iter()
            .all(|n| n.metric("keygate_redis_up") == Some(1.0));
        if back && i > 20 && cluster.primaries().len() == 3 {
            break;
        }
        if Instant::now() >= deadline {
            for n in &nodes {
                eprintln!("up={:?}\n{}", n.metric("keygate_redis_up"), n.logs());
            }
            panic!(
                "the fleet did not get back onto the cluster; primaries {:?}",
                cluster.primaries()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.wait_ok();
    // Fleet-wide again, on the promoted replica.
    let h = sign_fleet(&nodes[0], "GET", MODELS, b"", now());
    assert_eq!(
        send_signed(&nodes[0], &h, "GET", MODELS, "").await.status,
        200
    );
    send_signed(&nodes[1], &h, "GET", MODELS, "")
        .await
        .assert_error(401, "replayed");
}
