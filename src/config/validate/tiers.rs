//! `tiers:` → [`Tier`]s, each with its `RateLimit-Policy` header built once.

use super::shared::Errors;
use crate::config::raw::{RawModelLimit, RawTier};
use crate::limits::price::{to_micro, ModelTable, Prices};
use crate::limits::tier::{ModelLimit, Tier};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Most USD a budget may be (a typo guard; well above any single site's spend).
const MAX_USD: f64 = 10_000_000.0;

/// A limit of 0 is a mistake (omitting it means no limit).
fn check_counts(p: &str, fields: &[(&str, Option<u64>)], errs: &mut Errors) {
    for (field, v) in fields {
        if *v == Some(0) {
            errs.push(
                format!("{p}.{field}"),
                "must be at least 1 (omit it for no limit)",
            );
        }
    }
}

/// A USD budget as micro-USD: from one micro-dollar to [`MAX_USD`].
fn usd(p: &str, field: &str, v: Option<f64>, errs: &mut Errors) -> Option<u64> {
    let v = v?;
    if !v.is_finite() || !(0.000_001..=MAX_USD).contains(&v) {
        errs.push(
            format!("{p}.{field}"),
            format!("must be a number of USD from 0.000001 to {MAX_USD} (omit it for no limit)"),
        );
        return None;
    }
    Some(to_micro(v))
}

/// `tiers.<name>.models`: each entry limits something, and its key is a model or a glob.
fn models(
    p: &str,
    raw: &BTreeMap<String, RawModelLimit>,
    errs: &mut Errors,
) -> ModelTable<ModelLimit> {
    let mut entries = Vec::new();
    for (glob, m) in raw {
        let p = format!("{p}.models.{glob}");
        if glob.trim().is_empty() {
            errs.push(&p, "empty model name");
        }
        check_counts(
            &p,
            &[
                ("requests_per_minute", m.requests_per_minute),
                ("tokens_per_day", m.tokens_per_day),
            ],
            errs,
        );
        let limit = ModelLimit {
            requests_per_minute: m.requests_per_minute,
            tokens_per_day: m.tokens_per_day,
            usd_per_day: usd(&p, "usd_per_day", m.usd_per_day, errs),
            ..ModelLimit::new(glob)
        };
        if m.requests_per_minute.is_none() && m.tokens_per_day.is_none() && m.usd_per_day.is_none()
        {
            errs.push(
                &p,
                "limits nothing: give requests_per_minute, tokens_per_day or usd_per_day",
            );
        }
        entries.push((glob.clone(), limit));
    }
    super::prices::table(entries, &format!("{p}.models"), errs)
}

/// Every tier by name. A tier that limits spend needs a `prices:` table (else every
/// model would be refused as unpriced).
pub(super) fn validate(
    raw: &BTreeMap<String, RawTier>,
    prices: &Prices,
    errs: &mut Errors,
) -> HashMap<String, Arc<Tier>> {
    let mut tiers = HashMap::new();
    for (name, t) in raw {
        let p = format!("tiers.{name}");
        check_counts(
            &p,
            &[
                ("requests_per_minute", t.requests_per_minute),
                ("requests_per_hour", t.requests_per_hour),
                ("requests_per_day", t.requests_per_day),
                ("tokens_per_day", t.tokens_per_day),
                ("concurrent", t.concurrent),
            ],
            errs,
        );
        let mut tier = Tier {
            name: name.clone(),
            requests_per_minute: t.requests_per_minute,
            requests_per_hour: t.requests_per_hour,
            requests_per_day: t.requests_per_day,
            tokens_per_day: t.tokens_per_day,
            usd_per_day: usd(&p, "usd_per_day", t.usd_per_day, errs),
            usd_per_month: usd(&p, "usd_per_month", t.usd_per_month, errs),
            concurrent: t.concurrent,
            models: models(&p, &t.models, errs),
            policy: None,
        };
        if tier.spends_usd() && prices.is_empty() {
            let field = if t.usd_per_day.is_some() {
                "usd_per_day"
            } else if t.usd_per_month.is_some() {
                "usd_per_month"
            } else {
                "models"
            };
            errs.push(
                format!("{p}.{field}"),
                "a USD limit needs a top-level `prices:` table (a model without a price is refused under it)",
            );
        }
        tier.policy =
            crate::limits::policy_header(&tier).and_then(|p| http::HeaderValue::try_from(p).ok());
        tiers.insert(name.clone(), Arc::new(tier));
    }
    tiers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::price::Price;

    #[derive(serde::Deserialize)]
    struct File {
        tiers: BTreeMap<String, RawTier>,
    }

    fn load(yaml: &str, prices: &Prices) -> (HashMap<String, Arc<Tier>>, Vec<String>) {
        let raw: File = serde_yaml::from_str(yaml).unwrap();
        let mut errs = Errors::default();
        let tiers = validate(&raw.tiers, prices, &mut errs);
        (
            tiers,
            errs.0
                .iter()
                .map(|e| format!("{}: {}", e.path, e.message))
                .collect(),
        )
    }

    fn priced() -> Prices {
        let p = Price {
            input: 1.0,
            cached_input: 0.1,
            cache_write: 1.25,
            output: 2.0,
        };
        Prices::new(vec![("gpt-*".into(), p)]).unwrap()
    }

    #[test]
    fn usd_budgets_and_model_limits_load() {
        let (tiers, errs) = load(
            "tiers:\n  pro:\n    requests_per_minute: 60\n    usd_per_day: 2.5\n    usd_per_month: 40\n    models:\n      \"gpt-4o*\": { requests_per_minute: 5, usd_per_day: 0.75 }\n      gpt-4o-mini: { tokens_per_day: 100000 }\n",
            &priced(),
        );
        assert!(errs.is_empty(), "{errs:?}");
        let t = &tiers["pro"];
        assert_eq!(
            (t.usd_per_day, t.usd_per_month),
            (Some(2_500_000), Some(40_000_000))
        );
        let (glob, m) = t.models.find("gpt-4o-2024-08-06").unwrap();
        assert_eq!(
            (glob, m.requests_per_minute, m.usd_per_day),
            ("gpt-4o*", Some(5), Some(750_000))
        );
        assert_eq!(
            t.models.find("gpt-4o-mini").unwrap().1.tokens_per_day,
            Some(100_000)
        );
        assert!(t.models.find("claude-3").is_none());
        assert_ne!(m.key(7), t.models.find("gpt-4o-mini").unwrap().1.key(7));
        assert_eq!(
            t.policy.as_ref().unwrap().to_str().unwrap(),
            "\"minute\";q=60;w=60, \"usd_day\";q=250;qu=\"usd-cents\";w=86400, \"usd_month\";q=4000;qu=\"usd-cents\""
        );
    }

    #[test]
    fn bad_usd_limits_name_their_yaml_path() {
        let (_, errs) = load(
            "tiers:\n  a:\n    usd_per_day: -1\n    usd_per_month: .inf\n    models:\n      \"x[\": { requests_per_minute: 1 }\n      m: {}\n      n: { requests_per_minute: 0 }\n",
            &priced(),
        );
        let has = |p: &str| errs.iter().any(|e| e.starts_with(p));
        assert!(
            has("tiers.a.usd_per_day: must be a number of USD"),
            "{errs:?}"
        );
        assert!(has("tiers.a.usd_per_month: must be"), "{errs:?}");
        assert!(has("tiers.a.models.x[: not a valid model glob"), "{errs:?}");
        assert!(has("tiers.a.models.m: limits nothing"), "{errs:?}");
        assert!(
            has("tiers.a.models.n.requests_per_minute: must be at least 1"),
            "{errs:?}"
        );
        // No prices: a USD limit would refuse every model.
        let (_, errs) = load(
            "tiers:\n  b:\n    models:\n      \"*\": { usd_per_day: 1 }\n",
            &Prices::default(),
        );
        assert!(
            has_in(
                &errs,
                "tiers.b.models: a USD limit needs a top-level `prices:` table"
            ),
            "{errs:?}"
        );
    }

    fn has_in(errs: &[String], p: &str) -> bool {
        errs.iter().any(|e| e.starts_with(p))
    }
}
