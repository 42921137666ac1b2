use super::*;
use tier::ModelLimit;

fn tier(rpm: Option<u64>, rph: Option<u64>, tokens: Option<u64>, concurrent: Option<u64>) -> Tier {
    Tier {
        name: "t".into(),
        requests_per_minute: rpm,
        requests_per_hour: rph,
        requests_per_day: None,
        tokens_per_day: tokens,
        concurrent,
        ..Tier::default()
    }
}

fn tokens(n: u64) -> Spend {
    Spend {
        tokens: n,
        micro_usd: 0,
    }
}

const T0: u64 = 1_767_225_600_000; // a minute boundary

/// The site keys the small tests use.
const SMALL: [u64; 9] = [1, 2, 3, 4, 5, 6, 7, 8, 9];

fn keys(n: u64) -> Vec<u64> {
    (0..n)
        .map(|i| crate::limits::tier::site_limit_key(&format!("site-{i}")))
        .collect()
}

#[test]
fn exactly_the_limit_passes() {
    let l = Limiter::local(&SMALL);
    let t = tier(Some(10), Some(100), None, None);
    let results: Vec<_> = (0..12).map(|i| l.admit(1, &t, T0 + 20_000 + i)).collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 10);
    let refusal = results[10].as_ref().err().unwrap();
    assert_eq!(refusal.limit, LimitName::RequestsPerMinute);
    // Refused 20 s into the minute: nothing to decay, so the wait is the rest of this
    // window plus the part of the next one until 10 × (1 − g) ≤ 9 (g = 0.1, 6 s).
    assert_eq!(ceil_secs(refusal.retry_after.unwrap()), 46);
    assert_eq!(refusal.ratelimit.as_deref(), Some("\"minute\";r=0;t=46"));
    // Another site is unaffected.
    assert!(l.admit(2, &t, T0 + 20_100).is_ok());
    // Refusals are not counted: after the computed wait the site gets in again.
    assert!(l.admit(1, &t, T0 + 20_011 + 46_000).is_ok());
}

#[test]
fn retry_after_is_never_too_short() {
    let l = Limiter::local(&SMALL);
    let t = tier(Some(5), None, None, None);
    let mut now = T0 + 7_000;
    for _ in 0..5 {
        l.admit(9, &t, now).unwrap();
    }
    for _ in 0..20 {
        let r = l.admit(9, &t, now).err().unwrap();
        let wait = r.retry_after.unwrap().as_millis() as u64;
        // Just before the wait ends: still refused. At its end: admitted.
        assert!(
            l.admit(9, &t, now + wait.saturating_sub(5)).is_err(),
            "wait {wait} too long?"
        );
        assert!(l.admit(9, &t, now + wait + 1).is_ok());
        now += wait + 1;
    }
}

#[test]
fn ratelimit_header_names_the_tightest_window() {
    let l = Limiter::local(&SMALL);
    let t = tier(Some(10), Some(12), None, None);
    let a = l.admit(3, &t, T0 + 30_000).unwrap();
    // minute: 9 of 10 left; hour: 11 of 12 left → hour is tighter relative to its quota? 0.9 vs 0.9166
    assert_eq!(
        a.ratelimit.map(|r| r.to_string()).as_deref(),
        Some("\"minute\";r=9;t=30")
    );
    assert_eq!(
        policy_header(&t).as_deref(),
        Some("\"minute\";q=10;w=60, \"hour\";q=12;w=3600")
    );
}

#[test]
fn concurrency_is_held_by_the_guard() {
    let l = Limiter::local(&SMALL);
    let t = tier(None, None, None, Some(2));
    let a = l.admit(4, &t, T0).unwrap();
    let b = l.admit(4, &t, T0).unwrap();
    let r = l.admit(4, &t, T0).err().unwrap();
    assert_eq!(r.limit, LimitName::Concurrent);
    drop(a);
    let c = l.admit(4, &t, T0).unwrap();
    drop((b, c));
}

#[test]
fn token_budget_refuses_once_spent() {
    let l = Limiter::local(&SMALL);
    let t = tier(None, None, Some(1000), None);
    assert!(l.admit(5, &t, T0).is_ok());
    l.charge(5, None, tokens(600), T0 + 1);
    assert!(l.admit(5, &t, T0 + 2).is_ok());
    l.charge(5, None, tokens(500), T0 + 3);
    let r = l.admit(5, &t, T0 + 4).err().unwrap();
    assert_eq!(r.limit, LimitName::TokensPerDay);
    assert_eq!(r.budget, Some((1100, 1000)));
    assert!(r.retry_after.unwrap() > Duration::from_secs(3600));
}

#[test]
fn three_thousand_sites_under_their_limits_are_never_refused() {
    let sites = 3_000u64;
    let keys = keys(sites);
    let l = Limiter::local(&keys);
    let t = tier(Some(10), Some(100), None, Some(4));
    let mut refused = 0;
    // Every site sends 5 requests under a limit of 10: any sharing of counters between
    // sites would show as a false refusal.
    for round in 0..5 {
        for &key in &keys {
            if l.admit(key, &t, T0 + 1_000 + round).is_err() {
                refused += 1;
            }
        }
    }
    assert_eq!(
        refused,
        0,
        "sites under their limit were refused (slots: {})",
        l.local_store().slots()
    );
}

