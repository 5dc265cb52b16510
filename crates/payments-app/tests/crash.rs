//! Crash torture: `payments-app consume` as a child process, SIGKILLed at random moments and
//! restarted, then checked against its input the way Jepsen checks a queue.
//!
//! ```text
//! cargo test -p payments-app --test crash                     the reduced run (10 kills per store and source)
//! cargo xtask crash [--store NAME|all] [--source lines|redis|nats|rabbitmq|all] [--kills N] [--payments M]
//! ```
//!
//! With `--source lines` (a file of JSON lines, redelivered by the test from a little before the
//! first payment not recorded) it is described below. With a broker (`--source redis`, `nats` or
//! `rabbitmq`) the input is published to it, and consumer processes read it in one group: see
//! `crash/broker.rs`.
//!
//! Every store of the app's table (`payments_app::adapters::STORES`) that outlives its process is
//! tortured, on a fresh place of its own: a temporary directory, or a schema or database on its
//! test server. A new store is tortured as soon as it has its entry.
//!
//! The input has duplicates (one delivery in five repeats an earlier payment) and conflicts (2%
//! of payments come again later with another amount). After each kill the store is read back, and
//! the next run starts where a broker would redeliver from: a little before the first payment
//! that is not recorded, so that some recorded ones come again as duplicates. A last run replays
//! the whole input. Then:
//!
//! - **lost** (a payment of the input not recorded), **duplicated effects** (recorded twice, or
//!   in the conflicting version although the first one came first) and **unexpected** (recorded
//!   but never sent) must all be zero;
//! - every conflict must be resolved first-writer-wins, and dead-lettered;
//! - most kills must land mid-work (the store grew during the run, and the run had not finished),
//!   or the test proved nothing.
//!
//! `PAYMENTS_CRASH_VERBOSE=1` prints each kill: its delay, whether the run was still going, and how
//! many payments were recorded by then.
//!
//! `harness = false`: it is a program with options, and a store whose server cannot be reached
//! reports itself skipped (failed under `CI=true`).

// A test harness reports on stdout and stderr by design.
#![allow(clippy::print_stdout, clippy::print_stderr)]

#[path = "crash/broker.rs"]
mod broker;
mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use payments_app::adapters::{STORES, StoreEntry, StoreSpec, TestEnv};
use payments_ports::PaymentsRepository;
use payments_test_support::Gate;
use payments_test_support::servers::{self, Place};
use support::app;

/// What to run.
struct Options {
    stores: Vec<&'static StoreEntry>,
    sources: Vec<&'static str>,
    kills: usize,
    payments: usize,
}

/// Where deliveries come from: a file the test redelivers itself, or a broker.
const SOURCES: &[&str] = &["lines", "redis", "nats", "rabbitmq"];

/// The stores that outlive their process: the ones a crash can test.
fn durable_stores() -> impl Iterator<Item = &'static StoreEntry> {
    STORES.iter().filter(|entry| entry.test_env != TestEnv::InProcess)
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        stores: durable_stores().collect(),
        sources: SOURCES.to_vec(),
        kills: 10,
        payments: 10_000,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--store" => {
                let name = value("--store")?;
                options.stores =
                    durable_stores().filter(|entry| name == "all" || entry.name == name).collect();
                if options.stores.is_empty() {
                    let known: Vec<&str> = durable_stores().map(|entry| entry.name).collect();
                    return Err(format!("--store {name}: expected all or one of {}", known.join(", ")));
                }
            }
            "--source" => {
                let name = value("--source")?;
                options.sources = SOURCES.iter().copied().filter(|s| name == "all" || *s == name).collect();
                if options.sources.is_empty() {
                    return Err(format!("--source {name}: expected all or one of {}", SOURCES.join(", ")));
                }
            }
            "--kills" => options.kills = value("--kills")?.parse().map_err(|e| format!("--kills: {e}"))?,
            "--payments" => {
                options.payments = value("--payments")?.parse().map_err(|e| format!("--payments: {e}"))?
            }
            // cargo test passes libtest's flags (--nocapture, filters, --test-threads): not ours.
            _ => {}
        }
    }
    Ok(options)
}

