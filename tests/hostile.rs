//! The adversarial battery: hostile framing, paths, headers and bodies against the real
//! binary. Each case states its exact outcome, and the mock provider must receive
//! nothing from any of them.

mod common;

use common::*;

const CHAT: &str = "/openai/v1/chat/completions";
const BODY: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;

/// How a hostile request must end.
#[derive(Debug, PartialEq)]
enum Outcome {
    Status(u16),
    /// The connection closed without a response (or with a bare 400 from the HTTP parser).
    ClosedOr400,
}

fn outcome_of(resp: &str) -> (Option<u16>, String) {
    let status = resp
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok());
    (status, resp.chars().take(300).collect())
}

/// Signed headers (as lines) for `body` on `path`.
fn signed_lines(gw: &Gateway, method: &str, path: &str, body: &[u8]) -> String {
    gw.sign("alpha.k1", &gw.secrets.alpha, method, path, body)
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect()
}

fn check(gw: &Gateway, name: &str, req: &[u8], expected: Outcome) {
    let resp = raw(gw.port, req);
    let (status, head) = outcome_of(&resp);
    match expected {
        Outcome::Status(s) => assert_eq!(status, Some(s), "{name}: {head}"),
        Outcome::ClosedOr400 => assert!(status.is_none() || status == Some(400), "{name}: {head}"),
    }
}

#[test]
fn hostile_framing_is_refused() {
    let gw = Gateway::start_with(Options {
        server_extra: "  body_timeout_ms: 1000".into(),
        ..Options::default()
    });
    let host = format!("Host: 127.0.0.1:{}\r\n", gw.port);
    let len = BODY.len();
    let chunked = format!("{len:x}\r\n{BODY}\r\n0\r\n\r\n");
    let cases: Vec<(&str, String, Outcome)> = vec![
        ("CL then TE", format!("POST {CHAT} HTTP/1.1\r\n{host}{{sig}}Content-Length: {len}\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}"), Outcome::Status(400)),
        ("TE then CL", format!("POST {CHAT} HTTP/1.1\r\n{host}{{sig}}Transfer-Encoding: chunked\r\nContent-Length: {len}\r\n\r\n{chunked}"), Outcome::Status(400)),
        ("duplicate differing CL", format!("POST {CHAT} HTTP/1.1\r\n{host}{{sig}}Content-Length: {len}\r\nContent-Length: {}\r\n\r\n{BODY}", len + 1), Outcome::ClosedOr400),
        ("CL with plus sign", format!("POST {CHAT} HTTP/1.1\r\n{host}{{sig}}Content-Length: +{len}\r\n\r\n{BODY}"), Outcome::ClosedOr400),
        ("TE with trailing space", format!("POST {CHAT} HTTP/1.1\r\n{host}{{sig}}Transfer-Encoding: chunked \r\n\r\n{chunked}"), Outcome::Status(400)),
        ("TE xchunked", format!("POST {CHAT} HTTP/1.1\r\n{host}{{sig}}Transfer-Encoding: xchunked\r\n\r\n{chunked}"), Outcome::ClosedOr400),
        ("TE chunked, identity", format!("POST {CHAT} HTTP/1.1\r\n{host}{{sig}}Transfer-Encoding: chunked, identity\r\n\r\n{chunked}"), Outcome::ClosedOr400),
        ("TE identity, chunked", format!("POST {CHAT} HTTP/1.1\r\n{host}{{sig}}Transfer-Encoding: identity, chunked\r\n\r\n{chunked}"), Outcome::Status(400)),
        ("chunk-size overflow", format!("POST {CHAT} HTTP/1.1\r\n{host}{{sig}}Transfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\n{BODY}\r\n0\r\n\r\n"), Outcome::ClosedOr400),
        ("obs-fold", format!("POST {CHAT} HTTP/1.1\r\n{host}{{sig}}X-Folded: a\r\n b\r\nContent-Length: {len}\r\n\r\n{BODY}"), Outcome::ClosedOr400),
        ("CR in a header value", format!("POST {CHAT} HTTP/1.1\r\n{host}{{sig}}X-Bad: a\rb\r\nContent-Length: {len}\r\n\r\n{BODY}"), Outcome::ClosedOr400),
        ("NUL in a header value", format!("POST {CHAT} HTTP/1.1\r\n{host}{{sig}}X-Bad: a\0b\r\nContent-Length: {len}\r\n\r\n{BODY}"), Outcome::ClosedOr400),
        ("two Host headers", format!("POST {CHAT} HTTP/1.1\r\n{host}Host: evil.example\r\n{{sig}}Content-Length: {len}\r\n\r\n{BODY}"), Outcome::Status(400)),
        ("absolute-form with another host", format!("POST http://evil.example{CHAT} HTTP/1.1\r\n{host}{{sig}}Content-Length: {len}\r\n\r\n{BODY}"), Outcome::Status(400)),
        ("1,000 headers", format!("POST {CHAT} HTTP/1.1\r\n{host}{}{{sig}}Content-Length: {len}\r\n\r\n{BODY}", (0..1000).map(|i| format!("X-H{i}: v\r\n")).collect::<String>()), Outcome::ClosedOr400),
        ("a 64 KiB header", format!("POST {CHAT} HTTP/1.1\r\n{host}X-Big: {}\r\n{{sig}}Content-Length: {len}\r\n\r\n{BODY}", "a".repeat(64 * 1024)), Outcome::Status(400)),
        ("truncated body", format!("POST {CHAT} HTTP/1.1\r\n{host}{{sig}}Content-Length: {}\r\n\r\n{}", len, &BODY[..len / 2]), Outcome::ClosedOr400),
    ];
    for (name, req, expected) in cases {
        // A fresh signature (nonce) for each case, so none is refused as a replay.
        let req = req.replace("{sig}", &signed_lines(&gw, "POST", CHAT, BODY.as_bytes()));
        check(&gw, name, req.as_bytes(), expected);
    }
    assert_eq!(gw.mock.count(), 0);
    // Bare LF line endings (RFC 9112 §2.2 allows them) parse as the same request.
    let sig = signed_lines(&gw, "POST", CHAT, BODY.as_bytes()).replace("\r\n", "\n");
    let req = format!("POST {CHAT} HTTP/1.1\n{}{sig}Content-Length: {len}\nContent-Type: application/json\nConnection: close\n\n{BODY}", host.replace("\r\n", "\n"));
    check(&gw, "bare LF", req.as_bytes(), Outcome::Status(200));
    assert_eq!(gw.mock.count(), 1);
}

