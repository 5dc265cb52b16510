//! The outbox under crash torture, as the end-to-end pipeline it exists for:
//!
//! ```text
//! publish ─► IN ─► consume (store A, outbox) ─► relay ─► OUT ─► consume (store B)
//! ```
//!
//! ```text
//! cargo test -p payments-app --test outbox                the reduced run (both stores, both targets)
//! cargo xtask crash --outbox [--store file|postgres|all] [--to nats|redis|all] [--kills N] [--payments M]
//! ```
//!
//! The test publishes the input (with duplicates, and conflicting versions of some payments) to a
//! JetStream stream IN, little by little, while consumer processes record it into store A, relays
//! publish A's outbox to a stream OUT, and a consumer records OUT into store B. Every role is
//! SIGKILLed at random and restarted:
//!
//! - **file**: the journal has one writing process, so its relay runs inside the consumer
//!   (`consume --publish-to`); killing one kills both.
//! - **postgres**: the consumer runs with `--outbox`, and two `payments-app relay` processes claim
//!   from the same outbox at once.
//!
//! At the end the roles run once more without kills until each is idle, and then:
//!
//! - store A holds every payment of the input once, and nothing else, in one of the versions sent
//!   (a broker does not keep order: a version held by a killed consumer may come back after the
//!   conflicting one, which then wins, first writer first);
//! - every payment recorded in A has its event in OUT, and no event in OUT is for a payment A does
//!   not hold in that version;
//! - every event carries the message ID `payment-recorded:<payment ID>`, in `Nats-Msg-Id` and in
//!   its body, and on JetStream, which drops republications by that ID, each is in OUT exactly once;
//! - store B's export equals store A's.
//!
//! `harness = false`: it is a program with options, and without its servers it reports itself
//! skipped by name (failed under `CI=true`).

// A test harness reports on stdout and stderr by design.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod support;

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::io::Write as _;
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use payments_test_support::Gate;
use payments_test_support::nats::TestStreams;
use payments_test_support::redis::TestKeys;
use payments_test_support::servers::{self, Place};
use support::app;

/// The stores whose outbox is tortured.
const STORES: &[&str] = &["file", "postgres"];

/// Where the relays publish: JetStream, which drops a republication by its message ID, and Redis
/// Streams, which keeps every one, so that republications can be seen and their IDs checked.
const TARGETS: &[&str] = &["nats", "redis"];

/// How long JetStream remembers a message ID: longer than any run, so that every republication
/// of an event, however late, is dropped.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(30 * 60);

/// How long a final run may take before the test gives up on it.
const FINAL_RUN_WITHIN: Duration = Duration::from_secs(300);

struct Options {
    stores: Vec<&'static str>,
    targets: Vec<&'static str>,
    kills: usize,
    payments: usize,
}

