//! Self-service site registration (SPEC §8.5, off unless `registration.enabled`):
//! `POST /keygate/v1/registrations` sends a verification e-mail ([`mail`]); following its
//! link creates the site in `registration.tier` through the admin API's path
//! ([`crate::control::Control::create_site`]); the plugin's poll, with its poll token,
//! collects the new key's secret exactly once.
//!
//! Abuse: per client address (`per_ip_per_hour`) and per e-mail address (3 an hour,
//! silently: the answer is the same 202 whether an e-mail goes out or not), codes and poll
//! tokens of 256 random bits kept only hashed, single use, expiring; pending registrations
//! bounded per node; no endpoint on the admin port.

pub mod mail;
pub mod store;

use crate::control::Control;
use crate::error::{ErrorCode, GatewayError};
use crate::limits::ip::IpRate;
use crate::telemetry::metrics::METRICS;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use store::{Issued, Record, RegStore, Status};

/// The registration endpoints' path prefix.
pub const PATH: &str = "/keygate/v1/registrations";
/// E-mails to one address per hour, at most (more are answered alike but not sent).
const PER_ADDRESS_PER_HOUR: u64 = 3;
/// Largest registration request body.
pub const MAX_BODY: usize = 4 * 1024;

fn counted(result: &'static str) {
    METRICS.registrations.with_label_values(&[result]).inc();
}

/// The registration service's state (the settings are read from the config in force).
pub struct Registrar {
    pub control: Arc<Control>,
    store: RegStore,
    outbox: mail::Outbox,
    per_ip: IpRate,
    per_address: IpRate,
    /// Registrations this node accepted whose code has not expired (the per-node bound).
    pending: parking_lot::Mutex<std::collections::VecDeque<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRegistration {
    site_url: String,
    email: String,
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn random_token(prefix: &str) -> zeroize::Zeroizing<String> {
    use base64::Engine;
    use rand::RngCore;
    let mut raw = zeroize::Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(raw.as_mut());
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.as_ref());
    zeroize::Zeroizing::new(format!("{prefix}{b64}"))
}

/// A site id from the site's URL: its host (letters, digits, `.`, `-`) and 6 random hex
/// digits, so two registrations of one host never collide and nobody picks an id.
fn site_id_for(site_url: &http::Uri) -> String {
    let host: String = site_url
        .host()
        .unwrap_or("site")
        .to_ascii_lowercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
        .take(80)
        .collect();
    let mut tag = [0u8; 3];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut tag);
    format!(
        "{}-{}",
        if host.is_empty() { "site" } else { &host },
        hex::encode(tag)
    )
}

impl Registrar {
    pub fn new(control: Arc<Control>, outbox: mail::Outbox) -> Registrar {
        let store = match &control.state.fleet {
            Some(f) => RegStore::Redis(f.clone()),
            None => RegStore::Local(Default::default()),
        };
        Registrar {
            control,
            store,
            outbox,
            per_ip: IpRate::over(Duration::from_secs(3600)),
            per_address: IpRate::over(Duration::from_secs(3600)),
            pending: Default::default(),
        }
    }

    fn unavailable() -> GatewayError {
        counted("unavailable");
        GatewayError::new(
            ErrorCode::UpstreamUnavailable,
            "Registration is unavailable right now; try again later.",
        )
    }