#[test]
fn a_request_hidden_in_a_body_is_never_executed() {
    let gw = Gateway::start();
    let host = format!("Host: 127.0.0.1:{}\r\n", gw.port);
    let hidden = format!(
        "GET /openai/v1/models HTTP/1.1\r\n{host}Authorization: Bearer {}\r\n\r\n",
        gw.secrets.bearer
    );
    // Refused before its body is read (no signature): the body must not be parsed as the
    // next request on the connection.
    let req = format!("POST {CHAT} HTTP/1.1\r\n{host}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{hidden}", hidden.len());
    let resp = raw(gw.port, req.as_bytes());
    assert!(resp.starts_with("HTTP/1.1 401"), "{resp}");
    assert_eq!(
        resp.matches("HTTP/1.1 ").count(),
        1,
        "a second response: {resp}"
    );
    assert_eq!(gw.mock.count(), 0);
}

#[test]
fn hostile_paths_are_refused() {
    let gw = Gateway::start();
    let host = format!("Host: 127.0.0.1:{}\r\n", gw.port);
    for path in [
        "/openai/../admin",
        "/openai/%2e%2e/admin",
        "/openai%2fv1/models",
        "/openai/%5cv1/models",
        "/openai//v1/models",
        "/openai/v1/models%00",
        "/openai/%c0%ae%c0%ae/admin",
    ] {
        let req = format!(
            "GET {path} HTTP/1.1\r\n{host}Authorization: Bearer {}\r\nConnection: close\r\n\r\n",
            gw.secrets.bearer
        );
        check(&gw, path, req.as_bytes(), Outcome::Status(400));
    }
    let long = format!("/openai/{}", "a".repeat(10_000));
    let req = format!("GET {long} HTTP/1.1\r\n{host}Connection: close\r\n\r\n");
    check(&gw, "very long path", req.as_bytes(), Outcome::Status(400));
    assert_eq!(gw.mock.count(), 0);
}

