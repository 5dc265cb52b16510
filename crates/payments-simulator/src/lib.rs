//! The at-least-once world in one process, checked the way Jepsen checks: `payments-app simulate`.
//!
//! It generates payments from a seed (plus conflicting versions and invalid messages), publishes
//! them to an in-process [`Broker`] that redelivers, duplicates, reorders and loses
//! acknowledgements to simulated crashes, and runs the real consumer, handler and store against
//! it. A crash tears the consumer down mid-flight (its in-flight deliveries are abandoned
//! unacknowledged) and starts a new one; a durable store is closed and opened again from disk.
//!
//! When every message is acknowledged, it checks the store against what was sent:
//!
//! - **lost**: a valid payment that is not recorded (every message was acknowledged);
//! - **duplicated effects**: a payment reported new twice, recorded twice, or recorded in a
//!   version other than the one first reported new (overwritten);
//! - **unexpected**: a recorded payment, or version, that was never sent;
//! - **missing dead letters**: a conflicting or invalid message that left no dead letter.
//!
//! All must be zero, and the faults must actually have fired, or the run proved nothing.

pub mod broker;
mod recording;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use payments_consumer::{Consumer, ConsumerConfig, Ending, Handler, StopReason, Summary};
use payments_ports::domain::{Amount, Currency, Payment, PaymentId, event};
use payments_ports::testing::KeptDeadLetters;
use payments_ports::{BoxError, DeadLetterKind, Payload, PaymentsRepository, RepositoryError, export_all};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use self::broker::{Broker, Faults};
use self::recording::{NewOutcomes, Recording};

/// How long an unacknowledged message stays invisible by default: long enough that a redelivery
/// usually comes after its first delivery settled (as in a real broker), short enough that a run
/// of 100,000 payments with crashes ends in seconds.
pub const DEFAULT_VISIBILITY_TIMEOUT: Duration = Duration::from_millis(5);

/// Why a simulation could not run to its verdict.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimulationError {
    /// The store could not be opened.
    #[error("cannot open the store")]
    Open(#[source] BoxError),
    /// The store holds payments already, which would make the checks meaningless.
    #[error("simulate needs an empty store, and this one holds {0} payments")]
    NotEmpty(u64),
    /// The store failed while the simulation read it.
    #[error("cannot {action} the store")]
    Store {
        /// What the simulation was doing.
        action: &'static str,
        /// The store's error.
        #[source]
        source: RepositoryError,
    },
    /// The consumer stopped (its store failed, or stayed unavailable).
    #[error("the consumer stopped")]
    Stopped(#[source] StopReason),
    /// The consumer ended while messages were still unacknowledged.
    #[error("the consumer ended before every message was acknowledged")]
    EndedEarly,
    /// The consumer's task panicked or was cancelled.
    #[error("the consumer task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// A temporary directory for a store of the simulation's own, removed when dropped.
///
/// # Errors
///
/// When the directory cannot be created.
pub fn scratch_dir() -> std::io::Result<tempfile::TempDir> {
    tempfile::Builder::new().prefix("payments-simulate-").tempdir()
}

/// What to simulate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Config {
    /// Distinct valid payments.
    pub payments: usize,
    /// The chance that a delivery is handed out twice at once.
    pub duplicate_rate: f64,
    /// The chance that the consumer crashes between the effect and the acknowledgement.
    pub crash_rate: f64,
    /// The share of payments that are also sent in a conflicting version.
    pub conflict_rate: f64,
    /// Invalid messages, as a share of the payments.
    pub invalid_rate: f64,
    /// Where all randomness comes from.
    pub seed: u64,
    /// Deliveries handled at once.
    pub concurrency: usize,
    /// How long an unacknowledged message stays invisible.
    pub visibility_timeout: Duration,
}

/// How the simulation reaches its store across simulated crashes: opened again after each one
/// (from disk, for a durable store), or the same instance kept (for a store that lives elsewhere).
pub type Opener =
    Box<dyn Fn() -> Pin<Box<dyn Future<Output = Result<Arc<dyn PaymentsRepository>, BoxError>> + Send>>>;

/// The counts of a simulation: the consumers', the faults that fired, and the anomalies found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The consumers' counts over every run, in the JSON report's top level. Their `applied`
    /// counts the payments recorded in the store: a consumer torn down by a crash may have applied
    /// a payment it never got to report, and its redelivery then counted as a duplicate.
    #[serde(flatten)]
    pub counts: Summary,
    /// Valid payments not recorded.
    pub lost: u64,
    /// Payments applied twice, recorded twice, or overwritten.
    pub duplicated_effects: u64,
    /// Recorded payments or versions that were never sent.
    pub unexpected: u64,
    /// Conflicting or invalid messages without a dead letter.
    pub missing_dead_letters: u64,
    /// Acknowledgements lost to a simulated crash.
    pub crashes: u64,
    /// Times the consumer was torn down mid-flight by a crash and started again (a durable
    /// store is reopened from disk each time).
    pub restarts: u64,
    /// Deliveries of a message delivered before.
    pub redeliveries: u64,
    /// Deliveries handed out twice at once.
    pub concurrent_duplicates: u64,
    /// Messages published: payments, conflicting versions and invalid messages.
    pub messages: u64,
}

