//! The driven port of the transactional outbox: [`Outbox`], one relay's hold on the
//! `PaymentRecorded` events a store recorded with its payments, and its contract.

use std::time::SystemTime;

use async_trait::async_trait;
use payments_domain::PaymentRecorded;

use crate::RepositoryError;

/// One relay's handle on a store's outbox: the [`PaymentRecorded`] event of every payment the store
/// recorded, kept until a relay marks it published. A handle comes from
/// [`PaymentsRepository::outbox`](crate::PaymentsRepository::outbox).
///
/// A relay claims a batch, publishes it, waits for the broker's confirmation, and only then marks
/// it published. A crash anywhere in between leaves the batch unmarked, so it is handed out again
/// and published again, with the same message IDs: at least once, never zero times.
///
/// # Contract
///
/// Every adapter that keeps an outbox MUST keep each of these sentences; `payments-conformance`
/// checks them with cases named after them, under the `outbox` capability.
///
/// **Recording** (through [`PaymentsRepository::save`](crate::PaymentsRepository::save), once the
/// outbox is on):
///
/// 1. Every save reported [`New`](payments_domain::SaveOutcome::New) MUST put the payment's event in
///    the outbox in the same atomic step as the payment: no crash, at any instant, leaves the
///    payment without its event or the event without its payment.
/// 2. A save reported `Duplicate` or `Conflict` MUST add nothing to the outbox.
///
/// **Relaying**:
///
/// 3. [`claim`](Self::claim) MUST hand out up to `limit` events not yet marked published, oldest
///    first as far as the store orders them, each the event of a recorded payment, with the time
///    it was recorded (the same on every handing out).
/// 4. While a handle holds a claim, no other handle MUST be handed any of its events. A new claim
///    of the same handle first gives back the previous one, if it was not marked.
/// 5. Claiming and marking until a claim comes back empty MUST hand out every event committed
///    before the first of those claims, whatever saves run at the same time: none is skipped
///    because another save committed after it, or before it, or at the same instant.
/// 6. [`mark_published`](Self::mark_published) MUST mark every event of the handle's last claim,
///    so that no claim of any handle hands it out again, after a reopen too (for a durable store).
/// 7. An event claimed and not marked MUST be handed out again: to the next claim once its holder
///    is dropped, closed or killed, and after a reopen.
/// 8. [`backlog`](Self::backlog) MUST count the events not yet marked (claimed or not) and give the
///    time the oldest of them was recorded.
/// 9. A failure MUST be an error, as for the repository: `Unavailable` when a retry may work,
///    `Failed` when it will not; after an error nothing is marked that was not marked before.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait Outbox: Send {
    /// Hands this relay up to `limit` events to publish, oldest first, and holds them for it until
    /// [`mark_published`](Self::mark_published), the next claim, or the handle's end. An empty
    /// batch means nothing waits now.
    ///
    /// # Errors
    ///
    /// When the store fails; the previous claim is given back all the same.
    async fn claim(&mut self, limit: usize) -> Result<Vec<PaymentRecorded>, RepositoryError>;

    /// Marks every event of the last claim published, for good. Call it only once the broker has
    /// confirmed them all. Marking with no claim held does nothing.
    ///
    /// # Errors
    ///
    /// When the store fails: the events are then still unmarked, and handed out again.
    async fn mark_published(&mut self) -> Result<(), RepositoryError>;

    /// How many events wait to be published, and since when.
    ///
    /// # Errors
    ///
    /// When the store fails.
    async fn backlog(&mut self) -> Result<OutboxBacklog, RepositoryError>;

    /// Gives back what the handle holds and releases its connection or file. The default does
    /// nothing; dropping a handle gives its claim back too, later.
    ///
    /// # Errors
    ///
    /// When the store fails while giving back.
    async fn close(&mut self) -> Result<(), RepositoryError> {
        Ok(())
    }
}

/// What waits in an outbox.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutboxBacklog {
    /// Events not yet marked published.
    pub pending: u64,
    /// When the oldest of them was recorded; `None` when none waits.
    pub oldest: Option<SystemTime>,
}
