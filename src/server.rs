//! `keygate serve`: build the Pingora server from a validated runtime and run it.

use crate::config::{self, LoadOptions, Runtime};
use crate::gateway::Gateway;
use crate::reload::Reloader;
use crate::state::State;
use crate::telemetry::admin::AdminApp;
use crate::tls::ReloadableCert;
use pingora::apps::http_app::HttpServer;
use pingora::listeners::tls::TlsSettings;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;
use std::path::PathBuf;

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
        pid_file: p.pid_file.clone(),
        upgrade_sock: p.upgrade_sock.clone(),
        grace_period_seconds: Some(p.grace_period_s),
        graceful_shutdown_timeout_seconds: Some(p.graceful_shutdown_timeout_s),
        upstream_keepalive_pool_size: p.upstream_keepalive_pool_size,
        ..ServerConf::default()
    }
}

/// Load the config (or the demo), start everything, never return on success.
pub fn serve(opts: ServeOptions) -> Result<(), String> {
    let rt = if opts.demo {
        if opts.daemon {
            return Err("--demo runs in the foreground; drop -d".into());
        }
        let port = crate::demo::start_mock()
            .map_err(|e| format!("cannot start the demo mock provider: {e}"))?;
        let rt = crate::demo::runtime(port).map_err(|e| e.to_string())?;
        let exe = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "keygate".into());
        println!("{}", crate::demo::banner(&exe));
        rt
    } else {
        config::load_file(&opts.config, LoadOptions::default())
            .map_err(|e| format!("{}:\n{e}", opts.config.display()))?
    };
    for w in &rt.warnings {
        log::warn!("{w}");
    }
    let listeners = rt.process.listeners.clone();
    let admin_listen = rt.process.admin_listen;
    let keepalive_requests = rt.process.keepalive_requests;
    let conf = pingora_conf(&rt, opts.daemon);
    let state = State::new(rt);

    let opt = Opt {
        upgrade: opts.upgrade,
        daemon: opts.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let gateway = Gateway::new(state.clone());
    let mut proxy =
        pingora::proxy::http_proxy_service_with_name(&server.configuration, gateway, "keygate");
    if let Some(n) = keepalive_requests {
        let mut opts = pingora::apps::HttpServerOptions::default();
        opts.keepalive_request_limit = Some(n);
        if let Some(app) = proxy.app_logic_mut() {
            app.server_options = Some(opts);
        }
    }
    for l in &listeners {
        let addr = l.addr.to_string();
        match &l.tls {
            None => proxy.add_tcp(&addr),
            Some(_) => {
                // The certificate is picked per handshake from the running config.
                let callbacks = ReloadableCert::callbacks(l.addr, state.clone());
                let mut tls = TlsSettings::with_callbacks(callbacks)
                    .map_err(|e| format!("listener {addr}: {e}"))?;
                tls.enable_h2();
                proxy.add_tls_with_settings(&addr, None, tls);
            }
        }
    }
    server.add_service(proxy);
    if let Some(addr) = admin_listen {
        let mut admin = pingora::services::listening::Service::new(
            "keygate admin".into(),
            HttpServer::new_app(AdminApp {
                state: state.clone(),
            }),
        );
        admin.add_tcp(&addr.to_string());
        server.add_service(admin);
    }
    if let Some(fleet) = &state.fleet {
        log::info!(
            "fleet mode: Redis {} ({} nodes, sync every {:?})",
            fleet.settings.redacted_url,
            fleet.settings.nodes,
            fleet.settings.sync_interval
        );
        let sync = crate::fleet::sync::FleetSync {
            fleet: fleet.clone(),
        };
        server.add_service(background_service("keygate fleet sync", sync));
    }
    let reloader = Reloader {
        path: (!opts.demo).then_some(opts.config.clone()),
        state,
    };
    server.add_service(background_service("keygate maintenance", reloader));
    server.run_forever()
}
