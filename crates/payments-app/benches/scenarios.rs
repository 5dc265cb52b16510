//! `cargo xtask bench`: `payments-app consume` end to end, into every store of the app's table
//! (a new store is measured as soon as it has its entry): the release binary, a file of JSON lines;
//! with metrics on and off; `publish` and `consume` through each broker (Redis Streams, NATS
//! JetStream, RabbitMQ); and the transactional outbox: `relay` beside a raw `publish` of the same
//! events, and what the outbox costs `consume`.

// A benchmark reports on stderr by design: what it skipped, what it could not clean up.
#![allow(clippy::print_stderr)]

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use payments_app::adapters::{STORES, StoreSpec, TestEnv};
use payments_consumer::relay;
use payments_ports::domain::{PaymentRecorded, RecordedAt, event};
use payments_test_support::Gate;
use payments_test_support::bench::{self, Latencies, Row, Scale, Target, median, rate, timed};
use payments_test_support::nats::{self as test_nats, TestStreams};
use payments_test_support::rabbitmq::{self as test_rabbitmq, TestQueues};
use payments_test_support::redis::{self as test_redis, TestKeys};
use payments_test_support::servers::{self, Place};
use tokio::runtime::Runtime;

fn main() -> std::process::ExitCode {
    bench::main(&[
        ("consume", &run),
        ("metrics", &metrics),
        ("redis", &redis),
        ("nats", &nats),
        ("rabbitmq", &rabbitmq),
        ("outbox", &outbox),
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
    let input = input.display().to_string();
    let args = [&["consume", "--store", store, "--input", &input, "--report", "json"], extra].concat();
    let (report, elapsed) = app(dir, &args);
    let deliveries = report["deliveries"].as_u64().unwrap_or(0) as usize;
    (report, rate(deliveries, elapsed))
}

/// Runs `payments-app ARGS` (with `--report json` among them) in `dir`, timed, and checks that it
/// succeeded: its report and its wall clock, process start included.
fn app(dir: &Path, args: &[&str]) -> (serde_json::Value, Duration) {
    let (output, elapsed) = timed(|| {
        Command::new(env!("CARGO_BIN_EXE_payments-app"))
            .args(args)
            .current_dir(dir)
            .output()
            .expect("payments-app runs")
    });
    let command = args.first().copied().unwrap_or_default();
    assert!(output.status.success(), "{command} failed: {}", String::from_utf8_lossy(&output.stderr));
    (serde_json::from_slice(&output.stdout).expect("a JSON report"), elapsed)
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

/// The transactional outbox beside what it is built of, in the same run:
///
/// - `outbox.relay.STORE.BROKER`: `payments-app relay` of a store's outbox to a broker, beside
///   `payments-app publish` of the same events, byte for byte, to the same broker: the same
///   publisher, batches of 512 (`relay --batch 512`), each confirmed by the broker before the next.
/// - `outbox.consume.file`: `consume` into a journal with `--publish-to` a JetStream stream beside
///   the same `consume` without.
/// - `outbox.consume.postgres`: `consume` into a fresh schema with `--outbox` beside the same
///   without.
///
/// Each pair runs a few times on fresh stores and places, which of the two goes first taking
/// turns so that the machine's drift falls on both alike; the medians are compared.
fn outbox(scale: Scale) -> Vec<Row> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let rounds = scale.pick(3, 5);
    // The lines of the broker scenarios above; PostgreSQL takes a payment a round trip at a time.
    let relays = [
        ("file", "nats", scale.pick(100_000, 400_000)),
        ("file", "redis", scale.pick(200_000, 1_000_000)),
        ("file", "rabbitmq", scale.pick(50_000, 200_000)),
        ("postgres", "nats", scale.pick(20_000, 100_000)),
    ];
    let mut rows: Vec<Row> = relays
        .into_iter()
        .filter_map(|(store, broker, lines)| relay_beside_publish(&runtime, store, broker, lines, rounds))
        .collect();
    rows.extend(consume_beside_outbox(&runtime, "file", scale.pick(200_000, 1_000_000), rounds));
    rows.extend(consume_beside_outbox(&runtime, "postgres", scale.pick(20_000, 100_000), rounds));
    rows
}

/// `outbox.relay.STORE.BROKER`: a fresh store filled by `consume --outbox` with the payments of
/// `lines` lines, then `relay --stop-when-idle` of its outbox to `broker`, beside `publish` of the
/// same events; afterwards each place holds every event once.
fn relay_beside_publish(
    runtime: &Runtime,
    kind: &str,
    broker: &str,
    lines: usize,
    rounds: usize,
) -> Option<Row> {
    let scenario = format!("outbox.relay.{kind}.{broker}");
    if let Err(reason) =
        FreshStore::reachable(runtime, kind).and_then(|()| Places::reachable(runtime, broker))
    {
        eprintln!("SKIPPED {scenario}: {reason}");
        return None;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let (input, events) = (dir.path().join("input.jsonl"), dir.path().join("events.jsonl"));
    write_input(&input, lines);
    let (payments, bytes) = write_events(&input, &events);
    let (events, idle) = (events.display().to_string(), IDLE.as_secs_f64().to_string());
    let (mut relayed, mut published) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let store = FreshStore::new(runtime, kind, &dir.path().join(format!("store-{round}")));
        consume_applied(dir.path(), &store.url, &input, &["--outbox"], payments);
        let places = Places::new(runtime, broker);
        let (relay_to, publish_to) = (places.target("relay"), places.target("raw"));
        let (relay, raw) = in_turn(
            round % 2 == 0,
            || {
                let args = [
                    "relay",
                    "--store",
                    &store.url,
                    "--to",
                    &relay_to,
                    "--stop-when-idle",
                    &idle,
                    // `publish`'s batch, so that the two differ by the outbox alone (the relay's
                    // default, 4096, is faster still).
                    "--batch",
                    "512",
                    "--report",
                    "json",
                ];
                let (report, elapsed) = app(dir.path(), &args);
                let counts = (report["published"].as_u64(), report["left"].as_u64());
                assert_eq!(counts, (Some(payments as u64), Some(0)), "{report}");
                rate(payments, elapsed.saturating_sub(IDLE))
            },
            || {
                let (report, elapsed) = app(
                    dir.path(),
                    &["publish", "--to", &publish_to, "--input", &events, "--report", "json"],
                );
                assert_eq!(report["published"].as_u64(), Some(payments as u64), "{report}");
                rate(payments, elapsed)
            },
        );
        // The rates count every event once: each must be there, and no more.
        let held = (places.messages("relay"), places.messages("raw"));
        assert_eq!(
            held,
            (payments as u64, payments as u64),
            "{scenario}: messages held (relayed, published)"
        );
        relayed.push(relay);
        published.push(raw);
    }
    let deduplicated = if broker == "nats" {
        "; the relay's messages carry Nats-Msg-Id, which JetStream looks up in its duplicate window"
    } else {
        ""
    };
    Some(Row::new(
        &scenario,
        median(&mut relayed),
        &mut Latencies::default(),
        "publish of the same events, same run",
        Some(median(&mut published)),
        Target::None,
        format!(
            "{payments} events of {bytes} B in confirmed batches of 512, median of {rounds} alternated runs; \
             wall clock incl. process start, the relay's less its {IDLE:?} idle stop{deduplicated}"
        ),
    ))
}

/// `outbox.consume.STORE`: `consume` into a fresh store with its outbox at work beside the same
/// `consume` without. Into a journal, which is its own outbox, that work is the relay's:
/// `--publish-to` a JetStream stream, drained before exit, which then holds every event. Into
/// PostgreSQL it is the events' inserts: `--outbox`, each save inserting the events of its new
/// payments into the outbox table in the same statement, which then holds every event (and none
/// without).
fn consume_beside_outbox(runtime: &Runtime, kind: &str, lines: usize, rounds: usize) -> Option<Row> {
    let scenario = format!("outbox.consume.{kind}");
    let relaying = kind == "file";
    let reachable =
        if relaying { Places::reachable(runtime, "nats") } else { FreshStore::reachable(runtime, kind) };
    if let Err(reason) = reachable {
        eprintln!("SKIPPED {scenario}: {reason}");
        return None;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("input.jsonl");
    write_input(&input, lines);
    let payments = lines * 4 / 5;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let home = |which: &str| dir.path().join(format!("{which}-{round}"));
        let (on, off) =
            (FreshStore::new(runtime, kind, &home("with")), FreshStore::new(runtime, kind, &home("without")));
        let places = relaying.then(|| Places::new(runtime, "nats"));
        let target = places.as_ref().map(|places| places.target("events"));
        let flags = target.as_deref().map_or(vec!["--outbox"], |target| vec!["--publish-to", target]);
        let (on_rate, off_rate) = in_turn(
            round % 2 == 0,
            || consume_applied(dir.path(), &on.url, &input, &flags, payments),
            || consume_applied(dir.path(), &off.url, &input, &[], payments),
        );
        match &places {
            Some(places) => {
                assert_eq!(places.messages("events"), payments as u64, "{scenario}: events in the stream")
            }
            None => assert_eq!(
                (on.pending(), off.pending()),
                (payments as u64, 0),
                "{scenario}: events pending (with, without)"
            ),
        }
        with.push(on_rate);
        without.push(off_rate);
    }
    let (baseline, with_what) = if relaying {
        (
            "consume into a journal without --publish-to",
            "every event published to JetStream and confirmed before exit",
        )
    } else {
        ("consume into a fresh schema without --outbox", "every event inserted into the outbox table")
    };
    Some(Row::new(
        &scenario,
        median(&mut with),
        &mut Latencies::default(),
        baseline,
        Some(median(&mut without)),
        Target::None,
        format!(
            "{lines} lines, 20% duplicates, {with_what}; median of {rounds} alternated runs; wall clock incl. process start"
        ),
    ))
}

/// `consume_with`, checked to have applied `payments`: its deliveries per second.
fn consume_applied(dir: &Path, store: &str, input: &Path, extra: &[&str], payments: usize) -> f64 {
    let (report, per_sec) = consume_with(dir, store, input, extra);
    assert_eq!(report["applied"].as_u64(), Some(payments as u64), "{report}");
    per_sec
}

/// Runs `measured` and `baseline` once each, `measured` first when `measured_first`.
fn in_turn<T>(measured_first: bool, measured: impl FnOnce() -> T, baseline: impl FnOnce() -> T) -> (T, T) {
    if measured_first {
        let measured = measured();
        (measured, baseline())
    } else {
        let baseline = baseline();
        (measured(), baseline)
    }
}

/// Writes the `PaymentRecorded` message of each payment of `input` (once, whatever its
/// redeliveries) to `events`, one a line, encoded as the relay encodes it: what `publish` sends
/// beside the relay. Returns how many, and their mean size in bytes.
fn write_events(input: &Path, events: &Path) -> (usize, usize) {
    let lines = std::fs::read_to_string(input).expect("input");
    let mut out = std::io::BufWriter::new(std::fs::File::create(events).expect("events file"));
    let recorded_at = RecordedAt::from_system_time(SystemTime::now());
    let (mut seen, mut bytes) = (HashSet::new(), 0);
    for line in lines.lines() {
        let payment = event::decode(line.as_bytes()).expect("a payment");
        if seen.insert(payment.id.as_str().to_owned()) {
            let message = relay::message(&PaymentRecorded::new(payment, recorded_at));
            bytes += message.payload.len();
            out.write_all(&message.payload).and_then(|()| out.write_all(b"\n")).expect("write events");
        }
    }
    out.flush().expect("flush events");
    (seen.len(), bytes / seen.len().max(1))
}

/// A store of one run's own: a journal under `home`, or a place of its own on a server
/// (`servers::Place`), removed when dropped, a failed check included.
struct FreshStore<'a> {
    /// Its `--store` spec.
    url: String,
    place: Option<Place>,
    runtime: &'a Runtime,
}

impl<'a> FreshStore<'a> {
    /// Whether a store of `kind` (`file`, or a server's name) can be had; why not, when not.
    fn reachable(runtime: &Runtime, kind: &str) -> Result<(), String> {
        if kind == "file" {
            return Ok(());
        }
        match runtime.block_on(servers::gate(kind)) {
            Gate::Run => Ok(()),
            Gate::Skip(reason) | Gate::Fail(reason) => Err(reason),
        }
    }

    /// A new store of `kind`: a journal under `home`, or a fresh place on the server of that name.
    fn new(runtime: &'a Runtime, kind: &str, home: &Path) -> Self {
        if kind == "file" {
            let url = format!("file:{}", home.join("payments.journal").display());
            return Self { url, place: None, runtime };
        }
        let place = runtime.block_on(Place::fresh(kind, "bench_outbox")).expect("a fresh place");
        Self { url: place.url(), place: Some(place), runtime }
    }

    /// How many events its outbox holds unpublished (asking turns the outbox on).
    fn pending(&self) -> u64 {
        let counted = self.runtime.block_on(async {
            let spec: StoreSpec = self.url.parse().map_err(|err| format!("{err}"))?;
            let repository = spec.open().await.map_err(|err| format!("{err:#}"))?;
            let mut outbox = repository
                .outbox()
                .await
                .map_err(|err| err.to_string())?
                .ok_or("the store keeps no outbox")?;
            let backlog = outbox.backlog().await.map_err(|err| err.to_string());
            let closed = (outbox.close().await, repository.close().await);
            closed.0.and(closed.1).map_err(|err| err.to_string())?;
            backlog.map(|backlog| backlog.pending)
        });
        counted.unwrap_or_else(|err| panic!("cannot count the outbox of {}: {err}", self.url))
    }
}

impl Drop for FreshStore<'_> {
    fn drop(&mut self) {
        if let Some(place) = &self.place
            && let Err(err) = self.runtime.block_on(place.remove())
        {
            eprintln!("cannot remove {}: {err}", place.url());
        }
    }
}

