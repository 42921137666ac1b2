//! A Realtime WebSocket session (SPEC §8.1), run inside `request_filter` once the
//! handshake was admitted like any request (authentication, site and route, limits with
//! one `concurrent` slot held for the whole session, circuit).
//!
//! keygate opens the provider's WebSocket itself (Pingora's connector: the upstream's
//! TLS, CA and SPKI pins; then the provider credential on the handshake), answers the
//! client 101 only once the provider accepted, and relays messages with `tungstenite`
//! on both sides: frames and messages bounded by `max_frame_bytes`, the session closed
//! after `max_session_s`, on shutdown, or when a reload removed its site or key. Every
//! provider message is checked for secrets; usage from `response.done` is charged to the
//! site's token budget as it comes.

use super::ctx::Ctx;
use super::service::Gateway;
use crate::error::{ErrorCode, GatewayError};
use crate::realtime::{self, Limits};
use crate::response::egress::Rules;
use crate::response::usage::Usage;
use crate::telemetry::metrics::METRICS;
use crate::upstream;
use crate::upstream::failure::Failure;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self as ws, Message};
use tokio_tungstenite::WebSocketStream;

/// The bytes between the client's connection and the WebSocket codec, buffered.
const PIPE_BYTES: usize = 64 * 1024;

/// Longest wait for either side to take a message (or a close) keygate sends it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a closing session waits to send a close frame and for the answer to it.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Send `m` to the client, bounded by the write timeout (a client that stopped reading
/// fills the pipe, and a send would wait for good) and by the session's deadline
/// (`max_session_s` holds while a send waits).
async fn to_client<S>(
    ws: &mut WebSocketStream<S>,
    m: Message,
    deadline: std::pin::Pin<&mut tokio::time::Sleep>,
) -> Result<(), End>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio::select! {
        sent = tokio::time::timeout(WRITE_TIMEOUT, ws.send(m)) => match sent {
            Ok(Ok(())) => Ok(()),
            _ => Err(End::ClientGone),
        },
        _ = deadline => Err(End::TimeUp),
    }
}

/// Before authentication: a key a browser sent as a subprotocol becomes its bearer
/// credential (the subprotocol itself is never sent on).
pub(super) fn subprotocol_key(session: &mut Session) {
    let req = session.req_header();
    if req.headers.contains_key(http::header::AUTHORIZATION) {
        return;
    }
    let Some(key) = realtime::key_from_subprotocols(&req.headers) else {
        return;
    };
    if let Ok(v) = http::HeaderValue::from_str(&format!("Bearer {key}")) {
        let _ = session
            .req_header_mut()
            .insert_header(http::header::AUTHORIZATION, v);
    }
}

/// How a session ended, and the close code the client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    ClientClosed,
    ClientGone,
    UpstreamClosed,
    UpstreamGone,
    TooBig,
    Refused,
    TimeUp,
    Revoked,
    ShuttingDown,
}

impl End {
    /// The close frame for the client, when keygate ends the session.
    fn close(self) -> Option<CloseFrame> {
        let (code, reason) = match self {
            End::ClientClosed | End::ClientGone | End::UpstreamClosed => return None,
            End::UpstreamGone => (CloseCode::Error, "provider connection lost"),
            End::TooBig => (CloseCode::Size, "message too big"),
            End::Refused => (CloseCode::Error, "provider message refused"),
            End::TimeUp => (CloseCode::Policy, "max_session_s reached"),
            End::Revoked => (CloseCode::Policy, "revoked by a config change"),
            End::ShuttingDown => (CloseCode::Away, "gateway shutting down"),
        };
        Some(CloseFrame {
            code,
            reason: reason.into(),
        })
    }
}

fn ws_config(limits: &Limits) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_frame_size(Some(limits.max_frame_bytes))
        .max_message_size(Some(limits.max_frame_bytes))
}