impl Report {
    /// Whether any anomaly was found.
    pub const fn anomalies(&self) -> u64 {
        self.lost + self.duplicated_effects + self.unexpected + self.missing_dead_letters
    }

    /// The verdict on this run of `config`: an anomaly fails it, and so does a fault that was
    /// asked for but never fired, because such a run proved nothing about it.
    pub fn verdict(&self, config: &Config) -> Verdict {
        if self.anomalies() > 0 {
            return Verdict::Anomalies;
        }
        match self.faults_that_did_not_fire(config) {
            silent if silent.is_empty() => Verdict::Ok,
            silent => Verdict::Unproven(silent),
        }
    }

    /// The faults that were asked for but never fired: such a run proved nothing about them.
    pub fn faults_that_did_not_fire(&self, config: &Config) -> Vec<&'static str> {
        let mut silent = Vec::new();
        if config.crash_rate > 0.0 && (self.crashes == 0 || self.restarts == 0 || self.redeliveries == 0) {
            silent.push("crashes");
        }
        if config.duplicate_rate > 0.0 && self.concurrent_duplicates == 0 {
            silent.push("concurrent duplicates");
        }
        if config.conflict_rate > 0.0 && self.counts.conflicts == 0 {
            silent.push("conflicts");
        }
        if config.invalid_rate > 0.0 && self.counts.invalid == 0 {
            silent.push("invalid messages");
        }
        silent
    }
}

/// What a simulation concluded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every payment was recorded exactly once, and every fault asked for fired.
    Ok,
    /// The store does not match what was sent.
    Anomalies,
    /// No anomaly, but these faults never fired, so the run proved nothing about them.
    Unproven(Vec<&'static str>),
}

impl Verdict {
    /// Whether the run passed.
    pub const fn passed(&self) -> bool {
        matches!(self, Self::Ok)
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ok => f.write_str("OK: every payment was recorded exactly once"),
            Self::Anomalies => f.write_str("FAILED: the store does not match what was sent"),
            Self::Unproven(silent) => write!(
                f,
                "FAILED: no {} happened, so the run proved nothing about them; send more payments",
                silent.join(", no ")
            ),
        }
    }
}

/// What was published, for the checks.
struct Published {
    payloads: Vec<Bytes>,
    /// Every version sent per valid payment ID.
    versions: HashMap<PaymentId, Vec<Payment>>,
    /// IDs that were sent in two versions.
    conflicting: HashSet<PaymentId>,
    /// The invalid payloads.
    invalid: Vec<Bytes>,
}

const CURRENCIES: [&str; 5] = ["EUR", "USD", "GBP", "JPY", "CHF"];