#[tokio::test]
async fn hostile_signatures_and_bodies_are_refused() {
    let gw = Gateway::start();
    // A 1,000-component Signature-Input and a 16-digit created.
    let comps: String = (0..1000).map(|i| format!("\"x-h{i}\" ")).collect();
    let mut h = gw.sign("alpha.k1", &gw.secrets.alpha, "POST", CHAT, BODY.as_bytes());
    h[1].1 = format!("sig1=({comps});created=1;keyid=\"alpha.k1\";alg=\"hmac-sha256\";nonce=\"abcdefghijklmnop\";tag=\"keygate-v1\"");
    let r = send(&client(), "POST", &gw.url(CHAT), &h, Some(BODY.into())).await;
    assert_eq!((r.status, r.code().as_str()), (401, "unauthenticated"));
    let mut h = gw.sign("alpha.k1", &gw.secrets.alpha, "POST", CHAT, BODY.as_bytes());
    h[1].1 = h[1]
        .1
        .replace(&format!("created={}", now()), "created=1767225600000000");
    let r = send(&client(), "POST", &gw.url(CHAT), &h, Some(BODY.into())).await;
    assert_eq!(r.status, 401);
    // Bodies: invalid UTF-8, duplicate keys, 10,000-deep nesting, huge numbers.
    let deep = format!(
        "{{\"model\":\"gpt-4o\",\"x\":{}{}}}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    for (name, body) in [
        (
            "invalid UTF-8",
            b"{\"model\":\"gpt-4o\",\"m\":\"\xff\xfe\"}".to_vec(),
        ),
        (
            "duplicate keys",
            br#"{"model":"gpt-4o","model":"gpt-5-ultra"}"#.to_vec(),
        ),
        ("deep nesting", deep.into_bytes()),
        (
            "huge number",
            br#"{"model":"gpt-4o","max_tokens":1e999}"#.to_vec(),
        ),
    ] {
        let h = gw.sign("alpha.k1", &gw.secrets.alpha, "POST", CHAT, &body);
        let r = send(&client(), "POST", &gw.url(CHAT), &h, Some(body)).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "bad_request"),
            "{name}: {}",
            r.body
        );
    }
    assert_eq!(gw.mock.count(), 0);
}

/// Read an endless mock stream through keygate until it ends (at most 10 s).
async fn read_endless_stream(gw: &Gateway, extra: &[(&str, &str)]) -> Vec<u8> {
    let body = r#"{"model":"gpt-4o","stream":true,"messages":[]}"#;
    let mut h = gw.sign("alpha.k1", &gw.secrets.alpha, "POST", CHAT, body.as_bytes());
    h.push(("x-mock-mode".into(), "endless_stream".into()));
    for (k, v) in extra {
        h.push((k.to_string(), v.to_string()));
    }
    let mut rb = client()
        .post(gw.url(CHAT))
        .header("content-type", "application/json")
        .body(body);
    for (k, v) in &h {
        rb = rb.header(k.as_str(), v.as_str());
    }
    let read = async {
        use futures::StreamExt;
        let r = rb.send().await.unwrap();
        assert_eq!(r.status(), 200);
        let mut got = Vec::new();
        let mut stream = r.bytes_stream();
        // Ends cleanly or with a transfer error: either way it ends.
        while let Some(Ok(chunk)) = stream.next().await {
            got.extend_from_slice(&chunk);
        }
        got
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), read)
        .await
        .expect("the stream ended")
}

#[tokio::test]
async fn an_endless_stream_is_bounded() {
    let gw = Gateway::start_with(Options {
        upstream_extra: "    max_response_bytes: 200000\n".into(),
        ..Options::default()
    });
    let got = read_endless_stream(&gw, &[]).await;
    let text = String::from_utf8_lossy(&got);
    assert!(got.len() < 300_000, "{} bytes", got.len());
    assert!(text.contains("event: error"), "the client was told why");
}

