//! What outlives a config reload: the current config, the live state that goes with it,
//! the nonce store, the limiters and the audit log. Shared by the gateway, the reloader
//! and the admin endpoints.
//!
//! Config ([`Runtime`]) is plain data. What requests change lives in [`Live`], built
//! for each config generation from the previous one by stable names, so a reload swaps
//! data and keeps every piece of live state that still has an owner.

use crate::auth::nonce::NonceStore;
use crate::config::Runtime;
use crate::fleet::{store::FleetStore, Fleet};
use crate::limits::{ip::AuthFailureLimiter, CounterStore, Limiter, LocalStore};
use crate::telemetry::audit::AuditLog;
use crate::telemetry::metrics::RouteSeries;
use crate::upstream::live::UpstreamLive;
use arc_swap::ArcSwap;
use std::sync::Arc;

/// Live state for one config generation, in the config's order: `upstreams[i]` is the
/// state of `Runtime::upstreams[i]`, `routes[i]` the series of `Runtime::routes[i]`.
#[derive(Debug)]
pub struct Live {
    /// The config generation this was built for.
    pub generation: u64,
    pub upstreams: Vec<UpstreamLive>,
    pub routes: Vec<RouteSeries>,
}

impl Live {
    /// Live state for `rt`, carrying over from `prev` (by upstream name) what it knew.
    pub fn build(rt: &Runtime, prev: Option<&Live>) -> Live {
        let upstreams = rt
            .upstreams
            .iter()
            .map(|up| {
                let before = prev.and_then(|p| p.upstreams.iter().find(|l| l.name == up.name));
                UpstreamLive::new(up, before)
            })
            .collect();
        Live {
            generation: rt.generation,
            upstreams,
            routes: rt
                .routes
                .iter()
                .map(|r| RouteSeries::new(&r.prefix))
                .collect(),
        }
    }

    /// This generation's state of `up`, which may come from another generation's config
    /// (a request that started before a reload reports to the state in force now).
    pub fn upstream_for(&self, up: &crate::config::Upstream) -> Option<&UpstreamLive> {
        self.upstreams
            .get(up.index)
            .filter(|l| l.name == up.name)
            .or_else(|| self.upstreams.iter().find(|l| l.name == up.name))
    }
}

/// Process-wide state.
pub struct State {
    pub runtime: ArcSwap<Runtime>,
    /// The live state of `runtime`'s generation (swapped with it; see [`State::snapshot`]).
    pub live: ArcSwap<Live>,
    pub nonces: NonceStore,
    /// The admin API's nonces, apart from the sites' ([`crate::auth::nonce::ADMIN_NONCE_CAPACITY`]).
    pub admin_nonces: NonceStore,
    /// Smaller `clock_skew_s` values in force before a reload raised it, as `(until, skew)`
    /// in unix seconds: a signature created before `until` is held to `skew` (its nonce was
    /// remembered only that long). Kept by [`State::install`] ([`crate::auth::carry_skews`]).
    pub earlier_skews: ArcSwap<Vec<(i64, i64)>>,
    pub limiter: ArcSwap<Limiter>,
    pub auth_failures: AuthFailureLimiter,
    /// Browser tokens minted per client address.
    pub token_mints: crate::limits::ip::IpRate,
    pub token_uses: crate::limits::TokenUses,
    pub audit: AuditLog,
    /// Fleet mode (set at start from `fleet.redis`; reloads do not change it).
    pub fleet: Option<Arc<Fleet>>,
    /// Realtime sessions open now (a reload closes those whose site or key is gone).
    pub realtime: crate::realtime::Sessions,
    /// Per-site usage against its own baseline (`anomaly:`).
    pub anomalies: crate::limits::anomaly::Detector,
}

/// The counter store for these keys (USD counters when `spend`): fleet-wide when a
/// fleet is configured.
fn store_for(sites: &[u64], spend: bool, fleet: Option<&Arc<Fleet>>) -> Box<dyn CounterStore> {
    let local = LocalStore::new(sites, spend);
    match fleet {
        Some(f) => Box::new(FleetStore::new(local, f.clone())),
        None => Box::new(local),
    }
}

