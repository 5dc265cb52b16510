//! The use case: decode a message, validate it into a payment, save it through the repository, and
//! say how it went ([`Handled`]), which the delivery policy turns into what happens to the message.

use std::sync::Arc;

use payments_ports::domain::policy::{self, Disposition, Handling};
use payments_ports::domain::{Conflict, InvalidEvent, Payment, SaveOutcome, event};
use payments_ports::{Payload, PaymentsRepository, RepositoryError};

/// How handling one message ended.
#[derive(Debug)]
pub enum Handled {
    /// The payment was recorded.
    New(Payment),
    /// The same payment was already recorded; nothing changed.
    Duplicate(Payment),
    /// Another payment is recorded under the same ID; nothing changed.
    Conflict(Box<Conflict>),
    /// The message can never be a valid payment.
    Invalid(Rejection),
    /// The store cannot answer now; the message must be handled again later.
    StoreUnavailable(RepositoryError),
    /// The store failed for good; the consumer must stop without acknowledging.
    StoreFailed(RepositoryError),
}

/// Why a message can never be a valid payment.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Not a valid `PaymentTaken` event.
    #[error(transparent)]
    Event(#[from] InvalidEvent),
    /// Over the size limit; never read whole.
    #[error("message is {len} bytes long, over the limit of {limit} bytes")]
    TooLarge {
        /// Its length in bytes.
        len: u64,
        /// The limit, in bytes.
        limit: usize,
    },
}

impl Handled {
    /// The outcome as the delivery policy sees it.
    pub const fn handling(&self) -> Handling {
        match self {
            Self::New(_) => Handling::New,
            Self::Duplicate(_) => Handling::Duplicate,
            Self::Conflict(_) => Handling::Conflict,
            Self::Invalid(_) => Handling::Invalid,
            Self::StoreUnavailable(_) => Handling::StoreUnavailable,
            Self::StoreFailed(_) => Handling::StoreFailed,
        }
    }

    /// What the consumer does with the message: the domain's delivery policy applied to this outcome.
    pub const fn disposition(&self) -> Disposition {
        policy::disposition(self.handling())
    }

    /// The store's error, for the outcomes that leave the message unacknowledged; any other
    /// outcome becomes a [`RepositoryError::Failed`] that says so (the policy never asks for that).
    pub fn into_store_error(self) -> RepositoryError {
        match self {
            Self::StoreUnavailable(err) | Self::StoreFailed(err) => err,
            other => RepositoryError::failed(format!("no store error for outcome {other:?}")),
        }
    }
}

/// The payments use case, over any [`PaymentsRepository`].
#[derive(Clone)]
pub struct Handler {
    repository: Arc<dyn PaymentsRepository>,
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handler").finish_non_exhaustive()
    }
}

impl Handler {
    /// A handler that records payments in `repository`.
    pub fn new(repository: Arc<dyn PaymentsRepository>) -> Self {
        Self { repository }
    }

    /// The repository this handler records into.
    pub fn repository(&self) -> &Arc<dyn PaymentsRepository> {
        &self.repository
    }

    /// Handles one message body. Never fails: every way it can end is a [`Handled`].
    pub async fn handle(&self, payload: &[u8]) -> Handled {
        let payment = match event::decode(payload) {
            Ok(payment) => payment,
            Err(invalid) => return Handled::Invalid(Rejection::Event(invalid)),
        };
        match self.repository.save(&payment).await {
            Ok(SaveOutcome::New) => Handled::New(payment),
            Ok(SaveOutcome::Duplicate) => Handled::Duplicate(payment),
            Ok(SaveOutcome::Conflict(conflict)) => Handled::Conflict(conflict),
            Err(err) if err.is_unavailable() => Handled::StoreUnavailable(err),
            Err(err) => Handled::StoreFailed(err),
        }
    }