#[tokio::test]
async fn a_slow_endless_stream_is_ended_at_the_total_deadline() {
    let gw = Gateway::start_with(Options {
        upstream_extra: "    total_timeout_ms: 1500\n".into(),
        ..Options::default()
    });
    // An event every 100 ms: never a gap long enough for the read timeout, never too big.
    let start = std::time::Instant::now();
    let got = read_endless_stream(&gw, &[("x-mock-event-delay-ms", "100")]).await;
    let took = start.elapsed();
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("event: error"), "the client was told why");
    assert!(
        took >= std::time::Duration::from_millis(1400) && took < std::time::Duration::from_secs(5),
        "ended after {took:?}"
    );
    let series = "keygate_response_rejected_total{reason=\"deadline\",upstream=\"openai\"}";
    assert_eq!(
        gw.metric(series),
        Some(1.0),
        "{}",
        gw.admin_get("/metrics").1
    );
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[tokio::test]
async fn slowloris_keeps_memory_bounded_and_others_served() {
    use std::io::Write;
    // One address may hold 1,000 connections here (the default cap is 256); the header
    // deadline is what must clear them.
    let gw = Gateway::start_with(Options {
        server_extra: "  max_connections_per_ip: 2000\n  header_timeout_ms: 3000".into(),
        ..Options::default()
    });
    // Warm up, then measure.
    assert_eq!(
        gw.call("alpha.k1", "GET", "/openai/v1/models", "")
            .await
            .status,
        200
    );
    let before = rss_kb(gw.pid());
    // 1,000 connections, each stuck half-way through its request header.
    let mut held = Vec::new();
    for i in 0..1000 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
        write!(s, "POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow-{i}: ").unwrap();
        held.push(s);
    }
    for round in 0..3 {
        for s in held.iter_mut() {
            let _ = s.write_all(b"a");
        }
        // Other clients are served meanwhile.
        let r = gw.call("alpha.k1", "GET", "/openai/v1/models", "").await;
        assert_eq!(r.status, 200, "round {round}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let during = rss_kb(gw.pid());
    eprintln!("RSS {before} kB before, {during} kB with 1,000 slow connections");
    assert!(
        during < before + 200 * 1024,
        "RSS grew by {} kB",
        during - before
    );
    // At the header deadline every stuck connection is closed by keygate.
    let open = eventually("stuck connections closed", || {
        let open = gw.metric("keygate_connections_open")?;
        (open < 10.0).then_some(open)
    });
    eprintln!("{open} connections open after the header deadline");
    for s in held.iter_mut().take(10) {
        let _ = s.write_all(b"a");
        assert!(closed_within(s, std::time::Duration::from_secs(1)).is_some());
    }
    assert_eq!(gw.mock.count(), 4);
}

/// Read until the peer closes; `None` if it is still open after `limit`.
fn closed_within(s: &mut std::net::TcpStream, limit: std::time::Duration) -> Option<Vec<u8>> {
    use std::io::Read;
    let start = std::time::Instant::now();
    s.set_read_timeout(Some(std::time::Duration::from_millis(100)))
        .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while start.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return Some(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Some(out),
        }
    }
    None
}

