//! The fleet's background service: creates the Redis connection inside its own runtime,
//! then every `sync_interval` probes Redis while it is down, writes back nonces accepted
//! locally during an outage, and syncs the counters.

use super::Fleet;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;

/// The sync service.
pub struct FleetSync {
    pub fleet: Arc<Fleet>,
}

#[async_trait]
impl BackgroundService for FleetSync {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let fleet = &self.fleet;
        if let Err(e) = fleet.redis.connect_lazily() {
            log::error!("fleet: {e}; running on the fallback policy");
            return;
        }
        loop {
            let now_ms = crate::clock::now_ms();
            if fleet.is_up() || fleet.recover(now_ms).await {
                fleet.counters.sync(&fleet.redis, now_ms).await;
            } else {
                fleet.counters.prune(now_ms);
            }
            // Read each time: a reload may change it.
            let interval = fleet.settings().sync_interval;
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