/// Where a run publishes on one broker's test server: streams, keys or queues of its own, removed
/// when dropped, a failed check included.
struct Places<'a> {
    names: Names,
    runtime: &'a Runtime,
}

/// The names of [`Places`], by broker.
enum Names {
    Nats(TestStreams),
    Redis(TestKeys),
    Rabbitmq(TestQueues),
}

impl<'a> Places<'a> {
    /// Whether `broker` (`nats`, `redis` or `rabbitmq`) answers; why not, when not.
    fn reachable(runtime: &Runtime, broker: &str) -> Result<(), String> {
        match broker {
            "nats" => runtime.block_on(test_nats::reachable()),
            "redis" => runtime.block_on(test_redis::reachable()),
            "rabbitmq" => runtime.block_on(test_rabbitmq::reachable()),
            other => Err(format!("no broker called {other}")),
        }
    }

    /// New names on `broker`, as [`reachable`](Self::reachable) names it; nothing is created yet.
    fn new(runtime: &'a Runtime, broker: &str) -> Self {
        const TEST: &str = "app-bench-outbox";
        let names = match broker {
            "nats" => Names::Nats(TestStreams::new(TEST)),
            "redis" => Names::Redis(TestKeys::new(TEST)),
            _ => Names::Rabbitmq(TestQueues::new(TEST)),
        };
        Self { names, runtime }
    }

