//! `sites:` → [`Site`]s and their client keys ([`ClientKey`]).

use super::pii::validate as validate_pii;
use super::shared::{strong_enough, valid_id, Errors, LoadOptions};
use crate::config::raw::{RawConfig, RawKey, RawSite, SitePath};
use crate::config::runtime::{ClientKey, KeyAuth, KeyId, Site, SiteId};
use crate::config::secret::{self, MasterKey};
use crate::limits::tier::{site_limit_key, Tier};
use std::collections::{HashMap, HashSet};
use std::fmt::{self, Display};
use std::sync::Arc;

/// The YAML path of a site's key (`sites[3].keys[0]`), written only for a mistake.
#[derive(Clone, Copy)]
struct KeyPath<'a>(SitePath<'a>, usize);

impl Display for KeyPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.keys[{}]", self.0, self.1)
    }
}

/// The sites and the keys that identify them.
pub(super) struct Clients {
    pub sites: Vec<Site>,
    pub keys: HashMap<KeyId, ClientKey>,
    /// SHA-256 of a bearer virtual key → key id.
    pub bearer_keys: HashMap<[u8; 32], KeyId>,
}

/// What validating one site's keys needs besides the key.
struct KeyCheck<'a> {
    master_keys: &'a HashMap<String, MasterKey>,
    opts: LoadOptions,
    warnings: &'a mut Vec<String>,
}

pub(super) fn validate(
    raw: &RawConfig,
    tiers: &HashMap<String, Arc<Tier>>,
    master_keys: &HashMap<String, MasterKey>,
    opts: LoadOptions,
    errs: &mut Errors,
    warnings: &mut Vec<String>,
) -> Clients {
    let n = raw.sites.len();
    let mut clients = Clients {
        sites: Vec::with_capacity(n),
        keys: HashMap::with_capacity(n),
        bearer_keys: HashMap::new(),
    };
    let mut site_ids = HashSet::with_capacity(n);
    let mut check = KeyCheck {
        master_keys,
        opts,
        warnings,
    };
    for (i, s) in raw.sites.iter().enumerate() {
        let p = raw.site_at(i);
        if !site_ids.insert(s.id.as_str()) {
            errs.push(format!("{p}.id"), format!("duplicate site id \"{}\"", s.id));
        }
        let site = site(raw, s, p, tiers, errs);
        if s.keys.is_empty() {
            check.warnings.push(format!(
                "{p}.keys: site \"{}\" has no keys and cannot be used",
                s.id
            ));
        }
        for (j, k) in s.keys.iter().enumerate() {
            key(
                s,
                k,
                KeyPath(p, j),
                clients.sites.len(),
                &mut check,
                &mut clients,
                errs,
            );
        }
        clients.sites.push(site);
    }
    clients
}

/// A site's own settings (not its keys).
fn site(
    raw: &RawConfig,
    s: &RawSite,
    p: SitePath<'_>,
    tiers: &HashMap<String, Arc<Tier>>,
    errs: &mut Errors,
) -> Site {
    if !valid_id(&s.id) {
        errs.push(
            format!("{p}.id"),
            format!("\"{}\" is not a valid id (letters, digits, . _ -)", s.id),
        );
    }
    let tier = tiers.get(&s.tier).cloned().unwrap_or_else(|| {
        errs.push(format!("{p}.tier"), format!("unknown tier \"{}\"", s.tier));
        Arc::default()
    });
    if let Some(rs) = &s.routes {
        for (j, r) in rs.iter().enumerate() {
            if !raw.routes.iter().any(|x| &x.prefix == r) {
                errs.push(
                    format!("{p}.routes[{j}]"),
                    format!("unknown route prefix \"{r}\""),
                );
            }
        }
    }
    let mut cors = Vec::new();
    for (j, o) in s.cors_origins.iter().flatten().enumerate() {
        match validate_origin(o) {
            Ok(o) => cors.push(o),
            Err(m) => errs.push(format!("{p}.cors_origins[{j}]"), m),
        }
    }
    Site {
        id: SiteId(s.id.clone()),
        limit_key: site_limit_key(&s.id),
        tier,
        routes: s.routes.as_ref().map(|r| r.iter().cloned().collect()),
        cors_origins: cors,
        pii: s
            .pii
            .as_ref()
            .map(|x| validate_pii(x, &format!("{p}.pii"), errs)),
        disabled: s.disabled.unwrap_or(false),
    }
}

