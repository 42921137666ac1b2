//! `upstreams:` → [`Upstream`]s: address, credentials, TLS trust, timeouts, circuit
//! breaker and header allow-lists.

use super::shared::{strong_enough, valid_id, Errors, LoadOptions};
use crate::config::raw::{RawConfig, RawUpstream};
use crate::config::runtime::{Credential, TrustAnchors, Upstream};
use crate::config::secret::{self, MasterKey};
use crate::upstream::circuit::CircuitConfig;
use crate::upstream::headers::{Direction, HeaderAllow};
use crate::upstream::kind::{UpstreamKind, KIND_NAMES};
use crate::upstream::pinning::SpkiPin;
use pingora::tls::x509::X509;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Every valid upstream, each knowing its position (where its live state sits).
pub(super) fn validate_all(
    raw: &RawConfig,
    master_keys: &HashMap<String, MasterKey>,
    opts: LoadOptions,
    errs: &mut Errors,
    warnings: &mut Vec<String>,
) -> Vec<Arc<Upstream>> {
    let mut upstreams = Vec::new();
    for (name, u) in &raw.upstreams {
        let p = format!("upstreams.{name}");
        if let Some(up) = upstream(name, u, &p, master_keys, opts, errs, warnings) {
            upstreams.push(Arc::new(Upstream {
                index: upstreams.len(),
                ..up
            }));
        }
    }
    if raw.upstreams.is_empty() {
        errs.push("upstreams", "at least one upstream is required");
    }
    upstreams
}

/// Where an upstream is: scheme, host, port and base path of its `url`.
struct Address {
    tls: bool,
    host: String,
    port: u16,
    base_path: String,
}

impl Address {
    fn parse(url: &str) -> Option<Address> {
        let uri: http::Uri = url.parse().ok()?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return None,
        };
        let host = uri
            .host()?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        // A query, or user info (which would be dropped, not sent): refused.
        if uri.query().is_some() || uri.authority()?.as_str().contains('@') {
            return None;
        }
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let base_path = uri.path().trim_end_matches('/').to_string();
        Some(Address {
            tls,
            host,
            port,
            base_path,
        })
    }

    /// The `Host` header value: the default port omitted, IPv6 in brackets.
    fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default_port = if self.tls { 443 } else { 80 };
        if self.port == default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    fn is_loopback(&self) -> bool {
        super::shared::is_loopback_host(&self.host)
    }
}

/// One upstream at YAML path `p`; `None` when anything in it is wrong.
fn upstream(
    name: &str,
    u: &RawUpstream,
    p: &str,
    master_keys: &HashMap<String, MasterKey>,
    opts: LoadOptions,
    errs: &mut Errors,
    warnings: &mut Vec<String>,
) -> Option<Upstream> {
    let before = errs.len();
    if !valid_id(name) {
        errs.push(p, format!("\"{name}\" is not a valid upstream name"));
    }
    let kind = UpstreamKind::parse(&u.kind);
    if kind.is_none() {
        errs.push(
            format!("{p}.kind"),
            format!("unknown kind \"{}\" (expected {KIND_NAMES})", u.kind),
        );
    }
    let address = Address::parse(&u.url);
    match &address {
        None => errs.push(
            format!("{p}.url"),
            // Not repeated: a URL with a query or user info may carry a key
            // (`?key=…`, as Gemini's examples do).
            "is not an http(s)://host[:port][/path] URL (no user info, query or fragment)",
        ),
        Some(a) if !a.tls && !a.is_loopback() => match u.allow_plaintext {
            Some(true) => warnings.push(format!(
                "{p}.url: plain http to a non-loopback host sends the provider key in clear text (allow_plaintext: true)"
            )),
            _ => errs.push(
                format!("{p}.url"),
                "plain http to a non-loopback host would send the provider key in clear text; use https://, or set allow_plaintext: true",
            ),
        },
        Some(_) => {}
    }
    let credentials = credentials(name, u, p, kind, master_keys, opts, errs);
    let is_tls = address.as_ref().is_some_and(|a| a.tls);
    let (pins, ca) = trust(u, p, is_tls, errs, warnings);
    let timeouts = timeouts(u, p, errs);
    let circuit = circuit(u, p, errs);
    let model_map = model_map(u, p, kind, errs);
    let mut allow = |names: &[String], field: &str, dir| {
        HeaderAllow::parse(names, dir).unwrap_or_else(|e| {
            for (i, msg) in e {
                errs.push(format!("{p}.{field}[{i}]"), msg);
            }
            HeaderAllow::default()
        })
    };
    let request_headers = allow(
        &u.forward_request_headers,
        "forward_request_headers",
        Direction::Request,
    );
    let response_headers = allow(
        &u.forward_response_headers,
        "forward_response_headers",
        Direction::Response,
    );
    if errs.len() != before {
        return None;
    }
    let address = address?;
    let group_key = group_key(&pins, ca.as_deref().map(|c| &c[..]));
    Some(Upstream {
        name: name.to_string(),
        index: 0,
        kind: kind?,
        tls: address.tls,
        authority: address.authority(),
        host: address.host,
        port: address.port,
        base_path: address.base_path,
        credentials,
        connect_timeout: timeouts.connect,
        read_timeout: timeouts.read,
        total_timeout: timeouts.total,
        max_response_bytes: timeouts.max_response_bytes,
        pins,
        ca,
        group_key,
        request_headers,
        response_headers,
        circuit,
        model_map,
    })
}

