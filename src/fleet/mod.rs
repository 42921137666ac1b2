//! Fleet mode: nodes behind one load balancer share replay protection and limits
//! through Redis (`fleet.redis`). Without it everything stays process-local.
//!
//! - Nonces: one `SET <prefix>n:{<keyid>}:<sha256(nonce)> 1 NX EXAT <window end>` per
//!   signed request, after the MAC verified ([`Fleet::claim_nonce`]).
//! - Limits and token budgets: each node counts in its local sketch and syncs deltas
//!   to Redis in one pipeline every `sync_interval` ([`counters`], [`sync`]).
//! - Browser tokens' `max_requests`: one `INCR` per use ([`admit_token_use`]).
//! - Failure: every call is bounded by `timeout_ms`. The first failure marks Redis down;
//!   the request path then skips Redis (no added latency) and falls back (nonces:
//!   `fail_closed` or `local`; limits: `1/nodes` of each quota) until the sync task's
//!   next probe succeeds.

pub mod client;
pub mod conn;
pub mod counters;
pub mod exact;
pub mod store;
pub mod sync;

use crate::auth::{self, AuthFailure, NonceClaim};
use crate::config::{FleetSettings, NonceFallback};
pub use conn::{Redis, RedisDown, Req};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// Nonces accepted locally while Redis was down, written to Redis on recovery (so a
/// replay to another node after recovery is still refused). Beyond this many, further
/// ones are remembered by the accepting node only.
const PENDING_NONCES_MAX: usize = 100_000;

/// The shared handle: the Redis connection, the nonces waiting for it, and the fleet
/// view of the counters.
pub struct Fleet {
    pub redis: Redis,
    pending_nonces: Mutex<Vec<(String, i64)>>,
    /// Unix second before which pruning the full pending list frees nothing (its earliest
    /// expiry then): a full list is not rescanned per request.
    pending_prune_after: std::sync::atomic::AtomicI64,
    pub counters: counters::FleetCounters,
}

impl Fleet {
    pub fn new(settings: FleetSettings) -> Arc<Fleet> {
        let counters = counters::FleetCounters::new(&settings.key_prefix);
        Arc::new(Fleet {
            redis: Redis::new(settings),
            pending_nonces: Mutex::new(Vec::new()),
            pending_prune_after: std::sync::atomic::AtomicI64::new(i64::MIN),
            counters,
        })
    }

    /// The validated `fleet:` settings in force.
    pub fn settings(&self) -> Arc<FleetSettings> {
        self.redis.settings()
    }

    /// Redis answered the last call.
    pub fn is_up(&self) -> bool {
        self.redis.is_up()
    }

    /// The Redis key of a nonce: the key id as hash tag, the nonce hashed (raw nonces
    /// never go to Redis). In a cluster the site's key is the hash tag instead, the one its
    /// counters carry, so the admission script's keys share a slot.
    pub fn nonce_key(&self, claim: &NonceClaim) -> String {
        let d = Sha256::digest(claim.nonce.as_bytes());
        let (p, hash) = (self.counters.prefix(), hex::encode(&d[..16]));
        if self.redis.is_cluster() {
            format!("{p}n:{{{:016x}}}:{}:{hash}", claim.site_key, claim.key_id)
        } else {
            format!("{p}n:{{{}}}:{hash}", claim.key_id)
        }
    }

    /// Claim a nonce fleet-wide: `Ok(true)` if it was fresh, `Ok(false)` if any node
    /// has seen it. One round trip; skipped (`Err`) while Redis is down.
    pub async fn claim_nonce(&self, claim: &NonceClaim, now: i64) -> Result<bool, RedisDown> {
        if !self.is_up() {
            return Err(RedisDown);
        }
        let key = self.nonce_key(claim);
        // EXAT in the past would drop the key at once: keep it at least a second.
        let exat = claim.expires_at.max(now + 1);
        let mut cmd = redis::cmd("SET");
        cmd.arg(&key).arg(1).arg("NX").arg("EXAT").arg(exat);
        let set: Option<String> = self.redis.call("nonce", Req::Cmd(&cmd)).await?;
        Ok(set.is_some())
    }

