//! The relay against an outbox and a publisher that do what each test scripts: what is marked,
//! when, and what reaches the broker.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use payments_ports::domain::{Payment, RecordedAt};

use super::*;

fn event(n: usize) -> PaymentRecorded {
    let payment = Payment::parse(&format!("pay-{n:04}"), 100 + n as u64, "EUR").expect("valid");
    PaymentRecorded::new(payment, RecordedAt::from_unix_millis(1_795_842_000_000 + n as u64))
}

/// What the outbox and the publisher saw, in order.
#[derive(Debug, Default)]
struct Log {
    events: Vec<PaymentRecorded>,
    published_upto: usize,
    claimed: Option<usize>,
    /// Errors for the next claims, then successes.
    claim_errors: VecDeque<RepositoryError>,
    /// Every step, as words: `claim 2`, `publish 2`, `mark 2`.
    steps: Vec<String>,
    closed: bool,
}

#[derive(Clone, Default)]
struct Scripted(Arc<Mutex<Log>>);

impl Scripted {
    fn with_events(n: usize) -> Self {
        let scripted = Self::default();
        scripted.log().events = (0..n).map(event).collect();
        scripted
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.0.lock().expect("not poisoned")
    }
}

#[async_trait]
impl Outbox for Scripted {
    async fn claim(&mut self, limit: usize) -> Result<Vec<PaymentRecorded>, RepositoryError> {
        let mut log = self.log();
        log.claimed = None;
        if let Some(err) = log.claim_errors.pop_front() {
            log.steps.push("claim failed".to_owned());
            return Err(err);
        }
        let start = log.published_upto;
        let end = log.events.len().min(start + limit);
        log.claimed = Some(end);
        log.steps.push(format!("claim {}", end - start));
        Ok(log.events[start..end].to_vec())
    }

    async fn mark_published(&mut self) -> Result<(), RepositoryError> {
        let mut log = self.log();
        if let Some(end) = log.claimed.take() {
            let marked = end - log.published_upto;
            log.published_upto = end;
            log.steps.push(format!("mark {marked}"));
        }
        Ok(())
    }

    async fn backlog(&mut self) -> Result<OutboxBacklog, RepositoryError> {
        let log = self.log();
        Ok(OutboxBacklog {
            pending: (log.events.len() - log.published_upto) as u64,
            oldest: log.events.get(log.published_upto).map(|e| e.recorded_at.system_time()),
        })
    }

    async fn close(&mut self) -> Result<(), RepositoryError> {
        self.log().closed = true;
        Ok(())
    }
}

/// A broker that fails as scripted, then confirms, and keeps what it confirmed.
#[derive(Default)]
struct Broker {
    outbox: Scripted,
    failures: Mutex<VecDeque<PublishError>>,
    confirmed: Mutex<Vec<OutgoingMessage>>,
}

impl Broker {
    fn failing(outbox: &Scripted, failures: impl IntoIterator<Item = PublishError>) -> Arc<Self> {
        Arc::new(Self {
            outbox: outbox.clone(),
            failures: Mutex::new(failures.into_iter().collect()),
            confirmed: Mutex::default(),
        })
    }

    fn confirmed(&self) -> Vec<OutgoingMessage> {
        self.confirmed.lock().expect("not poisoned").clone()
    }
}

#[async_trait]
impl Publisher for Broker {
    async fn publish(&self, messages: &[OutgoingMessage]) -> Result<(), PublishError> {
        if let Some(err) = self.failures.lock().expect("not poisoned").pop_front() {
            self.outbox.log().steps.push(format!("publish {} failed", messages.len()));
            return Err(err);
        }
        self.outbox.log().steps.push(format!("publish {}", messages.len()));
        self.confirmed.lock().expect("not poisoned").extend_from_slice(messages);
        Ok(())
    }
}

fn down() -> PublishError {
    PublishError::unavailable_because("nats://broker", std::io::Error::other("connection refused"))
}

fn config(batch: usize) -> RelayConfig {
    RelayConfig {
        batch,
        retry: RetryPolicy {
            first_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
            give_up_after: Duration::from_secs(30),
        },
        ..RelayConfig::default()
    }
}

fn drained() -> RelayControl {
    let control = RelayControl::default();
    control.drain.cancel();
    control
}

#[tokio::test]
async fn publishes_every_event_with_its_message_id_then_marks_it_and_drains() {
    let outbox = Scripted::with_events(5);
    let broker = Broker::failing(&outbox, []);
    let run = Relay::new(Box::new(outbox.clone()), broker.clone(), config(2)).run(drained()).await;

    assert!(matches!(run.ending, RelayEnding::Drained), "{:?}", run.ending);
    assert_eq!((run.published, run.left), (5, Some(0)));
    let confirmed = broker.confirmed();
    let ids: Vec<_> = confirmed.iter().map(|m| m.id.clone().unwrap_or_default()).collect();
    assert_eq!(ids, (0..5).map(|n| format!("payment-recorded:pay-{n:04}")).collect::<Vec<_>>());
    let mut expected = Vec::new();
    event(3).encode(&mut expected);
    assert_eq!(confirmed[3].payload, expected);
    let log = outbox.log();
    assert_eq!(
        log.steps,
        [
            "claim 2",
            "publish 2",
            "mark 2",
            "claim 2",
            "publish 2",
            "mark 2",
            "claim 1",
            "publish 1",
            "mark 1",
            "claim 0"
        ]
    );
    assert!(log.closed, "the relay closes the outbox when it ends");
}

