//! The store, measured: [`Metrics::instrument`] wraps any [`PaymentsRepository`] in a decorator
//! that times each operation, counts its errors, and keeps `payments_store_up` and the readiness
//! check current. It changes nothing else: every answer passes through as it came.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use payments_ports::domain::{Payment, PaymentId, SaveOutcome};
use payments_ports::{PaymentsRepository, RepositoryError};
use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::Metrics;
use crate::health::Health;
use crate::histogram::AtomicHistogram;
use crate::watch::ANSWER_WITHIN;

/// Buckets for store operations, in seconds: from an in-memory map's microseconds to a
/// struggling server's seconds.
static OPERATION_BUCKETS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The operations measured, as the `operation` label says them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Operation {
    Save,
    Get,
    Count,
    List,
    Ping,
    Close,
}

impl Operation {
    const ALL: [Self; 6] = [Self::Save, Self::Get, Self::Count, Self::List, Self::Ping, Self::Close];

    const fn name(self) -> &'static str {
        match self {
            Self::Save => "save",
            Self::Get => "get",
            Self::Count => "count",
            Self::List => "list",
            Self::Ping => "ping",
            Self::Close => "close",
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

/// The store metrics' families, registered once per registry.
#[derive(Debug)]
pub(crate) struct StoreMetrics {
    durations: Family<StoreLabels, AtomicHistogram, fn() -> AtomicHistogram>,
    errors: Family<StoreLabels, Counter>,
    up: Family<StoreLabels, Gauge>,
}

impl StoreMetrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let durations = Family::<StoreLabels, AtomicHistogram, fn() -> AtomicHistogram>::new_with_constructor(
            operation_histogram as fn() -> AtomicHistogram,
        );
        registry.register_with_unit(
            "payments_store_operation_duration",
            "How long each store operation took, whatever it answered",
            Unit::Seconds,
            durations.clone(),
        );
        let errors = Family::<StoreLabels, Counter>::default();
        registry.register(
            "payments_store_errors",
            "Store operations that failed, by error_type: unavailable (retried) or failed (the consumer stops)",
            errors.clone(),
        );
        let up = Family::<StoreLabels, Gauge>::default();
        registry.register("payments_store_up", "Whether the store answered its last operation", up.clone());
        Self { durations, errors, up }
    }
}

/// A store that reports every operation to the metrics.
struct InstrumentedStore {
    inner: Arc<dyn PaymentsRepository>,
    /// Reads the CPU's time-stamp counter where it can be trusted (a few nanoseconds), rather
    /// than `clock_gettime` (tens of nanoseconds on a virtual machine): two reads per operation.
    clock: quanta::Clock,
    store: Arc<str>,
    durations: Vec<(Operation, AtomicHistogram)>,
    errors: Family<StoreLabels, Counter>,
    up: Gauge,
    health: Arc<Health>,
}

impl Metrics {
    /// `store`, reporting each operation's time and errors under the label `store="name"`, and
    /// feeding the readiness check. Ask for one per store: the label tells them apart.
    pub fn instrument(&self, name: &str, store: Arc<dyn PaymentsRepository>) -> Arc<dyn PaymentsRepository> {
        let store_name: Arc<str> = Arc::from(name);
        let labels =
            |operation, error_type| StoreLabels { store: Arc::clone(&store_name), operation, error_type };
        let durations = Operation::ALL
            .into_iter()
            .map(|operation| {
                (operation, self.stores.durations.get_or_create_owned(&labels(Some(operation), None)))
            })
            .collect();
        let up = self.stores.up.get_or_create_owned(&labels(None, None));
        up.set(1);
        Arc::new(InstrumentedStore {
            inner: store,
            clock: quanta::Clock::new(),
            store: store_name,
            durations,
            errors: self.stores.errors.clone(),
            up,
            health: Arc::clone(self.health()),
        })
    }
}

impl InstrumentedStore {
    fn record<T>(&self, operation: Operation, started: quanta::Instant, result: &Result<T, RepositoryError>) {
        if let Some((_, histogram)) = self.durations.iter().find(|(op, _)| *op == operation) {
            histogram.observe_duration(self.clock.now().saturating_duration_since(started));
        }
        let up = match result {
            Ok(_) => true,
            Err(err) => {
                let error_type = if err.is_unavailable() { "unavailable" } else { "failed" };
                let labels = StoreLabels {
                    store: Arc::clone(&self.store),
                    operation: Some(operation),
                    error_type: Some(error_type),
                };
                self.errors.get_or_create(&labels).inc();
                false
            }
        };
        // Closing is the end of the store's life, not a sign of its health.
        // Written only when it changes: every operation writing it would make its cache line
        // bounce between the threads.
        if operation != Operation::Close && (self.up.get() == 1) != up {
            self.up.set(i64::from(up));
            self.health.set_store_up(up);
        }
    }
}

#[async_trait]
impl PaymentsRepository for InstrumentedStore {
    async fn save(&self, payment: &Payment) -> Result<SaveOutcome, RepositoryError> {
        let started = self.clock.now();
        let result = self.inner.save(payment).await;
        self.record(Operation::Save, started, &result);
        result
    }

    async fn get(&self, id: &PaymentId) -> Result<Option<Payment>, RepositoryError> {
        let started = self.clock.now();
        let result = self.inner.get(id).await;
        self.record(Operation::Get, started, &result);
        result
    }

    async fn count(&self) -> Result<u64, RepositoryError> {
        let started = self.clock.now();
        let result = self.inner.count().await;
        self.record(Operation::Count, started, &result);
        result
    }

    async fn list(&self, after: Option<PaymentId>, limit: usize) -> Result<Vec<Payment>, RepositoryError> {
        let started = self.clock.now();
        let result = self.inner.list(after, limit).await;
        self.record(Operation::List, started, &result);
        result
    }

    /// The inner store's ping, unavailable if it does not answer within five seconds.
    async fn ping(&self) -> Result<(), RepositoryError> {
        let started = self.clock.now();
        let result = match tokio::time::timeout(ANSWER_WITHIN, self.inner.ping()).await {
            Ok(result) => result,
            Err(_) => Err(RepositoryError::unavailable(format!(
                "the store did not answer a ping within {ANSWER_WITHIN:?}"
            ))),
        };
        self.record(Operation::Ping, started, &result);
        result
    }

    async fn close(&self) -> Result<(), RepositoryError> {
        let started = self.clock.now();
        let result = self.inner.close().await;
        self.record(Operation::Close, started, &result);
        result
    }
}
