//! Operations against the real binary: SIGHUP reload, metrics and health on the admin
//! port, the audit log, and the zero-downtime binary upgrade.

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MODELS: &str = "/openai/v1/models";

#[tokio::test]
async fn a_site_added_by_reload_works_in_the_same_process() {
    let gw = Gateway::start();
    let secret = format!("kgs_{}", keygate::auth::signature::random_nonce());
    std::fs::write(gw.dir.path().join("gamma.secret"), &secret).unwrap();
    let sign = || gw.sign("gamma.k1", &secret, "GET", MODELS, b"");
    let r = send(&client(), "GET", &gw.url(MODELS), &sign(), None).await;
    assert_eq!(r.status, 401);
    let path = gw.dir.path().join("gamma.secret");
    gw.reload_with(|t| {
        format!(
            "{t}  - id: gamma\n    tier: free\n    keys:\n      - {{ id: gamma.k1, auth: hmac, secret: \"file:{}\" }}\n",
            path.display()
        )
    });
    let r = send(&client(), "GET", &gw.url(MODELS), &sign(), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(gw.metric("keygate_config_generation"), Some(1.0));
    assert_eq!(
        gw.metric("keygate_config_reloads_total{result=\"ok\"}"),
        Some(1.0)
    );
}

/// Sites in the files of a `sites_dir` serve like `sites:`; a reload reads the directory
/// again; a mistake in a file names the file and its YAML path and changes nothing.
#[tokio::test]
async fn sites_in_a_sites_dir_serve_and_reload() {
    let gw = Gateway::start();
    let dir = gw.dir.path().join("sites.d");
    std::fs::create_dir(&dir).unwrap();
    let secret = format!("kgs_{}", keygate::auth::signature::random_nonce());
    let path = gw.dir.path().join("files.secret");
    std::fs::write(&path, &secret).unwrap();
    let site = |id: &str| {
        format!(
            "- id: {id}\n  tier: free\n  keys:\n    - {{ id: {id}.k1, auth: hmac, secret: \"file:{}\" }}\n",
            path.display()
        )
    };
    let status = |key: &'static str| {
        let headers = gw.sign(key, &secret, "GET", MODELS, b"");
        let url = gw.url(MODELS);
        async move { send(&client(), "GET", &url, &headers, None).await.status }
    };
    std::fs::write(dir.join("a.yaml"), site("gamma")).unwrap();
    std::fs::write(dir.join("README.txt"), "not a site file").unwrap();
    gw.reload_with(|t| format!("sites_dir: \"{}\"\n{t}", dir.display()));
    assert_eq!(status("gamma.k1").await, 200, "{}", gw.logs());
    assert_eq!(status("delta.k1").await, 401);
    // A generated list in JSON (the fast form for large lists).
    let delta = format!(
        r#"[{{"id": "delta", "tier": "free", "keys": [{{"id": "delta.k1", "auth": "hmac", "secret": "file:{}"}}]}}]"#,
        path.display()
    );
    std::fs::write(dir.join("b.json"), delta).unwrap();
    gw.sighup();
    assert_eq!(status("delta.k1").await, 200, "{}", gw.logs());
    assert_eq!(gw.metric("keygate_config_generation"), Some(2.0));
    // A tier that does not exist, in a third file: nothing changes, the error says where.
    std::fs::write(dir.join("c.yaml"), "- { id: eps, tier: gold }\n").unwrap();
    std::fs::remove_file(dir.join("a.yaml")).unwrap();
    gw.sighup();
    let logs = gw.logs();
    assert!(
        logs.contains(r#"sites_dir/c.yaml[0].tier: unknown tier "gold""#),
        "{logs}"
    );
    assert_eq!(
        status("gamma.k1").await,
        200,
        "the old config keeps serving"
    );
    assert_eq!(gw.metric("keygate_config_generation"), Some(2.0));
}

/// SIGHUP is caught from the first moment, not only once the maintenance service runs:
/// one sent while keygate still loads a large config (or while its services start) is
/// served as a reload; SIGHUP's default action would end the process.
#[test]
fn a_sighup_during_start_is_a_reload_not_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let sites = dir.path().join("sites.d");
    std::fs::create_dir(&sites).unwrap();
    for f in 0..4 {
        let text: String = (0..5_000)
            .map(|i| {
                let hash = format!("sha256:{:064x}", f * 100_000 + i);
                format!("- {{ id: s{f}-{i}, tier: free, keys: [{{ id: k{f}-{i}, auth: bearer, hash: \"{hash}\" }}] }}\n")
            })
            .collect();
        std::fs::write(sites.join(format!("{f}.yaml")), text).unwrap();
    }
    let (port, admin) = (free_port(), free_port());
    let config = dir.path().join("keygate.yaml");
    std::fs::write(
        &config,
        format!(
            "server: {{ listen: [{{ addr: \"127.0.0.1:{port}\" }}], admin_listen: \"127.0.0.1:{admin}\", threads: 1, pid_file: {d}/k.pid, upgrade_sock: {d}/k.sock }}\n\
             upstreams: {{ openai: {{ kind: openai, url: \"http://127.0.0.1:9\", credentials: [{{ id: p, secret: \"file:{d}/p.key\" }}] }} }}\n\
             routes: [{{ prefix: \"/openai/\", upstream: openai }}]\n\
             tiers: {{ free: {{ requests_per_minute: 10 }} }}\n\
             log: {{ audit_path: {d}/audit.jsonl }}\n\
             sites_dir: {}\n",
            sites.display(),
            d = dir.path().display(),
        ),
    )
    .unwrap();
    let provider_key = format!("sk-{}", keygate::auth::signature::random_nonce());
    std::fs::write(dir.path().join("p.key"), provider_key).unwrap();
    let mut child = spawn_serve(&config, &dir.path().join("log"), "info");
    let caught = || {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .is_some_and(|m| m & 1 != 0)
    };
    let listening = || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !caught() {
        assert!(Instant::now() < deadline, "SIGHUP never caught");
        std::thread::sleep(Duration::from_millis(1));
    }
    // Caught while the 20,000 sites still load, long before anything listens (the
    // maintenance service's own handler comes with the listeners, milliseconds apart).
    let caught_at = Instant::now();
    assert!(!listening(), "SIGHUP was caught only once keygate served");
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let logs = || std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    while !logs().contains("config reloaded") {
        assert!(
            child.try_wait().unwrap().is_none(),
            "keygate ended on an early SIGHUP:\n{}",
            logs()
        );
        assert!(Instant::now() < deadline, "no reload:\n{}", logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    while !listening() {
        assert!(Instant::now() < deadline, "never listened:\n{}", logs());
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        caught_at.elapsed() > Duration::from_millis(100),
        "SIGHUP was caught only {:?} before keygate listened, not while it loaded its config",
        caught_at.elapsed()
    );
    assert!(child.try_wait().unwrap().is_none());
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn a_broken_file_changes_nothing() {
    let gw = Gateway::start();
    gw.reload_with(|t| t.replace("upstream: openai", "upstream: nowhere"));
    let logs = gw.logs();
    assert!(logs.contains("config reload failed"), "{logs}");
    assert!(
        logs.contains("routes[0].upstream: unknown upstream \"nowhere\""),
        "{logs}"
    );
    let r = gw.call("alpha.k1", "GET", MODELS, "").await;
    assert_eq!(r.status, 200, "the old config keeps serving");
    assert_eq!(
        gw.metric("keygate_config_reloads_total{result=\"error\"}"),
        Some(1.0)
    );
    assert_eq!(gw.metric("keygate_config_generation"), Some(0.0));
    // Not YAML at all.
    gw.reload_with(|_| "server: [".into());
    assert_eq!(gw.call("alpha.k1", "GET", MODELS, "").await.status, 200);
    assert_eq!(
        gw.metric("keygate_config_reloads_total{result=\"error\"}"),
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reloads_under_load_drop_nothing() {
    let gw = Arc::new(Gateway::start());
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (gw, stop, ok, failed) = (gw.clone(), stop.clone(), ok.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::Relaxed) {
                let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
                let h = gw.sign(
                    "alpha.k1",
                    &gw.secrets.alpha,
                    "POST",
                    "/openai/v1/chat/completions",
                    body.as_bytes(),
                );
                let r = send(
                    &c,
                    "POST",
                    &gw.url("/openai/v1/chat/completions"),
                    &h,
                    Some(body.into()),
                )
                .await;
                if r.status == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("failed: {} {}", r.status, r.body);
                }
            }
        }));
    }
    for i in 0..8 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let gw2 = gw.clone();
        // Alternate a real change (a new tier value) with a no-op reload.
        tokio::task::spawn_blocking(move || {
            gw2.reload_with(|t| {
                t.replace(
                    "other: { requests_per_minute: 100000",
                    &format!("other: {{ requests_per_minute: {}", 100000 + i),
                )
            })
        })
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{failed} failed of {}", ok + failed);
    assert!(ok > 50, "only {ok} requests");
    assert_eq!(gw.metric("keygate_config_generation"), Some(8.0));
}

