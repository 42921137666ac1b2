//! Background maintenance: SIGHUP reloads the config (parse, validate, decrypt,
//! build, then swap atomically; a bad file changes nothing), and expired nonces are
//! swept once a second so the store's capacity goes to live entries.

use crate::config::{self, LoadOptions};
use crate::state::State;
use crate::telemetry::metrics::METRICS;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The maintenance service.
pub struct Reloader {
    /// Config file to re-read on SIGHUP; `None` in demo mode (SIGHUP is then ignored).
    pub path: Option<PathBuf>,
    pub state: Arc<State>,
}

impl Reloader {
    /// Re-read and swap. Returns the error text on failure (old config stays).
    pub fn reload(&self) -> Result<(), String> {
        let Some(path) = &self.path else {
            return Err("demo mode has no config file to reload".into());
        };
        let new = config::load_file(path, LoadOptions::default()).map_err(|e| e.to_string())?;
        let old = self.state.runtime.load();
        if new.process.listeners.iter().map(|l| l.addr).ne(old
            .process
            .listeners
            .iter()
            .map(|l| l.addr))
            || new.process.threads != old.process.threads
            || new.process.work_stealing != old.process.work_stealing
        {
            log::warn!("config reload: listener addresses, thread counts and work stealing apply only after a restart or binary upgrade (serve -u)");
        }
        for w in &new.warnings {
            log::warn!("{w}");
        }
        self.state.install(new);
        crate::alloc::release_free_memory();
        Ok(())
    }
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot install the SIGHUP handler: {e}");
                return;
            }
        };
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    match self.reload() {
                        Ok(()) => {
                            METRICS.config_reloads.with_label_values(&["ok"]).inc();
                            log::info!("config reloaded (generation {})", self.state.runtime.load().generation);
                        }
                        Err(e) => {
                            METRICS.config_reloads.with_label_values(&["error"]).inc();
                            log::error!("config reload failed, keeping the running config:\n{e}");
                        }
                    }
                    // logrotate sends SIGHUP too: reopen the audit log whatever the config did.
                    let path = self.state.runtime.load().process.audit_path.clone();
                    self.state.audit.reopen(path);
                }
                _ = tick.tick() => {
                    self.state.nonces.sweep(crate::clock::now_s());
                    // Circuits whose open_s passed show half-open now, not at the next request.
                    let now = std::time::Instant::now();
                    for up in &self.state.live.load().upstreams {
                        if let Some(code) = up.circuit.tick(now) {
                            up.series().circuit_state.set(code);
                        }
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
