//! `keygate serve`: build the Pingora server from a validated runtime and run it.

use crate::config::{LoadOptions, Runtime};
use crate::control::Control;
use crate::edge::EdgeApp;
use crate::gateway::Gateway;
use crate::reload::Reloader;
use crate::state::State;
use crate::telemetry::admin::AdminApp;
use crate::tls::reload::ReloadableCert;
use pingora::apps::http_app::HttpServer;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig, TcpSocketOptions};
use pingora::protocols::http::v2::server::{default_h2_options, H2Options};
use pingora::proxy::HttpProxy;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::background_service;
use std::path::PathBuf;
use std::sync::Arc;

/// How `serve` was invoked.
pub struct ServeOptions {
    pub config: PathBuf,
    pub demo: bool,
    pub daemon: bool,
    pub upgrade: bool,
}

/// Pingora's own settings from keygate's `server:` section.
pub fn pingora_conf(rt: &Runtime, daemon: bool) -> ServerConf {
    let p = &rt.process;
    ServerConf {
        daemon,
        threads: p.threads,
        work_stealing: p.work_stealing,
        pid_file: p.pid_file.clone(),
        upgrade_sock: p.upgrade_sock.clone(),
        grace_period_seconds: Some(p.grace_period_s),
        graceful_shutdown_timeout_seconds: Some(p.graceful_shutdown_timeout_s),
        upstream_keepalive_pool_size: p.upstream_keepalive_pool_size,
        ..ServerConf::default()
    }
}

/// The read buffer of a client connection. Pingora's default is 64 KiB per connection,
/// kept while the connection is idle: about half of an idle keep-alive connection's memory
/// (bench/idle.sh: 41.7 KB per connection with it, 21.7 KB unbuffered). Plain HTTP reads
/// straight into the HTTP parser's buffer (Pingora reads bodies in large reads of its
/// own); TLS keeps 4 KiB so that OpenSSL's reads of a record's header and of its body
/// share a syscall.
fn client_read_buffer(tls: bool) -> L4BufferSettings {
    L4BufferSettings {
        read: Some(if tls { 4096 } else { 0 }),
        write: None,
    }
}

/// HTTP/2 limits for client connections: Pingora's bounded defaults, keygate's stream
/// and header caps, and a tight budget for streams reset before they were served (the
/// "rapid reset" attack, CVE-2023-44487): past it the connection gets GOAWAY.
fn h2_options(&(max_streams, max_header_bytes): &(u32, usize)) -> H2Options {
    let mut o = default_h2_options();
    o.max_concurrent_streams(max_streams)
        .max_header_list_size(max_header_bytes as u32)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(Some(H2_MAX_LOCAL_RESETS));
    o
}

/// What the client-facing services are built from.
struct Edge<'a> {
    listeners: &'a [crate::config::Listener],
    state: &'a Arc<State>,
    keepalive_requests: Option<u32>,
    /// `server.keepalive_timeout_s` at start: how long an HTTP/2 connection may be idle.
    h2_idle: std::time::Duration,
    h2: (u32, usize),
    /// Client connections counted against `max_connections*`, across all workers.
    conns: Arc<crate::edge::ConnTable>,
}

type EdgeService = pingora::services::listening::Service<EdgeApp<HttpProxy<Gateway>>>;

impl Edge<'_> {
    /// The client-facing proxy services. With work stealing, one service on Pingora's
    /// multi-threaded runtime. Without it, a worker per thread, as nginx and Envoy run
    /// theirs: one service each on a single-threaded runtime, with its own listening
    /// socket per address (`SO_REUSEPORT`: the kernel spreads new connections over the
    /// workers' sockets) and its own upstream connection pool. On one thread, Pingora's
    /// pool and its idle watcher cannot race (cloudflare/pingora#998) and a reuse needs
    /// no wake-up across threads. A listener on port 0 keeps one service (each worker
    /// would get a port of its own).
    fn services(
        &self,
        conf: &Arc<ServerConf>,
        gateway: Gateway,
    ) -> Result<Vec<EdgeService>, String> {
        let any_port = self.listeners.iter().any(|l| l.addr.port() == 0);
        let workers = if conf.work_stealing || conf.threads < 2 || any_port {
            1
        } else {
            conf.threads
        };
        (0..workers)
            .map(|w| self.service(conf, gateway.worker(), (workers > 1).then_some(w)))
            .collect()
    }

    /// One proxy service; `worker`: its index when there is a worker per thread (then
    /// the service runs on one thread and its sockets are `SO_REUSEPORT`).
    fn service(
        &self,
        conf: &Arc<ServerConf>,
        gateway: Gateway,
        worker: Option<usize>,
    ) -> Result<EdgeService, String> {
        let mut proxy = pingora::proxy::http_proxy(conf, gateway);
        let mut opts = pingora::apps::HttpServerOptions::default();
        opts.keepalive_request_limit = self.keepalive_requests;
        // An HTTP/2 connection with no stream open is closed like an idle HTTP/1 one
        // (Pingora's default keeps it for good).
        opts.h2_idle_timeout = Some(self.h2_idle);
        proxy.server_options = Some(opts);
        proxy.h2_options = Some(h2_options(&self.h2));
        let mut svc = pingora::services::listening::Service::new(
            "keygate".into(),
            EdgeApp::new(proxy, self.state.clone(), self.conns.clone()),
        );
        if worker.is_some() {
            svc.threads = Some(1);
        }
        for l in self.listeners {
            let addr = l.addr.to_string();
            let mut endpoint = ListenerConfig::tcp(match worker {
                Some(w) => worker_addr(l.addr, w),
                None => addr.clone(),
            })
            .l4_buffer(client_read_buffer(l.tls.is_some()));
            if worker.is_some() {
                let mut o = TcpSocketOptions::default();
                o.so_reuseport = Some(true);
                endpoint = endpoint.tcp_socket_options(o);
            }
            if l.tls.is_some() {
                // The certificate is picked per handshake from the running config.
                let callbacks = ReloadableCert::callbacks(l.addr, self.state.clone());
                let mut tls = TlsSettings::with_callbacks(callbacks)
                    .map_err(|e| format!("listener {addr}: {e}"))?;
                tls.enable_h2();
                endpoint = endpoint.tls(tls);
            }
            svc.add_listener(endpoint);
        }
        Ok(svc)
    }
}

