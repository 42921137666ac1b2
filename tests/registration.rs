//! Self-service registration against a real SMTP server on loopback (aiosmtpd from the
//! project's venv, printing what it receives): register, follow the e-mailed link, poll
//! the secret once, sign with it; expired and reused codes, a burst from one address, a
//! relay that is down, the fleet, and registration off.

mod common;

use common::admin::AdminKey;
use common::fleet::*;
use common::redis::Redis;
use common::*;
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const REG: &str = "/keygate/v1/registrations";

/// An SMTP server (aiosmtpd's `Debugging` handler: each message printed to a file).
struct Smtp {
    port: u16,
    child: Option<Child>,
    out: tempfile::NamedTempFile,
}

impl Smtp {
    fn python() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/venv/bin/python")
    }

    fn start() -> Smtp {
        let mut s = Smtp {
            port: free_port(),
            child: None,
            out: tempfile::NamedTempFile::new().unwrap(),
        };
        s.up();
        s
    }

    fn up(&mut self) {
        let py = Self::python();
        assert!(
            py.exists(),
            "aiosmtpd is missing from target/venv: run `make venv`"
        );
        let out = self.out.reopen().unwrap();
        let child = Command::new(py)
            .args([
                "-u",
                "-m",
                "aiosmtpd",
                "-n",
                "-c",
                "aiosmtpd.handlers.Debugging",
                "-l",
            ])
            .arg(format!("127.0.0.1:{}", self.port))
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .expect("start aiosmtpd");
        self.child = Some(child);
        eventually("aiosmtpd listening", || {
            std::net::TcpStream::connect(("127.0.0.1", self.port))
                .ok()
                .map(|_| ())
        });
    }

    fn messages(&self) -> String {
        std::fs::read_to_string(self.out.path()).unwrap_or_default()
    }

    /// The verification links received so far, in order.
    fn links(&self) -> Vec<String> {
        // The text as a mail client shows it: quoted-printable (what lettre picks for
        // lines over 76 characters) decoded for the two escapes a link line can have.
        self.messages()
            .replace("=\r\n", "")
            .replace("=\n", "")
            .replace("=3D", "=")
            .lines()
            .filter_map(|l| l.trim().strip_prefix("https://gw.example/verify?code="))
            .map(|c| format!("{REG}/verify?code={c}"))
            .collect()
    }

    /// Wait (up to `secs`) for the `n`th link.
    fn link(&self, n: usize, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(l) = self.links().get(n - 1) {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no e-mail {n}:\n{}",
                self.messages()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn registration_yaml(smtp_port: u16, extra: &str) -> String {
    format!(
        "registration:\n  enabled: true\n  tier: other\n  verify_url: \"https://gw.example/verify\"\n  email_from: \"keygate <noreply@gw.example>\"\n  smtp: {{ url: \"smtp://127.0.0.1:{smtp_port}\" }}\n{extra}"
    )
}

/// A node with registration on; sites it creates persist to a state file of its own
/// (`admin.state_file`, beside the admin key the returned value keeps alive).
fn node(smtp_port: u16, extra: &str) -> (Gateway, AdminKey) {
    let key = AdminKey::new();
    let gw = Gateway::start_with(Options {
        config_extra: registration_yaml(smtp_port, extra) + &key.yaml("sites.yaml"),
        ..Options::default()
    });
    (gw, key)
}

/// A Redis, a mail relay and a fleet node's options with registration on; `None` without
/// redis-server.
fn fleet_setup() -> Option<(Redis, Smtp, Options)> {
    let redis = Redis::start()?;
    let smtp = Smtp::start();
    let mut opts = node_options(&redis, "{ requests_per_minute: 100000 }");
    opts.config_extra += &registration_yaml(smtp.port, "");
    Some((redis, smtp, opts))
}

async fn post(gw: &Gateway, body: Value) -> Resp {
    let h = vec![("content-type".to_string(), "application/json".to_string())];
    send(
        &client(),
        "POST",
        &gw.url(REG),
        &h,
        Some(body.to_string().into_bytes()),
    )
    .await
}

async fn get(gw: &Gateway, path: &str, token: Option<&str>) -> Resp {
    let h: Vec<(String, String)> = token
        .map(|t| vec![("authorization".into(), format!("Bearer {t}"))])
        .unwrap_or_default();
    send(&client(), "GET", &gw.url(path), &h, None).await
}

fn register_body(email: &str) -> Value {
    json!({ "site_url": "https://shop.example/wp", "email": email })
}

/// Register; the registration id and poll token.
async fn register(gw: &Gateway, email: &str) -> (String, String) {
    let r = post(gw, register_body(email)).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let v = r.json();
    (
        v["registration_id"].as_str().unwrap().to_string(),
        v["poll_token"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn register_verify_collect_once_and_sign_with_the_new_secret() {
    let smtp = Smtp::start();
    let (gw, _key) = node(smtp.port, "");
    let (id, poll) = register(&gw, "owner@shop.example").await;
    let poll_path = format!("{REG}/{id}");
    let r = get(&gw, &poll_path, Some(&poll)).await;
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (202, Some("pending"))
    );
    // A wrong token and an unknown id are one answer.
    get(&gw, &poll_path, Some("kgp_wrong"))
        .await
        .assert_error(404, "not_found");
    get(&gw, &format!("{REG}/reg_0000"), Some(&poll))
        .await
        .assert_error(404, "not_found");
    let link = smtp.link(1, 10);
    assert!(smtp.messages().contains("To: owner@shop.example"));
    let r = get(&gw, &link, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let site_id = r.json()["site_id"].as_str().unwrap().to_string();
    assert!(site_id.starts_with("shop.example-"), "{site_id}");
    get(&gw, &link, None).await.assert_error(410, "gone");
    // The secret, once.
    let r = get(&gw, &poll_path, Some(&poll)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["site_id"], site_id.as_str());
    let (kid, secret) = (
        v["key_id"].as_str().unwrap().to_string(),
        v["secret"].as_str().unwrap().to_string(),
    );
    get(&gw, &poll_path, Some(&poll))
        .await
        .assert_error(410, "gone");
    // It signs a request that reaches the provider.
    let before = gw.mock.count();
    let h = gw.sign(&kid, &secret, "GET", "/openai/v1/models", b"");
    let r = send(&client(), "GET", &gw.url("/openai/v1/models"), &h, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(gw.mock.count(), before + 1);
    assert_eq!(
        gw.metric("keygate_registrations_total{result=\"delivered\"}"),
        Some(1.0)
    );
    // Not on the admin port; the secret in no log and not in the e-mail.
    assert_eq!(gw.admin_get(REG).0, 404);
    assert!(!gw.logs().contains(&secret) && !smtp.messages().contains(&secret));
    assert!(!gw.logs().contains(&poll));
}

#[tokio::test]
async fn expired_codes_bad_input_and_a_burst_from_one_address_are_refused() {
    let smtp = Smtp::start();
    let (gw, _key) = node(
        smtp.port,
        "  code_ttl_s: 2\n  per_ip_per_hour: 3\n  allowed_email_domains: [shop.example]\n",
    );
    let (_, poll) = register(&gw, "a@shop.example").await;
    let link = smtp.link(1, 10);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    get(&gw, &link, None).await.assert_error(410, "gone");
    // A made-up code gets the same answer.
    get(&gw, &format!("{REG}/verify?code=made-up"), None)
        .await
        .assert_error(410, "gone");
    assert!(!poll.is_empty());
    post(
        &gw,
        json!({ "site_url": "ftp://x", "email": "a@shop.example" }),
    )
    .await
    .assert_error(400, "bad_request");
    post(&gw, register_body("a@elsewhere.example"))
        .await
        .assert_error(400, "bad_request");
    // Two more fill this address's hour (3); the next is 429 with Retry-After.
    register(&gw, "b@shop.example").await;
    register(&gw, "c@shop.example").await;
    let r = post(&gw, register_body("d@shop.example")).await;
    r.assert_error(429, "rate_limited");
    assert!(r.headers.contains_key("retry-after"));
}

/// A site that cannot be created (the config does not build: here a `file:` secret of the
/// YAML is missing) is 503 to whoever holds the link, which is anyone: the answer carried
/// every config error, with its file paths and other sites' ids.
#[tokio::test]
async fn a_site_that_cannot_be_created_tells_the_link_holder_nothing_of_the_config() {
    let smtp = Smtp::start();
    let (gw, _key) = node(smtp.port, "");
    register(&gw, "owner@shop.example").await;
    let link = smtp.link(1, 10);
    let beta = gw.dir.path().join("beta.secret");
    std::fs::rename(&beta, gw.dir.path().join("beta.secret.aside")).unwrap();
    let r = get(&gw, &link, None).await;
    r.assert_error(503, "upstream_unavailable");
    assert!(
        !r.body.contains("beta") && !r.body.contains("secret"),
        "{}",
        r.body
    );
    assert!(gw.logs().contains("could not be created"), "{}", gw.logs());
}

#[tokio::test]
async fn a_relay_that_is_down_leaves_the_registration_pending_and_retried() {
    let mut smtp = Smtp {
        port: free_port(),
        child: None,
        out: tempfile::NamedTempFile::new().unwrap(),
    };
    let (gw, _key) = node(smtp.port, "");
    let (id, poll) = register(&gw, "owner@shop.example").await;
    eventually("a failed e-mail attempt", || {
        (gw.metric("keygate_email_errors_total").unwrap_or(0.0) >= 1.0).then_some(())
    });
    let r = get(&gw, &format!("{REG}/{id}"), Some(&poll)).await;
    assert_eq!(r.status, 202);
    smtp.up();
    let link = smtp.link(1, 20);
    assert_eq!(get(&gw, &link, None).await.status, 200);
    assert_eq!(
        get(&gw, &format!("{REG}/{id}"), Some(&poll)).await.status,
        200
    );
}

#[tokio::test]
async fn registration_off_is_404() {
    let gw = Gateway::start();
    post(&gw, register_body("owner@shop.example"))
        .await
        .assert_error(404, "not_found");
    // Configured but not enabled: the same.
    let off = Gateway::start_with(Options {
        config_extra: registration_yaml(1, "").replace("enabled: true", "enabled: false"),
        ..Options::default()
    });
    post(&off, register_body("owner@shop.example"))
        .await
        .assert_error(404, "not_found");
}

#[tokio::test]
async fn across_the_fleet_register_on_one_node_verify_on_another_collect_on_a_third() {
    let Some((_redis, smtp, opts)) = fleet_setup() else {
        return;
    };
    let nodes = start_fleet_with(opts);
    for n in &nodes {
        eventually("ready", || (n.admin_get("/readyz").0 == 200).then_some(()));
    }
    let r = post(&nodes[0], register_body("owner@shop.example")).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let (id, poll) = (
        r.json()["registration_id"].as_str().unwrap().to_string(),
        r.json()["poll_token"].as_str().unwrap().to_string(),
    );
    let link = smtp.link(1, 10);
    assert_eq!(get(&nodes[1], &link, None).await.status, 200);
    get(&nodes[0], &link, None).await.assert_error(410, "gone");
    let r = get(&nodes[2], &format!("{REG}/{id}"), Some(&poll)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (kid, secret) = (
        r.json()["key_id"].as_str().unwrap().to_string(),
        r.json()["secret"].as_str().unwrap().to_string(),
    );
    get(&nodes[1], &format!("{REG}/{id}"), Some(&poll))
        .await
        .assert_error(410, "gone");
    // The site reaches every node (the admin API's propagation).
    for n in &nodes {
        common::admin::within(
            "the registered site served",
            Duration::from_secs(2),
            || async {
                common::admin::models_as(n, &kid, &secret, Some(HOST))
                    .await
                    .status
                    == 200
            },
        )
        .await;
    }
}

/// A site created for a verified link whose key cannot then be stored for the poll (Redis
/// refuses the write) is taken back and the link stays valid: followed again once Redis
/// accepts writes, it creates the site and the poll delivers its key. Without that, the
/// code was spent and the site existed with a key nobody could ever collect.
#[tokio::test]
async fn a_key_that_cannot_be_stored_for_the_poll_leaves_the_link_valid() {
    let Some((redis, smtp, opts)) = fleet_setup() else {
        return;
    };
    let gw = Gateway::start_with(opts);
    eventually("ready", || (gw.admin_get("/readyz").0 == 200).then_some(()));
    let (id, poll) = register(&gw, "owner@shop.example").await;
    let link = smtp.link(1, 10);
    // Redis now refuses writes to the keys the poll collects from (`kgtest:gs:…`, the
    // harness's key prefix) and only those: every other key pattern stays writable.
    let mut deny: Vec<String> = vec!["default".into(), "resetkeys".into(), "%R~*".into()];
    let prefix = "kgtest:gs";
    for i in 0..prefix.len() {
        let (head, c) = (&prefix[..i], &prefix[i..=i]);
        deny.push(format!("~{head}[^{c}]*"));
    }
    let mut args = vec!["ACL", "SETUSER"];
    args.extend(deny.iter().map(String::as_str));
    assert_eq!(redis.cli(&args).trim(), "OK");
    get(&gw, &link, None)
        .await
        .assert_error(503, "upstream_unavailable");
    // Refused was the write of the key the poll collects, and only that.
    let log = redis.cli(&["ACL", "LOG"]);
    assert!(
        log.contains("kgtest:gs:") && !log.contains("kgtest:gc:"),
        "{log}"
    );
    assert_eq!(
        redis
            .cli(&["ACL", "SETUSER", "default", "resetkeys", "~*"])
            .trim(),
        "OK"
    );
    // The same link again: verified now, and the key is collected once.
    let r = get(&gw, &link, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = get(&gw, &format!("{REG}/{id}"), Some(&poll)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (kid, secret) = (
        r.json()["key_id"].as_str().unwrap().to_string(),
        r.json()["secret"].as_str().unwrap().to_string(),
    );
    common::admin::within(
        "the registered site served",
        Duration::from_secs(2),
        || async {
            common::admin::models_as(&gw, &kid, &secret, Some(HOST))
                .await
                .status
                == 200
        },
    )
    .await;
}

#[tokio::test]
async fn the_php_example_registers_and_collects_the_credentials() {
    let smtp = Smtp::start();
    let (gw, _key) = node(smtp.port, "");
    let script = format!(
        "{}/examples/clients/keygate_register.php",
        env!("CARGO_MANIFEST_DIR")
    );
    let base = gw.url("");
    let php = |args: &[&str], token: Option<&str>| {
        let mut c = Command::new("php");
        c.arg(&script).args(args);
        if let Some(t) = token {
            c.env("KEYGATE_POLL_TOKEN", t);
        }
        let out = c.output().expect("php");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
            + &String::from_utf8_lossy(&out.stderr)
    };
    let out = php(
        &["register", &base, "https://blog.example", "me@blog.example"],
        None,
    );
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}"));
    let (id, token) = (
        v["registration_id"].as_str().unwrap(),
        v["poll_token"].as_str().unwrap(),
    );
    assert_eq!(php(&["poll", &base, id], Some(token)), "pending");
    let link = smtp.link(1, 10);
    assert_eq!(get(&gw, &link, None).await.status, 200);
    let out = php(&["poll", &base, id], Some(token));
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}"));
    let h = gw.sign(
        v["key_id"].as_str().unwrap(),
        v["secret"].as_str().unwrap(),
        "GET",
        "/openai/v1/models",
        b"",
    );
    let r = send(&client(), "GET", &gw.url("/openai/v1/models"), &h, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
}