#[tokio::test]
async fn an_unavailable_broker_is_retried_and_nothing_is_marked_before_it_confirms() {
    let outbox = Scripted::with_events(2);
    let broker = Broker::failing(&outbox, [down(), down()]);
    let run = Relay::new(Box::new(outbox.clone()), broker.clone(), config(10)).run(drained()).await;

    assert!(matches!(run.ending, RelayEnding::Drained), "{:?}", run.ending);
    assert_eq!(run.published, 2);
    assert_eq!(broker.confirmed().len(), 2, "published once confirmed, not once per try");
    assert_eq!(
        outbox.log().steps,
        ["claim 2", "publish 2 failed", "publish 2 failed", "publish 2", "mark 2", "claim 0"]
    );
}

#[tokio::test]
async fn a_refusing_broker_stops_the_relay_and_leaves_the_events_unmarked() {
    let outbox = Scripted::with_events(3);
    let refused = PublishError::failed_because("nats://broker", std::io::Error::other("no stream"));
    let broker = Broker::failing(&outbox, [refused]);
    let run = Relay::new(Box::new(outbox.clone()), broker.clone(), config(10)).run(drained()).await;

    assert!(matches!(run.ending, RelayEnding::Stopped(RelayError::Publish(_))), "{:?}", run.ending);
    assert_eq!((run.published, run.left), (0, Some(3)));
    assert!(!outbox.log().steps.iter().any(|step| step.starts_with("mark")), "{:?}", outbox.log().steps);
}

#[tokio::test]
async fn a_broker_down_past_the_retry_limit_stops_the_relay_unmarked() {
    let outbox = Scripted::with_events(1);
    let broker = Broker::failing(&outbox, std::iter::repeat_with(down).take(1000));
    let mut config = config(10);
    config.retry.give_up_after = Duration::from_millis(20);
    let run = Relay::new(Box::new(outbox.clone()), broker, config).run(drained()).await;

    assert!(matches!(run.ending, RelayEnding::Stopped(RelayError::Publish(_))), "{:?}", run.ending);
    assert_eq!(run.left, Some(1));
}

#[tokio::test]
async fn a_shutdown_while_the_broker_is_down_leaves_the_claim_for_the_next_relay() {
    let outbox = Scripted::with_events(4);
    let broker = Broker::failing(&outbox, std::iter::repeat_with(down).take(1_000_000));
    let control = RelayControl::default();
    let relay = tokio::spawn(Relay::new(Box::new(outbox.clone()), broker, config(10)).run(control.clone()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !outbox.log().steps.iter().any(|step| step == "publish 4 failed") {
        assert!(Instant::now() < deadline, "the relay never tried to publish");
        tokio::task::yield_now().await;
    }
    control.shutdown.cancel();
    let run = tokio::time::timeout(Duration::from_secs(10), relay).await.expect("stops").expect("no panic");

    assert!(matches!(run.ending, RelayEnding::ShutDown), "{:?}", run.ending);
    assert_eq!((run.published, run.left), (0, Some(4)));
    assert!(outbox.log().closed);
}

#[tokio::test]
async fn an_unavailable_store_is_retried() {
    let outbox = Scripted::with_events(1);
    outbox.log().claim_errors.push_back(RepositoryError::unavailable("connection reset"));
    let broker = Broker::failing(&outbox, []);
    let run = Relay::new(Box::new(outbox.clone()), broker, config(10)).run(drained()).await;

    assert!(matches!(run.ending, RelayEnding::Drained), "{:?}", run.ending);
    assert_eq!(run.published, 1);
    assert_eq!(outbox.log().steps, ["claim failed", "claim 1", "publish 1", "mark 1", "claim 0"]);
}

#[tokio::test]
async fn a_failed_store_stops_the_relay() {
    let outbox = Scripted::with_events(1);
    outbox.log().claim_errors.push_back(RepositoryError::failed("journal poisoned"));
    let broker = Broker::failing(&outbox, []);
    let run = Relay::new(Box::new(outbox.clone()), broker.clone(), config(10)).run(drained()).await;

    assert!(matches!(run.ending, RelayEnding::Stopped(RelayError::Store(_))), "{:?}", run.ending);
    assert!(broker.confirmed().is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_outbox_empty_for_the_idle_time_ends_the_relay() {
    let outbox = Scripted::with_events(0);
    let broker = Broker::failing(&outbox, []);
    let config = RelayConfig { stop_when_idle: Some(Duration::from_secs(2)), ..config(10) };
    let run = Relay::new(Box::new(outbox.clone()), broker, config).run(RelayControl::default()).await;

    assert!(matches!(run.ending, RelayEnding::Idle), "{:?}", run.ending);
    assert!(outbox.log().steps.len() > 2, "it polled while it waited: {:?}", outbox.log().steps);
}

#[tokio::test]
async fn events_recorded_while_it_waits_are_published_once_it_is_told_to_drain() {
    let outbox = Scripted::with_events(0);
    let broker = Broker::failing(&outbox, []);
    let control = RelayControl::default();
    let relay =
        tokio::spawn(Relay::new(Box::new(outbox.clone()), broker.clone(), config(10)).run(control.clone()));
    outbox.log().events.extend((0..3).map(event));
    control.drain.cancel();
    let run = tokio::time::timeout(Duration::from_secs(10), relay).await.expect("drains").expect("no panic");

    assert!(matches!(run.ending, RelayEnding::Drained), "{:?}", run.ending);
    assert_eq!(broker.confirmed().len(), 3);
    assert_eq!(run.left, Some(0));
}
