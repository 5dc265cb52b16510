//! The engine against the ports' test doubles: a scripted source, a mocked store, a kept or
//! mocked dead-letter sink.

use std::sync::Mutex;

use payments_ports::domain::SaveOutcome;
use payments_ports::testing::{KeptDeadLetters, ListSource, Settlements};
use payments_ports::{DeadLetterKind, MockDeadLetterSink, MockPaymentsRepository};

use super::*;

const A: &str = r#"{"payment_id": "a", "amount": 1, "currency": "EUR"}"#;
const B: &str = r#"{"payment_id": "b", "amount": 2, "currency": "EUR"}"#;
const BAD: &str = r#"{"payment_id": "c", "amount": -1, "currency": "EUR"}"#;

fn config(give_up_after: Duration) -> ConsumerConfig {
    ConsumerConfig {
        concurrency: 4,
        retry: RetryPolicy {
            first_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
            give_up_after,
        },
        ..ConsumerConfig::default()
    }
}

/// Runs a consumer over `source` to its end; returns the run and how its deliveries were settled.
async fn consume_with(
    source: ListSource,
    repository: MockPaymentsRepository,
    dead_letters: Arc<dyn DeadLetterSink>,
    config: ConsumerConfig,
    shutdown: CancellationToken,
) -> (Run, Settlements) {
    let settlements = source.settlements();
    let consumer = Consumer::new(Handler::new(Arc::new(repository)), dead_letters, config);
    let run = consumer.run(source, shutdown, &mut |_| {}).await;
    (run, settlements)
}

async fn consume(repository: MockPaymentsRepository, config: ConsumerConfig) -> (Run, Settlements) {
    let source = ListSource::new([A, B]);
    consume_with(source, repository, Arc::new(KeptDeadLetters::default()), config, CancellationToken::new())
        .await
}

fn saving_everything_new() -> MockPaymentsRepository {
    let mut repository = MockPaymentsRepository::new();
    repository.expect_save().returning(|_| Ok(SaveOutcome::New));
    repository
}

#[tokio::test]
async fn every_delivery_is_acknowledged_once_saved_and_the_source_is_closed_at_the_end() {
    let (run, settlements) = consume(saving_everything_new(), config(Duration::from_secs(30))).await;
    assert!(matches!(run.ending, Ending::Exhausted), "{:?}", run.ending);
    assert_eq!(run.summary.applied, 2);
    let mut acked = settlements.acked();
    acked.sort();
    assert_eq!(acked, ["message 1", "message 2"]);
    assert!(settlements.closed(), "a source is closed when the run ends, so that it sends its last acks");
}

#[tokio::test]
async fn a_store_outage_is_retried_then_stops_cleanly_with_nothing_acknowledged() {
    let mut repository = MockPaymentsRepository::new();
    repository.expect_save().returning(|_| Err(RepositoryError::unavailable("connection refused")));
    let (run, settlements) = consume(repository, config(Duration::from_millis(60))).await;
    assert!(
        matches!(&run.ending, Ending::Stopped(StopReason::StoreUnavailable { retries, .. }) if *retries > 0),
        "{:?}",
        run.ending
    );
    assert!(settlements.acked().is_empty(), "nothing may be acknowledged while the store is down");
    assert!(run.summary.retries >= 2, "{:?}", run.summary);
    assert_eq!(run.summary.applied + run.summary.invalid + run.summary.conflicts, 0, "never dead-lettered");
    assert_eq!(run.summary.unsettled, run.summary.deliveries, "{:?}", run.summary);
    assert_eq!(settlements.dropped().len() as u64, run.summary.deliveries, "left for redelivery");
}

#[tokio::test]
async fn a_store_that_comes_back_gets_every_payment_and_only_then_the_acknowledgement() {
    let mut repository = MockPaymentsRepository::new();
    let stored = Arc::new(Mutex::new(Vec::new()));
    let (calls, kept) = (Arc::new(Mutex::new(0)), Arc::clone(&stored));
    repository.expect_save().returning(move |payment| {
        let mut calls = calls.lock().expect("calls");
        *calls += 1;
        if *calls <= 5 {
            return Err(RepositoryError::unavailable("connection refused"));
        }
        kept.lock().expect("stored").push(payment.id.to_string());
        Ok(SaveOutcome::New)
    });
    let (run, settlements) = consume(repository, config(Duration::from_secs(30))).await;
    assert!(matches!(run.ending, Ending::Exhausted), "{:?}", run.ending);
    assert_eq!(run.summary.applied, 2);
    assert_eq!(run.summary.retries, 5);
    assert_eq!(settlements.acked().len(), 2, "both acknowledged, once stored");
    assert_eq!(stored.lock().expect("stored").len(), 2);
}