const SPEC_METRICS: [&str; 12] = [
    "keygate_requests_total",
    "keygate_request_duration_seconds",
    "keygate_upstream_duration_seconds",
    "keygate_auth_failures_total",
    "keygate_rate_limited_total",
    "keygate_tokens_total",
    "keygate_upstream_errors_total",
    "keygate_circuit_state",
    "keygate_response_rejected_total",
    "keygate_legacy_auth_total",
    "keygate_config_reloads_total",
    "keygate_config_generation",
];

#[tokio::test]
async fn metrics_and_health_are_on_the_admin_port_only() {
    let gw = Gateway::start();
    assert_eq!(gw.call("alpha.k1", "GET", MODELS, "").await.status, 200);
    let counted = "keygate_requests_total{route=\"/openai/\",status=\"200\"} 1";
    let body = eventually("the request to be counted", || {
        let (status, body) = gw.admin_get("/metrics");
        assert_eq!(status, 200);
        body.contains(counted).then_some(body)
    });
    for name in SPEC_METRICS {
        assert!(body.contains(&format!("# TYPE {name} ")), "{name} missing");
    }
    assert!(
        body.contains("keygate_request_duration_seconds_bucket{route=\"/openai/\",le=\"0.0005\"}")
    );
    for s in gw.all_secrets() {
        assert!(!body.contains(s));
    }
    let per_site: Vec<&str> = body
        .lines()
        .filter(|l| l.contains("alpha") && !l.starts_with("keygate_legacy_auth_total"))
        .collect();
    assert!(
        per_site.is_empty(),
        "per-site labels outside legacy auth: {per_site:?}"
    );
    assert_eq!(gw.admin_get("/healthz").0, 200);
    assert_eq!(gw.admin_get("/readyz").0, 200);
    // The public port has no metrics.
    let r = send(&client(), "GET", &gw.url("/metrics"), &[], None).await;
    assert_eq!(r.status, 404);
    assert!(!r.body.contains("keygate_requests_total"));
}

