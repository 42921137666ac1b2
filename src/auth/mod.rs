//! Client authentication (SPEC §1): who is calling, proven on every request.
//!
//! [`verify`] picks the scheme from the headers present and checks it against the
//! runtime's keys, recording nothing: for `keygate-v1` it returns the [`NonceClaim`],
//! which the gateway records after the MAC verified ([`record_local`], or fleet-wide
//! through `crate::fleet::record_nonce`). The body digest is checked once the body has
//! been read ([`check_body_digest`]). Every failure carries an [`AuthReason`].

pub mod nonce;
pub mod reason;
pub mod sfv;
pub mod signature;
pub mod token;
mod window;

pub use window::carry_skews;

use crate::config::{ClientKey, KeyAuth, KeyId, Site};
use crate::error::{ErrorCode, GatewayError};
use nonce::{NonceError, NonceStore};
pub use reason::AuthReason;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use subtle::ConstantTimeEq;

/// Which scheme authenticated the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    Hmac,
    Bearer,
    Legacy,
    /// A browser token minted by a site's backend.
    Token,
}

impl AuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Hmac => "hmac",
            AuthMode::Bearer => "bearer",
            AuthMode::Legacy => "legacy-site-timestamp",
            AuthMode::Token => "token",
        }
    }
}

/// An authenticated client.
#[derive(Debug, Clone)]
pub struct AuthedClient {
    pub key_id: KeyId,
    /// Index into `Runtime::sites`.
    pub site: usize,
    pub mode: AuthMode,
    /// For `keygate-v1`: the SHA-256 the body must hash to.
    pub body_digest: Option<[u8; 32]>,
    /// For browser tokens: what the token allows.
    pub token: Option<std::sync::Arc<token::Claims>>,
}

/// A refusal, with the reason label for `keygate_auth_failures_total{reason}`.
#[derive(Debug, Clone)]
pub struct AuthFailure {
    pub code: ErrorCode,
    pub reason: AuthReason,
    pub detail: &'static str,
}

impl AuthFailure {
    fn unauth(reason: AuthReason, detail: &'static str) -> Self {
        AuthFailure {
            code: ErrorCode::Unauthenticated,
            reason,
            detail,
        }
    }

    /// The client-facing error.
    pub fn to_error(&self) -> GatewayError {
        let mut e = GatewayError::new(self.code, self.reason.message()).detail(format!(
            "{}: {}",
            self.reason.as_str(),
            self.detail
        ));
        if self.code == ErrorCode::UpstreamUnavailable {
            e = e.retry_after(std::time::Duration::from_secs(1));
        }
        e
    }
}

/// The parts of a request that authentication reads.
pub struct AuthInput<'a> {
    pub headers: &'a http::HeaderMap,
    pub method: &'a str,
    /// Normalised (lower-case, default port dropped).
    pub authority: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// Unix seconds.
    pub now: i64,
}

fn header_values<'a>(h: &'a http::HeaderMap, name: &str) -> Result<Vec<&'a str>, AuthFailure> {
    h.get_all(name)
        .iter()
        .map(|v| {
            v.to_str()
                .map_err(|_| AuthFailure::unauth(AuthReason::Malformed, "non-ASCII auth header"))
        })
        .collect()
}

fn single<'a>(h: &'a http::HeaderMap, name: &str) -> Result<Option<&'a str>, AuthFailure> {
    let v = header_values(h, name)?;
    match v.len() {
        0 => Ok(None),
        1 => Ok(Some(v[0].trim())),
        _ => Err(AuthFailure::unauth(
            AuthReason::Malformed,
            "repeated auth header",
        )),
    }
}