#[test]
fn sizing_rule() {
    // A counter per key and window (two windows), 8 bytes, plus 1,024 spare; the USD
    // counters only with `prices:`, else a single counter each.
    let per_counter = |keys: usize| 2 * (keys + 1024) * 8;
    assert_eq!(LocalStore::new(&keys(1), false).slots(), 1025);
    assert_eq!(
        LocalStore::new(&keys(10_000), false).memory_bytes(),
        4 * per_counter(10_000) + 2 * 2 * 8
    );
    assert_eq!(
        LocalStore::new(&keys(10_000), true).memory_bytes(),
        6 * per_counter(10_000)
    );
    // 100,000 sites: 6.5 MB (the 16-slots-per-site sketches this replaced took 128 MiB).
    assert_eq!(
        LocalStore::new(&keys(100_000), false).memory_bytes(),
        4 * per_counter(100_000) + 2 * 2 * 8
    );
    // A key given twice has one counter.
    let twice = [7, 7, 8];
    assert_eq!(LocalStore::new(&twice, false).slots(), 2 + 1024);
}

/// A site not configured when the store was built counts in a spare counter: never
/// less than its own requests, and never in a configured site's counter.
#[test]
fn unconfigured_sites_count_in_spare_counters() {
    let configured = keys(100);
    let store = LocalStore::new(&configured, false);
    let strangers: Vec<u64> = (0..3000u64)
        .map(|i| i.wrapping_mul(0xA5A5_5A5A_1234_5678) ^ 0xDEAD)
        .collect();
    for &s in &strangers {
        assert!(
            store.key(s).cell >= 100,
            "a stranger shares a configured site's counter"
        );
        store.add(Counter::RequestsMinute, store.key(s), 1, T0);
    }
    for &s in &strangers {
        assert!(
            store
                .get(Counter::RequestsMinute, store.key(s), T0 + 1)
                .curr
                >= 1
        );
    }
    for &k in &configured {
        assert_eq!(
            store
                .get(Counter::RequestsMinute, store.key(k), T0 + 1)
                .curr,
            0
        );
    }
}

/// Every configured site's count is exact: no two sites share a counter. With keys
/// hashed into a sketch as they come (one row, a site per 16 slots), about one site in
/// sixteen would share one and read high.
#[test]
fn placed_sites_count_exactly() {
    let keys = keys(10_000);
    let store = LocalStore::new(&keys, true);
    for (i, &k) in keys.iter().enumerate() {
        store.add(
            Counter::RequestsMinute,
            store.key(k),
            1 + (i % 7) as i64,
            T0,
        );
    }
    for (i, &k) in keys.iter().enumerate() {
        let c = store.get(Counter::RequestsMinute, store.key(k), T0 + 1);
        assert_eq!(c.curr, 1 + (i % 7) as i64, "site {i}");
    }
}

/// A reload that adds sites builds new sketches; the sites that stay keep their counts
/// (current and previous window), counted before and after the swap.
#[test]
fn counts_survive_new_sketches() {
    let old_keys = keys(100);
    let old = Limiter::local(&old_keys);
    let t = tier(Some(10), None, Some(1000), None);
    for _ in 0..6 {
        old.admit(old_keys[0], &t, T0 + 1_000).unwrap();
    }
    old.charge(old_keys[0], None, tokens(700), T0 + 1_000);
    // Next minute: the 6 are in the previous window now.
    for _ in 0..3 {
        old.admit(old_keys[0], &t, T0 + 61_000).unwrap();
    }
    let new_keys = keys(150);
    let next = old.successor(Box::new(LocalStore::new(&new_keys, true)));
    let copied = next.local_store().copy_from(old.local_store(), None);
    // Counted by the old limiter after the first copy (a request racing the swap).
    old.admit(old_keys[0], &t, T0 + 61_500).unwrap();
    next.local_store()
        .copy_from(old.local_store(), Some(&copied));
    let store = next.local_store();
    let c = store.get(Counter::RequestsMinute, store.key(old_keys[0]), T0 + 62_000);
    assert_eq!((c.prev, c.curr), (6, 4));
    let c = store.get(Counter::TokensDay, store.key(old_keys[0]), T0 + 62_000);
    assert_eq!(c.curr, 700);
    let c = store.get(
        Counter::RequestsMinute,
        store.key(new_keys[120]),
        T0 + 62_000,
    );
    assert_eq!((c.prev, c.curr), (0, 0));
    assert!(store.covers(&new_keys, true) && !old.local_store().covers(&new_keys, false));
    // Limits hold on: half-way into the minute 6 × 0.5 + 4 = 7, so three more fit.
    for _ in 0..3 {
        next.admit(old_keys[0], &t, T0 + 90_000).unwrap();
    }
    assert!(next.admit(old_keys[0], &t, T0 + 90_000).is_err());
}

