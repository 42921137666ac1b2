//! The audit log: one JSON object per request (SPEC §6). Requests append their line to
//! a bounded buffer in memory; a background thread writes the buffer out every
//! [`FLUSH_INTERVAL`] in one `write`, so a request neither waits on the disk nor wakes
//! another thread (a wake-up per line cost a context switch per request). When the
//! writer falls behind and the buffer is full, lines are dropped and counted rather
//! than queued without bound. Shutdown writes what is buffered ([`AuditLog::flush`]).

use parking_lot::Mutex;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

/// Bytes of lines buffered for the writer before new ones are dropped.
pub const BUFFER_BOUND: usize = 8 << 20;

/// How often the writer writes the buffered lines out.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);

/// The smallest buffer the writer prepares for the next batch.
const SPARE_MIN: usize = 64 << 10;

/// Capacity kept by a thread's line buffer between lines.
const LINE_KEEP: usize = 16 << 10;

thread_local! {
    /// Each thread serializes its line here, outside the lock the workers share, which
    /// is then held only to copy the line in.
    static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

struct Inner {
    /// Lines not yet written, each ending in a newline.
    pending: Mutex<Vec<u8>>,
    /// Where lines go (`None`: stdout); read when the output is (re)opened.
    path: Mutex<Option<String>>,
    /// Set on SIGHUP: the output is reopened before the next write (logrotate).
    reopen: AtomicBool,
    /// The open output; held while writing, so writes never interleave.
    out: Mutex<Writer>,
}

/// The writer's side: the output and the buffer last written out, emptied, which the
/// next batch's lines go into.
#[derive(Default)]
struct Writer {
    output: Output,
    spare: Vec<u8>,
}

/// Where audit lines go.
pub struct AuditLog {
    inner: Arc<Inner>,
    writer: Once,
}

fn open(path: &Option<String>) -> Box<dyn Write + Send> {
    match path {
        // Readable by the log group (0640): lines name sites, keys and client addresses.
        Some(p) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(p)
        {
            Ok(f) => Box::new(f),
            Err(e) => {
                log::error!("cannot open audit log {p}: {e}; writing to stdout");
                Box::new(std::io::stdout())
            }
        },
        None => Box::new(std::io::stdout()),
    }
}

type Output = Option<Box<dyn Write + Send>>;

/// A written-out buffer made ready for the next batch: room for twice the last one
/// (within [`BUFFER_BOUND`]), its pages touched here, on the writer's thread. A worker
/// copies its line into the buffer under the lock the workers share; growing it there
/// meant page faults under the lock (a fresh page is zeroed on first touch), which
/// stopped the other worker for tens of milliseconds when the faulting one was preempted.
fn prepare(mut batch: Vec<u8>) -> Vec<u8> {
    let want = (batch.len() * 2).clamp(SPARE_MIN, BUFFER_BOUND);
    let before = (batch.as_ptr(), batch.capacity());
    batch.clear();
    if batch.capacity() > want {
        batch.shrink_to(want);
    } else if batch.capacity() < want {
        batch.reserve_exact(want);
    }
    if (batch.as_ptr(), batch.capacity()) != before {
        batch.resize(batch.capacity(), 0);
        batch.clear();
    }
    batch
}

impl Inner {
    /// Write out what is buffered (one `write` for the whole batch). The output is locked
    /// before the batch is taken, so a batch taken is written before anyone else writes.
    fn drain(&self) {
        let mut out = self.out.lock();
        let mut batch = std::mem::take(&mut out.spare);
        std::mem::swap(&mut *self.pending.lock(), &mut batch);
        self.write(&mut out.output, &batch);
        out.spare = prepare(batch);
    }

    fn write(&self, out: &mut Output, batch: &[u8]) {
        if out.is_none() || self.reopen.swap(false, Ordering::AcqRel) {
            *out = Some(open(&self.path.lock().clone()));
        }
        if let Some(out) = out.as_mut() {
            if !batch.is_empty() {
                let _ = out.write_all(batch);
                let _ = out.flush();
            }
        }
    }
}

impl AuditLog {
    /// `path: None` writes to stdout.
    pub fn new(path: Option<String>) -> Self {
        AuditLog {
            inner: Arc::new(Inner {
                pending: Mutex::new(Vec::new()),
                path: Mutex::new(path),
                reopen: AtomicBool::new(false),
                out: Mutex::new(Writer::default()),
            }),
            writer: Once::new(),
        }
    }

    /// Reopen the log (after logrotate moved it), possibly at a new path.
    pub fn reopen(&self, path: Option<String>) {
        *self.inner.path.lock() = path;
        self.inner.reopen.store(true, Ordering::Release);
    }

    /// At exit: write out every buffered line, then keep the log locked until the process
    /// ends, so that a request still finishing waits rather than appending a line that
    /// would never be written. Call it only right before the process exits.
    pub fn flush_at_exit(&self) {
        let mut out = self.inner.out.lock();
        let pending = self.inner.pending.lock();
        self.inner.write(&mut out.output, &pending);
        std::mem::forget(pending);
        std::mem::forget(out);
    }

    // The writer thread starts on first use, after Pingora may have daemonised.
    fn start_writer(&self) {
        self.writer.call_once(|| {
            let inner = self.inner.clone();
            let spawned = std::thread::Builder::new()
                .name("keygate-audit".into())
                .spawn(move || loop {
                    std::thread::sleep(FLUSH_INTERVAL);
                    inner.drain();
                });
            if let Err(e) = spawned {
                log::error!("cannot start the audit log writer: {e}");
            }
        });
    }

    /// Append one line (serialised into this thread's buffer first, so the shared lock is
    /// held only for the copy), or count it dropped.
    fn push(&self, line: &impl serde::Serialize) {
        self.push_with(|buf| serde_json::to_writer(buf, line).is_ok());
    }

    /// Append the line `write` puts in a buffer (`false`: nothing to append).
    fn push_with(&self, write: impl FnOnce(&mut Vec<u8>) -> bool) {
        self.start_writer();
        LINE.with_borrow_mut(|buf| {
            buf.clear();
            if write(&mut *buf) {
                buf.push(b'\n');
                let mut pending = self.inner.pending.lock();
                if pending.len() >= BUFFER_BOUND {
                    drop(pending);
                    // Counted in `keygate_audit_dropped_total`.
                    super::metrics::METRICS.audit_dropped.inc();
                } else {
                    pending.extend_from_slice(buf);
                }
            }
            buf.shrink_to(LINE_KEEP);
        });
    }

    /// Record one finished request (the gateway builds the line: never a secret, a
    /// signature or a body).
    pub fn record(&self, line: &Line) {
        self.push_with(|buf| {
            line.write(buf);
            true
        });
    }
}

impl AuditLog {
    /// Record an event line (an admin call, an anomaly): built by its owner from a
    /// struct of borrowed fields; never a secret or a body.
    pub fn record_event(&self, line: &impl serde::Serialize) {
        self.push(line);
    }
}

/// The audit line of an admin API call.
#[derive(serde::Serialize)]
pub struct AdminLine<'a> {
    #[serde(serialize_with = "display")]
    pub ts: humantime::Rfc3339Timestamp,
    pub event: &'static str,
    pub request_id: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    /// The admin key that signed the call (absent when it was not verified).
    pub admin_key: Option<&'a str>,
    /// What the call did (`create_site`, `disable_site`, `remove_key`, …).
    pub action: Option<&'static str>,
    pub site: Option<&'a str>,
    pub key_id: Option<&'a str>,
    pub status: u16,
    /// The version of the site changes in force after the call.
    pub version: u64,
    pub client_ip: Option<std::net::IpAddr>,
    pub duration_ms: f64,
}

