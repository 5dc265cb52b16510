//! The consumer loop: takes deliveries from a [`DeliverySource`], handles up to N at once, and
//! settles each as the delivery policy says: acknowledge, dead-letter then acknowledge, retry with
//! backoff, or stop.
//!
//! What it guarantees, whatever the order, the concurrency or the failures:
//!
//! - a message is acknowledged only after its effect (or its dead letter) is durable;
//! - a valid message is never dead-lettered because the store was down: it is retried with
//!   exponential backoff and jitter, and when the store stays down past the limit, the consumer
//!   stops taking deliveries and reports the failure, leaving the message unacknowledged;
//! - on shutdown it stops taking deliveries and lets those in flight finish (a delivery waiting to
//!   retry is given up unacknowledged, so the source will bring it back).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use payments_ports::domain::policy::{Disposition, Handling};
use payments_ports::{
    DeadLetter, DeadLetterError, DeadLetterKind, DeadLetterSink, Delivery, DeliverySource, RepositoryError,
    SourceError, error_chain,
};
use rand::Rng;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::handler::{Handled, Handler, Rejection};

/// How the consumer retries a delivery while the store is unavailable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first wait.
    pub first_delay: Duration,
    /// The longest wait; each wait doubles until it reaches this.
    pub max_delay: Duration,
    /// How long one delivery may keep failing before the consumer stops.
    pub give_up_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            first_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(5),
            give_up_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1-based): exponential, capped, with "full jitter"
    /// (uniform between half the step and the whole step), so that many deliveries failing at once
    /// do not come back at once.
    pub fn delay(&self, retry: u32) -> Duration {
        let step = self.first_delay.saturating_mul(1 << retry.saturating_sub(1).min(20)).min(self.max_delay);
        let half = step / 2;
        half + step.saturating_sub(half).mul_f64(rand::rng().random::<f64>())
    }
}

/// How the consumer runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsumerConfig {
    /// How many deliveries are handled at once. Correctness never depends on it.
    pub concurrency: usize,
    /// Retrying while the store is unavailable.
    pub retry: RetryPolicy,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self { concurrency: 64, retry: RetryPolicy::default() }
    }
}

/// Counts of one run. `deliveries` = `applied + duplicates + conflicts + invalid + unsettled`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Deliveries taken from the source.
    pub deliveries: u64,
    /// Payments recorded.
    pub applied: u64,
    /// Deliveries of payments already recorded.
    pub duplicates: u64,
    /// Deliveries of another payment under a recorded ID (dead-lettered).
    pub conflicts: u64,
    /// Deliveries that are not valid payments (dead-lettered).
    pub invalid: u64,
    /// Times a delivery was handled again because the store was unavailable.
    pub retries: u64,
    /// Deliveries left unacknowledged when the run ended (shutdown or stop); the source will
    /// deliver them again.
    pub unsettled: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} deliveries: {} applied, {} duplicates, {} conflicts, {} invalid (dead-lettered), {} retries",
            self.deliveries, self.applied, self.duplicates, self.conflicts, self.invalid, self.retries
        )?;
        if self.unsettled > 0 {
            write!(f, ", {} left unacknowledged", self.unsettled)?;
        }
        Ok(())
    }
}

/// Why a run ended.
#[derive(Debug)]
pub enum Ending {
    /// The source has no more deliveries, and every one was settled.
    Exhausted,
    /// Shutdown was requested; deliveries in flight were finished.
    ShutDown,
    /// The consumer stopped because it cannot go on safely; nothing unsettled was acknowledged.
    Stopped(StopReason),
}

/// Why the consumer stopped.
#[derive(Debug, thiserror::Error)]
pub enum StopReason {
    /// The store stayed unavailable past the retry limit.
    #[error(
        "the payments store stayed unavailable for {waited:?} ({retries} retries of one delivery), giving up"
    )]
    StoreUnavailable {
        /// How long the delivery kept failing.
        waited: Duration,
        /// How often it was retried.
        retries: u32,
        /// The last error.
        #[source]
        error: RepositoryError,
    },
    /// The store failed in a way a retry cannot fix.
    #[error(transparent)]
    StoreFailed(RepositoryError),
    /// A dead letter could not be made durable, so its message could not be acknowledged.
    #[error(transparent)]
    DeadLetter(DeadLetterError),
    /// The source cannot deliver any more.
    #[error(transparent)]
    Source(SourceError),
}

