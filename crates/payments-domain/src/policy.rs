//! The delivery policy: what the consumer does with a message, given how handling it ended.
//!
//! This is the half of idempotency that lives outside the store. A duplicate is acknowledged like
//! a new payment, because an error would make the broker redeliver it forever; a message that can
//! never succeed is dead-lettered and acknowledged; a store outage is never the message's fault.

/// How handling one delivery ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Handling {
    /// The payment was recorded.
    New,
    /// The same payment was already recorded.
    Duplicate,
    /// Another payment is recorded under the same ID.
    Conflict,
    /// The message cannot be decoded or breaks a domain rule (too large included).
    Invalid,
    /// The store could not be reached or is overloaded; trying again later may work.
    StoreUnavailable,
    /// The store failed in a way that retrying this message cannot fix (a poisoned journal, a
    /// broken schema): the consumer must stop before it acknowledges anything else.
    StoreFailed,
}

/// What the consumer does with the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Disposition {
    /// Acknowledge it: the effect is durable (or already was).
    Acknowledge,
    /// Write it to the dead letters with the reason, make that durable, then acknowledge it.
    /// No retry can fix it.
    DeadLetterThenAcknowledge,
    /// Do not acknowledge it; handle it again after a backoff.
    RetryWithoutAcknowledging,
    /// Do not acknowledge it, and stop taking deliveries: the source will deliver it again to the
    /// next consumer that has a working store.
    StopWithoutAcknowledging,
}

impl Disposition {
    /// Whether the message is acknowledged (after its dead letter, if any).
    pub const fn acknowledges(self) -> bool {
        matches!(self, Self::Acknowledge | Self::DeadLetterThenAcknowledge)
    }
}

/// The policy itself. Exhaustive on purpose: a new kind of outcome does not compile until someone
/// decides what happens to its message.
pub const fn disposition(handling: Handling) -> Disposition {
    match handling {
        Handling::New | Handling::Duplicate => Disposition::Acknowledge,
        Handling::Conflict | Handling::Invalid => Disposition::DeadLetterThenAcknowledge,
        Handling::StoreUnavailable => Disposition::RetryWithoutAcknowledging,
        Handling::StoreFailed => Disposition::StopWithoutAcknowledging,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_its_disposition() {
        let table = [
            (Handling::New, Disposition::Acknowledge),
            (Handling::Duplicate, Disposition::Acknowledge),
            (Handling::Conflict, Disposition::DeadLetterThenAcknowledge),
            (Handling::Invalid, Disposition::DeadLetterThenAcknowledge),
            (Handling::StoreUnavailable, Disposition::RetryWithoutAcknowledging),
            (Handling::StoreFailed, Disposition::StopWithoutAcknowledging),
        ];
        for (handling, expected) in table {
            assert_eq!(disposition(handling), expected, "{handling:?}");
        }
    }

    #[test]
    fn only_store_failures_leave_a_message_unacknowledged() {
        for handling in [Handling::New, Handling::Duplicate, Handling::Conflict, Handling::Invalid] {
            assert!(disposition(handling).acknowledges(), "{handling:?}");
        }
        for handling in [Handling::StoreUnavailable, Handling::StoreFailed] {
            assert!(!disposition(handling).acknowledges(), "{handling:?}");
        }
    }
}
