//! `request_filter`'s work: everything that decides whether a request may go
//! upstream, in order. Nothing here contacts an upstream.

use super::attempt::upstream_path;
use super::cors;
use super::ctx::{BodyPlan, Ctx};
pub(super) use super::respond::rate_limited;
use super::service::Gateway;
use crate::auth::{self, signature::normalize_authority, AuthInput, AuthMode, AuthedClient};
use crate::config::Runtime;
use crate::error::{ErrorCode, GatewayError};
use crate::limits;
use crate::limits::LimitName;
use crate::request::plan::{self, Accumulator, Decision, Head};
use crate::request::{body, hygiene, upload};
use crate::telemetry::metrics::METRICS;
use bytes::Bytes;
use pingora::proxy::Session;
use std::net::IpAddr;

/// The request's authority: the absolute-form target's, else the single Host header.
fn authority(session: &Session) -> Result<String, GatewayError> {
    let req = session.req_header();
    let hosts: Vec<_> = req.headers.get_all(http::header::HOST).iter().collect();
    if hosts.len() > 1 {
        return Err(GatewayError::bad_request(
            "The request has more than one Host header.",
        ));
    }
    let host = hosts
        .first()
        .map(|h| {
            h.to_str()
                .map_err(|_| GatewayError::bad_request("The Host header is not ASCII."))
        })
        .transpose()?;
    match (req.uri.authority().map(|a| a.as_str()), host) {
        (Some(a), Some(h)) if !session.is_http2() && !a.eq_ignore_ascii_case(h) => {
            Err(GatewayError::bad_request(
                "The request target names another host than the Host header.",
            ))
        }
        (Some(a), _) => Ok(a.to_string()),
        (None, Some(h)) => Ok(h.to_string()),
        (None, None) => Err(GatewayError::bad_request("The request has no Host header.")),
    }
}

/// Answer `Expect: 100-continue` once the request is admitted (and has a body).
pub(super) async fn send_continue(session: &mut Session, head: &Head) -> Result<(), GatewayError> {
    if head.expects_continue && !session.as_downstream_mut().is_body_empty() {
        session
            .write_continue_response()
            .await
            .map_err(|_| GatewayError::bad_request("Client connection failed."))?;
    }
    Ok(())
}

/// Read a whole request body into `acc` (which bounds it) within `timeout`.
pub(super) async fn read_body(
    session: &mut Session,
    mut acc: Accumulator,
    timeout: std::time::Duration,
) -> Result<Bytes, GatewayError> {
    if session.as_downstream_mut().is_body_empty() {
        return Ok(Bytes::new());
    }
    let read = async {
        while let Some(chunk) = session
            .read_request_body()
            .await
            .map_err(|_| GatewayError::bad_request("The request body could not be read."))?
        {
            acc.push(&chunk)?;
        }
        Ok::<_, GatewayError>(())
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| GatewayError::bad_request("The request body was not received in time."))??;
    Ok(acc.take())
}

/// Framing and path checks every request passes first; returns (path, query, method).
pub(super) fn precheck(
    session: &Session,
    rt: &Runtime,
) -> Result<(String, Option<String>, String), GatewayError> {
    if let Some(h1) = session.as_downstream().as_http1() {
        let raw = h1.get_headers_raw_bytes();
        if raw.len() > rt.server.max_header_bytes {
            return Err(GatewayError::bad_request(
                "The request headers are too large.",
            ));
        }
        if hygiene::has_cl_and_te(&raw) {
            return Err(GatewayError::bad_request(
                "Content-Length and Transfer-Encoding together are refused.",
            ));
        }
    }
    let req = session.req_header();
    if req.headers.len() > rt.server.max_headers {
        return Err(GatewayError::bad_request(
            "The request has too many header fields.",
        ));
    }
    // Only plain `chunked`: anything else is framing another hop could read differently.
    for te in req.headers.get_all(http::header::TRANSFER_ENCODING) {
        if !te.as_bytes().eq_ignore_ascii_case(b"chunked") {
            return Err(GatewayError::bad_request(
                "Only \"Transfer-Encoding: chunked\" is accepted.",
            ));
        }
    }
    let types = req.headers.get_all(http::header::CONTENT_TYPE);
    hygiene::check_content_type(types.iter().map(|v| v.as_bytes())).map_err(|d| {
        GatewayError::bad_request("The request's Content-Type is ambiguous.").detail(d)
    })?;
    let path = req.uri.path().to_string();
    hygiene::check_path(&path)
        .map_err(|d| GatewayError::bad_request("The request path is not allowed.").detail(d))?;
    Ok((
        path,
        req.uri.query().map(str::to_string),
        req.method.as_str().to_string(),
    ))
}

