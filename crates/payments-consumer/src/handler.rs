//! The use case for one message: decode it, validate it into a payment, save it through the
//! repository, and decide what happens to the message. That decision, [`Action`], is the delivery
//! policy: it carries what the consumer needs to carry it out, and is matched once.
//!
//! | how handling ended                        | action                         |
//! |-------------------------------------------|--------------------------------|
//! | recorded, or already recorded identically | acknowledge                    |
//! | a conflict, an invalid or too large body  | dead-letter, then acknowledge  |
//! | the store is unavailable                  | retry later, unacknowledged    |
//! | the store failed for good                 | stop, unacknowledged           |
//!
//! A duplicate is acknowledged like a new payment, because an error would make the broker
//! redeliver it forever; a message that can never succeed is dead-lettered with its reason; a
//! store outage is never the message's fault, so it is never dead-lettered for it.

use std::sync::Arc;

use payments_ports::domain::{Conflict, InvalidEvent, Payment, PaymentId, SaveOutcome, event};
use payments_ports::{
    DeadLetterKind, Observer, Outcome, Payload, PaymentsRepository, RepositoryError, StoreAnswer,
};

/// What the consumer does with a message.
#[derive(Debug)]
pub enum Action {
    /// Acknowledge it: the effect is durable, or already was.
    Acknowledge(Settled),
    /// Write it to the dead letters with this reason, make that durable, then acknowledge it: no
    /// retry can fix it.
    DeadLetter(Rejection),
    /// Leave it unacknowledged and handle it again after a backoff: the store cannot answer now.
    Retry {
        /// Why the store did not answer.
        error: RepositoryError,
        /// The payment it was saving.
        payment: PaymentId,
    },
    /// Leave it unacknowledged and stop taking deliveries: the store failed in a way retrying
    /// cannot fix, and the source will deliver the message to a consumer whose store works.
    Stop {
        /// How the store failed.
        error: RepositoryError,
        /// The payment it was saving.
        payment: PaymentId,
    },
}

impl Action {
    /// The policy for a decoded `payment` and what saving it answered.
    pub fn after_save(payment: Payment, saved: Result<SaveOutcome, RepositoryError>) -> Self {
        match saved {
            Ok(SaveOutcome::New) => Self::Acknowledge(Settled::Applied(payment)),
            Ok(SaveOutcome::Duplicate) => Self::Acknowledge(Settled::Duplicate(payment)),
            Ok(SaveOutcome::Conflict(conflict)) => Self::DeadLetter(Rejection::Conflict(conflict)),
            Err(error) if error.is_unavailable() => Self::Retry { error, payment: payment.id },
            Err(error) => Self::Stop { error, payment: payment.id },
        }
    }
}

/// A payment whose message can be acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settled {
    /// It was recorded now.
    Applied(Payment),
    /// The same payment was recorded before; nothing changed.
    Duplicate(Payment),
}

/// Why a message can never succeed: what its dead letter says.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Another payment is recorded under the same ID; it stays, and both versions are kept.
    #[error(transparent)]
    Conflict(Box<Conflict>),
    /// Not a valid `PaymentTaken` event.
    #[error(transparent)]
    Invalid(#[from] InvalidEvent),
    /// Over the size limit; never read whole.
    #[error("message is {len} bytes long, over the limit of {limit} bytes")]
    TooLarge {
        /// Its length in bytes.
        len: u64,
        /// The limit, in bytes.
        limit: usize,
    },
    /// The source could not make a body of the message.
    #[error("unreadable message: {0}")]
    Unreadable(String),
    /// Delivered more often than the limit allows, so not handled again (a poison message that
    /// keeps a consumer from finishing, say).
    #[error("delivered {attempt} times, over the limit of {limit} deliveries")]
    TooManyAttempts {
        /// Which delivery this was.
        attempt: u32,
        /// The limit.
        limit: u32,
    },
}

impl Rejection {
    /// The kind of its dead letter.
    pub const fn kind(&self) -> DeadLetterKind {
        match self {
            Self::Conflict(_) => DeadLetterKind::Conflict,
            Self::Invalid(_) | Self::Unreadable(_) => DeadLetterKind::Invalid,
            Self::TooLarge { .. } => DeadLetterKind::TooLarge,
            Self::TooManyAttempts { .. } => DeadLetterKind::TooManyAttempts,
        }
    }