/// Every key counted: each site's, and one per `models:` entry of its tier.
fn site_keys(rt: &Runtime) -> Vec<u64> {
    rt.sites
        .iter()
        .flat_map(|s| s.tier.limit_keys(s.limit_key))
        .collect()
}

/// Whether spend is counted: it is wherever models have prices.
fn spends(rt: &Runtime) -> bool {
    !rt.prices.is_empty()
}

impl State {
    pub fn new(rt: Runtime) -> Arc<State> {
        crate::telemetry::metrics::METRICS.init_for(&rt);
        let fleet = rt.fleet.clone().map(Fleet::new);
        let store = store_for(&site_keys(&rt), spends(&rt), fleet.as_ref());
        let limiter = Limiter::with_store(store);
        let nonces = NonceStore::new(rt.process.nonce_store_capacity);
        let audit = AuditLog::new(rt.process.audit_path.clone());
        let live = Live::build(&rt, None);
        let rt = Arc::new(rt);
        crate::telemetry::logger::watch(rt.clone());
        Arc::new(State {
            live: ArcSwap::from_pointee(live),
            runtime: ArcSwap::new(rt),
            nonces,
            admin_nonces: NonceStore::new(crate::auth::nonce::ADMIN_NONCE_CAPACITY),
            earlier_skews: ArcSwap::default(),
            limiter: ArcSwap::from_pointee(limiter),
            auth_failures: AuthFailureLimiter::default(),
            token_mints: Default::default(),
            token_uses: Default::default(),
            audit,
            fleet,
            realtime: Default::default(),
            anomalies: Default::default(),
        })
    }

    /// Install a new config. Limiter and circuit state carry over (the limiter's sketches
    /// are rebuilt, counts copied, when sites or `models:` entries were added, or
    /// `prices:` first set: spend then needs counters).
    pub fn install(&self, mut rt: Runtime) {
        let old = self.runtime.load();
        match (&self.fleet, &rt.fleet) {
            (Some(fleet), Some(next)) => fleet.redis.reload(next),
            (None, None) => {}
            _ => log::warn!(
                "fleet: fleet.redis added or removed in the reloaded config; fleet mode changes only after a restart"
            ),
        }
        rt.generation = old.generation + 1;
        let secs = |d: std::time::Duration| d.as_secs() as i64;
        // Before the new config is in force: a request on it must meet them.
        self.earlier_skews.store(Arc::new(crate::auth::carry_skews(
            &self.earlier_skews.load(),
            (
                secs(old.server.clock_skew),
                secs(old.server.clock_skew_future),
            ),
            secs(rt.server.clock_skew),
            crate::clock::now_s(),
        )));
        let sites = site_keys(&rt);
        let old_limiter = self.limiter.load_full();
        if !old_limiter.local_store().covers(&sites, spends(&rt)) {
            // New sites need counters of their own: new sketches, surviving sites' counts
            // copied over, once before the swap and once after it for the requests the
            // old limiter counted meanwhile.
            let next = old_limiter.successor(store_for(&sites, spends(&rt), self.fleet.as_ref()));
            let copied = next
                .local_store()
                .copy_from(old_limiter.local_store(), None);
            self.limiter.store(Arc::new(next));
            self.limiter
                .load()
                .local_store()
                .copy_from(old_limiter.local_store(), Some(&copied));
        }
        crate::telemetry::metrics::METRICS.init_for(&rt);
        crate::telemetry::metrics::METRICS
            .config_generation
            .set(rt.generation as i64);
        // Circuits, cool-downs and round-robin positions carry over by name. The live
        // state goes first: a request that meets the new config meets its state.
        let live = Live::build(&rt, Some(&self.live.load()));
        self.live.store(Arc::new(live));
        let rt = Arc::new(rt);
        crate::telemetry::logger::watch(rt.clone());
        self.runtime.store(rt.clone());
        // After the swap: a request still on the old config could otherwise bring a removed
        // site's baseline back.
        let configured: std::collections::HashSet<u64, ahash::RandomState> =
            rt.sites.iter().map(|s| s.limit_key).collect();
        self.anomalies.retain(|site| configured.contains(&site));
        let now = crate::clock::now_s();
        let closed = self.realtime.close_removed(|o| still_allowed(&rt, o, now));
        if closed > 0 {
            log::info!(
                "config change: closing {closed} Realtime session(s) whose site or key was removed, disabled or expired, or whose upstream's address, pins or credential changed"
            );
        }
    }