/// A verified `keygate-v1` request's nonce, still to be recorded (locally or fleet-wide).
#[derive(Debug, Clone)]
pub struct NonceClaim {
    /// The site's stable key (`Site::limit_key`): in a Redis Cluster the hash tag its
    /// nonces share with its counters, so one server-side script can touch both.
    pub site_key: u64,
    pub key_id: String,
    pub nonce: String,
    /// The signature's `created` (unix seconds).
    pub created: i64,
    /// Unix second until which the nonce is remembered: the last second the signature
    /// could be fresh, plus [`nonce::NONCE_GRACE_S`].
    pub expires_at: i64,
    /// The most nonces the site's tier lets it have live at once ([`nonce_share`]).
    pub share: Option<usize>,
}

/// The most nonces a site may hold in the local store: what its request limits let it
/// send in a nonce's lifetime, twice over (requests its tier refuses are recorded too, so
/// that they cannot be replayed later). Without request limits, a quarter of the store.
/// A site that floods past it gets 503 for its own requests; others are not touched.
pub fn nonce_share(tier: &crate::limits::tier::Tier, lifetime_s: i64) -> Option<usize> {
    let minutes = (lifetime_s.max(0) as u64).div_ceil(60) + 1;
    let bounds = [
        tier.requests_per_minute.map(|n| n.saturating_mul(minutes)),
        tier.requests_per_hour,
        tier.requests_per_day,
    ];
    let least = bounds.into_iter().flatten().min()?;
    Some(
        usize::try_from(least.saturating_mul(2))
            .unwrap_or(usize::MAX)
            .max(64),
    )
}

/// The failure for a nonce seen before.
pub fn replayed() -> AuthFailure {
    AuthFailure {
        code: ErrorCode::Replayed,
        reason: AuthReason::Replayed,
        detail: "nonce reused",
    }
}

/// The failure when no nonce can be recorded (store full, or shared store down).
pub fn nonce_store_unavailable(reason: AuthReason) -> AuthFailure {
    AuthFailure {
        code: ErrorCode::UpstreamUnavailable,
        reason,
        detail: "nonce store unavailable",
    }
}

/// The failure for a signature older than a (shortened) window.
pub fn stale(detail: &'static str) -> AuthFailure {
    AuthFailure {
        code: ErrorCode::StaleRequest,
        reason: AuthReason::Stale,
        detail,
    }
}

/// Record a claim in the process-local store.
pub fn record_local(nonces: &NonceStore, claim: &NonceClaim, now: i64) -> Result<(), AuthFailure> {
    let owner = nonce::Owner {
        id: claim.site_key,
        share: claim.share,
    };
    match nonces.check_and_insert_for(owner, &claim.key_id, &claim.nonce, claim.expires_at, now) {
        Ok(()) => Ok(()),
        Err(NonceError::Replayed) => Err(replayed()),
        Err(NonceError::Full) => Err(nonce_store_unavailable(AuthReason::NonceStoreFull)),
    }
}

/// What a request's credentials are checked against (borrowed from the runtime).
pub struct Keys<'a> {
    pub keys: &'a HashMap<KeyId, ClientKey>,
    /// SHA-256 of a bearer virtual key → key id.
    pub bearer: &'a HashMap<[u8; 32], KeyId>,
    pub tokens: &'a token::TokenKeys,
    /// By index (`ClientKey::site`): a browser token names its site.
    pub sites: &'a [Site],
    /// Header names a client may sign besides the required components.
    pub signed_headers: &'a HashSet<String>,
    /// Allowed `@authority` values; `None` accepts any.
    pub hostnames: Option<&'a HashSet<String>>,
    /// How old (seconds) a signature's `created` may be.
    pub clock_skew: i64,
    /// How far (seconds) in the future `created` may be (`server.clock_skew_future_s`).
    pub clock_skew_future: i64,
    /// Smaller skews in force before a reload raised it (`State::earlier_skews`).
    pub earlier_skews: &'a [(i64, i64)],
}

impl<'a> Keys<'a> {
    /// The window a signature created at `created` is checked against
    /// ([`window::skew_for`]).
    fn window(&self, created: i64, expires: Option<i64>, now: i64) -> Result<i64, AuthFailure> {
        let skew = window::skew_for(self.clock_skew, self.earlier_skews, created);
        window::window_check(created, expires, now, (skew, self.clock_skew_future)).map_err(stale)
    }