#[test]
fn a_header_sent_one_byte_at_a_time_is_cut_at_the_header_deadline() {
    use std::io::Write;
    use std::time::{Duration, Instant};
    let gw = Gateway::start_with(Options {
        server_extra: "  header_timeout_ms: 1000".into(),
        ..Options::default()
    });
    let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    let start = Instant::now();
    let header = format!(
        "GET /openai/v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(100)
    );
    // One byte every 50 ms: each read is quick (Pingora's per-read timeout never fires),
    // the whole header would take 8 s.
    let mut closed = None;
    for b in header.as_bytes() {
        if s.write_all(&[*b]).is_err() {
            break;
        }
        if let Some(out) = closed_within(&mut s, Duration::from_millis(50)) {
            closed = Some(out);
            break;
        }
    }
    let out = closed.or_else(|| closed_within(&mut s, Duration::from_secs(3)));
    let took = start.elapsed();
    assert!(out.is_some(), "connection still open after {took:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "closed after {took:?}"
    );
    assert_eq!(gw.mock.count(), 0);

    // The deadline is per request: a kept-alive connection may idle past it between
    // requests (the keep-alive timeout governs that), then send a prompt header.
    let mut k = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    let req = "GET /nowhere HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    k.write_all(req.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    k.write_all(req.as_bytes()).unwrap();
    k.shutdown(std::net::Shutdown::Write).unwrap();
    let out = closed_within(&mut k, Duration::from_secs(5)).unwrap();
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.matches("HTTP/1.1 404").count(), 2, "{text}");
}

#[tokio::test]
async fn connection_caps_close_extra_connections_and_free_slots_on_close() {
    use std::time::Duration;
    let gw = Gateway::start_with(Options {
        server_extra: "  max_connections: 5\n  max_connections_per_ip: 3".into(),
        ..Options::default()
    });
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], gw.port).into();
    // std cannot pick the source address; tokio's socket can.
    async fn open(ip: [u8; 4], to: std::net::SocketAddr) -> std::net::TcpStream {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind((ip, 0).into()).unwrap();
        let s = sock.connect(to).await.unwrap().into_std().unwrap();
        s.set_nonblocking(false).unwrap();
        s
    }
    // Give each connection time to be accepted and counted, in order.
    async fn open_counted(ip: [u8; 4], to: std::net::SocketAddr) -> std::net::TcpStream {
        let s = open(ip, to).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        s
    }
    let still_open =
        |s: &mut std::net::TcpStream| closed_within(s, Duration::from_millis(300)).is_none();

    let mut local: Vec<_> = Vec::new();
    for _ in 0..3 {
        local.push(open_counted([127, 0, 0, 1], addr).await);
    }
    let mut fourth = open_counted([127, 0, 0, 1], addr).await;
    assert!(
        !still_open(&mut fourth),
        "a 4th connection from one address must be closed"
    );
    let mut other = vec![
        open_counted([127, 0, 0, 2], addr).await,
        open_counted([127, 0, 0, 2], addr).await,
    ];
    let mut sixth = open_counted([127, 0, 0, 3], addr).await;
    assert!(
        !still_open(&mut sixth),
        "a 6th connection in all must be closed"
    );
    for s in local.iter_mut().chain(other.iter_mut()) {
        assert!(still_open(s), "connections under the caps stay open");
    }
    assert_eq!(
        gw.metric("keygate_connections_refused_total{cap=\"per_ip\"}"),
        Some(1.0)
    );
    assert_eq!(
        gw.metric("keygate_connections_refused_total{cap=\"global\"}"),
        Some(1.0)
    );
    assert_eq!(gw.metric("keygate_connections_open"), Some(5.0));

    // Closing connections frees their slots: a signed request goes through again.
    drop(local);
    eventually("slots freed", || {
        (gw.metric("keygate_connections_open") == Some(2.0)).then_some(())
    });
    let r = gw.call("alpha.k1", "GET", "/openai/v1/models", "").await;
    assert_eq!(r.status, 200);
    drop(other);
}

/// A TLS connection to `gw` that negotiated HTTP/2, before any HTTP/2 byte.
async fn tls_h2(gw: &Gateway) -> tokio_openssl::SslStream<tokio::net::TcpStream> {
    use openssl::ssl::{SslConnector, SslMethod};
    let ca = gw.dir.path().join("certs/ca.crt");
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_ca_file(&ca).unwrap();
    b.set_alpn_protos(b"\x02h2").unwrap();
    let ssl = b
        .build()
        .configure()
        .unwrap()
        .into_ssl("localhost")
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", gw.tls_port))
        .await
        .unwrap();
    let mut tls = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
    std::pin::Pin::new(&mut tls).connect().await.unwrap();
    assert_eq!(tls.ssl().selected_alpn_protocol(), Some(&b"h2"[..]));
    tls
}

