//! A fleet of keygate nodes sharing one Redis, for the fleet tests.

use super::redis::Redis;
use super::*;
use std::time::Duration;

/// The name the load balancer in front of the fleet is reached by (signed `@authority`).
pub const HOST: &str = "gw.fleet.test";
pub const MODELS: &str = "/openai/v1/models";
pub const CHAT: &str = "/openai/v1/chat/completions";
pub const NODES: usize = 3;
pub const SYNC_MS: u64 = 100;
pub const TIMEOUT_MS: u64 = 50;

pub fn fleet_yaml(url: &str, nonces: &str) -> String {
    fleet_yaml_with(url, "", nonces)
}

/// `fleet:` with more keys under `fleet.redis` (a flow-mapping fragment: `, ca: …`).
pub fn fleet_yaml_with(url: &str, redis_extra: &str, nonces: &str) -> String {
    format!(
        "fleet:\n  redis: {{ url: \"{url}\", timeout_ms: {TIMEOUT_MS}, key_prefix: \"kgtest:\"{redis_extra} }}\n  nodes: {NODES}\n  sync_interval_ms: {SYNC_MS}\n  on_redis_down: {nonces}\n"
    )
}

/// `fleet:` YAML with a 1 s Redis timeout instead of [`TIMEOUT_MS`], for tests about what
/// the fleet decides rather than when: a thread's first call also connects (TCP, TLS,
/// AUTH), which on a loaded CI machine can take longer than 50 ms and then meets the
/// outage policy.
pub fn patient(yaml: &str) -> String {
    yaml.replace(&format!("timeout_ms: {TIMEOUT_MS},"), "timeout_ms: 1000,")
}

/// A node's options: `tier` for site alpha, the fleet on `redis`, nonces falling back to local.
pub fn node_options(redis: &Redis, tier: &str) -> Options {
    Options {
        tier: tier.into(),
        config_extra: fleet_yaml(&redis.url(), "{ nonces: local, local_window_s: 10 }"),
        extra_hostnames: vec![HOST.into()],
        ..Options::default()
    }
}

/// Three nodes on one config (same secrets, same Redis), each with its own mock provider.
pub fn start_fleet(redis: &Redis, tier: &str) -> Vec<Gateway> {
    start_fleet_with(node_options(redis, tier))
}

/// Three nodes with these options, Redis reached.
pub fn start_fleet_with(opts: Options) -> Vec<Gateway> {
    let nodes = start_nodes(opts, NODES);
    wait_redis_up(&nodes, 1.0);
    nodes
}

/// `n` nodes with these options sharing secrets and master keys (from `master_keys_from`
/// when set, else the first node's), without waiting for Redis.
pub fn start_nodes(opts: Options, n: usize) -> Vec<Gateway> {
    let first = Gateway::start_with(opts.clone());
    let shared = Options {
        secrets: Some(first.secrets.clone()),
        master_keys_from: Some(
            opts.master_keys_from
                .clone()
                .unwrap_or_else(|| first.dir.path().to_path_buf()),
        ),
        ..opts
    };
    let mut nodes = vec![first];
    for _ in 1..n {
        nodes.push(Gateway::start_with(shared.clone()));
    }
    nodes
}

pub fn wait_redis_up(nodes: &[Gateway], want: f64) {
    for n in nodes {
        eventually("keygate_redis_up", || {
            (n.metric("keygate_redis_up") == Some(want)).then_some(())
        });
    }
}

/// keygate-v1 headers for `path` on the fleet's shared name, created at `created`.
pub fn sign_fleet(
    gw: &Gateway,
    method: &str,
    path: &str,
    body: &[u8],
    created: i64,
) -> Vec<(String, String)> {
    let mut h = sign_at(
        &gw.secrets.alpha,
        "alpha.k1",
        method,
        &format!("http://{HOST}{path}"),
        body,
        created,
    );
    h.push(("host".into(), HOST.into()));
    h
}

/// Send already-signed headers to one node.
pub async fn send_signed(
    node: &Gateway,
    h: &[(String, String)],
    method: &str,
    path: &str,
    body: &str,
) -> Resp {
    let body = (!body.is_empty()).then(|| body.as_bytes().to_vec());
    send(&client(), method, &node.url(path), h, body).await
}

pub async fn models(node: &Gateway) -> Resp {
    let h = sign_fleet(node, "GET", MODELS, b"", now());
    send_signed(node, &h, "GET", MODELS, "").await
}

/// Wait, if needed, so that the next `secs` seconds stay inside one clock minute (the
/// minute windows are aligned to it).
pub async fn within_one_minute(secs: u64) {
    let into = now() as u64 % 60;
    if into + secs >= 60 {
        tokio::time::sleep(Duration::from_secs(60 - into + 1)).await;
    }
}
