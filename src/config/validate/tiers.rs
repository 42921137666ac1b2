//! `tiers:` → [`Tier`]s, each with its `RateLimit-Policy` header built once.

use super::shared::Errors;
use crate::config::raw::RawTier;
use crate::limits::tier::Tier;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Every tier by name; a limit of 0 is a mistake (omitting it means no limit).
pub(super) fn validate(
    raw: &BTreeMap<String, RawTier>,
    errs: &mut Errors,
) -> HashMap<String, Arc<Tier>> {
    let mut tiers = HashMap::new();
    for (name, t) in raw {
        let p = format!("tiers.{name}");
        for (field, v) in [
            ("requests_per_minute", t.requests_per_minute),
            ("requests_per_hour", t.requests_per_hour),
            ("requests_per_day", t.requests_per_day),
            ("tokens_per_day", t.tokens_per_day),
            ("concurrent", t.concurrent),
        ] {
            if v == Some(0) {
                errs.push(
                    format!("{p}.{field}"),
                    "must be at least 1 (omit it for no limit)",
                );
            }
        }
        let mut tier = Tier {
            name: name.clone(),
            requests_per_minute: t.requests_per_minute,
            requests_per_hour: t.requests_per_hour,
            requests_per_day: t.requests_per_day,
            tokens_per_day: t.tokens_per_day,
            concurrent: t.concurrent,
            policy: None,
        };
        tier.policy =
            crate::limits::policy_header(&tier).and_then(|p| http::HeaderValue::try_from(p).ok());
        tiers.insert(name.clone(), Arc::new(tier));
    }
    tiers
}