/// Pingora's HTTP/2 handshake has no timeout and its idle timeout was unset: a client
/// that negotiated h2 and then sent nothing, or opened no stream, held its connection
/// (and a connection slot) for good.
#[tokio::test]
async fn a_silent_or_idle_h2_connection_is_closed() {
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    let gw = Gateway::start_with(Options {
        tls: true,
        server_extra: "  header_timeout_ms: 1000\n  keepalive_timeout_s: 2".into(),
        ..Options::default()
    });
    // Silent after TLS: cut at the header deadline.
    let mut silent = tls_h2(&gw).await;
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        while silent.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    });
    assert!(
        closed.await.is_ok(),
        "a silent h2 connection still open after 5 s"
    );
    // Preface and settings, then no stream: closed at the keep-alive timeout.
    let (_client, conn) = h2::client::handshake(tls_h2(&gw).await).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(6), conn);
    assert!(
        ended.await.is_ok(),
        "an idle h2 connection still open after 6 s"
    );
}

#[tokio::test]
async fn h2_rapid_reset_closes_the_attacker_and_spares_other_clients() {
    let gw = Gateway::start_with(Options {
        tls: true,
        ..Options::default()
    });
    let tls = tls_h2(&gw).await;
    let (mut h2, conn) = h2::client::handshake(tls).await.unwrap();
    let conn = tokio::spawn(conn);

    // Open streams and reset each at once, as fast as the client allows.
    let url = format!(
        "https://localhost:{}/openai/v1/chat/completions",
        gw.tls_port
    );
    let mut sent = 0;
    for _ in 0..5000 {
        let Ok(ready) = h2.clone().ready().await else {
            break;
        };
        h2 = ready;
        let req = http::Request::post(&url).body(()).unwrap();
        match h2.send_request(req, false) {
            Ok((_resp, mut body)) => {
                body.send_reset(h2::Reason::CANCEL);
                sent += 1;
            }
            Err(_) => break,
        }
    }
    // The attacker's connection ends (GOAWAY / closed) well before 5,000 resets…
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), conn).await;
    eprintln!("rapid reset: {sent} streams opened and reset; connection ended: {ended:?}");
    // (The client queues all its frames before the server reacts; what matters is that
    // the server ends the connection instead of serving resets forever.)
    assert!(
        matches!(ended, Ok(Ok(Err(_)))),
        "the attacking connection was not closed by keygate: {ended:?}"
    );
    // …and other clients are served.
    let r = gw.call("alpha.k1", "GET", "/openai/v1/models", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(gw.mock.count(), 1);
}

