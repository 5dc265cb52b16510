//! `cargo xtask bench`: the journal store against raw appends with fdatasync, in the same directory.

use std::fs::OpenOptions;
use std::hint::black_box;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use payments_ports::PaymentsRepository;
use payments_ports::domain::{Payment, SaveOutcome};
use payments_store_file::FilePaymentsRepository;

use payments_test_support::bench::{self, Latencies, Row, Scale, Target, median, rate, timed};

fn main() -> std::process::ExitCode {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    bench::main(&[("file", &|scale| runtime.block_on(run(scale)))])
}

fn payment(i: usize) -> Payment {
    Payment::parse(&format!("pay-{i:09}"), 100 + i as u64 % 100_000, "EUR").expect("valid")
}

/// Appends `records` 64-byte records, `per_sync` at a time, each group written and fdatasynced.
fn raw_appends(dir: &Path, records: usize, per_sync: usize) -> f64 {
    let path = dir.join(format!("raw-{per_sync}.bin"));
    let mut file = OpenOptions::new().create(true).append(true).open(&path).expect("raw file");
    let batch = vec![0x5au8; 64 * per_sync];
    let ((), elapsed) = timed(|| {
        for _ in 0..records / per_sync {
            file.write_all(&batch).expect("write");
            file.sync_data().expect("fdatasync");
        }
    });
    std::fs::remove_file(&path).expect("remove raw file");
    rate(records / per_sync * per_sync, elapsed)
}

fn open(path: &Path) -> FilePaymentsRepository {
    FilePaymentsRepository::open(path).expect("open journal")
}

/// Saves `payments` from `tasks` concurrent tasks (task t takes every t-th), timing each save.
async fn save_from_tasks(
    store: &Arc<FilePaymentsRepository>,
    payments: &Arc<Vec<Payment>>,
    tasks: usize,
    expect: SaveOutcome,
) -> (Duration, Latencies) {
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let (store, payments, expect) = (Arc::clone(store), Arc::clone(payments), expect.clone());
            tokio::spawn(async move {
                let mut latencies = Latencies::with_capacity(payments.len() / tasks + 1);
                for p in payments.iter().skip(task).step_by(tasks) {
                    let began = Instant::now();
                    let outcome = store.save(p).await.expect("save");
                    latencies.push(began.elapsed());
                    assert_eq!(outcome, expect);
                }
                latencies
            })
        })
        .collect();
    let mut all = Latencies::with_capacity(payments.len());
    for handle in handles {
        all.extend(handle.await.expect("saver task"));
    }
    (start.elapsed(), all)
}

/// Rounds in which the raw loop and the store take turns: the disk's speed drifts from second to
/// second, so the medians of alternating rounds compare like with like.
const ROUNDS: usize = 5;

/// `n` new saves from `tasks` savers against raw appends of `tasks` records per fdatasync.
async fn new_saves(
    dir: &Path,
    store: &Arc<FilePaymentsRepository>,
    n: usize,
    tasks: usize,
    scenario: &str,
    baseline: &str,
    target: f64,
) -> Row {
    let mut latencies = Latencies::with_capacity(n);
    let (mut raw_rates, mut rates) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        raw_rates.push(raw_appends(dir, n / ROUNDS, tasks));
        let payments: Arc<Vec<Payment>> =
            Arc::new((round * n / ROUNDS..(round + 1) * n / ROUNDS).map(payment).collect());
        let (elapsed, round_latencies) = save_from_tasks(store, &payments, tasks, SaveOutcome::New).await;
        rates.push(rate(payments.len(), elapsed));
        latencies.extend(round_latencies);
    }
    Row::new(
        scenario,
        median(&mut rates),
        &mut latencies,
        baseline,
        Some(median(&mut raw_rates)),
        Target::Ratio(target),
        format!("{n} saves from {tasks} task(s), medians of {ROUNDS} alternating rounds"),
    )
}

async fn run(scale: Scale) -> Vec<Row> {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rows = Vec::new();

    // One saver: every save waits for its own fdatasync.
    let n1 = scale.pick(5_000, 10_000);
    let store = Arc::new(open(&dir.path().join("c1.journal")));
    rows.push(
        new_saves(
            dir.path(),
            &store,
            n1,
            1,
            "file.save_new.c1",
            "raw append 64 B + fdatasync, one at a time",
            0.8,
        )
        .await,
    );
    drop(store);

    // 64 savers: group commit.
    let n64 = scale.pick(128_000, 512_000);
    let store = Arc::new(open(&dir.path().join("c64.journal")));
    rows.push(
        new_saves(
            dir.path(),
            &store,
            n64,
            64,
            "file.save_new.c64",
            "raw group commit: 64 × 64 B per fdatasync",
            0.5,
        )
        .await,
    );
    let payments: Arc<Vec<Payment>> = Arc::new((0..n64 / ROUNDS * ROUNDS).map(payment).collect());

    // Duplicates from 64 savers: answered from memory.
    let (elapsed, mut latencies) = save_from_tasks(&store, &payments, 64, SaveOutcome::Duplicate).await;
    rows.push(Row::new(
        "file.save_duplicate.c64",
        rate(n64, elapsed),
        &mut latencies,
        "none (no disk I/O)",
        None,
        Target::OpsPerSec(1_000_000.0),
        format!("{n64} duplicate saves from 64 tasks"),
    ));
    drop(store);

    // Opening: time and memory at three sizes.
    for (size, name) in [(10_000, "file.open_10k"), (100_000, "file.open_100k"), (1_000_000, "file.open_1m")]
    {
        let path = dir.path().join(format!("open-{size}.journal"));
        {
            let store = Arc::new(open(&path));
            let payments: Arc<Vec<Payment>> = Arc::new((0..size).map(payment).collect());
            save_from_tasks(&store, &payments, 64, SaveOutcome::New).await;
        }
        let mut opens = Latencies::with_capacity(3);
        let mut per_payment = 0.0;
        for _ in 0..3 {
            let began = Instant::now();
            let store = open(&path);
            opens.push(began.elapsed());
            assert_eq!(store.recovery().payments, size as u64);
            per_payment = store.memory().bytes_per_payment_beyond_id();
            black_box(&store);
        }
        let median_us = opens.quantile_us(0.5);
        let mut row = Row::new(
            name,
            size as f64 / (median_us / 1e6),
            &mut opens,
            "none",
            None,
            Target::None,
            format!(
                "open {:.0} ms (median of 3), {per_payment:.1} bytes/payment beyond the ID, journal {:.1} MB",
                median_us / 1e3,
                std::fs::metadata(&path).map_or(0.0, |m| m.len() as f64 / 1e6)
            ),
        );
        if size == 1_000_000 {
            row.target = "open <= 1 s and <= 64 B/payment".to_owned();
            row.met = Some(median_us <= 1e6 && per_payment <= 64.0);
        }
        rows.push(row);
    }
    rows
}
