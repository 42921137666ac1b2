//! What outlives a config reload: the current config, the nonce store, the limiters
//! and the audit log. Shared by the gateway, the reloader and the admin endpoints.

use crate::auth::nonce::NonceStore;
use crate::config::Runtime;
use crate::fleet::{counters::FleetStore, Fleet};
use crate::limits::{ip::AuthFailureLimiter, slots_for, Limiter};
use crate::telemetry::audit::AuditLog;
use arc_swap::ArcSwap;
use std::sync::Arc;

/// Process-wide state.
pub struct State {
    pub runtime: ArcSwap<Runtime>,
    pub nonces: NonceStore,
    pub limiter: ArcSwap<Limiter>,
    pub auth_failures: AuthFailureLimiter,
    pub token_uses: crate::limits::TokenUses,
    pub audit: AuditLog,
    /// Fleet mode (set at start from `fleet.redis`; reloads do not change it).
    pub fleet: Option<Arc<Fleet>>,
}

/// A limiter sized for `sites`: fleet-wide when a fleet is configured.
fn limiter_for(sites: usize, fleet: Option<&Arc<Fleet>>) -> Limiter {
    match fleet {
        Some(f) => Limiter::with_store(Box::new(FleetStore::new(slots_for(sites), f.clone()))),
        None => Limiter::local(sites),
    }
}

impl State {
    pub fn new(rt: Runtime) -> Arc<State> {
        crate::telemetry::metrics::METRICS.init_for(&rt);
        let fleet = rt.fleet.clone().map(Fleet::new);
        let limiter = limiter_for(rt.sites.len(), fleet.as_ref());
        let nonces = NonceStore::new(rt.process.nonce_store_capacity);
        let audit = AuditLog::new(rt.process.audit_path.clone());
        Arc::new(State {
            runtime: ArcSwap::from_pointee(rt),
            nonces,
            limiter: ArcSwap::from_pointee(limiter),
            auth_failures: AuthFailureLimiter::default(),
            token_uses: Default::default(),
            audit,
            fleet,
        })
    }

    /// Install a new config. Limiter and circuit state carry over; the limiter's
    /// sketches are rebuilt (and counts restart) only when the site count outgrew them.
    pub fn install(&self, mut rt: Runtime) {
        let old = self.runtime.load();
        if format!("{:?}", rt.fleet) != format!("{:?}", old.fleet) {
            log::warn!("config reload: fleet settings apply only after a restart");
        }
        rt.generation = old.generation + 1;
        let needed = slots_for(rt.sites.len());
        if needed > self.limiter.load().slots() {
            log::warn!(
                "config reload: {} sites need larger rate-limit sketches ({} slots); rate-limit counters restart",
                rt.sites.len(),
                needed
            );
            self.limiter
                .store(Arc::new(limiter_for(rt.sites.len(), self.fleet.as_ref())));
        }
        // Circuit breakers keep their state across reloads.
        for up in &rt.upstreams {
            if let Some(prev) = old.upstreams.iter().find(|u| u.name == up.name) {
                up.circuit.inherit(&prev.circuit);
            }
        }
        crate::telemetry::metrics::METRICS.init_for(&rt);
        crate::telemetry::metrics::METRICS
            .config_generation
            .set(rt.generation as i64);
        self.runtime.store(Arc::new(rt));
    }
}