#[tokio::test]
async fn a_failed_store_stops_at_once_without_acknowledging() {
    let mut repository = MockPaymentsRepository::new();
    repository.expect_save().returning(|_| Err(RepositoryError::failed("journal poisoned")));
    let (run, settlements) = consume(repository, config(Duration::from_secs(30))).await;
    assert!(matches!(run.ending, Ending::Stopped(StopReason::StoreFailed(_))), "{:?}", run.ending);
    assert!(settlements.acked().is_empty());
    assert_eq!(run.summary.retries, 0, "a failure that retrying cannot fix is not retried");
    assert!(settlements.closed(), "a stopped run still closes its source");
}

#[tokio::test]
async fn shutdown_gives_up_a_retrying_delivery_unacknowledged_and_closes_the_source() {
    let mut repository = MockPaymentsRepository::new();
    repository.expect_save().returning(|_| Err(RepositoryError::unavailable("down")));
    let shutdown = CancellationToken::new();
    let stopper = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            shutdown.cancel();
        })
    };
    let source = ListSource::new([A]).waiting_at_end();
    let dead_letters = Arc::new(KeptDeadLetters::default());
    let (run, settlements) =
        consume_with(source, repository, dead_letters, config(Duration::from_secs(3600)), shutdown).await;
    stopper.await.expect("stopper");
    assert!(matches!(run.ending, Ending::ShutDown), "{:?}", run.ending);
    assert_eq!(run.summary.unsettled, 1);
    assert!(settlements.acked().is_empty());
    assert_eq!(settlements.dropped(), ["message 1"], "given up, so that the source brings it back");
    assert!(settlements.closed(), "a waiting read is dropped on shutdown, and the source closed");
}

#[tokio::test]
async fn invalid_messages_and_conflicts_are_dead_lettered_then_acknowledged() {
    let mut repository = MockPaymentsRepository::new();
    repository.expect_save().returning(|incoming| {
        Ok(SaveOutcome::conflict(
            payments_ports::domain::Payment::parse(incoming.id.as_str(), 99, "EUR").expect("valid"),
            incoming.clone(),
        ))
    });
    let dead_letters = Arc::new(KeptDeadLetters::default());
    let source = ListSource::new([A, BAD]);
    let (run, settlements) = consume_with(
        source,
        repository,
        Arc::clone(&dead_letters) as Arc<dyn DeadLetterSink>,
        config(Duration::from_secs(30)),
        CancellationToken::new(),
    )
    .await;
    assert_eq!((run.summary.conflicts, run.summary.invalid), (1, 1), "{:?}", run.summary);
    assert_eq!(settlements.acked().len(), 2, "dead-lettered messages are acknowledged");
    let mut letters = dead_letters.letters();
    letters.sort_by_key(|l| l.origin.clone());
    assert_eq!(letters[0].kind, DeadLetterKind::Conflict);
    assert_eq!(letters[0].conflict.as_ref().map(|c| c.stored.amount.minor_units()), Some(99));
    assert_eq!(letters[0].payload, Payload::Complete(A.into()));
    assert_eq!(letters[1].kind, DeadLetterKind::Invalid);
    assert!(letters[1].reason.contains("invalid amount -1"), "{}", letters[1].reason);
}

#[tokio::test]
async fn an_unavailable_dead_letter_sink_is_retried_and_the_message_acknowledged_only_after_its_letter() {
    let mut sink = MockDeadLetterSink::new();
    let calls = Arc::new(Mutex::new(0));
    let counted = Arc::clone(&calls);
    sink.expect_put().returning(move |_| {
        let mut calls = counted.lock().expect("calls");
        *calls += 1;
        if *calls <= 3 {
            Err(DeadLetterError::from_io("dead.jsonl", std::io::ErrorKind::StorageFull.into()))
        } else {
            Ok(())
        }
    });
    sink.expect_close().returning(|| Ok(()));
    let (run, settlements) = consume_with(
        ListSource::new([BAD]),
        MockPaymentsRepository::new(),
        Arc::new(sink),
        config(Duration::from_secs(30)),
        CancellationToken::new(),
    )
    .await;
    assert!(matches!(run.ending, Ending::Exhausted), "{:?}", run.ending);
    assert_eq!((run.summary.invalid, run.summary.retries), (1, 3), "{:?}", run.summary);
    assert_eq!(*calls.lock().expect("calls"), 4);
    assert_eq!(settlements.acked(), ["message 1"]);
}

