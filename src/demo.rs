//! `keygate serve --demo`: an embedded config with a demo site and an in-process mock
//! provider, so one command shows a signed request going through.

use crate::config::{self, ConfigErrors, LoadOptions, Runtime};

/// The demo site's secret (also the SPEC test-vector secret). Demo only.
pub const DEMO_SECRET: &str = "kgs_test_7d1f4c2a9b8e6d5c4b3a29181706f5e4";
/// The demo site's key id.
pub const DEMO_KEY_ID: &str = "demo.k1";
/// The demo bearer virtual key. Demo only.
pub const DEMO_BEARER: &str = "kgk_demo_5f0c2e9a7b1d4c3e8f6a";
/// Where the demo listens.
pub const DEMO_LISTEN: &str = "127.0.0.1:8080";

/// The embedded demo config, with the mock provider's port filled in.
pub fn yaml(mock_port: u16) -> String {
    let bearer_hash = hex::encode(crate::auth::bearer_hash(DEMO_BEARER));
    format!(
        r#"server:
  listen:
    - addr: "{DEMO_LISTEN}"
  hostnames: ["localhost:8080", "127.0.0.1:8080"]
  threads: 2
  pid_file: /tmp/keygate-demo.pid
  upgrade_sock: /tmp/keygate-demo-upgrade.sock
upstreams:
  mock-openai:
    kind: openai
    url: "http://127.0.0.1:{mock_port}"
    credentials:
      - {{ id: demo-1, secret: "sk-demo-provider-key-0123456789abcdef" }}
  mock-anthropic:
    kind: anthropic
    url: "http://127.0.0.1:{mock_port}"
    credentials:
      - {{ id: demo-1, secret: "sk-ant-demo-provider-key-0123456789" }}
routes:
  - prefix: "/openai/"
    upstream: mock-openai
    models: ["gpt-4o", "gpt-4o-mini"]
    max_tokens: 4096
  - prefix: "/anthropic/"
    upstream: mock-anthropic
tiers:
  free: {{ requests_per_minute: 10, requests_per_hour: 100, requests_per_day: 500, tokens_per_day: 50000, concurrent: 4 }}
sites:
  - id: demo
    tier: free
    keys:
      - {{ id: {DEMO_KEY_ID}, auth: hmac, secret: "{DEMO_SECRET}" }}
      - {{ id: demo.sdk, auth: bearer, hash: "sha256:{bearer_hash}" }}
"#
    )
}

/// The demo runtime.
pub fn runtime(mock_port: u16) -> Result<Runtime, ConfigErrors> {
    config::load_str(&yaml(mock_port), LoadOptions { demo: true })
}

/// Start the mock provider on a background thread; returns its port.
pub fn start_mock() -> std::io::Result<u16> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("demo-mock-provider".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(async move {
                match crate::mock_provider::bind("127.0.0.1:0".parse().expect("literal address"))
                    .await
                {
                    Ok((l, addr)) => {
                        let _ = tx.send(Ok(addr.port()));
                        let _ = crate::mock_provider::serve(l, None).await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        })?;
    rx.recv()
        .map_err(|_| std::io::Error::other("mock provider thread ended"))?
}

/// The banner with ready-to-run commands.
pub fn banner(exe: &str) -> String {
    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
    let url = "http://localhost:8080/openai/v1/chat/completions";
    let now = crate::clock::now_s();
    let curl = crate::auth::signature::curl::curl_command(
        DEMO_SECRET.as_bytes(),
        DEMO_KEY_ID,
        "POST",
        url,
        body.as_bytes(),
        now,
    )
    .unwrap_or_default();
    format!(
        "keygate demo: listening on http://{DEMO_LISTEN} (mock provider in-process)\n\n\
         Send one signed request (valid once, for 5 minutes):\n\n  {curl}\n\n\
         Sign a fresh one any time:\n\n  eval \"$({exe} sign --curl --key-id {DEMO_KEY_ID} --secret {DEMO_SECRET} POST {url} --data '{body}')\"\n\n\
         Or with the demo bearer key (stock SDKs):\n\n  curl -s http://localhost:8080/openai/v1/models -H 'Authorization: Bearer {DEMO_BEARER}'\n"
    )
}