/// The client's address (the peer, or the forwarded address behind a trusted proxy).
pub(super) fn client_ip(session: &Session, rt: &Runtime) -> IpAddr {
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    if rt.server.trusted_proxies.is_empty() {
        return peer;
    }
    let xff: Vec<&str> = session
        .req_header()
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    limits::ip::client_ip(peer, &xff, &rt.server.trusted_proxies)
}

impl Gateway {
    /// Decide whether the request may go upstream. On `Ok`, `ctx` holds the route,
    /// the client and the body plan; for small bodies the body has been read and verified.
    pub(super) async fn admit(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> Result<(), GatewayError> {
        let rt = ctx.rt.clone();
        let (path, query, method) = precheck(session, &rt)?;
        let route_idx = rt
            .route_index(&path)
            .ok_or_else(|| GatewayError::new(ErrorCode::NoRoute, "No route matches this path."))?;
        ctx.route = Some(route_idx);
        let route = &rt.routes[route_idx];
        ctx.upstream_path = upstream_path(&route.prefix, &route.upstream, &path, query.as_deref());

        let (client, deferred) = self
            .authenticate_client(session, ctx, &path, query.as_deref(), &method, true)
            .await?;
        if !route.stored_objects
            && !crate::request::endpoints::stateless(method.as_str(), &ctx.upstream_path)
        {
            // Before the fleet counts it: refused like a route the key may not use.
            return Err(GatewayError::forbidden(
                "This endpoint is not served on this route.",
            ));
        }
        // The nonce's round trip decides the admission too (fleet.exact_limits).
        let decision = match deferred {
            Some(claim) => self.fleet_admission(ctx, &client, &claim).await?,
            None => None,
        };
        let admitted = self.admit_site(session, ctx, &client, route_idx, decision.as_ref());
        if admitted.is_err() {
            // Refused after the fleet counted it: take the count back.
            decision.iter().for_each(|d| d.refund());
        }
        admitted?;
        let now_ms = crate::clock::now_ms();
        if let Some(claims) = &client.token {
            let fleet = self.state.fleet.as_deref();
            if claims.max > 0
                && !crate::fleet::admit_token_use(fleet, &self.state.token_uses, claims, now_ms)
                    .await
            {
                let used_up = limits::Refusal::of(LimitName::TokenMaxRequests, None);
                return Err(rate_limited(None, used_up));
            }
        }
        ctx.target = (path, query);
        self.plan_body(session, ctx, &client, &method).await
    }

    /// The site's and the token's permissions on the route, the first attempt's upstream,
    /// then the tier's limits (decided by the fleet when `decision` is given).
    fn admit_site(
        &self,
        session: &Session,
        ctx: &mut Ctx,
        client: &AuthedClient,
        route_idx: usize,
        decision: Option<&crate::fleet::exact::Decision>,
    ) -> Result<(), GatewayError> {
        let rt = ctx.rt.clone();
        let route = &rt.routes[route_idx];
        let site = &rt.sites[client.site];
        if site
            .routes
            .as_ref()
            .is_some_and(|r| !r.contains(&route.prefix))
        {
            return Err(GatewayError::forbidden(
                "This key is not allowed on this route.",
            ));
        }
        if let Some(claims) = &client.token {
            if !claims.routes.is_empty() && !claims.routes.contains(&route.prefix) {
                return Err(GatewayError::forbidden(
                    "This token is not valid for this route.",
                ));
            }
        }
        if let Some(bad) = crate::upstream::headers::unlisted_betas(
            route.upstream.kind,
            &session.req_header().headers,
            &route.betas,
        ) {
            return Err(unlisted_beta(bad));
        }
        Self::first_attempt(ctx)?;
        // A fleet decision is replayed at the time it was made.
        let now_ms = decision.map_or_else(crate::clock::now_ms, |d| d.now_ms);
        super::anomaly::request(&self.state, &rt, site, now_ms)?;
        let tier = &site.tier;
        let limiter = self.state.limiter.load();
        let admission = match decision {
            Some(d) => {
                let decided = crate::fleet::store::Decided::new(limiter.store(), d);
                d.confirm(limiter.admit_on(&decided, site.limit_key, tier, now_ms))
            }
            None => limiter.admit(site.limit_key, tier, now_ms),
        };
        match admission {
            Ok(a) => ctx.admission = Some(a),
            Err(refusal) => return Err(rate_limited(tier.policy.as_ref(), refusal)),
        }
        Ok(())
    }

    /// Who is calling: the credentials (a failure is counted, or a 429 while the address
    /// cools down), then the browser origin. Sets `ctx.client` and `ctx.cors_origin`.
    pub(super) async fn authenticate_client(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        path: &str,
        query: Option<&str>,
        method: &str,
        exact: bool,
    ) -> Result<(AuthedClient, Option<auth::NonceClaim>), GatewayError> {
        let rt = ctx.rt.clone();
        let authority = normalize_authority(&authority(session)?, ctx.tls);
        let ip = ctx.client_ip.unwrap_or_else(|| client_ip(session, &rt));
        ctx.client_ip = Some(ip);
        let now_ms = crate::clock::now_ms();
        let keys = auth::Keys {
            keys: &rt.keys,
            bearer: &rt.bearer_keys,
            tokens: &rt.tokens,
            sites: &rt.sites,
            signed_headers: &rt.server.signed_headers,
            hostnames: rt.server.hostnames.as_ref(),
            clock_skew: rt.server.clock_skew.as_secs() as i64,
            clock_skew_future: rt.server.clock_skew_future.as_secs() as i64,
            earlier_skews: &self.state.earlier_skews.load(),
        };
        let authed = auth::verify(
            &keys,
            &AuthInput {
                headers: &session.req_header().headers,
                method,
                authority: &authority,
                path,
                query,
                now: crate::clock::secs(now_ms),
            },
        );
        let (client, claim) = match authed {
            Ok(c) => c,
            Err(f) => return Err(self.auth_failed(&rt, &ip, &f)),
        };
        // Known from here on (the audit line of a replay names its site and key).
        ctx.client = Some(client.clone());
        // After the MAC verified: record the nonce (fleet-wide in fleet mode, or deferred
        // to the admission when the fleet decides both in one round trip).
        let deferred = match claim {
            Some(claim) => self.record_nonce(&rt, ip, claim, exact).await?,
            None => None,
        };
        let site = &rt.sites[client.site];
        if client.mode == AuthMode::Legacy {
            METRICS
                .legacy_auth
                .with_label_values(&[site.id.0.as_str()])
                .inc();
            log::warn!(
                "request {}: site {} used the deprecated legacy-site-timestamp scheme (no body or replay protection)",
                ctx.request_id,
                site.id.0
            );
        }
        ctx.cors_origin = cors::origin_for(session, site)?;
        Ok((client, deferred))
    }

    /// [`Self::auth_failed`] for a body whose digest did not match, from the address
    /// `request_filter` resolved.
    pub(super) fn body_auth_failed(&self, ctx: &Ctx, f: &auth::AuthFailure) -> GatewayError {
        let ip = ctx.client_ip.unwrap_or(IpAddr::from([0, 0, 0, 0]));
        self.auth_failed(&ctx.rt, &ip, f)
    }

    /// Count a failed authentication (metric, per-IP limit) and return its error. While
    /// the address cools down, a failing request gets a 429 and nothing more is counted;
    /// a request whose credentials verify is not affected (many sites share one address
    /// on shared hosting: one broken plugin must not lock its neighbours out).
    pub(super) fn auth_failed(
        &self,
        rt: &Runtime,
        ip: &IpAddr,
        f: &auth::AuthFailure,
    ) -> GatewayError {
        let now_ms = crate::clock::now_ms();
        if rt.server.auth_failure_limit.is_some() {
            if let Some(left) = self.state.auth_failures.blocked(ip, now_ms) {
                let cooling = limits::Refusal::of(LimitName::AuthFailures, Some(left));
                return rate_limited(None, cooling);
            }
        }
        METRICS
            .auth_failures
            .with_label_values(&[f.reason.as_str()])
            .inc();
        if let (Some(afl), 401) = (rt.server.auth_failure_limit, f.code.status()) {
            if self
                .state
                .auth_failures
                .record_failure(ip, afl.per_minute, afl.cooldown, now_ms)
            {
                log::warn!(
                    "client {ip}: more than {} failed authentications a minute; refused for {}s",
                    afl.per_minute,
                    afl.cooldown.as_secs()
                );
            }
        }
        f.to_error()
    }

    /// Read and verify small bodies now; plan hold-back for large ones.
    async fn plan_body(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        client: &AuthedClient,
        method: &str,
    ) -> Result<(), GatewayError> {
        let rt = ctx.rt.clone();
        let headers = &session.req_header().headers;
        let head = plan::Head::read(headers)?;
        let content_type = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let upload = upload::boundary(&ctx.upstream_path, content_type);
        let decision = match &upload {
            Some(_) => plan::decide_upload(&head, rt.server.max_upload_bytes)?,
            None => plan::decide(&head, rt.server.max_body_bytes)?,
        };
        send_continue(session, &head).await?;
        let acc = match (decision, upload) {
            (Decision::HoldBack(acc), _) => {
                ctx.body = BodyPlan::HoldBack(acc);
                return Ok(());
            }
            (Decision::Stream { limit }, Some(boundary)) => {
                let route = ctx
                    .route()
                    .ok_or_else(|| GatewayError::new(ErrorCode::Internal, "No route."))?;
                if route.pii_policy(rt.sites.get(client.site)).is_some() {
                    return Err(body::no_uploads_with_pii());
                }
                ctx.body = BodyPlan::Stream(Box::new(upload::Streaming::new(
                    boundary,
                    limit,
                    head.content_length,
                    auth::DigestCheck::of(client),
                    plan::too_large(rt.server.max_upload_bytes),
                )));
                return Ok(());
            }
            (Decision::Preread(acc), _) => acc,
            (Decision::Stream { .. }, None) => {
                return Err(GatewayError::new(ErrorCode::Internal, "Body not planned."))
            }
        };
        session.as_downstream_mut().enable_retry_buffering();
        let buf = read_body(session, acc, rt.server.body_timeout).await?;
        ctx.request_bytes = buf.len();
        let outcome = self.verify_body(ctx, client, method, session.req_header(), &buf)?;
        if let Some(b) = &outcome {
            ctx.request_bytes = b.len();
        }
        ctx.body = BodyPlan::Buffered {
            body: outcome.unwrap_or(buf),
            attempt: None,
            sent: false,
        };
        Ok(())
    }

    /// A streamed upload ended: its digest and form verified, its model allowed; the last
    /// chunk to forward.
    pub(super) fn finish_upload(&self, ctx: &mut Ctx) -> Result<Bytes, GatewayError> {
        let BodyPlan::Stream(s) = &mut ctx.body else {
            return Err(GatewayError::new(ErrorCode::Internal, "Body not planned."));
        };
        let (model, tail) = match s.finish() {
            Ok(done) => done,
            Err(upload::Refusal::Digest(f)) => return Err(self.body_auth_failed(ctx, &f)),
            Err(upload::Refusal::Body(e)) => return Err(e),
        };
        let rt = ctx.rt.clone();
        let route = ctx
            .route
            .and_then(|i| rt.routes.get(i))
            .ok_or_else(|| GatewayError::new(ErrorCode::Internal, "No route."))?;
        body::check_model(route, model.as_deref(), true)?;
        ctx.model = model;
        self.admit_model(ctx, true)?;
        Ok(tail)
    }

    /// Digest and JSON checks on a complete body. Returns a replacement body, if any.
    pub(super) fn verify_body(
        &self,
        ctx: &mut Ctx,
        client: &AuthedClient,
        method: &str,
        req: &pingora::http::RequestHeader,
        body: &[u8],
    ) -> Result<Option<bytes::Bytes>, GatewayError> {
        if let Err(f) = auth::check_body_digest(client, body) {
            return Err(self.body_auth_failed(ctx, &f));
        }
        let rt = ctx.rt.clone();
        let route = ctx
            .route
            .and_then(|i| rt.routes.get(i))
            .ok_or_else(|| GatewayError::new(ErrorCode::Internal, "No route."))?;
        let content_type = req
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let pii = route.pii_policy(rt.sites.get(client.site));
        let outcome = body::check_with(route, pii, method, &ctx.upstream_path, content_type, body)?;
        if outcome.deferred && !route.stored_objects {
            // A background response is read back later, from a stored object.
            return Err(GatewayError::forbidden(
                "Background responses are served only on a route with stored_objects: their results are stored objects.",
            ));
        }
        if outcome.deferred
            && rt
                .sites
                .get(client.site)
                .is_some_and(|s| s.tier.has_budgets())
        {
            // Its usage never comes back through keygate: a budget could not be charged.
            return Err(GatewayError::forbidden(
                "Batches, fine-tuning jobs and background responses are not available to a site whose tier has a token or USD budget: their usage cannot be charged.",
            ));
        }
        if upload::boundary(&ctx.upstream_path, content_type).is_some() {
            // Audio and images are not tokens: usage comes from the answer.
            ctx.request_bytes = 0;
        }
        ctx.model = outcome.model;
        ctx.hide_usage_chunk = outcome.usage_asked_for_client;
        match outcome.pii {
            Some(crate::pii::Outcome::Found(found)) => {
                let e = crate::pii::refusal(&found);
                ctx.pii_counts = Some(found);
                return Err(e);
            }
            Some(crate::pii::Outcome::Replaced(map)) => {
                ctx.pii_counts = Some(map.counts().clone());
                ctx.pii = Some(map);
            }
            None => {}
        }
        self.admit_model(ctx, outcome.names_model)?;
        if client.token.is_none() {
            return Ok(outcome.rewritten);
        }
        let sent = outcome.rewritten.as_deref().unwrap_or(body);
        let now = crate::clock::now_s();
        match super::model_gate::client_secret_within_token(client, &ctx.upstream_path, sent, now)?
        {
            Some(clamped) => Ok(Some(clamped)),
            None => Ok(outcome.rewritten),
        }
    }
}

/// 403 for a beta the route does not list (`routes[].betas`), named (cut at 100 characters).
pub(super) fn unlisted_beta(bad: &str) -> GatewayError {
    GatewayError::forbidden(format!(
        "The beta \"{}\" is not allowed on this route.",
        bad.chars().take(100).collect::<String>()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_paths() {
        let rt = crate::demo::runtime(18081).unwrap();
        let route = rt.route_for("/openai/v1/models").unwrap();
        assert_eq!(
            upstream_path(
                &route.prefix,
                &route.upstream,
                "/openai/v1/models",
                Some("limit=5")
            ),
            "/v1/models?limit=5"
        );
        assert_eq!(
            upstream_path(
                &route.prefix,
                &route.upstream,
                "/openai/v1/chat/completions",
                None
            ),
            "/v1/chat/completions"
        );
    }
}
