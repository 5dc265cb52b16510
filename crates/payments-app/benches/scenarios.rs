//! `cargo xtask bench`: `payments-app consume` end to end, into every store of the app's table
//! (a new store is measured as soon as it has its entry): the release binary, a file of JSON lines;
//! with metrics on and off; and `publish` and `consume` through each broker (Redis Streams, NATS
//! JetStream, RabbitMQ).

// A benchmark reports on stderr by design: what it skipped, what it could not clean up.
#![allow(clippy::print_stderr)]

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use payments_app::adapters::{STORES, TestEnv};
use payments_test_support::Gate;
use payments_test_support::bench::{self, Latencies, Row, Scale, Target, median, rate, timed};
use payments_test_support::nats::{self as test_nats, TestStreams};
use payments_test_support::rabbitmq::{self as test_rabbitmq, TestQueues};
use payments_test_support::redis::{self as test_redis, TestKeys};
use payments_test_support::servers::{self, Place};

fn main() -> std::process::ExitCode {
    bench::main(&[
        ("consume", &run),
        ("metrics", &metrics),
        ("redis", &redis),
        ("nats", &nats),
        ("rabbitmq", &rabbitmq),
    ])
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
    consume_with(dir, store, input, &[])
}

fn consume_with(dir: &Path, store: &str, input: &Path, extra: &[&str]) -> (serde_json::Value, f64) {
    let (output, elapsed) = timed(|| {
        Command::new(env!("CARGO_BIN_EXE_payments-app"))
            .args(["consume", "--store", store, "--input", &input.display().to_string(), "--report", "json"])
            .args(extra)
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

/// `consume` into the memory store with metrics on (`--metrics-addr`: the observer, the
/// timed saves, the endpoint) beside the same run with metrics off, alternated so that
/// the machine's noise falls on both alike, medians compared. Two rows: deliveries per second of
/// wall clock, and per second of CPU (user and system) that the process used. The CPU row is the
/// overhead's measure: on a shared 2-core machine single runs' wall clocks swing by a third,
/// while the CPU a run needs holds still.
fn metrics(scale: Scale) -> Vec<Row> {
    let dir = tempfile::tempdir().expect("temp dir");
    let lines = scale.pick(1_000_000, 1_000_000);
    let input = dir.path().join("input.jsonl");
    write_input(&input, lines);
    let rounds = scale.pick(3, 9);
    let (mut off, mut on, mut off_cpu, mut on_cpu) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let before = children_cpu_seconds();
        off.push(consume(dir.path(), "memory", &input).1);
        let between = children_cpu_seconds();
        let (report, per_sec) =
            consume_with(dir.path(), "memory", &input, &["--metrics-addr", "127.0.0.1:0"]);
        let after = children_cpu_seconds();
        assert_eq!(report["applied"].as_u64(), Some((lines * 4 / 5) as u64), "{report}");
        on.push(per_sec);
        off_cpu.push(rate(lines, Duration::from_secs_f64(between - before)));
        on_cpu.push(rate(lines, Duration::from_secs_f64(after - between)));
    }
    let note = format!("{lines} lines, median of {rounds} alternated runs each");
    vec![
        Row::new(
            "consume.memory.metrics",
            median(&mut on),
            &mut Latencies::default(),
            "consume.memory with metrics off, same run",
            Some(median(&mut off)),
            Target::None,
            format!("{note}; wall clock incl. process start"),
        ),
        Row::new(
            "consume.memory.metrics.cpu",
            median(&mut on_cpu),
            &mut Latencies::default(),
            "consume.memory with metrics off, same run",
            Some(median(&mut off_cpu)),
            Target::Ratio(0.95),
            format!("{note}; deliveries per CPU second (user + system) of the process"),
        ),
    ]
}

/// The CPU time (user and system) of this process's children that have been waited for, in
/// seconds: fields 16 and 17 of `/proc/self/stat`, in clock ticks of 1/100 s (Linux's USER_HZ).
fn children_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The command name, in parentheses, may hold spaces: count fields after its closing one.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    // Field 3 (state) is the first after the name: field n is at index n - 3.
    let ticks = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok()).expect("a clock-tick field");
    (ticks(16) + ticks(17)) as f64 / 100.0
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

/// `publish` into NATS JetStream, then `consume` from a durable consumer into the journal, beside
/// the same lines consumed from a file into a journal in the same run: what the broker costs on
/// top of the store.
fn nats(scale: Scale) -> Vec<Row> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    if let Err(reason) = runtime.block_on(test_nats::reachable()) {
        eprintln!("SKIPPED nats scenarios: {reason}");
        return Vec::new();
    }
    let streams = TestStreams::new("app-bench");
    let (stream, subject) = (streams.stream("payments"), streams.subject("payments"));
    let base = format!("{}?stream={stream}&subject={subject}", test_nats::url());
    let rows = through_broker("nats", scale.pick(100_000, 400_000), &base, &format!("{base}&consumer=bench"));
    if let Err(err) = runtime.block_on(streams.remove()) {
        eprintln!("cannot remove the bench streams {}*: {err}", streams.prefix());
    }
    rows
}

