//! The fleet's Redis connection: created lazily in the sync service's runtime, every
//! call bounded by `timeout_ms` and timed, and its health (up/down) as the request path
//! sees it.

use crate::config::FleetSettings;
use crate::telemetry::metrics::METRICS;
use redis::aio::ConnectionManager;
use secrecy::ExposeSecret;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Redis was unreachable, timed out or answered with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisDown;

/// One request to Redis.
pub enum Req<'a> {
    Cmd(&'a redis::Cmd),
    Pipe(&'a redis::Pipeline),
}

/// The connection (created lazily) and its health.
pub struct Redis {
    pub settings: FleetSettings,
    conn: OnceLock<ConnectionManager>,
    up: AtomicBool,
    /// The sync service has tried to reach Redis at least once.
    tried: AtomicBool,
}

impl Redis {
    pub fn new(settings: FleetSettings) -> Redis {
        Redis {
            settings,
            conn: OnceLock::new(),
            up: AtomicBool::new(false),
            tried: AtomicBool::new(false),
        }
    }

    /// Create the connection manager (no connection yet). Must run inside the tokio
    /// runtime that will drive the connection: the sync service's.
    pub fn connect_lazily(&self) -> Result<(), String> {
        let result = self.new_manager();
        if result.is_err() {
            // Never coming up: readiness must not wait for it.
            self.tried.store(true, Ordering::Release);
        }
        result
    }

    fn new_manager(&self) -> Result<(), String> {
        let client = redis::Client::open(self.settings.url.expose_secret())
            .map_err(|_| format!("bad Redis URL {}", self.settings.redacted_url))?;
        let t = self.settings.timeout;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(t))
            .set_response_timeout(Some(t))
            .set_number_of_retries(2)
            .set_max_delay(std::time::Duration::from_millis(500));
        let cm = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("Redis {}: {:?}", self.settings.redacted_url, e.kind()))?;
        let _ = self.conn.set(cm);
        Ok(())
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
            if up {
                log::info!(
                    "fleet: Redis {} reachable; fleet-wide enforcement on",
                    self.settings.redacted_url
                );
            } else {
                log::warn!(
                    "fleet: Redis {} unreachable; falling back (nonces: {:?}, limits: 1/{} of each quota)",
                    self.settings.redacted_url,
                    self.settings.nonces_when_down,
                    self.settings.nodes
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
        let mut conn = conn.clone();
        let started = Instant::now();
        let result = match req {
            Req::Cmd(c) => {
                tokio::time::timeout(self.settings.timeout, c.query_async(&mut conn)).await
            }
            Req::Pipe(p) => {
                tokio::time::timeout(self.settings.timeout, p.query_async(&mut conn)).await
            }
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
        log::debug!("fleet: Redis {op} failed: {failure}");
        METRICS.redis_errors.with_label_values(&[op]).inc();
        self.set_up(false);
        Err(RedisDown)
    }
}

impl Redis {
    /// The first attempt to reach Redis has finished.
    pub fn mark_tried(&self) {
        self.tried.store(true, Ordering::Release);
    }
}