/// The audit line of a usage anomaly's start (`event: "anomaly"`).
#[derive(serde::Serialize)]
pub struct AnomalyLine<'a> {
    #[serde(serialize_with = "display")]
    pub ts: humantime::Rfc3339Timestamp,
    pub event: &'static str,
    pub site: &'a str,
    /// `requests` or `tokens`.
    pub kind: &'static str,
    /// This window's count when it passed the threshold, the site's baseline per window.
    pub count: f64,
    pub baseline: f64,
    pub factor: f64,
    pub window_s: u64,
    /// `alert` or `throttle`.
    pub action: &'static str,
    pub throttle_s: Option<u64>,
}

/// Longest `User-Agent` kept in an audit line (bytes, cut at a character boundary).
pub const USER_AGENT_MAX: usize = 256;

/// The longest `model` an audit line or a span carries: the client names it, up to a body
/// long, and a route without `models:` passes any name on (the provider refuses it).
pub const MODEL_MAX: usize = 256;
/// Longest path kept in an audit line: a flood of long paths must not fill the buffer
/// and push out the lines that matter.
pub const PATH_MAX: usize = 512;

/// `text` cut to at most `max` bytes, at a character boundary.
pub fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// One audit line (SPEC §6 fields, then keygate's additions), written by [`Line::write`]
/// (serde's output, which tests hold it to, is the reference).
#[cfg_attr(test, derive(serde::Serialize))]
pub struct Line<'a> {
    #[cfg_attr(test, serde(serialize_with = "display"))]
    pub ts: humantime::Rfc3339Timestamp,
    pub request_id: &'a str,
    pub method: &'a str,
    /// The request path without its query (a query may carry a key), at most
    /// [`PATH_MAX`] bytes.
    pub path: &'a str,
    /// The client's `User-Agent`, at most [`USER_AGENT_MAX`] bytes.
    pub user_agent: Option<&'a str>,
    pub site: Option<&'a str>,
    pub key_id: Option<&'a str>,
    pub route: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub model: Option<&'a str>,
    pub status: u16,
    pub error_code: Option<&'static str>,
    pub duration_ms: f64,
    pub upstream_ms: Option<f64>,
    /// From choosing the upstream until keygate has its response header (like nginx's
    /// `$upstream_header_time`): connecting or taking a pooled connection, sending the
    /// request, the provider's time to first byte. For a JSON answer the rest of
    /// `duration_ms` is keygate's side: its checks before and after, and writing the
    /// response to the client.
    pub upstream_header_ms: Option<f64>,
    pub tokens_in: Option<u64>,
    pub tokens_out: Option<u64>,
    pub tokens_estimated: Option<bool>,
    /// Of `tokens_in`, read from the provider's cache.
    pub tokens_cached: Option<u64>,
    /// Of `tokens_in`, written to the provider's cache (Anthropic).
    pub tokens_cache_write: Option<u64>,
    /// Of `tokens_out`, reasoning tokens.
    pub tokens_reasoning: Option<u64>,
    /// What the answer cost, from `prices:` (absent when the model has no price).
    pub cost_usd: Option<f64>,
    pub client_ip: Option<std::net::IpAddr>,
    pub auth: Option<&'static str>,
    pub credential: Option<&'a str>,
    /// The answering provider's own id of the request (`x-request-id`, Anthropic's
    /// `request-id`), which its support asks for; the client's `X-Request-Id` is keygate's.
    pub upstream_request_id: Option<&'a str>,
    /// Personal data found per kind (replaced, or refused in `block` mode); no values.
    pub pii: Option<&'a crate::pii::Counts>,
    /// Every upstream attempt, when there was more than one (SPEC §8.2): the ones given
    /// up with why, then the last (`answered`, or `failed`).
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    pub attempts: Option<Vec<crate::upstream::failover::Attempt>>,
}

