//! The source suite must be able to fail: an in-memory broker with consumer groups, leases and
//! redelivery keeps the whole contract (the control), and each bug below breaks one sentence.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use payments_conformance::BoxError;
use payments_conformance::CaseOutcome;
use payments_conformance::source::{
    Identity, SourceCapabilities, SourceHarness, all_source_cases, run_source_case,
};
use payments_ports::{Delivery, DeliverySource, Payload, Receipt, SourceError};

/// The bugs, one at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bug {
    /// None: the control.
    None,
    /// Acknowledges on receipt, before the consumer is done: a crash loses what it held.
    AckOnReceipt,
    /// A dropped receipt's message stays held by its consumer for ever.
    NeverRedelivers,
    /// Every delivery says attempt 1.
    AttemptNeverGrows,
    /// Bytes pass through a lossy UTF-8 conversion.
    LossyUtf8,
    /// An acknowledgement is noted but its message stays pending, and comes back for ever.
    RedeliversAcknowledged,
    /// Hands out as many deliveries as there are messages, whatever the declared bound.
    NoInFlightBound,
}

/// How long the broker keeps a delivery from others without hearing about it.
const LEASE: Duration = Duration::from_millis(300);
/// The bound the harness declares.
const BOUND: usize = 8;

/// One destination: its messages, and per group what is pending and acknowledged.
#[derive(Default)]
struct Destination {
    state: Mutex<State>,
    /// Bumped by `kill_connections`: every source opened before sees one error.
    kills: AtomicU64,
}

#[derive(Default)]
struct State {
    messages: Vec<Bytes>,
    groups: HashMap<String, Group>,
}

#[derive(Default)]
struct Group {
    next: usize,
    pending: BTreeMap<usize, Pending>,
    acked: BTreeSet<usize>,
    attempts: HashMap<usize, u32>,
}

struct Pending {
    consumer: String,
    instance: u64,
    deadline: Instant,
}