fn usd(micro: u64) -> Spend {
    Spend {
        tokens: 0,
        micro_usd: micro,
    }
}

/// 2026-01-31T12:00:00Z: half a day before a new calendar month.
const JAN31_NOON: u64 = T0 + 30 * 86_400_000 + 43_200_000;

#[test]
fn usd_budgets_refuse_once_spent_and_the_month_restarts_on_the_first() {
    let l = Limiter::local(&SMALL);
    let t = Tier {
        usd_per_day: Some(3_000_000),
        usd_per_month: Some(5_000_000),
        ..Tier::default()
    };
    l.admit(6, &t, JAN31_NOON).unwrap();
    l.charge(6, None, usd(2_000_000), JAN31_NOON);
    // 2 of 5 USD this month, 2 of 3 today: the day is closer to exhaustion.
    let a = l.admit(6, &t, JAN31_NOON + 1).unwrap();
    assert_eq!(
        a.ratelimit.unwrap().to_string(),
        "\"usd_day\";r=100;t=43200"
    );
    l.charge(6, None, usd(1_500_000), JAN31_NOON + 2);
    let r = l.admit(6, &t, JAN31_NOON + 3).err().unwrap();
    assert_eq!(r.limit, LimitName::UsdPerDay);
    assert_eq!(r.budget, Some((3_500_000, 3_000_000)));
    // The day slides: at noon on February 1st, 3.5 × 0.5 = 1.75 of January 31st still
    // counts, so it admits. The month is fixed: February starts from zero.
    let feb1 = JAN31_NOON + 43_200_000;
    assert!(
        l.admit(6, &t, feb1).is_err(),
        "all of yesterday counts at midnight"
    );
    let noon = feb1 + 43_200_000;
    let a = l.admit(6, &t, noon).unwrap();
    assert_eq!(
        a.ratelimit.unwrap().to_string(),
        "\"usd_day\";r=125;t=43200"
    );
    l.charge(6, None, usd(1_000_000), noon);
    let c = l
        .local_store()
        .get(Counter::UsdMonth, l.local_store().key(6), noon + 1);
    assert_eq!((c.prev, c.curr), (0, 1_000_000));
    // The month's own refusal: wait until the first of the next month.
    let t = Tier {
        usd_per_month: Some(1_000_000),
        ..Tier::default()
    };
    let r = l.admit(6, &t, noon + 1).err().unwrap();
    assert_eq!(r.limit, LimitName::UsdPerMonth);
    let march1 = feb1 + 28 * 86_400_000;
    assert_eq!(
        r.retry_after,
        Some(Duration::from_millis(march1 - noon - 1))
    );
    assert!(l.admit(6, &t, march1).is_ok());
}

#[test]
fn a_models_entry_counts_apart_from_the_site_and_from_other_entries() {
    let mini = ModelLimit {
        requests_per_minute: Some(2),
        tokens_per_day: Some(100),
        ..ModelLimit::new("gpt-4o-mini")
    };
    let big = ModelLimit {
        usd_per_day: Some(1_000_000),
        ..ModelLimit::new("gpt-4o*")
    };
    let site = 7;
    let l = Limiter::local(&[site, mini.key(site), big.key(site)]);
    assert!(l.admit_model(site, "gpt-4o-mini", &mini, T0).is_ok());
    assert!(l.admit_model(site, "gpt-4o-mini", &mini, T0).is_ok());
    let r = l.admit_model(site, "gpt-4o-mini", &mini, T0).err().unwrap();
    assert_eq!(r.limit, LimitName::RequestsPerMinute);
    assert_eq!(r.model.as_deref(), Some("gpt-4o-mini"));
    // The other entry and another site are not affected.
    assert!(l.admit_model(site, "gpt-4o*", &big, T0).is_ok());
    assert!(l.admit_model(8, "gpt-4o-mini", &mini, T0).is_ok());
    // Charges go to the site and to the entry the request was admitted under.
    let spend = Spend {
        tokens: 150,
        micro_usd: 1_000_000,
    };
    l.charge(site, Some(&big), spend, T0 + 1);
    let r = l.admit_model(site, "gpt-4o*", &big, T0 + 2).err().unwrap();
    assert_eq!(
        (r.limit, r.budget),
        (LimitName::UsdPerDay, Some((1_000_000, 1_000_000)))
    );
    let r = l.admit_model(site, "gpt-4o-mini", &mini, T0 + 120_000).ok();
    assert!(
        r.is_some(),
        "gpt-4o-mini's tokens were not charged by gpt-4o's answer"
    );
    let store = l.local_store();
    let c = store.get(Counter::UsdDay, store.key(site), T0 + 3);
    assert_eq!(c.curr, 1_000_000);
    let c = store.get(Counter::UsdMonth, store.key(big.key(site)), T0 + 3);
    assert_eq!(c.curr, 0, "an entry has no monthly budget");
}
