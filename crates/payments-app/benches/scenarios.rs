//! `cargo xtask bench`: `payments-app consume` end to end, into every store of the app's table
//! (a new store is measured as soon as it has its entry): the release binary, a file of JSON lines.

// A benchmark reports on stderr by design: what it skipped, what it could not clean up.
#![allow(clippy::print_stderr)]

use std::io::Write;
use std::path::Path;
use std::process::Command;

use payments_app::adapters::{STORES, TestEnv};
use payments_test_support::Gate;
use payments_test_support::bench::{self, Latencies, Row, Scale, Target, rate, timed};
use payments_test_support::servers::{self, Place};

fn main() -> std::process::ExitCode {
    bench::main(&[("consume", &run)])
}

/// One million lines: 800,000 distinct payments, and 200,000 redeliveries of them spread through.
fn write_input(path: &Path, lines: usize) {
    let distinct = lines * 4 / 5;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("input file"));
    for i in 0..lines {
        // Every fifth line repeats a payment from earlier in the file.
        let id = if i % 5 == 4 { (i / 5 * 7919) % (i / 5 * 4 + 1) } else { i - i / 5 };
        debug_assert!(id < distinct);
        writeln!(
            out,
            r#"{{"payment_id": "pay-{id:09}", "amount": {}, "currency": "EUR"}}"#,
            100 + id % 100_000
        )
        .expect("write input");
    }
    out.flush().expect("flush input");
}

fn consume(dir: &Path, store: &str, input: &Path) -> (serde_json::Value, f64) {
    let (output, elapsed) = timed(|| {
        Command::new(env!("CARGO_BIN_EXE_payments-app"))
            .args(["consume", "--store", store, "--input", &input.display().to_string(), "--report", "json"])
            .current_dir(dir)
            .output()
            .expect("payments-app runs")
    });
    assert!(output.status.success(), "consume failed: {}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("a JSON report");
    let deliveries = report["deliveries"].as_u64().unwrap_or(0) as usize;
    (report, rate(deliveries, elapsed))
}

/// `consume` into every store of the app's table, each on a fresh place of its own.
fn run(scale: Scale) -> Vec<Row> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rows = Vec::new();
    for entry in STORES {
        // Servers take a payment a round trip at a time at worst: a fifth of the lines is plenty.
        let (lines, target) = match entry.test_env {
            TestEnv::InProcess => (scale.pick(1_000_000, 1_000_000), Target::OpsPerSec(500_000.0)),
            TestEnv::TempDir(_) => (scale.pick(1_000_000, 1_000_000), Target::OpsPerSec(100_000.0)),
            TestEnv::Server(_) => (scale.pick(100_000, 200_000), Target::None),
        };
        let input = dir.path().join(format!("input-{lines}.jsonl"));
        if !input.exists() {
            write_input(&input, lines);
        }
        let place = match entry.test_env {
            TestEnv::Server(server) => match runtime.block_on(servers::gate(server)) {
                Gate::Run => Some(runtime.block_on(Place::fresh(server, "bench")).expect("a fresh place")),
                Gate::Skip(reason) | Gate::Fail(reason) => {
                    eprintln!("SKIPPED consume.{}: {reason}", entry.name);
                    continue;
                }
            },
            _ => None,
        };
        let store = match (entry.test_env, &place) {
            (TestEnv::TempDir(template), _) => {
                let home = dir.path().join(entry.name);
                std::fs::create_dir_all(&home).expect("store dir");
                template.replace("{dir}", &home.display().to_string())
            }
            (_, Some(place)) => place.url(),
            _ => entry.prefixes[0].to_owned(),
        };
        let (report, per_sec) = consume(dir.path(), &store, &input);
        if let Some(place) = place
            && let Err(err) = runtime.block_on(place.remove())
        {
            eprintln!("cannot remove {}: {err}", place.url());
        }
        assert_eq!(report["applied"].as_u64(), Some((lines * 4 / 5) as u64), "{report}");
        rows.push(Row::new(
            &format!("consume.{}", entry.name),
            per_sec,
            &mut Latencies::default(),
            &format!("none ({lines} lines, 20% duplicates)"),
            None,
            target,
            format!(
                "{} applied, {} duplicates, wall clock incl. process start",
                report["applied"], report["duplicates"]
            ),
        ));
    }
    rows
}
