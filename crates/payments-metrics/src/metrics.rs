//! The registry and every metric in it: [`Metrics`], which the consumer reports to as its
//! [`Observer`] (the time of each save included).
//!
//! Names follow the OpenTelemetry messaging conventions, translated to Prometheus, where one
//! exists (`messaging_client_consumed_messages_total`, `messaging_process_duration_seconds`); the
//! rest are the project's own, under `payments_`. Every label value comes from a fixed set (an
//! outcome, an operation, a kind) or from the configuration (the store, the destination): never
//! from a message, so the number of series is bounded whatever arrives.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use payments_ports::{DeadLetterKind, Observer, Outcome, RelayObserver, RetryCause, StoreAnswer};
use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::health::Health;
use crate::histogram::{AtomicHistogram, ShardedCounter};
use crate::relay::RelayMeter;
use crate::store::{Operation, StoreMeter};

/// The OpenTelemetry messaging conventions' buckets for `messaging.process.duration`, in seconds.
pub static PROCESS_DURATION_BUCKETS: [f64; 14] =
    [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0];

/// Buckets for the attempt number of each delivery: a first delivery is 1.
static ATTEMPT_BUCKETS: [f64; 8] = [1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0];

/// Every outcome a delivery can have, in the order their series are made.
const OUTCOMES: [Outcome; 7] = [
    Outcome::Applied,
    Outcome::Duplicate,
    Outcome::Conflict,
    Outcome::Invalid,
    Outcome::TooLarge,
    Outcome::TooManyAttempts,
    Outcome::Unsettled,
];

/// Where the consumer reads from, as the messaging labels say it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Destination {
    /// `messaging_system`: the broker (`redis`, `nats`, `rabbitmq`), or `file` for JSON lines.
    pub system: String,
    /// `messaging_destination_name`: the stream, subject, queue or file name.
    pub name: String,
    /// `messaging_consumer_group_name`: the consumer group or durable consumer, if any.
    pub group: Option<String>,
}

/// The messaging labels, with `error_type` on failed processing only.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct MessagingLabels {
    destination: Arc<Destination>,
    error_type: Option<&'static str>,
}

impl EncodeLabelSet for MessagingLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), fmt::Error> {
        ("messaging_system", self.destination.system.as_str()).encode(encoder.encode_label())?;
        ("messaging_destination_name", self.destination.name.as_str()).encode(encoder.encode_label())?;
        if let Some(group) = &self.destination.group {
            ("messaging_consumer_group_name", group.as_str()).encode(encoder.encode_label())?;
        }
        if let Some(error_type) = self.error_type {
            ("error_type", error_type).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

/// One label whose value is a name from a fixed set.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Named {
    pub(crate) key: &'static str,
    pub(crate) value: &'static str,
}

impl EncodeLabelSet for Named {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), fmt::Error> {
        (self.key, self.value).encode(encoder.encode_label())
    }
}

/// A gauge that holds a float (seconds, a timestamp).
pub(crate) type FloatGauge = Gauge<f64, AtomicU64>;

/// The series one outcome updates, made once so that a delivery costs no label lookup.
#[derive(Debug)]
struct PerOutcome {
    outcome: Outcome,
    deliveries: ShardedCounter,
    process: AtomicHistogram,
}

/// Every metric of one consumer, and the health its reports feed.
pub struct Metrics {
    registry: Registry,
    health: Arc<Health>,
    consumed: ShardedCounter,
    outcomes: Vec<PerOutcome>,
    deliveries: Family<Named, ShardedCounter>,
    process: Family<MessagingLabels, AtomicHistogram, fn() -> AtomicHistogram>,
    destination: Arc<Destination>,
    retries: Family<Named, Counter>,
    retry_counters: [(RetryCause, Counter); 2],
    dead_letters: Family<Named, Counter>,
    dead_letter_failures: Family<Named, Counter>,
    attempts: AtomicHistogram,
    oldest_in_flight: FloatGauge,
    last_delivery: FloatGauge,
    /// Set when a delivery is settled; the heartbeat stamps `last_delivery` and clears it.
    settled_since_beat: AtomicBool,
    source_up: Gauge,
    source_waiting: Family<MessagingLabels, Gauge>,
    source_unacknowledged: Family<MessagingLabels, Gauge>,
    store: StoreMeter,
    relay: Option<RelayMeter>,
    /// Whether a consumer reports here: its loop then beats for liveness, not the relay's.
    consumer: bool,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").field("destination", &self.destination).finish_non_exhaustive()
    }
}

