//! An upstream's live state, kept apart from its config: the circuit breaker, the
//! round-robin position, each credential's cool-down and the metric series. Config
//! (`crate::config::Upstream`) is plain data; this is what requests change. A reload
//! builds the next generation from the previous one by stable names (upstream name,
//! credential id), so whatever still has an owner keeps its state.

use crate::config::{Credential, Upstream};
use crate::telemetry::metrics::UpstreamSeries;
use crate::upstream::circuit::CircuitBreaker;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Live state of one upstream, for one config generation.
#[derive(Debug)]
pub struct UpstreamLive {
    pub name: String,
    pub circuit: CircuitBreaker,
    next: AtomicUsize,
    /// Credential ids, in the config's order, each with a keyed hash of its secret (a
    /// rest is carried over only to the same id with the same secret: a key replaced
    /// after a 401 serves at once).
    ids: Box<[(String, u64)]>,
    /// Unix ms until which each credential rests (a provider 401 or 429), same order.
    cooldowns: Box<[AtomicU64]>,
    series: UpstreamSeries,
}

impl UpstreamLive {
    /// State for `up`, carrying over what `prev` (the same upstream's state under the
    /// previous config, if it had one) knew: circuit, round-robin position, the
    /// cool-downs of credentials that are still configured.
    pub fn new(up: &Upstream, prev: Option<&UpstreamLive>) -> UpstreamLive {
        let circuit = CircuitBreaker::new(&up.name, up.circuit);
        let ids: Box<[(String, u64)]> = up
            .credentials
            .iter()
            .map(|c| (c.id.clone(), fingerprint(c)))
            .collect();
        let cooldowns: Box<[AtomicU64]> = ids
            .iter()
            .map(|(id, fp)| {
                let carried = prev
                    .filter(|p| p.ids.iter().any(|(i, f)| i == id && f == fp))
                    .map_or(0, |p| p.cooldown_until(id));
                AtomicU64::new(carried)
            })
            .collect();
        if let Some(p) = prev {
            circuit.inherit(&p.circuit);
        }
        let series = UpstreamSeries::new(&up.name);
        series.circuit_state.set(circuit.state_code());
        UpstreamLive {
            name: up.name.clone(),
            circuit,
            next: AtomicUsize::new(prev.map_or(0, |p| p.next.load(Ordering::Relaxed))),
            ids,
            cooldowns,
            series,
        }
    }

    /// This upstream's metric series.
    pub fn series(&self) -> &UpstreamSeries {
        &self.series
    }

    /// Unix ms until which credential `id` rests (0: not resting, or unknown).
    pub fn cooldown_until(&self, id: &str) -> u64 {
        self.ids
            .iter()
            .position(|(x, _)| x == id)
            .and_then(|i| self.cooldowns.get(i))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Rest credential `id` for `d` from `now_ms` (never shortens a rest).
    pub fn cool_down(&self, id: &str, d: Duration, now_ms: u64) {
        if let Some(c) = self
            .ids
            .iter()
            .position(|(x, _)| x == id)
            .and_then(|i| self.cooldowns.get(i))
        {
            c.fetch_max(now_ms + d.as_millis() as u64, Ordering::Relaxed);
        }
    }

    /// Pick `up`'s credential for one attempt, spreading requests over all of them:
    /// round-robin over those not cooling down and not in `tried` (the ones this request
    /// already had refused); when all are, the one whose cool-down ends first. `up` is
    /// the config this state was built for.
    pub fn pick_credential<'a>(
        &self,
        up: &'a Upstream,
        now_ms: u64,
        tried: &[String],
    ) -> Option<&'a Credential> {
        let n = up.credentials.len();
        if n == 0 {
            return None;
        }
        let until = |i: usize| {
            self.cooldowns
                .get(i)
                .map_or(0, |c| c.load(Ordering::Relaxed))
        };
        let untried = |i: &usize| {
            up.credentials
                .get(*i)
                .is_some_and(|c| !tried.contains(&c.id))
        };
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| (start + k) % n)
            .filter(untried)
            .find(|&i| until(i) <= now_ms)
            .or_else(|| (0..n).filter(untried).min_by_key(|&i| until(i)))
            .or_else(|| (0..n).min_by_key(|&i| until(i)))
            .and_then(|i| up.credentials.get(i))
    }

    /// Whether `up` has a credential not cooling down and not in `tried`.
    pub fn has_fresh_credential(&self, up: &Upstream, now_ms: u64, tried: &[String]) -> bool {
        up.credentials.iter().enumerate().any(|(i, c)| {
            !tried.contains(&c.id)
                && self
                    .cooldowns
                    .get(i)
                    .is_none_or(|u| u.load(Ordering::Relaxed) <= now_ms)
        })
    }
}