fn publish(config: &Config) -> Published {
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut payloads = Vec::new();
    let mut versions: HashMap<PaymentId, Vec<Payment>> = HashMap::new();
    let mut conflicting = HashSet::new();
    let mut line = Vec::new();
    let mut add = |payment: &Payment, payloads: &mut Vec<Bytes>| {
        line.clear();
        event::encode(payment, &mut line);
        payloads.push(Bytes::copy_from_slice(&line));
    };
    for i in 0..config.payments {
        let id = PaymentId::new(&format!("sim-{}-{i:07}", config.seed)).expect("generated IDs are valid");
        let amount = Amount::new(rng.random_range(1..=1_000_000)).expect("in range");
        let currency = Currency::new(CURRENCIES[rng.random_range(0..CURRENCIES.len())]).expect("valid");
        let payment = Payment::new(id, amount, currency);
        add(&payment, &mut payloads);
        let mut sent = vec![payment.clone()];
        if rng.random_bool(config.conflict_rate) {
            let other = Amount::new(amount.minor_units() % 1_000_000 + 1).expect("in range");
            let conflict = Payment::new(id, other, currency);
            add(&conflict, &mut payloads);
            sent.push(conflict);
            conflicting.insert(id);
        }
        versions.insert(id, sent);
    }
    let invalid_count = (config.payments as f64 * config.invalid_rate).round() as usize;
    let invalid: Vec<Bytes> = (0..invalid_count).map(|k| malformed(config.seed, k, &mut rng)).collect();
    payloads.extend(invalid.iter().cloned());
    Published { payloads, versions, conflicting, invalid }
}