#[tokio::test]
async fn a_failed_dead_letter_sink_stops_without_acknowledging() {
    let mut sink = MockDeadLetterSink::new();
    sink.expect_put().returning(|_| {
        Err(DeadLetterError::from_io("dead.jsonl", std::io::ErrorKind::PermissionDenied.into()))
    });
    let (run, settlements) = consume_with(
        ListSource::new([BAD]),
        MockPaymentsRepository::new(),
        Arc::new(sink),
        config(Duration::from_secs(30)),
        CancellationToken::new(),
    )
    .await;
    assert!(matches!(run.ending, Ending::Stopped(StopReason::DeadLettersFailed(_))), "{:?}", run.ending);
    assert!(settlements.acked().is_empty());
    assert_eq!(run.summary.unsettled, 1);
}

#[tokio::test(start_paused = true)]
async fn a_delivery_held_through_a_long_retry_has_its_lease_renewed() {
    let mut repository = MockPaymentsRepository::new();
    let calls = Arc::new(Mutex::new(0));
    let counted = Arc::clone(&calls);
    repository.expect_save().returning(move |_| {
        let mut calls = counted.lock().expect("calls");
        *calls += 1;
        if *calls <= 20 { Err(RepositoryError::unavailable("down")) } else { Ok(SaveOutcome::New) }
    });
    let retry = RetryPolicy {
        first_delay: Duration::from_millis(500),
        max_delay: Duration::from_secs(1),
        give_up_after: Duration::from_secs(3600),
    };
    let source = ListSource::new([A]).with_lease(Duration::from_secs(3));
    let (run, settlements) = consume_with(
        source,
        repository,
        Arc::new(KeptDeadLetters::default()),
        ConsumerConfig { retry, ..ConsumerConfig::default() },
        CancellationToken::new(),
    )
    .await;
    assert_eq!(run.summary.applied, 1);
    // 20 retries of at least 0.25 s each hold the delivery for over 5 s: more than a lease of 3 s,
    // so it must have been renewed (every second) along the way.
    assert!(settlements.renewals() >= 4, "renewed {} times", settlements.renewals());
}

#[tokio::test]
async fn a_delivery_past_the_attempt_limit_is_dead_lettered_without_being_handled() {
    let mut repository = MockPaymentsRepository::new();
    repository.expect_save().never();
    let dead_letters = Arc::new(KeptDeadLetters::default());
    // The list source's deliveries are first attempts: a limit of zero makes every one too many.
    let (run, settlements) = consume_with(
        ListSource::new([A]),
        repository,
        Arc::clone(&dead_letters) as Arc<dyn DeadLetterSink>,
        ConsumerConfig { max_attempts: Some(0), ..config(Duration::from_secs(30)) },
        CancellationToken::new(),
    )
    .await;
    assert_eq!(run.summary.invalid, 1);
    assert_eq!(settlements.acked(), ["message 1"]);
    let letters = dead_letters.letters();
    assert_eq!(letters[0].kind, DeadLetterKind::TooManyAttempts);
    assert_eq!(letters[0].reason, "delivered 1 times, over the limit of 0 deliveries");
}

#[tokio::test(start_paused = true)]
async fn stop_when_idle_ends_a_run_on_a_source_that_never_runs_out() {
    let source = ListSource::new([A, B]).waiting_at_end();
    let started = tokio::time::Instant::now();
    let (run, settlements) = consume_with(
        source,
        saving_everything_new(),
        Arc::new(KeptDeadLetters::default()),
        ConsumerConfig { stop_when_idle: Some(Duration::from_secs(2)), ..config(Duration::from_secs(30)) },
        CancellationToken::new(),
    )
    .await;
    assert!(matches!(run.ending, Ending::Idle), "{:?}", run.ending);
    assert_eq!(run.summary.applied, 2);
    assert!(started.elapsed() >= Duration::from_secs(2), "not before the idle time: {:?}", started.elapsed());
    assert!(settlements.closed());
}

