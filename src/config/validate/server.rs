//! `server:` → the request-path [`ServerSettings`] and the start-only
//! [`ProcessSettings`].

use super::shared::Errors;
use crate::auth::nonce::NONCE_DEFAULT_CAPACITY;
use crate::config::raw::{RawAuthFailureLimit, RawLog, RawServer};
use crate::config::runtime::{Listener, ProcessSettings, ServerSettings};
use crate::limits::ip::{AuthFailureLimit, Cidr};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub(super) fn validate(s: &RawServer, errs: &mut Errors) -> (ServerSettings, ProcessSettings) {
    let (listeners, admin_listen) = listeners(s, errs);
    let threads = s.threads.unwrap_or(2);
    if threads == 0 || threads > 256 {
        errs.push("server.threads", "must be between 1 and 256");
    }
    let request = request_checks(s, errs);
    let conn = connections(s, errs);
    let trusted_proxies = trusted_proxies(s, errs);
    (
        ServerSettings {
            hostnames: request.hostnames,
            max_body_bytes: request.max_body as usize,
            max_upload_bytes: request.max_upload as usize,
            clock_skew: Duration::from_secs(request.skew),
            clock_skew_future: Duration::from_secs(request.future),
            signed_headers: request.signed_headers,
            body_timeout: Duration::from_millis(conn.body_timeout),
            trusted_proxies,
            auth_failure_limit: request.auth_failure_limit,
            max_header_bytes: s.max_header_bytes.unwrap_or(32 * 1024),
            max_headers: s.max_headers.unwrap_or(100),
            keepalive_timeout: Duration::from_secs(s.keepalive_timeout_s.unwrap_or(60)),
            send_timeout: Duration::from_secs(s.send_timeout_s.unwrap_or(60)),
            header_timeout: Duration::from_millis(conn.header_timeout),
            max_connections: conn.max_connections,
            max_connections_per_ip: conn.max_per_ip,
        },
        ProcessSettings {
            listeners,
            threads,
            work_stealing: s.work_stealing.unwrap_or(false),
            admin_listen,
            pid_file: s
                .pid_file
                .clone()
                .unwrap_or_else(|| "/tmp/keygate.pid".into()),
            upgrade_sock: s
                .upgrade_sock
                .clone()
                .unwrap_or_else(|| "/tmp/keygate_upgrade.sock".into()),
            grace_period_s: s.grace_period_s.unwrap_or(5),
            graceful_shutdown_timeout_s: s.graceful_shutdown_timeout_s.unwrap_or(10),
            nonce_store_capacity: conn.nonce_cap,
            upstream_keepalive_pool_size: s.upstream_keepalive_pool_size.unwrap_or(256),
            audit_path: None,
            keepalive_requests: s.keepalive_requests,
            h2_max_concurrent_streams: conn.h2_streams,
        },
    )
}

/// `log.audit_path`; `None` writes audit lines to stdout.
pub(super) fn audit_path(log: Option<&RawLog>, errs: &mut Errors) -> Option<String> {
    let path = log?.audit_path.clone()?;
    if path.is_empty() {
        errs.push("log.audit_path", "must not be empty");
    }
    Some(path)
}

/// `server.listen` (with TLS certificates) and `server.admin_listen`.
fn listeners(s: &RawServer, errs: &mut Errors) -> (Vec<Listener>, Option<SocketAddr>) {
    let mut listeners = Vec::new();
    if s.listen.is_empty() {
        errs.push("server.listen", "at least one listener is required");
    }
    let mut seen = HashSet::new();
    for (i, l) in s.listen.iter().enumerate() {
        let p = format!("server.listen[{i}]");
        match l.addr.parse::<SocketAddr>() {
            Ok(addr) => {
                if !seen.insert(addr) {
                    errs.push(format!("{p}.addr"), format!("duplicate listener {addr}"));
                }
                let tls = l.tls.as_ref().and_then(|t| {
                    match crate::tls::CertKey::load(Path::new(&t.cert), Path::new(&t.key)) {
                        Ok(ck) => Some(Arc::new(ck)),
                        Err((is_cert, m)) => {
                            let field = if is_cert { "cert" } else { "key" };
                            errs.push(format!("{p}.tls.{field}"), m);
                            None
                        }
                    }
                });
                listeners.push(Listener { addr, tls });
            }
            Err(_) => errs.push(
                format!("{p}.addr"),
                format!("\"{}\" is not an IP:port address", l.addr),
            ),
        }
    }
    let admin_listen = s
        .admin_listen
        .as_ref()
        .and_then(|a| match a.parse::<SocketAddr>() {
            Ok(addr) => {
                if seen.contains(&addr) {
                    errs.push(
                        "server.admin_listen",
                        "must not share an address with a client listener",
                    );
                }
                Some(addr)
            }
            Err(_) => {
                errs.push(
                    "server.admin_listen",
                    format!("\"{a}\" is not an IP:port address"),
                );
                None
            }
        });
    (listeners, admin_listen)
}

