//! Reaching the provider: address resolution, the Pingora peer, and the request
//! headers that go upstream (client credentials out, provider credential in).

pub mod dns;
pub mod headers;

use crate::config::Upstream;
use pingora::upstreams::peer::HttpPeer;
use std::net::SocketAddr;
use std::time::Duration;

/// Build the peer for one request to `up` at the resolved `addr`.
/// SNI is always the configured host name, so certificate verification is never
/// silently disabled.
pub fn peer(up: &Upstream, addr: SocketAddr) -> HttpPeer {
    let mut p = HttpPeer::new(addr, up.tls, up.host.clone());
    let o = &mut p.options;
    o.connection_timeout = Some(up.connect_timeout);
    o.total_connection_timeout = Some(up.connect_timeout + Duration::from_secs(2));
    o.read_timeout = Some(up.read_timeout);
    o.write_timeout = Some(up.read_timeout.min(Duration::from_secs(30)));
    o.idle_timeout = Some(Duration::from_secs(60));
    o.verify_cert = true;
    o.verify_hostname = true;
    p
}