impl Line<'_> {
    /// The line as JSON, member by member in the struct's order: byte for byte what
    /// serde_json makes of the struct (test `the_written_line_is_what_serde_writes`).
    /// Why not serde: the derived serializer sends each member name and every plain
    /// string through serde_json's escaping loop, a byte at a time, which was most of
    /// the line's cost; here names are written as they are and a string is copied
    /// whole when nothing in it needs escaping (else serde_json writes it).
    pub fn write(&self, out: &mut Vec<u8>) {
        // `,"name":` as one literal per member (the first opens the object).
        macro_rules! m {
            ($name:literal) => {
                concat!(",\"", $name, "\":")
            };
        }
        out.reserve(640);
        let mut o = Members { out };
        o.key("{\"ts\":");
        o.quoted(&self.ts);
        o.str(m!("request_id"), Some(self.request_id));
        o.str(m!("method"), Some(self.method));
        o.str(m!("path"), Some(self.path));
        o.str(m!("user_agent"), self.user_agent);
        o.str(m!("site"), self.site);
        o.str(m!("key_id"), self.key_id);
        o.str(m!("route"), self.route);
        o.str(m!("upstream"), self.upstream);
        o.str(m!("model"), self.model);
        o.value(m!("status"), &self.status);
        o.str(m!("error_code"), self.error_code);
        o.value(m!("duration_ms"), &self.duration_ms);
        o.value(m!("upstream_ms"), &self.upstream_ms);
        o.value(m!("upstream_header_ms"), &self.upstream_header_ms);
        o.value(m!("tokens_in"), &self.tokens_in);
        o.value(m!("tokens_out"), &self.tokens_out);
        o.value(m!("tokens_estimated"), &self.tokens_estimated);
        o.value(m!("tokens_cached"), &self.tokens_cached);
        o.value(m!("tokens_cache_write"), &self.tokens_cache_write);
        o.value(m!("tokens_reasoning"), &self.tokens_reasoning);
        o.value(m!("cost_usd"), &self.cost_usd);
        o.key(m!("client_ip"));
        match &self.client_ip {
            Some(ip) => o.quoted(ip),
            None => o.out.extend_from_slice(b"null"),
        }
        o.str(m!("auth"), self.auth);
        o.str(m!("credential"), self.credential);
        o.str(m!("upstream_request_id"), self.upstream_request_id);
        o.value(m!("pii"), &self.pii);
        if let Some(attempts) = &self.attempts {
            o.value(m!("attempts"), attempts);
        }
        o.out.push(b'}');
    }
}

