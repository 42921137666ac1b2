//! The fleet's Redis connection: created lazily in the sync service's runtime, every
//! call bounded by `timeout_ms` and timed, and its health (up/down) as the request path
//! sees it.

use super::client::{Client, CONNECT_TIMEOUT};
use crate::config::FleetSettings;
use crate::telemetry::metrics::METRICS;
use arc_swap::ArcSwap;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Redis was unreachable, timed out or answered with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisDown;

/// One request to Redis.
pub enum Req<'a> {
    Cmd(&'a redis::Cmd),
    Pipe(&'a redis::Pipeline),
    /// EVALSHA, and on NOSCRIPT a SCRIPT LOAD and EVALSHA again (once per Redis).
    Script(&'a redis::ScriptInvocation<'a>),
}

/// A connection to one Redis (reconnecting by itself) or to a Redis Cluster (following
/// MOVED/ASK and failovers by itself); both multiplex, and a clone is a handle.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// The connection (created lazily) and its health.
pub struct Redis {
    /// Swapped on reload (timeouts, `nodes`, `on_redis_down`, the sync interval); the
    /// connection keeps the settings it was made with ([`FleetSettings::restart_needed`]).
    settings: ArcSwap<FleetSettings>,
    /// A cluster's client until its first connection is made (that needs a round trip).
    cluster: OnceLock<redis::cluster::ClusterClient>,
    conn: OnceLock<Conn>,
    up: AtomicBool,
    /// The sync service has tried to reach Redis at least once.
    tried: AtomicBool,
}

impl Redis {
    pub fn new(settings: FleetSettings) -> Redis {
        Redis {
            settings: ArcSwap::from_pointee(settings),
            cluster: OnceLock::new(),
            conn: OnceLock::new(),
            up: AtomicBool::new(false),
            tried: AtomicBool::new(false),
        }
    }

    /// Create the client, and for one Redis its connection manager (no connection yet; a
    /// cluster connects at [`Redis::ensure_connected`]). Must run inside the tokio runtime
    /// that will drive the connection: the sync service's.
    pub fn connect_lazily(&self) -> Result<(), String> {
        let result = self.new_manager();
        if result.is_err() {
            // Never coming up: readiness must not wait for it.
            self.tried.store(true, Ordering::Release);
        }
        result
    }

    fn new_manager(&self) -> Result<(), String> {
        let settings = self.settings();
        let client = match super::client::client(&settings)? {
            Client::Single(c) => *c,
            Client::Cluster(c) => {
                let _ = self.cluster.set(*c);
                return Ok(());
            }
        };
        // Responses are bounded per call by `timeout_ms` ([`Redis::call`]), which a reload
        // may change; the manager's own bound is only a backstop.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let cm = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("Redis {}: {:?}", settings.redacted_url, e.kind()))?;
        let _ = self.conn.set(Conn::Single(cm));
        Ok(())
    }

    /// A cluster's first connection (its slot map read from a seed), if not made yet;
    /// false while it cannot be made. One Redis: always true (its manager connects lazily).
    pub async fn ensure_connected(&self) -> bool {
        if self.conn.get().is_some() {
            return true;
        }
        let Some(client) = self.cluster.get() else {
            return false;
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_connection()).await {
            Ok(Ok(c)) => {
                let _ = self.conn.set(Conn::Cluster(c));
                true
            }
            Ok(Err(e)) => {
                log::debug!("fleet: Redis Cluster connection failed: {:?}", e.kind());
                false
            }
            Err(_) => false,
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> Arc<FleetSettings> {
        self.settings.load_full()
    }

    /// Apply reloaded settings: what is safe to change takes effect now; a change that
    /// needs a new connection is named in a warning and waits for a restart (the
    /// connection settings in force stay as they are).
    pub fn reload(&self, next: &FleetSettings) {
        let current = self.settings();
        let restart = current.restart_needed(next);
        if !restart.is_empty() {
            log::warn!(
                "fleet: {} changed in the reloaded config; Redis connection settings apply only after a restart (keygate upgrade, or systemctl restart)",
                restart.join(", ")
            );
        }
        self.settings.store(Arc::new(FleetSettings {
            url: current.url.clone(),
            redacted_url: current.redacted_url.clone(),
            key_prefix: current.key_prefix.clone(),
            tls: current.tls.clone(),
            username: current.username.clone(),
            password: current.password.clone(),
            cluster: current.cluster,
            seeds: current.seeds.clone(),
            ..next.clone()
        }));
    }

    /// The first attempt to reach Redis has finished (successful or not).
    pub fn has_tried(&self) -> bool {
        self.tried.load(Ordering::Acquire)
    }

    /// Redis answered the last call.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Record whether Redis answered (logged once per change, and the `redis_up` gauge).
    pub fn set_up(&self, up: bool) {
        if self.up.swap(up, Ordering::AcqRel) != up {
            let s = self.settings();
            if up {
                log::info!(
                    "fleet: Redis {} reachable; fleet-wide enforcement on",
                    s.redacted_url
                );
            } else {
                log::warn!(
                    "fleet: Redis {} unreachable; falling back (nonces: {:?}, limits: 1/{} of each quota)",
                    s.redacted_url,
                    s.nonces_when_down,
                    s.nodes
                );
            }
        }
        METRICS.redis_up.set(i64::from(up));
    }

    /// Run one Redis command or pipeline with the configured timeout, timing it under
    /// `op`. Any error marks Redis down.
    pub async fn call<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        req: Req<'_>,
    ) -> Result<T, RedisDown> {
        let Some(conn) = self.conn.get() else {
            return Err(RedisDown);
        };
        let started = Instant::now();
        let timeout = self.settings.load().timeout;
        let result = match conn.clone() {
            Conn::Single(mut c) => tokio::time::timeout(timeout, send(&mut c, req)).await,
            Conn::Cluster(mut c) => tokio::time::timeout(timeout, send(&mut c, req)).await,
        };
        METRICS
            .redis_seconds
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        let failure = match result {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => format!("{:?}", e.kind()),
            Err(_) => "timeout".to_string(),
        };
        if self.is_up() {
            // Why it went down (a timeout, a refused connection, NOPERM from an ACL
            // missing a command keygate sends); repeats while down stay at debug.
            log::warn!("fleet: Redis {op} failed: {failure}");
        } else {
            log::debug!("fleet: Redis {op} failed: {failure}");
        }
        METRICS.redis_errors.with_label_values(&[op]).inc();
        self.set_up(false);
        Err(RedisDown)
    }
}

/// The hash tag of a key (what `{…}` encloses), which alone decides its Cluster slot; the
/// whole key when it has none.
pub fn hash_tag(key: &str) -> &str {
    key.split_once('{')
        .and_then(|(_, rest)| rest.split_once('}'))
        .map_or(key, |(tag, _)| tag)
}

/// Send one request on a connection.
async fn send<T: redis::FromRedisValue>(
    conn: &mut (impl ConnectionLike + Send),
    req: Req<'_>,
) -> redis::RedisResult<T> {
    match req {
        Req::Cmd(c) => c.query_async(conn).await,
        Req::Pipe(p) => p.query_async(conn).await,
        Req::Script(s) => s.invoke_async(conn).await,
    }
}

impl Redis {
    /// Whether this is a Redis Cluster: every pipeline must then stay in one slot (keys
    /// of one hash tag), and a server-side script's keys too.
    pub fn is_cluster(&self) -> bool {
        self.settings.load().cluster
    }

    /// Split `items` into the groups one pipeline may carry: all of them for one Redis;
    /// in a cluster, those whose keys share a hash tag (one slot, so one node).
    pub fn groups<T>(&self, items: Vec<T>, key: impl Fn(&T) -> &str) -> Vec<Vec<T>> {
        if !self.is_cluster() {
            return if items.is_empty() {
                vec![]
            } else {
                vec![items]
            };
        }
        let mut by_tag: std::collections::HashMap<String, Vec<T>> = Default::default();
        for item in items {
            by_tag
                .entry(hash_tag(key(&item)).to_string())
                .or_default()
                .push(item);
        }
        by_tag.into_values().collect()
    }

    /// The first attempt to reach Redis has finished.
    pub fn mark_tried(&self) {
        self.tried.store(true, Ordering::Release);
    }
}
