//! The consumer engine: takes deliveries from a [`DeliverySource`], handles up to N at once, and
//! carries out each [`Action`]: acknowledge, dead-letter then acknowledge, retry with backoff, or
//! stop.
//!
//! What it guarantees, whatever the order, the concurrency or the failures:
//!
//! - a message is acknowledged only after its effect (or its dead letter) is durable;
//! - a valid message is never dead-lettered because the store was down: it is retried with
//!   backoff, and when the store stays down past the limit, the consumer stops taking deliveries
//!   and reports the failure, leaving the message unacknowledged;
//! - a delivery held longer than its lease (a long retry) has its lease renewed, so that the
//!   source does not hand it to another consumer meanwhile;
//! - on shutdown it stops taking deliveries, lets those in flight finish (a delivery waiting to
//!   retry is given up unacknowledged, so the source brings it back), then closes the source so
//!   that its last acknowledgements are sent.
//!
//! What it does is reported to an [`Observer`] as it happens (for metrics and health checks),
//! including a heartbeat at least once a second that says how long the oldest delivery in flight
//! has been held: a consumer that is alive but stuck shows as a growing age.

use std::collections::BTreeMap;
use std::fmt;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use payments_ports::{
    DeadLetter, DeadLetterError, DeadLetterSink, Delivery, DeliverySource, Observer, Outcome, Payload,
    Receipt, RepositoryError, RetryCause, SourceError, Unobserved, error_chain,
};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::RetryPolicy;
use crate::handler::{Action, Handler, Rejection, Settled};

/// How the consumer runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsumerConfig {
    /// How many deliveries are handled at once. Correctness never depends on it.
    pub concurrency: usize,
    /// Retrying while the store or the dead-letter sink is unavailable.
    pub retry: RetryPolicy,
    /// A delivery whose attempt number is above this is dead-lettered as having had too many
    /// attempts, without being handled. `None` (the default): never.
    pub max_attempts: Option<u32>,
    /// End the run once nothing has arrived for this long and nothing is in flight: for batch runs
    /// and tests against a broker, which never runs out of messages by itself.
    pub stop_when_idle: Option<Duration>,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self { concurrency: 64, retry: RetryPolicy::default(), max_attempts: None, stop_when_idle: None }
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
    /// Deliveries that are not valid payments, too large or delivered too often (dead-lettered).
    pub invalid: u64,
    /// Times a delivery was handled again because the store (or the dead-letter sink) was
    /// unavailable.
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
            write!(f, ", {} unsettled (will be delivered again)", self.unsettled)?;
        }
        Ok(())
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

/// Why a run ended.
#[derive(Debug)]
pub enum Ending {
    /// The source ran out of deliveries and every one was settled.
    Exhausted,
    /// Nothing arrived for the configured idle time, and nothing was in flight.
    Idle,
    /// Shutdown was requested; deliveries in flight were finished or given up unacknowledged.
    ShutDown,
    /// The consumer had to stop; what was in flight was left unacknowledged.
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
    /// The dead-letter sink stayed unavailable past the retry limit.
    #[error(
        "the dead-letter sink stayed unavailable for {waited:?} ({retries} retries of one delivery), giving up"
    )]
    DeadLettersUnavailable {
        /// How long the delivery kept failing.
        waited: Duration,
        /// How often it was retried.
        retries: u32,
        /// The last error.
        #[source]
        error: DeadLetterError,
    },
    /// A dead letter could not be made durable, and retrying will not help.
    #[error(transparent)]
    DeadLettersFailed(DeadLetterError),
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

/// How often the run loop reports that it is alive, at the least.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// The consumer: a handler, a dead-letter sink, and how to run them.
#[derive(Clone)]
pub struct Consumer {
    handler: Handler,
    dead_letters: Arc<dyn DeadLetterSink>,
    config: ConsumerConfig,
    observer: Arc<dyn Observer>,
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer").field("config", &self.config).finish_non_exhaustive()
    }
}

/// How handling one delivery ended, as the run loop counts it.
enum Processed {
    /// Acknowledged (after its dead letter, if any).
    Settled { outcome: Outcome, retries: u32 },
    /// Given up unacknowledged on shutdown or stop.
    Abandoned { retries: u32 },
    /// Left unacknowledged, and the consumer must stop.
    Stop { reason: StopReason, retries: u32 },
}

impl Processed {
    /// What became of the delivery.
    const fn outcome(&self) -> Outcome {
        match self {
            Self::Settled { outcome, .. } => *outcome,
            Self::Abandoned { .. } | Self::Stop { .. } => Outcome::Unsettled,
        }
    }

