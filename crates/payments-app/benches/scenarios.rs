//! `cargo xtask bench`: `payments-app consume` end to end, into every store of the app's table
//! (a new store is measured as soon as it has its entry): the release binary, a file of JSON lines.

// A benchmark reports on stderr by design: what it skipped, what it could not clean up.
#![allow(clippy::print_stderr)]

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use payments_app::adapters::{STORES, TestEnv};
use payments_test_support::Gate;
use payments_test_support::bench::{self, Latencies, Row, Scale, Target, rate, timed};
use payments_test_support::redis::{self as test_redis, TestKeys};
use payments_test_support::servers::{self, Place};

fn main() -> std::process::ExitCode {
    bench::main(&[("consume", &run), ("redis", &redis)])
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

/// How long a broker consume waits, idle, before it ends: taken off its wall clock.
const IDLE: Duration = Duration::from_millis(500);

/// `publish` into a Redis stream, then `consume` from it into the journal, beside the raw
/// `XREADGROUP COUNT 64` + `XACK` loop a hand-written consumer would run, on the same server in
/// the same run.
fn redis(scale: Scale) -> Vec<Row> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    if let Err(reason) = runtime.block_on(test_redis::reachable()) {
        eprintln!("SKIPPED redis scenarios: {reason}");
        return Vec::new();
    }
    let lines = scale.pick(200_000, 1_000_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("input.jsonl");
    write_input(&input, lines);
    let keys = TestKeys::new("app-bench");
    let (stream, raw) = (keys.key("payments"), keys.key("raw"));
    let url = test_redis::url();
    let published = timed(|| {
        Command::new(env!("CARGO_BIN_EXE_payments-app"))
            .args([
                "publish",
                "--to",
                &format!("{url}?stream={stream}"),
                "--input",
                &input.display().to_string(),
            ])
            .current_dir(dir.path())
            .output()
            .expect("payments-app runs")
    });
    assert!(published.0.status.success(), "publish failed: {}", String::from_utf8_lossy(&published.0.stderr));
    let payloads = std::fs::read_to_string(&input).expect("input");
    runtime
        .block_on(test_redis::fill_stream(&raw, "g", payloads.lines().map(|l| l.as_bytes().to_vec()), 1000))
        .expect("fill");
    let raw_rate = runtime.block_on(test_redis::raw_consume(&raw, "g", 64, lines)).expect("raw consume");
    let journal = dir.path().join("store").join("payments.journal");
    let (output, elapsed) = timed(|| {
        Command::new(env!("CARGO_BIN_EXE_payments-app"))
            .args([
                "consume",
                "--store",
                &format!("file:{}", journal.display()),
                "--input",
                &format!("{url}?stream={stream}&group=bench"),
                "--stop-when-idle",
                &IDLE.as_secs_f64().to_string(),
                "--report",
                "json",
            ])
            .current_dir(dir.path())
            .output()
            .expect("payments-app runs")
    });
    if let Err(err) = runtime.block_on(keys.remove()) {
        eprintln!("cannot remove the bench keys {}:*: {err}", keys.prefix());
    }
    assert!(output.status.success(), "consume failed: {}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("a JSON report");
    assert_eq!(report["applied"].as_u64(), Some((lines * 4 / 5) as u64), "{report}");
    vec![
        Row::new(
            "publish.redis",
            rate(lines, published.1),
            &mut Latencies::default(),
            "none",
            None,
            Target::None,
            format!("payments-app publish of {lines} lines, wall clock incl. process start"),
        ),
        Row::new(
            "consume.redis.file",
            rate(lines, elapsed.saturating_sub(IDLE)),
            &mut Latencies::default(),
            "raw XREADGROUP COUNT 64 + XACK, no store",
            Some(raw_rate),
            Target::OpsPerSec(100_000.0),
            format!(
                "{lines} lines, 20% duplicates, into the journal; wall clock incl. process start, less the {IDLE:?} idle stop"
            ),
        ),
    ]
}
