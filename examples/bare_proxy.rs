//! The engine's ceiling for `make bench`: a minimal Pingora proxy with no auth, limits,
//! validation or logging, built from the same release profile as keygate.
//!
//!   cargo run --release --example bare_proxy -- LISTEN UPSTREAM THREADS [steal|nosteal|perthread]
//!
//! `perthread` is the engine run as keygate runs it by default (`server.work_stealing:
//! false`): one service per thread on a single-threaded runtime, each with its own
//! `SO_REUSEPORT` listening socket and its own upstream pool.
//!
//! With `BARE_TLS_DIR` set (a directory made by `certs/gen-test-certs.sh`), it is the same
//! proxy as production runs it: TLS from clients (HTTP/1.1 and HTTP/2, `server.crt`) and https
//! to the upstream, its certificate verified against `ca.crt` for the name `localhost`.
//!
//! It links keygate's library for its global allocator (`keygate::alloc`), so that
//! keygate / bare compares the two proxies' work, not two allocators, and in `perthread`
//! mode for the name each worker's socket goes by (`keygate::server::worker_addr`).

use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::TcpSocketOptions;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use pingora::tls::x509::X509;
use std::net::SocketAddr;
use std::sync::Arc;

// keygate's global allocator (and `server::worker_addr`).
extern crate keygate;

struct Bare {
    upstream: SocketAddr,
    /// https to the upstream: the CA its certificate is verified against.
    ca: Option<Arc<Box<[X509]>>>,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let Some(ca) = &self.ca else {
            let mut p = HttpPeer::new(self.upstream, false, String::new());
            // BARE_TIMEOUTS: the upstream timeouts keygate sets with its defaults
            // (`upstream::peer`: connect 3 s, 5 s in all, read 120 s, write 30 s), to
            // measure what Pingora's per-operation timers cost the engine itself.
            if std::env::var_os("BARE_TIMEOUTS").is_some() {
                use std::time::Duration;
                let o = &mut p.options;
                o.connection_timeout = Some(Duration::from_secs(3));
                o.total_connection_timeout = Some(Duration::from_secs(5));
                o.read_timeout = Some(Duration::from_secs(120));
                o.write_timeout = Some(Duration::from_secs(30));
                o.idle_timeout = Some(Duration::from_secs(60));
            }
            return Ok(Box::new(p));
        };
        let mut peer = HttpPeer::new(self.upstream, true, "localhost".into());
        peer.options.ca = Some(ca.clone());
        Ok(Box::new(peer))
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
    let mode = args.get(4).map_or("steal", String::as_str);
    if !matches!(mode, "steal" | "nosteal" | "perthread") {
        eprintln!("bare_proxy: mode must be steal, nosteal or perthread, not {mode:?}");
        std::process::exit(2);
    }
    let work_stealing = mode == "steal";
    let per_thread = mode == "perthread" && threads > 1;
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
    let tls_dir = std::env::var("BARE_TLS_DIR").ok();
    let ca = tls_dir.as_ref().map(|d| {
        let pem = std::fs::read(format!("{d}/ca.crt")).expect("BARE_TLS_DIR/ca.crt");
        Arc::new(
            X509::stack_from_pem(&pem)
                .expect("a PEM CA")
                .into_boxed_slice(),
        )
    });
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let workers = if per_thread { threads } else { 1 };
    for w in 0..workers {
        let bare = Bare {
            upstream,
            ca: ca.clone(),
        };
        let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, bare);
        let mut sock = None;
        let mut addr = listen.clone();
        if per_thread {
            let parsed: SocketAddr = listen.parse().expect("LISTEN: an IP address and port");
            addr = keygate::server::worker_addr(parsed, w);
            proxy.threads = Some(1);
            let mut o = TcpSocketOptions::default();
            o.so_reuseport = Some(true);
            sock = Some(o);
        }
        match &tls_dir {
            Some(d) => {
                let (cert, key) = (format!("{d}/server.crt"), format!("{d}/server.key"));
                let mut tls = TlsSettings::intermediate(&cert, &key).expect("server.crt and .key");
                tls.enable_h2();
                proxy.add_tls_with_settings(&addr, sock, tls);
            }
            None => match sock {
                Some(o) => proxy.add_tcp_with_settings(&addr, o),
                None => proxy.add_tcp(&addr),
            },
        }
        server.add_service(proxy);
    }
    server.run_forever();
}