fn main() -> ExitCode {
    let options = match options() {
        Ok(options) => options,
        Err(err) => {
            eprintln!("crash: {err}");
            return ExitCode::FAILURE;
        }
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mut failed = false;
    for source in &options.sources {
        for entry in &options.stores {
            match torture_store(&runtime, entry, source, &options) {
                Ok(report) => println!("crash test, {} store, {source} source: {report}", entry.name),
                Err(err) => {
                    eprintln!("crash test, {} store, {source} source: FAILED: {err}", entry.name);
                    failed = true;
                }
            }
        }
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// Tortures one store, fed by one source, on a fresh place of its own, removed afterwards
/// whatever happened.
fn torture_store(
    runtime: &tokio::runtime::Runtime,
    entry: &StoreEntry,
    source: &str,
    options: &Options,
) -> Result<String, String> {
    // A broker's source runs if its server answers: skipped otherwise (failed under CI=true).
    let gate = runtime.block_on(async {
        match source {
            "redis" => Some(payments_test_support::redis::gate().await),
            "nats" => Some(payments_test_support::nats::gate().await),
            "rabbitmq" => Some(payments_test_support::rabbitmq::gate().await),
            _ => None,
        }
    });
    match gate {
        None => return on_store(runtime, entry, |spec, dir, progress| torture(spec, dir, options, progress)),
        Some(Gate::Run) => {}
        Some(Gate::Skip(reason)) => return Ok(format!("SKIPPED: {reason}")),
        Some(Gate::Fail(reason)) => return Err(reason),
    }
    let broker: Box<dyn broker::Broker> = match source {
        "redis" => Box::new(broker::Redis::new()?),
        "nats" => Box::new(broker::Nats::new()?),
        _ => Box::new(broker::Rabbit::new()?),
    };
    let result = on_store(runtime, entry, |spec, dir, progress| {
        broker::torture(spec, entry.shared, dir, options, progress, broker.as_ref())
    });
    match (result, broker.remove()) {
        (result, Ok(())) => result,
        (Ok(_), Err(err)) => Err(format!("removing what the torture made on {source}: {err}")),
        (Err(failed), Err(err)) => {
            Err(format!("{failed}; and removing what the torture made on {source}: {err}"))
        }
    }
}

/// Runs `torture` on a fresh place of `entry`'s store, with a work directory of its own and a way
/// to see its progress, and removes the place afterwards whatever happened.
fn on_store(
    runtime: &tokio::runtime::Runtime,
    entry: &StoreEntry,
    torture: impl FnOnce(&str, &Path, &Progress<'_>) -> Result<String, String>,
) -> Result<String, String> {
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    match entry.test_env {
        TestEnv::InProcess => Ok("SKIPPED: it lives in the process, which a crash takes with it".to_owned()),
        TestEnv::TempDir(template) => {
            let home = work.path().join("store");
            std::fs::create_dir(&home).map_err(|e| e.to_string())?;
            let spec = template.replace("{dir}", &home.display().to_string());
            torture(&spec, work.path(), &Progress::Files(home))
        }
        TestEnv::Server(server) => {
            match runtime.block_on(servers::gate(server)) {
                Gate::Run => {}
                Gate::Skip(reason) => return Ok(format!("SKIPPED: {reason}")),
                Gate::Fail(reason) => return Err(reason),
            }
            let place = runtime.block_on(Place::fresh(server, "crash")).map_err(|e| e.to_string())?;
            // The store itself, opened beside the consumers, tells how far they got.
            let result = (|| {
                let spec: StoreSpec =
                    place.url().parse().map_err(|e: payments_app::adapters::SpecError| e.to_string())?;
                let store = runtime.block_on(spec.open()).map_err(|e| e.to_string())?;
                let progress = Progress::Store { runtime, store: Arc::clone(&store) };
                let result = torture(&place.url(), work.path(), &progress);
                let _ = runtime.block_on(store.close());
                result
            })();
            runtime.block_on(place.remove()).map_err(|err| format!("removing {}: {err}", place.url()))?;
            result
        }
    }
}

/// How far a run has got, read cheaply while it runs: the size of the store's files, or its count.
enum Progress<'a> {
    Files(PathBuf),
    Store { runtime: &'a tokio::runtime::Runtime, store: Arc<dyn PaymentsRepository> },
}

impl Progress<'_> {
    fn now(&self) -> u64 {
        match self {
            Self::Files(dir) => std::fs::read_dir(dir)
                .map(|entries| {
                    entries.filter_map(Result::ok).filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()
                })
                .unwrap_or(0),
            Self::Store { runtime, store } => runtime.block_on(store.count()).unwrap_or(0),
        }
    }
}

/// The input, and what it must leave in the store.
struct Input {
    lines: Vec<String>,
    /// For each line, the payment it carries: (ID, amount).
    carries: Vec<(String, u64)>,
    /// The first version of each payment: what must be recorded.
    first: BTreeMap<String, u64>,
    /// Payments sent again later with another amount.
    conflicting: BTreeSet<String>,
}

/// A random number from the standard library's randomly keyed hasher: enough for kill delays.
fn random(state: &RandomState, counter: &mut u64) -> u64 {
    *counter += 1;
    state.hash_one(*counter)
}

fn input(payments: usize) -> Input {
    let state = RandomState::new();
    let mut counter = 0;
    let mut lines = Vec::new();
    let mut carries = Vec::new();
    let mut first = BTreeMap::new();
    let mut conflicting = BTreeSet::new();
    let mut later: Vec<(usize, String, u64)> = Vec::new();
    let line =
        |id: &str, amount: u64| format!(r#"{{"payment_id": "{id}", "amount": {amount}, "currency": "EUR"}}"#);
    for i in 0..payments {
        let id = format!("crash-{i:07}");
        let amount = 100 + random(&state, &mut counter) % 100_000;
        lines.push(line(&id, amount));
        carries.push((id.clone(), amount));
        first.insert(id.clone(), amount);
        // One delivery in five repeats an earlier payment.
        if i % 4 == 3 {
            let earlier = format!("crash-{:07}", random(&state, &mut counter) as usize % (i + 1));
            let amount = first[&earlier];
            lines.push(line(&earlier, amount));
            carries.push((earlier, amount));
        }
        // 2% come again much later, with another amount: the first one must win.
        if i % 50 == 7 {
            conflicting.insert(id.clone());
            later.push((lines.len() + 1000, id, amount + 1));
        }
        while later.first().is_some_and(|(at, _, _)| *at <= lines.len()) {
            let (_, id, amount) = later.remove(0);
            lines.push(line(&id, amount));
            carries.push((id, amount));
        }
    }
    for (_, id, amount) in later {
        lines.push(line(&id, amount));
        carries.push((id, amount));
    }
    Input { lines, carries, first, conflicting }
}

/// Every recorded payment: ID → amounts (more than one would be a duplicated effect).
fn recorded(dir: &Path, store: &str) -> Result<HashMap<String, Vec<u64>>, String> {
    let output = app(dir, &["export", "--store", store]).output().map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(format!("export failed: {}", String::from_utf8_lossy(&output.stderr)));
    }
    let mut recorded: HashMap<String, Vec<u64>> = HashMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("export line {line}: {e}"))?;
        let id = value["payment_id"].as_str().unwrap_or_default().to_owned();
        recorded.entry(id).or_default().push(value["amount"].as_u64().unwrap_or(0));
    }
    Ok(recorded)
}

/// The anomalies in what is recorded: (lost, duplicated effects, unexpected). `complete` says
/// whether every payment must be there by now.
fn anomalies(input: &Input, recorded: &HashMap<String, Vec<u64>>, complete: bool) -> (usize, usize, usize) {
    let lost = if complete { input.first.keys().filter(|id| !recorded.contains_key(*id)).count() } else { 0 };
    let mut duplicated = 0;
    let mut unexpected = 0;
    for (id, amounts) in recorded {
        duplicated += amounts.len() - 1;
        match input.first.get(id) {
            None => unexpected += 1,
            // Recorded, but not in its first version: the later, conflicting one overwrote or won.
            Some(first) if amounts[0] != *first => duplicated += 1,
            Some(_) => {}
        }
    }
    (lost, duplicated, unexpected)
}

fn torture(store: &str, dir: &Path, options: &Options, progress: &Progress<'_>) -> Result<String, String> {
    let input = input(options.payments);
    let dead_letters = dir.join("dead-letters.jsonl");
    let dead_letters = dead_letters.display().to_string();
    let started = Instant::now();
    let state = RandomState::new();
    let mut counter = 0;
    // How long after a run's first new record its kill may come; adapted after every kill.
    let mut window = Duration::from_millis(20);
    let (mut grown, mut waited) = (0, Duration::ZERO);
    let (mut mid_work, mut finished_early, mut kills) = (0, 0, 0);
    let mut from = 0;
    let mut recorded_before = 0;
    while kills < options.kills {
        // Redeliver from a little before the first payment that is not recorded.
        let input_path = dir.join(format!("run-{kills}.jsonl"));
        std::fs::write(&input_path, input.lines[from..].join("\n") + "\n").map_err(|e| e.to_string())?;
        let mut child = app(
            dir,
            &[
                "consume",
                "--store",
                store,
                "--input",
                &input_path.display().to_string(),
                "--dead-letter",
                &dead_letters,
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
        // Wait until this run records something new, then kill it a random moment later.
        let before = progress.now();
        let deadline = Instant::now() + Duration::from_secs(30);
        while progress.now() == before
            && child.try_wait().map_err(|e| e.to_string())?.is_none()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        let delay = window.mul_f64((random(&state, &mut counter) % 1000) as f64 / 1000.0);
        std::thread::sleep(delay);
        let still_running = child.try_wait().map_err(|e| e.to_string())?.is_none();
        child.kill().map_err(|e| e.to_string())?; // SIGKILL
        child.wait().map_err(|e| e.to_string())?;
        kills += 1;

        let recorded = recorded(dir, store)?;
        let (_, duplicated, unexpected) = anomalies(&input, &recorded, false);
        if duplicated + unexpected > 0 {
            return Err(format!(
                "after kill {kills}: {duplicated} duplicated effects, {unexpected} unexpected"
            ));
        }
        let grew = recorded.len() > recorded_before;
        if still_running && grew && recorded.len() < input.first.len() {
            mid_work += 1;
        } else if !still_running {
            finished_early += 1;
        }
        // Aim the next kill so that the payments left are spread over the kills left: from how
        // fast the runs recorded, how long the next may run. Uniform delays in [0, window) average
        // half the window, so the kills use about half of what is left, and the last run the
        // rest: a machine that runs faster for a moment then still leaves work to kill. (Aimed at
        // all of it, one run that finished early took every later kill with it, since nothing
        // was left to record.)
        let left = input.first.len().saturating_sub(recorded.len()) as f64;
        let per_kill = left / (options.kills - kills + 1) as f64;
        if still_running {
            // The rate over every run so far that was still recording when killed: one run's is
            // too noisy when its delay was short, and a finished run's includes time it was idle.
            grown += recorded.len() - recorded_before;
            waited += delay;
        }
        let rate = grown as f64 / waited.as_secs_f64().max(1e-3);
        if !still_running {
            window /= 2;
        } else if rate > 0.0 {
            let next = Duration::from_secs_f64((per_kill / rate).clamp(0.001, 2.0));
            window = next.min(window * 2);
        }
        if std::env::var_os("PAYMENTS_CRASH_VERBOSE").is_some() {
            eprintln!(
                "kill {kills}: after {delay:?} (window {window:?}), running {still_running}, recorded {} (+{})",
                recorded.len(),
                recorded.len() - recorded_before
            );
        }
        recorded_before = recorded.len();
        let first_missing =
            input.carries.iter().position(|(id, _)| !recorded.contains_key(id)).unwrap_or(input.lines.len());
        // Back by up to twice the concurrency, as a broker brings back the unacknowledged window.
        from = first_missing.saturating_sub(128);
    }

    // The last run replays everything, to the end.
    let all = dir.join("all.jsonl");
    std::fs::write(&all, input.lines.join("\n") + "\n").map_err(|e| e.to_string())?;
    let output = app(
        dir,
        &[
            "consume",
            "--store",
            store,
            "--input",
            &all.display().to_string(),
            "--dead-letter",
            &dead_letters,
            "--report",
            "json",
        ],
    )
    .output()
    .map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(format!("the last run failed: {}", String::from_utf8_lossy(&output.stderr)));
    }
    let recorded = recorded(dir, store)?;
    let (lost, duplicated, unexpected) = anomalies(&input, &recorded, true);
    let first_writer_wins = input
        .conflicting
        .iter()
        .filter(|id| recorded.get(*id).is_some_and(|a| a[0] == input.first[*id]))
        .count();
    let letters = std::fs::read_to_string(&dead_letters).unwrap_or_default();
    let dead_lettered: BTreeSet<String> = letters
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["kind"] == "conflict")
        .filter_map(|l| l["incoming"]["payment_id"].as_str().map(str::to_owned))
        .collect();
    let undead = input.conflicting.iter().filter(|id| !dead_lettered.contains(*id)).count();

    let report = format!(
        "{kills} SIGKILLs ({mid_work} mid-work, {finished_early} after the run had finished) over {} deliveries \
         ({} payments, {} conflicting) in {:.1} s: lost {lost}, duplicated effects {duplicated}, unexpected \
         {unexpected}; conflicts resolved first-writer-wins {first_writer_wins}/{}, dead-lettered {}/{}",
        input.lines.len(),
        input.first.len(),
        input.conflicting.len(),
        started.elapsed().as_secs_f64(),
        input.conflicting.len(),
        input.conflicting.len() - undead,
        input.conflicting.len(),
    );
    if lost + duplicated + unexpected > 0 || first_writer_wins != input.conflicting.len() || undead > 0 {
        return Err(report);
    }
    if mid_work * 2 < kills {
        return Err(format!("{report}; fewer than half the kills landed mid-work, so the run proved little"));
    }
    Ok(report)
}
