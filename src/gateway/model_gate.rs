//! The model a request names, once known: a browser token's scope, a price under a
//! spend limit, the tier's `models:` entry; and the lifetime of a Realtime client secret a
//! browser token mints.

use super::ctx::Ctx;
use super::service::Gateway;
use crate::auth::AuthedClient;
use crate::error::{ErrorCode, GatewayError};
use crate::request::endpoints::Mint;

/// A browser token may name the models it is good for.
pub(super) fn token_allows_model(
    client: &AuthedClient,
    model: Option<&str>,
) -> Result<(), GatewayError> {
    if let (Some(claims), Some(model)) = (&client.token, model) {
        if !claims.models.is_empty() && !claims.models.iter().any(|m| m.as_str() == model) {
            return Err(GatewayError::forbidden(
                "This token is not valid for this model.",
            ));
        }
    }
    Ok(())
}

impl Gateway {
    /// The request's model (`ctx.model`, known once the body is verified) may go ahead:
    /// a browser token names it; it has a price if the site's tier limits spend
    /// (`model_not_allowed` otherwise: a model is never free by accident); and the tier's
    /// `models:` entry for it, if any, has room (counted here, charged after the answer).
    ///
    /// A request that could name a model (`names_model`: a body, or a Realtime session)
    /// and names none is refused where the model matters: under a token scoped to models
    /// (else it would get the provider's default model, outside the scope), and under a
    /// tier that limits spend (else the provider's default model would be free).
    pub(super) fn admit_model(&self, ctx: &mut Ctx, names_model: bool) -> Result<(), GatewayError> {
        let Some(client) = &ctx.client else {
            return Ok(());
        };
        let Some(model) = ctx.model.as_deref() else {
            if !names_model {
                return Ok(());
            }
            if client.token.as_ref().is_some_and(|c| !c.models.is_empty()) {
                return Err(GatewayError::forbidden(
                    "This token is valid only for requests that name one of its models.",
                ));
            }
            if ctx
                .rt
                .sites
                .get(client.site)
                .is_some_and(|s| s.tier.spends_usd())
            {
                return Err(GatewayError::new(
                    ErrorCode::ModelNotAllowed,
                    "The request names no model, and this site's spend is limited: name the model, so that it has a price.",
                ));
            }
            return Ok(());
        };
        token_allows_model(client, Some(model))?;
        let Some(site) = ctx.rt.sites.get(client.site) else {
            return Ok(());
        };
        let tier = &site.tier;
        let entry = tier.models.find(model);
        let spends = tier.spends_usd();
        if spends && ctx.rt.prices.find(model).is_none() {
            return Err(GatewayError::new(
                ErrorCode::ModelNotAllowed,
                "This model has no price, and this site's spend is limited.",
            )
            .detail(format!(
                "model {:?} matches no `prices:` entry",
                model.chars().take(100).collect::<String>()
            )));
        }
        if let Some((glob, m)) = entry {
            let now_ms = crate::clock::now_ms();
            let limiter = self.state.limiter.load();
            if let Err(r) = limiter.admit_model(site.limit_key, glob, m, now_ms) {
                return Err(super::respond::rate_limited(None, r));
            }
            ctx.model_limit = Some(*m);
        }
        Ok(())
    }
}

/// OpenAI's lifetime of a Realtime client secret when none is asked for, and the least
/// it accepts (seconds); the older `sessions` endpoints' default (one minute).
const SECRET_DEFAULT_S: i64 = 600;
const SECRET_MIN_S: i64 = 10;
const SESSION_SECRET_S: i64 = 60;

