//! The driven port for watching the consumer work: [`Observer`], which a metrics adapter
//! implements (and [`RelayObserver`], for an outbox relay), and [`BacklogProbe`], through which a source says how much waits on its broker.
//!
//! Everything here is a report, never a decision: an observer cannot change what happens to a
//! message, and a slow one only slows the consumer down. Reports carry no payment or message ID,
//! so that a metrics adapter cannot turn one into a label by mistake.

use std::time::Duration;

use async_trait::async_trait;

use crate::source::SourceError;
use crate::{DeadLetterKind, RepositoryError};

/// What became of one delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// The payment was recorded.
    Applied,
    /// It was recorded already.
    Duplicate,
    /// Another payment is recorded under its ID: dead-lettered.
    Conflict,
    /// Not a valid payment: dead-lettered.
    Invalid,
    /// Over the size limit: dead-lettered.
    TooLarge,
    /// Delivered more often than the limit: dead-lettered unhandled.
    TooManyAttempts,
    /// Given up unacknowledged (shutdown, or the consumer stopped): the source brings it back.
    Unsettled,
}

impl Outcome {
    /// The outcome's name in metrics: `applied`, `duplicate`, `conflict`, `invalid`, `too_large`,
    /// `too_many_attempts`, `unsettled`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Duplicate => "duplicate",
            Self::Conflict => "conflict",
            Self::Invalid => "invalid",
            Self::TooLarge => "too_large",
            Self::TooManyAttempts => "too_many_attempts",
            Self::Unsettled => "unsettled",
        }
    }

    /// Whether the delivery was acknowledged.
    pub const fn acknowledged(self) -> bool {
        !matches!(self, Self::Unsettled)
    }
}

/// Why a delivery is handled again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RetryCause {
    /// The store was unavailable.
    Store,
    /// The dead-letter sink was unavailable.
    DeadLetters,
}

impl RetryCause {
    /// The cause's name in metrics: `store` or `dead_letters`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Store => "store",
            Self::DeadLetters => "dead_letters",
        }
    }
}

/// How a store operation ended, as metrics tell it apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreAnswer {
    /// The store answered (whatever it answered: new, duplicate or conflict).
    Answered,
    /// The store could not be reached: retried.
    Unavailable,
    /// The store refused for good: the consumer stops.
    Failed,
}

impl StoreAnswer {
    /// How `result` ended.
    pub fn of<T>(result: &Result<T, RepositoryError>) -> Self {
        match result {
            Ok(_) => Self::Answered,
            Err(err) if err.is_unavailable() => Self::Unavailable,
            Err(_) => Self::Failed,
        }
    }

    /// The name of a failure in metrics (`unavailable`, `failed`); `None` for an answer.
    pub const fn error_type(self) -> Option<&'static str> {
        match self {
            Self::Answered => None,
            Self::Unavailable => Some("unavailable"),
            Self::Failed => Some("failed"),
        }
    }
}

/// Watches the consumer work. Every method has a default that does nothing, and is called on the
/// consumer's own tasks: it must be quick and must not block.
pub trait Observer: Send + Sync {
    /// A delivery arrived, its `attempt`th.
    fn delivered(&self, attempt: u32) {
        let _ = attempt;
    }

    /// A delivery ended, `took` after it arrived.
    fn settled(&self, outcome: Outcome, took: Duration) {
        let _ = (outcome, took);
    }

    /// A save reached the store and came back `took` later, with `answer`. Reported by the use
    /// case, which times the call itself: a decorator around the store would cost every save a
    /// boxed future of its own.
    fn saved(&self, took: Duration, answer: StoreAnswer) {
        let _ = (took, answer);
    }

    /// A delivery will be handled again after a backoff.
    fn retrying(&self, cause: RetryCause) {
        let _ = cause;
    }

    /// A dead letter of `kind` was written (`true`), or could not be.
    fn dead_letter(&self, kind: DeadLetterKind, written: bool) {
        let _ = (kind, written);
    }

    /// The consume loop is alive; `oldest` is how long the oldest delivery in flight has been
    /// held, if any is. Called at least once a second while the loop runs.
    fn heartbeat(&self, oldest: Option<Duration>) {
        let _ = oldest;
    }

    /// The source answered (`true`), or was unavailable (`false`).
    fn source_reachable(&self, reachable: bool) {
        let _ = reachable;
    }
}

/// Watches an outbox relay work. Every method has a default that does nothing, and is called on
/// the relay's own task: it must be quick and must not block.
pub trait RelayObserver: Send + Sync {
    /// `events` were published and confirmed by the broker (and then marked, or about to be).
    fn published(&self, events: u64) {
        let _ = events;
    }

    /// A batch could not be published; `unavailable` when it will be tried again.
    fn publish_failed(&self, unavailable: bool) {
        let _ = unavailable;
    }

    /// The outbox holds `pending` events not yet marked published, the oldest recorded `oldest_age`
    /// ago (`None` when none waits).
    fn outbox_backlog(&self, pending: u64, oldest_age: Option<Duration>) {
        let _ = (pending, oldest_age);
    }
}

/// An observer that watches nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unobserved;

impl Observer for Unobserved {}

impl RelayObserver for Unobserved {}

/// How much waits on the broker for a consumer group, as the broker counts it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Messages not delivered yet (Redis group lag, JetStream `num_pending`, RabbitMQ ready).
    pub waiting: Option<u64>,
    /// Messages delivered and not acknowledged yet (Redis pending, JetStream `num_ack_pending`,
    /// RabbitMQ unacknowledged).
    pub unacknowledged: Option<u64>,
}

/// Asks a broker how much waits, on a connection of its own, apart from the source that reads.
#[async_trait]
pub trait BacklogProbe: Send + Sync {
    /// The backlog now.
    ///
    /// # Errors
    ///
    /// When the broker cannot be asked.
    async fn backlog(&self) -> Result<Backlog, SourceError>;
}
