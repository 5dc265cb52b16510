//! `cargo xtask bench`: the in-memory store against a raw `Mutex<HashMap<String, _>>`.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Mutex;
use std::time::Instant;

use payments_ports::PaymentsRepository;
use payments_ports::domain::{Payment, SaveOutcome};
use payments_store_memory::MemoryPaymentsRepository;

use payments_test_support::bench::{self, Latencies, Row, Scale, Target, median, rate, timed};

fn main() -> std::process::ExitCode {
    bench::main(&[("memory", &run)])
}

fn payment(i: usize) -> Payment {
    Payment::parse(&format!("pay-{i:09}"), 100 + i as u64 % 100_000, "EUR").expect("valid")
}

type Raw = Mutex<HashMap<String, (u64, [u8; 3])>>;

/// The naive store: one lock, check and insert in one critical section, owned `String` keys.
fn raw_insert(map: &Raw, key: String, payment: &Payment) -> bool {
    let mut map = map.lock().expect("raw map");
    if map.contains_key(&key) {
        return false;
    }
    map.insert(key, (payment.amount.minor_units(), payment.currency.to_bytes()));
    true
}

fn raw_lookup(map: &Raw, key: &str, payment: &Payment) -> bool {
    let map = map.lock().expect("raw map");
    map.get(key) == Some(&(payment.amount.minor_units(), payment.currency.to_bytes()))
}

/// Five rounds in which the raw map and the store take turns on the same slice of payments, so
/// that both see the same machine; returns the median rates, (raw, store).
fn run(scale: Scale) -> Vec<Row> {
    let n = scale.pick(300_000, 1_000_000);
    let rounds = 5;
    let payments: Vec<Payment> = (0..n).map(payment).collect();
    let keys: Vec<String> = payments.iter().map(|p| p.id.to_string()).collect();
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let raw = Raw::default();
    let store = MemoryPaymentsRepository::new();
    let chunks = || payments.chunks(n / rounds).zip(keys.chunks(n / rounds));

    // New: the raw map gets owned keys, as a caller that decoded them would hold them.
    let (mut raw_new, mut new) = (Vec::new(), Vec::new());
    for (chunk, chunk_keys) in chunks() {
        let owned = chunk_keys.to_vec();
        let (_, elapsed) = timed(|| {
            for (key, p) in owned.into_iter().zip(chunk) {
                black_box(raw_insert(&raw, key, p));
            }
        });
        raw_new.push(rate(chunk.len(), elapsed));
        let (_, elapsed) = timed(|| {
            runtime.block_on(async {
                for p in chunk {
                    black_box(store.save(p).await.expect("memory saves cannot fail"));
                }
            })
        });
        new.push(rate(chunk.len(), elapsed));
    }

    // Duplicates: every payment again.
    let (mut raw_dup, mut dup) = (Vec::new(), Vec::new());
    for (chunk, chunk_keys) in chunks() {
        let (_, elapsed) = timed(|| {
            for (key, p) in chunk_keys.iter().zip(chunk) {
                black_box(raw_lookup(&raw, key, p));
            }
        });
        raw_dup.push(rate(chunk.len(), elapsed));
        let (duplicates, elapsed) = timed(|| {
            runtime.block_on(async {
                let mut duplicates = 0;
                for p in chunk {
                    if store.save(p).await.expect("save") == SaveOutcome::Duplicate {
                        duplicates += 1;
                    }
                }
                duplicates
            })
        });
        assert_eq!(duplicates, chunk.len(), "every second save is a duplicate");
        dup.push(rate(chunk.len(), elapsed));
    }

    // Latencies, in a separate pass: timing each call costs as much as a call.
    let timed_store = MemoryPaymentsRepository::new();
    let (mut new_latency, mut dup_latency) = (Latencies::with_capacity(n), Latencies::with_capacity(n));
    runtime.block_on(async {
        for p in &payments {
            let start = Instant::now();
            black_box(timed_store.save(p).await.expect("save"));
            new_latency.push(start.elapsed());
        }
        for p in &payments {
            let start = Instant::now();
            black_box(timed_store.save(p).await.expect("save"));
            dup_latency.push(start.elapsed());
        }
    });

    let note = format!("{n} payments, 1 task, medians of {rounds} alternating rounds");
    vec![
        Row::new(
            "memory.save_new",
            median(&mut new),
            &mut new_latency,
            "raw Mutex<HashMap<String,_>> insert-if-absent",
            Some(median(&mut raw_new)),
            Target::Ratio(0.8),
            note.clone(),
        ),
        Row::new(
            "memory.save_duplicate",
            median(&mut dup),
            &mut dup_latency,
            "raw Mutex<HashMap<String,_>> lookup",
            Some(median(&mut raw_dup)),
            Target::Ratio(0.8),
            note,
        ),
    ]
}
