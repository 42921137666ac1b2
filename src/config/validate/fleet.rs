//! `fleet:` → [`FleetSettings`] (only when `fleet.redis` is set).

use super::shared::Errors;
use super::shared::LoadOptions;
use crate::config::raw::{RawFleet, RawRedis};
use crate::config::runtime::{FleetSettings, NonceFallback, RedisTls};
use crate::config::secret::{self, redact_url, MasterKey};
use secrecy::{SecretBox, SecretString};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The fleet settings, or `None` (with a warning when a `fleet:` without Redis is set).
pub(super) fn validate(
    raw: Option<&RawFleet>,
    master_keys: &HashMap<String, MasterKey>,
    opts: LoadOptions,
    errs: &mut Errors,
    warnings: &mut Vec<String>,
) -> Option<FleetSettings> {
    let raw = raw?;
    let fleet = settings(raw, master_keys, opts, errs);
    if fleet.is_none() {
        warnings.push("fleet: no fleet.redis set; limits and nonces stay process-local".into());
    }
    fleet
}

/// `fleet:` → [`FleetSettings`]; `None` when no Redis is configured.
fn settings(
    f: &RawFleet,
    master_keys: &HashMap<String, MasterKey>,
    opts: LoadOptions,
    errs: &mut Errors,
) -> Option<FleetSettings> {
    let nodes = f.nodes.unwrap_or(1);
    if nodes == 0 || nodes > 10_000 {
        errs.push("fleet.nodes", "must be between 1 and 10000");
    }
    let sync_ms = f.sync_interval_ms.unwrap_or(100);
    if !(10..=10_000).contains(&sync_ms) {
        errs.push("fleet.sync_interval_ms", "must be between 10 and 10000");
    }
    let nonces_when_down = nonce_fallback(f, errs);
    let redis = f.redis.as_ref()?;
    let redacted_url = redact_url(&redis.url);
    let tls_url = redis.url.starts_with("rediss://");
    if !(redis.url.starts_with("redis://") || tls_url) {
        errs.push(
            "fleet.redis.url",
            format!("\"{redacted_url}\" must start with redis:// or rediss://"),
        );
    } else if redis::Client::open(redis.url.as_str()).is_err() {
        // The client's own message may echo the URL: name the redacted form only.
        errs.push(
            "fleet.redis.url",
            format!("\"{redacted_url}\" is not a usable Redis URL"),
        );
    }
    let tls = tls_files(redis, tls_url, errs);
    let password = password(redis, master_keys, opts, errs);
    if redis.username.is_some() && password.is_none() {
        errs.push(
            "fleet.redis.username",
            "an ACL user needs fleet.redis.password",
        );
    }
    let timeout_ms = redis.timeout_ms.unwrap_or(50);
    if !(1..=10_000).contains(&timeout_ms) {
        errs.push("fleet.redis.timeout_ms", "must be between 1 and 10000");
    }
    let key_prefix = redis
        .key_prefix
        .clone()
        .unwrap_or_else(|| "keygate:".into());
    if key_prefix.len() > 64
        || key_prefix
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '{' || c == '}')
    {
        // A brace would make a hash tag of the prefix: in a cluster a request's nonce
        // and counts would then fall in different slots, which its script refuses.
        errs.push(
            "fleet.redis.key_prefix",
            "must be at most 64 characters without spaces or braces",
        );
    }
    let settings = FleetSettings {
        url: SecretString::from(redis.url.clone()),
        redacted_url,
        timeout: Duration::from_millis(timeout_ms),
        key_prefix,
        nodes: nodes.max(1),
        sync_interval: Duration::from_millis(sync_ms),
        nonces_when_down,
        exact_limits: f.exact_limits.unwrap_or(true),
        tls,
        username: redis.username.clone(),
        password,
        cluster: redis.cluster.unwrap_or(false),
        seeds: seeds(redis, tls_url, errs),
    };
    // Builds the client (TLS material, credentials) without connecting.
    if let Err(m) = crate::fleet::client::client(&settings) {
        errs.push("fleet.redis", m);
    }
    Some(settings)
}

/// `fleet.on_redis_down`: what replay protection does while Redis is unreachable.
fn nonce_fallback(f: &RawFleet, errs: &mut Errors) -> NonceFallback {
    let mut nonces_when_down = NonceFallback::FailClosed;
    if let Some(d) = &f.on_redis_down {
        let window = d.local_window_s.unwrap_or(10);
        if !(1..=300).contains(&window) {
            errs.push(
                "fleet.on_redis_down.local_window_s",
                "must be between 1 and 300",
            );
        }
        match d.nonces.as_deref() {
            None | Some("fail_closed") => {
                if d.local_window_s.is_some() {
                    errs.push(
                        "fleet.on_redis_down.local_window_s",
                        "applies only with nonces: local",
                    );
                }
            }
            Some("local") => {
                nonces_when_down = NonceFallback::Local {
                    window: Duration::from_secs(window),
                }
            }
            Some(other) => errs.push(
                "fleet.on_redis_down.nonces",
                format!("unknown policy \"{other}\" (expected fail_closed or local)"),
            ),
        }
    }
    nonces_when_down
}