/// One client key of site `s` (at index `site` in `Runtime::sites`).
fn key(
    s: &RawSite,
    k: &RawKey,
    kp: KeyPath<'_>,
    site: usize,
    check: &mut KeyCheck<'_>,
    clients: &mut Clients,
    errs: &mut Errors,
) {
    if !valid_id(&k.id) {
        errs.push(
            format!("{kp}.id"),
            format!(
                "\"{}\" is not a valid key id (letters, digits, . _ -)",
                k.id
            ),
        );
    }
    let id = KeyId(k.id.clone());
    if clients.keys.contains_key(&id) {
        errs.push(format!("{kp}.id"), format!("duplicate key id \"{}\"", k.id));
        return;
    }
    let auth = match k.auth.as_deref().unwrap_or("hmac") {
        mode @ ("hmac" | "legacy-site-timestamp") => {
            let place = format!("sites/{}/keys/{}", s.id, k.id);
            secret_key(k, kp, mode, &place, check, errs)
        }
        "bearer" => bearer_key(k, kp, &id, clients, errs),
        other => {
            errs.push(
                format!("{kp}.auth"),
                // The value is not repeated: it may be a secret written in the wrong place.
                format!(
                    "unknown auth mode of {} characters (expected hmac, bearer or legacy-site-timestamp)",
                    other.chars().count()
                ),
            );
            None
        }
    };
    let expires_at = k.expires_at.as_deref().and_then(|t| match parse_time(t) {
        Ok(t) => Some(t),
        Err(m) => {
            errs.push(format!("{kp}.expires_at"), m);
            None
        }
    });
    if let Some(auth) = auth {
        let key = ClientKey::new(id.clone(), site, auth, expires_at);
        clients.keys.insert(id, key);
    }
}

/// An `hmac` or `legacy-site-timestamp` key: a secret, never a hash.
fn secret_key(
    k: &RawKey,
    kp: KeyPath<'_>,
    mode: &str,
    place: &str,
    check: &mut KeyCheck<'_>,
    errs: &mut Errors,
) -> Option<KeyAuth> {
    if k.hash.is_some() {
        errs.push(
            format!("{kp}.hash"),
            format!("only bearer keys have a hash; {mode} keys need a secret"),
        );
    }
    let Some(v) = &k.secret else {
        errs.push(format!("{kp}.secret"), format!("required for auth {mode}"));
        return None;
    };
    match secret::resolve(v, place, check.master_keys, check.opts.demo)
        .and_then(|sec| strong_enough(sec, check.opts))
    {
        Ok(sec) if mode == "hmac" => Some(KeyAuth::Hmac(sec)),
        Ok(sec) => {
            check.warnings.push(format!(
                "{kp}: legacy-site-timestamp binds no body and no nonce; migrate to hmac"
            ));
            Some(KeyAuth::LegacySiteTimestamp(sec))
        }
        Err(m) => {
            errs.push(format!("{kp}.secret"), m);
            None
        }
    }
}

/// A `bearer` key: only its SHA-256 is configured.
fn bearer_key(
    k: &RawKey,
    kp: KeyPath<'_>,
    id: &KeyId,
    clients: &mut Clients,
    errs: &mut Errors,
) -> Option<KeyAuth> {
    if k.secret.is_some() {
        errs.push(
            format!("{kp}.secret"),
            "bearer keys are stored as hash: \"sha256:<hex>\", never as a secret",
        );
    }
    match k.hash.as_deref().map(parse_sha256_hash) {
        None => {
            errs.push(
                format!("{kp}.hash"),
                "required for auth bearer (\"sha256:<64 hex digits>\")",
            );
            None
        }
        Some(Err(m)) => {
            errs.push(format!("{kp}.hash"), m);
            None
        }
        Some(Ok(h)) => {
            if clients.bearer_keys.insert(h, id.clone()).is_some() {
                errs.push(
                    format!("{kp}.hash"),
                    "the same bearer key is configured twice",
                );
            }
            Some(KeyAuth::Bearer(h))
        }
    }
}

/// An RFC 3339 time (`2027-01-31T00:00:00Z`, any offset) as unix seconds.
pub(super) fn parse_time(t: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(t)
        .map(|d| d.timestamp())
        .map_err(|e| format!("\"{t}\" is not an RFC 3339 time ({e}), e.g. 2027-01-31T00:00:00Z"))
}

fn parse_sha256_hash(s: &str) -> Result<[u8; 32], String> {
    let hexpart = s
        .strip_prefix("sha256:")
        .ok_or_else(|| "must look like \"sha256:<64 hex digits>\"".to_string())?;
    let bytes = hex::decode(hexpart).map_err(|_| "hash is not hexadecimal".to_string())?;
    bytes
        .try_into()
        .map_err(|_| "a sha256 hash has 64 hex digits".to_string())
}

fn validate_origin(o: &str) -> Result<String, String> {
    if o == "*" {
        return Err("wildcard origins are not allowed; list each origin".into());
    }
    let uri: http::Uri = o.parse().map_err(|_| format!("\"{o}\" is not an origin"))?;
    let ok = matches!(uri.scheme_str(), Some("http") | Some("https"))
        && uri.host().is_some()
        && uri
            .path_and_query()
            .is_none_or(|p| p.as_str() == "/" || p.as_str().is_empty())
        && !o.ends_with('/');
    if !ok {
        return Err(format!(
            "\"{o}\" is not an origin (scheme://host[:port], no path)"
        ));
    }
    Ok(o.to_ascii_lowercase())
}
