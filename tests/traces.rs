//! OpenTelemetry traces against an OTLP/HTTP receiver on loopback (this file's: it answers
//! `POST /v1/traces` and decodes the body with the OpenTelemetry protobufs): one server and
//! one client span per request with the SPEC §8.7 attributes, the client's `traceparent`
//! continued and forwarded; a collector that is down changes no answer.

mod common;

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const CHAT: &str = "/openai/v1/chat/completions";
const PROMPT: &str = "purple-elephant-prompt-42";

/// What the receiver got: decoded spans and the raw bodies.
#[derive(Default, Clone)]
struct Received {
    spans: Arc<Mutex<Vec<Span>>>,
    raw: Arc<Mutex<Vec<u8>>>,
}

async fn receiver() -> (u16, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = Received::default();
    let g = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let g = g.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(sock);
                loop {
                    let mut len = 0usize;
                    let mut line = String::new();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        let mut h = String::new();
                        r.read_line(&mut h).await.unwrap();
                        if h.trim().is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                len = v.trim().parse().unwrap();
                            }
                        }
                    }
                    let mut body = vec![0; len];
                    r.read_exact(&mut body).await.unwrap();
                    let req = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
                    for rs in req.resource_spans {
                        for ss in rs.scope_spans {
                            g.spans.lock().unwrap().extend(ss.spans);
                        }
                    }
                    g.raw.lock().unwrap().extend(body);
                    let _ = r
                        .get_mut()
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .await;
                }
            });
        }
    });
    (port, got)
}

fn attr(span: &Span, key: &str) -> Option<Any> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.clone()?.value)
}

/// What the receiver has once it holds at least `n` spans (10 s at most).
async fn spans_at_least(got: &Received, n: usize) -> Vec<Span> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.spans.lock().unwrap().len() < n {
        assert!(Instant::now() < deadline, "fewer than {n} spans exported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    got.spans.lock().unwrap().clone()
}

/// A gateway with these options exporting every span to a receiver of this file's.
async fn traced(opts: Options) -> (Gateway, Received) {
    let (port, got) = receiver().await;
    let gw = Gateway::start_with(Options {
        config_extra: otlp(&format!("http://127.0.0.1:{port}")),
        ..opts
    });
    (gw, got)
}

fn otlp(endpoint: &str) -> String {
    format!("telemetry:\n  otlp: {{ endpoint: \"{endpoint}\", sample_ratio: 1.0 }}\n")
}

#[tokio::test]
async fn one_server_and_one_client_span_per_request_with_the_client_traceparent_continued() {
    let (gw, got) = traced(Options::default()).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let body =
        format!(r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"{PROMPT}"}}]}}"#);
    let tp = format!("00-{trace}-{parent}-01");
    let r = gw.post_signed(CHAT, &body, &[("traceparent", &tp)]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Forwarded upstream: same trace, keygate's client span as the parent.
    let sent = gw.mock.last()["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        sent.starts_with(&format!("00-{trace}-")) && !sent.contains(parent),
        "{sent}"
    );
    let spans = spans_at_least(&got, 2).await;
    assert_eq!(spans.len(), 2, "{spans:?}");
    let server = spans.iter().find(|s| s.kind == 2).expect("a server span");
    let attempt = spans.iter().find(|s| s.kind == 3).expect("a client span");
    assert_eq!(hex::encode(&server.trace_id), trace);
    assert_eq!(hex::encode(&server.parent_span_id), parent);
    assert_eq!(attempt.parent_span_id, server.span_id);
    assert_eq!(
        sent,
        format!("00-{trace}-{}-01", hex::encode(&attempt.span_id))
    );
    let s = |k: &str| match attr(server, k) {
        Some(Any::StringValue(v)) => v,
        other => panic!("{k}: {other:?}"),
    };
    let i = |k: &str| match attr(server, k) {
        Some(Any::IntValue(v)) => v,
        other => panic!("{k}: {other:?}"),
    };
    assert_eq!(s("gen_ai.system"), "openai");
    assert_eq!(s("gen_ai.request.model"), "gpt-4o");
    assert_eq!(s("keygate.site"), "alpha");
    assert_eq!(s("keygate.route"), "/openai/");
    assert_eq!(i("http.response.status_code"), 200);
    assert!(i("gen_ai.usage.input_tokens") > 0 && i("gen_ai.usage.output_tokens") > 0);
    assert!(server.end_time_unix_nano >= attempt.end_time_unix_nano);
    // No prompt, no secret in what left for the collector.
    let raw = String::from_utf8_lossy(&got.raw.lock().unwrap()).to_string();
    assert!(!raw.contains(PROMPT));
    for secret in gw.all_secrets() {
        assert!(!raw.contains(secret));
    }
    // An unauthenticated caller's traceparent is not continued.
    let h = vec![("traceparent".to_string(), tp.clone())];
    let r = send(&client(), "GET", &gw.url("/openai/v1/models"), &h, None).await;
    assert_eq!(r.status, 401);
    let spans = spans_at_least(&got, 3).await;
    let refused = &spans[2];
    assert_ne!(hex::encode(&refused.trace_id), trace);
    assert!(refused.parent_span_id.is_empty());
}

