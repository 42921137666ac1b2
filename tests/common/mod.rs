//! Test harness: the real `keygate` binary and the real mock provider, over loopback.
#![allow(dead_code)]

pub mod admin;
pub mod fleet;
pub mod redis;

use keygate::auth::signature::{self, SignRequest};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

pub const BIN: &str = env!("CARGO_BIN_EXE_keygate");

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Poll `probe` until it yields, for up to 5 s. Metrics and audit lines are written by the
/// `logging` hook, which runs after the client already has its answer.
pub fn eventually<T>(what: &str, probe: impl FnMut() -> Option<T>) -> T {
    poll_until(Duration::from_secs(5), Duration::from_millis(20), probe)
        .unwrap_or_else(|| panic!("timed out waiting for {what}"))
}

/// Poll `probe` every `every` until it yields, for up to `limit`; `None` when it never did.
pub fn poll_until<T>(
    limit: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `keygate mock-provider` on a free port.
pub struct Mock {
    child: Child,
    pub addr: SocketAddr,
    tls: bool,
}

impl Mock {
    pub fn start() -> Mock {
        Self::start_args(&[])
    }

    /// A TLS mock serving `certs/<name>.crt` from `dir`.
    pub fn start_tls(dir: &std::path::Path, name: &str, legacy: bool) -> Mock {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        let mut args = vec![
            "--tls",
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ];
        if legacy {
            args.push("--legacy-tls");
        }
        Self::start_args(&args)
    }

    fn start_args(extra: &[&str]) -> Mock {
        let mut child = Command::new(BIN)
            .args(["mock-provider", "--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mock provider");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .rsplit("://")
            .next()
            .unwrap()
            .parse()
            .expect("mock address");
        Mock {
            child,
            addr,
            tls: extra.contains(&"--tls"),
        }
    }

    pub fn requests(&self) -> Value {
        blocking_get_json(self.addr, self.tls, "/__mock/requests")
    }

    pub fn count(&self) -> u64 {
        self.requests()["count"].as_u64().unwrap()
    }

    /// Connections the mock has accepted.
    pub fn connections(&self) -> u64 {
        self.requests()["connections"].as_u64().unwrap()
    }

    /// Stop the mock (the gateway then sees connection refused).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn last(&self) -> Value {
        self.requests()["requests"]
            .as_array()
            .unwrap()
            .last()
            .cloned()
            .expect("mock received a request")
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn blocking_get_json(addr: SocketAddr, tls: bool, path: &str) -> Value {
    let tcp = TcpStream::connect(addr).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut out = String::new();
    if tls {
        use keygate_test_tls::*;
        let mut b = SslConnector::builder(SslMethod::tls()).unwrap();
        b.set_verify(SslVerifyMode::NONE);
        let mut s = b.build().connect("localhost", tcp).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let _ = s.read_to_string(&mut out);
    } else {
        let mut s = tcp;
        s.write_all(req.as_bytes()).unwrap();
        s.read_to_string(&mut out).unwrap();
    }
    let body = out.split_once("\r\n\r\n").unwrap().1;
    serde_json::from_str(body).unwrap()
}

mod keygate_test_tls {
    pub use pingora::tls::ssl::{SslConnector, SslMethod, SslVerifyMode};
}

/// Secrets of the test world, random per gateway (or shared by a fleet's nodes).
#[derive(Clone)]
pub struct Secrets {
    pub alpha: String,
    pub beta: String,
    pub legacy: String,
    pub bearer: String,
    pub provider: String,
    pub provider2: String,
    pub anthropic: String,
}

pub fn random_secret(prefix: &str) -> String {
    format!("{prefix}{}", signature::random_nonce())
}

/// A running `keygate serve` with a config made for tests.
pub struct Gateway {
    child: Option<Child>,
    pub port: u16,
    pub tls_port: u16,
    pub admin_port: u16,
    pub dir: tempfile::TempDir,
    pub secrets: Secrets,
    pub mock: Mock,
}

#[derive(Clone)]
pub struct Options {
    pub max_body_bytes: usize,
    /// Also listen with TLS (certificates from certs/gen-test-certs.sh) on `tls_port`.
    pub tls: bool,
    /// The `free` tier (site alpha's), as a YAML flow mapping.
    pub tier: String,
    /// Extra lines under `server:` (indented two spaces).
    pub server_extra: String,
    /// Serve the mock over TLS with this certificate (`server`, `other`, `rogue`).
    pub mock_tls: Option<&'static str>,
    /// With `mock_tls`: the mock speaks only TLS 1.1 (`mock-provider --legacy-tls`).
    pub mock_legacy_tls: bool,
    /// Extra lines for the `openai` upstream (indented four spaces).
    pub upstream_extra: String,
    /// Trust the generated test CA for the `openai` upstream (`ca:`).
    pub upstream_ca: bool,
    /// Pin the keys of these generated certificates (`server`, `other`, `ca`, …).
    pub pins: Vec<&'static str>,
    /// Give the `openai` upstream a second credential (`prod-2`, `secrets.provider2`).
    pub second_credential: bool,
    /// Top-level YAML appended to the config (e.g. a `fleet:` section).
    pub config_extra: String,
    /// More accepted authorities (`server.hostnames`), e.g. a fleet's shared name.
    pub extra_hostnames: Vec<String>,
    /// Use these secrets instead of fresh ones (nodes of one fleet share them).
    pub secrets: Option<Secrets>,
    /// Copy the master keys (`k1.master`, `k2.master`) from this directory instead of
    /// generating them (nodes of one fleet verify each other's browser tokens).
    pub master_keys_from: Option<PathBuf>,
    /// Extra lines for both routes (indented four spaces, each ending in a newline).
    pub route_extra: String,
    /// `server.grace_period_s` (how long SIGTERM drains).
    pub grace_period_s: u64,
    /// More upstreams (YAML indented two spaces; `{dir}` is the config's directory, where
    /// `provider2.key` holds a credential).
    pub extra_upstreams: String,
    /// Extra lines for one route (`/openai/`, `/anthropic/`, `/gemini/`; indented four
    /// spaces), e.g. `fallbacks`.
    pub route_extra_for: Vec<(&'static str, String)>,
    /// `server.threads`.
    pub threads: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_body_bytes: 1024 * 1024,
            tls: false,
            tier: "{ requests_per_minute: 100000 }".into(),
            server_extra: String::new(),
            mock_tls: None,
            mock_legacy_tls: false,
            upstream_extra: String::new(),
            upstream_ca: false,
            pins: Vec::new(),
            second_credential: false,
            config_extra: String::new(),
            extra_hostnames: Vec::new(),
            secrets: None,
            master_keys_from: None,
            route_extra: String::new(),
            grace_period_s: 1,
            extra_upstreams: String::new(),
            route_extra_for: Vec::new(),
            threads: 2,
        }
    }
}

/// The SPKI pin of a generated certificate (`dir/<name>.crt`).
pub fn pin_of(dir: &std::path::Path, name: &str) -> String {
    let chain =
        keygate::upstream::pinning::load_pem_chain(&dir.join(format!("{name}.crt"))).unwrap();
    keygate::upstream::pinning::SpkiPin::of_cert(&chain[0])
        .unwrap()
        .to_string()
}

/// Run the project's certificate script into `dir`.
pub fn gen_certs(dir: &std::path::Path) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/certs/gen-test-certs.sh");
    let st = Command::new("bash")
        .arg(script)
        .arg(dir)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "certificate generation failed");
}

