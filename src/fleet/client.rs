//! The Redis client a fleet connects with, built from the validated settings (also at
//! load, so that `keygate check` names what the client would refuse).
//!
//! TLS is rustls (ring): the redis crate applies a CA and a client certificate to every
//! node of a Redis Cluster only on its rustls path.

use crate::config::runtime::FleetSettings;
use redis::{ConnectionInfo, IntoConnectionInfo};
use secrecy::ExposeSecret;
use std::time::Duration;

/// How long (re)connecting may take: TCP, TLS and AUTH (and, for a cluster, reading its
/// slot map), in the background. A request never waits longer than `timeout_ms` for it.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Every connection's socket options: `TCP_NODELAY`, which the redis crate leaves off. A
/// request's Redis call is one small write answered by one small reply; with Nagle's
/// algorithm a second request's write on the same connection (another request of the same
/// worker thread) waits for the first's answer to be acknowledged.
fn tcp() -> redis::io::tcp::TcpSettings {
    redis::io::tcp::TcpSettings::default().set_nodelay(true)
}

/// A client for one Redis, or for a Redis Cluster.
pub enum Client {
    Single(Box<redis::Client>),
    Cluster(Box<redis::cluster::ClusterClient>),
}

/// A Redis client for these settings (no connection yet): TLS with the configured CA and
/// client certificate for `rediss://` (the system roots without `ca`), `AUTH` with the ACL
/// user and password, and with `cluster` the seed nodes. Errors never echo a URL's
/// password or the password.
pub fn client(s: &FleetSettings) -> Result<Client, String> {
    // Once per process; a second call finds it installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let bad = |what: &str| format!("Redis {}: {what}", s.redacted_url);
    let parse = |url: &str| {
        url.into_connection_info()
            .map_err(|_| bad("not a usable URL"))
    };
    let certs = s.tls.as_ref().map(|tls| redis::TlsCertificates {
        client_tls: match (&tls.client_cert, &tls.client_key) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.expose_secret().clone(),
            }),
            _ => None,
        },
        root_cert: tls.ca.clone(),
    });
    if s.cluster {
        let mut nodes: Vec<ConnectionInfo> = vec![parse(s.url.expose_secret())?];
        for seed in &s.seeds {
            nodes.push(parse(seed)?);
        }
        let mut b = redis::cluster::ClusterClientBuilder::new(nodes)
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(CONNECT_TIMEOUT)
            .tcp_settings(tcp());
        if let Some(user) = &s.username {
            b = b.username(user);
        }
        if let Some(password) = &s.password {
            b = b.password(password.expose_secret());
        }
        if let Some(certs) = certs {
            b = b.certs(certs);
        }
        // The library's message names what it could not use, never a secret.
        let cluster = b.build().map_err(|e| bad(&e.to_string()))?;
        return Ok(Client::Cluster(Box::new(cluster)));
    }
    let mut info = parse(s.url.expose_secret())?;
    let mut auth = info.redis_settings().clone();
    if let Some(user) = &s.username {
        auth = auth.set_username(user);
    }
    if let Some(password) = &s.password {
        auth = auth.set_password(password.expose_secret());
    }
    info = info.set_redis_settings(auth).set_tcp_settings(tcp());
    let single = match certs {
        None => redis::Client::open(info).map_err(|e| bad(&format!("{:?}", e.kind()))),
        Some(certs) => redis::Client::build_with_tls(info, certs).map_err(|e| bad(&e.to_string())),
    };
    single.map(|c| Client::Single(Box::new(c)))
}