/// A Realtime client secret minted with a browser token lives no longer than the token:
/// the secret works straight at the provider, outside keygate's limits, so a 60-second
/// token must not buy a 2-hour key. On `client_secrets` the body's `expires_after` is set
/// to the token's remaining life when it asks for more (or for OpenAI's default, or for a
/// lifetime that is not a whole number); on the older `sessions` endpoints the body's
/// `client_secret` (which sets the lifetime there) is dropped, leaving their one-minute
/// default. `None`: the body goes as it is.
pub(super) fn client_secret_within_token(
    client: &AuthedClient,
    upstream_path: &str,
    body: &[u8],
    now_s: i64,
) -> Result<Option<bytes::Bytes>, GatewayError> {
    let Some(claims) = &client.token else {
        return Ok(None);
    };
    let Some(mint) = crate::request::endpoints::realtime_mint(upstream_path) else {
        return Ok(None);
    };
    let left = claims.exp - now_s;
    let least = match mint {
        Mint::ClientSecrets => SECRET_MIN_S,
        Mint::Sessions => SESSION_SECRET_S,
    };
    if left < least {
        return Err(GatewayError::forbidden(
            "This token expires too soon to mint a client secret.",
        ));
    }
    let mut obj = match serde_json::from_slice(body) {
        Ok(serde_json::Value::Object(o)) => o,
        // An empty body asks for the defaults; anything else was refused before.
        _ => serde_json::Map::new(),
    };
    if mint == Mint::Sessions {
        if obj.remove("client_secret").is_none() {
            return Ok(None);
        }
    } else {
        let expires = obj.get("expires_after");
        let asked = match expires.and_then(|e| e.get("seconds")) {
            None => SECRET_DEFAULT_S,
            // A number that is not whole, or not a number: rewritten, whatever it says.
            Some(v) => v.as_i64().unwrap_or(i64::MAX),
        };
        let anchored = expires
            .and_then(|e| e.get("anchor"))
            .is_none_or(|a| a == "created_at");
        if asked <= left && anchored && expires.is_some() {
            return Ok(None);
        }
        obj.insert(
            "expires_after".into(),
            serde_json::json!({"anchor": "created_at", "seconds": asked.clamp(SECRET_MIN_S, left)}),
        );
    }
    serde_json::to_vec(&obj)
        .map(|b| Some(bytes::Bytes::from(b)))
        .map_err(|e| {
            GatewayError::bad_request("The request body cannot be re-encoded.")
                .detail(e.to_string())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{token::Claims, AuthMode};

    fn token_client(exp: i64) -> AuthedClient {
        AuthedClient {
            key_id: crate::config::KeyId("a.k1".into()),
            site: 0,
            mode: AuthMode::Token,
            body_digest: None,
            token: Some(std::sync::Arc::new(Claims {
                kid: "k".into(),
                site: "a".into(),
                key: "a.k1".into(),
                exp,
                routes: vec![],
                models: vec![],
                max: 0,
                jti: "j".into(),
                kb: String::new(),
            })),
        }
    }

    fn seconds(body: &bytes::Bytes) -> serde_json::Value {
        serde_json::from_slice::<serde_json::Value>(body).unwrap()["expires_after"]["seconds"]
            .clone()
    }

    #[test]
    fn a_lifetime_that_is_not_a_whole_number_is_rewritten() {
        // A token with an hour left: a 10-minute secret is within it, as asked.
        let c = token_client(1_000 + 3_600);
        let p = "/v1/realtime/client_secrets";
        let within = br#"{"expires_after":{"anchor":"created_at","seconds":600}}"#;
        assert!(client_secret_within_token(&c, p, within, 1_000)
            .unwrap()
            .is_none());
        for odd in [r#"7200.0"#, r#""7200""#, "1e4", "null"] {
            let body = format!(r#"{{"expires_after":{{"anchor":"created_at","seconds":{odd}}}}}"#);
            let sent = client_secret_within_token(&c, p, body.as_bytes(), 1_000).unwrap();
            let s = seconds(&sent.expect("rewritten")).as_i64().unwrap();
            assert!((10..=3_600).contains(&s), "{odd}: {s}");
        }
        // Another anchor is replaced too; a signed client's body is left alone.
        let other = br#"{"expires_after":{"anchor":"later","seconds":60}}"#;
        assert!(client_secret_within_token(&c, p, other, 1_000)
            .unwrap()
            .is_some());
        let mut signed = token_client(0);
        signed.token = None;
        assert!(client_secret_within_token(&signed, p, b"{}", 1_000)
            .unwrap()
            .is_none());
    }
}