    /// What a delivery rejected so counts as, once its dead letter is written.
    pub const fn outcome(&self) -> Outcome {
        match self {
            Self::Conflict(_) => Outcome::Conflict,
            Self::Invalid(_) | Self::Unreadable(_) => Outcome::Invalid,
            Self::TooLarge { .. } => Outcome::TooLarge,
            Self::TooManyAttempts { .. } => Outcome::TooManyAttempts,
        }
    }

    /// Both versions, for a conflict.
    pub fn into_conflict(self) -> Option<Conflict> {
        match self {
            Self::Conflict(conflict) => Some(*conflict),
            _ => None,
        }
    }
}

/// The payments use case, over any [`PaymentsRepository`].
#[derive(Clone)]
pub struct Handler {
    repository: Arc<dyn PaymentsRepository>,
    /// Told how long each save took, when someone watches: unwatched, no clock is read. Watched,
    /// the clock is quanta's (the CPU's time-stamp counter where it can be trusted): two
    /// `clock_gettime` per save cost a delivery into the memory store 4% of its CPU.
    observer: Option<Arc<dyn Observer>>,
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handler").finish_non_exhaustive()
    }
}

impl Handler {
    /// A handler that records payments in `repository`.
    pub fn new(repository: Arc<dyn PaymentsRepository>) -> Self {
        Self { repository, observer: None }
    }