#[tokio::test]
async fn a_collector_that_is_down_changes_no_answer() {
    let dead = free_port();
    let on = Gateway::start_with(Options {
        config_extra: otlp(&format!("http://127.0.0.1:{dead}")),
        ..Options::default()
    });
    let off = Gateway::start();
    let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
    // Alternating, so that both see the same machine.
    let mut times = (vec![], vec![]);
    for _ in 0..40 {
        for (gw, t) in [(&on, &mut times.0), (&off, &mut times.1)] {
            let start = Instant::now();
            assert_eq!(gw.post_signed(CHAT, body, &[]).await.status, 200);
            t.push(start.elapsed());
        }
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (a, b) = (median(&mut times.0), median(&mut times.1));
    assert!(
        a < b * 2 + Duration::from_millis(5),
        "with a dead collector {a:?}, without {b:?}"
    );
    eventually("a failed export counted", || {
        (on.metric("keygate_otlp_exports_total{result=\"failed\"}")
            .unwrap_or(0.0)
            >= 1.0)
            .then_some(())
    });
}

/// `make bench` sends its traced keygate's spans to `keygate mock-provider`'s OTLP sink:
/// exports there succeed (a 404 would count every one as failed and drop its spans, so the
/// bench would measure a failing exporter), and the sink records nothing.
#[tokio::test]
async fn the_mock_providers_otlp_sink_accepts_exports() {
    let sink = Mock::start();
    let gw = Gateway::start_with(Options {
        config_extra: otlp(&format!("http://{}", sink.addr)),
        ..Options::default()
    });
    let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
    assert_eq!(gw.post_signed(CHAT, body, &[]).await.status, 200);
    eventually("an export accepted", || {
        (gw.metric("keygate_otlp_exports_total{result=\"ok\"}")
            .unwrap_or(0.0)
            >= 1.0)
            .then_some(())
    });
    assert_eq!(
        gw.metric("keygate_otlp_exports_total{result=\"failed\"}")
            .unwrap_or(0.0),
        0.0
    );
    assert_eq!(sink.count(), 0);
}

/// Every upstream attempt has its client span, each with what it saw: a 500 that failed
/// over keeps its status (not the next attempt's), and an attempt whose connection could
/// not be made has a span too (no status, an error); the last attempt's span carries the
/// answer, and the `traceparent` the fallback got names its own span.
#[tokio::test]
async fn each_failed_over_attempt_has_its_own_client_span() {
    let backup = Mock::start();
    let (mut gw, got) = traced(Options {
        extra_upstreams: format!(
            "  backup:\n    kind: openai-compatible\n    url: \"http://{}\"\n    credentials:\n      - {{ id: backup-1, secret: \"file:{{dir}}/provider2.key\" }}\n",
            backup.addr
        ),
        route_extra_for: vec![("/openai/", "    fallbacks: [backup]\n".into())],
        ..Options::default()
    })
    .await;
    let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
    let status = |s: &Span| match attr(s, "http.response.status_code") {
        Some(Any::IntValue(v)) => Some(v),
        None => None,
        other => panic!("{other:?}"),
    };
    let upstream = |s: &Span| match attr(s, "keygate.upstream") {
        Some(Any::StringValue(v)) => v,
        other => panic!("{other:?}"),
    };
    const ERROR: i32 = 2;
    for (round, headers) in [
        vec![("x-mock-mode", "error_500")],
        // Then the primary is gone: connection refused.
        vec![],
    ]
    .into_iter()
    .enumerate()
    {
        if round == 1 {
            gw.mock.stop();
        }
        let r = gw.post_signed(CHAT, body, &headers).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let spans = spans_at_least(&got, 3 * (round + 1)).await;
        let spans = &spans[3 * round..];
        let server = spans.iter().find(|s| s.kind == 2).expect("a server span");
        let mut attempts: Vec<&Span> = spans.iter().filter(|s| s.kind == 3).collect();
        attempts.sort_by_key(|s| s.start_time_unix_nano);
        assert_eq!(attempts.len(), 2, "{spans:?}");
        let (first, second) = (attempts[0], attempts[1]);
        assert_eq!(upstream(first), "openai");
        assert_eq!(upstream(second), "backup");
        assert!(first.parent_span_id == server.span_id && second.parent_span_id == server.span_id);
        assert_eq!(
            status(first),
            [Some(500), None][round],
            "round {round}: {first:?}"
        );
        assert_eq!(first.status.as_ref().map(|s| s.code), Some(ERROR));
        assert!(first.end_time_unix_nano <= second.start_time_unix_nano);
        assert_eq!(status(second), Some(200));
        assert!(second.status.is_none(), "{second:?}");
        let sent = backup.last()["headers"]["traceparent"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(sent.contains(&hex::encode(&second.span_id)), "{sent}");
    }
}

/// A Realtime session's upstream WebSocket is an attempt like any other: its client span
/// (status 101) under the session's server span, and the `traceparent` the provider got
/// with the handshake names it.
#[tokio::test]
async fn a_realtime_session_has_a_client_span_and_sends_its_traceparent() {
    use futures::StreamExt;
    let (gw, got) = traced(Options::default()).await;
    let auth = vec![(
        "authorization".to_string(),
        format!("Bearer {}", gw.secrets.bearer),
    )];
    let (mut ws, _) = open(&gw, "/openai/v1/realtime?model=gpt-realtime", &auth)
        .await
        .unwrap();
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
    let spans = spans_at_least(&got, 2).await;
    let server = spans.iter().find(|s| s.kind == 2).expect("a server span");
    let attempt = spans.iter().find(|s| s.kind == 3).expect("a client span");
    assert_eq!(attempt.parent_span_id, server.span_id);
    assert_eq!(
        attr(attempt, "http.response.status_code"),
        Some(Any::IntValue(101))
    );
    assert!(attempt.status.is_none(), "{attempt:?}");
    let sent = gw.mock.last()["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        sent,
        format!(
            "00-{}-{}-01",
            hex::encode(&server.trace_id),
            hex::encode(&attempt.span_id)
        )
    );
}

/// A collector that answers with a redirect never gets its headers (its API key) sent on:
/// the exporter follows no redirect.
#[tokio::test]
async fn an_export_is_never_redirected_with_its_headers() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let elsewhere_port = elsewhere.local_addr().unwrap().port();
    let followed = Arc::new(AtomicUsize::new(0));
    let f = followed.clone();
    tokio::spawn(async move {
        while elsewhere.accept().await.is_ok() {
            f.fetch_add(1, Ordering::SeqCst);
        }
    });
    let redirector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = redirector.local_addr().unwrap().port();
    let exports = Arc::new(AtomicUsize::new(0));
    let e = exports.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = redirector.accept().await {
            let e = e.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 20];
                // The head and at least part of the body; the answer does not wait for more.
                let _ = sock.read(&mut buf).await;
                e.fetch_add(1, Ordering::SeqCst);
                let answer = format!(
                    "HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:{elsewhere_port}/v1/traces\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = sock.write_all(answer.as_bytes()).await;
            });
        }
    });
    // The collector's key, from a file as outside --demo it must be.
    let key_dir = tempfile::tempdir().unwrap();
    let key_file = key_dir.path().join("otlp.key");
    std::fs::write(&key_file, "otlp-key-123\n").unwrap();
    let gw = Gateway::start_with(Options {
        config_extra: format!(
            "telemetry:\n  otlp: {{ endpoint: \"http://127.0.0.1:{port}\", sample_ratio: 1.0, headers: {{ x-api-key: \"file:{}\" }} }}\n",
            key_file.display()
        ),
        ..Options::default()
    });
    let r = gw.post_signed(CHAT, &chat_body(), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let deadline = Instant::now() + Duration::from_secs(10);
    while exports.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "no export reached the collector");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        followed.load(Ordering::SeqCst),
        0,
        "the redirect was followed"
    );
}

fn chat_body() -> String {
    r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#.to_string()
}