impl Gateway {
    /// Connect the provider's Realtime WebSocket for this admitted handshake, answer the
    /// client 101, relay until the session ends. `Err` before the 101 only (the client
    /// then gets an HTTP error).
    pub(super) async fn realtime(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> Result<(), GatewayError> {
        let internal = |m: &str| GatewayError::new(ErrorCode::Internal, m.to_string());
        let rt = ctx.rt.clone();
        let route = ctx
            .route
            .and_then(|i| rt.routes.get(i))
            .ok_or_else(|| internal("No route."))?;
        let up = ctx
            .upstream()
            .cloned()
            .ok_or_else(|| internal("No upstream."))?;
        let client = ctx.client.clone().ok_or_else(|| internal("No client."))?;
        let site = rt
            .sites
            .get(client.site)
            .ok_or_else(|| internal("No site."))?;
        if session.is_http2() {
            return Err(GatewayError::bad_request(
                "Realtime sessions need HTTP/1.1 (WebSocket upgrade).",
            ));
        }
        let req = session.req_header();
        let model = realtime::model_of_query(req.uri.query().unwrap_or(""))
            .map_err(|d| GatewayError::bad_request("The model is named twice.").detail(d))?;
        crate::request::body::check_model(route, model.as_deref(), true)?;
        ctx.model = model;
        self.admit_model(ctx)?;
        let client_key = req
            .headers
            .get(http::header::SEC_WEBSOCKET_KEY)
            .map(|k| ws::handshake::derive_accept_key(k.as_bytes()))
            .ok_or_else(|| GatewayError::bad_request("The WebSocket handshake has no key."))?;
        let offered = realtime::forwarded_subprotocols(&req.headers, &route.betas)
            .map_err(|beta| super::admit::unlisted_beta(&beta))?;
        let beta = req.headers.get("openai-beta").cloned();

        ctx.upstream_path = super::attempt::path(ctx, &up);
        let config = ws_config(&route.realtime);
        ctx.upstream_started = Some(std::time::Instant::now());
        self.trace_attempt(session, ctx);
        let (mut upstream_ws, chosen) = self
            .realtime_connect(ctx, &up, &offered, beta, config)
            .await?;
        ctx.upstream_answered = Some(std::time::Instant::now());
        ctx.set_upstream_status(101);
        let credential = up
            .credentials
            .iter()
            .find(|c| ctx.credential_id.as_ref() == Some(&c.id))
            .ok_or_else(|| internal("No credential."))?;
        let opened = realtime::Opened {
            site: site.id.0.clone(),
            key_id: client.key_id.0.clone(),
            upstream: up.name.clone(),
            credential: credential.id.clone(),
            binding: crate::state::binding(&up, credential),
        };

        let mut resp = ResponseHeader::build(101, Some(6)).map_err(|_| internal("101"))?;
        let headers = [
            ("upgrade", "websocket".to_string()),
            ("connection", "Upgrade".to_string()),
            ("sec-websocket-accept", client_key),
            ("x-request-id", ctx.request_id.clone()),
        ];
        for (k, v) in headers
            .into_iter()
            .chain(chosen.map(|p| ("sec-websocket-protocol", p)))
        {
            resp.insert_header(k, v)
                .map_err(|_| internal("101 header"))?;
        }
        if let Err(e) = session.write_response_header(Box::new(resp), false).await {
            let _ = tokio::time::timeout(WRITE_TIMEOUT, upstream_ws.close(None)).await;
            return Err(
                GatewayError::bad_request("Client connection failed.").detail(e.to_string())
            );
        }
        ctx.status = 101;
        // The session bounds itself; no read of the client's may end it sooner.
        session.set_read_timeout(Some(route.realtime.max_session + Duration::from_secs(5)));
        // A client that stops reading does not hold the session past its limits.
        session.set_write_timeout(Some(WRITE_TIMEOUT));

        // A reload since this request's config was loaded: its sweep did not see this
        // session, so the config in force now is asked too.
        let allowed =
            crate::state::still_allowed(&self.state.runtime.load(), &opened, crate::clock::now_s());
        let registered = self.state.realtime.open(opened);
        if !allowed {
            registered.close.notify_one();
        }
        let gauge = METRICS
            .realtime_sessions
            .with_label_values(&[&route.prefix]);
        gauge.inc();
        let rules = Rules {
            secrets: &rt.scanner,
            patterns: route.block_patterns.as_ref(),
        };
        let price = ctx
            .model
            .as_deref()
            .and_then(|m| rt.prices.find(m))
            .map(|(key, p)| (key.to_string(), *p));
        let relay = Relay {
            price,
            route: route.prefix.clone(),
            state: &self.state,
            ctx_live: ctx.live.clone(),
            up: up.clone(),
            limit_key: site.limit_key,
            model_limit: ctx.model_limit,
            rules,
            limits: route.realtime,
            close: registered.close.clone(),
        };
        let (end, usage, cost) = bridge(session, upstream_ws, relay, config).await;
        ctx.cost_usd = cost;
        gauge.dec();
        drop(registered);
        log::info!(
            "request {}: realtime session on {} ended ({end:?})",
            ctx.request_id,
            route.prefix
        );
        ctx.usage = usage;
        // Charged as it came; nothing left for the end of the request.
        ctx.charged = true;
        Ok(())
    }

    /// The provider's Realtime WebSocket: a connection with the upstream's TLS checks,
    /// the handshake with its credential; the subprotocol it chose, if the client offered it.
    async fn realtime_connect(
        &self,
        ctx: &mut Ctx,
        up: &crate::config::Upstream,
        offered: &[String],
        beta: Option<http::HeaderValue>,
        config: WebSocketConfig,
    ) -> Result<(WebSocketStream<pingora::protocols::Stream>, Option<String>), GatewayError> {
        let addr = self
            .resolver
            .resolve(&up.host, up.port)
            .await
            .map_err(|detail| {
                GatewayError::upstream("The provider could not be reached.").detail(detail)
            })?;
        let peer = upstream::peer(up, addr, None);
        let stream = self.connector.new_stream(&peer).await.map_err(|e| {
            let class = upstream::failure::classify(&e);
            if let upstream::failure::Class::Upstream(f) = class {
                upstream::count_failure(&up.name, f);
                ctx.upstream_failed = true;
            }
            class
                .to_error()
                .unwrap_or_else(|| GatewayError::upstream("The provider could not be reached."))
        })?;
        let digest = pingora::protocols::Digest {
            ssl_digest: stream.get_ssl_digest(),
            ..Default::default()
        };
        upstream::check_tls(up, Some(&digest), false)
            .and_then(|()| upstream::enforce_pins(up, Some(&digest)))
            .inspect_err(|_| ctx.upstream_failed = true)?;
        let now_ms = crate::clock::now_ms();
        let credential = ctx
            .upstream_live()
            .and_then(|l| l.pick_credential(up, now_ms, &[]))
            .ok_or_else(|| GatewayError::upstream("No provider credential is configured."))?;
        ctx.credential_id = Some(credential.id.clone());

        use ws::client::IntoClientRequest;
        let uri = format!("ws://{}{}", up.authority, ctx.upstream_path);
        let mut req = uri.into_client_request().map_err(|e| {
            GatewayError::new(ErrorCode::Internal, "Bad upstream URI.").detail(e.to_string())
        })?;
        let h = req.headers_mut();
        h.insert(
            upstream::headers::credential_name(up.kind),
            credential.header.clone(),
        );
        if !offered.is_empty() {
            if let Ok(v) = http::HeaderValue::from_str(&offered.join(", ")) {
                h.insert(http::header::SEC_WEBSOCKET_PROTOCOL, v);
            }
        }
        if let Some(b) = beta {
            h.insert("openai-beta", b);
        }
        if let Some(tp) =
            super::trace::traceparent(ctx).and_then(|v| http::HeaderValue::from_str(&v).ok())
        {
            h.insert("traceparent", tp);
        }
        h.insert(
            http::header::USER_AGENT,
            http::HeaderValue::from_static(upstream::USER_AGENT),
        );
        let wait = up.connect_timeout + up.read_timeout.min(Duration::from_secs(30));
        let shook = tokio::time::timeout(
            wait,
            tokio_tungstenite::client_async_with_config(req, stream, Some(config)),
        )
        .await;
        match shook {
            Ok(Ok((ws, resp))) => {
                let chosen = resp
                    .headers()
                    .get(http::header::SEC_WEBSOCKET_PROTOCOL)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
                    .filter(|p| offered.contains(p));
                Ok((ws, chosen))
            }
            Ok(Err(ws::Error::Http(resp))) => {
                let status = resp.status().as_u16();
                ctx.set_upstream_status(status);
                let live = self.state.live.load();
                let parts = http::Response::builder()
                    .status(status)
                    .body(())
                    .map(|r| r.into_parts().0);
                if let Ok(mut parts) = parts {
                    parts.headers = resp.headers().clone();
                    upstream::note_credential_answer(
                        &parts,
                        live.upstream_for(up),
                        Some(&credential.id),
                    );
                }
                Err(
                    GatewayError::upstream("The provider refused the Realtime session.")
                        .detail(format!("status {status}")),
                )
            }
            Ok(Err(e)) => {
                ctx.upstream_failed = true;
                Err(
                    GatewayError::upstream("The provider's Realtime handshake failed.")
                        .detail(e.to_string()),
                )
            }
            Err(_) => {
                ctx.upstream_failed = true;
                Err(Failure::Timeout.to_error())
            }
        }
    }
}

/// What the relay needs of the request.
struct Relay<'a> {
    /// The model's `prices:` key and price, when it has one.
    price: Option<(String, crate::limits::price::Price)>,
    route: String,
    state: &'a crate::state::State,
    ctx_live: std::sync::Arc<crate::state::Live>,
    up: std::sync::Arc<crate::config::Upstream>,
    limit_key: u64,
    /// The tier's `models:` entry the session's model was admitted under.
    model_limit: Option<crate::limits::tier::ModelLimit>,
    rules: Rules<'a>,
    limits: Limits,
    close: std::sync::Arc<tokio::sync::Notify>,
}