    /// The key `id` if it may authenticate now: an expired key, or a key of a disabled
    /// site, is treated exactly like an unknown one (same answer, same time spent).
    fn usable_key(&self, id: &KeyId, now: i64) -> Option<&'a ClientKey> {
        self.keys.get(id).filter(|k| k.usable(self.sites, now))
    }
}

/// Check the credentials without recording anything: for `keygate-v1` the nonce is
/// returned, to be recorded by the caller before the request is admitted.
pub fn verify(
    rt: &Keys<'_>,
    req: &AuthInput<'_>,
) -> Result<(AuthedClient, Option<NonceClaim>), AuthFailure> {
    let h = req.headers;
    if h.contains_key("signature-input") || h.contains_key("signature") {
        return authenticate_hmac(rt, req).map(|(c, n)| (c, Some(n)));
    }
    if let Some(token) = bearer_token(h)? {
        if token.starts_with("kgt_") {
            return authenticate_token(rt, token, req.now).map(|c| (c, None));
        }
        return authenticate_bearer(rt, token, req.now).map(|c| (c, None));
    }
    if h.contains_key("x-site-identifier") {
        return authenticate_legacy(rt, req).map(|c| (c, None));
    }
    Err(AuthFailure::unauth(AuthReason::Missing, "no credentials"))
}

fn bearer_token(h: &http::HeaderMap) -> Result<Option<&str>, AuthFailure> {
    if let Some(a) = single(h, "authorization")? {
        let (scheme, token) = a.split_once(' ').unwrap_or((a, ""));
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(AuthFailure::unauth(
                AuthReason::Malformed,
                "Authorization is not a bearer token",
            ));
        }
        return Ok(Some(token.trim()));
    }
    if let Some(k) = single(h, "x-api-key")? {
        return Ok(Some(k));
    }
    single(h, "x-goog-api-key")
}

/// A key of the same length as real secrets, used to spend the same time on unknown keys.
const DUMMY_KEY: &[u8] = b"kgs_unknown_key_dummy_0000000000000000000";

fn authenticate_hmac(
    rt: &Keys<'_>,
    req: &AuthInput<'_>,
) -> Result<(AuthedClient, NonceClaim), AuthFailure> {
    let h = req.headers;
    let parsed = signature::parse(
        &header_values(h, "signature-input")?,
        &header_values(h, "signature")?,
        rt.signed_headers,
    )
    .map_err(|e| match e {
        signature::SigError::Missing => {
            AuthFailure::unauth(AuthReason::Missing, "signature header missing")
        }
        signature::SigError::Malformed(d) => AuthFailure::unauth(AuthReason::Malformed, d),
    })?;
    if let Some(names) = rt.hostnames {
        if !names.contains(req.authority) {
            return Err(AuthFailure::unauth(
                AuthReason::BadAuthority,
                "authority not in server.hostnames",
            ));
        }
    }
    let window_end = rt.window(parsed.params.created, parsed.params.expires, req.now)?;
    let digest_header = single(h, "content-digest")?
        .ok_or_else(|| AuthFailure::unauth(AuthReason::Malformed, "Content-Digest missing"))?;
    let body_digest = signature::parse_content_digest(digest_header)
        .map_err(|e| AuthFailure::unauth(AuthReason::Malformed, e.reason()))?;

    let parts = signature::RequestParts {
        method: req.method,
        authority: req.authority,
        path: req.path,
        query: req.query,
        headers: h,
    };
    let base = signature::signature_base(&parts, &parsed)
        .map_err(|e| AuthFailure::unauth(AuthReason::Malformed, e.reason()))?;
    let key = rt.usable_key(&KeyId(parsed.params.keyid.clone()), req.now);
    let (secret, found): (&[u8], bool) = match key.map(|k| &k.auth) {
        Some(KeyAuth::Hmac(s)) => (s.expose_secret().as_bytes(), true),
        _ => (DUMMY_KEY, false),
    };
    let ok = signature::verify_mac(secret, &base, &parsed.signature);
    let key = match (ok && found, key) {
        (true, Some(k)) => k,
        _ => {
            return Err(AuthFailure::unauth(
                AuthReason::BadSignature,
                "unknown key or bad MAC",
            ))
        }
    };
    let expires_at = window_end.saturating_add(nonce::NONCE_GRACE_S);
    let site = rt.sites.get(key.site);
    let claim = NonceClaim {
        site_key: site.map_or(0, |s| s.limit_key),
        share: site.and_then(|s| nonce_share(&s.tier, expires_at - req.now)),
        key_id: parsed.params.keyid.clone(),
        nonce: parsed.params.nonce.clone(),
        created: parsed.params.created,
        expires_at,
    };
    let client = AuthedClient {
        key_id: key.id.clone(),
        site: key.site,
        mode: AuthMode::Hmac,
        body_digest: Some(body_digest),
        token: None,
    };
    Ok((client, claim))
}