#[tokio::test]
async fn audit_lines_carry_the_spec_fields_and_no_secret() {
    let gw = Gateway::start();
    assert_eq!(
        gw.call(
            "alpha.k1",
            "POST",
            "/openai/v1/chat/completions",
            r#"{"model":"gpt-4o","messages":[]}"#
        )
        .await
        .status,
        200
    );
    let _ = send(
        &client(),
        "GET",
        &gw.url(MODELS),
        &[("authorization".into(), "Bearer kgk_wrong".into())],
        None,
    )
    .await;
    let lines = gw.audit_lines_at_least(2);
    assert_eq!(lines.len(), 2);
    for l in &lines {
        for f in [
            "ts",
            "request_id",
            "site",
            "key_id",
            "route",
            "upstream",
            "model",
            "status",
            "error_code",
            "duration_ms",
            "upstream_ms",
            "tokens_in",
            "tokens_out",
            "client_ip",
            "auth",
        ] {
            assert!(l.get(f).is_some(), "audit line lacks {f}: {l}");
        }
    }
    assert_eq!(lines[0]["site"], "alpha");
    assert_eq!(lines[0]["tokens_in"], 12);
    // The provider's time to first byte: inside the upstream time, inside the whole.
    let ms = |f: &str| {
        lines[0][f]
            .as_f64()
            .unwrap_or_else(|| panic!("{f}: {}", lines[0]))
    };
    assert!(ms("upstream_header_ms") > 0.0);
    assert!(ms("upstream_header_ms") <= ms("upstream_ms"));
    assert!(ms("upstream_ms") <= ms("duration_ms"));
    assert_eq!(lines[1]["error_code"], "unauthenticated");
    assert!(lines[1]["upstream_header_ms"].is_null());
    let logs = gw.logs();
    for s in gw.all_secrets() {
        assert!(!logs.contains(s));
    }
}