fn process_histogram() -> AtomicHistogram {
    AtomicHistogram::seconds(&PROCESS_DURATION_BUCKETS)
}

impl Metrics {
    /// The metrics of a consumer reading from `destination` into the store called `store` (the
    /// `store` label: `file`, `postgres`, …), in a registry of their own.
    pub fn new(destination: Destination, store: &str) -> Self {
        Self::build(destination, store, true)
    }

    /// The metrics of a relay alone (`payments-app relay`): the store's and the outbox's, without
    /// the consumer's series, which would sit at 0 and mislead.
    pub fn relay_only(store: &str) -> Self {
        let destination = Destination { system: "outbox".into(), name: store.into(), group: None };
        Self::build(destination, store, false).with_relay()
    }

    /// Registers the outbox relay's metrics too, for a consumer that relays its outbox
    /// (`consume --publish-to`); until then, reports to it as a [`RelayObserver`] are dropped.
    #[must_use]
    pub fn with_relay(mut self) -> Self {
        if self.relay.is_none() {
            self.relay = Some(RelayMeter::register(&mut self.registry));
        }
        self
    }

    fn build(destination: Destination, store: &str, consumer: bool) -> Self {
        let destination = Arc::new(destination);
        let mut registry = Registry::default();
        // Series nobody serves when the process does not consume: made, so that reports to them
        // cost what they always do, and never shown.
        let mut unserved = Registry::default();
        let serving = if consumer { &mut registry } else { &mut unserved };

        let consumed = Family::<MessagingLabels, ShardedCounter>::default();
        serving.register(
            "messaging_client_consumed_messages",
            "Messages delivered to the consumer (OpenTelemetry messaging.client.consumed.messages)",
            consumed.clone(),
        );
        let process =
            Family::<MessagingLabels, AtomicHistogram, fn() -> AtomicHistogram>::new_with_constructor(
                process_histogram as fn() -> AtomicHistogram,
            );
        serving.register_with_unit(
            "messaging_process_duration",
            "Time from a delivery's arrival to its settlement (OpenTelemetry messaging.process.duration); \
             error_type is set when it was dead-lettered or left unacknowledged",
            Unit::Seconds,
            process.clone(),
        );
        let deliveries = Family::<Named, ShardedCounter>::default();
        serving.register(
            "payments_deliveries",
            "Deliveries settled, by outcome: applied, duplicate, conflict, invalid, too_large, \
             too_many_attempts (the four dead-lettered), unsettled (left for redelivery)",
            deliveries.clone(),
        );
        let retries = Family::<Named, Counter>::default();
        serving.register(
            "payments_retries",
            "Times a delivery was handled again after a backoff, by cause: store or dead_letters unavailable",
            retries.clone(),
        );
        let dead_letters = Family::<Named, Counter>::default();
        serving.register("payments_dead_letters", "Dead letters written, by kind", dead_letters.clone());
        let dead_letter_failures = Family::<Named, Counter>::default();
        serving.register(
            "payments_dead_letter_failures",
            "Dead letters that could not be written (the delivery is retried or the consumer stops), by kind",
            dead_letter_failures.clone(),
        );
        let attempts = AtomicHistogram::counts(&ATTEMPT_BUCKETS);
        serving.register(
            "payments_delivery_attempts",
            "The attempt number of each delivery, as the source counts it (1 for a first delivery)",
            attempts.clone(),
        );
        let oldest_in_flight = FloatGauge::default();
        serving.register_with_unit(
            "payments_oldest_in_flight",
            "How long the oldest delivery in flight has been held; 0 when none is",
            Unit::Seconds,
            oldest_in_flight.clone(),
        );
        let last_delivery = FloatGauge::default();
        serving.register_with_unit(
            "payments_last_delivery_timestamp",
            "When the last delivery was settled (to the second), in seconds since the Unix epoch; 0 before the first",
            Unit::Seconds,
            last_delivery.clone(),
        );
        let source_up = Gauge::default();
        serving.register(
            "payments_source_up",
            "Whether the source's broker answered last time it was asked",
            source_up.clone(),
        );
        let source_waiting = Family::<MessagingLabels, Gauge>::default();
        serving.register(
            "payments_source_backlog_messages",
            "Messages waiting on the broker for this consumer group, not delivered yet, as the broker \
             counts them (absent where it cannot tell)",
            source_waiting.clone(),
        );
        let source_unacknowledged = Family::<MessagingLabels, Gauge>::default();
        serving.register(
            "payments_source_unacknowledged_messages",
            "Messages delivered to this consumer group and not acknowledged yet, as the broker counts \
             them (absent where it cannot tell)",
            source_unacknowledged.clone(),
        );
        let store = StoreMeter::register(&mut registry, store);

        let messaging = |error_type| MessagingLabels { destination: Arc::clone(&destination), error_type };
        let consumed = consumed.get_or_create_owned(&messaging(None));
        let outcomes = OUTCOMES
            .into_iter()
            .map(|outcome| PerOutcome {
                outcome,
                deliveries: deliveries.get_or_create_owned(&Named { key: "outcome", value: outcome.name() }),
                process: process.get_or_create_owned(&messaging(error_type(outcome))),
            })
            .collect();
        // Every series exists from the start, at 0, so that `rate()` and `increase()` see the
        // first event as one.
        let retry_counters = [RetryCause::Store, RetryCause::DeadLetters]
            .map(|cause| (cause, retries.get_or_create_owned(&Named { key: "cause", value: cause.name() })));
        for kind in [
            DeadLetterKind::Conflict,
            DeadLetterKind::Invalid,
            DeadLetterKind::TooLarge,
            DeadLetterKind::TooManyAttempts,
        ] {
            for family in [&dead_letters, &dead_letter_failures] {
                drop(family.get_or_create(&Named { key: "kind", value: kind.name() }));
            }
        }
        Self {
            registry,
            health: Arc::new(Health::new()),
            consumed,
            outcomes,
            deliveries,
            process,
            destination,
            retries,
            retry_counters,
            dead_letters,
            dead_letter_failures,
            attempts,
            oldest_in_flight,
            last_delivery,
            settled_since_beat: AtomicBool::new(false),
            source_up,
            source_waiting,
            source_unacknowledged,
            store,
            relay: None,
            consumer,
        }
    }