/// The `k`th invalid message: ten kinds of broken, in turn.
fn malformed(seed: u64, k: usize, rng: &mut StdRng) -> Bytes {
    let id = format!("bad-{seed}-{k}");
    let text = match k % 10 {
        0 => format!(r#"{{"payment_id": "{id}", "amount": 100, "curr"#),
        1 => format!(r#"{{"payment_id": "{id}", "amount": -5, "currency": "EUR"}}"#),
        2 => format!(r#"{{"payment_id": "{id}", "amount": 19.99, "currency": "EUR"}}"#),
        3 => format!(r#"{{"payment_id": "{id}", "amount": 100, "currency": "eur"}}"#),
        4 => r#"{"amount": 100, "currency": "EUR"}"#.to_owned(),
        5 => {
            let mut garbage: Vec<u8> = (0..32).map(|_| rng.random()).collect();
            garbage[0] = 0xff; // never valid UTF-8, never JSON
            return Bytes::from(garbage);
        }
        6 => String::new(),
        7 => format!(r#"{{"payment_id": "{}", "amount": 100, "currency": "EUR"}}"#, "x".repeat(65)),
        8 => format!(r#"["{id}", 100, "EUR"]"#),
        _ => format!(r#"{{"payment_id": "{id}", "amount": "100", "currency": "EUR"}}"#),
    };
    Bytes::from(text)
}

/// Runs the simulation against the store `open` opens (again after each crash), calling
/// `progress` with how many deliveries were settled so far.
///
/// # Errors
///
/// When the store cannot be opened or fails, or is not empty to begin with.
pub async fn run(
    config: Config,
    open: Opener,
    progress: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<Report, SimulationError> {
    let published = publish(&config);
    let messages = published.payloads.len() as u64;
    let faults = Faults {
        duplicate_rate: config.duplicate_rate,
        crash_rate: config.crash_rate,
        visibility_timeout: config.visibility_timeout,
    };
    // The broker's randomness is its own, so the published messages do not depend on it.
    let broker = Broker::new(published.payloads.clone(), faults, config.seed.rotate_left(32) ^ 0x5eed);
    let news = NewOutcomes::default();
    let letters = Arc::new(KeptDeadLetters::default());
    let mut total = Summary::default();
    let mut restarts = 0;

    let first = open().await.map_err(SimulationError::Open)?;
    let already = first
        .count()
        .await
        .map_err(|source| SimulationError::Store { action: "count the payments in", source })?;
    if already > 0 {
        return Err(SimulationError::NotEmpty(already));
    }
    let mut store = Some(first);
    loop {
        let current = match store.take() {
            Some(store) => store,
            None => open().await.map_err(SimulationError::Open)?,
        };
        let recording: Arc<dyn PaymentsRepository> =
            Arc::new(Recording { inner: Arc::clone(&current), news: Arc::clone(&news) });
        let consumer = Consumer::new(
            Handler::new(recording),
            Arc::clone(&letters) as Arc<dyn payments_ports::DeadLetterSink>,
            ConsumerConfig { concurrency: config.concurrency, ..ConsumerConfig::default() },
        );
        let seen = Arc::new(Mutex::new(Summary::default()));
        let source = broker.source();
        let crashed = source.crashed();
        let (seen_by_run, progress, base) = (Arc::clone(&seen), Arc::clone(&progress), settled(&total));
        let mut running = tokio::spawn(async move {
            let mut on_progress = |summary: &Summary| {
                *seen_by_run.lock().unwrap_or_else(PoisonError::into_inner) = *summary;
                progress(base + settled(summary));
            };
            // Never cancelled: a crash is the only way this consumer goes, and it is not polite.
            consumer.run(source, CancellationToken::new(), &mut on_progress).await
        });
        let ended = tokio::select! {
            joined = &mut running => Some(joined.map_err(SimulationError::Task)?),
            () = crashed.notified() => {
                // The crash: everything in flight is abandoned, unacknowledged.
                running.abort();
                let _ = running.await;
                None
            }
        };
        total += *seen.lock().unwrap_or_else(PoisonError::into_inner);
        // Closed as a process that dies closes its files; the opener opens it again from disk (or,
        // for a store that lives elsewhere, hands out the same one, whose close is a no-op).
        current.close().await.map_err(|source| SimulationError::Store { action: "close", source })?;
        drop(current);
        match ended {
            None => restarts += 1,
            Some(run) => match run.ending {
                Ending::Exhausted if broker.all_acknowledged() => break,
                Ending::Exhausted | Ending::Idle | Ending::ShutDown => {
                    return Err(SimulationError::EndedEarly);
                }
                Ending::Stopped(reason) => return Err(SimulationError::Stopped(reason)),
            },
        }
    }

    let store = open().await.map_err(SimulationError::Open)?;
    let stats = broker.stats();
    let mut report = Report {
        counts: total,
        crashes: stats.crashes,
        restarts,
        redeliveries: stats.redeliveries,
        concurrent_duplicates: stats.concurrent_duplicates,
        messages,
        ..Report::default()
    };
    check(&published, store.as_ref(), &news, &letters, &mut report).await?;
    store.close().await.map_err(|source| SimulationError::Store { action: "close", source })?;
    Ok(report)
}

fn settled(summary: &Summary) -> u64 {
    summary.applied + summary.duplicates + summary.conflicts + summary.invalid
}

/// Compares the store, the `New` outcomes and the dead letters with what was published.
async fn check(
    published: &Published,
    store: &dyn PaymentsRepository,
    news: &NewOutcomes,
    letters: &KeptDeadLetters,
    report: &mut Report,
) -> Result<(), SimulationError> {
    let mut recorded: HashMap<PaymentId, Payment> = HashMap::new();
    export_all(store, 10_000, |payment| {
        match published.versions.get(&payment.id) {
            None => report.unexpected += 1,
            Some(sent) if !sent.contains(&payment) => report.unexpected += 1,
            Some(_) => {}
        }
        if recorded.insert(payment.id, payment).is_some() {
            report.duplicated_effects += 1;
        }
        Ok::<_, RepositoryError>(())
    })
    .await
    .map_err(|source| SimulationError::Store { action: "export", source })?;
    report.lost = published.versions.keys().filter(|id| !recorded.contains_key(id)).count() as u64;
    report.counts.applied = recorded.len() as u64;

    let news = news.lock().unwrap_or_else(PoisonError::into_inner);
    for (id, (first_new, times)) in news.iter() {
        // Reported new more than once: applied twice. Recorded in another version: overwritten.
        report.duplicated_effects += u64::from(times.saturating_sub(1));
        if recorded.get(id).is_some_and(|stored| stored != first_new) {
            report.duplicated_effects += 1;
        }
    }

    let letters = letters.letters();
    let conflict_letters: HashSet<PaymentId> = letters
        .iter()
        .filter(|l| l.kind == DeadLetterKind::Conflict)
        .filter_map(|l| l.conflict.as_ref().map(|c| c.incoming.id))
        .collect();
    let invalid_letters: HashSet<&Bytes> = letters
        .iter()
        .filter(|l| l.kind == DeadLetterKind::Invalid)
        .filter_map(|l| match &l.payload {
            Payload::Complete(body) => Some(body),
            Payload::TooLarge { .. } | Payload::Unreadable { .. } => None,
        })
        .collect();
    report.missing_dead_letters =
        published.conflicting.iter().filter(|id| !conflict_letters.contains(id)).count() as u64
            + published.invalid.iter().filter(|payload| !invalid_letters.contains(payload)).count() as u64;
    Ok(())
}

#[cfg(test)]
mod tests {
    use payments_store_memory::MemoryPaymentsRepository;

    use super::*;

    fn config(seed: u64) -> Config {
        Config {
            payments: 2000,
            duplicate_rate: 0.1,
            crash_rate: 0.02,
            conflict_rate: 0.05,
            invalid_rate: 0.02,
            seed,
            concurrency: 32,
            visibility_timeout: Duration::from_millis(1),
        }
    }

    fn memory() -> Opener {
        let store: Arc<dyn PaymentsRepository> = Arc::new(MemoryPaymentsRepository::new());
        Box::new(move || {
            let store = Arc::clone(&store);
            Box::pin(async move { Ok(store) })
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_simulation_finds_no_anomaly_and_its_faults_fire() {
        let report = run(config(11), memory(), Arc::new(|_| {})).await.expect("simulation runs");
        assert_eq!(report.verdict(&config(11)), Verdict::Ok, "{report:?}");
        assert_eq!(
            report.counts.applied, 2000,
            "each payment applied exactly once across every crash: {report:?}"
        );
    }

    #[test]
    fn a_run_whose_faults_never_fired_is_not_a_pass() {
        let quiet = Report {
            counts: Summary { conflicts: 1, invalid: 1, ..Summary::default() },
            ..Report::default()
        };
        let verdict = quiet.verdict(&config(1));
        assert_eq!(verdict, Verdict::Unproven(vec!["crashes", "concurrent duplicates"]));
        assert!(!verdict.passed());
        assert_eq!(
            verdict.to_string(),
            "FAILED: no crashes, no concurrent duplicates happened, so the run proved nothing about them; send more payments"
        );
    }

    #[test]
    fn the_same_seed_publishes_the_same_messages() {
        assert_eq!(publish(&config(5)).payloads, publish(&config(5)).payloads);
        assert_ne!(publish(&config(5)).payloads, publish(&config(6)).payloads);
    }

    /// The checks must be able to fail: a store that loses payments, one that applies a payment
    /// twice, and one that invents payments are each caught.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_checks_catch_a_store_that_loses_duplicates_or_invents() {
        let published = publish(&config(3));
        let letters = KeptDeadLetters::default();
        let store = MemoryPaymentsRepository::new();
        let news = NewOutcomes::default();
        let mut ids: Vec<&PaymentId> = published.versions.keys().collect();
        ids.sort();
        // Everything but the first payment is recorded (lost: 1); the second is reported new twice
        // (duplicated: 1); one payment that was never sent is recorded (unexpected: 1).
        for id in &ids[1..] {
            let payment = published.versions[id][0].clone();
            store.save(&payment).await.expect("save");
            news.lock().expect("news").insert(**id, (payment, 1));
        }
        news.lock().expect("news").get_mut(ids[1]).expect("present").1 = 2;
        store.save(&Payment::parse("never-sent", 1, "EUR").expect("valid")).await.expect("save");
        let mut report = Report::default();
        check(&published, &store, &news, &letters, &mut report).await.expect("check");
        assert_eq!((report.lost, report.duplicated_effects, report.unexpected), (1, 1, 1), "{report:?}");
        assert_eq!(report.verdict(&config(3)), Verdict::Anomalies);
        assert!(report.missing_dead_letters > 0, "no dead letters were written: {report:?}");
    }
}
