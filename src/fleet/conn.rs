//! The fleet's Redis connections (one Redis: one per calling thread, made on its first
//! call; a cluster: one, made by the sync service), every call bounded by `timeout_ms` and
//! timed, and Redis's health (up/down) as the request path sees it.

use super::client::{Client, CONNECT_TIMEOUT};
use crate::config::FleetSettings;
use crate::telemetry::metrics::METRICS;
use arc_swap::ArcSwap;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
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

/// How calls reach Redis: one Redis through a connection per calling thread ([`local`]),
/// each reconnecting by itself; a Redis Cluster through one connection that follows
/// MOVED/ASK and failovers by itself (a clone is a handle).
enum Conn {
    Single {
        client: Box<redis::Client>,
        config: Box<ConnectionManagerConfig>,
    },
    Cluster(ClusterConnection),
}

thread_local! {
    /// This thread's connections to one Redis, one per live [`Redis`] (told apart by its
    /// token; entries of a dropped one are pruned on the next miss), each with the
    /// [`Redis::epoch`] it was made in.
    static LOCAL: RefCell<Vec<(Weak<()>, u64, ConnectionManager)>> = const { RefCell::new(Vec::new()) };
}

/// The calling thread's connection to `redis` (made on its first call, lazily connected).
///
/// Why per thread: the redis crate's multiplexed connection does its I/O in a task spawned
/// on the runtime of whoever used it first. One connection shared by every worker made each
/// call hop to that task's thread and back: two cross-thread wake-ups, which at 1,000
/// signed requests a second cost more than the loopback round trip itself (make bench:
/// exact limits added 0.19-0.21 ms at p50 over the plain node against a 0.06 ms Redis
/// PING). Made from the calling worker, the task runs on the caller's runtime, so the
/// round trip usually starts and ends on the calling thread. The cost: one connection per
/// proxy worker thread, plus the sync service's.
///
/// A connection made before Redis last came back up is replaced by a new one: while Redis
/// is down the request path does not call it, so each thread's connection would otherwise
/// find out it is broken on its first call after the recovery, fail it, and mark Redis down
/// for every thread again.
fn local(
    token: &Arc<()>,
    epoch: u64,
    client: &redis::Client,
    config: &ConnectionManagerConfig,
) -> Result<ConnectionManager, String> {
    LOCAL.with(|cell| {
        let mut conns = cell.borrow_mut();
        let mine = |t: &Weak<()>| std::ptr::eq(t.as_ptr(), Arc::as_ptr(token));
        if let Some((_, _, c)) = conns.iter().find(|(t, e, _)| mine(t) && *e == epoch) {
            return Ok(c.clone());
        }
        // Before comparing addresses with a new token: none of a dropped one's stays.
        conns.retain(|(t, _, _)| t.strong_count() > 0 && !mine(t));
        let c = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
            .map_err(|e| format!("{:?}", e.kind()))?;
        conns.push((Arc::downgrade(token), epoch, c.clone()));
        Ok(c)
    })
}

/// The connection (created lazily) and its health.
pub struct Redis {
    /// Swapped on reload (timeouts, `nodes`, `on_redis_down`, the sync interval); the
    /// connection keeps the settings it was made with ([`FleetSettings::restart_needed`]).
    settings: ArcSwap<FleetSettings>,
    /// A cluster's client until its first connection is made (that needs a round trip).
    cluster: OnceLock<redis::cluster::ClusterClient>,
    conn: OnceLock<Conn>,
    /// Tells this Redis's per-thread connections from another's ([`local`]).
    token: Arc<()>,
    /// How many times Redis came back up: a per-thread connection of an earlier epoch is
    /// replaced ([`local`]).
    epoch: AtomicU64,
    up: AtomicBool,
    /// Calls failed in a row since the last that succeeded.
    failures: AtomicU64,
    /// The sync service has tried to reach Redis at least once.
    tried: AtomicBool,
}