/// A hash of a credential's secret, keyed per process (it tells one secret from another
/// across a reload and says nothing about either).
fn fingerprint(c: &Credential) -> u64 {
    use secrecy::ExposeSecret;
    static KEYS: std::sync::LazyLock<ahash::RandomState> =
        std::sync::LazyLock::new(ahash::RandomState::new);
    KEYS.hash_one(c.secret.expose_secret())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstreams(creds: &str) -> Vec<std::sync::Arc<Upstream>> {
        let text = format!(
            r#"
server: {{ listen: [{{ addr: "127.0.0.1:8080" }}] }}
upstreams:
  up: {{ kind: openai, url: "http://127.0.0.1:9", credentials: [{creds}] }}
routes: [{{ prefix: "/v1/", upstream: up }}]
"#
        );
        crate::config::load_str(&text, crate::config::LoadOptions { demo: true })
            .unwrap()
            .upstreams
    }

    const C1: &str = r#"{ id: c1, secret: "sk-literal-for-tests-000000000001" }"#;
    const C2: &str = r#"{ id: c2, secret: "sk-literal-for-tests-000000000002" }"#;
    const C3: &str = r#"{ id: c3, secret: "sk-literal-for-tests-000000000003" }"#;

    #[test]
    fn a_resting_credential_is_skipped_until_its_rest_ends() {
        let ups = upstreams(&format!("{C1}, {C2}"));
        let live = UpstreamLive::new(&ups[0], None);
        live.cool_down("c1", Duration::from_secs(30), 1_000);
        for _ in 0..4 {
            assert_eq!(live.pick_credential(&ups[0], 2_000, &[]).unwrap().id, "c2");
        }
        // Both resting: the one whose rest ends first.
        live.cool_down("c2", Duration::from_secs(60), 1_000);
        assert_eq!(live.pick_credential(&ups[0], 2_000, &[]).unwrap().id, "c1");
        // After the rest, both serve again.
        let ids: Vec<_> = (0..4)
            .map(|_| {
                live.pick_credential(&ups[0], 100_000, &[])
                    .unwrap()
                    .id
                    .clone()
            })
            .collect();
        assert!(ids.contains(&"c1".to_string()) && ids.contains(&"c2".to_string()));
    }

    #[test]
    fn a_request_that_had_a_credential_refused_gets_another() {
        let ups = upstreams(&format!("{C1}, {C2}, {C3}"));
        let live = UpstreamLive::new(&ups[0], None);
        let tried = vec!["c1".to_string()];
        live.cool_down("c1", Duration::from_secs(30), 1_000);
        assert!(live.has_fresh_credential(&ups[0], 2_000, &tried));
        for _ in 0..6 {
            assert_ne!(
                live.pick_credential(&ups[0], 2_000, &tried).unwrap().id,
                "c1"
            );
        }
        let tried = vec!["c1".to_string(), "c2".to_string()];
        live.cool_down("c3", Duration::from_secs(30), 1_000);
        assert!(
            !live.has_fresh_credential(&ups[0], 2_000, &tried),
            "c3 rests"
        );
        assert_eq!(
            live.pick_credential(&ups[0], 2_000, &tried).unwrap().id,
            "c3"
        );
    }

    #[test]
    fn a_reload_keeps_the_state_of_what_is_still_configured() {
        let old_cfg = upstreams(&format!("{C1}, {C2}"));
        let old = UpstreamLive::new(&old_cfg[0], None);
        old.cool_down("c1", Duration::from_secs(30), 1_000);
        old.cool_down("c2", Duration::from_secs(30), 1_000);
        // The next config drops c2 and adds c3 before c1.
        let new_cfg = upstreams(&format!("{C3}, {C1}"));
        let new = UpstreamLive::new(&new_cfg[0], Some(&old));
        assert_eq!(new.cooldown_until("c1"), 31_000);
        assert_eq!(new.cooldown_until("c3"), 0);
        assert_eq!(new.cooldown_until("c2"), 0, "gone with its credential");
        for _ in 0..3 {
            assert_eq!(
                new.pick_credential(&new_cfg[0], 2_000, &[]).unwrap().id,
                "c3"
            );
        }
        // c1's secret replaced under the same id (the fix for its 401): it serves at once.
        let replaced = upstreams(
            r#"{ id: c3, secret: "sk-literal-for-tests-000000000003" }, { id: c1, secret: "sk-literal-for-tests-replaced0001" }"#,
        );
        let next = UpstreamLive::new(&replaced[0], Some(&new));
        assert_eq!(next.cooldown_until("c1"), 0);
    }
}
