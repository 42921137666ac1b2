//! Client-facing listeners: plain HTTP/1.1, and TLS with HTTP/2 via ALPN.

mod common;

use common::*;

#[tokio::test]
async fn tls_listener_speaks_h2_and_sets_hsts() {
    let gw = Gateway::start_with(Options {
        tls: true,
        ..Options::default()
    });
    let ca = std::fs::read(gw.dir.path().join("certs/ca.crt")).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/openai/v1/models", gw.tls_port);
    let h = sign_at(&gw.secrets.alpha, "alpha.k1", "GET", &url, b"", now());
    let r = client
        .get(&url)
        .header("content-digest", &h[0].1)
        .header("signature-input", &h[1].1)
        .header("signature", &h[2].1)
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert!(r.headers()["strict-transport-security"]
        .to_str()
        .unwrap()
        .contains("max-age="));
    assert_eq!(gw.mock.last()["path"], "/v1/models");

    // HTTP/1.1 over TLS works as well, and plain HTTP carries no HSTS.
    let h1 = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .http1_only()
        .build()
        .unwrap();
    let r = h1
        .get(format!("https://localhost:{}/nowhere", gw.tls_port))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.version(), r.status().as_u16()),
        (reqwest::Version::HTTP_11, 404)
    );
    let r = client.get(gw.url("/nowhere")).send().await.unwrap();
    assert!(!r.headers().contains_key("strict-transport-security"));
}

#[test]
fn tls_listener_refuses_tls_1_1() {
    let gw = Gateway::start_with(Options {
        tls: true,
        ..Options::default()
    });
    assert!(
        !tls_handshake_ok(gw.tls_port, "-tls1_1"),
        "TLS 1.1 handshake succeeded"
    );
    assert!(
        tls_handshake_ok(gw.tls_port, "-tls1_2"),
        "TLS 1.2 handshake failed"
    );
}

fn served_leaf_pin(port: u16) -> String {
    let out = std::process::Command::new(BIN)
        .args(["pin", &format!("localhost:{port}")])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines().next().unwrap_or("").to_string()
}

#[test]
fn client_certificate_reloads_without_restart() {
    let gw = Gateway::start_with(Options {
        tls: true,
        ..Options::default()
    });
    let certs = gw.dir.path().join("certs");
    assert!(served_leaf_pin(gw.tls_port).contains(&pin_of(&certs, "server")));
    gw.reload_with(|t| {
        t.replace("/server.crt", "/other.crt")
            .replace("/server.key", "/other.key")
    });
    assert!(served_leaf_pin(gw.tls_port).contains(&pin_of(&certs, "other")));
    // A mismatched key is refused at reload and the old certificate keeps serving.
    gw.reload_with(|t| t.replace("/other.key", "/server.key"));
    assert!(gw.logs().contains("does not match the certificate"));
    assert!(served_leaf_pin(gw.tls_port).contains(&pin_of(&certs, "other")));
}

#[test]
fn tls_listener_refuses_tls_1_0() {
    let gw = Gateway::start_with(Options {
        tls: true,
        ..Options::default()
    });
    assert!(
        !tls_handshake_ok(gw.tls_port, "-tls1"),
        "TLS 1.0 handshake succeeded"
    );
}

/// A second `keygate serve` on addresses the first one holds: it refuses to start at
/// once, naming the YAML path, instead of retrying for 30 s and running on without the
/// listener (Pingora's behaviour for a taken address). The first keeps serving.
#[test]
fn a_taken_address_stops_the_start_naming_its_yaml_path() {
    let gw = Gateway::start();
    let text = std::fs::read_to_string(gw.config_path()).unwrap();
    let main = format!("127.0.0.1:{}", gw.port);
    let admin = format!("127.0.0.1:{}", gw.admin_port);
    assert!(text.contains(&main) && text.contains(&admin));
    let free_main = format!("127.0.0.1:{}", free_port());
    for (config, path, taken) in [
        (text.clone(), "server.listen[0].addr", &main),
        (
            text.replace(&main, &free_main),
            "server.admin_listen",
            &admin,
        ),
    ] {
        let cfg = gw.dir.path().join("second.yaml");
        std::fs::write(&cfg, config).unwrap();
        let log = gw.dir.path().join("second.log");
        let mut child = spawn_serve(&cfg, &log, "info");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "keygate started on the taken {taken}:\n{}",
                    std::fs::read_to_string(&log).unwrap()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let out = std::fs::read_to_string(&log).unwrap();
        assert_eq!(status.code(), Some(1), "{out}");
        assert!(
            out.contains(&format!("keygate: {path}: cannot listen on {taken}: ")),
            "{out}"
        );
    }
    assert_eq!(gw.admin_get("/healthz").0, 200);
}