/// Worker `w`'s name for listening address `addr`: the same address, its port written
/// with `w` leading zeros. Pingora keys the listening sockets it hands to a new binary
/// (SIGQUIT upgrade) by this text, so each worker's socket needs a text of its own that
/// still parses to `addr`; worker 0's is the plain address.
pub fn worker_addr(addr: std::net::SocketAddr, w: usize) -> String {
    let plain = addr.to_string();
    match plain.rsplit_once(':') {
        Some((host, port)) => format!("{host}:{}{port}", "0".repeat(w)),
        None => plain,
    }
}

/// Streams a client may reset before keygate accepted them, at one time.
const H2_MAX_PENDING_RESETS: usize = 20;
/// Streams keygate may reset for a client's protocol errors before closing the connection.
const H2_MAX_LOCAL_RESETS: usize = 256;

/// The stop signals: SIGQUIT hands the listeners to a new binary, SIGTERM drains, as in
/// Pingora; SIGINT is keygate's own fast shutdown, also during a drain or a hand-over.
///
/// Pingora's fast shutdown drops the service runtimes without first telling their accept
/// loops to stop. With one runtime per worker thread (work stealing off, the default), an
/// accept loop whose listener was registered with a runtime already dropped gets an error
/// at once, every time, and never yields: its thread spins at 100 % CPU logging "Accept()
/// failed" and the process never exits (5 starts in 30 hung after SIGINT). So on SIGINT
/// keygate writes out the buffered audit lines and exits, as nginx does on its fast
/// shutdown; requests in flight are cut, as they are by Pingora's.
struct Signals {
    state: std::sync::Arc<State>,
}

#[async_trait::async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        // A signal that cannot be watched (never expected) leaves its branch pending.
        async fn on(kind: SignalKind) {
            match signal(kind) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(e) => {
                    log::error!("cannot watch signal {}: {e}", kind.as_raw_value());
                    std::future::pending::<()>().await
                }
            }
        }
        // Watched on Pingora's server runtime, which keeps running through the grace
        // period after this returns.
        let state = self.state.clone();
        tokio::spawn(async move {
            on(SignalKind::interrupt()).await;
            log::info!("SIGINT received: fast shutdown");
            state.audit.flush_at_exit();
            std::process::exit(0)
        });
        tokio::select! {
            _ = on(SignalKind::quit()) => ShutdownSignal::GracefulUpgrade,
            _ = on(SignalKind::terminate()) => ShutdownSignal::GracefulTerminate,
        }
    }
}

/// A fresh start (not `--upgrade`, which takes over the old process's listening sockets)
/// first checks that every address it is to listen on is free, and refuses to start,
/// naming the YAML path, when one is not, as nginx does. Left to Pingora, a taken address
/// is retried for 30 s and then stops only the service that listens on it: keygate would
/// run on without its admin listener (no `/healthz`, no `/metrics`) or without a client
/// listener. The probe binds as Pingora does, with `SO_REUSEADDR` (std's default on
/// Unix), so a connection of a previous run in TIME_WAIT does not count, and without
/// `SO_REUSEPORT`, so a second keygate on the same port counts. Port 0 is always free.
fn check_addresses_free(p: &crate::config::ProcessSettings) -> Result<(), String> {
    let client = p
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| (format!("server.listen[{i}].addr"), l.addr));
    let admin = p
        .admin_listen
        .map(|a| ("server.admin_listen".to_string(), a));
    for (path, addr) in client.chain(admin).filter(|(_, a)| a.port() != 0) {
        std::net::TcpListener::bind(addr)
            .map_err(|e| format!("{path}: cannot listen on {addr}: {e}"))?;
    }
    Ok(())
}

