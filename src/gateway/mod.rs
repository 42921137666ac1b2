//! The Pingora `ProxyHttp` implementation. Each hook is a few lines that call into a
//! named module, so a request's path through keygate reads top to bottom:
//!
//! 1. `early_request_filter`: request id, TLS flag.
//! 2. `request_filter`: [`admit`] — framing, path, route, authentication, nonce,
//!    site-on-route, body read + digest + JSON validation (small bodies), then personal
//!    data pseudonymized or refused ([`crate::pii`]).
//! 3. `upstream_peer`: resolve this attempt's upstream (the route's, or a fallback:
//!    [`failover`]), build a peer with SNI and timeouts.
//! 4. `upstream_request_filter`: strip client credentials, inject the provider's.
//! 5. `request_body_filter`: replace or hold back and verify the body.
//! 6. `response_filter`: drop cookies and server headers, add standard headers.
//! 7. `fail_to_proxy`: every failure rendered as SPEC §4 JSON.
//! 8. `logging`: the audit line.

mod account;
mod admit;
mod anomaly;
mod attempt;
mod cors;
pub mod ctx;
mod failover;
mod fleet_nonce;
mod header_map;
mod model_gate;
mod observe;
mod realtime;
mod register;
mod relay;
pub mod respond;
mod service;
mod tokens;
mod trace;

use crate::error::{ErrorCode, GatewayError};
use crate::request::plan::{Framing, Step};
use crate::telemetry::metrics::METRICS;
use crate::upstream::failover::Reason;
use crate::upstream::failure::Failure;
use crate::upstream::{self, headers};
use async_trait::async_trait;
use bytes::Bytes;
use ctx::Ctx;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};
pub use service::Gateway;

/// A request id from the client is kept when it is 1-128 chars of `[A-Za-z0-9._-]`.
fn request_id(session: &Session) -> String {
    if let Some(v) = session.req_header().headers.get("x-request-id") {
        let b = v.as_bytes();
        if !b.is_empty()
            && b.len() <= 128
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c))
        {
            if let Ok(s) = v.to_str() {
                return s.to_string();
            }
        }
    }
    let mut id = [0u8; 12];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut id);
    hex::encode(id)
}

#[async_trait]
impl ProxyHttp for Gateway {
    /// Boxed: Pingora keeps the context in each request's future, which it boxes and
    /// moves whole (a `memcpy` of its full size per request). Inline, the 1.3 KB context
    /// made that future larger; boxed it is one pointer, for one small allocation
    /// (bench/ab.sh: 0.958x the CPU per request; bench/ab-instructions.sh: 0.966x).
    type CTX = Box<Ctx>;

    /// Runs when a request's header has arrived, before any hook. The request keeps
    /// this config snapshot and its live state to the end, whatever reloads happen.
    fn new_ctx(&self) -> Box<Ctx> {
        let (rt, live) = self.state.snapshot();
        Box::new(Ctx::new(rt, live))
    }