/// What the request path checks a request against.
struct RequestChecks {
    hostnames: Option<HashSet<String>>,
    max_body: u64,
    max_upload: u64,
    skew: u64,
    future: u64,
    signed_headers: HashSet<String>,
    auth_failure_limit: Option<AuthFailureLimit>,
}

fn request_checks(s: &RawServer, errs: &mut Errors) -> RequestChecks {
    let max_body = s.max_body_bytes.unwrap_or(1024 * 1024);
    if max_body == 0 || max_body > 64 * 1024 * 1024 {
        errs.push("server.max_body_bytes", "must be between 1 and 67108864");
    }
    let max_upload = s.max_upload_bytes.unwrap_or(25 * 1024 * 1024);
    if max_upload == 0 || max_upload > 1024 * 1024 * 1024 {
        errs.push(
            "server.max_upload_bytes",
            "must be between 1 and 1073741824",
        );
    }
    let skew = s.clock_skew_s.unwrap_or(300);
    if skew == 0 || skew > 3600 {
        errs.push("server.clock_skew_s", "must be between 1 and 3600 seconds");
    }
    let hostnames = s.hostnames.as_ref().map(|h| {
        let mut set = HashSet::new();
        for (i, name) in h.iter().enumerate() {
            let n = name.to_ascii_lowercase();
            if n.is_empty() || n.contains('/') || n.contains(' ') {
                errs.push(
                    format!("server.hostnames[{i}]"),
                    format!("\"{name}\" is not a host[:port]"),
                );
            }
            set.insert(n);
        }
        set
    });
    let mut signed_headers = HashSet::new();
    for (i, h) in s.signed_headers.iter().flatten().enumerate() {
        let lower = h.to_ascii_lowercase();
        if http::HeaderName::from_bytes(lower.as_bytes()).is_err() || lower.starts_with('@') {
            errs.push(
                format!("server.signed_headers[{i}]"),
                format!("\"{h}\" is not a header name"),
            );
        } else if crate::auth::signature::REQUIRED_COMPONENTS.contains(&lower.as_str()) {
            errs.push(
                format!("server.signed_headers[{i}]"),
                format!("\"{h}\" is always signed; do not list it"),
            );
        }
        signed_headers.insert(lower);
    }
    let auth_failure_limit = auth_failure_limit(s, errs);
    let future = s.clock_skew_future_s.unwrap_or(60);
    if future == 0 || future > 3600 {
        errs.push(
            "server.clock_skew_future_s",
            "must be between 1 and 3600 seconds",
        );
    }
    RequestChecks {
        hostnames,
        max_body,
        max_upload,
        skew,
        future,
        signed_headers,
        auth_failure_limit,
    }
}