/// `publish` into a RabbitMQ quorum queue with publisher confirms, then `consume` from it into
/// the journal, beside the same lines consumed from a file into a journal in the same run.
fn rabbitmq(scale: Scale) -> Vec<Row> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    if let Err(reason) = runtime.block_on(test_rabbitmq::reachable()) {
        eprintln!("SKIPPED rabbitmq scenarios: {reason}");
        return Vec::new();
    }
    let queues = TestQueues::new("app-bench");
    let queue = queues.queue("payments");
    let url = format!("{}?queue={queue}", test_rabbitmq::url());
    let rows = through_broker("rabbitmq", scale.pick(50_000, 200_000), &url, &url);
    if let Err(err) = runtime.block_on(queues.remove()) {
        eprintln!("cannot remove the bench queues {}*: {err}", queues.prefix());
    }
    rows
}

/// `publish --to target` of `lines` lines, `consume --input input` of them into a journal, and the
/// same lines consumed from their file into another journal: the rows `publish.NAME` and
/// `consume.NAME.file`, whose baseline is the file.
fn through_broker(name: &str, lines: usize, target: &str, input_url: &str) -> Vec<Row> {
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("input.jsonl");
    write_input(&input, lines);
    let published = timed(|| {
        Command::new(env!("CARGO_BIN_EXE_payments-app"))
            .args(["publish", "--to", target, "--input", &input.display().to_string()])
            .current_dir(dir.path())
            .output()
            .expect("payments-app runs")
    });
    assert!(published.0.status.success(), "publish failed: {}", String::from_utf8_lossy(&published.0.stderr));
    let journal = |which: &str| format!("file:{}", dir.path().join(which).join("payments.journal").display());
    let (output, elapsed) = timed(|| {
        Command::new(env!("CARGO_BIN_EXE_payments-app"))
            .args([
                "consume",
                "--store",
                &journal("broker"),
                "--input",
                input_url,
                "--stop-when-idle",
                &IDLE.as_secs_f64().to_string(),
                "--report",
                "json",
            ])
            .current_dir(dir.path())
            .output()
            .expect("payments-app runs")
    });
    assert!(output.status.success(), "consume failed: {}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("a JSON report");
    assert_eq!(report["applied"].as_u64(), Some((lines * 4 / 5) as u64), "{report}");
    let (file_report, from_file) = consume(dir.path(), &journal("file"), &input);
    assert_eq!(file_report["applied"], report["applied"], "{file_report}");
    vec![
        Row::new(
            &format!("publish.{name}"),
            rate(lines, published.1),
            &mut Latencies::default(),
            "none",
            None,
            Target::None,
            format!(
                "payments-app publish of {lines} lines, each confirmed by the broker; wall clock incl. process start"
            ),
        ),
        Row::new(
            &format!("consume.{name}.file"),
            rate(lines, elapsed.saturating_sub(IDLE)),
            &mut Latencies::default(),
            "the same lines from a file into a journal, same run",
            Some(from_file),
            Target::None,
            format!(
                "{lines} lines, 20% duplicates, into the journal; wall clock incl. process start, less the {IDLE:?} idle stop"
            ),
        ),
    ]
}