    /// Remember a nonce accepted locally while Redis was down.
    fn defer_nonce(&self, claim: &NonceClaim) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut p = self.pending_nonces.lock();
        let now = crate::clock::now_s();
        if p.len() >= PENDING_NONCES_MAX && now >= self.pending_prune_after.load(Relaxed) {
            // Full after a long outage: expired ones no longer need writing back.
            p.retain(|(_, exp)| auth::nonce::is_live(*exp, now));
            let earliest = p.iter().map(|(_, exp)| *exp).min();
            self.pending_prune_after
                .store(earliest.map_or(i64::MIN, |e| e + 1), Relaxed);
        }
        if p.len() < PENDING_NONCES_MAX {
            p.push((self.nonce_key(claim), claim.expires_at));
        }
    }

    /// While down: probe Redis (PING), re-send counts if it lost its data, then mark it
    /// up and write back the nonces accepted locally meanwhile. False while still down.
    pub async fn recover(&self, now_ms: u64) -> bool {
        let ping = redis::cmd("PING");
        let ok = self.redis.ensure_connected().await
            && self
                .redis
                .call::<String>("ping", Req::Cmd(&ping))
                .await
                .is_ok()
            && self.counters.check_generation(&self.redis).await;
        if ok {
            self.redis.set_up(true);
        }
        self.redis.mark_tried();
        if ok {
            self.flush_pending_nonces(crate::clock::secs(now_ms)).await;
        }
        ok
    }

    /// Write the nonces accepted locally during an outage (NX: a key already there wins).
    async fn flush_pending_nonces(&self, now: i64) {
        let pending: Vec<(String, i64)> = std::mem::take(&mut *self.pending_nonces.lock());
        let live: Vec<_> = pending
            .into_iter()
            .filter(|(_, exp)| auth::nonce::is_live(*exp, now))
            .collect();
        let groups = self.redis.groups(live, |(k, _)| k.as_str());
        let writes = groups.into_iter().map(|group| async move {
            let mut pipe = redis::pipe();
            for (k, exat) in &group {
                pipe.cmd("SET")
                    .arg(k)
                    .arg(1)
                    .arg("NX")
                    .arg("EXAT")
                    .arg(*exat)
                    .ignore();
            }
            let res = self.redis.call::<()>("nonce", Req::Pipe(&pipe)).await;
            (res, group)
        });
        for (res, group) in futures::future::join_all(writes).await {
            if res.is_err() {
                // Keep them for the next recovery.
                let mut p = self.pending_nonces.lock();
                for e in group {
                    if p.len() < PENDING_NONCES_MAX {
                        p.push(e);
                    }
                }
            }
        }
    }
}

/// Record a verified request's nonce: fleet-wide when a fleet is configured and Redis
/// answers, else by the configured fallback; process-local without a fleet.
///
/// In fleet mode the nonce is recorded locally too (a fraction of a microsecond): a replay
/// to the same node is refused without a round trip, and even after Redis lost its data.
pub async fn record_nonce(
    fleet: Option<&Fleet>,
    local: &auth::nonce::NonceStore,
    claim: &NonceClaim,
    now: i64,
) -> Result<(), AuthFailure> {
    let Some(fleet) = fleet else {
        return auth::record_local(local, claim, now);
    };
    if !fleet.is_up() {
        return fallback(fleet, local, claim, now, false);
    }
    auth::record_local(local, claim, now)?;
    match fleet.claim_nonce(claim, now).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(auth::replayed()),
        Err(RedisDown) => fallback(fleet, local, claim, now, true),
    }
}

/// Count one use of a browser token with `max_requests`: fleet-wide while Redis answers
/// (`INCR` + `EXPIREAT` on `<prefix>u:{<token id>}`, one round trip), else on this node
/// alone with `ceil(max / N)`; without a fleet, on this node with `max`.
pub async fn admit_token_use(
    fleet: Option<&Fleet>,
    local: &crate::limits::TokenUses,
    claims: &crate::auth::token::Claims,
    now_ms: u64,
) -> bool {
    let Some(fleet) = fleet else {
        return local.admit(&claims.jti, &claims.site, claims.max, claims.exp, now_ms);
    };
    let share = claims.max.div_ceil(fleet.settings().nodes);
    if !fleet.is_up() {
        return local.admit(&claims.jti, &claims.site, share, claims.exp, now_ms);
    }
    let key = format!("{}u:{{{}}}", fleet.counters.prefix(), claims.jti);
    let mut pipe = redis::pipe();
    pipe.cmd("INCR").arg(&key);
    pipe.cmd("EXPIREAT").arg(&key).arg(claims.exp + 60).ignore();
    match fleet.redis.call::<(u64,)>("token", Req::Pipe(&pipe)).await {
        Ok((uses,)) => {
            // Keep this node's count in step for the fallback.
            local.admit(&claims.jti, &claims.site, u64::MAX, claims.exp, now_ms);
            uses <= claims.max
        }
        Err(RedisDown) => local.admit(&claims.jti, &claims.site, share, claims.exp, now_ms),
    }
}

