//! Secrets at rest: enc:v1 values (pinned by an independent Python implementation),
//! master-key rotation, site onboarding, weak secrets, and no secret in any output.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

const MODELS: &str = "/openai/v1/models";

/// The harness lists master keys k1 and k2 (files, mode 600); put a comment on top so
/// rotation can show it keeps the layout.
fn add_master_keys(gw: &Gateway) {
    let text = std::fs::read_to_string(gw.config_path()).unwrap();
    std::fs::write(gw.config_path(), format!("# keep this comment\n{text}")).unwrap();
}

fn python() -> String {
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/target/venv/bin/python");
    if Path::new(venv).exists() {
        venv.into()
    } else {
        "python3".into()
    }
}

#[tokio::test]
async fn enc_v1_from_an_independent_implementation_decrypts() {
    let gw = Gateway::start();
    add_master_keys(&gw);
    let key_b64 = std::fs::read_to_string(gw.dir.path().join("k1.master")).unwrap();
    // SPEC §2 in a few lines of Python `cryptography`.
    let script = r#"
import base64, os, sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
key = base64.b64decode(sys.argv[1]); kid, name, secret = sys.argv[2], sys.argv[3], sys.argv[4]
nonce = os.urandom(12)
ct = AESGCM(key).encrypt(nonce, secret.encode(), f"keygate:v1:{kid}:{name}".encode())
print("enc:v1:%s:%s" % (kid, base64.urlsafe_b64encode(nonce + ct).decode().rstrip("=")))
"#;
    let out = Command::new(python())
        .args([
            "-c",
            script,
            key_b64.trim(),
            "k1",
            "sites/alpha/keys/alpha.k1",
            &gw.secrets.alpha,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let value = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let d = gw.dir.path().display().to_string();
    gw.reload_with(|t| t.replace(&format!("file:{d}/alpha.secret"), &value));
    assert!(gw.logs().contains("config reloaded"), "{}", gw.logs());
    assert_eq!(gw.call("alpha.k1", "GET", MODELS, "").await.status, 200);

    // The same value moved to another place fails, naming the YAML path.
    let moved = std::fs::read_to_string(gw.config_path())
        .unwrap()
        .replace(&format!("file:{d}/beta.secret"), &value);
    let bad = gw.dir.path().join("moved.yaml");
    std::fs::write(&bad, moved).unwrap();
    let (code, stdout, stderr) = keygate(&["check", "-c", bad.to_str().unwrap()], "");
    assert_eq!(code, 1);
    assert!(
        stderr.contains("sites[1].keys[0].secret: cannot decrypt"),
        "{stderr}"
    );
    assert!(!stderr.contains(&gw.secrets.alpha) && !stdout.contains(&gw.secrets.alpha));
}

#[tokio::test]
async fn rotation_reencrypts_everything_and_serves_with_only_the_new_key() {
    let gw = Gateway::start();
    add_master_keys(&gw);
    let cfg = gw.config_path();
    let cfg_s = cfg.to_str().unwrap();
    let d = gw.dir.path().display().to_string();
    // Encrypt alpha's secret and the provider key under k1 (values on stdin).
    let (code, alpha_enc, err) = keygate(
        &[
            "secret",
            "encrypt",
            "-c",
            cfg_s,
            "--key-id",
            "k1",
            "--name",
            "sites/alpha/keys/alpha.k1",
        ],
        &gw.secrets.alpha,
    );
    assert_eq!(code, 0, "{err}");
    let (_, provider_enc, _) = keygate(
        &[
            "secret",
            "encrypt",
            "-c",
            cfg_s,
            "--key-id",
            "k1",
            "--name",
            "upstreams/openai/credentials/prod-1",
        ],
        &gw.secrets.provider,
    );
    assert!(!alpha_enc.contains(&gw.secrets.alpha));
    gw.reload_with(|t| {
        t.replace(&format!("file:{d}/alpha.secret"), alpha_enc.trim())
            .replace(&format!("file:{d}/provider.key"), provider_enc.trim())
    });
    assert_eq!(gw.call("alpha.k1", "GET", MODELS, "").await.status, 200);

    let (code, out, err) = keygate(&["secret", "rotate", "-c", cfg_s, "--to", "k2"], "");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("re-encrypted 2 values"), "{out}");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(
        text.starts_with("# keep this comment\n"),
        "comments and layout kept"
    );
    assert!(!text.contains("enc:v1:k1:") && text.matches("enc:v1:k2:").count() == 2);
    // Drop k1: the gateway now runs on k2 alone.
    gw.reload_with(|t| {
        t.lines()
            .filter(|l| !l.contains("id: k1,"))
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"
    });
    assert!(!std::fs::read_to_string(&cfg).unwrap().contains("k1.master"));
    assert_eq!(gw.metric("keygate_config_generation"), Some(2.0));
    assert_eq!(gw.call("alpha.k1", "GET", MODELS, "").await.status, 200);
    assert_eq!(
        gw.mock.last()["headers"]["authorization"],
        format!("Bearer {}", gw.secrets.provider)
    );
    for o in [&out, &err] {
        for s in gw.all_secrets() {
            assert!(!o.contains(s));
        }
    }
}

#[tokio::test]
async fn site_new_output_works_end_to_end() {
    let gw = Gateway::start();
    add_master_keys(&gw);
    let cfg = gw.config_path();
    let (code, out, err) = keygate(
        &[
            "site",
            "new",
            "--id",
            "delta",
            "--tier",
            "free",
            "-c",
            cfg.to_str().unwrap(),
            "--key-id",
            "k2",
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    let secret = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("#   secret: "))
        .unwrap()
        .to_string();
    assert!(
        secret.len() >= 4 + 32,
        "at least 128 bits of entropy: {secret}"
    );
    let snippet: String = out
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(snippet.contains("enc:v1:k2:") && !snippet.contains(&secret));
    gw.reload_with(|t| t + &snippet);
    assert!(
        gw.logs().contains("config reloaded (generation 1)"),
        "{}",
        gw.logs()
    );
    let h = gw.sign("delta.k1", &secret, "GET", MODELS, b"");
    let r = send(&client(), "GET", &gw.url(MODELS), &h, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!gw.logs().contains(&secret));
}

#[test]
fn weak_secrets_are_refused_with_a_clear_message() {
    let gw = Gateway::start();
    std::fs::write(gw.dir.path().join("alpha.secret"), "changeme-changeme").unwrap();
    let (code, _, err) = keygate(&["check", "-c", gw.config_path().to_str().unwrap()], "");
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "sites[0].keys[0].secret: weak secret: contains the well-known test value \"changeme\""
        ),
        "{err}"
    );
    assert!(!err.contains("changeme-changeme"));
    std::fs::write(gw.dir.path().join("alpha.secret"), "short").unwrap();
    let (_, _, err) = keygate(&["check", "-c", gw.config_path().to_str().unwrap()], "");
    assert!(err.contains("weak secret: too short"), "{err}");
}

#[test]
fn check_warns_about_readable_secret_files() {
    let gw = Gateway::start();
    let secret_file = gw.dir.path().join("alpha.secret");
    std::fs::set_permissions(
        &secret_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let (code, out, _) = keygate(&["check", "-c", gw.config_path().to_str().unwrap()], "");
    assert_eq!(code, 0);
    assert!(
        out.contains("sites[0].keys[0].secret:") && out.contains("readable by group or others"),
        "{out}"
    );
    std::fs::set_permissions(
        &secret_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let (_, out, _) = keygate(&["check", "-c", gw.config_path().to_str().unwrap()], "");
    assert!(!out.contains("sites[0].keys[0].secret:"), "{out}");
}

#[test]
fn core_dumps_are_disabled() {
    let gw = Gateway::start();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", gw.pid())).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert_eq!(core.split_whitespace().nth(4), Some("0"), "{core}");
}
