//! What outlives a config reload: the current config, the nonce store, the limiters
//! and the audit log. Shared by the gateway, the reloader and the admin endpoints.

use crate::auth::nonce::NonceStore;
use crate::config::Runtime;
use crate::fleet::{counters::FleetStore, Fleet};
use crate::limits::{ip::AuthFailureLimiter, CounterStore, Limiter, LocalStore};
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

/// The counter store for these site keys: fleet-wide when a fleet is configured.
fn store_for(sites: &[u64], fleet: Option<&Arc<Fleet>>) -> Box<dyn CounterStore> {
    let local = LocalStore::new(sites);
    match fleet {
        Some(f) => Box::new(FleetStore::new(local, f.clone())),
        None => Box::new(local),
    }
}

fn site_keys(rt: &Runtime) -> Vec<u64> {
    rt.sites.iter().map(|s| s.limit_key).collect()
}

impl State {
    pub fn new(rt: Runtime) -> Arc<State> {
        crate::telemetry::metrics::METRICS.init_for(&rt);
        let fleet = rt.fleet.clone().map(Fleet::new);
        let limiter = Limiter::with_store(store_for(&site_keys(&rt), fleet.as_ref()));
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

    /// Install a new config. Limiter and circuit state carry over (the limiter's sketches
    /// are rebuilt, counts copied, when sites were added).
    pub fn install(&self, mut rt: Runtime) {
        let old = self.runtime.load();
        if format!("{:?}", rt.fleet) != format!("{:?}", old.fleet) {
            log::warn!("config reload: fleet settings apply only after a restart");
        }
        rt.generation = old.generation + 1;
        let sites = site_keys(&rt);
        let old_limiter = self.limiter.load_full();
        if !old_limiter.local_store().covers(&sites) {
            // New sites need counters of their own: new sketches, surviving sites' counts
            // copied over, once before the swap and once after it for the requests the
            // old limiter counted meanwhile.
            let next = old_limiter.successor(store_for(&sites, self.fleet.as_ref()));
            let copied = next
                .local_store()
                .copy_from(old_limiter.local_store(), None);
            self.limiter.store(Arc::new(next));
            self.limiter
                .load()
                .local_store()
                .copy_from(old_limiter.local_store(), Some(&copied));
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