    const fn retries(&self) -> u32 {
        match self {
            Self::Settled { retries, .. } | Self::Abandoned { retries } | Self::Stop { retries, .. } => {
                *retries
            }
        }
    }
}

impl Summary {
    fn count(&mut self, processed: &Processed) {
        match processed.outcome() {
            Outcome::Applied => self.applied += 1,
            Outcome::Duplicate => self.duplicates += 1,
            Outcome::Conflict => self.conflicts += 1,
            Outcome::Unsettled => self.unsettled += 1,
            // Invalid, too large, too many attempts, and any kind added later: dead-lettered.
            _ => self.invalid += 1,
        }
        self.retries += u64::from(processed.retries());
    }
}

/// When each delivery in flight arrived, to tell the age of the oldest. Deliveries are numbered as
/// they are taken, so the first entry is the oldest.
#[derive(Default)]
struct Arrivals {
    next: u64,
    held: BTreeMap<u64, Instant>,
}

impl Arrivals {
    fn arrived(&mut self) -> u64 {
        let number = self.next;
        self.next += 1;
        self.held.insert(number, Instant::now());
        number
    }

    fn settled(&mut self, number: u64) {
        self.held.remove(&number);
    }

    fn oldest(&self) -> Option<Duration> {
        self.held.first_key_value().map(|(_, since)| since.elapsed())
    }
}

/// Why a delivery waits before it is handled again.
enum Unavailable {
    Store(RepositoryError),
    DeadLetters(DeadLetterError),
}

impl Consumer {
    /// A consumer that handles with `handler` and dead-letters into `dead_letters`.
    pub fn new(handler: Handler, dead_letters: Arc<dyn DeadLetterSink>, config: ConsumerConfig) -> Self {
        Self { handler, dead_letters, config, observer: Arc::new(Unobserved) }
    }

