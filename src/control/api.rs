//! The admin API (`/admin/v1/…` on `admin_listen` only, SPEC §8.4). Every call is
//! `keygate-v1`-signed with an `admin.keys` key (digest, nonce and replay protection as
//! for clients); anything else is 401. Changes go through [`Control::change`]: applied
//! to a copy, validated with the YAML as one config, stored, then installed.

use super::changes::{Changes, SiteChange, StoredKey};
use super::Control;
use crate::auth::{self, signature::normalize_authority, AuthInput, AuthMode};
use crate::config::{secret, ClientKey, KeyId, Runtime, Site};
use crate::error::{ErrorCode, GatewayError};
use crate::limits::Counter;
use crate::telemetry::audit::AdminLine;
use http::Response;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

/// Largest admin request body.
const MAX_BODY: usize = 64 * 1024;
/// Time allowed to receive it.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// What a call did, for its answer and its audit line.
struct Done {
    status: u16,
    body: Value,
    action: &'static str,
    site: Option<String>,
    key_id: Option<String>,
}

impl Done {
    fn new(status: u16, action: &'static str, body: Value) -> Done {
        Done {
            status,
            body,
            action,
            site: None,
            key_id: None,
        }
    }
}

fn error(code: ErrorCode, message: impl Into<String>) -> GatewayError {
    GatewayError::new(code, message)
}

fn reply(status: u16, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_default()
}

/// One admin API call: authenticate, dispatch, answer, audit.
pub async fn handle(
    control: &Control,
    session: &mut pingora::protocols::http::ServerSession,
) -> Response<Vec<u8>> {
    let started = std::time::Instant::now();
    let request_id = {
        let mut id = [0u8; 12];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut id);
        hex::encode(id)
    };
    let method = session.req_header().method.as_str().to_string();
    let path = session.req_header().uri.path().to_string();
    let ip = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    let mut admin_key = None;
    let result = match authenticate(control, session).await {
        Ok((key, body)) => {
            admin_key = Some(key);
            route(control, &method, &path, &body).await
        }
        Err(e) => Err(e),
    };
    let (status, body, done) = match result {
        Ok(d) => (
            d.status,
            serde_json::to_vec(&d.body).unwrap_or_default(),
            Some(d),
        ),
        Err(e) => {
            // A 5xx's cause (a state file that cannot be written, Redis unreachable) is
            // the operator's to see: the caller gets the code only.
            if e.code.status() >= 500 {
                log::error!(
                    "admin: {method} {} failed: {}",
                    crate::telemetry::audit::truncate(&path, crate::telemetry::audit::PATH_MAX),
                    e.detail.as_deref().unwrap_or(&e.message)
                );
            }
            (e.code.status(), e.body(&request_id), None)
        }
    };
    control.state.audit.record_event(&AdminLine {
        ts: humantime::format_rfc3339_millis(std::time::SystemTime::now()),
        event: "admin",
        request_id: &request_id,
        method: &method,
        path: crate::telemetry::audit::truncate(&path, crate::telemetry::audit::PATH_MAX),
        admin_key: admin_key.as_deref(),
        action: done.as_ref().map(|d| d.action),
        site: done.as_ref().and_then(|d| d.site.as_deref()),
        key_id: done.as_ref().and_then(|d| d.key_id.as_deref()),
        status,
        version: control.changes.lock().version,
        client_ip: ip,
        duration_ms: started.elapsed().as_secs_f64() * 1000.0,
    });
    reply(status, body)
}

/// Verify the call's signature with an admin key, its body digest and its nonce; the
/// admin key id and the body.
async fn authenticate(
    control: &Control,
    session: &mut pingora::protocols::http::ServerSession,
) -> Result<(String, Vec<u8>), GatewayError> {
    let rt = control.state.runtime.load_full();
    let unauth = |m: &str| error(ErrorCode::Unauthenticated, m.to_string());
    let Some(admin) = &rt.admin else {
        return Err(unauth("The admin API is off (no admin.keys)."));
    };
    let body = read_body(session).await?;
    let req = session.req_header();
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let authority = normalize_authority(host, false);
    let now = crate::clock::now_s();
    let none = Default::default();
    let keys = auth::Keys {
        keys: &admin.keys,
        bearer: &none,
        tokens: &rt.tokens,
        sites: &[],
        signed_headers: &rt.server.signed_headers,
        hostnames: None,
        clock_skew: rt.server.clock_skew.as_secs() as i64,
        clock_skew_future: rt.server.clock_skew_future.as_secs() as i64,
        earlier_skews: &control.state.earlier_skews.load(),
    };
    let input = AuthInput {
        headers: &req.headers,
        method: req.method.as_str(),
        authority: &authority,
        path: req.uri.path(),
        query: req.uri.query(),
        now,
    };
    let fail = |f: auth::AuthFailure| error(f.code, f.reason.message());
    let (client, claim) = auth::verify(&keys, &input).map_err(fail)?;
    let (AuthMode::Hmac, Some(claim)) = (client.mode, claim) else {
        return Err(unauth("Admin calls must be keygate-v1 signed."));
    };
    auth::check_body_digest(&client, &body).map_err(fail)?;
    let fleet = control.state.fleet.as_deref();
    crate::fleet::record_nonce(fleet, &control.state.admin_nonces, &claim, now)
        .await
        .map_err(fail)?;
    Ok((client.key_id.0, body))
}

