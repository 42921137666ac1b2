//! Where a config holds secrets: the lists `keygate secrets` and `keygate check` walk,
//! and every secret value a runtime holds (for egress scanning and leak tests).

use super::raw::RawConfig;
use super::runtime::{KeyAuth, Runtime};

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
                    format!("{}.keys[{j}].secret", raw.site_path(i)),
                    format!("sites/{}/keys/{}", s.id, k.id),
                    v.clone(),
                ));
            }
        }
    }
    let smtp_password = raw
        .registration
        .as_ref()
        .and_then(|r| r.smtp.password.as_ref());
    if let Some(v) = smtp_password.filter(|v| v.starts_with("enc:")) {
        out.push((
            "registration.smtp.password".into(),
            super::runtime::SmtpSettings::PASSWORD_PLACE.into(),
            v.clone(),
        ));
    }
    for (i, k) in raw.admin.iter().flat_map(|a| a.keys.iter()).enumerate() {
        if k.secret.starts_with("enc:") {
            out.push((
                format!("admin.keys[{i}].secret"),
                format!("admin/keys/{}", k.id),
                k.secret.clone(),
            ));
        }
    }
    if let Some(p) = raw.fleet.as_ref().and_then(|f| f.redis.as_ref()) {
        if let Some(v) = p.password.as_ref().filter(|v| v.starts_with("enc:")) {
            out.push((
                "fleet.redis.password".into(),
                super::runtime::FleetSettings::PASSWORD_PLACE.into(),
                v.clone(),
            ));
        }
    }
    for (name, v) in otlp_headers(raw) {
        if v.starts_with("enc:") {
            out.push((
                format!("telemetry.otlp.headers.{name}"),
                crate::telemetry::otlp::OtlpHeader::place(name),
                v.clone(),
            ));
        }
    }
    out
}

/// `telemetry.otlp.headers` as written.
fn otlp_headers(raw: &RawConfig) -> impl Iterator<Item = (&String, &String)> {
    raw.telemetry
        .iter()
        .flat_map(|t| t.otlp.iter())
        .flat_map(|o| o.headers.iter().flatten())
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
                file(format!("{}.keys[{j}].secret", raw.site_path(i)), v);
            }
        }
    }
    for (i, k) in raw.admin.iter().flat_map(|a| a.keys.iter()).enumerate() {
        file(format!("admin.keys[{i}].secret"), &k.secret);
    }
    if let Some(v) = raw
        .registration
        .as_ref()
        .and_then(|r| r.smtp.password.as_ref())
    {
        file("registration.smtp.password".into(), v);
    }
    for (name, v) in otlp_headers(raw) {
        file(format!("telemetry.otlp.headers.{name}"), v);
    }
    if let Some(r) = raw.fleet.as_ref().and_then(|f| f.redis.as_ref()) {
        if let Some(v) = &r.password {
            file("fleet.redis.password".into(), v);
        }
        if let Some(k) = &r.client_key {
            out.push(("fleet.redis.client_key".into(), std::path::PathBuf::from(k)));
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
/// leak checks in tests and egress scanning. The copies are zeroed when dropped.
pub fn all_secret_strings(rt: &Runtime) -> zeroize::Zeroizing<Vec<String>> {
    use secrecy::ExposeSecret;
    let mut exposed: Vec<&str> = vec![];
    for u in &rt.upstreams {
        exposed.extend(u.credentials.iter().map(|c| c.secret.expose_secret()));
    }
    for k in rt.keys.values() {
        match &k.auth {
            KeyAuth::Hmac(s) | KeyAuth::LegacySiteTimestamp(s) => exposed.push(s.expose_secret()),
            KeyAuth::Bearer(_) => {}
        }
    }
    if let Some(p) = rt
        .registration
        .as_ref()
        .and_then(|r| r.smtp.password.as_ref())
    {
        exposed.push(p.expose_secret());
    }
    for k in rt.admin.iter().flat_map(|a| a.keys.values()) {
        if let KeyAuth::Hmac(s) = &k.auth {
            exposed.push(s.expose_secret());
        }
    }
    if let Some(p) = rt.fleet.as_ref().and_then(|f| f.password.as_ref()) {
        exposed.push(p.expose_secret());
    }
    let otlp = rt.otlp.iter().flat_map(|o| o.headers.iter());
    exposed.extend(otlp.filter(|h| h.secret).map(|h| h.value.expose_secret()));
    // Deduplicated on the borrowed text, so no copy is made only to be dropped.
    exposed.sort_unstable();
    exposed.dedup();
    zeroize::Zeroizing::new(exposed.into_iter().map(str::to_string).collect())
}