/// `keygate serve -c CONFIG`, its stdout and stderr into LOG, at RUST_LOG level `level`.
pub fn spawn_serve(config: &Path, log: &Path, level: &str) -> Child {
    let log = std::fs::File::create(log).unwrap();
    Command::new(BIN)
        .args(["serve", "-c"])
        .arg(config)
        .env("RUST_LOG", level)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start keygate")
}

impl Gateway {
    pub fn start() -> Gateway {
        Self::start_with(Options::default())
    }

    pub fn start_with(opts: Options) -> Gateway {
        // Ports are picked free but may be taken by a parallel test before keygate binds
        // them; keygate then exits at once, and a fresh set of ports is tried.
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start(opts.clone()) {
                Ok(gw) => return gw,
                Err(logs) => last = logs,
            }
        }
        panic!("keygate did not start:\n{last}");
    }

    fn try_start(opts: Options) -> Result<Gateway, String> {
        let dir = tempfile::tempdir().unwrap();
        if opts.tls || opts.mock_tls.is_some() {
            gen_certs(&dir.path().join("certs"));
        }
        let mock = match opts.mock_tls {
            Some(name) => Mock::start_tls(&dir.path().join("certs"), name, opts.mock_legacy_tls),
            None => Mock::start(),
        };
        let certs = dir.path().join("certs");
        let mut upstream_extra = opts.upstream_extra.clone();
        if opts.upstream_ca {
            upstream_extra.push_str(&format!("    ca: {}/ca.crt\n", certs.display()));
        }
        if !opts.pins.is_empty() {
            let pins: Vec<String> = opts
                .pins
                .iter()
                .map(|n| format!("\"{}\"", pin_of(&certs, n)))
                .collect();
            upstream_extra.push_str(&format!("    pins: [{}]\n", pins.join(", ")));
        }
        let openai_url = match opts.mock_tls {
            Some(_) => format!("https://localhost:{}", mock.addr.port()),
            None => format!("http://{}", mock.addr),
        };
        let secrets = opts.secrets.clone().unwrap_or_else(|| Secrets {
            alpha: random_secret("kgs_alpha_"),
            beta: random_secret("kgs_beta_"),
            legacy: random_secret("kgs_legacy_"),
            bearer: random_secret("kgk_"),
            provider: random_secret("sk-provider-"),
            provider2: random_secret("sk-provider2-"),
            anthropic: random_secret("sk-ant-provider-"),
        });
        let extra_hostnames: String = opts
            .extra_hostnames
            .iter()
            .map(|h| format!(", \"{h}\""))
            .collect();
        let d = dir.path().display().to_string();
        for (name, v) in [
            ("alpha.secret", &secrets.alpha),
            ("beta.secret", &secrets.beta),
            ("legacy.secret", &secrets.legacy),
            ("provider.key", &secrets.provider),
            ("provider2.key", &secrets.provider2),
            ("anthropic.key", &secrets.anthropic),
        ] {
            std::fs::write(dir.path().join(name), format!("{v}\n")).unwrap();
        }
        for id in ["k1", "k2"] {
            let file = format!("{id}.master");
            match &opts.master_keys_from {
                Some(from) => {
                    std::fs::copy(from.join(&file), dir.path().join(&file)).unwrap();
                }
                None => {
                    let key = keygate::config::secret::MasterKey::generate_base64();
                    std::fs::write(dir.path().join(&file), key.as_str()).unwrap();
                }
            }
        }
        let port = free_port();
        let tls_port = free_port();
        let admin_port = free_port();
        let tls_listener = if opts.tls {
            format!("    - addr: \"127.0.0.1:{tls_port}\"\n      tls: {{ cert: {d}/certs/server.crt, key: {d}/certs/server.key }}\n")
        } else {
            String::new()
        };
        let bearer_hash = hex::encode(keygate::auth::bearer_hash(&secrets.bearer));
        let route_extra_for = |prefix: &str| -> String {
            opts.route_extra_for
                .iter()
                .filter(|(p, _)| *p == prefix)
                .map(|(_, extra)| extra.as_str())
                .collect()
        };
        let config = format!(
            r#"
server:
  listen:
    - addr: "127.0.0.1:{port}"
{tls_listener}  hostnames: ["127.0.0.1:{port}", "localhost:{port}", "localhost:{tls_port}"{extra_hostnames}]
  threads: {threads}
  admin_listen: "127.0.0.1:{admin_port}"
  max_body_bytes: {max_body}
  pid_file: {d}/keygate.pid
  upgrade_sock: {d}/upgrade.sock
  grace_period_s: {grace}
  graceful_shutdown_timeout_s: 3
{server_extra}
master_keys:
  - {{ id: k1, source: "file:{d}/k1.master" }}
  - {{ id: k2, source: "file:{d}/k2.master" }}
upstreams:
  openai:
    kind: openai
    url: "{openai_url}"
    forward_request_headers: ["x-mock-*"]
{upstream_extra}
    credentials:
      - {{ id: prod-1, secret: "file:{d}/provider.key" }}
{second_credential}
    read_timeout_ms: 2000
  anthropic:
    kind: anthropic
    url: "http://{mock}"
    forward_request_headers: ["x-mock-*"]
    credentials:
      - {{ id: ant-1, secret: "file:{d}/anthropic.key" }}
  gemini:
    kind: gemini
    url: "http://{mock}"
    forward_request_headers: ["x-mock-*"]
    credentials:
      - {{ id: gem-1, secret: "file:{d}/anthropic.key" }}
{extra_upstreams}
routes:
  - prefix: "/openai/"
    upstream: openai
    models: ["gpt-4o", "gpt-4o-mini", "gpt-4o-mini-tts", "whisper-1", "gpt-realtime"]
    max_tokens: 4096
{openai_route_extra}{route_extra}  - prefix: "/anthropic/"
    upstream: anthropic
{anthropic_route_extra}{route_extra}  - prefix: "/gemini/"
    upstream: gemini
{gemini_route_extra}{route_extra}tiers:
  free: {tier}
  other: {{ requests_per_minute: 100000 }}
sites:
  - id: alpha
    tier: free
    cors_origins: ["https://shop.example"]
    keys:
      - {{ id: alpha.k1, auth: hmac, secret: "file:{d}/alpha.secret" }}
      - {{ id: alpha.sdk, auth: bearer, hash: "sha256:{bearer_hash}" }}
      - {{ id: alpha.legacy, auth: legacy-site-timestamp, secret: "file:{d}/legacy.secret" }}
  - id: beta
    tier: other
    routes: ["/anthropic/"]
    cors_origins: ["https://other.example"]
    keys:
      - {{ id: beta.k1, auth: hmac, secret: "file:{d}/beta.secret" }}
{config_extra}
"#,
            max_body = opts.max_body_bytes,
            grace = opts.grace_period_s,
            threads = opts.threads,
            tier = opts.tier,
            upstream_extra = upstream_extra,
            second_credential = if opts.second_credential {
                format!("      - {{ id: prod-2, secret: \"file:{d}/provider2.key\" }}")
            } else {
                String::new()
            },
            server_extra = opts.server_extra,
            route_extra = opts.route_extra,
            mock = mock.addr,
            config_extra = opts.config_extra,
            extra_upstreams = opts.extra_upstreams.replace("{dir}", &d),
            openai_route_extra = route_extra_for("/openai/"),
            anthropic_route_extra = route_extra_for("/anthropic/"),
            gemini_route_extra = route_extra_for("/gemini/"),
        );
        let cfg = dir.path().join("keygate.yaml");
        std::fs::write(&cfg, config).unwrap();
        let child = spawn_serve(&cfg, &dir.path().join("keygate.log"), "debug");
        let mut gw = Gateway {
            child: Some(child),
            port,
            tls_port,
            admin_port,
            dir,
            secrets,
            mock,
        };
        gw.wait_ready()?;
        Ok(gw)
    }

    /// Wait until keygate listens on its public port and answers `/healthz` on its admin
    /// port (the admin listener is its own service and may bind a moment later);
    /// `Err(logs)` if it exits or never listens.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            let listening = |port: u16| TcpStream::connect(("127.0.0.1", port)).is_ok();
            // The admin port answers `/healthz` as keygate does: a port taken by another
            // process (another test's keygate) is not mistaken for this one's.
            let healthy = || {
                self.try_admin_get("/healthz")
                    .is_some_and(|(status, body)| status == 200 && body == "ok\n")
            };
            if listening(self.port) && healthy() {
                return Ok(());
            }
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Err(self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(self.logs())
    }

    /// Rewrite the config file and send SIGHUP; waits until the reload was logged.
    pub fn reload_with(&self, edit: impl Fn(String) -> String) {
        let path = self.config_path();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, edit(text)).unwrap();
        self.sighup();
    }

    /// Send SIGHUP and wait for the reload's log line.
    pub fn sighup(&self) {
        let before = self.logs().matches("config reload").count();
        let st = Command::new("kill")
            .args(["-HUP", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.logs().matches("config reload").count() == before {
            assert!(
                Instant::now() < deadline,
                "no reload logged:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Send a signed POST with `Expect: 100-continue`: the head first, the body only
    /// after keygate answered `100 Continue` (the test fails otherwise); returns the rest
    /// of the exchange.
    pub fn send_after_continue(
        &self,
        key_id: &str,
        secret: &str,
        path: &str,
        body: &[u8],
    ) -> String {
        self.send_after_continue_with(key_id, secret, path, body, &[])
    }

    /// [`Gateway::send_after_continue`] with `extra` headers (not signed).
    pub fn send_after_continue_with(
        &self,
        key_id: &str,
        secret: &str,
        path: &str,
        body: &[u8],
        extra: &[(&str, &str)],
    ) -> String {
        use std::io::{Read, Write};
        let h = self.sign(key_id, secret, "POST", path, body);
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut head = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n",
            self.port,
            body.len()
        );
        for (k, v) in &h {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        for (k, v) in extra {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).unwrap_or(0);
        assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100"),
            "no 100 Continue for {path}: {}",
            String::from_utf8_lossy(&buf[..n])
        );
        s.write_all(body).unwrap();
        let mut rest = String::new();
        let _ = s.read_to_string(&mut rest);
        rest
    }

    /// GET a path on the admin listener (status, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        self.try_admin_get(path)
            .unwrap_or_else(|| panic!("no answer on the admin port for {path}"))
    }

    /// [`Gateway::admin_get`], `None` when nothing answers (10 s to read the answer).
    fn try_admin_get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.admin_port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((status, body))
    }

    /// A metric's value on the admin listener (`name{labels}` exactly as exported).
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = self.admin_get("/metrics");
        body.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// Start a second `keygate serve -u` on the same config (binary upgrade); it takes
    /// over the listeners when this one gets SIGQUIT.
    pub fn spawn_upgrade(&self) -> Child {
        let log = std::fs::File::create(self.dir.path().join("keygate-new.log")).unwrap();
        Command::new(BIN)
            .args(["serve", "-u", "-c"])
            .arg(self.config_path())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the new keygate")
    }

    /// Send a signal to the running keygate.
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Wait for the keygate process to exit (after SIGQUIT/SIGTERM).
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().unwrap();
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("keygate.yaml")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("keygate.log")).unwrap_or_default()
    }

    pub fn all_secrets(&self) -> Vec<&str> {
        let s = &self.secrets;
        vec![
            &s.alpha,
            &s.beta,
            &s.legacy,
            &s.bearer,
            &s.provider,
            &s.provider2,
            &s.anthropic,
        ]
    }

    /// The audit lines, once there are at least `n`.
    pub fn audit_lines_at_least(&self, n: usize) -> Vec<Value> {
        eventually(&format!("{n} audit lines"), || {
            let lines = self.audit_lines();
            (lines.len() >= n).then_some(lines)
        })
    }

    /// The audit log lines (JSON objects on stdout) written whole so far, parsed (a line
    /// read while the writer is still writing it is left for the next read).
    pub fn audit_lines(&self) -> Vec<Value> {
        self.logs()
            .split_inclusive('\n')
            .filter(|l| l.starts_with('{') && l.ends_with('\n'))
            .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
            .collect()
    }

    /// Fail if any secret appears in the gateway's logs.
    pub fn assert_no_secret_in_logs(&self) {
        let logs = self.logs();
        for s in self.all_secrets() {
            if let Some(line) = logs.lines().find(|l| l.contains(s)) {
                panic!(
                    "a secret appeared in the logs: {}",
                    line.replace(s, "<SECRET>")
                );
            }
        }
    }

    /// Sign with `key_id` (alpha.k1 or beta.k1) and send; `body` is sent as JSON when non-empty.
    pub async fn call(&self, key_id: &str, method: &str, path: &str, body: &str) -> Resp {
        let secret = match key_id {
            "beta.k1" => &self.secrets.beta,
            _ => &self.secrets.alpha,
        };
        self.call_as(key_id, secret, method, path, body).await
    }

    /// [`Gateway::call`] signed with `secret`.
    pub async fn call_as(
        &self,
        key_id: &str,
        secret: &str,
        method: &str,
        path: &str,
        body: &str,
    ) -> Resp {
        let h = self.sign(key_id, secret, method, path, body.as_bytes());
        let body = (!body.is_empty()).then(|| body.as_bytes().to_vec());
        send(&client(), method, &self.url(path), &h, body).await
    }

    /// POST `body` as JSON signed by `alpha.k1`, with `extra` headers (e.g. `x-mock-mode`).
    pub async fn post_signed(&self, path: &str, body: &str, extra: &[(&str, &str)]) -> Resp {
        let mut h = self.sign(
            "alpha.k1",
            &self.secrets.alpha,
            "POST",
            path,
            body.as_bytes(),
        );
        h.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        send(
            &client(),
            "POST",
            &self.url(path),
            &h,
            Some(body.as_bytes().to_vec()),
        )
        .await
    }

    /// Signed request headers for `key_id` on `path` of this gateway, created now.
    pub fn sign(
        &self,
        key_id: &str,
        secret: &str,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Vec<(String, String)> {
        sign_at(secret, key_id, method, &self.url(path), body, now())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Every test doubles as a leak check: no secret may reach the logs.
        if !std::thread::panicking() {
            self.assert_no_secret_in_logs();
        }
    }
}