impl Relay<'_> {
    /// The provider sent what the client must not get: counted, and the session ends.
    fn refused(&self, r: crate::response::validate::Rejection) -> End {
        METRICS
            .response_rejected
            .with_label_values(&[self.up.name.as_str(), r.reason()])
            .inc();
        End::Refused
    }

    /// Charge one `response.done`'s usage to the site's budgets and the upstream's
    /// series, and price it.
    fn charge(&self, u: Usage, total: &mut Option<Usage>, cost: &mut Option<f64>) {
        let mut micro_usd = 0;
        if let Some((key, p)) = &self.price {
            let c = p.cost(&u);
            crate::telemetry::metrics::count_cost(&self.route, key, c);
            *cost.get_or_insert(0.0) += c;
            micro_usd = p.micro_usd(&u);
        }
        let spend = crate::limits::Spend {
            tokens: u.total(),
            micro_usd,
        };
        let now_ms = crate::clock::now_ms();
        let limiter = self.state.limiter.load();
        limiter.charge(self.limit_key, self.model_limit.as_ref(), spend, now_ms);
        if let Some(l) = self.ctx_live.upstream_for(&self.up) {
            l.series().tokens_in.inc_by(u.input);
            l.series().tokens_out.inc_by(u.output);
        }
        total.get_or_insert_with(Usage::default).add(u);
    }
}