/// `fleet.on_redis_down.nonces` for one claim.
pub fn fallback(
    fleet: &Fleet,
    local: &auth::nonce::NonceStore,
    claim: &NonceClaim,
    now: i64,
    recorded_locally: bool,
) -> Result<(), AuthFailure> {
    match fleet.settings().nonces_when_down {
        NonceFallback::FailClosed => {
            Err(auth::nonce_store_unavailable(auth::AuthReason::RedisDown))
        }
        NonceFallback::Local { window } => {
            if claim.created < now - window.as_secs() as i64 {
                return Err(auth::stale(
                    "older than the shortened window while Redis is down",
                ));
            }
            if !recorded_locally {
                auth::record_local(local, claim, now)?;
            }
            fleet.defer_nonce(claim);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::nonce::NonceStore;
    use crate::error::ErrorCode;
    use std::time::Duration;

    fn fleet(policy: NonceFallback) -> Arc<Fleet> {
        Fleet::new(FleetSettings {
            url: "redis://127.0.0.1:1".to_string().into(),
            redacted_url: "redis://127.0.0.1:1".into(),
            timeout: Duration::from_millis(50),
            key_prefix: "kg:".into(),
            nodes: 3,
            sync_interval: Duration::from_millis(100),
            nonces_when_down: policy,
            exact_limits: true,
            tls: None,
            username: None,
            password: None,
            cluster: false,
            seeds: vec![],
        })
    }

    fn claim(nonce: &str, created: i64) -> NonceClaim {
        NonceClaim {
            site_key: 7,
            key_id: "site.k1".into(),
            nonce: nonce.into(),
            created,
            expires_at: created + 300,
            share: None,
        }
    }

    #[tokio::test]
    async fn fail_closed_refuses_while_redis_is_down() {
        let f = fleet(NonceFallback::FailClosed);
        let local = NonceStore::new(1024);
        let e = record_nonce(
            Some(&f),
            &local,
            &claim("nonce-aaaaaaaaaaaaaaaa", 1000),
            1000,
        )
        .await
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::UpstreamUnavailable);
        assert!(local.is_empty(), "nothing recorded locally");
    }

    #[tokio::test]
    async fn local_fallback_uses_the_shortened_window_and_remembers_for_recovery() {
        let f = fleet(NonceFallback::Local {
            window: Duration::from_secs(10),
        });
        let local = NonceStore::new(1024);
        let c = claim("nonce-bbbbbbbbbbbbbbbb", 995);
        assert!(record_nonce(Some(&f), &local, &c, 1000).await.is_ok());
        let again = record_nonce(Some(&f), &local, &c, 1001).await.unwrap_err();
        assert_eq!(again.code, ErrorCode::Replayed);
        let old = record_nonce(
            Some(&f),
            &local,
            &claim("nonce-cccccccccccccccc", 985),
            1000,
        )
        .await
        .unwrap_err();
        assert_eq!(old.code, ErrorCode::StaleRequest);
        assert_eq!(f.pending_nonces.lock().len(), 1, "kept for write-back");
    }

    #[test]
    fn nonce_keys_hash_the_nonce_and_tag_the_key_id() {
        let f = fleet(NonceFallback::FailClosed);
        let k = f.nonce_key(&claim("raw-nonce-value-123", 1000));
        assert!(k.starts_with("kg:n:{site.k1}:"), "{k}");
        assert!(!k.contains("raw-nonce-value-123"));
        assert_eq!(k.len(), "kg:n:{site.k1}:".len() + 32);
    }
}