/// The three keygate-v1 headers for a request to `url`, with a fresh nonce.
pub fn sign_at(
    secret: &str,
    key_id: &str,
    method: &str,
    url: &str,
    body: &[u8],
    created: i64,
) -> Vec<(String, String)> {
    let nonce = signature::random_nonce();
    let h = signature::sign(
        secret.as_bytes(),
        &SignRequest {
            method,
            url,
            body,
            key_id,
            created,
            nonce: &nonce,
        },
    )
    .unwrap();
    h.pairs()
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v.to_string()))
        .collect()
}

/// Does an `openssl s_client` handshake with TLS `version` (`-tls1`, `-tls1_1`, `-tls1_2`)
/// succeed? The client is allowed every version (SECLEVEL=0), so only the server refuses.
pub fn tls_handshake_ok(port: u16, version: &str) -> bool {
    Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            version,
            "-cipher",
            "DEFAULT@SECLEVEL=0",
        ])
        .stdin(Stdio::null())
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Await requests sent together; how many answers had each status.
pub async fn tally(
    requests: impl IntoIterator<Item = impl std::future::Future<Output = Resp>>,
) -> std::collections::BTreeMap<u16, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for r in futures::future::join_all(requests).await {
        *counts.entry(r.status).or_insert(0) += 1;
    }
    counts
}