impl Destination {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

static INSTANCES: AtomicU64 = AtomicU64::new(0);

struct MemorySource {
    destination: Arc<Destination>,
    identity: Identity,
    instance: u64,
    max_bytes: usize,
    in_flight: Arc<AtomicUsize>,
    kills_seen: u64,
    bug: Bug,
}

impl MemorySource {
    /// The next delivery if one is ready: this consumer's own from an earlier instance (a
    /// restart), one whose lease ran out (a dropped receipt, a crashed or silent consumer), or a
    /// new message.
    fn poll(&mut self) -> Option<Delivery> {
        if self.bug != Bug::NoInFlightBound && self.in_flight.load(Ordering::SeqCst) >= BOUND {
            return None;
        }
        let mut state = self.destination.lock();
        let State { messages, groups } = &mut *state;
        let group = groups.entry(self.identity.group.clone()).or_default();
        let now = Instant::now();
        let taken_back = group
            .pending
            .iter()
            .find(|(_, p)| {
                (p.consumer == self.identity.consumer && p.instance != self.instance) || p.deadline <= now
            })
            .map(|(&index, _)| index);
        let index = match taken_back {
            Some(index) => index,
            None if group.next < messages.len() => {
                group.next += 1;
                group.next - 1
            }
            None => return None,
        };
        let attempt = group.attempts.entry(index).or_insert(0);
        *attempt += 1;
        let attempt = if self.bug == Bug::AttemptNeverGrows { 1 } else { *attempt };
        if self.bug == Bug::AckOnReceipt {
            group.pending.remove(&index);
            group.acked.insert(index);
        } else {
            let deadline =
                if self.bug == Bug::NeverRedelivers { now + Duration::from_secs(3600) } else { now + LEASE };
            group.pending.insert(
                index,
                Pending { consumer: self.identity.consumer.clone(), instance: self.instance, deadline },
            );
        }
        let body = if self.bug == Bug::LossyUtf8 {
            Bytes::from(String::from_utf8_lossy(&messages[index]).into_owned())
        } else {
            messages[index].clone()
        };
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Some(Delivery {
            payload: Payload::bounded(body, self.max_bytes),
            attempt,
            receipt: Box::new(MemoryReceipt {
                destination: Arc::clone(&self.destination),
                group: self.identity.group.clone(),
                index,
                instance: self.instance,
                in_flight: Arc::clone(&self.in_flight),
                bug: self.bug,
                settled: false,
            }),
        })
    }
}

#[async_trait]
impl DeliverySource for MemorySource {
    async fn next(&mut self) -> Result<Option<Delivery>, SourceError> {
        loop {
            let kills = self.destination.kills.load(Ordering::SeqCst);
            if kills > self.kills_seen {
                self.kills_seen = kills;
                return Err(SourceError::unavailable("the connection was killed"));
            }
            if let Some(delivery) = self.poll() {
                return Ok(Some(delivery));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[derive(Debug)]
struct MemoryReceipt {
    destination: Arc<Destination>,
    group: String,
    index: usize,
    instance: u64,
    in_flight: Arc<AtomicUsize>,
    bug: Bug,
    settled: bool,
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Destination")
    }
}

impl MemoryReceipt {
    fn with_group(&self, change: impl FnOnce(&mut Group)) {
        let mut state = self.destination.lock();
        if let Some(group) = state.groups.get_mut(&self.group) {
            change(group);
        }
    }
}

impl Receipt for MemoryReceipt {
    fn origin(&self) -> String {
        format!("message {}", self.index)
    }

    fn ack(mut self: Box<Self>) {
        self.settled = true;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        let (index, bug) = (self.index, self.bug);
        self.with_group(|group| {
            group.acked.insert(index);
            if bug != Bug::RedeliversAcknowledged {
                group.pending.remove(&index);
            }
        });
    }

    fn lease(&self) -> Option<Duration> {
        Some(LEASE)
    }

    fn renew(&self) {
        let (index, instance) = (self.index, self.instance);
        self.with_group(|group| {
            if let Some(pending) = group.pending.get_mut(&index).filter(|p| p.instance == instance) {
                pending.deadline = Instant::now() + LEASE;
            }
        });
    }
}

impl Drop for MemoryReceipt {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.bug == Bug::NeverRedelivers {
            return;
        }
        // Dropped: its lease ends now, so the message comes back at once.
        let (index, instance) = (self.index, self.instance);
        self.with_group(|group| {
            if let Some(pending) = group.pending.get_mut(&index).filter(|p| p.instance == instance) {
                pending.deadline = Instant::now();
            }
        });
    }
}

struct MemoryHarness(Bug);

#[async_trait]
impl SourceHarness for MemoryHarness {
    type Env = Arc<Destination>;

    fn adapter(&self) -> &'static str {
        "memory-broker"
    }

    fn capabilities(&self) -> SourceCapabilities {
        SourceCapabilities {
            binary_safe: true,
            redelivers_dropped: true,
            exact_attempts: true,
            groups: true,
            resumes: true,
            in_flight_bound: Some(BOUND),
            leases: true,
            kill_connections: true,
        }
    }

    fn redelivery_timeout(&self) -> Duration {
        LEASE + Duration::from_millis(100)
    }

    async fn setup(&self) -> Result<Arc<Destination>, BoxError> {
        Ok(Arc::default())
    }

    async fn publish(&self, destination: &Arc<Destination>, messages: &[Bytes]) -> Result<(), BoxError> {
        destination.lock().messages.extend(messages.iter().cloned());
        Ok(())
    }

    async fn open(
        &self,
        destination: &Arc<Destination>,
        identity: &Identity,
        max_message_bytes: usize,
    ) -> Result<Box<dyn DeliverySource>, BoxError> {
        Ok(Box::new(MemorySource {
            destination: Arc::clone(destination),
            identity: identity.clone(),
            instance: INSTANCES.fetch_add(1, Ordering::SeqCst),
            max_bytes: max_message_bytes,
            in_flight: Arc::default(),
            kills_seen: destination.kills.load(Ordering::SeqCst),
            bug: self.0,
        }))
    }

    async fn kill_connections(&self, destination: &Arc<Destination>) -> Result<(), BoxError> {
        destination.kills.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Runs every source case against the broker with `bug`; returns the names of the cases that failed.
fn failing_cases(bug: Bug) -> Vec<&'static str> {
    crate::quiet_case_panics();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().expect("runtime");
    let harness = Arc::new(MemoryHarness(bug));
    // The cases run at once: most of their time is waiting.
    let outcomes = runtime.block_on(futures::future::join_all(all_source_cases().into_iter().map(|case| {
        let harness = Arc::clone(&harness);
        async move { (case.name, run_source_case(harness, &case).await) }
    })));
    outcomes
        .into_iter()
        .filter_map(|(name, outcome)| match outcome {
            CaseOutcome::Passed => None,
            CaseOutcome::Failed(_) => Some(name),
            CaseOutcome::Skipped(why) => {
                panic!("{name} was skipped for a source with every capability: {why}")
            }
        })
        .collect()
}

fn assert_caught(bug: Bug, expected: &[&str]) {
    let failed = failing_cases(bug);
    let missed: Vec<_> = expected.iter().filter(|name| !failed.contains(name)).collect();
    assert!(
        missed.is_empty(),
        "the source suite missed {bug:?}: these cases passed: {missed:?} (failed: {failed:?})"
    );
}

#[test]
fn a_correct_source_passes_every_case() {
    assert_eq!(failing_cases(Bug::None), Vec::<&str>::new());
}

#[test]
fn catches_a_source_that_acknowledges_on_receipt() {
    assert_caught(
        Bug::AckOnReceipt,
        &[
            "a_crashed_source_loses_nothing_another_consumer_receives_what_it_held",
            "a_dropped_receipt_is_delivered_again_with_a_higher_attempt",
            "a_source_opened_again_under_the_same_identity_gets_its_unacknowledged_messages_back",
        ],
    );
}

#[test]
fn catches_a_source_that_never_redelivers_a_dropped_receipt() {
    assert_caught(
        Bug::NeverRedelivers,
        &["a_dropped_receipt_is_delivered_again_with_a_higher_attempt", "attempts_grow_with_each_redelivery"],
    );
}

#[test]
fn catches_a_source_whose_attempt_never_grows() {
    assert_caught(
        Bug::AttemptNeverGrows,
        &["a_dropped_receipt_is_delivered_again_with_a_higher_attempt", "attempts_grow_with_each_redelivery"],
    );
}

#[test]
fn catches_a_source_that_alters_bytes() {
    assert_caught(
        Bug::LossyUtf8,
        &["every_published_message_is_delivered_with_its_bytes_unchanged", "every_byte_value_survives"],
    );
}

#[test]
fn catches_a_source_that_redelivers_forever_without_hanging() {
    let started = Instant::now();
    assert_caught(
        Bug::RedeliversAcknowledged,
        &[
            "an_acknowledged_message_is_not_delivered_again",
            "creating_the_group_and_the_destination_again_is_harmless",
        ],
    );
    assert!(started.elapsed() < Duration::from_secs(120), "bounded waits: {:?}", started.elapsed());
}

#[test]
fn catches_a_source_that_ignores_its_in_flight_bound() {
    assert_caught(Bug::NoInFlightBound, &["deliveries_in_flight_never_exceed_the_declared_bound"]);
}