#[tokio::test]
async fn audit_log_file_is_reopened_on_sighup() {
    let gw = Gateway::start();
    let path = gw.dir.path().join("audit.jsonl");
    gw.reload_with(|t| format!("{t}log: {{ audit_path: {} }}\n", path.display()));
    let lines = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    assert_eq!(gw.call("alpha.k1", "GET", MODELS, "").await.status, 200);
    eventually("the line in the file", || (lines(&path) == 1).then_some(()));
    // logrotate: move the file away, then SIGHUP.
    let rotated = gw.dir.path().join("audit.jsonl.1");
    std::fs::rename(&path, &rotated).unwrap();
    gw.sighup();
    assert_eq!(gw.call("alpha.k1", "GET", MODELS, "").await.status, 200);
    eventually("a line in the new file after rotation", || {
        (lines(&path) == 1).then_some(())
    });
    assert_eq!(lines(&rotated), 1);
}

/// Audit lines are buffered for up to 50 ms; stopping (here the fast way, SIGINT) writes
/// out what is buffered, so no request goes unaudited.
#[tokio::test]
async fn buffered_audit_lines_are_written_at_shutdown() {
    let mut gw = Gateway::start();
    for _ in 0..20 {
        assert_eq!(gw.call("alpha.k1", "GET", MODELS, "").await.status, 200);
    }
    gw.signal("-INT");
    assert!(
        gw.wait_exit(Duration::from_secs(10)),
        "keygate did not exit"
    );
    let lines = gw.audit_lines();
    assert_eq!(lines.len(), 20, "{}", gw.logs());
}

/// SIGINT stops keygate at once, every time. Pingora's own fast shutdown could hang with
/// one runtime per worker thread (the default): about one start in six spun forever in an
/// accept loop. So several starts, each with requests on both listeners, must all exit.
#[tokio::test]
async fn sigint_stops_keygate_every_time() {
    for start in 0..8 {
        let mut gw = Gateway::start();
        assert_eq!(gw.call("alpha.k1", "GET", MODELS, "").await.status, 200);
        assert_eq!(gw.admin_get("/healthz").0, 200);
        gw.signal("-INT");
        assert!(
            gw.wait_exit(Duration::from_secs(5)),
            "start {start}: keygate did not exit after SIGINT"
        );
        assert!(!gw.logs().contains("Accept() failed"), "start {start}");
    }
}