/// `server.auth_failure_limit`: the default limit when absent, `None` for `off`.
fn auth_failure_limit(s: &RawServer, errs: &mut Errors) -> Option<AuthFailureLimit> {
    const PATH: &str = "server.auth_failure_limit";
    let raw = match &s.auth_failure_limit {
        None => return Some(AuthFailureLimit::DEFAULT),
        Some(serde_yaml::Value::String(w)) if w == "off" => return None,
        Some(v @ serde_yaml::Value::Mapping(_)) => {
            serde_yaml::from_value::<RawAuthFailureLimit>(v.clone())
        }
        Some(_) => {
            errs.push(PATH, "must be off or { per_minute, cooldown_s }");
            return None;
        }
    };
    match raw {
        Err(e) => {
            errs.push(PATH, e.to_string());
            None
        }
        Ok(afl) => {
            if afl.per_minute == 0 {
                errs.push(format!("{PATH}.per_minute"), "must be at least 1");
            }
            if afl.cooldown_s == 0 || afl.cooldown_s > 86_400 {
                errs.push(format!("{PATH}.cooldown_s"), "must be between 1 and 86400");
            }
            Some(AuthFailureLimit {
                per_minute: afl.per_minute,
                cooldown: Duration::from_secs(afl.cooldown_s),
            })
        }
    }
}

/// `server.trusted_proxies`: the peers allowed to set `X-Forwarded-For`.
fn trusted_proxies(s: &RawServer, errs: &mut Errors) -> Vec<Cidr> {
    let mut trusted_proxies = Vec::new();
    for (i, cidr) in s.trusted_proxies.iter().flatten().enumerate() {
        match Cidr::parse(cidr) {
            Some(c) => trusted_proxies.push(c),
            None => errs.push(
                format!("server.trusted_proxies[{i}]"),
                format!("\"{cidr}\" is not an address or CIDR block"),
            ),
        }
    }
    trusted_proxies
}

/// Connection and protocol bounds.
struct Connections {
    nonce_cap: usize,
    body_timeout: u64,
    header_timeout: u64,
    max_connections: usize,
    max_per_ip: usize,
    h2_streams: u32,
}

fn connections(s: &RawServer, errs: &mut Errors) -> Connections {
    let nonce_cap = s.nonce_store_capacity.unwrap_or(NONCE_DEFAULT_CAPACITY);
    if !(1024..=100_000_000).contains(&nonce_cap) {
        errs.push(
            "server.nonce_store_capacity",
            "must be between 1024 and 100000000",
        );
    }
    if s.max_header_bytes
        .is_some_and(|n| !(1024..=1_048_575).contains(&n))
    {
        errs.push(
            "server.max_header_bytes",
            "must be between 1024 and 1048575",
        );
    }
    if s.max_headers.is_some_and(|n| !(8..=256).contains(&n)) {
        errs.push("server.max_headers", "must be between 8 and 256");
    }
    if s.keepalive_timeout_s.is_some_and(|n| n == 0 || n > 3600) {
        errs.push("server.keepalive_timeout_s", "must be between 1 and 3600");
    }
    if s.send_timeout_s.is_some_and(|n| n == 0 || n > 3600) {
        errs.push("server.send_timeout_s", "must be between 1 and 3600");
    }
    if s.keepalive_requests == Some(0) {
        errs.push("server.keepalive_requests", "must be at least 1");
    }
    let body_timeout = s.body_timeout_ms.unwrap_or(30_000);
    if body_timeout == 0 {
        errs.push("server.body_timeout_ms", "must be at least 1");
    }
    let header_timeout = s.header_timeout_ms.unwrap_or(10_000);
    if !(100..=300_000).contains(&header_timeout) {
        errs.push("server.header_timeout_ms", "must be between 100 and 300000");
    }
    let max_connections = s.max_connections.unwrap_or(10_000);
    if !(1..=1_000_000).contains(&max_connections) {
        errs.push("server.max_connections", "must be between 1 and 1000000");
    }
    let max_per_ip = s.max_connections_per_ip.unwrap_or(256);
    if max_per_ip == 0 || max_per_ip > max_connections {
        errs.push(
            "server.max_connections_per_ip",
            format!("must be between 1 and server.max_connections ({max_connections})"),
        );
    }
    let h2_streams = s.h2_max_concurrent_streams.unwrap_or(100);
    if !(1..=1000).contains(&h2_streams) {
        errs.push(
            "server.h2_max_concurrent_streams",
            "must be between 1 and 1000",
        );
    }
    Connections {
        nonce_cap,
        body_timeout,
        header_timeout,
        max_connections,
        max_per_ip,
        h2_streams,
    }
}