async fn read_body(
    session: &mut pingora::protocols::http::ServerSession,
) -> Result<Vec<u8>, GatewayError> {
    let mut body = Vec::new();
    let read = async {
        while let Some(chunk) = session
            .read_request_body()
            .await
            .map_err(|_| GatewayError::bad_request("The request body could not be read."))?
        {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(error(
                    ErrorCode::BodyTooLarge,
                    format!("Admin request bodies are at most {MAX_BODY} bytes."),
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(())
    };
    tokio::time::timeout(BODY_TIMEOUT, read)
        .await
        .map_err(|_| GatewayError::bad_request("The request body did not arrive in time."))??;
    Ok(body)
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, GatewayError> {
    serde_json::from_slice(body)
        .map_err(|e| GatewayError::bad_request(format!("The request body is not valid: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSite {
    id: String,
    tier: String,
    routes: Option<Vec<String>>,
    cors_origins: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    auth: Option<String>,
    expires_at: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SitePatch {
    tier: Option<String>,
    routes: Option<Vec<String>>,
    cors_origins: Option<Vec<String>>,
}

async fn route(
    control: &Control,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<Done, GatewayError> {
    let rest = path.strip_prefix("/admin/v1/").unwrap_or("");
    let parts: Vec<&str> = rest.split('/').collect();
    let not_found = || error(ErrorCode::NotFound, "No such admin endpoint.");
    let mut done = match (method, parts.as_slice()) {
        ("GET", ["sites"]) => {
            let rt = control.state.runtime.load();
            let changes = control.changes();
            // Keys grouped by site in one pass: the list costs sites + keys, not their product.
            let mut keys: Vec<Vec<Value>> = vec![vec![]; rt.sites.len()];
            for k in rt.keys.values() {
                if let Some(list) = keys.get_mut(k.site) {
                    list.push(key_view(k));
                }
            }
            let sites: Vec<Value> = rt
                .sites
                .iter()
                .zip(keys)
                .map(|(s, keys)| site_view(&rt, s, keys, &changes))
                .collect();
            Done::new(200, "list_sites", json!({ "sites": sites }))
        }
        ("GET", ["sites", id]) => {
            let rt = control.state.runtime.load();
            let site = find(&rt, id)?;
            let mut v = one_site_view(&rt, site, &control.changes());
            v["usage"] = usage(control, site);
            Done::new(200, "show_site", json!({ "site": v }))
        }
        ("POST", ["sites"]) => create_site(control, parse(body)?).await?,
        ("POST", ["sites", id, "keys"]) => add_key(control, id, parse(body)?).await?,
        ("DELETE", ["sites", id, "keys", key]) => remove_key(control, id, key).await?,
        ("POST", ["sites", id, action @ ("disable" | "enable")]) => {
            let off = *action == "disable";
            let mut d = update(control, id, |ch| ch.disabled = Some(off)).await?;
            d.action = if off { "disable_site" } else { "enable_site" };
            d
        }
        ("PATCH", ["sites", id]) => {
            let p: SitePatch = parse(body)?;
            let mut d = update(control, id, move |ch| {
                ch.tier = p.tier.clone().or(ch.tier.take());
                ch.routes = p.routes.clone().or(ch.routes.take());
                ch.cors_origins = p.cors_origins.clone().or(ch.cors_origins.take());
            })
            .await?;
            d.action = "update_site";
            d
        }
        _ => return Err(not_found()),
    };
    if done.site.is_none() {
        done.site = parts.get(1).map(|s| s.to_string());
    }
    Ok(done)
}

fn find<'a>(rt: &'a Runtime, id: &str) -> Result<&'a Site, GatewayError> {
    rt.sites
        .iter()
        .find(|s| s.id.0 == id)
        .ok_or_else(|| error(ErrorCode::NotFound, format!("No site \"{id}\".")))
}

/// A key as the API shows it: never its secret or hash.
fn key_view(k: &ClientKey) -> Value {
    json!({
        "id": k.id.0,
        "auth": k.auth.name(),
        "expires_at": k.expires_at.map(rfc3339),
    })
}

/// One site as the API shows it, its keys found by a scan of the key map.
fn one_site_view(rt: &Runtime, site: &Site, changes: &Changes) -> Value {
    let index = rt.sites.iter().position(|s| std::ptr::eq(s, site));
    let keys = rt
        .keys
        .values()
        .filter(|k| Some(k.site) == index)
        .map(key_view)
        .collect();
    site_view(rt, site, keys, changes)
}

/// A site as the API shows it: its settings and `keys` (its own), never a secret.
fn site_view(rt: &Runtime, site: &Site, mut keys: Vec<Value>, changes: &Changes) -> Value {
    keys.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    let mut routes: Option<Vec<&String>> = site.routes.as_ref().map(|r| r.iter().collect());
    if let Some(r) = &mut routes {
        r.sort();
    }
    let created = changes.sites.get(&site.id.0).is_some_and(|c| c.created);
    json!({
        "id": site.id.0,
        "tier": tier_name(rt, site),
        "disabled": site.disabled,
        "routes": routes,
        "cors_origins": site.cors_origins,
        "keys": keys,
        "source": if created { "api" } else { "yaml" },
    })
}

fn tier_name(rt: &Runtime, site: &Site) -> Option<String> {
    rt.tiers
        .iter()
        .find(|(_, t)| Arc::ptr_eq(t, &site.tier))
        .map(|(n, _)| n.clone())
}

fn rfc3339(t: i64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// What the site has used now (this node's view; fleet-wide counts are synced into it).
fn usage(control: &Control, site: &Site) -> Value {
    let limiter = control.state.limiter.load();
    let store = limiter.store();
    let key = store.local().key(site.limit_key);
    let now = crate::clock::now_ms();
    let n = |c: Counter| store.get(c, key, now).estimate();
    json!({
        "requests": {
            "minute": n(Counter::RequestsMinute).round(),
            "hour": n(Counter::RequestsHour).round(),
            "day": n(Counter::RequestsDay).round(),
        },
        "tokens": { "day": n(Counter::TokensDay).round() },
        "usd": { "day": n(Counter::UsdDay) / 1e6, "month": n(Counter::UsdMonth) / 1e6 },
    })
}

/// A key made by the API: what is stored, and the secret to show once.
fn new_key(
    seal: Option<&(String, crate::config::secret::MasterKey)>,
    site: &str,
    key_id: &str,
    auth: &str,
    expires_at: Option<String>,
) -> Result<(StoredKey, Zeroizing<String>), GatewayError> {
    let (secret, hash, shown) = match auth {
        "hmac" => {
            let Some((mk_id, mk)) = seal else {
                return Err(GatewayError::bad_request(
                    "A new hmac secret is sealed under the first master key: the config has no master_keys.",
                ));
            };
            let s = secret::new_client_secret("kgs_");
            let place = format!("sites/{site}/keys/{key_id}");
            (
                Some(secret::encrypt(mk_id, mk, &place, s.as_bytes())),
                None,
                s,
            )
        }
        "bearer" => {
            let s = secret::new_client_secret("kgk_");
            (
                None,
                Some(format!("sha256:{}", hex::encode(auth::bearer_hash(&s)))),
                s,
            )
        }
        other => {
            return Err(GatewayError::bad_request(format!(
                "auth must be \"hmac\" or \"bearer\", not \"{other}\"."
            )))
        }
    };
    let key = StoredKey {
        id: key_id.to_string(),
        auth: auth.to_string(),
        secret,
        hash,
        expires_at,
    };
    Ok((key, shown))
}

/// The first `<site>.k<n>` that no key has or had (a removed id stays removed).
fn free_key_id(rt: &Runtime, changes: &Changes, site: &str) -> String {
    let taken = |id: &str| {
        rt.keys.contains_key(&KeyId(id.to_string()))
            || changes.sites.values().any(|c| {
                c.removed_keys
                    .iter()
                    .chain(c.keys.iter().map(|k| &k.id))
                    .any(|k| k == id)
            })
    };
    (1..)
        .map(|n| format!("{site}.k{n}"))
        .find(|id| !taken(id))
        .unwrap_or_default()
}

/// What new secrets are sealed under: the first master key (from `admin:` or
/// `registration:`, whichever is configured).
fn seal_of(rt: &Runtime) -> Option<&(String, crate::config::secret::MasterKey)> {
    rt.admin
        .as_ref()
        .and_then(|a| a.seal.as_ref())
        .or(rt.registration.as_ref().map(|r| &r.seal))
}

async fn create_site(control: &Control, req: NewSite) -> Result<Done, GatewayError> {
    let id = req.id.clone();
    let shown = control
        .create_site(&id, &req.tier, req.routes, req.cors_origins)
        .await?;
    let rt = control.state.runtime.load();
    let site = one_site_view(&rt, find(&rt, &id)?, &control.changes());
    let key = json!({ "id": shown.0, "auth": "hmac", "secret": shown.1.as_str() });
    let mut d = Done::new(201, "create_site", json!({ "site": site, "key": key }));
    d.site = Some(id);
    d.key_id = Some(shown.0);
    Ok(d)
}

async fn add_key(control: &Control, site: &str, req: NewKey) -> Result<Done, GatewayError> {
    let auth = req.auth.unwrap_or_else(|| "hmac".into());
    let (key_id, shown) = control
        .change(|changes, rt| {
            find(rt, site)?;
            let key_id = free_key_id(rt, changes, site);
            let (key, shown) = new_key(seal_of(rt), site, &key_id, &auth, req.expires_at.clone())?;
            changes.site_mut(site).keys.push(key);
            Ok((key_id, shown))
        })
        .await?;
    let rt = control.state.runtime.load();
    let expires = rt
        .keys
        .get(&KeyId(key_id.clone()))
        .and_then(|k| k.expires_at);
    let key = json!({
        "id": key_id, "auth": auth, "secret": shown.as_str(), "expires_at": expires.map(rfc3339),
    });
    let mut d = Done::new(201, "add_key", json!({ "key": key }));
    d.key_id = Some(key_id);
    Ok(d)
}

async fn remove_key(control: &Control, site: &str, key_id: &str) -> Result<Done, GatewayError> {
    control
        .change(|changes, rt| {
            let index = rt.sites.iter().position(|s| s.id.0 == site);
            let key = rt.keys.get(&KeyId(key_id.to_string()));
            if index.is_none() || key.map(|k| k.site) != index {
                return Err(error(
                    ErrorCode::NotFound,
                    format!("Site \"{site}\" has no key \"{key_id}\"."),
                ));
            }
            let ch = changes.site_mut(site);
            ch.keys.retain(|k| k.id != key_id);
            ch.removed_keys.push(key_id.to_string());
            Ok(())
        })
        .await?;
    let mut d = Done::new(200, "remove_key", json!({ "removed": key_id }));
    d.key_id = Some(key_id.to_string());
    Ok(d)
}

/// Change an existing site's record; answers with the site as it is then.
async fn update(
    control: &Control,
    site: &str,
    f: impl Fn(&mut SiteChange),
) -> Result<Done, GatewayError> {
    control
        .change(|changes, rt| {
            find(rt, site)?;
            f(changes.site_mut(site));
            Ok(())
        })
        .await?;
    let rt = control.state.runtime.load();
    let v = one_site_view(&rt, find(&rt, site)?, &control.changes());
    Ok(Done::new(200, "update_site", json!({ "site": v })))
}

impl Control {
    /// Create a site with one hmac key (`<id>.k1` unless taken); the key's id and its
    /// secret, to be shown once. 409 if the site exists.
    pub async fn create_site(
        &self,
        id: &str,
        tier: &str,
        routes: Option<Vec<String>>,
        cors_origins: Option<Vec<String>>,
    ) -> Result<(String, Zeroizing<String>), GatewayError> {
        self.change(|changes, rt| {
            // The stored changes too: in a fleet another node may have created it in the
            // half second before this node's config caught up, and replacing its record
            // would take that site's key away.
            let stored = changes.sites.get(id).is_some_and(|c| c.created);
            if stored || rt.sites.iter().any(|s| s.id.0 == id) {
                return Err(error(ErrorCode::Conflict, format!("Site \"{id}\" exists.")));
            }
            let key_id = free_key_id(rt, changes, id);
            let (key, shown) = new_key(seal_of(rt), id, &key_id, "hmac", None)?;
            *changes.site_mut(id) = SiteChange {
                created: true,
                tier: Some(tier.to_string()),
                routes: routes.clone(),
                cors_origins: cors_origins.clone(),
                keys: vec![key],
                ..SiteChange::default()
            };
            Ok((key_id, shown))
        })
        .await
    }
}