/// Run the session: the client's bytes through a pipe into the WebSocket codec, messages
/// relayed both ways until one side ends or a limit is met. How it ended, and its usage.
async fn bridge(
    session: &mut Session,
    mut upstream_ws: WebSocketStream<pingora::protocols::Stream>,
    relay: Relay<'_>,
    config: WebSocketConfig,
) -> (End, Option<Usage>, Option<f64>) {
    let (near, far) = tokio::io::duplex(PIPE_BYTES);
    let mut client_ws = WebSocketStream::from_raw_socket(far, Role::Server, Some(config)).await;
    let (mut near_r, mut near_w) = tokio::io::split(near);
    let talked = tokio::sync::Notify::new();

    // The client's connection <-> the pipe. A shutdown reaches the relay through the
    // session registry (`relay.close`, `Sessions::shut_down`).
    let pump = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            tokio::select! {
                r = session.read_request_body() => match r {
                    Ok(Some(b)) => {
                        if near_w.write_all(&b).await.is_err() {
                            break;
                        }
                    }
                    _ => break,
                },
                n = near_r.read(&mut buf) => match n {
                    Ok(n) if n > 0 => {
                        let out = Bytes::copy_from_slice(&buf[..n]);
                        if session.write_response_body(Some(out), false).await.is_err() {
                            break;
                        }
                    }
                    _ => break,
                },
            }
        }
        let _ = near_w.shutdown().await;
    };

    let talk = async {
        let mut usage = None;
        let mut cost = None;
        let mut seen = realtime::ProviderWatch::default();
        let deadline = tokio::time::sleep(relay.limits.max_session);
        tokio::pin!(deadline);
        let end = loop {
            tokio::select! {
                m = client_ws.next() => match m {
                    Some(Ok(Message::Close(f))) => {
                        let _ = tokio::time::timeout(WRITE_TIMEOUT, upstream_ws.send(Message::Close(f))).await;
                        break End::ClientClosed;
                    }
                    Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                        let sent = tokio::time::timeout(WRITE_TIMEOUT, upstream_ws.send(m)).await;
                        if !matches!(sent, Ok(Ok(()))) {
                            break End::UpstreamGone;
                        }
                    }
                    // Pings are answered by the codec on each side.
                    Some(Ok(_)) => {}
                    Some(Err(ws::Error::Capacity(_))) => break End::TooBig,
                    Some(Err(_)) | None => break End::ClientGone,
                },
                m = upstream_ws.next() => match m {
                    Some(Ok(Message::Text(t))) => match seen.text(&t, &relay.rules) {
                        Ok(u) => {
                            if let Some(u) = u {
                                relay.charge(u, &mut usage, &mut cost);
                            }
                            if let Err(end) = to_client(&mut client_ws, Message::Text(t), deadline.as_mut()).await {
                                break end;
                            }
                        }
                        Err(r) => break relay.refused(r),
                    },
                    Some(Ok(Message::Binary(b))) => {
                        if let Err(r) = seen.binary(&b, &relay.rules) {
                            break relay.refused(r);
                        }
                        if let Err(end) = to_client(&mut client_ws, Message::Binary(b), deadline.as_mut()).await {
                            break end;
                        }
                    }
                    Some(Ok(Message::Close(f))) => {
                        let reason = f.as_ref().map_or("", |f| f.reason.as_str());
                        if let Err(r) = seen.close_reason(reason, &relay.rules) {
                            break relay.refused(r);
                        }
                        let _ = tokio::time::timeout(CLOSE_TIMEOUT, client_ws.send(Message::Close(f))).await;
                        break End::UpstreamClosed;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(ws::Error::Capacity(_))) => break End::TooBig,
                    Some(Err(_)) | None => break End::UpstreamGone,
                },
                _ = &mut deadline => break End::TimeUp,
                _ = relay.close.notified() => break if relay.state.realtime.is_shutting_down() {
                    End::ShuttingDown
                } else {
                    End::Revoked
                },
            }
        };
        if let Some(frame) = end.close() {
            let close = client_ws.send(Message::Close(Some(frame)));
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
            // The client's answer to the close, briefly.
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                while let Some(Ok(_)) = client_ws.next().await {}
            })
            .await;
        }
        if !matches!(
            end,
            End::UpstreamClosed | End::UpstreamGone | End::ClientClosed
        ) {
            let _ = tokio::time::timeout(WRITE_TIMEOUT, upstream_ws.close(None)).await;
        }
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, client_ws.close(None)).await;
        drop(client_ws);
        talked.notify_one();
        (end, usage, cost)
    };
    // The pump flushes what the relay wrote last, briefly: to a client that stopped reading
    // it would write until the connection's write timeout.
    let pump = async {
        tokio::select! {
            () = pump => {}
            () = async {
                talked.notified().await;
                tokio::time::sleep(CLOSE_TIMEOUT).await;
            } => {}
        }
    };
    let ((), result) = tokio::join!(pump, talk);
    result
}