/// SHA-256 of a bearer virtual key, as stored in config (`sha256:<hex>`).
pub fn bearer_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn authenticate_bearer(rt: &Keys<'_>, token: &str, now: i64) -> Result<AuthedClient, AuthFailure> {
    let hash = bearer_hash(token);
    let key = rt
        .bearer
        .get(&hash)
        .and_then(|id| rt.usable_key(id, now))
        .ok_or_else(|| AuthFailure::unauth(AuthReason::BadSignature, "unknown bearer key"))?;
    match &key.auth {
        KeyAuth::Bearer(stored) if bool::from(stored.ct_eq(&hash)) => Ok(AuthedClient {
            key_id: key.id.clone(),
            site: key.site,
            mode: AuthMode::Bearer,
            body_digest: None,
            token: None,
        }),
        _ => Err(AuthFailure::unauth(
            AuthReason::BadSignature,
            "unknown bearer key",
        )),
    }
}

fn authenticate_token(rt: &Keys<'_>, token: &str, now: i64) -> Result<AuthedClient, AuthFailure> {
    let claims = rt.tokens.verify(token, now).map_err(|e| match e {
        token::TokenError::Expired => stale("token expired"),
        token::TokenError::Invalid(d) => AuthFailure::unauth(AuthReason::BadSignature, d),
    })?;
    // The issuing key must still exist and belong to the site: removing a key revokes
    // its tokens at the next reload.
    let key = rt
        .usable_key(&KeyId(claims.key.clone()), now)
        .filter(|k| rt.sites.get(k.site).is_some_and(|s| s.id.0 == claims.site))
        .filter(|k| claims.kb.is_empty() || k.binding_is(&claims.kb))
        .ok_or_else(|| {
            AuthFailure::unauth(
                AuthReason::BadSignature,
                "token issuer no longer configured",
            )
        })?;
    Ok(AuthedClient {
        key_id: key.id.clone(),
        site: key.site,
        mode: AuthMode::Token,
        body_digest: None,
        token: Some(std::sync::Arc::new(claims)),
    })
}

/// The legacy plugin MAC: `hex(HMAC-SHA256(secret, site_identifier + "|" + timestamp))`.
pub fn legacy_signature(secret: &[u8], site_identifier: &str, timestamp: &str) -> String {
    let msg = format!("{site_identifier}|{timestamp}");
    hex::encode(signature::mac(secret, &msg))
}

