//! `cargo xtask bench`: the PostgreSQL store against raw single-row `INSERT … ON CONFLICT DO NOTHING` through the same driver.

// A benchmark reports on stderr by design: what it skipped, what it could not clean up.
#![allow(clippy::print_stderr)]

use std::sync::Arc;
use std::time::Instant;

use payments_ports::PaymentsRepository;
use payments_ports::domain::{Payment, SaveOutcome};
use payments_store_postgres::{PostgresConfig, PostgresPaymentsRepository};
use payments_test_support::postgres::{self as pg, TestSchema};

use payments_test_support::bench::{self, Latencies, Row, Scale, Target, rate};

fn main() -> std::process::ExitCode {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    bench::main(&[("postgres", &|scale| runtime.block_on(run(scale)))])
}

fn payment(i: usize) -> Payment {
    Payment::parse(&format!("pay-{i:09}"), 100 + i as u64 % 100_000, "EUR").expect("valid")
}

async fn run(scale: Scale) -> Vec<Row> {
    if let Err(reason) = pg::reachable().await {
        eprintln!("SKIPPED postgres scenarios: {reason}");
        return Vec::new();
    }
    let schema = TestSchema::new("bench");
    let rows = scenarios(&schema, scale).await;
    if let Err(err) = schema.drop_schema().await {
        eprintln!("cannot drop the bench schema {}: {err}", schema.name());
    }
    rows
}

async fn scenarios(schema: &TestSchema, scale: Scale) -> Vec<Row> {
    // Plain text, as the baseline below connects: the store's default (prefer) would use TLS
    // with a server that offers it, and the ratio would measure TLS rather than the store.
    let url = format!("{}&sslmode=disable", schema.url());
    let store = Arc::new(
        PostgresPaymentsRepository::connect(PostgresConfig::from_url(&url).expect("url"))
            .await
            .expect("connect"),
    );

    // Baseline: the statement a hand-written consumer would send, one at a time, one connection.
    let n1 = scale.pick(2_000, 10_000);
    let (client, connection) =
        tokio_postgres::connect(&pg::url(), tokio_postgres::NoTls).await.expect("connect");
    let driver = tokio::spawn(connection);
    let table = format!("\"{}\".raw_payments", schema.name());
    client
        .batch_execute(&format!("CREATE TABLE {table} (LIKE \"{}\".payments INCLUDING ALL)", schema.name()))
        .await
        .expect("raw table");
    let insert = client
        .prepare(&format!(
            "INSERT INTO {table} (payment_id, amount, currency) VALUES ($1, $2, $3) ON CONFLICT (payment_id) DO NOTHING"
        ))
        .await
        .expect("prepare");
    let payments: Vec<Payment> = (0..n1).map(payment).collect();
    let started = Instant::now();
    for p in &payments {
        let amount = i64::try_from(p.amount.minor_units()).expect("amount fits");
        client.execute(&insert, &[&p.id.as_str(), &amount, &p.currency.as_str()]).await.expect("raw insert");
    }
    let raw_rate = rate(n1, started.elapsed());
    drop(client);
    let _ = driver.await;

    // The adapter, one saver.
    let mut latencies = Latencies::with_capacity(n1);
    let started = Instant::now();
    for p in &payments {
        let began = Instant::now();
        assert_eq!(store.save(p).await.expect("save"), SaveOutcome::New);
        latencies.push(began.elapsed());
    }
    let c1_rate = rate(n1, started.elapsed());
    let mut rows = vec![Row::new(
        "postgres.save_new.c1",
        c1_rate,
        &mut latencies,
        "raw INSERT … ON CONFLICT DO NOTHING, same driver",
        Some(raw_rate),
        Target::Ratio(0.8),
        format!("{n1} saves"),
    )];

    // 64 savers: batched into multi-row statements.
    let n64 = scale.pick(32_000, 128_000);
    let payments: Arc<Vec<Payment>> = Arc::new((n1..n1 + n64).map(payment).collect());
    let started = Instant::now();
    let handles: Vec<_> = (0..64)
        .map(|task| {
            let (store, payments) = (Arc::clone(&store), Arc::clone(&payments));
            tokio::spawn(async move {
                let mut latencies = Latencies::with_capacity(payments.len() / 64 + 1);
                for p in payments.iter().skip(task).step_by(64) {
                    let began = Instant::now();
                    assert_eq!(store.save(p).await.expect("save"), SaveOutcome::New);
                    latencies.push(began.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Latencies::with_capacity(n64);
    for handle in handles {
        latencies.extend(handle.await.expect("saver task"));
    }
    let c64_rate = rate(n64, started.elapsed());
    rows.push(Row::new(
        "postgres.save_new.c64",
        c64_rate,
        &mut latencies,
        "postgres.save_new.c1",
        Some(c1_rate),
        Target::Ratio(10.0),
        format!("{n64} saves from 64 tasks"),
    ));
    rows
}
