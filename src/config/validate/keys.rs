//! `master_keys:` (the keys `enc:v1` secrets are sealed under, and browser tokens
//! signed with) and `tokens:`.

use super::shared::{valid_id, Errors};
use crate::auth::token::TokenKeys;
use crate::config::raw::{RawConfig, RawMasterKey};
use crate::config::secret::{self, MasterKey};
use std::collections::HashMap;
use std::time::Duration;

/// `master_keys:` by id (their bytes read from `env:`/`file:` sources).
pub(super) fn master_keys(raw: &[RawMasterKey], errs: &mut Errors) -> HashMap<String, MasterKey> {
    let mut out = HashMap::new();
    for (i, mk) in raw.iter().enumerate() {
        let p = format!("master_keys[{i}]");
        if !valid_id(&mk.id) {
            errs.push(
                format!("{p}.id"),
                format!("\"{}\" is not a valid id", mk.id),
            );
        }
        if out.contains_key(&mk.id) {
            errs.push(
                format!("{p}.id"),
                format!("duplicate master key id \"{}\"", mk.id),
            );
            continue;
        }
        match secret::read_source(&mk.source) {
            Ok(Some(text)) => match MasterKey::from_base64(&text) {
                Ok(k) => {
                    out.insert(mk.id.clone(), k);
                }
                Err(m) => errs.push(format!("{p}.source"), m),
            },
            Ok(None) => errs.push(format!("{p}.source"), "must be env:NAME or file:/path"),
            Err(m) => errs.push(format!("{p}.source"), m),
        }
    }
    out
}

/// The browser-token keys (one per master key; the first signs unless `tokens.key`
/// names another), the longest lifetime a token may ask for, and the mints allowed per
/// client address per minute.
pub(super) fn tokens(
    raw: &RawConfig,
    master_keys: &HashMap<String, MasterKey>,
    errs: &mut Errors,
) -> (TokenKeys, Duration, u64) {
    let mut tokens = TokenKeys::default();
    for mk in &raw.master_keys {
        if let Some(k) = master_keys.get(&mk.id) {
            tokens.insert(&mk.id, k.bytes());
        }
    }
    tokens.current = raw.master_keys.first().map(|m| m.id.clone());
    let mut token_max_ttl = Duration::from_secs(300);
    let mut mints_per_ip = 60;
    if let Some(t) = &raw.tokens {
        match t.mint_per_ip_per_minute {
            Some(0) | Some(100_001..) => errs.push(
                "tokens.mint_per_ip_per_minute",
                "must be between 1 and 100000",
            ),
            Some(n) => mints_per_ip = n,
            None => {}
        }
        match t.max_ttl_s {
            Some(0) | Some(86_401..) => {
                errs.push("tokens.max_ttl_s", "must be between 1 and 86400")
            }
            Some(s) => token_max_ttl = Duration::from_secs(s),
            None => {}
        }
        if let Some(k) = &t.key {
            if master_keys.contains_key(k) {
                tokens.current = Some(k.clone());
            } else {
                errs.push("tokens.key", format!("unknown master key \"{k}\""));
            }
        }
    }
    (tokens, token_max_ttl, mints_per_ip)
}