/// Longest model name accepted on either side of `model_map`.
const MODEL_NAME_MAX: usize = 256;

/// `model_map`: non-empty names of visible characters; for Gemini, where the model is a
/// path segment, provider names that stay one segment.
fn model_map(
    u: &RawUpstream,
    p: &str,
    kind: Option<UpstreamKind>,
    errs: &mut Errors,
) -> HashMap<String, String> {
    let Some(map) = &u.model_map else {
        return HashMap::new();
    };
    let name_ok =
        |s: &str| !s.is_empty() && s.len() <= MODEL_NAME_MAX && !s.chars().any(char::is_control);
    for (from, to) in map {
        let at = format!("{p}.model_map.{from}");
        if !name_ok(from) || !name_ok(to) {
            errs.push(
                at,
                format!(
                    "model names must be 1-{MODEL_NAME_MAX} characters without control characters"
                ),
            );
        } else if kind == Some(UpstreamKind::Gemini)
            && !to
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        {
            errs.push(
                at,
                format!("\"{to}\" cannot be a Gemini model (it goes into the path: letters, digits, '-', '.', '_')"),
            );
        }
    }
    map.iter().map(|(a, b)| (a.clone(), b.clone())).collect()
}

/// `credentials:`, each resolved from its secret source and turned into the header
/// value sent upstream.
fn credentials(
    name: &str,
    u: &RawUpstream,
    p: &str,
    kind: Option<UpstreamKind>,
    master_keys: &HashMap<String, MasterKey>,
    opts: LoadOptions,
    errs: &mut Errors,
) -> Vec<Credential> {
    let mut credentials = Vec::new();
    let mut ids = HashSet::new();
    if u.credentials.is_empty() {
        errs.push(
            format!("{p}.credentials"),
            "at least one credential is required",
        );
    }
    for (i, c) in u.credentials.iter().enumerate() {
        let cp = format!("{p}.credentials[{i}]");
        if !valid_id(&c.id) {
            errs.push(
                format!("{cp}.id"),
                format!("\"{}\" is not a valid id", c.id),
            );
        }
        if !ids.insert(c.id.clone()) {
            errs.push(
                format!("{cp}.id"),
                format!("duplicate credential id \"{}\"", c.id),
            );
        }
        let place = format!("upstreams/{name}/credentials/{}", c.id);
        let secret = match secret::resolve(&c.secret, &place, master_keys, opts.demo)
            .and_then(|sec| strong_enough(sec, opts))
        {
            Ok(secret) => secret,
            Err(m) => {
                errs.push(format!("{cp}.secret"), m);
                continue;
            }
        };
        let header = crate::upstream::headers::credential_value(
            kind.unwrap_or(UpstreamKind::OpenAi),
            &secret,
        );
        match header {
            Some(header) => credentials.push(Credential {
                id: c.id.clone(),
                secret,
                header,
            }),
            None => errs.push(
                format!("{cp}.secret"),
                "contains spaces or control characters",
            ),
        }
    }
    credentials
}

