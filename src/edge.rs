//! Connection admission at the edge, before any HTTP parsing: the global and per-address
//! caps on open client connections, and the deadline for a whole HTTP/1 request header.
//!
//! Pingora bounds each *read* of a request header (`read_timeout`, keep-alive timeout), not
//! the header as a whole, so a client sending one byte a second holds a connection for as
//! long as it likes. [`EdgeApp`] wraps the proxy's `ServerApp`: every accepted stream is
//! counted (and refused when over a cap), then wrapped in a [`Guarded`] stream that fails
//! its reads once the header deadline passes. Pingora then closes the connection.
//! The caps and the deadline come from the running config, so they reload with it.

use crate::state::State;
use crate::telemetry::metrics::METRICS;
use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The proxy's `ServerApp` behind connection admission.
pub struct EdgeApp<A> {
    inner: Arc<A>,
    state: Arc<State>,
    table: Arc<ConnTable>,
}

impl<A> EdgeApp<A> {
    /// `table`: the connections counted against the caps, shared by every worker's
    /// service (the caps are the process's).
    pub fn new(inner: A, state: Arc<State>, table: Arc<ConnTable>) -> Self {
        EdgeApp {
            inner: Arc::new(inner),
            state,
            table,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for EdgeApp<A> {
    /// Called for a new connection, and again for each further request Pingora reads on
    /// a kept-alive one (the stream it handed back is ours already).
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let header_timeout = self.state.runtime.load().server.header_timeout;
        let stream: Stream = if stream.as_any().is::<Guarded>() {
            let Ok(mut g) = stream.into_any().downcast::<Guarded>() else {
                return None; // `is` said it is one
            };
            g.next_request(header_timeout);
            g
        } else {
            Box::new(self.admit(stream, header_timeout)?)
        };
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

impl<A> EdgeApp<A> {
    /// Count a new connection, or refuse it (`None`, the stream is dropped) when a cap is hit.
    fn admit(&self, stream: Stream, header_timeout: Duration) -> Option<Guarded> {
        let rt = self.state.runtime.load();
        let ip = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let per_ip = ip.and_then(|ip| per_client(ip, &rt.server.trusted_proxies));
        let slot = match self.table.acquire(
            per_ip,
            rt.server.max_connections,
            rt.server.max_connections_per_ip,
        ) {
            Ok(slot) => slot,
            Err(reason) => {
                METRICS
                    .connections_refused
                    .with_label_values(&[reason])
                    .inc();
                log::debug!("connection from {ip:?} refused: {reason} connection cap");
                return None;
            }
        };
        let h2 = matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
        Some(Guarded::new(stream, slot, header_timeout, h2))
    }
}

/// What a connection from `ip` is counted under: its client block (an IPv6 /64, as the
/// other per-client limits: one host holds a whole /64 and could take every connection
/// under its full addresses), or nothing for a trusted proxy.
fn per_client(ip: IpAddr, trusted_proxies: &[crate::limits::ip::Cidr]) -> Option<IpAddr> {
    match trusted_proxies.iter().any(|c| c.contains(&ip)) {
        true => None,
        false => Some(crate::limits::ip::client_block(&ip)),
    }
}

/// Open connections, in total and per client address.
#[derive(Default)]
pub struct ConnTable {
    inner: Mutex<TableInner>,
}

#[derive(Default)]
struct TableInner {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

impl ConnTable {
    /// Take a slot, or say which cap is full (`"global"` or `"per_ip"`).
    pub fn acquire(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        max_total: usize,
        max_per_ip: usize,
    ) -> Result<Slot, &'static str> {
        let mut t = self.inner.lock();
        if t.total >= max_total {
            return Err("global");
        }
        if let Some(ip) = ip {
            let n = t.per_ip.entry(ip).or_insert(0);
            if *n >= max_per_ip {
                return Err("per_ip");
            }
            *n += 1;
        }
        t.total += 1;
        METRICS.connections_open.set(t.total as i64);
        Ok(Slot {
            table: self.clone(),
            ip,
        })
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.inner.lock().total
    }
}

/// One counted connection; dropping it (the connection closed) frees the slot.
pub struct Slot {
    table: Arc<ConnTable>,
    ip: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = self.table.inner.lock();
        t.total = t.total.saturating_sub(1);
        if let Some(ip) = self.ip {
            if let Some(n) = t.per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    t.per_ip.remove(&ip);
                }
            }
        }
        METRICS.connections_open.set(t.total as i64);
    }
}

/// Where an HTTP/1 connection is in its current request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The header is complete, or HTTP/2 past its preface: no deadline.
    Off,
    /// HTTP/2 before the client's connection preface (the bytes of it read): Pingora's h2
    /// handshake has no timeout, so a client that negotiated h2 and then sent nothing
    /// held its connection for good. After it, `h2_idle_timeout` bounds an idle one.
    Preface(usize),
    /// Between requests: the deadline starts at the next byte.
    Idle,
    /// Reading a header; the state of the end-of-header matcher (see [`blank_line`]).
    Header(u8),
}