/// Calls that must fail in a row before Redis is taken for down. One slow answer (a
/// timeout under a burst) fails its own call only: taken for down, every signed request
/// of the node got the outage policy (503 with `fail_closed`) until the next sync.
const DOWN_AFTER: u64 = 3;

/// The sync's own bound: it sends every view touched lately in one pipeline per slot,
/// which the request path's few-millisecond timeout was not made for.
const SYNC_TIMEOUT_MIN: std::time::Duration = std::time::Duration::from_millis(500);

impl Redis {
    pub fn new(settings: FleetSettings) -> Redis {
        Redis {
            settings: ArcSwap::from_pointee(settings),
            cluster: OnceLock::new(),
            conn: OnceLock::new(),
            token: Arc::new(()),
            epoch: AtomicU64::new(0),
            up: AtomicBool::new(false),
            failures: AtomicU64::new(0),
            tried: AtomicBool::new(false),
        }
    }

    /// Create the client (no connection yet: one Redis is connected per calling thread on
    /// its first call, a cluster at [`Redis::ensure_connected`]).
    pub fn connect_lazily(&self) -> Result<(), String> {
        let result = self.new_client();
        if result.is_err() {
            // Never coming up: readiness must not wait for it.
            self.tried.store(true, Ordering::Release);
        }
        result
    }

    fn new_client(&self) -> Result<(), String> {
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
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let _ = self.conn.set(Conn::Single {
            client: Box::new(client),
            config: Box::new(config),
        });
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
        if up {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.up.swap(up, Ordering::AcqRel) != up {
            let s = self.settings();
            if up {
                self.epoch.fetch_add(1, Ordering::AcqRel);
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

    /// Run one Redis command or pipeline with the configured timeout (the sync's at least
    /// [`SYNC_TIMEOUT_MIN`]), timing it under `op`. [`DOWN_AFTER`] errors in a row mark
    /// Redis down; each failed call is `Err` to its caller either way.
    pub async fn call<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        req: Req<'_>,
    ) -> Result<T, RedisDown> {
        let Some(conn) = self.conn.get() else {
            return Err(RedisDown);
        };
        let started = Instant::now();
        let timeout = match op {
            "sync" => self.settings.load().timeout.max(SYNC_TIMEOUT_MIN),
            _ => self.settings.load().timeout,
        };
        let result = match conn {
            Conn::Single { client, config } => {
                match local(
                    &self.token,
                    self.epoch.load(Ordering::Acquire),
                    client,
                    config,
                ) {
                    Ok(mut c) => tokio::time::timeout(timeout, send(&mut c, req)).await,
                    Err(e) => Ok(Err(redis::RedisError::from((
                        redis::ErrorKind::Client,
                        "connection manager",
                        e,
                    )))),
                }
            }
            Conn::Cluster(c) => tokio::time::timeout(timeout, send(&mut c.clone(), req)).await,
        };
        METRICS
            .redis_seconds
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        let failure = match result {
            Ok(Ok(v)) => {
                if self.failures.load(Ordering::Relaxed) != 0 {
                    self.failures.store(0, Ordering::Relaxed);
                }
                return Ok(v);
            }
            Ok(Err(e)) => format!("{:?}", e.kind()),
            Err(_) => "timeout".to_string(),
        };
        METRICS.redis_errors.with_label_values(&[op]).inc();
        let in_a_row = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if self.is_up() && in_a_row < DOWN_AFTER {
            log::debug!("fleet: Redis {op} failed ({in_a_row} in a row): {failure}");
            return Err(RedisDown);
        }
        if self.is_up() {
            // Why it went down (a timeout, a refused connection, NOPERM from an ACL
            // missing a command keygate sends); repeats while down stay at debug.
            log::warn!("fleet: Redis {op} failed: {failure}");
        } else {
            log::debug!("fleet: Redis {op} failed: {failure}");
        }
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
