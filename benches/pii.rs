//! Added latency of PII pseudonymization on a 4 KiB prompt, with no personal data and
//! with 20 items: detection + rewrite of the request body, and restoration of a JSON
//! answer that echoes the prompt. Run:
//! `cargo bench --bench pii -- --warm-up-time 1 --measurement-time 3` (numbers in README).

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use keygate::pii::{self, detect, Outcome, PiiMode, PiiPolicy};
use keygate::upstream::kind::UpstreamKind;
use serde_json::{json, Map, Value};

/// Ordinary text with numbers, dates, times and versions (look-alikes, no PII).
const FILLER: &str = "Order 100234987 shipped on 2024-01-15 at 12:30, version 1.2.3 of the app. \
Please summarise the thread below and list the open questions for the team. ";

const ITEMS: [&str; 5] = [
    "jane.doe@example.com",
    "+1 415 555 2671",
    "4111 1111 1111 1111",
    "DE89 3704 0044 0532 0130 00",
    "192.168.1.20",
];

/// A prompt of 4 KiB with `items` personal data values spread through it.
fn prompt(items: usize) -> String {
    let mut out = String::new();
    let mut i = 0;
    while out.len() < 4096 {
        out.push_str(FILLER);
        if i < items {
            out.push_str(ITEMS[i % ITEMS.len()]);
            out.push_str(&format!(" (#{i}) "));
            i += 1;
        }
    }
    out.truncate(4096);
    out
}

fn body(text: &str) -> Map<String, Value> {
    match json!({"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}) {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn bench(c: &mut Criterion) {
    let policy = PiiPolicy {
        mode: PiiMode::Pseudonymize,
        detector: detect::Detector::new(&detect::BUILTIN_KINDS, &[]).unwrap(),
    };
    for (name, items) in [("no PII", 0), ("20 items", 20)] {
        let text = prompt(items);
        let raw = serde_json::to_vec(&body(&text)).unwrap();
        c.bench_function(
            &format!("pii request 4 KiB, {name}: detect + rewrite"),
            |b| {
                b.iter_batched(
                    || body(&text),
                    |mut obj| {
                        let out = pii::apply(&policy, UpstreamKind::OpenAi, &mut obj, &raw);
                        if out.is_some() {
                            black_box(serde_json::to_vec(&obj).unwrap());
                        }
                        out
                    },
                    BatchSize::SmallInput,
                )
            },
        );
        let mut obj = body(&text);
        if let Some(Outcome::Replaced(map)) =
            pii::apply(&policy, UpstreamKind::OpenAi, &mut obj, &raw)
        {
            let answer =
                json!({"choices": [{"message": {"content": obj["messages"][0]["content"]}}]})
                    .to_string();
            c.bench_function(&format!("pii response 4 KiB, {name}: restore JSON"), |b| {
                b.iter(|| map.restore_json(black_box(answer.as_bytes())))
            });
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