/// One step of matching the blank line that ends a header block: CRLF CRLF, or the
/// lenient LF LF / CRLF LF (the parser refuses those with a clear status; the deadline
/// must not cut them first). States: 0 none, 1 CR, 2 line end, 3 line end + CR, 4 done.
fn blank_line(state: u8, b: u8) -> u8 {
    match (state, b) {
        (2 | 3, b'\n') => 4,
        (_, b'\n') => 2,
        (2, b'\r') => 3,
        (_, b'\r') => 1,
        _ => 0,
    }
}

/// An accepted client stream, counted in the [`ConnTable`] and held to the header deadline.
pub struct Guarded {
    inner: Stream,
    _slot: Slot,
    phase: Phase,
    /// `None` on HTTP/2 once its preface is in (the h2 layer bounds its own frames).
    timeout: Option<Duration>,
    deadline: Pin<Box<Sleep>>,
}

impl std::fmt::Debug for Guarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("inner", &self.inner)
            .field("phase", &self.phase)
            .finish()
    }
}

impl Guarded {
    fn new(inner: Stream, slot: Slot, timeout: Duration, h2: bool) -> Guarded {
        // The first request's deadline runs from the accept: connecting and sending
        // nothing is held to it too. On HTTP/2, the preface is.
        let deadline = Box::pin(tokio::time::sleep_until(deadline_after(Some(timeout))));
        Guarded {
            inner,
            _slot: slot,
            phase: if h2 {
                Phase::Preface(0)
            } else {
                Phase::Header(0)
            },
            timeout: (!h2).then_some(timeout),
            deadline,
        }
    }

    /// Pingora is about to read the next request on this kept-alive connection; the
    /// keep-alive timeout covers the wait, our deadline starts at its first byte.
    fn next_request(&mut self, timeout: Duration) {
        if self.timeout.is_some() {
            self.timeout = Some(timeout);
            self.phase = Phase::Idle;
        }
    }

    /// Follow the header block through bytes just read.
    fn observe(&mut self, bytes: &[u8]) {
        if let Phase::Preface(n) = self.phase {
            let n = n + bytes.len();
            self.phase = match n >= H2_PREFACE_LEN {
                true => Phase::Off,
                false => Phase::Preface(n),
            };
            return;
        }
        if self.phase == Phase::Idle && !bytes.is_empty() {
            self.deadline.as_mut().reset(deadline_after(self.timeout));
            self.phase = Phase::Header(0);
        }
        let Phase::Header(mut state) = self.phase else {
            return;
        };
        for &b in bytes {
            state = blank_line(state, b);
            if state == 4 {
                self.phase = Phase::Off;
                return;
            }
        }
        self.phase = Phase::Header(state);
    }
}

/// `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n` (RFC 9113 §3.4).
const H2_PREFACE_LEN: usize = 24;

fn deadline_after(timeout: Option<Duration>) -> Instant {
    let now = Instant::now();
    // HTTP/2 never arms the deadline; a year stands in for "never".
    now + timeout.unwrap_or(Duration::from_secs(86_400 * 365))
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if matches!(this.phase, Phase::Header(_) | Phase::Preface(_))
            && this.deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request header deadline passed",
            )));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let n = buf.filled().len();
            if n > before {
                this.observe(&buf.filled()[before..n]);
            }
        }
        r
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Guarded {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for Guarded {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Guarded {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

#[async_trait]
impl Peek for Guarded {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

impl GetTimingDigest for Guarded {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Guarded {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Guarded {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_and_slots_free_on_drop() {
        let t = Arc::new(ConnTable::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = t.acquire(Some(a), 3, 2).unwrap();
        let _s2 = t.acquire(Some(a), 3, 2).unwrap();
        assert_eq!(t.acquire(Some(a), 3, 2).err(), Some("per_ip"));
        let _s3 = t.acquire(Some(b), 3, 2).unwrap();
        assert_eq!(t.acquire(None, 3, 2).err(), Some("global"));
        drop(s1);
        assert_eq!(t.open(), 2);
        assert!(t.acquire(Some(a), 3, 2).is_ok());
        assert_eq!(t.inner.lock().per_ip.len(), 2);
    }

    #[test]
    fn a_v6_host_is_counted_by_its_64_and_a_trusted_proxy_not_at_all() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(per_client(a, &[]), per_client(b, &[]));
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_ne!(per_client(a, &[]), per_client(other, &[]));
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(per_client(v4, &[]), Some(v4));
        let proxy = crate::limits::ip::Cidr::parse("10.0.0.0/8").unwrap();
        assert_eq!(per_client(v4, &[proxy]), None);
    }

    fn ends(text: &[u8]) -> Option<usize> {
        let mut st = 0;
        text.iter().position(|&b| {
            st = blank_line(st, b);
            st == 4
        })
    }

    #[test]
    fn header_end_is_found_across_line_ending_styles() {
        assert_eq!(ends(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody"), Some(26));
        assert_eq!(ends(b"GET / HTTP/1.1\nHost: a\n\n"), Some(23));
        assert_eq!(ends(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(ends(b"a\r\r\n\r\n"), Some(5));
        assert_eq!(ends(b"a\r\nb\r\n c\r\n"), None);
    }
}
