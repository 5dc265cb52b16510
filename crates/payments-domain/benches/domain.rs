//! Micro-benchmarks of the hot pure functions: decoding, validation, the idempotency decision.
//!
//! `cargo bench -p payments-domain` (or `cargo xtask bench`, which runs these after the scenarios).

#![allow(missing_docs)] // criterion's macros generate undocumented items.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use payments_domain::{Payment, PaymentId, decide, event};

fn decoding(c: &mut Criterion) {
    let valid = br#"{"payment_id": "pay-000123456", "amount": 1999, "currency": "EUR"}"#;
    let with_extras = br#"{"payment_id": "pay-000123456", "amount": 1999, "currency": "EUR", "channel": "pos", "meta": {"a": [1, 2]}}"#;
    let escaped = br#"{"payment_id": "pay-\u0030123456", "amount": 1999, "currency": "EUR"}"#;
    let invalid = br#"{"payment_id": "pay-000123456", "amount": 19.99, "currency": "EUR"}"#;
    let garbage = b"\xff\xfe not json at all";
    let mut group = c.benchmark_group("decode");
    group.bench_function("valid", |b| b.iter(|| event::decode(black_box(valid))));
    group.bench_function("valid_with_unknown_fields", |b| b.iter(|| event::decode(black_box(with_extras))));
    group.bench_function("valid_with_escapes", |b| b.iter(|| event::decode(black_box(escaped))));
    group.bench_function("invalid_amount", |b| b.iter(|| event::decode(black_box(invalid))));
    group.bench_function("not_json", |b| b.iter(|| event::decode(black_box(garbage))));
    group.finish();

    let payment = Payment::parse("pay-000123456", 1999, "EUR").expect("valid");
    let mut line = Vec::with_capacity(128);
    c.bench_function("encode", |b| {
        b.iter(|| {
            line.clear();
            event::encode(black_box(&payment), &mut line);
        })
    });
}

fn validation(c: &mut Criterion) {
    let mut group = c.benchmark_group("validate");
    group.bench_function("payment_id_13_bytes", |b| b.iter(|| PaymentId::new(black_box("pay-000123456"))));
    let longest = "x".repeat(64);
    group.bench_function("payment_id_64_bytes", |b| b.iter(|| PaymentId::new(black_box(&longest))));
    group.bench_function("payment", |b| {
        b.iter(|| Payment::parse(black_box("pay-000123456"), black_box(1999), black_box("EUR")))
    });
    group.finish();
}

fn decision(c: &mut Criterion) {
    let stored = Payment::parse("pay-000123456", 1999, "EUR").expect("valid");
    let same = stored.clone();
    let other = Payment::parse("pay-000123456", 2000, "EUR").expect("valid");
    let mut group = c.benchmark_group("decide");
    group.bench_function("new", |b| b.iter(|| decide(black_box(None), black_box(&same))));
    group.bench_function("duplicate", |b| b.iter(|| decide(black_box(Some(&stored)), black_box(&same))));
    group.bench_function("conflict", |b| b.iter(|| decide(black_box(Some(&stored)), black_box(&other))));
    group.finish();
}

criterion_group!(benches, decoding, validation, decision);
criterion_main!(benches);
