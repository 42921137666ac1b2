//! The limiter check on the hot path, with 10,000 sites configured.
//! Run: `cargo bench --bench limiter` (numbers in README).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use keygate::limits::tier::{site_limit_key, ModelLimit, Tier};
use keygate::limits::Limiter;

fn tier() -> Tier {
    Tier {
        name: "bench".into(),
        requests_per_minute: Some(1_000_000_000),
        requests_per_hour: Some(1_000_000_000),
        requests_per_day: Some(1_000_000_000),
        tokens_per_day: Some(u64::MAX / 2),
        usd_per_day: Some(u64::MAX / 2),
        usd_per_month: Some(u64::MAX / 2),
        concurrent: Some(1_000_000),
        ..Tier::default()
    }
}

fn bench(c: &mut Criterion) {
    let sites = 10_000;
    let keys: Vec<u64> = (0..sites)
        .map(|i| site_limit_key(&format!("site-{i}")))
        .collect();
    let entry = ModelLimit {
        requests_per_minute: Some(1_000_000_000),
        tokens_per_day: Some(u64::MAX / 2),
        usd_per_day: Some(u64::MAX / 2),
        ..ModelLimit::new("gpt-4o*")
    };
    // Each site with one `models:` entry: 20,000 keys.
    let with_entries: Vec<u64> = keys.iter().flat_map(|&k| [k, entry.key(k)]).collect();
    let limiter = Limiter::local(&with_entries);
    let t = tier();
    let now = keygate::clock::now_ms();
    let mut i = 0usize;
    c.bench_function(
        "admit: 3 windows + tokens + USD day and month + concurrency, 10k sites",
        |b| {
            b.iter(|| {
                i = (i + 1) % sites;
                let a = limiter.admit(black_box(keys[i]), &t, now);
                black_box(a.is_ok())
            })
        },
    );
    c.bench_function(
        "admit_model: minute + tokens + USD of a models: entry, 10k sites",
        |b| {
            b.iter(|| {
                i = (i + 1) % sites;
                let a = limiter.admit_model(black_box(keys[i]), "gpt-4o*", &entry, now);
                black_box(a.is_ok())
            })
        },
    );
    let no_usd = Tier {
        usd_per_day: None,
        usd_per_month: None,
        ..tier()
    };
    c.bench_function("admit: 3 windows + tokens + concurrency, 10k sites", |b| {
        b.iter(|| {
            i = (i + 1) % sites;
            let a = limiter.admit(black_box(keys[i]), &no_usd, now);
            black_box(a.is_ok())
        })
    });
    let small = Limiter::local(&keys[..16]);
    c.bench_function("admit: full tier, 16 sites (cache-resident)", |b| {
        b.iter(|| {
            i = (i + 1) % 16;
            black_box(small.admit(black_box(keys[i]), &t, now).is_ok())
        })
    });
    let minute_only = Tier {
        requests_per_hour: None,
        requests_per_day: None,
        tokens_per_day: None,
        concurrent: None,
        ..no_usd.clone()
    };
    c.bench_function("admit: minute window only, 10k sites", |b| {
        b.iter(|| {
            i = (i + 1) % sites;
            black_box(limiter.admit(black_box(keys[i]), &minute_only, now).is_ok())
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
