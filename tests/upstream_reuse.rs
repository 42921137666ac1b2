//! Upstream connections are kept and reused (issue #30): against the real binary and
//! `keygate mock-provider`, which counts the connections it accepts. Every way an answer
//! can end that leaves the connection clean (JSON, a stream, a provider error passed on,
//! sequential and concurrent clients) returns it to the pool: no new connection after
//! warm-up.
//!
//! One worker thread: with two or more, Pingora 0.9's pool loses some connections to a
//! race between the reusing request and the pooled connection's idle watcher when the
//! watcher runs on another thread (cloudflare/pingora#998, README "Upstream connection
//! reuse"), which this test is not about: it guards keygate's part (no `Connection:
//! close`, no unread body, no hook that gives a connection up).

mod common;
use common::*;

const CHAT: &str = "/openai/v1/chat/completions";
const JSON: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
const STREAM: &str =
    r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

#[tokio::test]
async fn steady_traffic_opens_no_new_upstream_connection() {
    let gw = Gateway::start_with(Options {
        threads: 1,
        ..Options::default()
    });
    // Warm-up: the pool gets its connections (up to 8 at once below).
    let burst = |n: usize| {
        let gw = &gw;
        async move {
            let all = (0..n).map(|_| gw.post_signed(CHAT, JSON, &[]));
            for r in futures::future::join_all(all).await {
                assert_eq!(r.status, 200, "{}", r.body);
            }
        }
    };
    // Each look at the mock's counters is a connection of its own.
    let before = gw.mock.connections();
    burst(8).await;
    burst(8).await;
    let warm = gw.mock.connections();
    assert!((1..=8).contains(&(warm - before - 1)), "{warm} - {before}");
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
            burst(8).await;
        }
    }
    let after = gw.mock.connections();
    assert_eq!(
        after - warm - 1,
        0,
        "upstream connections opened after warm-up"
    );
    assert_eq!(gw.mock.count(), 2 * 8 + 60 + 6 * 8);
}
