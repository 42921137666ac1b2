//! Raw YAML → [`Runtime`]: one file per section, each reporting every mistake with its
//! YAML path; this orchestrator joins them and builds a `Runtime` only when nothing
//! failed.

pub mod admin;
mod anomaly;
mod fleet;
mod keys;
mod pii;
mod prices;
mod registration;
mod routes;
mod server;
mod shared;
mod sites;
mod tiers;
mod upstreams;

use super::error::ConfigErrors;
use super::raw::RawConfig;
use super::runtime::Runtime;
use shared::Errors;
pub use shared::LoadOptions;
use std::collections::HashSet;

/// Turn the raw file into a `Runtime`, or report every mistake.
pub fn validate(raw: RawConfig, opts: LoadOptions) -> Result<Runtime, ConfigErrors> {
    let mut errs = Errors::default();
    let mut warnings = Vec::new();

    let (server, mut process) = server::validate(&raw.server, &mut errs);
    process.audit_path = server::audit_path(raw.log.as_ref(), &mut errs);
    let master_keys = keys::master_keys(&raw.master_keys, &mut errs);
    let upstreams = upstreams::validate_all(&raw, &master_keys, opts, &mut errs, &mut warnings);
    let routes = routes::validate(&raw, &upstreams, &mut errs);
    let prices = prices::validate(&raw.prices, &mut errs);
    let tiers = tiers::validate(&raw.tiers, &prices, &mut errs);
    let clients = sites::validate(&raw, &tiers, &master_keys, opts, &mut errs, &mut warnings);
    let (tokens, token_max_ttl, token_mints_per_ip) = keys::tokens(&raw, &master_keys, &mut errs);
    let fleet = fleet::validate(
        raw.fleet.as_ref(),
        &master_keys,
        opts,
        &mut errs,
        &mut warnings,
    );

    let admin = admin::validate(
        raw.admin.as_ref(),
        &raw.master_keys,
        &master_keys,
        opts,
        &mut errs,
    );
    let registration = registration::validate(
        raw.registration.as_ref(),
        &tiers,
        &raw.master_keys,
        &master_keys,
        opts,
        &mut errs,
    );
    if let (Some(a), Some(addr)) = (&raw.admin, process.admin_listen) {
        if !addr.ip().is_loopback() && a.allow_plaintext != Some(true) {
            errs.push(
                "admin.keys",
                format!("the admin API answers with new client secrets, in clear on server.admin_listen {addr}, which is not loopback: keep admin_listen on loopback (reach it over SSH or through a TLS-terminating proxy on the same host), or set admin.allow_plaintext: true for a network you trust"),
            );
        }
    }
    let anomaly = anomaly::validate(raw.anomaly.as_ref(), &mut errs);
    let otlp = anomaly::otlp(raw.telemetry.as_ref(), &master_keys, opts, &mut errs);

    if !errs.0.is_empty() {
        return Err(ConfigErrors(errs.0));
    }
    let cors_origins: HashSet<String> = clients
        .sites
        .iter()
        .flat_map(|s| s.cors_origins.iter().cloned())
        .collect();
    let mut rt = Runtime {
        generation: 0,
        server,
        process,
        upstreams,
        routes,
        tiers,
        sites: clients.sites,
        keys: clients.keys,
        bearer_keys: clients.bearer_keys,
        warnings,
        scanner: crate::response::validate::SecretScanner::new(&[]),
        tokens,
        token_max_ttl,
        token_mints_per_ip,
        cors_origins,
        fleet,
        prices,
        admin,
        registration,
        anomaly,
        otlp,
    };
    rt.scanner =
        crate::response::validate::SecretScanner::new(&super::inventory::all_secret_strings(&rt));
    Ok(rt)
}