/// Load the config (or the demo), start everything, never return on success.
pub fn serve(opts: ServeOptions) -> Result<(), String> {
    crate::reload::catch_early_hup();
    let (base, load) = if opts.demo {
        if opts.daemon {
            return Err("--demo runs in the foreground; drop -d".into());
        }
        let port = crate::demo::start_mock()
            .map_err(|e| format!("cannot start the demo mock provider: {e}"))?;
        let exe = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "keygate".into());
        println!("{}", crate::demo::banner(&exe));
        (crate::demo::yaml(port), LoadOptions { demo: true })
    } else {
        (
            crate::control::read_yaml(&opts.config)?,
            LoadOptions::default(),
        )
    };
    let (rt, changes, base) = crate::control::load_at_start(base, load)
        .map_err(|e| format!("{}:\n{e}", opts.config.display()))?;
    for w in &rt.warnings {
        log::warn!("{w}");
    }
    if !opts.upgrade {
        check_addresses_free(&rt.process)?;
    }
    crate::alloc::release_free_memory();
    let listeners = rt.process.listeners.clone();
    let admin_listen = rt.process.admin_listen;
    let keepalive_requests = rt.process.keepalive_requests;
    let h2_idle = rt.server.keepalive_timeout;
    let h2 = (
        rt.process.h2_max_concurrent_streams,
        rt.server.max_header_bytes,
    );
    let conf = pingora_conf(&rt, opts.daemon);
    crate::upstream::use_per_worker_pools(!conf.work_stealing);
    let state = State::new(rt);
    let control = Arc::new(Control::new(state.clone(), base, changes, load));

    let opt = Opt {
        upgrade: opts.upgrade,
        daemon: opts.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let mut gateway = Gateway::new(state.clone());
    // Registration e-mails: a bounded queue, one worker (idle while registration is off).
    let (outbox, inbox) = crate::register::mail::queue();
    gateway.registrar = Some(Arc::new(crate::register::Registrar::new(
        control.clone(),
        outbox,
    )));
    let mailer = crate::register::mail::Mailer {
        state: state.clone(),
        inbox: parking_lot::Mutex::new(Some(inbox)),
    };
    let edge = Edge {
        listeners: &listeners,
        state: &state,
        keepalive_requests,
        h2_idle,
        h2,
        conns: Arc::default(),
    };
    for proxy in edge.services(&server.configuration, gateway)? {
        server.add_service(proxy);
    }
    if let Some(addr) = admin_listen {
        let mut admin = pingora::services::listening::Service::new(
            "keygate admin".into(),
            HttpServer::new_app(AdminApp {
                state: state.clone(),
                control: control.clone(),
            }),
        );
        admin.add_tcp(&addr.to_string());
        server.add_service(admin);
    }
    if let Some(fleet) = &state.fleet {
        log::info!(
            "fleet mode: Redis {} ({} nodes, sync every {:?})",
            fleet.settings().redacted_url,
            fleet.settings().nodes,
            fleet.settings().sync_interval
        );
        let sync = crate::fleet::sync::FleetSync {
            fleet: fleet.clone(),
        };
        server.add_service(background_service("keygate fleet sync", sync));
    }
    // Changes stored by another node (a fleet's Redis) or another process (the state file
    // during `serve -u`).
    let catch_up = crate::control::CatchUp {
        control: control.clone(),
    };
    server.add_service(background_service("keygate site changes", catch_up));
    let reloader = Reloader {
        path: (!opts.demo).then_some(opts.config.clone()),
        state: state.clone(),
        control: control.clone(),
    };
    server.add_service(background_service("keygate maintenance", reloader));
    server.add_service(background_service("keygate mailer", mailer));
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals {
            state: state.clone(),
        }),
    });
    // Shut down (after the grace period, or handed over to a new binary): write out the
    // audit lines still buffered.
    state.audit.flush_at_exit();
    std::process::exit(0)
}

#[cfg(test)]
mod tests {
    use super::worker_addr;
    use std::net::{SocketAddr, ToSocketAddrs};

    #[test]
    fn each_worker_names_the_same_address_differently() {
        for plain in ["127.0.0.1:8080", "[::1]:443", "0.0.0.0:9"] {
            let addr: SocketAddr = plain.parse().unwrap();
            assert_eq!(worker_addr(addr, 0), plain);
            let names: Vec<String> = (0..4).map(|w| worker_addr(addr, w)).collect();
            for (w, name) in names.iter().enumerate() {
                // What Pingora binds: the name resolves to the address itself.
                let bound: Vec<SocketAddr> = name.to_socket_addrs().unwrap().collect();
                assert_eq!(bound, vec![addr], "worker {w}: {name}");
                assert_eq!(names.iter().filter(|n| *n == name).count(), 1, "{name}");
            }
        }
    }
}
