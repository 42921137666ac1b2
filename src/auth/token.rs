//! Browser tokens (`kgt_…`): short-lived, scoped, self-contained.
//!
//! A site's backend mints one with a `keygate-v1`-signed `POST /keygate/v1/tokens`; the
//! browser sends it as `Authorization: Bearer kgt_…`. The token is
//! `kgt_<base64url(claims JSON)>.<base64url(HMAC-SHA256(token key, claims JSON))>`; the
//! token key is derived from a master key (`HMAC-SHA256(master key,
//! "keygate:tokens:v1:<id>")`) and named in the claims, so tokens minted under a master
//! key that is being rotated out stay valid until they expire, as long as that key is
//! still listed. No store is needed, except a bounded counter for `max_requests`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::HashMap;
use zeroize::Zeroizing;

/// What a token allows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// Token key id (the master key it was derived from).
    pub kid: String,
    /// The issuing site and key.
    pub site: String,
    pub key: String,
    /// Expiry, unix seconds.
    pub exp: i64,
    /// Route prefixes allowed (empty: the site's routes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    /// Models allowed (empty: the route's models).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// Requests allowed over the token's life (0: unlimited).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max: u64,
    /// Random id (counts `max` uses).
    pub jti: String,
    /// The issuing key's binding ([`crate::config::ClientKey::binding`]): a token dies
    /// with the secret it was minted under (a rotated secret, a key id given again). Empty
    /// in tokens minted before it existed, which are taken until they expire.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kb: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Past its `exp` (refused as stale, like an old signature).
    Expired,
    /// Malformed, signed by an unknown key, or a bad MAC.
    Invalid(&'static str),
}

/// Keys that mint and verify tokens, by master key id. `Debug` shows ids only.
#[derive(Default)]
pub struct TokenKeys {
    keys: HashMap<String, Zeroizing<[u8; 32]>>,
    /// The id new tokens are minted under.
    pub current: Option<String>,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TokenKeys({:?}, current {:?})",
            self.keys.keys().collect::<Vec<_>>(),
            self.current
        )
    }
}

type HmacSha256 = Hmac<Sha256>;

fn mac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    m.update(data);
    m.finalize().into_bytes().into()
}

impl TokenKeys {
    /// Derive a token key from master key bytes.
    pub fn insert(&mut self, id: &str, master: &[u8; 32]) {
        let k = mac(master, format!("keygate:tokens:v1:{id}").as_bytes());
        self.keys.insert(id.to_string(), Zeroizing::new(k));
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Mint a token for `claims` (its `kid` is set to the current key).
    pub fn mint(&self, mut claims: Claims) -> Option<String> {
        let kid = self.current.clone()?;
        let key = self.keys.get(&kid)?;
        claims.kid = kid;
        let payload = serde_json::to_vec(&claims).ok()?;
        let sig = mac(key.as_ref(), &payload);
        Some(format!(
            "kgt_{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(sig)
        ))
    }

    /// Verify a token's MAC and expiry at `now` (unix seconds).
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let claims = self.verify_mac(token).map_err(TokenError::Invalid)?;
        if claims.exp < now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }

    /// The claims of a token whose MAC verifies (expiry not checked).
    fn verify_mac(&self, token: &str) -> Result<Claims, &'static str> {
        let body = token.strip_prefix("kgt_").ok_or("not a browser token")?;
        let (payload_b64, sig_b64) = body.split_once('.').ok_or("malformed token")?;
        if payload_b64.len() > 4096 {
            return Err("malformed token");
        }
        let payload = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| "malformed token")?;
        let sig = URL_SAFE_NO_PAD
            .decode(sig_b64)
            .map_err(|_| "malformed token")?;
        #[derive(Deserialize)]
        struct Kid {
            kid: String,
        }
        let kid: Kid = serde_json::from_slice(&payload).map_err(|_| "malformed token")?;
        let key = self.keys.get(&kid.kid).ok_or("token key unknown")?;
        let mut m =
            <HmacSha256 as Mac>::new_from_slice(key.as_ref()).unwrap_or_else(|_| unreachable!());
        m.update(&payload);
        m.verify_slice(&sig).map_err(|_| "bad token MAC")?;
        serde_json::from_slice(&payload).map_err(|_| "malformed token")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> TokenKeys {
        let mut k = TokenKeys::default();
        k.insert("k1", &[1u8; 32]);
        k.insert("k2", &[2u8; 32]);
        k.current = Some("k2".into());
        k
    }

    fn claims(exp: i64) -> Claims {
        Claims {
            kid: String::new(),
            site: "s".into(),
            key: "s.k1".into(),
            exp,
            routes: vec!["/openai/".into()],
            models: vec![],
            max: 3,
            jti: "abc".into(),
            kb: String::new(),
        }
    }

    #[test]
    fn mint_verify_expire_tamper() {
        let k = keys();
        let t = k.mint(claims(1000)).unwrap();
        let c = k.verify(&t, 999).unwrap();
        assert_eq!((c.kid.as_str(), c.site.as_str(), c.max), ("k2", "s", 3));
        assert_eq!(k.verify(&t, 1001), Err(TokenError::Expired));
        // Flip a byte in the payload: the MAC fails.
        let mut bytes = t.clone().into_bytes();
        bytes[6] = if bytes[6] == b'A' { b'B' } else { b'A' };
        assert!(k.verify(std::str::from_utf8(&bytes).unwrap(), 0).is_err());
        // Claims re-signed under nobody's key fail too.
        assert!(k.verify("kgt_eyJraWQiOiJrOSJ9.AAAA", 0).is_err());
    }

    #[test]
    fn tokens_from_a_previous_key_verify_while_it_is_listed() {
        let mut old = keys();
        old.current = Some("k1".into());
        let t = old.mint(claims(1000)).unwrap();
        let k = keys();
        assert_eq!(k.verify(&t, 0).unwrap().kid, "k1");
        let mut only_new = TokenKeys::default();
        only_new.insert("k2", &[2u8; 32]);
        assert_eq!(
            only_new.verify(&t, 0),
            Err(TokenError::Invalid("token key unknown"))
        );
    }
}