/// The result of a run: the counts, and why it ended.
#[derive(Debug)]
pub struct Run {
    /// What happened.
    pub summary: Summary,
    /// Why it ended.
    pub ending: Ending,
}

/// A request to shut down, shared by whoever may ask for it (a signal handler) and the consumer.
#[derive(Clone, Debug)]
pub struct Shutdown {
    requested: watch::Receiver<bool>,
}

/// Asks the consumer to shut down.
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

impl ShutdownTrigger {
    /// Asks for shutdown; idempotent.
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// A shutdown request and the trigger that fires it.
    pub fn new() -> (ShutdownTrigger, Self) {
        let (sender, requested) = watch::channel(false);
        (ShutdownTrigger(sender), Self { requested })
    }

    /// A shutdown that is never requested.
    pub fn never() -> Self {
        // With its trigger dropped, `requested` waits forever: nothing needs to be kept alive.
        Self::new().1
    }

    /// Whether shutdown has been asked for.
    pub fn is_requested(&self) -> bool {
        *self.requested.borrow()
    }

    /// Waits until shutdown is asked for (forever, if its trigger is dropped unfired).
    pub async fn requested(&mut self) {
        if self.requested.wait_for(|&requested| requested).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// How one delivery ended.
enum Processed {
    /// Settled (acknowledged, after its dead letter if any).
    Settled { handling: Handling, retries: u32 },
    /// Given up unacknowledged on shutdown or stop.
    Abandoned { retries: u32 },
    /// Left unacknowledged, and the consumer must stop.
    Stop { reason: StopReason, retries: u32 },
}

/// The consumer: a handler, a dead-letter sink, and how to run them.
#[derive(Clone)]
pub struct Consumer {
    handler: Handler,
    dead_letters: Arc<dyn DeadLetterSink>,
    config: ConsumerConfig,
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Consumer {
    /// A consumer that handles with `handler` and dead-letters into `dead_letters`.
    pub fn new(handler: Handler, dead_letters: Arc<dyn DeadLetterSink>, config: ConsumerConfig) -> Self {
        Self { handler, dead_letters, config }
    }

    /// Consumes `source` until it is exhausted, shutdown is requested, or the consumer must stop.
    /// `progress` is called with the counts after every settled delivery.
    pub async fn run<S>(
        &self,
        source: S,
        mut shutdown: Shutdown,
        progress: &mut (dyn FnMut(&Summary) + Send),
    ) -> Run
    where
        S: DeliverySource + 'static,
    {
        let concurrency = self.config.concurrency.max(1);
        // The source is read by its own task, so that a read is never cancelled half-way when a
        // handler finishes first; the channel bounds how far reading runs ahead.
        let (deliveries, mut incoming) = mpsc::channel(concurrency);
        // Aborted when the run ends, or when the run itself is dropped (a simulated crash).
        let _reader = AbortOnDrop(tokio::spawn(read(source, deliveries, self.config.retry)));
        // Tells deliveries waiting to retry to give up: on shutdown, and when the consumer stops.
        let (give_up, giving_up) = watch::channel(false);

        let mut summary = Summary::default();
        let mut in_flight = FuturesUnordered::new();
        // Set once no more deliveries are taken; the loop then drains what is in flight.
        let mut ending = None;
        let mut shutting_down = false;
        loop {
            if ending.is_some() && in_flight.is_empty() {
                break;
            }
            let taking = ending.is_none() && in_flight.len() < concurrency;
            tokio::select! {
                biased;
                // Listened to even after the source ended: a delivery may be retrying.
                () = shutdown.requested(), if !shutting_down => {
                    shutting_down = true;
                    give_up.send_replace(true);
                    if matches!(ending, None | Some(Ending::Exhausted)) {
                        ending = Some(Ending::ShutDown);
                    }
                }
                Some(processed) = in_flight.next() => {
                    match processed {
                        Processed::Settled { handling, retries } => summary.count(handling, retries),
                        Processed::Abandoned { retries } => summary.abandon(retries),
                        Processed::Stop { reason, retries } => {
                            summary.abandon(retries);
                            if !matches!(ending, Some(Ending::Stopped(_))) {
                                tracing::error!(error = %error_chain(&reason), "stopping: no further deliveries are taken");
                                ending = Some(Ending::Stopped(reason));
                                give_up.send_replace(true);
                            }
                        }
                    }
                    progress(&summary);
                }
                received = incoming.recv(), if taking => match received {
                    Some(Ok(delivery)) => {
                        summary.deliveries += 1;
                        in_flight.push(self.process(delivery, giving_up.clone()));
                    }
                    Some(Err(err)) => {
                        ending = Some(Ending::Stopped(StopReason::Source(err)));
                        give_up.send_replace(true);
                    }
                    None => ending = Some(Ending::Exhausted),
                },
            }
        }
        Run { summary, ending: ending.unwrap_or(Ending::Exhausted) }
    }

    /// Handles one delivery until it is settled, abandoned or stops the consumer.
    async fn process(&self, delivery: Delivery, mut giving_up: watch::Receiver<bool>) -> Processed {
        let started = Instant::now();
        let mut retries = 0;
        loop {
            let handled = self.handler.handle_payload(&delivery.payload).await;
            let handling = handled.handling();
            let disposition = handled.disposition();
            match (disposition, handled) {
                (Disposition::Acknowledge, _) => {
                    delivery.receipt.ack();
                    return Processed::Settled { handling, retries };
                }
                (Disposition::DeadLetterThenAcknowledge, handled) => {
                    let letter = dead_letter(&delivery, handled);
                    tracing::info!(kind = letter.kind.name(), origin = %letter.origin, reason = %letter.reason, "dead-lettered");
                    if let Err(err) = self.dead_letters.put(&letter).await {
                        return Processed::Stop { reason: StopReason::DeadLetter(err), retries };
                    }
                    delivery.receipt.ack();
                    return Processed::Settled { handling, retries };
                }
                (Disposition::RetryWithoutAcknowledging, handled) => {
                    let error = handled.into_store_error();
                    let waited = started.elapsed();
                    if waited >= self.config.retry.give_up_after {
                        return Processed::Stop {
                            reason: StopReason::StoreUnavailable { waited, retries, error },
                            retries,
                        };
                    }
                    retries += 1;
                    let delay = self.config.retry.delay(retries);
                    tracing::warn!(error = %error_chain(&error), retry = retries, ?delay, origin = %delivery.receipt.origin(), "store unavailable, retrying");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        _ = giving_up.wait_for(|&stop| stop) => return Processed::Abandoned { retries },
                    }
                }
                (Disposition::StopWithoutAcknowledging, handled) => {
                    return Processed::Stop {
                        reason: StopReason::StoreFailed(handled.into_store_error()),
                        retries,
                    };
                }
            }
        }
    }
}

impl std::ops::AddAssign for Summary {
    fn add_assign(&mut self, run: Self) {
        self.deliveries += run.deliveries;
        self.applied += run.applied;
        self.duplicates += run.duplicates;
        self.conflicts += run.conflicts;
        self.invalid += run.invalid;
        self.retries += run.retries;
        self.unsettled += run.unsettled;
    }
}

impl Summary {
    fn count(&mut self, handling: Handling, retries: u32) {
        self.retries += u64::from(retries);
        match handling {
            Handling::New => self.applied += 1,
            Handling::Duplicate => self.duplicates += 1,
            Handling::Conflict => self.conflicts += 1,
            Handling::Invalid => self.invalid += 1,
            Handling::StoreUnavailable | Handling::StoreFailed => self.unsettled += 1,
        }
    }

    fn abandon(&mut self, retries: u32) {
        self.retries += u64::from(retries);
        self.unsettled += 1;
    }
}

/// The dead letter for a delivery the policy dead-letters.
fn dead_letter(delivery: &Delivery, handled: Handled) -> DeadLetter {
    let (kind, reason, conflict) = match handled {
        Handled::Conflict(conflict) => (DeadLetterKind::Conflict, conflict.to_string(), Some(*conflict)),
        Handled::Invalid(rejection @ Rejection::TooLarge { .. }) => {
            (DeadLetterKind::TooLarge, rejection.to_string(), None)
        }
        Handled::Invalid(rejection) => (DeadLetterKind::Invalid, rejection.to_string(), None),
        // The policy dead-letters only the two above; should it ever change, the letter still
        // says what happened rather than losing the message.
        other => (DeadLetterKind::Invalid, format!("dead-lettered by policy: {other:?}"), None),
    };
    DeadLetter {
        kind,
        reason,
        origin: delivery.receipt.origin(),
        attempt: delivery.attempt,
        payload: delivery.payload.clone(),
        conflict,
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads `source` into `deliveries` until it ends, fails, or nobody listens any more. An
/// unavailable source is asked again with backoff, for as long as the consumer runs.
async fn read<S: DeliverySource>(
    mut source: S,
    deliveries: mpsc::Sender<Result<Delivery, SourceError>>,
    retry: RetryPolicy,
) {
    let mut failures = 0;
    loop {
        let next = match source.next().await {
            Ok(Some(delivery)) => Ok(delivery),
            Ok(None) => return,
            Err(err) if err.is_unavailable() => {
                failures += 1;
                tracing::warn!(error = %error_chain(&err), "message source unavailable, asking again");
                tokio::time::sleep(retry.delay(failures)).await;
                continue;
            }
            Err(err) => Err(err),
        };
        failures = 0;
        let failed = next.is_err();
        if deliveries.send(next).await.is_err() || failed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use async_trait::async_trait;
    use bytes::Bytes;
    use payments_ports::domain::SaveOutcome;
    use payments_ports::{MockPaymentsRepository, Payload, Receipt};

    use super::*;
    use crate::dead_letter::StderrDeadLetters;

    /// Deliveries from a list; each receipt records its acknowledgement.
    struct ListSource {
        payloads: VecDeque<&'static str>,
        acked: Arc<Mutex<Vec<String>>>,
    }

    #[derive(Debug)]
    struct ListReceipt {
        payload: &'static str,
        acked: Arc<Mutex<Vec<String>>>,
    }

    impl Receipt for ListReceipt {
        fn origin(&self) -> String {
            self.payload.to_owned()
        }

        fn ack(self: Box<Self>) {
            self.acked.lock().expect("acked").push(self.payload.to_owned());
        }
    }

    #[async_trait]
    impl DeliverySource for ListSource {
        async fn next(&mut self) -> Result<Option<Delivery>, SourceError> {
            Ok(self.payloads.pop_front().map(|payload| Delivery {
                payload: Payload::Complete(Bytes::from_static(payload.as_bytes())),
                attempt: 1,
                receipt: Box::new(ListReceipt { payload, acked: Arc::clone(&self.acked) }),
            }))
        }
    }

    const A: &str = r#"{"payment_id": "a", "amount": 1, "currency": "EUR"}"#;
    const B: &str = r#"{"payment_id": "b", "amount": 2, "currency": "EUR"}"#;

    fn fast_retries(give_up_after: Duration) -> ConsumerConfig {
        ConsumerConfig {
            concurrency: 4,
            retry: RetryPolicy {
                first_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(4),
                give_up_after,
            },
        }
    }

    async fn consume(repository: MockPaymentsRepository, config: ConsumerConfig) -> (Run, Vec<String>) {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let source = ListSource { payloads: VecDeque::from([A, B]), acked: Arc::clone(&acked) };
        let consumer =
            Consumer::new(Handler::new(Arc::new(repository)), Arc::new(StderrDeadLetters::default()), config);
        let run = consumer.run(source, Shutdown::never(), &mut |_| {}).await;
        let acked = acked.lock().expect("acked").clone();
        (run, acked)
    }

    #[tokio::test]
    async fn a_store_outage_is_retried_then_stops_cleanly_with_nothing_acknowledged() {
        let mut repository = MockPaymentsRepository::new();
        repository.expect_save().returning(|_| Err(RepositoryError::unavailable("connection refused")));
        let (run, acked) = consume(repository, fast_retries(Duration::from_millis(60))).await;
        assert!(
            matches!(&run.ending, Ending::Stopped(StopReason::StoreUnavailable { retries, .. }) if *retries > 0),
            "{:?}",
            run.ending
        );
        assert!(acked.is_empty(), "nothing may be acknowledged while the store is down: {acked:?}");
        assert!(run.summary.retries >= 2, "{:?}", run.summary);
        assert_eq!(
            run.summary.applied + run.summary.invalid + run.summary.conflicts,
            0,
            "never dead-lettered"
        );
        assert_eq!(run.summary.unsettled, run.summary.deliveries, "{:?}", run.summary);
    }

    #[tokio::test]
    async fn a_store_that_comes_back_gets_every_payment_and_only_then_the_acknowledgement() {
        let mut repository = MockPaymentsRepository::new();
        let calls = Arc::new(Mutex::new(0));
        let stored = Arc::new(Mutex::new(Vec::new()));
        let (counted, kept) = (Arc::clone(&calls), Arc::clone(&stored));
        repository.expect_save().returning(move |payment| {
            let mut calls = counted.lock().expect("calls");
            *calls += 1;
            if *calls <= 5 {
                return Err(RepositoryError::unavailable("connection refused"));
            }
            kept.lock().expect("stored").push(payment.id.to_string());
            Ok(SaveOutcome::New)
        });
        let (run, mut acked) = consume(repository, fast_retries(Duration::from_secs(30))).await;
        assert!(matches!(run.ending, Ending::Exhausted), "{:?}", run.ending);
        assert_eq!(run.summary.applied, 2);
        assert_eq!(run.summary.retries, 5);
        acked.sort();
        assert_eq!(acked, [A, B], "both acknowledged, once stored");
        assert_eq!(stored.lock().expect("stored").len(), 2);
    }

    #[tokio::test]
    async fn a_failed_store_stops_at_once_without_acknowledging() {
        let mut repository = MockPaymentsRepository::new();
        repository.expect_save().returning(|_| Err(RepositoryError::failed("journal poisoned")));
        let (run, acked) = consume(repository, fast_retries(Duration::from_secs(30))).await;
        assert!(matches!(run.ending, Ending::Stopped(StopReason::StoreFailed(_))), "{:?}", run.ending);
        assert!(acked.is_empty());
        assert_eq!(run.summary.retries, 0, "a failure that retrying cannot fix is not retried");
    }

    #[tokio::test]
    async fn shutdown_gives_up_a_retrying_delivery_unacknowledged() {
        let mut repository = MockPaymentsRepository::new();
        repository.expect_save().returning(|_| Err(RepositoryError::unavailable("down")));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let source = ListSource { payloads: VecDeque::from([A]), acked: Arc::clone(&acked) };
        let consumer = Consumer::new(
            Handler::new(Arc::new(repository)),
            Arc::new(StderrDeadLetters::default()),
            fast_retries(Duration::from_secs(3600)),
        );
        let (trigger, shutdown) = Shutdown::new();
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            trigger.trigger();
        });
        let run = consumer.run(source, shutdown, &mut |_| {}).await;
        stopper.await.expect("stopper");
        assert!(matches!(run.ending, Ending::ShutDown), "{:?}", run.ending);
        assert_eq!(run.summary.unsettled, 1);
        assert!(acked.lock().expect("acked").is_empty());
    }

    #[test]
    fn backoff_grows_exponentially_with_jitter_and_is_capped() {
        let policy = RetryPolicy {
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            give_up_after: Duration::from_secs(60),
        };
        for (retry, step) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000), (30, 1000)] {
            let step = Duration::from_millis(step);
            for _ in 0..50 {
                let delay = policy.delay(retry);
                assert!(
                    delay >= step / 2 && delay <= step,
                    "retry {retry}: {delay:?} outside [{:?}, {step:?}]",
                    step / 2
                );
            }
        }
        let spread: std::collections::HashSet<Duration> = (0..20).map(|_| policy.delay(3)).collect();
        assert!(spread.len() > 1, "jitter spreads retries");
    }
}
