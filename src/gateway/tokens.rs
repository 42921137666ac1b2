//! `POST /keygate/v1/tokens`: a site's backend, signing with `keygate-v1`, mints a
//! short-lived browser token scoped to routes, models and a number of requests.

use super::admit::{precheck, rate_limited, read_body, send_continue};
use super::ctx::Ctx;
use super::service::Gateway;
use crate::auth::token::Claims;
use crate::auth::{self, AuthMode};
use crate::error::{ErrorCode, GatewayError};
use crate::limits::{self, LimitName};
use crate::request::body::parse_strict;
use crate::request::plan::{Accumulator, Head};
use pingora::proxy::Session;
use serde::Deserialize;

/// The minting endpoint's path.
pub const TOKENS_PATH: &str = "/keygate/v1/tokens";
const MAX_MINT_BODY: usize = 16 * 1024;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MintRequest {
    ttl_s: Option<u64>,
    routes: Option<Vec<String>>,
    models: Option<Vec<String>>,
    max_requests: Option<u64>,
}

impl Gateway {
    /// Mint a token; returns the JSON answer.
    pub(super) async fn mint_token(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> Result<Vec<u8>, GatewayError> {
        let rt = ctx.rt.clone();
        let (path, query, method) = precheck(session, &rt)?;
        if method != "POST" {
            return Err(GatewayError::bad_request("Tokens are minted with POST."));
        }
        // Per client address first (a spent allowance costs no signature check); only
        // mints that authenticate are counted, so nobody can spend a shared address's.
        if let Some(ip) = ctx.client_ip.as_ref().map(limits::ip::client_block) {
            let now_ms = crate::clock::now_ms();
            if let Err(wait) = self
                .state
                .token_mints
                .check(&ip, rt.token_mints_per_ip, now_ms)
            {
                let refusal = limits::Refusal::of(LimitName::TokenMintsPerIp, Some(wait));
                return Err(rate_limited(None, refusal));
            }
        }
        let (client, _) = self
            .authenticate_client(session, ctx, &path, query.as_deref(), &method, false)
            .await?;
        if let Some(ip) = ctx.client_ip.as_ref().map(limits::ip::client_block) {
            self.state.token_mints.count(&ip, crate::clock::now_ms());
        }
        if client.mode != AuthMode::Hmac {
            return Err(GatewayError::forbidden(
                "Tokens are minted only with a keygate-v1 signature; a token cannot mint tokens.",
            ));
        }
        let head = Head::read(&session.req_header().headers)?;
        let too_big =
            GatewayError::new(ErrorCode::BodyTooLarge, "The token request is too large.").close();
        if head.content_length.is_some_and(|n| n > MAX_MINT_BODY) {
            return Err(too_big);
        }
        send_continue(session, &head).await?;
        let acc = Accumulator::new(MAX_MINT_BODY, too_big);
        let body = read_body(session, acc, rt.server.body_timeout).await?;
        if let Err(f) = auth::check_body_digest(&client, &body) {
            // Counted against the client's address like any failed authentication.
            return Err(self.body_auth_failed(ctx, &f));
        }
        let req: MintRequest = if body.is_empty() {
            MintRequest::default()
        } else {
            let v = parse_strict(&body)
                .map_err(|_| GatewayError::bad_request("The token request is not valid JSON."))?;
            serde_json::from_value(v).map_err(|e| {
                GatewayError::bad_request("The token request has unknown or mistyped fields.")
                    .detail(e.to_string())
            })?
        };
        // An empty list or a zero would read as "no restriction" in the token: a scope
        // is never wider than omitting it, so these are refused.
        for (field, empty) in [
            ("routes", req.routes.as_ref().is_some_and(Vec::is_empty)),
            ("models", req.models.as_ref().is_some_and(Vec::is_empty)),
            ("max_requests", req.max_requests == Some(0)),
        ] {
            if empty {
                return Err(GatewayError::bad_request(format!(
                    "\"{field}\" must not be empty or zero; omit it for no restriction."
                )));
            }
        }
        let site = &rt.sites[client.site];
        // A mint counts against the site's tier like a request (a mint is answered at
        // once: its concurrency slot is released right away).
        self.state
            .limiter
            .load()
            .admit(site.limit_key, &site.tier, crate::clock::now_ms())
            .map_err(|r| rate_limited(site.tier.policy.as_ref(), r))?;
        let routes = req.routes.unwrap_or_default();
        for r in &routes {
            let known = rt.routes.iter().any(|x| &x.prefix == r);
            let allowed = site.routes.as_ref().is_none_or(|s| s.contains(r));
            if !known || !allowed {
                return Err(GatewayError::forbidden(format!(
                    "Route \"{}\" is not available to this site.",
                    r.chars().take(100).collect::<String>()
                )));
            }
        }
        if rt.tokens.current.is_none() {
            return Err(GatewayError::forbidden(
                "Browser tokens need master_keys in the gateway's config.",
            ));
        }
        let max_ttl = rt.token_max_ttl.as_secs();
        let ttl = req.ttl_s.unwrap_or(max_ttl).clamp(1, max_ttl);
        let exp = crate::clock::now_s() + ttl as i64;
        let claims = Claims {
            kid: String::new(),
            site: site.id.0.clone(),
            key: client.key_id.0.clone(),
            exp,
            routes,
            models: req.models.unwrap_or_default(),
            max: req.max_requests.unwrap_or(0),
            jti: crate::auth::signature::random_nonce(),
            kb: rt
                .keys
                .get(&client.key_id)
                .map(crate::config::ClientKey::binding)
                .unwrap_or_default(),
        };
        let token = rt.tokens.mint(claims).ok_or_else(|| {
            GatewayError::new(ErrorCode::Internal, "The token could not be minted.")
        })?;
        ctx.status = 200;
        Ok(
            serde_json::to_vec(&serde_json::json!({"token": token, "expires_at": exp}))
                .unwrap_or_default(),
        )
    }
}

/// The `result` label of `keygate_tokens_minted_total` for a mint's outcome.
pub fn mint_result<T>(outcome: &Result<T, GatewayError>) -> &'static str {
    crate::telemetry::metrics::mint_result(outcome.as_ref().err().map(|e| e.code))
}