    /// The same consumer, reporting what it does to `observer`, and its handler how long each
    /// save took.
    #[must_use]
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.handler = self.handler.with_observer(Arc::clone(&observer));
        self.observer = observer;
        self
    }

    /// Consumes `source` until it is exhausted, idle (if so configured), `shutdown` is cancelled,
    /// or the consumer must stop; then closes the source. `progress` is called with the counts
    /// after every settled delivery.
    ///
    /// Dropping the returned future mid-run (a crash, in the simulator) abandons everything in
    /// flight unacknowledged, and drops the source unclosed.
    pub async fn run<S>(
        &self,
        source: S,
        shutdown: CancellationToken,
        progress: &mut (dyn FnMut(&Summary) + Send),
    ) -> Run
    where
        S: DeliverySource + 'static,
    {
        let concurrency = self.config.concurrency.max(1);
        // The source is read by a task of its own, so that a slow read never holds up handling.
        // The channel lets reading run ahead by one batch of `concurrency`: enough to keep every
        // handler busy, small enough that a stop leaves few deliveries read but never handled.
        let (deliveries, mut incoming) = mpsc::channel(concurrency);
        let stop_reading = shutdown.child_token();
        let mut reader = Reader(Some(tokio::spawn(read(
            source,
            deliveries,
            self.config.retry,
            stop_reading.clone(),
            Arc::clone(&self.observer),
        ))));
        // Cancelled to make deliveries waiting to retry give up: on shutdown, and when the
        // consumer must stop.
        let give_up = shutdown.child_token();

        let mut summary = Summary::default();
        let mut in_flight = FuturesUnordered::new();
        let mut arrivals = Arrivals::default();
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Set once no more deliveries are taken; the loop then drains what is in flight.
        let mut ending = None;
        let mut shutting_down = false;
        // For `stop_when_idle`: when the last delivery arrived, or the last one in flight settled.
        let mut quiet_since = Instant::now();
        let idle_limit = self.config.stop_when_idle;
        // Unset, it never fires: a year is as good as never, and cannot overflow an `Instant`.
        let mut idle = pin!(tokio::time::sleep(idle_limit.unwrap_or(Duration::from_secs(365 * 24 * 3600))));
        // Made once and polled again each turn: a new one per turn would register and unregister a
        // waiter on the token for every delivery.
        let mut shutdown_requested = pin!(shutdown.cancelled());
        loop {
            if ending.is_some() && in_flight.is_empty() {
                break;
            }
            let taking = ending.is_none() && in_flight.len() < concurrency;
            let watching_idle = idle_limit.is_some() && ending.is_none() && in_flight.is_empty();
            tokio::select! {
                biased;
                // Listened to even after the source ended: a delivery may be retrying. (Its child
                // tokens, which stop the reader and the retries, are cancelled with it.)
                () = &mut shutdown_requested, if !shutting_down => {
                    shutting_down = true;
                    if matches!(ending, None | Some(Ending::Exhausted | Ending::Idle)) {
                        ending = Some(Ending::ShutDown);
                    }
                }
                // Before the deliveries, which under load are always ready: once a second, and
                // never starved by them.
                _ = heartbeat.tick() => self.observer.heartbeat(arrivals.oldest()),
                Some((number, processed)) = in_flight.next() => {
                    arrivals.settled(number);
                    summary.count(&processed);
                    if let Processed::Stop { reason, .. } = processed
                        && !matches!(ending, Some(Ending::Stopped(_)))
                    {
                        tracing::error!(error = %error_chain(&reason), "stopping: no further deliveries are taken");
                        ending = Some(Ending::Stopped(reason));
                        give_up.cancel();
                    }
                    if in_flight.is_empty() {
                        quiet_since = Instant::now();
                    }
                    progress(&summary);
                }
                received = incoming.recv(), if taking => match received {
                    Some(Ok(delivery)) => {
                        summary.deliveries += 1;
                        quiet_since = Instant::now();
                        let number = arrivals.arrived();
                        let process = self.process(delivery, give_up.clone());
                        in_flight.push(async move { (number, process.await) });
                    }
                    Some(Err(err)) => {
                        ending = Some(Ending::Stopped(StopReason::Source(err)));
                        give_up.cancel();
                    }
                    None => ending = Some(Ending::Exhausted),
                },
                () = &mut idle, if watching_idle => {
                    // The timer was set from an older `quiet_since`: wait out the rest, or end.
                    let limit = idle_limit.unwrap_or_default();
                    if quiet_since.elapsed() >= limit {
                        ending = Some(Ending::Idle);
                    } else {
                        idle.as_mut().reset(quiet_since + limit);
                    }
                }
            }
        }

        // Every delivery taken is settled or given up: stop reading, and hand back what was read
        // but never taken (dropped receipts come back), before the source sends its last
        // acknowledgements and closes.
        stop_reading.cancel();
        let source = reader.finish().await;
        drop(incoming);
        if let Some(mut source) = source
            && let Err(err) = source.close().await
        {
            tracing::warn!(error = %error_chain(&err), "closing the source failed; unsent acknowledgements mean redeliveries, answered as duplicates");
        }
        Run { summary, ending: ending.unwrap_or(Ending::Exhausted) }
    }

    /// Handles one delivery until it is settled, abandoned or stops the consumer, renewing its
    /// lease while that takes.
    async fn process(&self, delivery: Delivery, give_up: CancellationToken) -> Processed {
        let Delivery { payload, attempt, receipt } = delivery;
        let arrived = Instant::now();
        self.observer.delivered(attempt);
        let processed = {
            let mut work = pin!(self.settle(&payload, attempt, receipt.as_ref(), &give_up));
            match receipt.lease() {
                None => work.await,
                Some(lease) => {
                    // Renewed three times per lease, so that one late renewal does not lose it.
                    let every = (lease / 3).max(Duration::from_millis(1));
                    let mut renewals = tokio::time::interval_at(Instant::now() + every, every);
                    loop {
                        tokio::select! {
                            biased;
                            processed = &mut work => break processed,
                            _ = renewals.tick() => receipt.renew(),
                        }
                    }
                }
            }
        };
        if matches!(processed, Processed::Settled { .. }) {
            receipt.ack();
        }
        self.observer.settled(processed.outcome(), arrived.elapsed());
        processed
    }

    /// Handles, and retries while the store or the sink is unavailable; returns how it ended,
    /// without acknowledging.
    async fn settle(
        &self,
        payload: &Payload,
        attempt: u32,
        receipt: &dyn Receipt,
        give_up: &CancellationToken,
    ) -> Processed {
        let started = Instant::now();
        let mut retries = 0;
        // The payment being saved, once the handler decoded it: for the logs.
        let mut last_payment = None;
        loop {
            let action = match self.config.max_attempts {
                Some(limit) if attempt > limit => {
                    Action::DeadLetter(Rejection::TooManyAttempts { attempt, limit })
                }
                _ => self.handler.handle(payload).await,
            };
            let unavailable = match action {
                Action::Acknowledge(Settled::Applied(_)) => {
                    return Processed::Settled { outcome: Outcome::Applied, retries };
                }
                Action::Acknowledge(Settled::Duplicate(_)) => {
                    return Processed::Settled { outcome: Outcome::Duplicate, retries };
                }
                Action::DeadLetter(rejection) => {
                    let outcome = rejection.outcome();
                    let letter = DeadLetter {
                        kind: rejection.kind(),
                        reason: rejection.to_string(),
                        origin: receipt.origin(),
                        attempt,
                        payload: payload.clone(),
                        conflict: rejection.into_conflict(),
                    };
                    tracing::info!(
                        payment_id = letter.conflict.as_ref().map(|c| tracing::field::display(c.incoming.id)),
                        origin = %letter.origin,
                        attempt,
                        outcome = outcome.name(),
                        reason = %letter.reason,
                        "dead-lettering"
                    );
                    let written = self.dead_letters.put(&letter).await;
                    self.observer.dead_letter(letter.kind, written.is_ok());
                    match written {
                        Ok(()) => return Processed::Settled { outcome, retries },
                        Err(err) if err.is_unavailable() => Unavailable::DeadLetters(err),
                        Err(err) => {
                            return Processed::Stop { reason: StopReason::DeadLettersFailed(err), retries };
                        }
                    }
                }
                Action::Retry { error, payment } => {
                    last_payment = Some(payment);
                    Unavailable::Store(error)
                }
                Action::Stop { error, payment } => {
                    tracing::error!(payment_id = %payment, origin = %receipt.origin(), attempt, error = %error_chain(&error), "the store failed for good");
                    return Processed::Stop { reason: StopReason::StoreFailed(error), retries };
                }
            };
            let waited = started.elapsed();
            if waited >= self.config.retry.give_up_after {
                let reason = match unavailable {
                    Unavailable::Store(error) => StopReason::StoreUnavailable { waited, retries, error },
                    Unavailable::DeadLetters(error) => {
                        StopReason::DeadLettersUnavailable { waited, retries, error }
                    }
                };
                return Processed::Stop { reason, retries };
            }
            retries += 1;
            let delay = self.config.retry.delay(retries);
            let (error, cause) = match &unavailable {
                Unavailable::Store(err) => (error_chain(err), RetryCause::Store),
                Unavailable::DeadLetters(err) => (error_chain(err), RetryCause::DeadLetters),
            };
            self.observer.retrying(cause);
            tracing::warn!(
                payment_id = last_payment.map(tracing::field::display),
                origin = %receipt.origin(),
                attempt,
                outcome = "retried",
                cause = cause.name(),
                retry = retries,
                ?delay,
                %error,
                "unavailable, retrying"
            );
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = give_up.cancelled() => return Processed::Abandoned { retries },
            }
        }
    }
}

