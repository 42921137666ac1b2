//! The audit log: one JSON object per request (SPEC §6), written by a background
//! thread so a slow disk or pipe never blocks a request. When the writer falls
//! behind, lines are dropped and counted rather than queued without bound.

use crate::gateway::ctx::Ctx;
use parking_lot::Mutex;
use pingora::proxy::Session;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::sync::OnceLock;

/// Lines queued for the writer before new ones are dropped.
pub const QUEUE_BOUND: usize = 16_384;

/// Where audit lines go.
pub struct AuditLog {
    /// Where lines go (`None`: stdout); read by the writer when it (re)opens.
    path: Arc<Mutex<Option<String>>>,
    /// Set on SIGHUP: the writer reopens `path` before its next line (logrotate).
    reopen: Arc<AtomicBool>,
    tx: OnceLock<SyncSender<String>>,
}

fn open(path: &Option<String>) -> Box<dyn Write + Send> {
    match path {
        Some(p) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            Ok(f) => Box::new(std::io::BufWriter::new(f)),
            Err(e) => {
                log::error!("cannot open audit log {p}: {e}; writing to stdout");
                Box::new(std::io::stdout())
            }
        },
        None => Box::new(std::io::stdout()),
    }
}

impl AuditLog {
    /// `path: None` writes to stdout.
    pub fn new(path: Option<String>) -> Self {
        AuditLog {
            path: Arc::new(Mutex::new(path)),
            reopen: Arc::new(AtomicBool::new(false)),
            tx: OnceLock::new(),
        }
    }

    /// Reopen the log (after logrotate moved it), possibly at a new path.
    pub fn reopen(&self, path: Option<String>) {
        *self.path.lock() = path;
        self.reopen.store(true, Ordering::Release);
    }

    // The writer thread starts on first use, after Pingora may have daemonised.
    fn sender(&self) -> &SyncSender<String> {
        self.tx.get_or_init(|| {
            let (tx, rx) = sync_channel::<String>(QUEUE_BOUND);
            let path = self.path.clone();
            let reopen = self.reopen.clone();
            std::thread::Builder::new()
                .name("keygate-audit".into())
                .spawn(move || {
                    let mut out = open(&path.lock().clone());
                    while let Ok(line) = rx.recv() {
                        if reopen.swap(false, Ordering::AcqRel) {
                            let _ = out.flush();
                            out = open(&path.lock().clone());
                        }
                        let _ = out.write_all(line.as_bytes());
                        let _ = out.write_all(b"\n");
                        // Flush when the queue is drained, so lines show up promptly.
                        for l in rx.try_iter().take(1024) {
                            let _ = out.write_all(l.as_bytes());
                            let _ = out.write_all(b"\n");
                        }
                        let _ = out.flush();
                    }
                })
                .ok();
            tx
        })
    }

    fn push(&self, line: String) {
        match self.sender().try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                // Counted in `keygate_audit_dropped_total`.
                super::metrics::METRICS.audit_dropped.inc();
            }
        }
    }

    /// Record one finished request. Never a secret, a signature or a body.
    pub fn record(&self, session: &Session, ctx: &Ctx) {
        let client = ctx.client.as_ref();
        let line = Line {
            ts: humantime::format_rfc3339_millis(std::time::SystemTime::now()),
            request_id: &ctx.request_id,
            site: ctx.site().map(|s| s.id.0.as_str()),
            key_id: client.map(|c| c.key_id.0.as_str()),
            route: ctx.route().map(|r| r.prefix.as_str()),
            upstream: ctx.route().map(|r| r.upstream.name.as_str()),
            model: ctx.model.as_deref(),
            status: ctx.status,
            error_code: ctx.error.as_ref().map(|e| e.code.as_str()),
            duration_ms: ctx.started.elapsed().as_secs_f64() * 1000.0,
            upstream_ms: ctx
                .upstream_started
                .map(|t| t.elapsed().as_secs_f64() * 1000.0),
            tokens_in: ctx.usage.map(|u| u.input),
            tokens_out: ctx.usage.map(|u| u.output),
            tokens_estimated: ctx.usage.map(|u| u.estimated),
            client_ip: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
            auth: client.map(|c| c.mode.as_str()),
            credential: ctx.credential_id.as_deref(),
            pii: ctx.pii_counts.as_ref(),
        };
        // A struct of borrowed fields serialises straight to text (no JSON tree built).
        if let Ok(text) = serde_json::to_string(&line) {
            self.push(text);
        }
    }
}

/// One audit line (SPEC §6 fields, then keygate's additions).
#[derive(serde::Serialize)]
struct Line<'a> {
    #[serde(serialize_with = "display")]
    ts: humantime::Rfc3339Timestamp,
    request_id: &'a str,
    site: Option<&'a str>,
    key_id: Option<&'a str>,
    route: Option<&'a str>,
    upstream: Option<&'a str>,
    model: Option<&'a str>,
    status: u16,
    error_code: Option<&'static str>,
    duration_ms: f64,
    upstream_ms: Option<f64>,
    tokens_in: Option<u64>,
    tokens_out: Option<u64>,
    tokens_estimated: Option<bool>,
    client_ip: Option<std::net::IpAddr>,
    auth: Option<&'static str>,
    credential: Option<&'a str>,
    /// Personal data found per kind (replaced, or refused in `block` mode); no values.
    pii: Option<&'a crate::pii::Counts>,
}

fn display<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}
