//! `cargo xtask bench`: what metrics cost per delivery, apart from everything else: the calls
//! the consumer makes for one delivery (delivered, a save that the handler times and reports,
//! settled), against the same save with nobody watching.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use payments_metrics::{Destination, Metrics};
use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use payments_ports::domain::{Payment, PaymentId, SaveOutcome, decide};
use payments_ports::{Observer, Outcome, PaymentsRepository, RepositoryError, StoreAnswer, Unobserved};
use payments_test_support::bench::{self, Latencies, Row, Scale, Target, median, rate, timed};

fn main() -> std::process::ExitCode {
    bench::main(&[("metrics", &run)])
}

/// A store as small as a store can be, so that what metrics add stands out (an adapter crate may
/// not use another adapter, even in its benchmarks).
#[derive(Default)]
struct MapStore(Mutex<HashMap<PaymentId, Payment>>);

#[async_trait]
impl PaymentsRepository for MapStore {
    async fn save(&self, payment: &Payment) -> Result<SaveOutcome, RepositoryError> {
        let mut map = self.0.lock().map_err(|_| RepositoryError::failed("poisoned"))?;
        let outcome = decide(map.get(&payment.id), payment);
        if outcome.is_new() {
            map.insert(payment.id, payment.clone());
        }
        Ok(outcome)
    }

    async fn get(&self, id: &PaymentId) -> Result<Option<Payment>, RepositoryError> {
        Ok(self.0.lock().map_err(|_| RepositoryError::failed("poisoned"))?.get(id).cloned())
    }

    async fn count(&self) -> Result<u64, RepositoryError> {
        Ok(self.0.lock().map_err(|_| RepositoryError::failed("poisoned"))?.len() as u64)
    }

    async fn list(&self, _: Option<PaymentId>, _: usize) -> Result<Vec<Payment>, RepositoryError> {
        Err(RepositoryError::failed("not needed here"))
    }
}

/// One delivery's worth of calls, `payments.len()` times, as the consumer and its handler make
/// them: the save is timed only when someone watches.
async fn deliveries(
    observer: &dyn Observer,
    watched: bool,
    store: &dyn PaymentsRepository,
    payments: &[Payment],
) {
    for payment in payments {
        let arrived = Instant::now();
        observer.delivered(1);
        let saved = if watched {
            let started = Instant::now();
            let saved = store.save(payment).await;
            observer.saved(started.elapsed(), StoreAnswer::of(&saved));
            saved
        } else {
            store.save(payment).await
        };
        black_box(saved.expect("the memory store saves"));
        observer.settled(Outcome::Applied, arrived.elapsed());
    }
}

fn run(scale: Scale) -> Vec<Row> {
    let n = scale.pick(200_000, 1_000_000);
    let rounds = 5;
    let payments: Vec<Payment> =
        (0..n).map(|i| Payment::parse(&format!("pay-{i:09}"), 100, "EUR").expect("valid")).collect();
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let (mut bare, mut watched) = (Vec::new(), Vec::new());
    for chunk in payments.chunks(n / rounds) {
        let store: Arc<dyn PaymentsRepository> = Arc::new(MapStore::default());
        let (_, elapsed) = timed(|| runtime.block_on(deliveries(&Unobserved, false, store.as_ref(), chunk)));
        bare.push(rate(chunk.len(), elapsed));

        let metrics =
            Metrics::new(Destination { system: "file".into(), name: "bench".into(), group: None }, "memory");
        let store: Arc<dyn PaymentsRepository> = Arc::new(MapStore::default());
        let (_, elapsed) = timed(|| runtime.block_on(deliveries(&metrics, true, store.as_ref(), chunk)));
        watched.push(rate(chunk.len(), elapsed));

        // A scrape, so that encoding is known to work on what was measured.
        assert!(metrics.encode_prometheus().contains("payments_deliveries_total{outcome=\"applied\"}"));
    }
    let (bare, watched) = (median(&mut bare), median(&mut watched));

    // Noise can make the watched run the faster one: then metrics added nothing measurable.
    let per_delivery = Duration::from_secs_f64((1.0 / watched - 1.0 / bare).max(0.0));
    vec![Row::new(
        "metrics.per_delivery",
        watched,
        &mut Latencies::default(),
        "the same calls, bare store, nobody watching",
        Some(bare),
        Target::None,
        format!("{n} deliveries, median of {rounds} rounds; metrics add {per_delivery:?} per delivery"),
    )]
}
