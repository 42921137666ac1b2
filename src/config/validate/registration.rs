//! `registration:` → [`RegistrationSettings`] (only when `enabled: true`).

use super::shared::{Errors, LoadOptions};
use crate::config::raw::{RawMasterKey, RawRegistration, RawSmtp};
use crate::config::runtime::{RegistrationSettings, SmtpSettings};
use crate::config::secret::{self, MasterKey};
use crate::limits::tier::Tier;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub(super) fn validate(
    raw: Option<&RawRegistration>,
    tiers: &HashMap<String, Arc<Tier>>,
    raw_master_keys: &[RawMasterKey],
    master_keys: &HashMap<String, MasterKey>,
    opts: LoadOptions,
    errs: &mut Errors,
) -> Option<RegistrationSettings> {
    let r = raw.filter(|r| r.enabled.unwrap_or(false))?;
    let p = "registration";
    if !tiers.contains_key(&r.tier) {
        errs.push(format!("{p}.tier"), format!("unknown tier \"{}\"", r.tier));
    }
    match r.verify_url.parse::<http::Uri>() {
        Ok(u)
            if matches!(u.scheme_str(), Some("http" | "https"))
                && u.host().is_some()
                && u.query().is_none() => {}
        _ => errs.push(
            format!("{p}.verify_url"),
            "must be an absolute http(s) URL without a query (the link is <verify_url>?code=…)",
        ),
    }
    if r.email_from.parse::<lettre::message::Mailbox>().is_err() {
        errs.push(
            format!("{p}.email_from"),
            format!("\"{}\" is not an e-mail address", r.email_from),
        );
    }
    let smtp = smtp(&r.smtp, master_keys, opts, errs);
    let domains = r.allowed_email_domains.as_ref().map(|d| {
        d.iter()
            .enumerate()
            .map(|(i, x)| {
                if x.is_empty() || x.contains('@') || x.contains(char::is_whitespace) {
                    errs.push(format!("{p}.allowed_email_domains[{i}]"), "not a domain");
                }
                x.to_ascii_lowercase()
            })
            .collect()
    });
    let code_ttl = r.code_ttl_s.unwrap_or(86_400);
    if !(1..=7 * 86_400).contains(&code_ttl) {
        errs.push(format!("{p}.code_ttl_s"), "must be 1 to 604800 seconds");
    }
    let per_ip = r.per_ip_per_hour.unwrap_or(10);
    if per_ip == 0 {
        errs.push(format!("{p}.per_ip_per_hour"), "must be at least 1");
    }
    let max_pending = r.max_pending.unwrap_or(10_000);
    if !(1..=1_000_000).contains(&max_pending) {
        errs.push(format!("{p}.max_pending"), "must be 1 to 1000000");
    }
    let seal = raw_master_keys
        .first()
        .and_then(|m| Some((m.id.clone(), master_keys.get(&m.id)?.clone())));
    if seal.is_none() {
        errs.push(
            p,
            "needs master_keys: a new site's secret is sealed under the first one until collected",
        );
    }
    Some(RegistrationSettings {
        tier: r.tier.clone(),
        verify_url: r.verify_url.clone(),
        email_from: r.email_from.clone(),
        smtp: smtp?,
        code_ttl: Duration::from_secs(code_ttl),
        per_ip_per_hour: per_ip,
        allowed_email_domains: domains,
        max_pending,
        seal: seal?,
    })
}

fn smtp(
    s: &RawSmtp,
    master_keys: &HashMap<String, MasterKey>,
    opts: LoadOptions,
    errs: &mut Errors,
) -> Option<SmtpSettings> {
    let p = "registration.smtp";
    let uri = match s.url.parse::<http::Uri>() {
        Ok(u) => u,
        Err(_) => {
            errs.push(
                format!("{p}.url"),
                "must look like smtp://host:port or smtps://host:port",
            );
            return None;
        }
    };
    let implicit_tls = match uri.scheme_str() {
        Some("smtps") => true,
        Some("smtp") => false,
        _ => {
            errs.push(
                format!("{p}.url"),
                "scheme must be smtp (STARTTLS) or smtps (TLS)",
            );
            return None;
        }
    };
    let Some(host) = uri.host().map(|h| h.trim_matches(['[', ']']).to_string()) else {
        errs.push(format!("{p}.url"), "has no host");
        return None;
    };
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        errs.push(
            format!("{p}.url"),
            "credentials go in username and password, not the URL",
        );
    }
    let loopback = super::shared::is_loopback_host(&host);
    let password = s.password.as_ref().and_then(|v| {
        secret::resolve(v, SmtpSettings::PASSWORD_PLACE, master_keys, opts.demo)
            .map_err(|m| errs.push(format!("{p}.password"), m))
            .ok()
    });
    if s.username.is_some() != password.is_some()
        && !errs.0.iter().any(|e| e.path == format!("{p}.password"))
    {
        errs.push(format!("{p}.username"), "username and password go together");
    }
    Some(SmtpSettings {
        port: uri
            .port_u16()
            .unwrap_or(if implicit_tls { 465 } else { 587 }),
        host,
        implicit_tls,
        starttls_required: !implicit_tls && !loopback,
        username: s.username.clone(),
        password,
    })
}