    /// Records a ping of the store: how long it took and how it ended.
    pub fn store_pinged(&self, took: Duration, answer: StoreAnswer) {
        self.store.record(Operation::Ping, took, answer, &self.health);
    }

    /// The health checks these metrics feed.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Everything, in the Prometheus text format (version 0.0.4).
    pub fn encode_prometheus(&self) -> String {
        let mut text = String::new();
        // Writing to a String fails only if a metric's own encoding does, which ours never do.
        if let Err(err) = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry) {
            tracing::error!(error = %err, "encoding the metrics failed");
        }
        text
    }

    /// Everything, in the OpenMetrics text format (ends with `# EOF`).
    pub fn encode_openmetrics(&self) -> String {
        let mut text = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(error = %err, "encoding the metrics failed");
        }
        text
    }

    /// Records whether the source's broker answered, for `payments_source_up` and readiness.
    pub fn set_source_up(&self, up: bool) {
        self.source_up.set(i64::from(up));
        self.health.set_source_up(up);
    }

    /// Records the broker's count of waiting and unacknowledged messages.
    /// A count the broker does not give stays absent, rather than a misleading 0.
    pub fn set_backlog(&self, backlog: payments_ports::Backlog) {
        let labels = MessagingLabels { destination: Arc::clone(&self.destination), error_type: None };
        for (family, count) in
            [(&self.source_waiting, backlog.waiting), (&self.source_unacknowledged, backlog.unacknowledged)]
        {
            if let Some(count) = count {
                family.get_or_create(&labels).set(i64::try_from(count).unwrap_or(i64::MAX));
            }
        }
    }

    fn per_outcome(&self, outcome: Outcome) -> Option<&PerOutcome> {
        self.outcomes.iter().find(|per| per.outcome == outcome)
    }
}