    /// The config and its live state, of one generation (a reload between the two
    /// loads is met by loading again).
    pub fn snapshot(&self) -> (Arc<Runtime>, Arc<Live>) {
        loop {
            let rt = self.runtime.load_full();
            let live = self.live.load_full();
            if live.generation == rt.generation {
                return (rt, live);
            }
            std::hint::spin_loop();
        }
    }
}

/// What a session's provider connection was made with: the upstream's address, TLS, pins
/// and trust anchors, and the credential's value, hashed with a key of this process's. A
/// reload that changes any of them (pins rotated, a credential replaced) closes the
/// session: it must not run on for `max_session_s` over what the operator took away.
pub fn binding(up: &crate::config::Upstream, credential: &crate::config::Credential) -> u64 {
    static KEYS: std::sync::LazyLock<ahash::RandomState> =
        std::sync::LazyLock::new(ahash::RandomState::new);
    KEYS.hash_one((
        up.tls,
        &up.host,
        up.port,
        up.group_key,
        &credential.id,
        credential.header.as_bytes(),
    ))
}

/// Whether `rt` (a config now in force) still lets the session `o` run: its key usable
/// and of its site, its upstream and credential there with the same [`binding`].
pub fn still_allowed(rt: &Runtime, o: &crate::realtime::Opened, now: i64) -> bool {
    let client = rt
        .keys
        .get(&crate::config::KeyId(o.key_id.clone()))
        .filter(|k| k.usable(&rt.sites, now) && k.binding_is(&o.key_binding))
        // An expiry a reload moved earlier: the session's lifetime was set from the old.
        .filter(|k| k.expires_at.unwrap_or(i64::MAX) >= o.key_expires_at.unwrap_or(i64::MAX))
        .and_then(|k| rt.sites.get(k.site))
        .is_some_and(|s| s.id.0 == o.site);
    client
        && rt
            .upstreams
            .iter()
            .find(|u| u.name == o.upstream)
            .is_some_and(|u| {
                u.credentials
                    .iter()
                    .find(|c| c.id == o.credential)
                    .is_some_and(|c| binding(u, c) == o.binding)
            })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load_str, LoadOptions};
    use crate::limits::anomaly::{Action, AnomalySettings};
    use std::time::Duration;

    fn config(sites: &[&str]) -> Runtime {
        let mut text = String::from(
            r#"
server:
  listen: [{ addr: "127.0.0.1:8080" }]
  hostnames: ["localhost:8080"]
upstreams:
  openai:
    kind: openai
    url: "http://127.0.0.1:9999"
    credentials: [{ id: prod-1, secret: "sk-literal-for-tests-000000000000" }]
routes:
  - { prefix: "/openai/", upstream: openai, models: ["gpt-4o"] }
tiers:
  free: { requests_per_minute: 10 }
sites:
"#,
        );
        for s in sites {
            text.push_str(&format!(
                "  - {{ id: {s}, tier: free, keys: [{{ id: {s}.k1, auth: hmac, secret: \"kgs_literal_for_tests_0000000000\" }}] }}\n"
            ));
        }
        load_str(&text, LoadOptions { demo: true }).unwrap()
    }

    /// A reload that removes a site drops its anomaly baseline: the detector's map holds
    /// configured sites only, however many come and go.
    #[test]
    fn a_reload_forgets_the_anomaly_baselines_of_removed_sites() {
        let state = State::new(config(&["alpha", "beta", "gamma"]));
        let settings = AnomalySettings {
            factor: 5.0,
            min_per_minute: 30.0,
            action: Action::Alert,
            throttle: Duration::from_secs(60),
            window: Duration::from_secs(60),
            warmup_windows: 3,
        };
        for site in &state.runtime.load().sites {
            let _ = state.anomalies.request(site.limit_key, &settings, 1_000);
        }
        assert_eq!(state.anomalies.site_count(), 3);
        state.install(config(&["alpha", "gamma"]));
        assert_eq!(state.anomalies.site_count(), 2);
    }
}