/// `pins:` and `ca:` (both need an https url); an https upstream without pins is a
/// warning.
fn trust(
    u: &RawUpstream,
    p: &str,
    is_tls: bool,
    errs: &mut Errors,
    warnings: &mut Vec<String>,
) -> (Vec<SpkiPin>, Option<TrustAnchors>) {
    let mut pins = Vec::new();
    for (i, pin) in u.pins.iter().flatten().enumerate() {
        match SpkiPin::parse(pin) {
            Ok(p) => pins.push(p),
            Err(m) => errs.push(format!("{p}.pins[{i}]"), m),
        }
    }
    if !pins.is_empty() && !is_tls {
        errs.push(format!("{p}.pins"), "pins need an https:// url");
    }
    if pins.is_empty() && is_tls {
        warnings.push(format!(
            "{p}: no pins; any certificate trusted by the {} is accepted",
            if u.ca.is_some() {
                "configured ca"
            } else {
                "system store"
            }
        ));
    }
    let ca = match &u.ca {
        None => None,
        Some(_) if !is_tls => {
            errs.push(format!("{p}.ca"), "a ca needs an https:// url");
            None
        }
        Some(path) => match crate::upstream::pinning::load_pem_chain(Path::new(path)) {
            Ok(certs) => Some(Arc::new(certs.into_boxed_slice())),
            Err(m) => {
                errs.push(format!("{p}.ca"), m);
                None
            }
        },
    };
    (pins, ca)
}

/// Pingora's pool isolation key: connections made under other pins or another CA are
/// never reused.
fn group_key(pins: &[SpkiPin], ca: Option<&[X509]>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut sorted = pins.to_vec();
    sorted.sort();
    sorted.hash(&mut h);
    for c in ca.into_iter().flatten() {
        c.to_der().unwrap_or_default().hash(&mut h);
    }
    h.finish()
}

/// An upstream's time and size bounds.
struct Bounds {
    connect: Duration,
    read: Duration,
    total: Duration,
    max_response_bytes: usize,
}

fn timeouts(u: &RawUpstream, p: &str, errs: &mut Errors) -> Bounds {
    let connect_ms = u.connect_timeout_ms.unwrap_or(3000);
    if connect_ms == 0 || connect_ms > 60_000 {
        errs.push(
            format!("{p}.connect_timeout_ms"),
            "must be between 1 and 60000",
        );
    }
    let read_ms = u.read_timeout_ms.unwrap_or(120_000);
    if read_ms == 0 || read_ms > 3_600_000 {
        errs.push(
            format!("{p}.read_timeout_ms"),
            "must be between 1 and 3600000",
        );
    }
    let total_ms = u.total_timeout_ms.unwrap_or(600_000);
    if !(1000..=86_400_000).contains(&total_ms) {
        errs.push(
            format!("{p}.total_timeout_ms"),
            "must be between 1000 and 86400000",
        );
    }
    let max_resp = u.max_response_bytes.unwrap_or(8 * 1024 * 1024);
    if max_resp == 0 {
        errs.push(format!("{p}.max_response_bytes"), "must be at least 1");
    }
    Bounds {
        connect: Duration::from_millis(connect_ms),
        read: Duration::from_millis(read_ms),
        total: Duration::from_millis(total_ms),
        max_response_bytes: max_resp as usize,
    }
}

/// `circuit_breaker:` (the breaker's state is live state, not config).
fn circuit(u: &RawUpstream, p: &str, errs: &mut Errors) -> CircuitConfig {
    let Some(cb) = &u.circuit_breaker else {
        return CircuitConfig::default();
    };
    for (field, v) in [
        ("failures", u64::from(cb.failures)),
        ("open_s", cb.open_s),
        ("half_open_successes", u64::from(cb.half_open_successes)),
    ] {
        if v == 0 {
            errs.push(format!("{p}.circuit_breaker.{field}"), "must be at least 1");
        }
    }
    CircuitConfig {
        failures: cb.failures,
        open: Duration::from_secs(cb.open_s),
        half_open_successes: cb.half_open_successes,
    }
}