fn authenticate_legacy(rt: &Keys<'_>, req: &AuthInput<'_>) -> Result<AuthedClient, AuthFailure> {
    let h = req.headers;
    let id = single(h, "x-site-identifier")?.unwrap_or("");
    let ts_text = single(h, "x-timestamp")?
        .ok_or_else(|| AuthFailure::unauth(AuthReason::Malformed, "X-Timestamp missing"))?;
    let sig_hex = single(h, "x-signature")?
        .ok_or_else(|| AuthFailure::unauth(AuthReason::Malformed, "X-Signature missing"))?;
    if ts_text.is_empty() || ts_text.len() > 12 || !ts_text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AuthFailure::unauth(
            AuthReason::Malformed,
            "X-Timestamp is not unix seconds",
        ));
    }
    let ts: i64 = ts_text
        .parse()
        .map_err(|_| AuthFailure::unauth(AuthReason::Malformed, "bad X-Timestamp"))?;
    rt.window(ts, None, req.now)?;
    let given = hex::decode(sig_hex)
        .map_err(|_| AuthFailure::unauth(AuthReason::BadSignature, "X-Signature is not hex"))?;
    let key = rt.usable_key(&KeyId(id.to_string()), req.now);
    let (secret, found): (&[u8], bool) = match key.map(|k| &k.auth) {
        Some(KeyAuth::LegacySiteTimestamp(s)) => (s.expose_secret().as_bytes(), true),
        _ => (DUMMY_KEY, false),
    };
    let expected = signature::mac(secret, &format!("{id}|{ts_text}"));
    let ok = given.len() == expected.len() && bool::from(given.as_slice().ct_eq(&expected));
    match (ok && found, key) {
        (true, Some(k)) => Ok(AuthedClient {
            key_id: k.id.clone(),
            site: k.site,
            mode: AuthMode::Legacy,
            body_digest: None,
            token: None,
        }),
        _ => Err(AuthFailure::unauth(
            AuthReason::BadSignature,
            "unknown key or bad legacy signature",
        )),
    }
}

/// Check a fully read body against the digest the client signed (constant time).
pub fn check_body_digest(client: &AuthedClient, body: &[u8]) -> Result<(), AuthFailure> {
    match DigestCheck::of(client) {
        None => Ok(()),
        Some(mut d) => {
            d.update(body);
            d.finish()
        }
    }
}

/// [`check_body_digest`] over a body that passes in chunks (a streamed upload).
#[derive(Clone)]
pub struct DigestCheck {
    hasher: Sha256,
    expected: [u8; 32],
}

impl DigestCheck {
    /// The check `client`'s signature asks for; `None` when it covers no body digest.
    pub fn of(client: &AuthedClient) -> Option<DigestCheck> {
        client.body_digest.map(|expected| DigestCheck {
            hasher: Sha256::new(),
            expected,
        })
    }

    pub fn update(&mut self, chunk: &[u8]) {
        self.hasher.update(chunk);
    }

    /// Whether the bytes seen hash to `Content-Digest`.
    pub fn finish(self) -> Result<(), AuthFailure> {
        let actual: [u8; 32] = self.hasher.finalize().into();
        if bool::from(actual.ct_eq(&self.expected)) {
            Ok(())
        } else {
            Err(AuthFailure::unauth(
                AuthReason::DigestMismatch,
                "body does not hash to Content-Digest",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sites_nonce_share_is_what_its_limits_let_it_send_twice_over() {
        use crate::limits::tier::Tier;
        let tier = |rpm, rph| Tier {
            requests_per_minute: rpm,
            requests_per_hour: rph,
            ..Tier::default()
        };
        // 420 s of life: 8 minutes' worth, twice over.
        assert_eq!(nonce_share(&tier(Some(100), None), 420), Some(1600));
        assert_eq!(nonce_share(&tier(Some(100), Some(300)), 420), Some(600));
        assert_eq!(
            nonce_share(&tier(Some(1), None), 420),
            Some(64),
            "at least 64"
        );
        assert_eq!(nonce_share(&tier(None, None), 420), None);
    }

    #[test]
    fn legacy_signature_is_hex_hmac_of_id_and_timestamp() {
        let s = legacy_signature(b"secret", "site", "123");
        assert_eq!(s.len(), 64);
        assert_eq!(s, hex::encode(signature::mac(b"secret", "site|123")));
    }
}
