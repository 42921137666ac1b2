//! `prices:` → [`Prices`]: USD per million tokens, each a finite number from 0 to
//! 100,000; keys are model names or globs that compile.

use super::shared::Errors;
use crate::config::raw::RawPrice;
use crate::limits::price::{ModelTable, Price, Prices};
use std::collections::BTreeMap;

/// Most USD per million tokens accepted (a typo guard).
const MAX_PRICE: f64 = 100_000.0;

pub(super) fn validate(raw: &BTreeMap<String, RawPrice>, errs: &mut Errors) -> Prices {
    let mut entries = Vec::new();
    for (key, r) in raw {
        let p = format!("prices.{key}");
        if key.trim().is_empty() {
            errs.push(&p, "empty model name");
        }
        let mut check = |field: &str, v: f64| {
            if !v.is_finite() || !(0.0..=MAX_PRICE).contains(&v) {
                errs.push(
                    format!("{p}.{field}"),
                    format!("must be a number of USD per million tokens from 0 to {MAX_PRICE}"),
                );
            }
            v
        };
        let input = check("input", r.input);
        let price = Price {
            input,
            cached_input: r.cached_input.map_or(input, |v| check("cached_input", v)),
            cache_write: r.cache_write.map_or(input, |v| check("cache_write", v)),
            output: check("output", r.output),
        };
        entries.push((key.clone(), price));
    }
    table(entries, "prices", errs)
}

/// A table of model globs from `entries` at the YAML path `at` (`prices`, or a tier's
/// `models`); an invalid glob is an error naming it, and leaves the table empty.
pub(super) fn table<T>(entries: Vec<(String, T)>, at: &str, errs: &mut Errors) -> ModelTable<T> {
    ModelTable::new(entries).unwrap_or_else(|(glob, why)| {
        errs.push(
            format!("{at}.{glob}"),
            format!("not a valid model glob: {why}"),
        );
        ModelTable::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct File {
        prices: BTreeMap<String, RawPrice>,
    }

    #[test]
    fn the_example_table_loads_and_prices_dated_models() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/prices.example.yaml");
        let file: File = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut errs = Errors::default();
        let prices = validate(&file.prices, &mut errs);
        assert!(errs.0.is_empty(), "{:?}", errs.0);
        assert_eq!(
            prices.find("gpt-4o-mini-2024-07-18").unwrap().0,
            "gpt-4o-mini-2024-*"
        );
        assert_eq!(
            prices.find("claude-sonnet-4-5-20250929").unwrap().0,
            "claude-sonnet-4*"
        );
        assert!(prices.find("some-local-model").is_none());
    }

    #[test]
    fn bad_prices_name_their_yaml_path() {
        let raw: File = serde_yaml::from_str(
            "prices:\n  m: { input: -1, output: 1 }\n  \"x[\": { input: 1, output: .nan }\n",
        )
        .unwrap();
        let mut errs = Errors::default();
        validate(&raw.prices, &mut errs);
        let paths: Vec<_> = errs.0.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"prices.m.input"), "{paths:?}");
        assert!(paths.contains(&"prices.x[.output"), "{paths:?}");
        assert!(paths.contains(&"prices.x["), "{paths:?}");
    }
}