#[tokio::test]
async fn a_body_sent_one_byte_at_a_time_is_cut_at_the_body_deadline() {
    use std::io::Write;
    use std::time::{Duration, Instant};
    let gw = Gateway::start_with(Options {
        server_extra: "  body_timeout_ms: 1000".into(),
        ..Options::default()
    });
    let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    let head = format!(
        "POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n{}Content-Length: {}\r\n\r\n",
        gw.port,
        signed_lines(&gw, "POST", CHAT, BODY.as_bytes()),
        BODY.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let start = Instant::now();
    let mut out = None;
    for b in BODY.as_bytes() {
        if s.write_all(&[*b]).is_err() {
            break;
        }
        if let Some(o) = closed_within(&mut s, Duration::from_millis(100)) {
            out = Some(o);
            break;
        }
    }
    let took = start.elapsed();
    let out = out.expect("connection still open after the whole slow body");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("not received in time"), "{text}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "cut after {took:?}"
    );
    let r = gw.call("alpha.k1", "GET", "/openai/v1/models", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(gw.mock.count(), 1);
}

/// A client that stops reading a stream: Pingora sets no write timeout, so the request,
/// with the site's only concurrency slot and its upstream connection, stayed until the
/// kernel gave up on the connection (the total deadline is checked only as chunks pass,
/// and none pass while the write is blocked).
#[tokio::test]
async fn a_client_that_stops_reading_frees_its_slot_at_the_send_timeout() {
    use std::io::Write;
    use std::time::Duration;
    let gw = Gateway::start_with(Options {
        tier: "{ requests_per_minute: 1000, concurrent: 1 }".into(),
        server_extra: "  send_timeout_s: 1".into(),
        upstream_extra: "    max_response_bytes: 1073741824\n".into(),
        ..Options::default()
    });
    let body = r#"{"model":"gpt-4o","stream":true,"messages":[]}"#;
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    // A small window: keygate's writes block soon, not after megabytes of kernel buffer.
    sock.set_recv_buffer_size(4096).unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", gw.port).parse().unwrap();
    sock.connect(&addr.into()).unwrap();
    let mut s: std::net::TcpStream = sock.into();
    let head = format!(
        "POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n{}x-mock-mode: endless_stream\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        gw.port,
        signed_lines(&gw, "POST", CHAT, body.as_bytes()),
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    // Never read. While the stream is held, the site's one slot is taken.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = gw.call("alpha.k1", "GET", "/openai/v1/models", "").await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (429, "rate_limited"),
        "{}",
        r.body
    );
    // Freed once a write has made no progress for send_timeout_s.
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    loop {
        let r = gw.call("alpha.k1", "GET", "/openai/v1/models", "").await;
        if r.status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slot is still held: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(s);
}

/// Send a signed chat body of 70,000 bytes (over the 64 KiB replay buffer: held back
/// whole) over 3 s in 20 pieces on a raw connection; then the answer's first bytes.
fn trickle_large_body(gw: &Gateway) -> std::thread::JoinHandle<String> {
    use std::io::{Read, Write};
    use std::time::Duration;
    let pad = "x".repeat(70_000);
    let body = format!(r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"{pad}"}}]}}"#);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    let head = format!(
        "POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n{}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        gw.port,
        signed_lines(gw, "POST", CHAT, body.as_bytes()),
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    std::thread::spawn(move || {
        for piece in body.as_bytes().chunks(body.len() / 20 + 1) {
            if s.write_all(piece).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(150));
        }
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = vec![0u8; 4096];
        let n = s.read(&mut out).unwrap_or(0);
        String::from_utf8_lossy(&out[..n]).to_string()
    })
}

/// A body over the 64 KiB replay buffer is held back whole while the upstream's header
/// timer runs: trickled in, it ran out on the client's account, was counted as the
/// provider's timeout, and two such requests opened the circuit for every site.
#[tokio::test]
async fn a_trickled_body_is_the_clients_timeout_not_the_providers() {
    let gw = Gateway::start_with(Options {
        // The test config's read_timeout_ms is 2000: shorter than the trickle.
        upstream_extra:
            "    circuit_breaker: { failures: 2, open_s: 60, half_open_successes: 1 }\n".into(),
        ..Options::default()
    });
    let slow = [trickle_large_body(&gw), trickle_large_body(&gw)];
    for t in slow {
        let answer = t.join().unwrap();
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
            "{answer}"
        );
    }
    let r = gw.call("alpha.k1", "POST", CHAT, BODY).await;
    assert_eq!(
        r.status, 200,
        "the circuit opened on the clients' slowness: {}",
        r.body
    );
}

/// A held-back body is bounded like a pre-read one: `body_timeout_ms` (only pre-read
/// bodies were).
#[tokio::test]
async fn a_held_back_body_is_cut_at_the_body_deadline() {
    let gw = Gateway::start_with(Options {
        server_extra: "  body_timeout_ms: 1000".into(),
        ..Options::default()
    });
    let answer = trickle_large_body(&gw).join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("body was not received in time"), "{answer}");
}