    /// `POST /keygate/v1/registrations`: 202 `{registration_id, poll_token}`.
    pub async fn register(
        &self,
        body: &[u8],
        ip: Option<IpAddr>,
    ) -> Result<(u16, Value), GatewayError> {
        let rt = self.control.state.runtime.load_full();
        let Some(reg) = &rt.registration else {
            return Err(GatewayError::new(ErrorCode::NotFound, "Not found."));
        };
        let now_ms = crate::clock::now_ms();
        let now = crate::clock::secs(now_ms);
        // An IPv6 client counts by its /64: it can take a fresh address per request.
        let ip = ip.as_ref().map(crate::limits::ip::client_block);
        if let Some(ip) = ip {
            if let Err(wait) = self.per_ip.check(&ip, reg.per_ip_per_hour, now_ms) {
                counted("rate_limited");
                let secs = crate::limits::ceil_secs(wait).max(1);
                return Err(GatewayError::new(
                    ErrorCode::RateLimited,
                    "Too many registrations from this address; try again later.",
                )
                .header(http::header::RETRY_AFTER, secs.into()));
            }
        }
        let invalid = |m: &str| {
            counted("invalid");
            GatewayError::bad_request(m.to_string())
        };
        let req: NewRegistration = serde_json::from_slice(body)
            .map_err(|_| invalid("The body must be {\"site_url\": …, \"email\": …}."))?;
        let site_url: http::Uri = req
            .site_url
            .parse()
            .ok()
            .filter(|u: &http::Uri| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
            })
            .ok_or_else(|| invalid("site_url must be an absolute http(s) URL."))?;
        let email: lettre::Address = req
            .email
            .trim()
            .parse()
            .map_err(|_| invalid("email is not an e-mail address."))?;
        let domain = email.domain().to_ascii_lowercase();
        if reg
            .allowed_email_domains
            .as_ref()
            .is_some_and(|d| !d.contains(&domain))
        {
            return Err(invalid("Registrations are not open to this e-mail domain."));
        }
        if let Some(ip) = ip {
            self.per_ip.count(&ip, now_ms);
        }
        {
            let mut p = self.pending.lock();
            // Not pop from the front: a SIGHUP may shorten the code lifetime, so expiries
            // are not in order.
            p.retain(|&exp| exp > now);
            if p.len() >= reg.max_pending || self.store.local_len(now) >= reg.max_pending {
                log::warn!(
                    "registration: {} pending registrations, the most allowed; refusing new ones",
                    p.len()
                );
                return Err(Self::unavailable());
            }
        }
        let mut raw_id = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut raw_id);
        let id = format!("reg_{}", hex::encode(raw_id));
        let poll = random_token("kgp_");
        let code = random_token("");
        let expires_at = now + reg.code_ttl.as_secs() as i64;
        let rec = Record {
            site_url: req.site_url.clone(),
            poll_hash: sha256_hex(&poll),
            expires_at,
            status: Status::Pending,
        };
        let address = email.to_string().to_ascii_lowercase();
        // Stored either way, so that its poll answers alike (202 pending) whether its
        // e-mail went out or the mailbox had had too many this hour.
        let address_key = sha256_hex(&mailbox(&address));
        let send = self
            .per_address
            .check(&address_key, PER_ADDRESS_PER_HOUR, now_ms)
            .is_ok();
        // Room in the queue first: a registration whose e-mail cannot go is not kept.
        let permit = match send {
            true => Some(self.outbox.try_reserve().map_err(|_| Self::unavailable())?),
            false => None,
        };
        self.store
            .put(&id, &sha256_hex(&code), &rec)
            .await
            .map_err(|_| Self::unavailable())?;
        match permit {
            Some(permit) => {
                self.per_address.count(&address_key, now_ms);
                permit.send(mail::Email {
                    to: address,
                    link: format!("{}?code={}", reg.verify_url, code.as_str()),
                    site_url: site_url.to_string(),
                    expires_at,
                });
            }
            None => log::info!(
                "registration {id}: {} asked for too many this hour; no e-mail",
                mail::masked(&address)
            ),
        }
        self.pending.lock().push_back(expires_at);
        counted("accepted");
        Ok((
            202,
            json!({ "registration_id": id, "poll_token": poll.as_str() }),
        ))
    }

    /// `GET /keygate/v1/registrations/verify?code=…`: the site is created; 410 for a code
    /// that is unknown, used or expired (one answer for all three).
    pub async fn verify(&self, query: Option<&str>) -> Result<(u16, Value), GatewayError> {
        let rt = self.control.state.runtime.load_full();
        let Some(reg) = &rt.registration else {
            return Err(GatewayError::new(ErrorCode::NotFound, "Not found."));
        };
        let gone = || {
            counted("gone");
            GatewayError::new(ErrorCode::Gone, "This link was used or has expired.")
        };
        let code = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .find_map(|kv| kv.strip_prefix("code="))
            .filter(|c| !c.is_empty() && c.len() <= 128)
            .ok_or_else(gone)?;
        let now = crate::clock::now_s();
        let code_hash = sha256_hex(code);
        let id = self
            .store
            .take_code(&code_hash, now)
            .await
            .map_err(|_| Self::unavailable())?
            .ok_or_else(gone)?;
        let mut rec = self
            .store
            .get(&id, now)
            .await
            .map_err(|_| Self::unavailable())?
            .filter(|r| r.status == Status::Pending)
            .ok_or_else(gone)?;
        let url: http::Uri = rec.site_url.parse().map_err(|_| gone())?;
        let site_id = site_id_for(&url);
        let (key_id, secret) = match self
            .control
            .create_site(&site_id, &reg.tier, None, None)
            .await
        {
            Ok(k) => k,
            Err(e) => {
                // Not created: the link works again (the code goes back, pending).
                let _ = self.store.put(&id, &code_hash, &rec).await;
                // The caller is anyone with the link: why the config does not build
                // with the new site (file paths, other sites' ids, tiers) is the
                // operator's to read, in the log.
                if e.code == ErrorCode::BadRequest || e.code.status() >= 500 {
                    log::error!(
                        "registration: site {site_id} could not be created: {}",
                        e.detail.as_deref().unwrap_or(&e.message)
                    );
                    return Err(Self::unavailable());
                }
                return Err(e);
            }
        };
        let (mk_id, mk) = &reg.seal;
        let sealed = crate::config::secret::encrypt(
            mk_id,
            mk,
            &format!("registrations/{id}"),
            secret.as_bytes(),
        );
        let pending = rec.clone();
        // The poll has the code's lifetime again to collect it.
        rec.expires_at = now + reg.code_ttl.as_secs() as i64;
        rec.status = Status::Verified;
        let issued = Issued {
            site_id: site_id.clone(),
            key_id,
            sealed_secret: sealed,
        };
        let stored = async {
            self.store.issue(&id, &issued, rec.expires_at).await?;
            self.store.set(&id, &rec).await
        };
        if stored.await.is_err() {
            // Nobody could ever collect the new site's key: take the site back and let
            // the link work again (the code goes back, pending), as when the site could
            // not be created.
            log::warn!("registration {id}: its key could not be stored for the poll; site {site_id} removed again, the link stays valid");
            let _ = self.store.collect(&id).await;
            let _ = self
                .control
                .change(|changes, _| {
                    if changes.sites.get(&site_id).is_some_and(|s| s.created) {
                        changes.sites.remove(&site_id);
                    }
                    Ok(())
                })
                .await;
            let _ = self.store.put(&id, &code_hash, &pending).await;
            return Err(Self::unavailable());
        }
        counted("verified");
        log::info!("registration {id}: verified; site {site_id} created");
        Ok((200, json!({ "status": "verified", "site_id": site_id })))
    }

    /// `GET /keygate/v1/registrations/{id}` with `Authorization: Bearer <poll_token>`:
    /// 202 pending, 200 with the secret once, then 410. An unknown id and a wrong token
    /// are one answer (404).
    pub async fn poll(&self, id: &str, token: Option<&str>) -> Result<(u16, Value), GatewayError> {
        let rt = self.control.state.runtime.load_full();
        let Some(reg) = &rt.registration else {
            return Err(GatewayError::new(ErrorCode::NotFound, "Not found."));
        };
        let not_found = || GatewayError::new(ErrorCode::NotFound, "No such registration.");
        let now = crate::clock::now_s();
        let rec = self
            .store
            .get(id, now)
            .await
            .map_err(|_| Self::unavailable())?
            .ok_or_else(not_found)?;
        let given = sha256_hex(token.unwrap_or(""));
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            given.as_bytes(),
            rec.poll_hash.as_bytes(),
        )) {
            return Err(not_found());
        }
        match rec.status {
            Status::Pending => Ok((202, json!({ "status": "pending" }))),
            Status::Delivered => {
                counted("gone");
                Err(GatewayError::new(
                    ErrorCode::Gone,
                    "The credentials were collected already.",
                ))
            }
            Status::Verified => {
                let Some(issued) = self
                    .store
                    .collect(id)
                    .await
                    .map_err(|_| Self::unavailable())?
                else {
                    counted("gone");
                    return Err(GatewayError::new(
                        ErrorCode::Gone,
                        "The credentials were collected already.",
                    ));
                };
                let mut done = rec.clone();
                done.status = Status::Delivered;
                // The collect above (a GETDEL) already made this the only delivery; a
                // failure to mark it must not withhold the one copy of the secret.
                if self.store.set(id, &done).await.is_err() {
                    log::warn!(
                        "registration {id}: delivered, but its record could not be marked so"
                    );
                }
                let mk =
                    std::collections::HashMap::from([(reg.seal.0.clone(), reg.seal.1.clone())]);
                let secret = crate::config::secret::decrypt(
                    &issued.sealed_secret,
                    &format!("registrations/{id}"),
                    &mk,
                )
                .map_err(|e| {
                    GatewayError::new(ErrorCode::Internal, "The credentials cannot be read.")
                        .detail(e)
                })?;
                counted("delivered");
                use secrecy::ExposeSecret;
                Ok((
                    200,
                    json!({
                        "site_id": issued.site_id,
                        "key_id": issued.key_id,
                        "secret": secret.expose_secret(),
                    }),
                ))
            }
        }
    }
}

/// The mailbox an address reaches, for the per-address limit: lowercased, and a `+tag` of
/// the local part dropped (`a+1@x.example` and `a+2@x.example` are one inbox; without this,
/// each tag had its own hourly allowance of mail to the same person).
fn mailbox(address: &str) -> String {
    let address = address.to_ascii_lowercase();
    match address.rsplit_once('@') {
        Some((local, domain)) => {
            let local = local.split_once('+').map_or(local, |(l, _)| l);
            format!("{local}@{domain}")
        }
        None => address,
    }
}

#[cfg(test)]
mod tests {
    use super::mailbox;

    #[test]
    fn tagged_addresses_share_one_mailbox() {
        assert_eq!(mailbox("Ann+1@Shop.example"), "ann@shop.example");
        assert_eq!(mailbox("ann+a+b@shop.example"), "ann@shop.example");
        assert_eq!(mailbox("ann@shop.example"), "ann@shop.example");
        assert_ne!(mailbox("ann@shop.example"), mailbox("bob@shop.example"));
    }
}