/// `fleet.redis.seeds`: more nodes of the cluster to learn its slot map from, with the
/// url's scheme and without credentials (those are `username` and `password`).
fn seeds(redis: &RawRedis, tls_url: bool, errs: &mut Errors) -> Vec<String> {
    let seeds = redis.seeds.clone().unwrap_or_default();
    let db = redis::Client::open(redis.url.as_str())
        .map_or(0, |c| c.get_connection_info().redis_settings().db());
    if redis.cluster == Some(true) && db != 0 {
        errs.push("fleet.redis.url", "a Redis Cluster has only database 0");
    }
    if !seeds.is_empty() && redis.cluster != Some(true) {
        errs.push("fleet.redis.seeds", "seed nodes need cluster: true");
    }
    for (i, seed) in seeds.iter().enumerate() {
        let at = format!("fleet.redis.seeds[{i}]");
        let shown = redact_url(seed);
        let scheme = if tls_url { "rediss://" } else { "redis://" };
        match redis::Client::open(seed.as_str()) {
            _ if !seed.starts_with(scheme) => {
                errs.push(at, format!("\"{shown}\" must use the url's scheme, {scheme}"))
            }
            Ok(c) if c.get_connection_info().redis_settings().password().is_some() => errs.push(
                at,
                "carries a password; the cluster's credentials are fleet.redis.username and password",
            ),
            Ok(_) => {}
            Err(_) => errs.push(at, format!("\"{shown}\" is not a usable Redis URL")),
        }
    }
    seeds
}

/// `fleet.redis.password` from its secret source; a password in the URL is plain text
/// in the YAML and is refused outside `--demo`, like any other secret.
fn password(
    redis: &RawRedis,
    master_keys: &HashMap<String, MasterKey>,
    opts: LoadOptions,
    errs: &mut Errors,
) -> Option<SecretString> {
    let in_url = redis::Client::open(redis.url.as_str()).is_ok_and(|c| {
        c.get_connection_info()
            .redis_settings()
            .password()
            .is_some()
    });
    if in_url && redis.password.is_some() {
        errs.push(
            "fleet.redis.url",
            "has a password and so does fleet.redis.password: give it once, as fleet.redis.password",
        );
    } else if in_url && !opts.demo {
        errs.push(
            "fleet.redis.url",
            "carries a plain-text password; move it to fleet.redis.password (enc:v1:…, env:NAME or file:/path)",
        );
    }
    let v = redis.password.as_ref()?;
    secret::resolve(v, FleetSettings::PASSWORD_PLACE, master_keys, opts.demo)
        .map_err(|m| errs.push("fleet.redis.password", m))
        .ok()
}

/// `fleet.redis.{ca, client_cert, client_key}` (only with `rediss://`), read and parsed
/// now so that a bad file is named at load, not at the first connection.
fn tls_files(redis: &RawRedis, tls_url: bool, errs: &mut Errors) -> Option<RedisTls> {
    let named = [
        ("ca", &redis.ca),
        ("client_cert", &redis.client_cert),
        ("client_key", &redis.client_key),
    ];
    if !tls_url {
        for (key, v) in named {
            if v.is_some() {
                errs.push(format!("fleet.redis.{key}"), "needs a rediss:// url");
            }
        }
        return None;
    }
    let mut tls = RedisTls::default();
    if let Some(path) = &redis.ca {
        tls.ca = pem_certs(path)
            .map_err(|m| errs.push("fleet.redis.ca", m))
            .ok();
    }
    match (&redis.client_cert, &redis.client_key) {
        (Some(cert), Some(key)) => {
            if let Err((field, m)) = client_identity(cert, key, &mut tls) {
                errs.push(format!("fleet.redis.{field}"), m);
            }
        }
        (Some(_), None) => errs.push("fleet.redis.client_key", "required with client_cert"),
        (None, Some(_)) => errs.push("fleet.redis.client_cert", "required with client_key"),
        (None, None) => {}
    }
    Some(tls)
}

/// A PEM certificate file, checked to hold at least one certificate.
fn pem_certs(path: &str) -> Result<Vec<u8>, String> {
    crate::upstream::pinning::load_pem_chain(Path::new(path))?;
    crate::config::files::read_file_bounded(
        Path::new(path),
        crate::config::files::MAX_REFERENCED_FILE_BYTES,
    )
    .map_err(|e| format!("cannot read {path}: {}", e.kind()))
}

/// The client certificate and its key, which must match, into `tls`; the key as PKCS#8
/// PEM (the form the TLS library takes, whatever form the file has). An error names the
/// key (`client_cert` or `client_key`) it is about.
fn client_identity(
    cert_path: &str,
    key_path: &str,
    tls: &mut RedisTls,
) -> Result<(), (&'static str, String)> {
    use openssl::pkey::PKey;
    let certs = crate::upstream::pinning::load_pem_chain(Path::new(cert_path))
        .map_err(|m| ("client_cert", m))?;
    let pem = pem_certs(cert_path).map_err(|m| ("client_cert", m))?;
    let key_pem = zeroize::Zeroizing::new(
        crate::config::files::read_file_bounded(
            Path::new(key_path),
            crate::config::files::MAX_REFERENCED_FILE_BYTES,
        )
        .map_err(|e| {
            (
                "client_key",
                format!("cannot read {key_path}: {}", e.kind()),
            )
        })?,
    );
    let key = PKey::private_key_from_pem(&key_pem)
        .map_err(|_| ("client_key", format!("{key_path} is not a PEM private key")))?;
    let matches = certs[0]
        .public_key()
        .is_ok_and(|public| public.public_eq(&key));
    if !matches {
        return Err((
            "client_key",
            format!("{key_path} is not the key of {cert_path}"),
        ));
    }
    let pkcs8 = key.private_key_to_pem_pkcs8().map_err(|_| {
        (
            "client_key",
            format!("{key_path}: cannot convert to PKCS#8"),
        )
    })?;
    tls.client_cert = Some(pem);
    tls.client_key = Some(Arc::new(SecretBox::new(Box::new(pkcs8))));
    Ok(())
}
