//! The store, measured: how long each save and each ping took, how many failed and how, and
//! whether the store answered last time (`payments_store_up`, and the readiness check).
//!
//! Saves are reported by the use case ([`Observer::saved`](payments_ports::Observer::saved)),
//! which times the call it makes anyway; pings by [`watch`](crate::watch). A decorator around the
//! store would see every operation, but would cost each save a boxed future and an async state
//! machine of its own: measured with callgrind, 350 of the 475 instructions that metrics added to
//! a delivery into the memory store.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use payments_ports::StoreAnswer;
use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::health::Health;
use crate::histogram::AtomicHistogram;

/// Buckets for store operations, in seconds: from an in-memory map's microseconds to a
/// struggling server's seconds.
static OPERATION_BUCKETS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The operations measured, as the `operation` label says them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Operation {
    /// A payment saved by the consumer.
    Save,
    /// A ping by the watch.
    Ping,
}

impl Operation {
    const fn name(self) -> &'static str {
        match self {
            Self::Save => "save",
            Self::Ping => "ping",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct StoreLabels {
    store: Arc<str>,
    operation: Option<Operation>,
    error_type: Option<&'static str>,
}

impl EncodeLabelSet for StoreLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), fmt::Error> {
        ("store", &*self.store).encode(encoder.encode_label())?;
        if let Some(operation) = self.operation {
            ("operation", operation.name()).encode(encoder.encode_label())?;
        }
        if let Some(error_type) = self.error_type {
            ("error_type", error_type).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

fn operation_histogram() -> AtomicHistogram {
    AtomicHistogram::seconds(&OPERATION_BUCKETS)
}

/// The store's metrics, under the label `store="name"`.
#[derive(Debug)]
pub(crate) struct StoreMeter {
    store: Arc<str>,
    save: AtomicHistogram,
    ping: AtomicHistogram,
    errors: Family<StoreLabels, Counter>,
    up: Gauge,
}

impl StoreMeter {
    /// Registers the store metrics of the store called `name`.
    pub(crate) fn register(registry: &mut Registry, name: &str) -> Self {
        let store: Arc<str> = Arc::from(name);
        let labels = |operation| StoreLabels { store: Arc::clone(&store), operation, error_type: None };
        let durations = Family::<StoreLabels, AtomicHistogram, fn() -> AtomicHistogram>::new_with_constructor(
            operation_histogram as fn() -> AtomicHistogram,
        );
        registry.register_with_unit(
            "payments_store_operation_duration",
            "How long each store operation took, whatever it answered: saves by the consumer, pings by the watch",
            Unit::Seconds,
            durations.clone(),
        );
        let errors = Family::<StoreLabels, Counter>::default();
        registry.register(
            "payments_store_errors",
            "Store operations that failed, by error_type: unavailable (retried) or failed (the consumer stops)",
            errors.clone(),
        );
        let ups = Family::<StoreLabels, Gauge>::default();
        registry.register("payments_store_up", "Whether the store answered its last operation", ups.clone());
        let up = ups.get_or_create_owned(&labels(None));
        up.set(1);
        // Every error series exists from the start, at 0, so that `increase()` sees the first.
        for operation in [Operation::Save, Operation::Ping] {
            for answer in [StoreAnswer::Unavailable, StoreAnswer::Failed] {
                let labels = StoreLabels { error_type: answer.error_type(), ..labels(Some(operation)) };
                drop(errors.get_or_create(&labels));
            }
        }
        Self {
            save: durations.get_or_create_owned(&labels(Some(Operation::Save))),
            ping: durations.get_or_create_owned(&labels(Some(Operation::Ping))),
            store,
            errors,
            up,
        }
    }

    /// Records one operation: its time, its error if any, and whether the store is up.
    pub(crate) fn record(&self, operation: Operation, took: Duration, answer: StoreAnswer, health: &Health) {
        match operation {
            Operation::Save => self.save.observe_duration(took),
            Operation::Ping => self.ping.observe_duration(took),
        }
        if let Some(error_type) = answer.error_type() {
            let labels = StoreLabels {
                store: Arc::clone(&self.store),
                operation: Some(operation),
                error_type: Some(error_type),
            };
            self.errors.get_or_create(&labels).inc();
        }
        // Written only when it changes: every save writing it would make its cache line bounce
        // between the threads.
        let up = answer == StoreAnswer::Answered;
        if (self.up.get() == 1) != up {
            self.up.set(i64::from(up));
            health.set_store_up(up);
        }
    }
}
