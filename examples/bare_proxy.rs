//! The engine's ceiling for `make bench`: a minimal Pingora proxy with no auth, limits,
//! validation or logging, built from the same release profile as keygate.
//!
//!   cargo run --release --example bare_proxy -- LISTEN UPSTREAM THREADS [steal|nosteal]

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use std::net::SocketAddr;

struct Bare {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listen = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:6190".into());
    let upstream: SocketAddr = args
        .get(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| "127.0.0.1:8000".parse().unwrap());
    let threads: usize = args.get(3).and_then(|t| t.parse().ok()).unwrap_or(1);
    let work_stealing = args.get(4).is_none_or(|w| w != "nosteal");
    let conf = ServerConf {
        threads,
        work_stealing,
        pid_file: "/tmp/bare_proxy.pid".into(),
        upgrade_sock: "/tmp/bare_proxy.sock".into(),
        // Stop within a second of SIGTERM (the default grace period is 5 minutes, which
        // left stopped benchmark proxies running); no effect on serving.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, Bare { upstream });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
