//! Hot-path micro-benchmarks: signature verification, nonce store insert, SSE framing.
//! Run: `cargo bench --bench hot_path` (numbers in README).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use keygate::auth::nonce::NonceStore;
use keygate::auth::signature::{self, RequestParts, SignRequest};
use keygate::response::sse::SseFramer;
use std::collections::HashSet;

fn bench(c: &mut Criterion) {
    let secret = b"kgs_bench_8Vq2mZ0xL3pN7tR1yW5cH9dF";
    let body = br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
    let url = "https://gw.example.com/openai/v1/chat/completions";
    let signed = signature::sign(
        secret,
        &SignRequest {
            method: "POST",
            url,
            body,
            key_id: "bench.k1",
            created: 1_767_225_600,
            nonce: "q7yN3lH0fI2xT8c4ZkPZVw",
        },
    )
    .unwrap();
    let mut headers = http::HeaderMap::new();
    headers.insert("content-digest", signed.content_digest.parse().unwrap());
    let none = HashSet::new();
    c.bench_function("signature: parse + base + HMAC verify", |b| {
        b.iter(|| {
            let p =
                signature::parse(&[&signed.signature_input], &[&signed.signature], &none).unwrap();
            let parts = RequestParts {
                method: "POST",
                authority: "gw.example.com",
                path: "/openai/v1/chat/completions",
                query: None,
                headers: &headers,
            };
            let base = signature::signature_base(&parts, &p).unwrap();
            black_box(signature::verify_mac(secret, &base, &p.signature))
        })
    });
    c.bench_function("content digest of a 70-byte body", |b| {
        b.iter(|| black_box(signature::content_digest(black_box(body))))
    });

    let store = NonceStore::new(1_000_000);
    let mut i = 0u64;
    c.bench_function("nonce store: check and insert", |b| {
        b.iter(|| {
            i += 1;
            black_box(
                store
                    .check_and_insert(
                        "bench.k1",
                        &format!("nonce-{i:016}"),
                        2_000_000_000,
                        1_000_000_000,
                    )
                    .is_ok(),
            )
        })
    });

    let event = br#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":" hello"},"finish_reason":null}]}

"#;
    let mut framer = SseFramer::new(1 << 20);
    c.bench_function("SSE: frame one typical event", |b| {
        b.iter(|| black_box(framer.push(black_box(event)).unwrap().len()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