    /// No downstream modules. Pingora's default adds a disabled compression module, which
    /// still costs allocations and four filter calls per request; keygate never
    /// compresses (it strips `Accept-Encoding` upstream and validates plain bodies).
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    /// First hook (before Pingora's downstream modules): the request id, the idle time
    /// allowed before the next request, whether the listener is TLS. `Err` would end
    /// the request through `fail_to_proxy`; nothing here refuses.
    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Box<Ctx>) -> Result<()> {
        ctx.request_id = request_id(session);
        // Idle time allowed before the next request on this connection.
        session.set_keepalive(Some(ctx.rt.server.keepalive_timeout.as_secs()));
        // Pingora sets no write timeout: a client that stops reading (a zero TCP window,
        // an HTTP/2 stream window never opened) held the request, its concurrency slot
        // and its upstream connection for as long as the kernel kept the connection.
        session.set_write_timeout(Some(ctx.rt.server.send_timeout));
        // A body left unread (a refusal answered before it) is drained before the
        // connection is kept: for at most `body_timeout_ms` in all (Pingora: no limit, so a
        // client trickling it held the connection after its answer).
        session.set_total_drain_timeout(Some(ctx.rt.server.body_timeout));
        ctx.tls = session
            .as_downstream()
            .digest()
            .is_some_and(|d| d.ssl_digest.is_some());
        Ok(())
    }

    /// Decides whether the request may go upstream ([`admit`]), or answers it itself
    /// (CORS preflight, token minting, every refusal as SPEC §4 JSON). `Ok(true)`: a
    /// response was written, the request ends here and nothing is sent upstream;
    /// `Ok(false)`: proxy it, with the route, client and body plan in `ctx`.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Box<Ctx>) -> Result<bool> {
        ctx.client_ip = Some(admit::client_ip(session, &ctx.rt));
        if cors::is_preflight(session) {
            let resp = cors::preflight(session, &ctx.rt)?;
            ctx.status = 204;
            session.write_response_header(Box::new(resp), true).await?;
            return Ok(true);
        }
        let outcome = if register::is_registration(session.req_header().uri.path()) {
            match self.registration(session, ctx).await {
                Ok((status, json)) => {
                    respond::send_json(session, ctx, status, json).await?;
                    return Ok(true);
                }
                Err(e) => Err(e),
            }
        } else if session.req_header().uri.path() == tokens::TOKENS_PATH {
            let minted = self.mint_token(session, ctx).await;
            METRICS
                .tokens_minted
                .with_label_values(&[tokens::mint_result(&minted)])
                .inc();
            minted.map(Some)
        } else if crate::realtime::is_handshake(session.req_header()) {
            realtime::subprotocol_key(session);
            let ran = match self.admit(session, ctx).await {
                Ok(()) => self.realtime(session, ctx).await,
                Err(e) => Err(e),
            };
            // The session ran: its 101 is written and nothing is proxied.
            ctx.realtime_done = ran.is_ok();
            ran.map(|()| None)
        } else {
            self.admit(session, ctx).await.map(|()| None)
        };
        match outcome {
            Ok(None) if ctx.realtime_done => Ok(true),
            Ok(None) => Ok(false),
            Ok(Some(json)) => {
                respond::send_json(session, ctx, 200, json).await?;
                Ok(true)
            }
            Err(err) => {
                log::debug!("request {} refused: {err}", ctx.request_id);
                ctx.error = Some(err.clone());
                respond::send_error(session, ctx, &err).await?;
                Ok(true)
            }
        }
    }

    /// Where to connect: this attempt's upstream (the route's, or a fallback), resolved
    /// without blocking (cached), with SNI, timeouts (within what is left of the route's
    /// `total_timeout_ms`), CA and the pin hook. A name that does not resolve fails over
    /// like a refused connection. `Err`: a 502 (or 504) through `fail_to_proxy`.
    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Box<Ctx>,
    ) -> Result<Box<HttpPeer>> {
        loop {
            let Some(up) = ctx.upstream().cloned() else {
                return Err(Self::abort(
                    ctx,
                    GatewayError::new(ErrorCode::Internal, "No route."),
                ));
            };
            let left = ctx
                .deadline()
                .map(|d| d.saturating_duration_since(std::time::Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return Err(Self::abort(ctx, Failure::Timeout.to_error()));
            }
            match self.resolver.resolve(&up.host, up.port).await {
                Ok(addr) => {
                    // The route's own upstream without a model map keeps the path admitted.
                    if ctx.attempts.pos != 0 || !up.model_map.is_empty() {
                        ctx.upstream_path = attempt::path(ctx, &up);
                    }
                    ctx.upstream_started = Some(std::time::Instant::now());
                    ctx.attempts.started += 1;
                    self.trace_attempt(session, ctx);
                    return Ok(Box::new(upstream::peer(&up, addr, left)));
                }
                Err(detail) => {
                    // The attempt's span too: it ends when the next one starts.
                    self.trace_attempt(session, ctx);
                    if self.fail_over(session, ctx, Reason::Connect, Some(Failure::Connect)) {
                        continue;
                    }
                    return Err(Self::abort(
                        ctx,
                        GatewayError::upstream("The provider could not be reached.").detail(detail),
                    ));
                }
            }
        }
    }

    /// A connection could not be made (refused, timed out, TLS handshake): another
    /// attempt, when [`failover`] allows one.
    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Box<Ctx>,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let upstream::failure::Class::Upstream(f) = upstream::failure::classify(&e) {
            if self.fail_over(session, ctx, Reason::of_failure(f), Some(f)) {
                e.set_retry(true);
            }
        }
        e
    }

    /// An attempt failed after the connection was made (pin or TLS check, no header in
    /// time, a status that fails over): Pingora tries again when a hook or [`failover`]
    /// chose the next attempt. Otherwise only what Pingora would retry by itself: an
    /// idempotent request whose pooled connection turned out to be closed.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Box<Ctx>,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let failed_over = std::mem::take(&mut ctx.retrying)
            || (ctx.error.is_none() && {
                let class = failover::classify(session, &e);
                account::note_unanswered(ctx, &class, &e);
                match class {
                    upstream::failure::Class::Upstream(f) => {
                        self.fail_over(session, ctx, Reason::of_failure(f), Some(f))
                    }
                    _ => false,
                }
            });
        if failed_over {
            e.set_retry(true);
        } else if !session.req_header().method.is_idempotent()
            || session.as_downstream().retry_buffer_truncated()
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    /// After a connection is made or taken from the pool, before any request byte is
    /// written: enforces the upstream's SPKI pins. `Err`: the connection is dropped
    /// unused and the client gets a 502.
    async fn connected_to_upstream(
        &self,
        session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        let Some(up) = ctx.upstream().cloned() else {
            return Ok(());
        };
        let Err(e) = upstream::check_tls(&up, digest, reused)
            .and_then(|()| upstream::enforce_pins(&up, digest))
        else {
            return Ok(());
        };
        if self.fail_over(session, ctx, Reason::Tls, None) {
            ctx.retrying = true;
            return Err(Error::explain(ErrorType::ConnectError, "failing over"));
        }
        ctx.upstream_failed = true;
        Err(Self::abort(ctx, e))
    }

    /// The request header on its way upstream: headers by allow-list, the provider
    /// credential (round-robin over the credentials not resting), the path, and the
    /// framing of the verified body. `Err`: nothing is sent; a 5xx through `fail_to_proxy`.
    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        let Some(up) = ctx.upstream().cloned() else {
            return Err(Self::abort(
                ctx,
                GatewayError::new(ErrorCode::Internal, "No route."),
            ));
        };
        let now_ms = crate::clock::now_ms();
        let picked = ctx
            .upstream_live()
            .and_then(|live| live.pick_credential(&up, now_ms, &ctx.attempts.tried_credentials));
        let Some(credential) = picked else {
            return Err(Self::abort(
                ctx,
                GatewayError::upstream("No provider credential is configured."),
            ));
        };
        ctx.credential_id = Some(credential.id.clone());
        if let Err(e) = attempt::body(ctx, &up) {
            return Err(Self::abort(ctx, e));
        }
        crate::upstream::prepare_upstream_request(req, &up, credential, &ctx.upstream_path)?;
        // Framing upstream is keygate's: the exact verified length, or chunked when the
        // body is held back (so a rewritten body may change length).
        req.remove_header(&http::header::TRANSFER_ENCODING);
        req.remove_header(&http::header::CONTENT_LENGTH);
        self.trace_header(req, ctx);
        match ctx.body.framing(&req.method) {
            Ok(Framing::Length(n)) => {
                req.insert_header(http::header::CONTENT_LENGTH, n.to_string())?;
                // A body with no type is one keygate made for a client that sent none
                // (a token's Realtime mint): JSON (a client's body must have a type).
                if n > 0 && !req.headers.contains_key(http::header::CONTENT_TYPE) {
                    req.insert_header(http::header::CONTENT_TYPE, "application/json")?;
                }
            }
            Ok(Framing::Chunked) => {
                req.insert_header(http::header::TRANSFER_ENCODING, "chunked")?
            }
            Ok(Framing::None) => {}
            Err(e) => return Err(Self::abort(ctx, e)),
        }
        Ok(())
    }

    /// Each chunk of the request body, after the upstream has the header. Small bodies
    /// were verified in `request_filter` (here only a rewritten body replaces them);
    /// larger ones are held back and verified at the end, then sent whole. `Err` drops
    /// the upstream connection mid-request, so a refused body never arrives complete.
    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        let step = ctx.body.on_chunk(body, end_of_stream);
        // A body trickled in: held back whole, it is bounded like a pre-read one
        // (`body_timeout_ms`, from its first chunk: the upstream's connect comes before);
        // streamed on (an upload), by the route's total deadline.
        let first_chunk = *ctx.body_started.get_or_insert_with(std::time::Instant::now);
        let due = match step {
            Ok(Step::Hold) => Some(first_chunk + ctx.rt.server.body_timeout),
            _ => ctx.deadline(),
        };
        if !end_of_stream && due.is_some_and(|d| std::time::Instant::now() >= d) {
            let late = GatewayError::bad_request("The request body was not received in time.");
            return Err(Self::abort(ctx, late));
        }
        let full = match step {
            Ok(Step::Pass | Step::Hold) => return Ok(()),
            Ok(Step::Complete(full)) => full,
            Ok(Step::Release) => {
                return match self.finish_upload(ctx) {
                    Ok(tail) => {
                        *body = Some(tail);
                        Ok(())
                    }
                    Err(e) => Err(Self::abort(ctx, e)),
                }
            }
            Err(e) => return Err(Self::abort(ctx, e)),
        };
        let Some(client) = ctx.client.clone() else {
            return Err(Self::abort(
                ctx,
                GatewayError::new(ErrorCode::Internal, "No client."),
            ));
        };
        let method = session.req_header().method.as_str().to_string();
        let out = self
            .verify_body(ctx, &client, &method, session.req_header(), &full)
            .and_then(|rewritten| {
                let out = rewritten.unwrap_or(full);
                let up = ctx.upstream().cloned();
                match up
                    .as_deref()
                    .and_then(|u| attempt::mapped_body(ctx, u, &out))
                {
                    Some(mapped) => mapped,
                    None => Ok(out),
                }
            });
        match out {
            Ok(out) => {
                ctx.request_bytes = out.len();
                *body = Some(out);
                Ok(())
            }
            Err(e) => Err(Self::abort(ctx, e)),
        }
    }

    /// The upstream's response header: a 401/429 rests the credential; a 5xx, 429 or
    /// 401 fails over when another attempt may be made ([`failover`]); status, type and
    /// size are checked ([`observe`]); headers pass by allow-list; keygate's own headers
    /// are added. `Err`: a 502 instead of the upstream's answer (no header has been
    /// written to the client yet), or the next attempt.
    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        if resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
            // keygate asks no upstream to switch (Realtime connects its own WebSocket):
            // what would follow is no answer keygate can check.
            let e = GatewayError::upstream("The upstream switched protocols unasked.");
            return Err(Self::abort(ctx, e));
        }
        if resp.status.is_informational() {
            // An interim answer (100 Continue, 103 Early Hints) before the real one: it
            // settles nothing (status, failover, a circuit's probe), is not checked as
            // an answer, and passes without the provider's headers (103's `Link`).
            let names: Vec<_> = resp.headers.keys().cloned().collect();
            for name in names {
                resp.remove_header(&name);
            }
            return Ok(());
        }
        let up = ctx.upstream().cloned();
        // A credential's rest goes to the state in force now (a reload may have come
        // since the request started).
        let live = self.state.live.load();
        let up_live = up.as_deref().and_then(|u| live.upstream_for(u));
        upstream::note_credential_answer(resp, up_live, ctx.credential_id.as_deref());
        let status = resp.status.as_u16();
        ctx.note_attempt_status(status);
        ctx.upstream_request_id = respond::provider_request_id(&resp.headers, &ctx.rt.scanner);
        if let Some(reason) = Reason::of_status(status) {
            if self.fail_over(session, ctx, reason, None) {
                ctx.retrying = true;
                return Err(Error::explain(
                    ErrorType::HTTPStatus(status),
                    "failing over",
                ));
            }
        }
        if failover::refuses_credential(ctx, status) {
            // No other attempt is left. The upstream answered: its circuit and probe
            // see that.
            log::warn!(
                "upstream {} answered {status} to credential {} (the credential, or its account's access, refused)",
                up.as_ref().map_or("?", |u| u.name.as_str()),
                ctx.credential_id.as_deref().unwrap_or("?")
            );
            ctx.set_upstream_status(status);
            ctx.credential_refused = true;
            ctx.upstream_answered = Some(std::time::Instant::now());
            account::settle_probe(&self.state, ctx);
            let refused = GatewayError::upstream("The provider refused the gateway's credential.");
            return Err(Self::abort(ctx, refused));
        }
        let edited = respond::edit(resp, |parts| {
            observe::start(parts, ctx).map_err(|e| Self::abort(ctx, e))?;
            let none = headers::HeaderAllow::default();
            let extra = up.as_ref().map_or(&none, |u| &u.response_headers);
            headers::clean_response(&mut parts.headers, extra);
            observe::check_names(parts, ctx).map_err(|e| Self::abort(ctx, e))?;
            respond::add_standard_headers(&mut parts.headers, ctx)?;
            respond::add_ratelimit_headers(&mut parts.headers, ctx)?;
            ctx.status = parts.status.as_u16();
            Ok(())
        });
        account::settle_probe(&self.state, ctx);
        edited
    }

    /// Each chunk of the response body: JSON held back and checked at its end, SSE
    /// checked event by event ([`observe`]); at the end, the site's token budget is
    /// charged. `Err` aborts the response (the client sees a failed transfer).
    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Box<Ctx>,
    ) -> Result<Option<std::time::Duration>> {
        observe::chunk(body, end_of_stream, ctx).map_err(|e| Self::abort(ctx, e))?;
        ctx.answer_complete |= end_of_stream && !ctx.response.cut_short();
        // Pingora bounds the write of a whole chunk by the write timeout, and a held-back
        // answer goes out as one (up to `max_response_bytes`): a client reading it at a
        // modest rate was cut. A large chunk gets time for its size on top.
        if let Some(len) = body
            .as_ref()
            .map(Bytes::len)
            .filter(|n| *n > SLOW_CLIENT_BYTES)
        {
            let for_size = std::time::Duration::from_secs((len / SLOW_CLIENT_BYTES) as u64);
            session.set_write_timeout(Some(ctx.rt.server.send_timeout + for_size));
        }
        if end_of_stream {
            account::charge(&self.state, ctx);
            account::settle_circuit(&self.state, ctx);
        }
        Ok(None)
    }

    /// Any failure after `request_filter` (keygate's own refusals and Pingora's
    /// errors): counted against the upstream when it failed, and written as SPEC §4
    /// JSON when no response header has gone out yet. The connection is not reused.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Box<Ctx>,
    ) -> FailToProxy
    where
        Ctx: Send + Sync,
    {
        if ctx.error.is_none() {
            let class = failover::classify(session, e);
            account::note_unanswered(ctx, &class, e);
            if let upstream::failure::Class::Upstream(failure) = class {
                ctx.upstream_failed = true;
                if let Some(up) = ctx.upstream() {
                    upstream::count_failure(&up.name, failure);
                }
            }
            ctx.error = class.to_error();
        }
        let mut code = 0;
        if let Some(err) = ctx.error.clone() {
            code = err.code.status();
            if !respond::final_header_written(session) {
                if let Err(we) = respond::send_error(session, ctx, &err).await {
                    log::debug!(
                        "request {}: cannot write error response: {we}",
                        ctx.request_id
                    );
                }
            }
        }
        ctx.status = code;
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// What Pingora's own error and warning lines say of the request: without its query,
    /// where a client may carry its key (Gemini's `?key=`), and with keygate's request id.
    fn request_summary(&self, session: &Session, ctx: &Self::CTX) -> String {
        let req = session.req_header();
        format!(
            "{} {}, request {}",
            req.method,
            req.uri.path(),
            ctx.request_id
        )
    }

    /// Last, for every request however it ended: metrics, the circuit outcome, the
    /// token charge if not made yet, the audit line.
    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Box<Ctx>) {
        account::finish(&self.state, session, ctx);
        self.trace_finish(session, ctx);
    }
}

/// The slowest client rate a large answer is given time for: 16 KiB a second.
const SLOW_CLIENT_BYTES: usize = 16 * 1024;