    /// The URL of the place called `name`, in the forms of `publish --to` and `relay --to`.
    fn target(&self, name: &str) -> String {
        match &self.names {
            Names::Nats(streams) => format!(
                "{}?stream={}&subject={}",
                test_nats::url(),
                streams.stream(name),
                streams.subject(name)
            ),
            Names::Redis(keys) => format!("{}?stream={}", test_redis::url(), keys.key(name)),
            Names::Rabbitmq(queues) => format!("{}?queue={}", test_rabbitmq::url(), queues.queue(name)),
        }
    }

    /// How many messages the place called `name` holds.
    fn messages(&self, name: &str) -> u64 {
        let counted: Result<u64, String> = self.runtime.block_on(async {
            match &self.names {
                Names::Nats(streams) => {
                    let context = test_nats::jetstream().await.map_err(|err| err.to_string())?;
                    let stream =
                        context.get_stream(streams.stream(name)).await.map_err(|err| err.to_string())?;
                    stream.get_info().await.map(|info| info.state.messages).map_err(|err| err.to_string())
                }
                Names::Redis(keys) => {
                    let mut connection = test_redis::connect().await.map_err(|err| err.to_string())?;
                    let length = redis::cmd("XLEN").arg(keys.key(name)).query_async(&mut connection).await;
                    length.map_err(|err| err.to_string())
                }
                Names::Rabbitmq(queues) => test_rabbitmq::ready_messages(&queues.queue(name))
                    .await
                    .map(|ready| u64::from(ready.unwrap_or(0)))
                    .map_err(|err| err.to_string()),
            }
        });
        counted.unwrap_or_else(|err| panic!("cannot count the messages of {name}: {err}"))
    }
}

impl Drop for Places<'_> {
    fn drop(&mut self) {
        let (prefix, removed) = match &self.names {
            Names::Nats(streams) => (streams.prefix(), self.runtime.block_on(streams.remove()).map(drop)),
            Names::Redis(keys) => {
                (keys.prefix(), self.runtime.block_on(keys.remove()).map(drop).map_err(Into::into))
            }
            Names::Rabbitmq(queues) => (queues.prefix(), self.runtime.block_on(queues.remove()).map(drop)),
        };
        if let Err(err) = removed {
            eprintln!("cannot remove the bench places {prefix}*: {err}");
        }
    }
}
