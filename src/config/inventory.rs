//! Where a config holds secrets: the lists `keygate secrets` and `keygate check` walk,
//! and every secret value a runtime holds (for egress scanning and leak tests).

use super::raw::RawConfig;
use super::runtime::{KeyAuth, Runtime};
use std::collections::BTreeSet;

/// Every `enc:v1` value of a raw config with its place name (the AAD) and YAML path.
pub fn encrypted_values(raw: &RawConfig) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (name, u) in &raw.upstreams {
        for (i, c) in u.credentials.iter().enumerate() {
            if c.secret.starts_with("enc:") {
                out.push((
                    format!("upstreams.{name}.credentials[{i}].secret"),
                    format!("upstreams/{name}/credentials/{}", c.id),
                    c.secret.clone(),
                ));
            }
        }
    }
    for (i, s) in raw.sites.iter().enumerate() {
        for (j, k) in s.keys.iter().enumerate() {
            if let Some(v) = k.secret.as_ref().filter(|v| v.starts_with("enc:")) {
                out.push((
                    format!("sites[{i}].keys[{j}].secret"),
                    format!("sites/{}/keys/{}", s.id, k.id),
                    v.clone(),
                ));
            }
        }
    }
    out
}

/// Files holding secret material that a config refers to, with their YAML paths.
pub fn sensitive_files(raw: &RawConfig) -> Vec<(String, std::path::PathBuf)> {
    let mut out = Vec::new();
    let mut file = |path: String, v: &str| {
        if let Some(p) = v.strip_prefix("file:") {
            out.push((path, std::path::PathBuf::from(p)));
        }
    };
    for (i, m) in raw.master_keys.iter().enumerate() {
        file(format!("master_keys[{i}].source"), &m.source);
    }
    for (name, u) in &raw.upstreams {
        for (i, c) in u.credentials.iter().enumerate() {
            file(
                format!("upstreams.{name}.credentials[{i}].secret"),
                &c.secret,
            );
        }
    }
    for (i, s) in raw.sites.iter().enumerate() {
        for (j, k) in s.keys.iter().enumerate() {
            if let Some(v) = &k.secret {
                file(format!("sites[{i}].keys[{j}].secret"), v);
            }
        }
    }
    for (i, l) in raw.server.listen.iter().enumerate() {
        if let Some(t) = &l.tls {
            out.push((
                format!("server.listen[{i}].tls.key"),
                std::path::PathBuf::from(&t.key),
            ));
        }
    }
    out
}

/// Every secret string of a runtime (client secrets and provider credentials), for
/// leak checks in tests and egress scanning.
pub fn all_secret_strings(rt: &Runtime) -> Vec<String> {
    use secrecy::ExposeSecret;
    let mut out = BTreeSet::new();
    for u in &rt.upstreams {
        for c in &u.credentials {
            out.insert(c.secret.expose_secret().to_string());
        }
    }
    for k in rt.keys.values() {
        match &k.auth {
            KeyAuth::Hmac(s) | KeyAuth::LegacySiteTimestamp(s) => {
                out.insert(s.expose_secret().to_string());
            }
            KeyAuth::Bearer(_) => {}
        }
    }
    out.into_iter().collect()
}