#[tokio::test]
async fn a_shutdown_requested_while_the_loop_is_busy_still_ends_the_run_as_shut_down() {
    // Cancelled before the loop first looks: the reader and the retries stop with it (child
    // tokens), and the run must still say it was shut down, not that the source ran out.
    let shutdown = CancellationToken::new();
    shutdown.cancel();
    let (run, settlements) = consume_with(
        ListSource::new([A, B]).waiting_at_end(),
        saving_everything_new(),
        Arc::new(KeptDeadLetters::default()),
        config(Duration::from_secs(30)),
        shutdown,
    )
    .await;
    assert!(matches!(run.ending, Ending::ShutDown), "{:?}", run.ending);
    assert!(settlements.closed());
}

/// What an observer was told, in order.
#[derive(Debug, PartialEq)]
enum Told {
    Delivered(u32),
    Settled(Outcome),
    Retrying(RetryCause),
    DeadLetter(DeadLetterKind, bool),
    Heartbeat(Option<Duration>),
    SourceReachable(bool),
}

#[derive(Default)]
struct Recorder(Mutex<Vec<Told>>);

impl Recorder {
    fn told(&self, what: Told) {
        self.0.lock().expect("recorder").push(what);
    }

    fn count(&self, which: impl Fn(&Told) -> bool) -> usize {
        self.0.lock().expect("recorder").iter().filter(|told| which(told)).count()
    }
}

impl Observer for Recorder {
    fn delivered(&self, attempt: u32) {
        self.told(Told::Delivered(attempt));
    }
    fn settled(&self, outcome: Outcome, _took: Duration) {
        self.told(Told::Settled(outcome));
    }
    fn retrying(&self, cause: RetryCause) {
        self.told(Told::Retrying(cause));
    }
    fn dead_letter(&self, kind: DeadLetterKind, written: bool) {
        self.told(Told::DeadLetter(kind, written));
    }
    fn heartbeat(&self, oldest: Option<Duration>) {
        self.told(Told::Heartbeat(oldest));
    }
    fn source_reachable(&self, reachable: bool) {
        self.told(Told::SourceReachable(reachable));
    }
}

#[tokio::test(start_paused = true)]
async fn the_observer_is_told_every_outcome_retry_dead_letter_and_the_age_of_the_oldest_delivery() {
    let mut repository = MockPaymentsRepository::new();
    let calls = Arc::new(Mutex::new(0));
    let counted = Arc::clone(&calls);
    repository.expect_save().returning(move |_| {
        let mut calls = counted.lock().expect("calls");
        *calls += 1;
        if *calls <= 4 { Err(RepositoryError::unavailable("down")) } else { Ok(SaveOutcome::New) }
    });
    let retry = RetryPolicy {
        first_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(2),
        give_up_after: Duration::from_secs(3600),
    };
    let recorder = Arc::new(Recorder::default());
    let consumer = Consumer::new(
        Handler::new(Arc::new(repository)),
        Arc::new(KeptDeadLetters::default()),
        ConsumerConfig { concurrency: 1, retry, ..ConsumerConfig::default() },
    )
    .with_observer(Arc::clone(&recorder) as Arc<dyn Observer>);
    let source = ListSource::new([A, BAD]).unavailable_first(2);
    let run = consumer.run(source, CancellationToken::new(), &mut |_| {}).await;

    assert_eq!((run.summary.applied, run.summary.invalid), (1, 1), "{:?}", run.summary);
    assert_eq!(recorder.count(|t| *t == Told::Delivered(1)), 2);
    assert_eq!(recorder.count(|t| *t == Told::Settled(Outcome::Applied)), 1);
    assert_eq!(recorder.count(|t| *t == Told::Settled(Outcome::Invalid)), 1);
    assert_eq!(recorder.count(|t| *t == Told::Retrying(RetryCause::Store)) as u64, run.summary.retries);
    assert_eq!(recorder.count(|t| *t == Told::DeadLetter(DeadLetterKind::Invalid, true)), 1);
    // Down for two reads, then up: told once each way, not on every read.
    assert_eq!(recorder.count(|t| *t == Told::SourceReachable(false)), 1);
    assert_eq!(recorder.count(|t| *t == Told::SourceReachable(true)), 1);
    // Four retries of at least half a second hold the first delivery over two seconds: the
    // heartbeat, every second, saw it age.
    assert!(
        recorder.count(|t| matches!(t, Told::Heartbeat(Some(age)) if *age >= Duration::from_secs(1))) >= 1,
        "{:?}",
        recorder.0.lock().expect("recorder")
    );
}
