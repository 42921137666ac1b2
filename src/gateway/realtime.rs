//! A Realtime WebSocket session (SPEC §8.1), run inside `request_filter` once the
//! handshake was admitted like any request (authentication, site and route, limits with
//! one `concurrent` slot held for the whole session, circuit).
//!
//! keygate opens the provider's WebSocket itself (Pingora's connector: the upstream's
//! TLS, CA and SPKI pins; then the provider credential on the handshake), answers the
//! client 101 only once the provider accepted, and hands the session to the relay
//! ([`super::relay`]): messages on both sides through `tungstenite`, frames and messages
//! bounded by `max_frame_bytes`, every provider message checked for secrets, usage charged
//! as it comes, and the session closed after `max_session_s` (or its browser token's
//! expiry), once a budget is spent, on shutdown, or when a reload took its key, site,
//! upstream or credential away.

use super::ctx::Ctx;
use super::relay::{bridge, End, Relay, WRITE_TIMEOUT};
use super::service::Gateway;
use crate::error::{ErrorCode, GatewayError};
use crate::realtime::{self, Limits};
use crate::response::egress::Rules;
use crate::telemetry::metrics::METRICS;
use crate::upstream;
use crate::upstream::failure::Failure;
use futures::SinkExt;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use std::time::Duration;
use tokio_tungstenite::tungstenite as ws;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

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
        if route.pii_policy(Some(site)).is_some() {
            return Err(crate::request::body::no_realtime_with_pii());
        }
        let req = session.req_header();
        let model = realtime::model_of_query(req.uri.query().unwrap_or(""))
            .map_err(|d| GatewayError::bad_request("The model is named twice.").detail(d))?;
        crate::request::body::check_model(route, model.as_deref(), true)?;
        ctx.model = model;
        self.admit_model(ctx, true)?;
        let client_key = req
            .headers
            .get(http::header::SEC_WEBSOCKET_KEY)
            .map(|k| ws::handshake::derive_accept_key(k.as_bytes()))
            .ok_or_else(|| GatewayError::bad_request("The WebSocket handshake has no key."))?;
        let offered = realtime::forwarded_subprotocols(&req.headers, &route.betas)
            .map_err(|beta| super::admit::unlisted_beta(&beta))?;
        let beta = req.headers.get("openai-beta").cloned();
        let beta_names = realtime::cap::beta_names(beta.as_ref(), &offered);
        let cap = realtime::cap::session_cap(route.max_tokens, req.uri.query().unwrap_or(""))
            .map_err(|d| GatewayError::bad_request("The intent is named twice.").detail(d))?;

        ctx.upstream_path = super::attempt::path(ctx, &up);
        let config = ws_config(&route.realtime);
        ctx.upstream_started = Some(std::time::Instant::now());
        self.trace_attempt(session, ctx);
        let (mut upstream_ws, chosen) = self
            .realtime_connect(ctx, &up, &offered, beta, config)
            .await?;
        ctx.upstream_answered = Some(std::time::Instant::now());
        ctx.set_upstream_status(101);
        super::account::settle_probe(&self.state, ctx);
        // A capped route's limit is the session's before the client may send anything.
        if let Some(held) = cap.filter(|c| !c.transcription) {
            let update = Message::Text(realtime::cap::opening_update(held.cap, beta_names).into());
            if !matches!(
                tokio::time::timeout(WRITE_TIMEOUT, upstream_ws.send(update)).await,
                Ok(Ok(()))
            ) {
                return Err(GatewayError::upstream(
                    "The provider's Realtime session could not be given the route's max_tokens.",
                ));
            }
        }
        let credential = up
            .credentials
            .iter()
            .find(|c| ctx.credential_id.as_ref() == Some(&c.id))
            .ok_or_else(|| internal("No credential."))?;
        let key = rt.keys.get(&client.key_id);
        let opened = realtime::Opened {
            site: site.id.0.clone(),
            key_id: client.key_id.0.clone(),
            key_binding: key
                .map(crate::config::ClientKey::binding)
                .unwrap_or_default(),
            key_expires_at: key.and_then(|k| k.expires_at),
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
        // A session ends when the browser token or the key it was opened with does.
        let now = crate::clock::now_s();
        let left = |until: i64| Duration::from_secs((until - now).max(0) as u64);
        let token_left = client.token.as_ref().map(|t| left(t.exp));
        let key_left = key.and_then(|k| k.expires_at).map(left);
        let ends = [(token_left, End::TokenExpired), (key_left, End::KeyExpired)];
        let (lifetime, at_end_of_life) = ends
            .into_iter()
            .filter_map(|(d, end)| Some((d?, end)))
            .fold((route.realtime.max_session, End::TimeUp), |a, b| {
                if b.0 < a.0 {
                    b
                } else {
                    a
                }
            });
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
            tier: site.tier.clone(),
            lifetime,
            at_end_of_life,
            close: registered.close.clone(),
            cap,
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