    /// Handles a delivery's payload: a body over the size limit is invalid without being decoded.
    pub async fn handle_payload(&self, payload: &Payload) -> Handled {
        match payload {
            Payload::Complete(body) => self.handle(body).await,
            Payload::TooLarge { len, limit, .. } => {
                Handled::Invalid(Rejection::TooLarge { len: *len, limit: *limit })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use payments_ports::MockPaymentsRepository;
    use payments_ports::domain::Field;

    use super::*;

    const EVENT: &[u8] = br#"{"payment_id": "pay-1", "amount": 1999, "currency": "EUR"}"#;

    fn pay_1() -> Payment {
        Payment::parse("pay-1", 1999, "EUR").expect("valid")
    }

    /// A handler over a mock that answers the one expected save of pay-1 with `answer`.
    fn handler_answering(answer: fn() -> Result<SaveOutcome, RepositoryError>) -> Handler {
        let mut repository = MockPaymentsRepository::new();
        repository.expect_save().withf(|p| *p == pay_1()).times(1).returning(move |_| answer());
        Handler::new(Arc::new(repository))
    }

    #[tokio::test]
    async fn a_new_payment_is_acknowledged() {
        let handled = handler_answering(|| Ok(SaveOutcome::New)).handle(EVENT).await;
        assert!(matches!(&handled, Handled::New(p) if *p == pay_1()), "{handled:?}");
        assert_eq!(handled.disposition(), Disposition::Acknowledge);
    }

    #[tokio::test]
    async fn a_duplicate_is_acknowledged_without_error() {
        let handled = handler_answering(|| Ok(SaveOutcome::Duplicate)).handle(EVENT).await;
        assert!(matches!(&handled, Handled::Duplicate(p) if *p == pay_1()), "{handled:?}");
        assert_eq!(handled.disposition(), Disposition::Acknowledge);
    }

    #[tokio::test]
    async fn a_conflict_is_dead_lettered_with_both_versions_and_acknowledged() {
        let handled = handler_answering(|| {
            Ok(SaveOutcome::conflict(Payment::parse("pay-1", 5, "EUR").expect("valid"), pay_1()))
        })
        .handle(EVENT)
        .await;
        let Handled::Conflict(conflict) = &handled else { panic!("expected a conflict, got {handled:?}") };
        assert_eq!(conflict.stored.amount.minor_units(), 5);
        assert_eq!(conflict.incoming, pay_1());
        assert_eq!(handled.disposition(), Disposition::DeadLetterThenAcknowledge);
    }

    #[tokio::test]
    async fn invalid_input_is_dead_lettered_and_acknowledged_without_touching_the_store() {
        let mut repository = MockPaymentsRepository::new();
        repository.expect_save().never();
        let handler = Handler::new(Arc::new(repository));
        let handled = handler.handle(br#"{"payment_id": "pay-1", "amount": -5, "currency": "EUR"}"#).await;
        let Handled::Invalid(Rejection::Event(InvalidEvent::Field(err))) = &handled else {
            panic!("expected an invalid amount, got {handled:?}");
        };
        assert_eq!(err.field(), Field::Amount);
        assert_eq!(handled.disposition(), Disposition::DeadLetterThenAcknowledge);

        let too_large = Payload::TooLarge { len: 70_000, limit: 65_536, head: bytes::Bytes::new() };
        let handled = handler.handle_payload(&too_large).await;
        assert!(matches!(handled, Handled::Invalid(Rejection::TooLarge { len: 70_000, limit: 65_536 })));
        assert_eq!(handled.disposition(), Disposition::DeadLetterThenAcknowledge);
    }

    #[tokio::test]
    async fn an_unavailable_store_means_retry_without_acknowledging() {
        let handled =
            handler_answering(|| Err(RepositoryError::unavailable("connection refused"))).handle(EVENT).await;
        assert!(matches!(handled, Handled::StoreUnavailable(_)), "{handled:?}");
        assert_eq!(handled.disposition(), Disposition::RetryWithoutAcknowledging);
    }

    #[tokio::test]
    async fn a_failed_store_means_stop_without_acknowledging() {
        let handled =
            handler_answering(|| Err(RepositoryError::failed("journal poisoned"))).handle(EVENT).await;
        assert!(matches!(handled, Handled::StoreFailed(_)), "{handled:?}");
        assert_eq!(handled.disposition(), Disposition::StopWithoutAcknowledging);
    }
}
