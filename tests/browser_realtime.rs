//! A real browser (Debian's headless Chromium, driven through chromedriver's WebDriver
//! API) opens a Realtime WebSocket to keygate with a `kgt_` browser token in the
//! `openai-insecure-api-key.` subprotocol, as OpenAI's browser SDK does, and receives
//! `session.created` (issue #22). `make deps` installs chromium and chromium-driver.

mod common;
use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Serve `html` to every request on a free port, from a thread; the page's origin.
fn serve_page(html: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{html}",
                html.len()
            );
            let _ = stream.write_all(resp.as_bytes());
        }
    });
    origin
}

/// The page: open the session the way a browser client does, publish what came first.
fn page(gw_port: u16, token: &str) -> String {
    format!(
        r#"<!doctype html><html><body><script>
const ws = new WebSocket("ws://127.0.0.1:{gw_port}/openai/v1/realtime?model=gpt-realtime",
  ["realtime", "openai-insecure-api-key.{token}"]);
ws.onmessage = (e) => {{ if (!window.result) window.result = "event:" + JSON.parse(e.data).type + " protocol:" + ws.protocol; }};
ws.onerror = () => {{ if (!window.result) window.result = "error"; }};
ws.onclose = (e) => {{ if (!window.result) window.result = "closed:" + e.code; }};
</script></body></html>"#
    )
}

/// A chromedriver on a free port, killed when dropped.
struct Driver {
    child: std::process::Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn driver() -> Driver {
    let port = free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let url = format!("http://127.0.0.1:{port}");
    eventually("chromedriver listening", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    Driver { child, url }
}

async fn webdriver(client: &reqwest::Client, method: &str, url: String, body: Value) -> Value {
    let rb = match method {
        "DELETE" => client.delete(url),
        _ => client.post(url).json(&body),
    };
    rb.send().await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn headless_chromium_opens_a_realtime_session_with_a_browser_token() {
    for tool in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            std::path::Path::new(tool).exists(),
            "{tool} is missing: `make deps` installs chromium and chromium-driver"
        );
    }
    let gw = Gateway::start();
    let r = gw
        .call("alpha.k1", "POST", "/keygate/v1/tokens", r#"{"ttl_s":120}"#)
        .await;
    let token = r.json()["token"].as_str().unwrap().to_string();
    let origin = serve_page(page(gw.port, &token));
    // The page's origin is one the site allows (a browser always sends it).
    gw.reload_with(|t| {
        t.replace(
            r#"cors_origins: ["https://shop.example"]"#,
            &format!(r#"cors_origins: ["https://shop.example", "{origin}"]"#),
        )
    });

    let d = driver();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
        "binary": CHROMIUM,
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
    }}}});
    let created = webdriver(&http, "POST", format!("{}/session", d.url), caps).await;
    let sid = created["value"]["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("no WebDriver session: {created}"))
        .to_string();
    let base = format!("{}/session/{sid}", d.url);
    webdriver(
        &http,
        "POST",
        format!("{base}/url"),
        json!({ "url": origin }),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let result = loop {
        let v = webdriver(
            &http,
            "POST",
            format!("{base}/execute/sync"),
            json!({"script": "return window.result || null", "args": []}),
        )
        .await;
        if let Some(s) = v["value"].as_str() {
            break s.to_string();
        }
        assert!(Instant::now() < deadline, "the page saw nothing: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    webdriver(&http, "DELETE", base, Value::Null).await;
    assert_eq!(result, "event:session.created protocol:realtime");
    let hs = gw.mock.last();
    assert_eq!(hs["path"], "/v1/realtime?model=gpt-realtime");
    assert!(!hs.to_string().contains(&token));
    let line = gw.audit_lines_at_least(2)[1].clone();
    assert_eq!(
        (line["status"].as_u64(), line["auth"].as_str()),
        (Some(101), Some("token")),
        "{line}"
    );
}
