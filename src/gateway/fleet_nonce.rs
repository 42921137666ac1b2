//! A signed request's nonce in fleet mode: claimed in Redis on its own, or (with
//! `fleet.exact_limits`) together with the request's admission in one round trip
//! ([`crate::fleet::exact`]). Either way one round trip, after the MAC verified.

use super::ctx::Ctx;
use super::service::Gateway;
use crate::auth::{self, AuthedClient, NonceClaim};
use crate::config::Runtime;
use crate::error::GatewayError;
use crate::fleet::exact::{self, Decision, Exact};
use std::net::IpAddr;

impl Gateway {
    /// Record a verified request's nonce: process-local, and fleet-wide in fleet mode.
    /// When the fleet decides admissions (`exact`, and Redis up) only the local record is
    /// made here and the claim is returned for [`Gateway::fleet_admission`].
    pub(super) async fn record_nonce(
        &self,
        rt: &Runtime,
        ip: IpAddr,
        claim: NonceClaim,
        exact: bool,
    ) -> Result<Option<NonceClaim>, GatewayError> {
        let now = crate::clock::now_s();
        let fleet = self.state.fleet.as_deref();
        let failed = |f: auth::AuthFailure| self.auth_failed(rt, &ip, &f);
        if exact && fleet.is_some_and(|f| f.settings().exact_limits && f.is_up()) {
            // A replay to this node is refused without a round trip.
            auth::record_local(&self.state.nonces, &claim, now).map_err(failed)?;
            return Ok(Some(claim));
        }
        crate::fleet::record_nonce(fleet, &self.state.nonces, &claim, now)
            .await
            .map_err(failed)?;
        Ok(None)
    }

    /// Claim a deferred nonce and have the fleet decide the request's admission under its
    /// site's tier. A replay is refused as one; if Redis fails, the outage policy applies
    /// to the nonce and the limiter decides alone (`None`).
    pub(super) async fn fleet_admission(
        &self,
        ctx: &Ctx,
        client: &AuthedClient,
        claim: &NonceClaim,
    ) -> Result<Option<Decision>, GatewayError> {
        let rt = &ctx.rt;
        let ip = ctx.client_ip.unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let failed = |f: auth::AuthFailure| self.auth_failed(rt, &ip, &f);
        let (Some(fleet), Some(site)) = (&self.state.fleet, rt.sites.get(client.site)) else {
            return Ok(None);
        };
        let now_ms = crate::clock::now_ms();
        match exact::claim_and_admit(fleet, claim, site.limit_key, &site.tier, now_ms).await {
            Ok(Exact::Decided(d)) => Ok(Some(d)),
            Ok(Exact::Replayed) => Err(failed(auth::replayed())),
            Err(crate::fleet::RedisDown) => {
                let now = crate::clock::secs(now_ms);
                crate::fleet::fallback(fleet, &self.state.nonces, claim, now, true)
                    .map_err(failed)?;
                Ok(None)
            }
        }
    }
}
