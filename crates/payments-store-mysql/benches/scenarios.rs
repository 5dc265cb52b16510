//! The MySQL store beside raw single-row `INSERT … ON DUPLICATE KEY UPDATE` through the same
//! driver, measured in the same run, and 64 concurrent savers beside one.
//!
//! ```text
//! cargo bench -p payments-store-mysql --bench scenarios -- [--quick] [--json PATH]
//! ```
//!
//! Needs the test server (`PAYMENTS_TEST_MYSQL_URL`, default mysql://root@127.0.0.1:3306/test);
//! without one it says so and measures nothing. Each row is a scenario, its throughput and latency
//! percentiles, and its baseline: the ratio is what is compared with the target, because absolute
//! figures move with the machine and its neighbours.

// A benchmark reports on stderr by design: what it skipped, what it could not clean up.
#![allow(clippy::print_stderr)]

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, Value};
use payments_ports::PaymentsRepository;
use payments_ports::domain::{Payment, SaveOutcome};
use payments_store_mysql::{MysqlConfig, MysqlPaymentsRepository};
use payments_test_support::bench::{self, Latencies, Row, Scale, Target, median, rate};
use payments_test_support::mysql::{self as server, TestDatabase};

fn main() -> ExitCode {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    bench::main(&[("mysql", &|scale| runtime.block_on(run(scale)))])
}

fn payment(i: usize) -> Payment {
    Payment::parse(&format!("pay-{i:09}"), 100 + i as u64 % 100_000, "EUR").expect("valid")
}

async fn run(scale: Scale) -> Vec<Row> {
    if let Err(reason) = server::reachable().await {
        eprintln!("SKIPPED mysql scenarios: {reason}");
        return Vec::new();
    }
    let database = TestDatabase::create("bench").await.expect("a database for the bench");
    let rows = scenarios(&database, scale).await;
    if let Err(err) = database.drop_database().await {
        eprintln!("cannot drop the bench database {}: {err}", database.name());
    }
    rows
}

/// Rounds in which the raw loop and the store take turns: the disk's and the server's speed
/// drift from second to second, so the medians of alternating rounds compare like with like.
const ROUNDS: usize = 5;

/// The statement a hand-written consumer would send, one at a time, on one connection, into a
/// table like the store's: returns the rate.
async fn raw_inserts(conn: &mut Conn, payments: &[Payment]) -> f64 {
    let insert = "INSERT INTO raw_payments (payment_id, amount, currency, inserted_by) VALUES (?, ?, ?, ?) \
                  ON DUPLICATE KEY UPDATE payment_id = payment_id";
    let started = Instant::now();
    for p in payments {
        let params: Vec<Value> = vec![
            p.id.as_bytes().into(),
            p.amount.minor_units().into(),
            p.currency.as_str().as_bytes().into(),
            vec![0u8; 16].into(),
        ];
        conn.exec_drop(insert, params).await.expect("raw insert");
        assert_eq!(conn.affected_rows(), 1, "raw insert of a new payment");
    }
    rate(payments.len(), started.elapsed())
}

/// Saves `payments` from `tasks` concurrent tasks (task t takes every t-th), timing each save.
async fn save_from_tasks(
    store: &Arc<MysqlPaymentsRepository>,
    payments: &Arc<Vec<Payment>>,
    tasks: usize,
) -> (Duration, Latencies) {
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let (store, payments) = (Arc::clone(store), Arc::clone(payments));
            tokio::spawn(async move {
                let mut latencies = Latencies::with_capacity(payments.len() / tasks + 1);
                for p in payments.iter().skip(task).step_by(tasks) {
                    let began = Instant::now();
                    assert_eq!(store.save(p).await.expect("save"), SaveOutcome::New);
                    latencies.push(began.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all = Latencies::with_capacity(payments.len());
    for handle in handles {
        all.extend(handle.await.expect("saver task"));
    }
    (started.elapsed(), all)
}

async fn scenarios(database: &TestDatabase, scale: Scale) -> Vec<Row> {
    // Plain text, as the baseline below connects: the store's default (PREFERRED) would use TLS
    // with a server that offers it (MySQL 8 does out of the box), and the ratio would measure TLS.
    let url = format!("{}?ssl-mode=DISABLED", database.url());
    let store = Arc::new(
        MysqlPaymentsRepository::connect(MysqlConfig::from_url(&url).expect("url")).await.expect("connect"),
    );
    let mut raw = Conn::new(Opts::from_url(&database.url()).expect("url")).await.expect("connect");
    raw.query_drop("CREATE TABLE raw_payments LIKE payments").await.expect("raw table");

    // One saver against the raw statement, in alternating rounds.
    let n1 = scale.pick(2_000, 10_000);
    let (mut raw_rates, mut c1_rates) = (Vec::new(), Vec::new());
    let mut latencies = Latencies::with_capacity(n1);
    for round in 0..ROUNDS {
        let payments: Arc<Vec<Payment>> =
            Arc::new((round * n1 / ROUNDS..(round + 1) * n1 / ROUNDS).map(payment).collect());
        raw_rates.push(raw_inserts(&mut raw, &payments).await);
        let (elapsed, round_latencies) = save_from_tasks(&store, &payments, 1).await;
        c1_rates.push(rate(payments.len(), elapsed));
        latencies.extend(round_latencies);
    }
    raw.disconnect().await.expect("disconnect");
    let c1_rate = median(&mut c1_rates);
    let mut rows = vec![Row::new(
        "mysql.save_new.c1",
        c1_rate,
        &mut latencies,
        "raw INSERT … ON DUPLICATE KEY UPDATE, same driver",
        Some(median(&mut raw_rates)),
        Target::Ratio(0.8),
        format!("{n1} saves, medians of {ROUNDS} alternating rounds"),
    )];

    // 64 savers: batched into multi-row statements.
    let n64 = scale.pick(32_000, 128_000);
    let payments: Arc<Vec<Payment>> = Arc::new((n1..n1 + n64).map(payment).collect());
    let (elapsed, mut latencies) = save_from_tasks(&store, &payments, 64).await;
    rows.push(Row::new(
        "mysql.save_new.c64",
        rate(n64, elapsed),
        &mut latencies,
        "mysql.save_new.c1",
        Some(c1_rate),
        Target::Ratio(10.0),
        format!("{n64} saves from 64 tasks"),
    ));
    assert_eq!(store.count().await.expect("count"), u64::try_from(n1 + n64).expect("fits"));
    store.close().await;
    rows
}
