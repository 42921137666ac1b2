//! Background maintenance: SIGHUP reloads the config (parse, validate, decrypt,
//! build, then swap atomically; a bad file changes nothing), and expired nonces are
//! swept once a second so the store's capacity goes to live entries.

use crate::state::State;
use crate::telemetry::metrics::METRICS;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The maintenance service.
pub struct Reloader {
    /// Config file to re-read on SIGHUP; `None` in demo mode (SIGHUP is then ignored).
    pub path: Option<PathBuf>,
    pub state: Arc<State>,
    /// Builds every config: the YAML with the admin API's changes.
    pub control: Arc<crate::control::Control>,
}

impl Reloader {
    /// Re-read and swap (the admin API's changes stay applied). Returns the error text
    /// on failure (the running config stays).
    pub fn reload(&self) -> Result<(), String> {
        let Some(path) = &self.path else {
            return Err("demo mode has no config file to reload".into());
        };
        let old = self.state.runtime.load_full();
        self.control.reload(path)?;
        let new = self.state.runtime.load();
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
        if new.otlp != old.otlp {
            log::warn!("config reload: telemetry.otlp applies only after a restart or binary upgrade (serve -u)");
        }
        for w in &new.warnings {
            log::warn!("{w}");
        }
        crate::alloc::release_free_memory();
        Ok(())
    }

    /// What SIGHUP does: reload, then reopen the audit log.
    fn hup(&self) {
        match self.reload() {
            Ok(()) => {
                METRICS.config_reloads.with_label_values(&["ok"]).inc();
                log::info!(
                    "config reloaded (generation {})",
                    self.state.runtime.load().generation
                );
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
}

/// A SIGHUP that arrived before the maintenance service listens for signals (keygate
/// may already be loading its config, or serving: the services start in parallel).
/// SIGHUP's default action ends the process, so [`catch_early_hup`] records it here from
/// the start and the service serves it as a reload once it runs.
static EARLY_HUP: AtomicBool = AtomicBool::new(false);

extern "C" fn note_early_hup(_: libc::c_int) {
    EARLY_HUP.store(true, Ordering::Relaxed);
}

/// Catch SIGHUP from now on (call first thing at start; no thread is created, so it
/// may run before Pingora daemonises).
pub fn catch_early_hup() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe; the
    // sigaction struct is fully initialised (zeroed, then its mask emptied).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = note_early_hup as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        sa.sa_flags = libc::SA_RESTART;
        if libc::sigaction(libc::SIGHUP, &sa, std::ptr::null_mut()) != 0 {
            log::warn!("cannot catch SIGHUP before the maintenance service runs");
        }
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
        if EARLY_HUP.swap(false, Ordering::Relaxed) {
            self.hup();
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = hup.recv() => self.hup(),
                _ = tick.tick() => {
                    self.state.nonces.sweep(crate::clock::now_s());
                    self.state.admin_nonces.sweep(crate::clock::now_s());
                    METRICS.nonce_store_entries.set(self.state.nonces.len() as i64);
                    METRICS.nonce_store_capacity.set(self.state.nonces.capacity() as i64);
                    // Circuits whose open_s passed show half-open now, not at the next request.
                    let now = std::time::Instant::now();
                    for up in &self.state.live.load().upstreams {
                        if let Some(code) = up.circuit.tick(now) {
                            up.series().circuit_state.set(code);
                        }
                    }
                }
                _ = shutdown.changed() => {
                    let n = self.state.realtime.shut_down();
                    if n > 0 {
                        log::info!("shutting down: closing {n} Realtime session(s) with going away");
                    }
                    return;
                }
            }
        }
    }
}