fn options() -> Result<Options, String> {
    let mut options =
        Options { stores: STORES.to_vec(), targets: TARGETS.to_vec(), kills: 12, payments: 4000 };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--store" => {
                let name = value("--store")?;
                options.stores = STORES.iter().copied().filter(|s| name == "all" || *s == name).collect();
                if options.stores.is_empty() {
                    return Err(format!("--store {name}: expected all or one of {}", STORES.join(", ")));
                }
            }
            "--to" => {
                let name = value("--to")?;
                options.targets = TARGETS.iter().copied().filter(|t| name == "all" || *t == name).collect();
                if options.targets.is_empty() {
                    return Err(format!("--to {name}: expected all or one of {}", TARGETS.join(", ")));
                }
            }
            "--kills" => options.kills = value("--kills")?.parse().map_err(|e| format!("--kills: {e}"))?,
            "--payments" => {
                options.payments = value("--payments")?.parse().map_err(|e| format!("--payments: {e}"))?;
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
            eprintln!("outbox: {err}");
            return ExitCode::FAILURE;
        }
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mut failed = false;
    // Before the torture: what a signal does to a relay that cannot reach its broker.
    if options.stores.contains(&"file") && options.targets.contains(&"nats") {
        let outcome = match runtime.block_on(payments_test_support::nats::gate()) {
            Gate::Run => a_signal_leaves_the_unpublished_events_to_the_next_relay_and_says_how_many(&runtime),
            Gate::Skip(reason) => Ok(format!("SKIPPED: {reason}")),
            Gate::Fail(reason) => Err(reason),
        };
        match outcome {
            Ok(report) => println!("outbox, a signal while the broker is away: {report}"),
            Err(err) => {
                eprintln!("outbox, a signal while the broker is away: FAILED: {err}");
                failed = true;
            }
        }
    }
    for target in &options.targets {
        for store in &options.stores {
            let outcome = match gate(&runtime, store, target) {
                Gate::Run => torture(&runtime, store, target, &options),
                Gate::Skip(reason) => Ok(format!("SKIPPED: {reason}")),
                Gate::Fail(reason) => Err(reason),
            };
            match outcome {
                Ok(report) => println!("outbox torture, {store} store, relayed to {target}: {report}"),
                Err(err) => {
                    eprintln!("outbox torture, {store} store, relayed to {target}: FAILED: {err}");
                    failed = true;
                }
            }
        }
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// `consume --publish-to` records payments while its broker is cut off, then gets SIGTERM: it
/// exits 0 and says how many events it left, and `relay` publishes exactly those afterwards.
fn a_signal_leaves_the_unpublished_events_to_the_next_relay_and_says_how_many(
    runtime: &tokio::runtime::Runtime,
) -> Result<String, String> {
    const PAYMENTS: usize = 100;
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let streams = TestStreams::new("outbox_signal");
    let out = Out::new("nats", &streams);
    let result = (|| {
        let context =
            runtime.block_on(payments_test_support::nats::jetstream()).map_err(|e| e.to_string())?;
        runtime.block_on(out.create(&context))?;
        let proxy = runtime
            .block_on(payments_test_support::nats::TestProxy::start())
            .map_err(|e| format!("starting the proxy: {e}"))?;
        let Out::Nats { stream, subject } = &out else { return Err("not a NATS target".to_owned()) };
        let through_proxy = format!("{}?stream={stream}&subject={subject}", proxy.url());
        let journal = work.path().join("a.journal");
        let store = format!("file:{}", journal.display());
        let mut child =
            app(work.path(), &["consume", "--store", &store, "--input", "-", "--publish-to", &through_proxy])
                .stdin(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| e.to_string())?;
        let outcome = (|| {
            wait_for("the consumer to connect to the broker", || proxy.connections() > 0)?;
            proxy.cut(Duration::from_secs(120));
            let mut stdin = child.stdin.take().ok_or("no stdin")?;
            for n in 0..PAYMENTS {
                writeln!(stdin, r#"{{"payment_id":"sig-{n:07}","amount":{},"currency":"EUR"}}"#, 100 + n)
                    .map_err(|e| e.to_string())?;
            }
            stdin.flush().map_err(|e| e.to_string())?;
            // Kept open: the input has not ended, so nothing asks the relay to drain. A journal
            // of version 2 holds 16 bytes of header and 38 per record of an 11-byte ID.
            let synced = 16 + 38 * PAYMENTS as u64;
            wait_for("the payments to be recorded", || {
                std::fs::metadata(&journal).is_ok_and(|m| m.len() >= synced)
            })?;
            let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            if !status.is_ok_and(|s| s.success()) {
                return Err("cannot send SIGTERM".to_owned());
            }
            // The input stays open until the process has ended: its end would ask the relay to
            // drain, which is another test.
            Ok(stdin)
        })();
        let output = child.wait_with_output().map_err(|e| e.to_string())?;
        drop(outcome?);
        let said = String::from_utf8_lossy(&output.stderr).into_owned();
        let expected = format!(
            "relayed 0 events to {through_proxy}; {PAYMENTS} events left in the outbox for the next relay"
        );
        if !output.status.success() || !said.contains(&expected) {
            return Err(format!("expected exit 0 and `{expected}`, got {}: {said}", output.status));
        }
        let relayed = support::report(&support::run(app(
            work.path(),
            &[
                "relay",
                "--store",
                &store,
                "--to",
                &out.target(),
                "--stop-when-idle",
                "0.5",
                "--report",
                "json",
            ],
        )));
        if relayed["published"] != PAYMENTS || relayed["left"] != 0 {
            return Err(format!("the next relay reported {relayed}, not {PAYMENTS} published and 0 left"));
        }
        let events = runtime.block_on(out.read())?;
        if events.len() != PAYMENTS {
            return Err(format!("OUT holds {} events, not {PAYMENTS}", events.len()));
        }
        Ok(format!("exit 0, `{expected}`; the next relay published those {PAYMENTS}, and OUT holds them"))
    })();
    let removed = runtime.block_on(streams.remove()).map_err(|e| format!("removing the test's streams: {e}"));
    let report = result?;
    removed?;
    Ok(report)
}

/// Polls `done` until it holds, for at most a generous minute.
fn wait_for(what: &str, mut done: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        if Instant::now() > deadline {
            return Err(format!("gave up waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Whether the servers a torture needs answer: NATS always (the input comes through it), the
/// target's, and the store's own.
fn gate(runtime: &tokio::runtime::Runtime, store: &str, target: &str) -> Gate {
    runtime.block_on(async {
        let mut gate = payments_test_support::nats::gate().await;
        if matches!(gate, Gate::Run) && target == "redis" {
            gate = payments_test_support::redis::gate().await;
        }
        if matches!(gate, Gate::Run) && store == "postgres" {
            gate = servers::gate("postgres").await;
        }
        gate
    })
}

/// The input, and what it must leave in store A.
struct Input {
    lines: Vec<String>,
    /// The first version of each payment.
    first: BTreeMap<String, u64>,
    /// The other version of the payments sent twice with different amounts.
    conflicting: BTreeMap<String, u64>,
}

fn input(payments: usize, random: &mut Random) -> Input {
    let line =
        |id: &str, amount: u64| format!(r#"{{"payment_id":"{id}","amount":{amount},"currency":"EUR"}}"#);
    let (mut lines, mut first, mut conflicting) = (Vec::new(), BTreeMap::new(), BTreeMap::new());
    for n in 0..payments {
        let id = format!("pay-{n:07}");
        let amount = 100 + random.below(100_000);
        lines.push(line(&id, amount));
        first.insert(id.clone(), amount);
        // One in five comes again (a duplicate), one in fifty in another version (a conflict).
        if random.below(5) == 0 {
            lines.push(line(&id, amount));
        }
        if random.below(50) == 0 {
            lines.push(line(&id, amount + 1));
            conflicting.insert(id.clone(), amount + 1);
        }
    }
    Input { lines, first, conflicting }
}

/// Random numbers from the standard library's randomly keyed hasher: enough for kill delays.
struct Random {
    state: RandomState,
    counter: u64,
}

impl Random {
    fn new() -> Self {
        Self { state: RandomState::new(), counter: 0 }
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.counter += 1;
        self.state.hash_one(self.counter) % bound.max(1)
    }
}

/// One process of the pipeline, restarted after each kill.
struct Role {
    name: &'static str,
    args: Vec<String>,
    child: Option<Child>,
    kills: usize,
    /// Kills that landed while events were owed: more recorded in A than published to OUT, or
    /// more in OUT than recorded in B.
    mid_flow: usize,
}

impl Role {
    fn new(name: &'static str, args: Vec<String>) -> Self {
        Self { name, args, child: None, kills: 0, mid_flow: 0 }
    }

    fn command(&self, dir: &Path, extra: &[&str]) -> Command {
        let mut args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        args.extend_from_slice(extra);
        let mut command = app(dir, &args);
        command.stdout(Stdio::null()).stderr(Stdio::null());
        command
    }

    /// Starts it, unless it runs.
    fn ensure_running(&mut self, dir: &Path) -> Result<(), String> {
        if let Some(child) = &mut self.child {
            // Ended by itself otherwise: an error would show in the final runs and the checks.
            if let Ok(None) = child.try_wait() {
                return Ok(());
            }
        }
        self.child =
            Some(self.command(dir, &[]).spawn().map_err(|e| format!("{} does not start: {e}", self.name))?);
        Ok(())
    }

    /// SIGKILLs it (the standard library's `kill` is SIGKILL on Unix) and reaps it.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs it to its end, with `extra` arguments, and says how it ended.
    fn run_to_end(&self, dir: &Path, extra: &[&str]) -> Result<(), String> {
        let mut command = self.command(dir, extra);
        command.stderr(Stdio::piped());
        let mut child = command.spawn().map_err(|e| format!("{} does not start: {e}", self.name))?;
        let deadline = Instant::now() + FINAL_RUN_WITHIN;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(format!("the final {} run did not end within {FINAL_RUN_WITHIN:?}", self.name));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let output = child.wait_with_output().map_err(|e| e.to_string())?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "the final {} run failed ({}): {}",
                self.name,
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }
}

fn torture(
    runtime: &tokio::runtime::Runtime,
    store: &str,
    target: &str,
    options: &Options,
) -> Result<String, String> {
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let streams = TestStreams::new("outbox");
    let out = Out::new(target, &streams);
    let place = if store == "postgres" {
        Some(runtime.block_on(Place::fresh("postgres", "outbox")).map_err(|e| e.to_string())?)
    } else {
        None
    };
    let result = run(runtime, store, place.as_ref(), &streams, &out, work.path(), options);
    let removed = runtime.block_on(async {
        streams.remove().await.map_err(|e| format!("removing the test's streams: {e}"))?;
        out.remove().await
    });
    let dropped = match &place {
        Some(place) => runtime.block_on(place.remove()).map_err(|e| format!("removing {}: {e}", place.url())),
        None => Ok(()),
    };
    let report = result?;
    removed?;
    dropped?;
    Ok(report)
}

fn run(
    runtime: &tokio::runtime::Runtime,
    store: &str,
    place: Option<&Place>,
    streams: &TestStreams,
    out: &Out,
    dir: &Path,
    options: &Options,
) -> Result<String, String> {
    let mut random = Random::new();
    let input = input(options.payments, &mut random);
    let nats = payments_test_support::nats::url();
    let (in_stream, in_subject) = (streams.stream("in"), streams.subject("in"));
    let context = runtime.block_on(payments_test_support::nats::jetstream()).map_err(|e| e.to_string())?;
    runtime
        .block_on(async {
            context
                .create_stream(jetstream::stream::Config {
                    name: in_stream.clone(),
                    subjects: vec![in_subject.clone()],
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?;
            out.create(&context).await
        })
        .map_err(|e| format!("creating the streams: {e}"))?;

    let store_a = match place {
        Some(place) => place.url(),
        None => format!("file:{}", dir.join("a.journal").display()),
    };
    let store_b = format!("file:{}", dir.join("b.journal").display());
    let target = out.target();
    let from_in = format!("{nats}?stream={in_stream}&subject={in_subject}&consumer=a&ack-wait-ms=2000");
    let from_out = out.source();
    let dead_letters = |name: &str| dir.join(name).display().to_string();
    let mut consumer_a = vec!["consume", "--store", &store_a, "--input", &from_in];
    let a_letters = dead_letters("a.dead-letters.jsonl");
    consumer_a.extend(["--dead-letter", &a_letters]);
    if store == "file" {
        consumer_a.extend(["--publish-to", &target]);
    } else {
        consumer_a.push("--outbox");
    }
    let owned = |args: &[&str]| args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
    let b_letters = dead_letters("b.dead-letters.jsonl");
    let mut roles = vec![
        Role::new("consumer A", owned(&consumer_a)),
        Role::new(
            "consumer B",
            owned(&["consume", "--store", &store_b, "--input", &from_out, "--dead-letter", &b_letters]),
        ),
    ];
    if store == "postgres" {
        for name in ["relay 1", "relay 2"] {
            roles.push(Role::new(name, owned(&["relay", "--store", &store_a, "--to", &target])));
        }
    }

    // The input goes out little by little, over about as long as the kills take.
    let published = Arc::new(AtomicUsize::new(0));
    let lines = input.lines.clone();
    let pace = Duration::from_millis(150 * options.kills.max(1) as u64);
    let publishing = {
        let (context, subject, published) = (context.clone(), in_subject.clone(), Arc::clone(&published));
        runtime.spawn(async move { publish_gradually(&context, &subject, &lines, pace, &published).await })
    };

    let started = Instant::now();
    for _ in 0..options.kills {
        for role in &mut roles {
            role.ensure_running(dir)?;
        }
        std::thread::sleep(Duration::from_millis(20 + random.below(280)));
        let victim = random.below(roles.len() as u64) as usize;
        let (recorded_a, in_out, recorded_b) = runtime.block_on(flow(out, &store_a, &store_b));
        let role = &mut roles[victim];
        role.kill();
        role.kills += 1;
        if recorded_a > in_out || in_out > recorded_b {
            role.mid_flow += 1;
        }
    }
    for role in &mut roles {
        role.kill();
    }
    runtime
        .block_on(publishing)
        .map_err(|e| format!("the publishing task panicked: {e}"))?
        .map_err(|e| format!("publishing the input: {e}"))?;
    let tortured = started.elapsed();

    // Once more without kills, each to its end: A records the rest (and, for the file store,
    // publishes it before exiting), a relay publishes what is left, B records what was published.
    roles[0].run_to_end(dir, &["--stop-when-idle", "3"])?;
    if let Some(relay) = roles.get(2) {
        relay.run_to_end(dir, &["--stop-when-idle", "2"])?;
    }
    roles[1].run_to_end(dir, &["--stop-when-idle", "3"])?;

    let recorded_a = export(dir, &store_a)?;
    let recorded_b = export(dir, &store_b)?;
    let events = runtime.block_on(out.read()).map_err(|e| format!("reading OUT: {e}"))?;
    let republished = check(&input, &recorded_a, &recorded_b, &events, out.deduplicates())?;

    let kills: Vec<String> = roles
        .iter()
        .map(|role| format!("{} {} ({} mid-flow)", role.name, role.kills, role.mid_flow))
        .collect();
    let later_won = input
        .conflicting
        .iter()
        .filter(|(id, amount)| recorded_a.get(*id).map(|p| p.0) == Some(**amount))
        .count();
    Ok(format!(
        "{} payments, {} messages in ({} conflicts, {later_won} of them won by the later version after a redelivery); \
         {} kills in {:.1} s: {}; {} events in OUT ({}), every one under its message ID; store B equals store A",
        input.first.len(),
        input.lines.len(),
        input.conflicting.len(),
        options.kills,
        tortured.as_secs_f64(),
        kills.join(", "),
        events.len(),
        if out.deduplicates() {
            "each exactly once".to_owned()
        } else {
            format!("{republished} of them republications")
        },
    ))
}

/// Publishes `lines` to `subject`, spread over about `pace`, each batch confirmed.
async fn publish_gradually(
    context: &jetstream::Context,
    subject: &str,
    lines: &[String],
    pace: Duration,
    published: &AtomicUsize,
) -> Result<(), String> {
    const TICK: Duration = Duration::from_millis(20);
    let ticks = (pace.as_millis() / TICK.as_millis()).max(1) as usize;
    let per_tick = lines.len().div_ceil(ticks).max(1);
    for chunk in lines.chunks(per_tick) {
        let mut acks = Vec::with_capacity(chunk.len());
        for line in chunk {
            acks.push(
                context.publish(subject.to_owned(), line.clone().into()).await.map_err(|e| e.to_string())?,
            );
        }
        for ack in acks {
            ack.await.map_err(|e| e.to_string())?;
        }
        published.fetch_add(chunk.len(), Ordering::Relaxed);
        tokio::time::sleep(TICK).await;
    }
    Ok(())
}

/// How far each step has got: payments in A, events in OUT, payments in B (file sizes stand in
/// for counts of a journal, which its consumer holds locked).
async fn flow(out: &Out, store_a: &str, store_b: &str) -> (u64, u64, u64) {
    (recorded(store_a).await, out.len().await, recorded(store_b).await)
}

/// Roughly how many payments a store holds: a journal's records (by size, 16-byte header and
/// 38 bytes a record here), or a database's count.
async fn recorded(spec: &str) -> u64 {
    if let Some(path) = spec.strip_prefix("file:") {
        return std::fs::metadata(path).map(|m| m.len().saturating_sub(16) / 38).unwrap_or(0);
    }
    let Ok(spec) = spec.parse::<payments_app::adapters::StoreSpec>() else { return 0 };
    let Ok(store) = spec.open().await else { return 0 };
    let count = store.count().await.unwrap_or(0);
    let _ = store.close().await;
    count
}

/// A store's payments, by ID: (amount, currency).
fn export(dir: &Path, store: &str) -> Result<BTreeMap<String, (u64, String)>, String> {
    let output = support::run(app(dir, &["export", "--store", store]));
    if !output.status.success() {
        return Err(format!("export of {store} failed: {}", support::stderr(&output)));
    }
    let mut payments = BTreeMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("export line {line}: {e}"))?;
        let id = value["payment_id"].as_str().unwrap_or_default().to_owned();
        let amount = value["amount"].as_u64().unwrap_or_default();
        let currency = value["currency"].as_str().unwrap_or_default().to_owned();
        payments.insert(id, (amount, currency));
    }
    Ok(payments)
}

/// One message of OUT: the message ID the broker carries beside the body (JetStream's
/// `Nats-Msg-Id`, the Redis entry's `message_id` field), and the body.
struct Event {
    header_id: Option<String>,
    body: serde_json::Value,
}

/// Where the relays publish, and where consumer B reads from.
enum Out {
    Nats { stream: String, subject: String },
    Redis { keys: TestKeys, stream: String },
}

impl Out {
    fn new(target: &str, streams: &TestStreams) -> Self {
        if target == "redis" {
            let keys = TestKeys::new("outbox");
            let stream = keys.key("out");
            Self::Redis { keys, stream }
        } else {
            Self::Nats { stream: streams.stream("out"), subject: streams.subject("out") }
        }
    }

    /// Whether the broker drops a republication by its message ID.
    const fn deduplicates(&self) -> bool {
        matches!(self, Self::Nats { .. })
    }

    /// Makes it: a JetStream stream remembering message IDs longer than any run.
    async fn create(&self, context: &jetstream::Context) -> Result<(), String> {
        let Self::Nats { stream, subject } = self else { return Ok(()) };
        context
            .create_stream(jetstream::stream::Config {
                name: stream.clone(),
                subjects: vec![subject.clone()],
                duplicate_window: DUPLICATE_WINDOW,
                ..Default::default()
            })
            .await
            .map(drop)
            .map_err(|e| format!("creating OUT: {e}"))
    }

    /// `relay --to` and `consume --publish-to`.
    fn target(&self) -> String {
        match self {
            Self::Nats { stream, subject } => {
                format!("{}?stream={stream}&subject={subject}", payments_test_support::nats::url())
            }
            Self::Redis { stream, .. } => format!("{}?stream={stream}", payments_test_support::redis::url()),
        }
    }

    /// Consumer B's `--input`.
    fn source(&self) -> String {
        match self {
            Self::Nats { stream, subject } => format!(
                "{}?stream={stream}&subject={subject}&consumer=b&ack-wait-ms=2000",
                payments_test_support::nats::url()
            ),
            Self::Redis { stream, .. } => {
                format!("{}?stream={stream}&group=b&claim-idle-ms=2000", payments_test_support::redis::url())
            }
        }
    }

    /// How many messages it holds now (0 when it cannot tell).
    async fn len(&self) -> u64 {
        match self {
            Self::Nats { stream, .. } => {
                let Ok(context) = payments_test_support::nats::jetstream().await else { return 0 };
                match context.get_stream(stream).await {
                    Ok(stream) => stream.get_info().await.map(|info| info.state.messages).unwrap_or(0),
                    Err(_) => 0,
                }
            }
            Self::Redis { stream, .. } => {
                let Ok(mut connection) = payments_test_support::redis::connect().await else { return 0 };
                redis::cmd("XLEN").arg(stream).query_async(&mut connection).await.unwrap_or(0)
            }
        }
    }

    /// Every message it holds, in order.
    async fn read(&self) -> Result<Vec<Event>, String> {
        match self {
            Self::Nats { stream, .. } => {
                let context = payments_test_support::nats::jetstream().await.map_err(|e| e.to_string())?;
                read_stream(&context, stream).await
            }
            Self::Redis { stream, .. } => read_redis(stream).await,
        }
    }

    async fn remove(&self) -> Result<(), String> {
        match self {
            Self::Nats { .. } => Ok(()),
            Self::Redis { keys, .. } => {
                keys.remove().await.map(drop).map_err(|e| format!("removing OUT: {e}"))
            }
        }
    }
}

async fn read_stream(context: &jetstream::Context, name: &str) -> Result<Vec<Event>, String> {
    let stream = context.get_stream(name).await.map_err(|e| e.to_string())?;
    let info = stream.get_info().await.map_err(|e| e.to_string())?;
    let mut events = Vec::with_capacity(usize::try_from(info.state.messages).unwrap_or(0));
    if info.state.messages == 0 {
        return Ok(events);
    }
    for sequence in info.state.first_sequence..=info.state.last_sequence {
        let message =
            stream.get_raw_message(sequence).await.map_err(|e| format!("message {sequence}: {e}"))?;
        let header_id = message.headers.get("Nats-Msg-Id").map(|value| value.as_str().to_owned());
        let body =
            serde_json::from_slice(&message.payload).map_err(|e| format!("message {sequence}: {e}"))?;
        events.push(Event { header_id, body });
    }
    Ok(events)
}

async fn read_redis(stream: &str) -> Result<Vec<Event>, String> {
    type Entries = Vec<(String, Vec<(String, Vec<u8>)>)>;
    let mut connection = payments_test_support::redis::connect().await.map_err(|e| e.to_string())?;
    let mut events = Vec::new();
    let mut after = "-".to_owned();
    loop {
        let page: Entries = redis::cmd("XRANGE")
            .arg(stream)
            .arg(&after)
            .arg("+")
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut connection)
            .await
            .map_err(|e| e.to_string())?;
        let Some((last, _)) = page.last() else { return Ok(events) };
        after = format!("({last}");
        for (id, fields) in page {
            let field =
                |name: &str| fields.iter().find(|(key, _)| key == name).map(|(_, value)| value.clone());
            let header_id = field("message_id").map(|value| String::from_utf8_lossy(&value).into_owned());
            let payload = field("payload").ok_or_else(|| format!("entry {id} has no payload"))?;
            let body = serde_json::from_slice(&payload).map_err(|e| format!("entry {id}: {e}"))?;
            events.push(Event { header_id, body });
        }
    }
}

/// The guarantees, each with what broke it.
fn check(
    input: &Input,
    recorded_a: &BTreeMap<String, (u64, String)>,
    recorded_b: &BTreeMap<String, (u64, String)>,
    events: &[Event],
    deduplicated: bool,
) -> Result<usize, String> {
    let lost = input.first.keys().filter(|id| !recorded_a.contains_key(*id)).count();
    let unexpected = recorded_a
        .iter()
        .filter(|(id, (amount, currency))| {
            let sent = |version: Option<&u64>| version == Some(amount);
            currency != "EUR" || !(sent(input.first.get(*id)) || sent(input.conflicting.get(*id)))
        })
        .count();
    if lost + unexpected > 0 {
        return Err(format!(
            "store A does not hold each payment of the input once, in a version sent: {lost} lost, {unexpected} unexpected"
        ));
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    for event in events {
        let id = event.body["payment_id"].as_str().unwrap_or_default().to_owned();
        let message_id = format!("payment-recorded:{id}");
        if event.header_id.as_deref() != Some(message_id.as_str())
            || event.body["message_id"].as_str() != Some(message_id.as_str())
        {
            return Err(format!(
                "an event of {id} carries the message ID {:?} beside its body and {} in it, not {message_id}",
                event.header_id, event.body["message_id"]
            ));
        }
        if event.body["type"] != "PaymentRecorded" {
            return Err(format!("an event of {id} is of type {}", event.body["type"]));
        }
        let payment = (
            event.body["amount"].as_u64().unwrap_or_default(),
            event.body["currency"].as_str().unwrap_or_default().to_owned(),
        );
        match recorded_a.get(&id) {
            Some(recorded) if *recorded == payment => {}
            Some(recorded) => {
                return Err(format!("the event of {id} says {payment:?}, store A recorded {recorded:?}"));
            }
            None => return Err(format!("an event was published for {id}, which store A never recorded")),
        }
        *seen.entry(id).or_default() += 1;
    }
    if deduplicated && let Some((id, times)) = seen.iter().find(|(_, times)| **times > 1) {
        return Err(format!(
            "the event of {id} is in OUT {times} times: JetStream should have dropped repeats"
        ));
    }
    let unpublished: Vec<&String> = recorded_a.keys().filter(|id| !seen.contains_key(*id)).collect();
    if !unpublished.is_empty() {
        return Err(format!(
            "{} recorded payments have no event in OUT, {:?} among them",
            unpublished.len(),
            &unpublished[..unpublished.len().min(5)]
        ));
    }
    if recorded_b != recorded_a {
        let missing = recorded_a.keys().filter(|id| !recorded_b.contains_key(*id)).count();
        let extra = recorded_b.keys().filter(|id| !recorded_a.contains_key(*id)).count();
        return Err(format!("store B is not store A: {missing} missing from B, {extra} only in B"));
    }
    Ok(events.len() - seen.len())
}