/// Pingora bounds the write of a whole chunk by the write timeout, and a held-back JSON
/// answer goes out as one chunk: with `send_timeout_s: 1`, a client reading 12 MiB at a
/// few MB/s was cut though it never stopped reading.
#[tokio::test]
async fn a_large_answer_read_at_a_modest_rate_is_not_cut_by_the_send_timeout() {
    use std::io::{Read, Write};
    use std::time::Duration;
    let gw = Gateway::start_with(Options {
        server_extra: "  send_timeout_s: 1".into(),
        upstream_extra: "    max_response_bytes: 16777216\n".into(),
        ..Options::default()
    });
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(64 * 1024).unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", gw.port).parse().unwrap();
    sock.connect(&addr.into()).unwrap();
    let mut s: std::net::TcpStream = sock.into();
    let head = format!(
        "POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n{}x-mock-mode: huge\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{BODY}",
        gw.port,
        signed_lines(&gw, "POST", CHAT, BODY.as_bytes()),
        BODY.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = 0usize;
    let mut first = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if first.len() < 512 {
                    first.extend_from_slice(&buf[..n.min(512)]);
                }
                got += n
            }
        }
        // About 3 MB/s: 12 MiB takes some 4 s.
        std::thread::sleep(Duration::from_millis(10));
    }
    let head = String::from_utf8_lossy(&first[..first.len().min(512)]);
    assert!(
        got > 12 * 1024 * 1024,
        "cut after {got} bytes: {head} {}",
        gw.logs()
    );
}

/// A scripted provider on a socket: for each request (head, then the body its
/// Content-Length names), the bytes `answer` gives for its request line. For answers the
/// mock (hyper) cannot send: interim 1xx headers.
fn scripted_upstream(answer: fn(&str) -> String) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { return };
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            let want = loop {
                let Ok(n) = s.read(&mut buf) else { break None };
                if n == 0 {
                    break None;
                }
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
                if let Some(end) = text.find("\r\n\r\n") {
                    let cl = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    break Some(end + 4 + cl);
                }
            };
            let Some(want) = want else { continue };
            while got.len() < want {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&got);
            let line = head.lines().next().unwrap_or("").to_string();
            let _ = s.write_all(answer(&line).as_bytes());
        }
    });
    addr
}

/// A gateway whose `/scripted/` route (no model list) goes to `addr`.
fn gateway_to(addr: std::net::SocketAddr) -> Gateway {
    Gateway::start_with(Options {
        extra_upstreams: format!(
            "  scripted:\n    kind: openai\n    url: \"http://{addr}\"\n    credentials:\n      - {{ id: s-1, secret: \"file:{{dir}}/provider2.key\" }}\n"
        ),
        route_extra_for: vec![(
            "/gemini/",
            "  - prefix: \"/scripted/\"\n    upstream: scripted\n".into(),
        )],
        ..Options::default()
    })
}

/// An upstream's interim answer (103 Early Hints) before its real one went through the
/// answer's checks (no `Content-Type`: 502) and would have settled a circuit's probe. Passed
/// on, it also counted as the answer written: after it, no failover and no error answer
/// (the client saw the 103, then the connection closed). And a 101 the upstream was not
/// asked for would have passed its bytes unchecked.
#[tokio::test]
async fn an_interim_answer_passes_without_its_headers_and_leaves_room_for_the_real_one() {
    fn answer(line: &str) -> String {
        const CHAT_JSON: &str = r#"{"id":"c","object":"chat.completion","model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
        let hints = "HTTP/1.1 103 Early Hints\r\nlink: </tracker.js>; rel=preload\r\n\r\n";
        if line.contains("?html") {
            format!("{hints}HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 5\r\n\r\n<p>x</p>")
        } else if line.contains("?switch") {
            "HTTP/1.1 101 Switching Protocols\r\ncontent-length: 2\r\n\r\n{}".to_string()
        } else {
            format!(
                "{hints}HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{CHAT_JSON}",
                CHAT_JSON.len()
            )
        }
    }
    let gw = gateway_to(scripted_upstream(answer));
    let chat = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
    let r = gw
        .post_signed("/scripted/v1/chat/completions", chat, &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["choices"][0]["message"]["content"], "hi");
    assert!(r.headers.get("link").is_none());
    // After the 103, an answer keygate refuses: its error answer still goes out.
    let r = gw
        .post_signed("/scripted/v1/chat/completions?html", chat, &[])
        .await;
    r.assert_error(502, "upstream_error");
    let r = gw
        .post_signed("/scripted/v1/chat/completions?switch", chat, &[])
        .await;
    r.assert_error(502, "upstream_error");
}