/// The reading task; aborted when dropped before it finished (a crash of the run).
struct Reader<S>(Option<JoinHandle<S>>);

impl<S> Reader<S> {
    /// Waits for the task to end (it has been told to stop) and takes the source back.
    async fn finish(&mut self) -> Option<S> {
        match self.0.take()?.await {
            Ok(source) => Some(source),
            Err(err) => {
                tracing::error!(error = %err, "the task reading the source failed");
                None
            }
        }
    }
}

impl<S> Drop for Reader<S> {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// Reads `source` into `deliveries` until it ends, fails, or is told to stop; returns the source
/// for closing. An unavailable source is asked again with backoff, for as long as the consumer
/// runs. Stopping drops a read in progress, which the port allows: what it had taken comes back.
async fn read<S: DeliverySource>(
    mut source: S,
    deliveries: mpsc::Sender<Result<Delivery, SourceError>>,
    retry: RetryPolicy,
    stop: CancellationToken,
    observer: Arc<dyn Observer>,
) -> S {
    let mut failures = 0;
    let mut stopped = pin!(stop.cancelled());
    loop {
        let next = tokio::select! {
            biased;
            () = &mut stopped => return source,
            next = source.next() => next,
        };
        let next = match next {
            Ok(Some(delivery)) => Ok(delivery),
            Ok(None) => return source,
            Err(err) if err.is_unavailable() => {
                if failures == 0 {
                    observer.source_reachable(false);
                }
                failures += 1;
                tracing::warn!(error = %error_chain(&err), "message source unavailable, asking again");
                tokio::select! {
                    () = &mut stopped => return source,
                    () = tokio::time::sleep(retry.delay(failures)) => continue,
                }
            }
            Err(err) => Err(err),
        };
        if failures > 0 {
            observer.source_reachable(true);
        }
        failures = 0;
        let failed = next.is_err();
        let sent = tokio::select! {
            biased;
            // Not taken: the delivery is dropped here, unacknowledged, and comes back.
            () = &mut stopped => return source,
            sent = deliveries.send(next) => sent,
        };
        if sent.is_err() || failed {
            return source;
        }
    }
}

#[cfg(test)]
mod tests;
