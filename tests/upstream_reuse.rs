//! Upstream connections are kept and reused (issue #30): against the real binary and
//! `keygate mock-provider`, which counts the connections it accepts. Every way an answer
//! can end that leaves the connection clean (JSON, a stream, a provider error passed on,
//! sequential and concurrent clients) returns it to the pool: no new connection after
//! warm-up.
//!
//! With one worker thread and with two (a worker per thread, the default): Pingora 0.9's
//! pool loses connections to a race between the reusing request and the pooled
//! connection's idle watcher when the watcher runs on another thread
//! (cloudflare/pingora#998, README "Upstream connection reuse"); keygate's workers each run
//! on one thread with their own pool, so the watcher never does. The test also guards
//! keygate's own part (no `Connection: close`, no unread body, no hook that gives a
//! connection up).

mod common;
use common::*;

const CHAT: &str = "/openai/v1/chat/completions";
const JSON: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
const STREAM: &str =
    r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

#[tokio::test]
async fn steady_traffic_opens_no_new_upstream_connection() {
    steady_traffic(1, 2, 8).await
}

#[tokio::test]
async fn steady_traffic_on_two_workers_opens_no_new_upstream_connection() {
    // The kernel gives each new client connection to either worker (SO_REUSEPORT): one
    // request at a time, so that each worker's pool needs one connection, and 20 of them
    // to warm up (a worker is left without any once in 2^19 runs).
    steady_traffic(2, 20, 1).await
}

/// `warm` bursts of `burst` concurrent requests, then 60 one after the other with a burst
/// after every tenth.
async fn steady_traffic(threads: usize, warm: usize, burst: usize) {
    let gw = Gateway::start_with(Options {
        threads,
        ..Options::default()
    });
    // Warm-up: the pool gets its connections (up to `burst` at once below).
    // Each look at the mock's counters is a connection of its own.
    let before = gw.mock.connections();
    for _ in 0..warm {
        self::burst(&gw, burst).await;
    }
    let warmed = gw.mock.connections();
    // Each worker keeps its own pool.
    assert!(
        (1..=(burst * threads) as u64).contains(&(warmed - before - 1)),
        "{warmed} - {before}"
    );
    for i in 0..60 {
        let (body, headers): (&str, &[(&str, &str)]) = match i {
            // A provider error passed on to the client, body and all (once: a run of
            // them would open the upstream's circuit).
            30 => (JSON, &[("x-mock-mode", "error_500")]),
            _ if i % 2 == 1 => (STREAM, &[]),
            _ => (JSON, &[]),
        };
        let r = gw.post_signed(CHAT, body, headers).await;
        let expected = if i == 30 { 500 } else { 200 };
        assert_eq!(r.status, expected, "{i}: {}", r.body);
        if i % 10 == 9 {
            // The client has the last byte a moment before keygate's worker has put the
            // upstream connection back in its pool; a burst sent in that moment needs one
            // more connection than the pool holds (seen once in a full-suite run on a busy
            // machine). Reuse in steady state is what this test is about.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            self::burst(&gw, burst).await;
        }
    }
    let after = gw.mock.connections();
    assert_eq!(
        after - warmed - 1,
        0,
        "upstream connections opened after warm-up"
    );
    assert_eq!(gw.mock.count(), (warm * burst + 60 + 6 * burst) as u64);
}

/// `n` signed requests at once, all answered 200.
async fn burst(gw: &Gateway, n: usize) {
    let all = (0..n).map(|_| gw.post_signed(CHAT, JSON, &[]));
    for r in futures::future::join_all(all).await {
        assert_eq!(r.status, 200, "{}", r.body);
    }
}