/// The members of a JSON object being written.
struct Members<'o> {
    out: &'o mut Vec<u8>,
}

impl Members<'_> {
    /// A member's start: `,"name":` (names here are plain ASCII: nothing to escape).
    fn key(&mut self, start: &'static str) {
        self.out.extend_from_slice(start.as_bytes());
    }

    /// A string member, or `null`.
    fn str(&mut self, start: &'static str, v: Option<&str>) {
        self.key(start);
        match v {
            Some(s) if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') => {
                self.out.push(b'"');
                self.out.extend_from_slice(s.as_bytes());
                self.out.push(b'"');
            }
            Some(s) => self.serde(&s),
            None => self.out.extend_from_slice(b"null"),
        }
    }

    /// A value whose text needs no escaping (a timestamp, an address), quoted.
    fn quoted(&mut self, v: &impl std::fmt::Display) {
        use std::io::Write;
        self.out.push(b'"');
        let _ = write!(self.out, "{v}");
        self.out.push(b'"');
    }

    /// Any other member, as serde_json writes its value.
    fn value(&mut self, start: &'static str, v: &impl serde::Serialize) {
        self.key(start);
        self.serde(v);
    }

    fn serde(&mut self, v: &impl serde::Serialize) {
        // Writing to a Vec fails only for a value that cannot be JSON (none here).
        if serde_json::to_writer(&mut *self.out, v).is_err() {
            self.out.extend_from_slice(b"null");
        }
    }
}

