//! Prices (SPEC §8.3): USD per million tokens per model, from the operator's `prices:`
//! table (the only one applied; `conf/prices.example.yaml` has public list prices to start
//! from). A model is matched exactly first, then by the most specific glob (the one with
//! the most characters that are not wildcards); globs are `globset`'s (`*`, `?`, `[…]`,
//! `{a,b}`), and `*` matches `/` too, as model names may hold one. Tiers' per-model limits
//! are matched the same way ([`ModelTable`]).

use crate::response::usage::Usage;
use std::collections::HashMap;

/// One model's prices, USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub input: f64,
    /// Input tokens read from the provider's cache (default: `input`).
    pub cached_input: f64,
    /// Input tokens written to the provider's cache (default: `input`).
    pub cache_write: f64,
    /// Output tokens, reasoning included.
    pub output: f64,
}

impl Price {
    /// What `u` costs, in micro-USD (rounded up: spend is never undercounted).
    pub fn micro_usd(&self, u: &Usage) -> u64 {
        to_micro(self.cost(u))
    }

    /// What `u` costs, in USD.
    pub fn cost(&self, u: &Usage) -> f64 {
        let plain = u
            .input
            .saturating_sub(u.cached)
            .saturating_sub(u.cache_write);
        (plain as f64 * self.input
            + u.cached as f64 * self.cached_input
            + u.cache_write as f64 * self.cache_write
            + u.output as f64 * self.output)
            / 1_000_000.0
    }
}

/// USD as whole micro-USD, rounded up (budgets are counted in these).
pub fn to_micro(usd: f64) -> u64 {
    // Less a trace, so float noise (0.0021 × 10⁶ = 2100.0000000000005) does not round up.
    let m = (usd * 1_000_000.0 - 1e-6).ceil();
    if m.is_finite() && m > 0.0 {
        m.min(i64::MAX as f64) as u64
    } else {
        0
    }
}

/// Micro-USD as USD, for JSON.
pub fn to_usd(micro: u64) -> f64 {
    micro as f64 / 1_000_000.0
}

/// The `prices:` table.
pub type Prices = ModelTable<Price>;

/// Values by model name or glob (`prices:`, a tier's `models:`): a model is matched
/// exactly first, then by the most specific glob.
#[derive(Debug, Clone)]
pub struct ModelTable<T> {
    exact: HashMap<String, T>,
    /// Globs, most specific first: (pattern, matcher, value).
    globs: Vec<(String, globset::GlobMatcher, T)>,
}

impl<T> Default for ModelTable<T> {
    fn default() -> Self {
        ModelTable {
            exact: HashMap::new(),
            globs: Vec::new(),
        }
    }
}

/// Whether a key is a glob rather than a model name.
fn is_glob(key: &str) -> bool {
    key.contains(['*', '?', '[', '{'])
}

/// Characters of a glob that are not wildcards: the more, the more specific.
fn specificity(glob: &str) -> usize {
    glob.chars().filter(|c| !"*?[]{},".contains(*c)).count()
}

impl<T> ModelTable<T> {
    /// A table from `(key, value)`; `Err((key, why))` for a glob that does not compile.
    pub fn new(entries: Vec<(String, T)>) -> Result<ModelTable<T>, (String, String)> {
        let mut p = ModelTable::default();
        for (key, value) in entries {
            if is_glob(&key) {
                let m = globset::GlobBuilder::new(&key)
                    .literal_separator(false)
                    .build()
                    .map_err(|e| (key.clone(), e.kind().to_string()))?
                    .compile_matcher();
                p.globs.push((key, m, value));
            } else {
                p.exact.insert(key, value);
            }
        }
        p.globs.sort_by(|a, b| {
            specificity(&b.0)
                .cmp(&specificity(&a.0))
                .then(a.0.cmp(&b.0))
        });
        Ok(p)
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.globs.is_empty()
    }

    /// Every entry, as (key, value).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        let exact = self.exact.iter().map(|(k, v)| (k.as_str(), v));
        exact.chain(self.globs.iter().map(|(k, _, v)| (k.as_str(), v)))
    }

    /// The value for `model` and the key that gave it.
    pub fn find(&self, model: &str) -> Option<(&str, &T)> {
        if let Some((k, p)) = self.exact.get_key_value(model) {
            return Some((k.as_str(), p));
        }
        self.globs
            .iter()
            .find(|(_, m, _)| m.is_match(model))
            .map(|(k, _, p)| (k.as_str(), p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(input: f64, output: f64) -> Price {
        Price {
            input,
            cached_input: input / 10.0,
            cache_write: input * 1.25,
            output,
        }
    }

    #[test]
    fn the_most_specific_match_wins() {
        let p = Prices::new(vec![
            ("gpt-4o*".into(), price(2.5, 10.0)),
            ("gpt-4o-mini*".into(), price(0.15, 0.6)),
            ("gpt-4o-mini".into(), price(0.1, 0.5)),
            ("*".into(), price(100.0, 100.0)),
        ])
        .unwrap();
        assert_eq!(p.find("gpt-4o-mini").unwrap().0, "gpt-4o-mini");
        assert_eq!(p.find("gpt-4o-mini-2024-07-18").unwrap().0, "gpt-4o-mini*");
        assert_eq!(p.find("gpt-4o-2024-08-06").unwrap().0, "gpt-4o*");
        assert_eq!(p.find("accounts/x/models/llama").unwrap().0, "*");
        let none = Prices::new(vec![("claude-*".into(), price(3.0, 15.0))]).unwrap();
        assert!(none.find("gpt-4o").is_none());
        assert!(Prices::new(vec![("gpt-[".into(), price(1.0, 1.0))]).is_err());
    }

    #[test]
    fn every_billed_kind_has_its_price() {
        let p = price(3.0, 15.0);
        let u = Usage {
            input: 1200,
            cached: 1000,
            cache_write: 180,
            output: 300,
            reasoning: 0,
            ..Usage::default()
        };
        // 20 plain × 3 + 1000 cached × 0.3 + 180 written × 3.75 + 300 out × 15, per million.
        let want = (20.0 * 3.0 + 1000.0 * 0.3 + 180.0 * 3.75 + 300.0 * 15.0) / 1e6;
        assert!((p.cost(&u) - want).abs() < 1e-12, "{} {want}", p.cost(&u));
    }
}