/// A response as the tests look at it.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
    /// Assert an error answer: status and SPEC §4 code.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status, self.code().as_str()),
            (status, code),
            "{}",
            self.body
        );
    }

    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

pub async fn send(
    client: &reqwest::Client,
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: Option<Vec<u8>>,
) -> Resp {
    let mut rb = client.request(method.parse().unwrap(), url);
    for (k, v) in headers {
        rb = rb.header(k.as_str(), v.as_str());
    }
    if let Some(b) = body {
        rb = rb.header("content-type", "application/json").body(b);
    }
    let r = rb.send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.text().await.unwrap_or_default();
    Resp {
        status,
        headers,
        body,
    }
}

/// Read a response body to its end; what arrived, and the transfer error when it was
/// cut (a response keygate aborts after its header went out).
pub async fn read_until_cut(r: reqwest::Response) -> (Vec<u8>, Option<String>) {
    use futures::StreamExt;
    let mut got = Vec::new();
    let mut stream = r.bytes_stream();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => got.extend_from_slice(&c),
            Err(e) => return (got, Some(e.to_string())),
        }
    }
    (got, None)
}

/// Send raw bytes and read the whole answer (the connection is closed by us or by keygate).
pub fn raw(port: u16, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).to_string()
}

/// Run `keygate ARGS` with `stdin`; (exit code, stdout, stderr).
pub fn keygate(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = std::process::Command::new(BIN)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A WebSocket client session through keygate.
pub type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Open a WebSocket session with these headers; `Err(status)` when keygate refuses the
/// handshake.
pub async fn open(
    gw: &Gateway,
    path: &str,
    headers: &[(String, String)],
) -> Result<(Ws, http::HeaderMap), u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("ws://127.0.0.1:{}{path}", gw.port);
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    match tokio_tungstenite::client_async(req, tcp).await {
        Ok((ws, resp)) => Ok((ws, resp.headers().clone())),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("handshake: {e}"),
    }
}