    /// The same handler, telling `observer` how long each save took and how it ended.
    #[must_use]
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Handles one message body. Never fails: every way it can end is an [`Action`].
    pub async fn handle(&self, payload: &Payload) -> Action {
        let body = match payload {
            Payload::Complete(body) => body,
            Payload::TooLarge { len, limit, .. } => {
                return Action::DeadLetter(Rejection::TooLarge { len: *len, limit: *limit });
            }
            Payload::Unreadable { reason, .. } => {
                return Action::DeadLetter(Rejection::Unreadable(reason.clone()));
            }
        };
        match event::decode(body) {
            Ok(payment) => {
                let saved = match &self.observer {
                    None => self.repository.save(&payment).await,
                    Some(observer) => {
                        let started = quanta::Instant::now();
                        let saved = self.repository.save(&payment).await;
                        observer.saved(quanta::Instant::now() - started, StoreAnswer::of(&saved));
                        saved
                    }
                };
                Action::after_save(payment, saved)
            }
            Err(invalid) => Action::DeadLetter(Rejection::Invalid(invalid)),
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use payments_ports::MockPaymentsRepository;
    use payments_ports::domain::Field;

    use super::*;

    const EVENT: &[u8] = br#"{"payment_id": "pay-1", "amount": 1999, "currency": "EUR"}"#;

    fn pay_1() -> Payment {
        Payment::parse("pay-1", 1999, "EUR").expect("valid")
    }

    fn body(bytes: &'static [u8]) -> Payload {
        Payload::Complete(Bytes::from_static(bytes))
    }

    /// What handling pay-1 decides when the store answers its one save with `answer`.
    async fn handle_answering(answer: fn() -> Result<SaveOutcome, RepositoryError>) -> Action {
        let mut repository = MockPaymentsRepository::new();
        repository.expect_save().withf(|p| *p == pay_1()).times(1).returning(move |_| answer());
        Handler::new(Arc::new(repository)).handle(&body(EVENT)).await
    }

    #[tokio::test]
    async fn a_new_payment_is_acknowledged() {
        let action = handle_answering(|| Ok(SaveOutcome::New)).await;
        assert!(matches!(&action, Action::Acknowledge(Settled::Applied(p)) if *p == pay_1()), "{action:?}");
    }

    #[tokio::test]
    async fn a_duplicate_is_acknowledged_without_error() {
        let action = handle_answering(|| Ok(SaveOutcome::Duplicate)).await;
        assert!(matches!(&action, Action::Acknowledge(Settled::Duplicate(p)) if *p == pay_1()), "{action:?}");
    }

    #[tokio::test]
    async fn a_conflict_is_dead_lettered_with_both_versions() {
        let action = handle_answering(|| {
            Ok(SaveOutcome::conflict(Payment::parse("pay-1", 5, "EUR").expect("valid"), pay_1()))
        })
        .await;
        let Action::DeadLetter(rejection) = action else { panic!("expected a dead letter, got {action:?}") };
        assert_eq!(rejection.kind(), DeadLetterKind::Conflict);
        let conflict = rejection.into_conflict().expect("both versions");
        assert_eq!(conflict.stored.amount.minor_units(), 5);
        assert_eq!(conflict.incoming, pay_1());
    }

    /// Records what a handler reports about its saves.
    #[derive(Default)]
    struct SavesSeen(std::sync::Mutex<Vec<StoreAnswer>>);

    impl Observer for SavesSeen {
        fn saved(&self, took: std::time::Duration, answer: StoreAnswer) {
            assert!(took < std::time::Duration::from_secs(60), "a plausible time: {took:?}");
            self.0.lock().expect("not poisoned").push(answer);
        }
    }

    #[tokio::test]
    async fn a_watched_handler_reports_each_save_and_how_it_ended() {
        let answers = [
            Ok(SaveOutcome::New),
            Ok(SaveOutcome::Duplicate),
            Err(RepositoryError::unavailable("down")),
            Err(RepositoryError::failed("refused")),
        ];
        let mut repository = MockPaymentsRepository::new();
        let mut script = answers.into_iter();
        repository.expect_save().times(4).returning(move |_| script.next().expect("four saves"));
        let seen = Arc::new(SavesSeen::default());
        let handler =
            Handler::new(Arc::new(repository)).with_observer(Arc::clone(&seen) as Arc<dyn Observer>);
        for _ in 0..4 {
            handler.handle(&body(EVENT)).await;
        }
        // An invalid message never reaches the store, so it reports no save.
        handler.handle(&body(b"not json")).await;
        assert_eq!(
            *seen.0.lock().expect("not poisoned"),
            [StoreAnswer::Answered, StoreAnswer::Answered, StoreAnswer::Unavailable, StoreAnswer::Failed]
        );
    }

    #[tokio::test]
    async fn invalid_input_is_dead_lettered_without_touching_the_store() {
        let mut repository = MockPaymentsRepository::new();
        repository.expect_save().never();
        let handler = Handler::new(Arc::new(repository));
        let action =
            handler.handle(&body(br#"{"payment_id": "pay-1", "amount": -5, "currency": "EUR"}"#)).await;
        let Action::DeadLetter(Rejection::Invalid(InvalidEvent::Field(err))) = &action else {
            panic!("expected an invalid amount, got {action:?}");
        };
        assert_eq!(err.field(), Field::Amount);

        let unreadable =
            Payload::Unreadable { reason: "no payload field".into(), raw: Bytes::from_static(b"x=1") };
        let action = handler.handle(&unreadable).await;
        assert!(
            matches!(&action, Action::DeadLetter(r) if r.kind() == DeadLetterKind::Invalid
                && r.to_string() == "unreadable message: no payload field"),
            "{action:?}"
        );

        let too_large = Payload::TooLarge { len: 70_000, limit: 65_536, head: Bytes::new() };
        let action = handler.handle(&too_large).await;
        let Action::DeadLetter(rejection) = action else { panic!("expected a dead letter, got {action:?}") };
        assert_eq!(rejection, Rejection::TooLarge { len: 70_000, limit: 65_536 });
        assert_eq!(rejection.kind(), DeadLetterKind::TooLarge);
    }

    #[tokio::test]
    async fn an_unavailable_store_means_retry_without_acknowledging() {
        let action = handle_answering(|| Err(RepositoryError::unavailable("connection refused"))).await;
        assert!(matches!(action, Action::Retry { payment, .. } if payment == pay_1().id), "{action:?}");
    }

    #[tokio::test]
    async fn a_failed_store_means_stop_without_acknowledging() {
        let action = handle_answering(|| Err(RepositoryError::failed("journal poisoned"))).await;
        assert!(matches!(action, Action::Stop { payment, .. } if payment == pay_1().id), "{action:?}");
    }
}
