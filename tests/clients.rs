//! The README's client examples (examples/clients/) sign requests keygate accepts.

mod common;

use common::*;

fn run_client(gw: &Gateway, cmd: &str, script: &str, path: &str, body: Option<&str>) -> String {
    let script = format!("{}/examples/clients/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut c = std::process::Command::new(cmd);
    c.arg(&script).arg(gw.url(path)).arg("alpha.k1");
    if let Some(b) = body {
        c.arg(b);
    }
    let out = c
        .env("KEYGATE_SECRET", &gw.secrets.alpha)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} not runnable: {e}"));
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

fn check_client(cmd: &str, script: &str) {
    let gw = Gateway::start();
    let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
    let out = run_client(&gw, cmd, script, "/openai/v1/chat/completions", Some(body));
    assert!(out.starts_with("200"), "{cmd} POST: {out}");
    let out = run_client(&gw, cmd, script, "/openai/v1/models?limit=5", None);
    assert!(out.starts_with("200"), "{cmd} GET with query: {out}");
    assert_eq!(gw.mock.last()["path"], "/v1/models?limit=5");
    assert_eq!(gw.mock.count(), 2);
}

#[test]
fn python_client_example_works() {
    check_client("python3", "keygate_sign.py");
}

#[test]
fn javascript_client_example_works() {
    check_client("node", "keygate_sign.mjs");
}

#[test]
fn php_client_example_works() {
    check_client("php", "keygate_sign.php");
}