/// SIGINT is the fast stop during a drain too: after SIGTERM, keygate would wait out its
/// grace period (here 30 s); SIGINT then ends it at once, with the audit lines written.
#[tokio::test]
async fn sigint_cuts_a_drain_short() {
    let mut gw = Gateway::start_with(Options {
        grace_period_s: 30,
        ..Options::default()
    });
    assert_eq!(gw.call("alpha.k1", "GET", MODELS, "").await.status, 200);
    gw.signal("-TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !gw.wait_exit(Duration::from_millis(200)),
        "draining, not gone"
    );
    gw.signal("-INT");
    assert!(
        gw.wait_exit(Duration::from_secs(5)),
        "keygate did not exit on SIGINT during the drain"
    );
    assert_eq!(gw.audit_lines().len(), 1, "{}", gw.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_upgrade_drops_nothing() {
    let mut gw = Gateway::start();
    let url = gw.url(MODELS);
    let bearer = format!("Bearer {}", gw.secrets.bearer);
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let resets = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (url, bearer, stop, ok, failed, resets) = (
            url.clone(),
            bearer.clone(),
            stop.clone(),
            ok.clone(),
            failed.clone(),
            resets.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                // A fresh connection each time: every request races the hand-over.
                let c = reqwest::Client::builder()
                    .pool_max_idle_per_host(0)
                    .build()
                    .unwrap();
                let mut attempt = c.get(&url).header("authorization", &bearer).send().await;
                if matches!(&attempt, Err(e) if e.is_request() || e.is_connect()) {
                    // A connection the old process accepted in its last instant may be reset
                    // before its request is read (nothing was processed): an HTTP client
                    // retries such an idempotent GET once.
                    resets.fetch_add(1, Ordering::Relaxed);
                    attempt = c.get(&url).header("authorization", &bearer).send().await;
                }
                match attempt {
                    Ok(r) if r.status() == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!("failed: {other:?}");
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut new = gw.spawn_upgrade();
    tokio::time::sleep(Duration::from_millis(500)).await;
    gw.signal("-QUIT");
    assert!(
        gw.wait_exit(Duration::from_secs(20)),
        "the old process did not exit"
    );
    let served_before = ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let _ = new.kill();
    let _ = new.wait();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{failed} failed of {}", ok + failed);
    assert!(
        ok > served_before,
        "the new process served after the old one left"
    );
}

#[test]
fn systemd_unit_verifies_when_systemd_is_present() {
    let unit = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/keygate.service");
    let text = std::fs::read_to_string(unit).unwrap();
    for line in [
        "ExecReload=/bin/kill -HUP $MAINPID",
        "LoadCredential=",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "LimitNOFILE=",
        "StateDirectory=keygate",
        "RuntimeDirectoryPreserve=yes",
    ] {
        assert!(text.contains(line), "unit lacks {line}");
    }
    match std::process::Command::new("systemd-analyze")
        .args(["verify", unit])
        .output()
    {
        Ok(out) => {
            let err = String::from_utf8_lossy(&out.stderr);
            // The binary path does not exist on a build machine; everything else must pass.
            let problems: Vec<&str> = err
                .lines()
                .filter(|l| !l.contains("/usr/local/bin/keygate") && !l.trim().is_empty())
                .collect();
            assert!(problems.is_empty(), "{problems:?}");
        }
        Err(_) => eprintln!("systemd-analyze not installed: static checks only"),
    }
}

/// The client names the model, up to a body long: an audit line carried it whole, so a
/// few such requests filled the audit buffer and other lines were dropped.
#[tokio::test]
async fn a_long_model_name_is_cut_in_the_audit_line() {
    let gw = Gateway::start();
    let model = "m".repeat(100_000);
    // A route without `models:` passes any name on.
    let body = format!(r#"{{"model":"{model}","max_tokens":16,"messages":[]}}"#);
    let r = gw
        .call("alpha.k1", "POST", "/anthropic/v1/messages", &body)
        .await;
    assert!(r.status < 500, "{} {}", r.status, r.body);
    let lines = gw.audit_lines_at_least(1);
    let logged = lines[0]["model"].as_str().unwrap();
    assert!(
        logged.len() <= 256 && logged.starts_with("mmm"),
        "{} bytes",
        logged.len()
    );
}