/// What `error_type` says for an outcome: nothing when it succeeded.
const fn error_type(outcome: Outcome) -> Option<&'static str> {
    match outcome {
        Outcome::Applied | Outcome::Duplicate => None,
        other => Some(other.name()),
    }
}

impl Observer for Metrics {
    fn delivered(&self, attempt: u32) {
        self.consumed.inc();
        self.attempts.observe_count(u64::from(attempt));
    }

    fn settled(&self, outcome: Outcome, took: Duration) {
        match self.per_outcome(outcome) {
            Some(per) => {
                per.deliveries.inc();
                per.process.observe_duration(took);
            }
            // An outcome added to the port after this adapter was written still counts.
            None => {
                self.deliveries.get_or_create(&Named { key: "outcome", value: outcome.name() }).inc();
                let labels = MessagingLabels {
                    destination: Arc::clone(&self.destination),
                    error_type: error_type(outcome),
                };
                self.process.get_or_create(&labels).observe_duration(took);
            }
        }
        // Turned into a time by the next heartbeat: a clock read per second, not per delivery.
        if outcome.acknowledged() && !self.settled_since_beat.load(Ordering::Relaxed) {
            self.settled_since_beat.store(true, Ordering::Relaxed);
        }
    }

    fn saved(&self, took: Duration, answer: StoreAnswer) {
        self.store.record(Operation::Save, took, answer, &self.health);
    }

    fn retrying(&self, cause: RetryCause) {
        match self.retry_counters.iter().find(|(known, _)| *known == cause) {
            Some((_, counter)) => {
                counter.inc();
            }
            None => {
                self.retries.get_or_create(&Named { key: "cause", value: cause.name() }).inc();
            }
        }
    }

    fn dead_letter(&self, kind: DeadLetterKind, written: bool) {
        let family = if written { &self.dead_letters } else { &self.dead_letter_failures };
        family.get_or_create(&Named { key: "kind", value: kind.name() }).inc();
    }

    fn heartbeat(&self, oldest: Option<Duration>) {
        self.oldest_in_flight.set(oldest.unwrap_or_default().as_secs_f64());
        if self.settled_since_beat.swap(false, Ordering::Relaxed) {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
            self.last_delivery.set(now.as_secs_f64());
        }
        self.health.beat();
    }

    fn source_reachable(&self, reachable: bool) {
        self.set_source_up(reachable);
    }
}

impl RelayObserver for Metrics {
    fn published(&self, events: u64) {
        if let Some(relay) = &self.relay {
            relay.published.inc_by(events);
        }
    }

    fn publish_failed(&self, unavailable: bool) {
        if let Some(relay) = &self.relay {
            relay.publish_failed(unavailable);
        }
    }

    fn outbox_backlog(&self, pending: u64, oldest_age: Option<Duration>) {
        if let Some(relay) = &self.relay {
            relay.pending.set(i64::try_from(pending).unwrap_or(i64::MAX));
            relay.oldest_age.set(oldest_age.unwrap_or_default().as_secs_f64());
        }
        // The relay's loop reports at least once a second: the liveness of a relay alone.
        if !self.consumer {
            self.health.beat();
        }
    }
}
