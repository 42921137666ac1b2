//! Fleet mode over real processes: three keygate nodes sharing one `redis-server`.
//!
//! Needs `redis-server` (Debian package `redis-server`; `make deps` installs it). Without
//! it these tests are skipped with a message, unless `KEYGATE_REQUIRE_REDIS` is set
//! (`make test` sets it), in which case they fail.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The name the load balancer in front of the fleet is reached by (signed `@authority`).
const HOST: &str = "gw.fleet.test";
const MODELS: &str = "/openai/v1/models";
const CHAT: &str = "/openai/v1/chat/completions";
const NODES: usize = 3;
const SYNC_MS: u64 = 100;
const TIMEOUT_MS: u64 = 50;

/// A `redis-server` on a loopback port, without persistence.
struct Redis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Redis {
    /// Start one, or `None` (test skipped) when redis-server is not installed.
    fn start() -> Option<Redis> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            assert!(
                std::env::var_os("KEYGATE_REQUIRE_REDIS").is_none(),
                "redis-server is not installed and KEYGATE_REQUIRE_REDIS is set (make deps installs it)"
            );
            eprintln!("SKIPPED: redis-server is not installed (apt-get install redis-server, or make deps)");
            return None;
        }
        let mut r = Redis {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
        };
        r.restart();
        Some(r)
    }

    /// (Re)start on the same port and wait until it answers PING.
    fn restart(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("redis.log")).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        eventually("redis-server answering PING", || self.ping().then_some(()));
    }

    /// Send one inline command; the first line of the answer.
    fn command(&self, cmd: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(format!("{cmd}\r\n").as_bytes()).unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// Kill it (as a crash would).
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn fleet_yaml(url: &str, nonces: &str) -> String {
    format!(
        "fleet:\n  redis: {{ url: \"{url}\", timeout_ms: {TIMEOUT_MS}, key_prefix: \"kgtest:\" }}\n  nodes: {NODES}\n  sync_interval_ms: {SYNC_MS}\n  on_redis_down: {nonces}\n"
    )
}

/// A node's options: `tier` for site alpha, the fleet on `redis`, nonces falling back to local.
fn node_options(redis: &Redis, tier: &str) -> Options {
    Options {
        tier: tier.into(),
        config_extra: fleet_yaml(&redis.url(), "{ nonces: local, local_window_s: 10 }"),
        extra_hostnames: vec![HOST.into()],
        ..Options::default()
    }
}

/// Three nodes on one config (same secrets, same Redis), each with its own mock provider.
fn start_fleet(redis: &Redis, tier: &str) -> Vec<Gateway> {
    let opts = node_options(redis, tier);
    let first = Gateway::start_with(opts.clone());
    let mut nodes = vec![];
    let shared = Options {
        secrets: Some(first.secrets.clone()),
        master_keys_from: Some(first.dir.path().to_path_buf()),
        ..opts
    };
    nodes.push(first);
    for _ in 1..NODES {
        nodes.push(Gateway::start_with(shared.clone()));
    }
    wait_redis_up(&nodes, 1.0);
    nodes
}

fn wait_redis_up(nodes: &[Gateway], want: f64) {
    for n in nodes {
        eventually("keygate_redis_up", || {
            (n.metric("keygate_redis_up") == Some(want)).then_some(())
        });
    }
}

/// keygate-v1 headers for `path` on the fleet's shared name, created at `created`.
fn sign_fleet(
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
async fn send_signed(
    node: &Gateway,
    h: &[(String, String)],
    method: &str,
    path: &str,
    body: &str,
) -> Resp {
    let body = (!body.is_empty()).then(|| body.as_bytes().to_vec());
    send(&client(), method, &node.url(path), h, body).await
}

async fn models(node: &Gateway) -> Resp {
    let h = sign_fleet(node, "GET", MODELS, b"", now());
    send_signed(node, &h, "GET", MODELS, "").await
}

/// Wait, if needed, so that the next `secs` seconds stay inside one clock minute (the
/// minute windows are aligned to it).
async fn within_one_minute(secs: u64) {
    let into = now() as u64 % 60;
    if into + secs >= 60 {
        tokio::time::sleep(Duration::from_secs(60 - into + 1)).await;
    }
}

/// The documented worst-case overshoot: `(N − 1) × r × 2 × (sync_interval + RTT)`, for a
/// per-node rate `r` (requests/s), with the RTT bounded by `timeout_ms`.
fn overshoot(per_node_rate: f64) -> u64 {
    let l = 2.0 * (SYNC_MS + TIMEOUT_MS) as f64 / 1000.0;
    ((NODES - 1) as f64 * per_node_rate * l).floor() as u64
}

#[tokio::test]
async fn request_accepted_by_one_node_is_refused_as_replayed_by_the_others() {
    let Some(redis) = Redis::start() else { return };
    let nodes = start_fleet(&redis, "{ requests_per_minute: 100000 }");
    let h = sign_fleet(&nodes[0], "GET", MODELS, b"", now());
    let r = send_signed(&nodes[0], &h, "GET", MODELS, "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    for node in &nodes {
        let r = send_signed(node, &h, "GET", MODELS, "").await;
        r.assert_error(401, "replayed");
    }
    // Only the first node's provider ever saw it.
    let seen: Vec<u64> = nodes.iter().map(|n| n.mock.count()).collect();
    assert_eq!(seen, vec![1, 0, 0]);
    // One signed request fired at every node at once, three times each: one success.
    let h = sign_fleet(&nodes[0], "GET", MODELS, b"", now());
    let racing = (0..3 * NODES).map(|i| send_signed(&nodes[i % NODES], &h, "GET", MODELS, ""));
    let counts = tally(racing).await;
    assert_eq!(counts, [(200, 1), (401, 3 * NODES - 1)].into());
    // Every node timed its Redis round trips.
    for n in &nodes {
        let count = n
            .metric("keygate_redis_seconds_count{op=\"nonce\"}")
            .unwrap_or(0.0);
        let sum = n
            .metric("keygate_redis_seconds_sum{op=\"nonce\"}")
            .unwrap_or(0.0);
        assert!(count >= 1.0);
        eprintln!(
            "nonce round trip (debug build, loopback): {count} calls, mean {:.3} ms",
            1000.0 * sum / count
        );
    }
}

#[tokio::test]
async fn round_robin_over_three_nodes_is_held_to_the_limit_plus_documented_overshoot() {
    let Some(redis) = Redis::start() else { return };
    let nodes = start_fleet(&redis, "{ requests_per_minute: 30 }");
    // 60 requests at 20/s overall: ~6.7/s per node.
    let (total, rate) = (60usize, 20.0);
    within_one_minute(total as u64 / 20 + 3).await;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut ok = 0u64;
    for i in 0..total {
        tick.tick().await;
        let r = models(&nodes[i % NODES]).await;
        match r.status {
            200 => ok += 1,
            429 => assert_eq!(r.code(), "rate_limited"),
            s => panic!("unexpected {s}: {}", r.body),
        }
    }
    let bound = 30 + overshoot(rate / NODES as f64);
    eprintln!("admitted {ok} of {total} (limit 30, documented bound {bound})");
    assert!((30..=bound).contains(&ok), "admitted {ok}, bound {bound}");
    let upstream: u64 = nodes.iter().map(|n| n.mock.count()).sum();
    assert_eq!(upstream, ok);
}

#[tokio::test]
async fn token_budget_holds_across_nodes() {
    let Some(redis) = Redis::start() else { return };
    let nodes = start_fleet(&redis, "{ tokens_per_day: 50 }");
    let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
    let mut statuses = vec![];
    let mut last = None;
    // The mock reports 21 tokens a chat: 0 → 21 → 42 → 63 ≥ 50.
    for i in 0..4 {
        let node = &nodes[i % NODES];
        let h = sign_fleet(node, "POST", CHAT, body.as_bytes(), now());
        let r = send_signed(node, &h, "POST", CHAT, body).await;
        statuses.push(r.status);
        last = Some(r);
        // Charged as the body ends; synced to Redis within one interval.
        tokio::time::sleep(Duration::from_millis(4 * SYNC_MS)).await;
    }
    assert_eq!(statuses, vec![200, 200, 200, 429]);
    let r = last.unwrap();
    assert_eq!(r.json()["error"]["limit"], "tokens_per_day");
    assert_eq!(r.json()["error"]["budget"]["used"], 63);
}

#[tokio::test]
async fn redis_outage_falls_back_without_a_crash_and_recovery_restores_fleet_limits() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let nodes = start_fleet(&redis, "{ requests_per_minute: 30 }");
    within_one_minute(25).await;
    for n in &nodes {
        assert_eq!(models(n).await.status, 200);
    }
    // Let the three counts reach Redis.
    tokio::time::sleep(Duration::from_millis(4 * SYNC_MS)).await;

    redis.stop();
    wait_redis_up(&nodes, 0.0);
    // Limits: each node alone enforces ceil(30 / 3) = 10; node 1 already counted one.
    let mut ok = 0;
    for _ in 0..12 {
        let r = models(&nodes[0]).await;
        if r.status == 200 {
            ok += 1;
        } else {
            r.assert_error(429, "rate_limited");
        }
    }
    assert_eq!(
        ok, 9,
        "node 1 alone is held to 10 a minute while Redis is down"
    );
    // Nonces (policy `local`): a replay to the same node is refused; signatures older
    // than the shortened 10 s window are refused as stale.
    let kept = sign_fleet(&nodes[1], "GET", MODELS, b"", now());
    assert_eq!(
        send_signed(&nodes[1], &kept, "GET", MODELS, "")
            .await
            .status,
        200
    );
    let r = send_signed(&nodes[1], &kept, "GET", MODELS, "").await;
    r.assert_error(401, "replayed");
    let old = sign_fleet(&nodes[1], "GET", MODELS, b"", now() - 20);
    let r = send_signed(&nodes[1], &old, "GET", MODELS, "").await;
    r.assert_error(401, "stale_request");
    for n in &nodes {
        assert!(
            n.metric("keygate_redis_errors_total{op=\"sync\"}")
                .unwrap_or(0.0)
                >= 1.0
        );
        assert_eq!(
            n.admin_get("/healthz").0,
            200,
            "node alive while Redis is down"
        );
    }

    redis.restart();
    wait_redis_up(&nodes, 1.0);
    tokio::time::sleep(Duration::from_millis(5 * SYNC_MS)).await;
    // The nonce node 2 accepted during the outage was written back: node 3 refuses it.
    let r = send_signed(&nodes[2], &kept, "GET", MODELS, "").await;
    r.assert_error(401, "replayed");
    // Fleet-wide again: 3 + 9 + 1 = 13 of 30 used, so node 3 alone gets 17 more (its
    // 1/N share would be 9; on its own sketch, 29). The restarted Redis is empty: the
    // nodes notice (generation marker) and send their whole counts again.
    let mut ok = 0;
    for _ in 0..25 {
        if models(&nodes[2]).await.status == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 17, "node 3 sees the fleet's count after recovery");
}

#[tokio::test]
async fn fail_closed_refuses_signed_requests_while_redis_is_down_and_bearer_keys_get_one_nth() {
    if Redis::start().is_none() {
        return;
    }
    // Nothing listens on this port: Redis is down from the start.
    let url = format!("redis://127.0.0.1:{}", free_port());
    let gw = Gateway::start_with(Options {
        tier: "{ requests_per_minute: 30 }".into(),
        config_extra: fleet_yaml(&url, "{ nonces: fail_closed }"),
        ..Options::default()
    });
    within_one_minute(10).await;
    let r = gw.call("alpha.k1", "GET", MODELS, "").await;
    r.assert_error(503, "upstream_unavailable");
    assert!(r.headers.contains_key("retry-after"));
    let auth = vec![(
        "authorization".to_string(),
        format!("Bearer {}", gw.secrets.bearer),
    )];
    let mut ok = 0;
    for _ in 0..12 {
        if send(&client(), "GET", &gw.url(MODELS), &auth, None)
            .await
            .status
            == 200
        {
            ok += 1;
        }
    }
    assert_eq!(ok, 10, "ceil(30 / 3) while Redis is down");
    assert_eq!(gw.metric("keygate_redis_up"), Some(0.0));
    // Ready once the sync service's first attempt to reach Redis has finished (it may
    // still be under way this early): an outage is the policy's business, not the
    // balancer's.
    eventually("ready while Redis is down", || {
        (gw.admin_get("/readyz").0 == 200).then_some(())
    });
    assert!(!gw.logs().contains("hunter2"));
}

#[tokio::test]
async fn a_stalled_redis_costs_at_most_the_timeout_then_recovers() {
    let Some(redis) = Redis::start() else { return };
    let gw = Gateway::start_with(node_options(&redis, "{ requests_per_minute: 100000 }"));
    wait_redis_up(std::slice::from_ref(&gw), 1.0);
    assert_eq!(models(&gw).await.status, 200);
    // Every client of this Redis now waits 1.5 s for any answer.
    assert_eq!(redis.command("CLIENT PAUSE 1500 ALL"), "+OK");
    let started = std::time::Instant::now();
    let r = models(&gw).await;
    let took = started.elapsed();
    assert_eq!(r.status, 200, "the local fallback answered: {}", r.body);
    assert!(
        took < Duration::from_millis(750),
        "took {took:?}: not cut off by timeout_ms"
    );
    assert!(
        gw.metric("keygate_redis_errors_total{op=\"nonce\"}")
            .unwrap_or(0.0)
            >= 1.0
    );
    assert_eq!(gw.metric("keygate_redis_up"), Some(0.0));
    // Back once the pause ends, without a restart.
    wait_redis_up(std::slice::from_ref(&gw), 1.0);
    let h = sign_fleet(&gw, "GET", MODELS, b"", now());
    assert_eq!(send_signed(&gw, &h, "GET", MODELS, "").await.status, 200);
}

#[tokio::test]
async fn browser_token_max_requests_holds_across_nodes() {
    let Some(redis) = Redis::start() else { return };
    let nodes = start_fleet(&redis, "{ requests_per_minute: 100000 }");
    let r = nodes[0]
        .call(
            "alpha.k1",
            "POST",
            "/keygate/v1/tokens",
            r#"{"max_requests": 2}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let token = r.json()["token"].as_str().unwrap().to_string();
    let auth = vec![("authorization".to_string(), format!("Bearer {token}"))];
    let mut statuses = vec![];
    for i in 0..4 {
        let r = send(&client(), "GET", &nodes[i % NODES].url(MODELS), &auth, None).await;
        statuses.push(r.status);
    }
    assert_eq!(
        statuses,
        vec![200, 200, 429, 429],
        "two uses in the whole fleet"
    );
}