fn display<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn user_agents_are_cut_at_a_character_boundary() {
        assert_eq!(truncate("curl/8.0", USER_AGENT_MAX), "curl/8.0");
        let long = "é".repeat(200);
        let cut = truncate(&long, USER_AGENT_MAX);
        assert!(cut.len() <= USER_AGENT_MAX && cut.len() >= USER_AGENT_MAX - 1);
        assert!(long.starts_with(cut));
    }

    #[test]
    fn a_written_batch_leaves_its_buffer_to_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::new(Some(path.display().to_string()));
        // No background writer: the test writes the batches out itself.
        log.writer.call_once(|| {});
        let batch = |from: usize| {
            for n in from..from + 100 {
                log.push(&serde_json::json!({ "n": n }));
            }
            log.inner.drain();
        };
        batch(0);
        batch(100);
        // The next batch goes into the buffer of the one before, already grown: it does
        // not start from nothing and grow again every interval.
        let pending = log.inner.pending.lock();
        assert!(pending.is_empty());
        assert!(pending.capacity() >= 100 * "{\"n\":0}\n".len());
        drop(pending);
        let text = std::fs::read_to_string(&path).unwrap();
        let ns: Vec<u64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["n"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(ns, (0..200).collect::<Vec<u64>>());
    }

    #[test]
    fn the_next_batch_gets_room_for_twice_the_last_within_the_bound() {
        let small = prepare(vec![b'x'; 10]);
        assert!(small.is_empty() && small.capacity() >= SPARE_MIN);
        let busy = prepare(vec![b'x'; 1 << 20]);
        assert!(busy.is_empty() && busy.capacity() >= 2 << 20);
        // A quiet interval after a busy one gives the room back.
        let quiet = prepare(Vec::with_capacity(4 << 20));
        assert!(quiet.capacity() >= SPARE_MIN && quiet.capacity() < 4 << 20);
        let full = prepare(vec![b'x'; BUFFER_BOUND]);
        assert!(full.capacity() >= BUFFER_BOUND && full.capacity() < 2 * BUFFER_BOUND);
    }

    #[test]
    fn lines_buffered_at_exit_are_written_and_later_ones_wait() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = Arc::new(AuditLog::new(Some(path.display().to_string())));
        for n in 0..3 {
            log.push(&serde_json::json!({ "n": n }));
        }
        log.flush_at_exit();
        let lines = |p: &std::path::Path| std::fs::read_to_string(p).unwrap().lines().count();
        assert_eq!(lines(&path), 3);
        // A request finishing after the last write waits for the exit; its line is not
        // appended to a buffer nobody writes out any more.
        let (tx, rx) = std::sync::mpsc::channel();
        let late = log.clone();
        std::thread::spawn(move || {
            late.push(&serde_json::json!({ "n": 3 }));
            let _ = tx.send(());
        });
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        assert_eq!(lines(&path), 3);
    }

    proptest::proptest! {
        /// The hand-written line is byte for byte what serde_json writes for the struct,
        /// whatever its strings hold (quotes, controls, non-ASCII) and whichever members
        /// are absent.
        #[test]
        fn the_written_line_is_what_serde_writes(
            text in proptest::collection::vec("(\\PC|[\"\\\\\u{0}-\u{1f}\u{7f}é]){0,12}", 10),
            some in proptest::collection::vec(proptest::bool::ANY, 12),
            n in 0u64..u64::MAX,
            f in -1e12f64..1e12,
        ) {
            let counts = crate::pii::Counts(vec![(std::sync::Arc::from(text[9].as_str()), n)]);
            let pick = |i: usize, v: &'static str| some[i].then_some(v);
            let t = |i: usize| some[i].then_some(text[i].as_str());
            let line = Line {
                ts: humantime::format_rfc3339_millis(std::time::SystemTime::now()),
                request_id: &text[0],
                method: &text[1],
                path: &text[2],
                user_agent: t(3),
                site: t(4),
                key_id: t(5),
                route: t(6),
                upstream: t(7),
                model: t(8),
                status: n as u16,
                error_code: pick(0, "upstream_error"),
                duration_ms: f,
                upstream_ms: some[1].then_some(f / 3.0),
                upstream_header_ms: some[2].then_some(0.0),
                tokens_in: some[3].then_some(n),
                tokens_out: some[4].then_some(n / 7),
                tokens_estimated: some[5].then_some(some[6]),
                tokens_cached: some[6].then_some(0),
                tokens_cache_write: some[7].then_some(1),
                tokens_reasoning: some[8].then_some(n),
                cost_usd: some[9].then_some(f * 1e-9),
                client_ip: some[10].then(|| std::net::IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, n as u16])),
                auth: pick(11, "bearer"),
                credential: t(9),
                upstream_request_id: t(2),
                pii: some[0].then_some(&counts),
                attempts: some[1].then(|| vec![crate::upstream::failover::Attempt {
                    upstream: text[9].clone(),
                    outcome: "answered",
                }]),
            };
            let mut written = Vec::new();
            line.write(&mut written);
            proptest::prop_assert_eq!(
                String::from_utf8(written).unwrap(),
                serde_json::to_string(&line).unwrap()
            );
        }
    }
}
