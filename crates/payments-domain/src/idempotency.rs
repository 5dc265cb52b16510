//! The idempotency rule: what saving a payment means, given what the store already holds under its ID.

use crate::payment::Payment;

/// The answer to "save this payment": the only three things that can happen to a valid payment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SaveOutcome {
    /// The ID was absent: the payment is now recorded.
    New,
    /// The same payment (same ID, amount and currency) was already recorded; nothing changed.
    /// Expected under at-least-once delivery, and never an error.
    Duplicate,
    /// Another payment is recorded under this ID; nothing changed, and nothing ever overwrites it.
    Conflict(Box<Conflict>),
}

impl SaveOutcome {
    /// A conflict between the `stored` payment and the `incoming` one.
    pub fn conflict(stored: Payment, incoming: Payment) -> Self {
        Self::Conflict(Box::new(Conflict { stored, incoming }))
    }

    /// Whether this outcome recorded the payment.
    pub const fn is_new(&self) -> bool {
        matches!(self, Self::New)
    }
}

/// The same payment ID with a different amount or currency: both versions, for the dead letter.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("payment {} conflicts: stored {} {}, incoming {} {}", stored.id, stored.amount, stored.currency, incoming.amount, incoming.currency)]
pub struct Conflict {
    /// What the store holds; it stays.
    pub stored: Payment,
    /// What arrived; it is not applied.
    pub incoming: Payment,
}

/// Decides what saving `incoming` means when the store holds `stored` under the same ID.
///
/// Compares the domain fields only (ID, amount, currency): how or when a payment arrived is not
/// part of its identity. A store calls this with what it found, inside the same atomic step as the
/// insert, so that the decision and the effect cannot be separated by another writer.
///
/// `stored` must have the same ID as `incoming`; a store that passes another is broken, and the
/// mismatch is reported as a conflict rather than hidden.
pub fn decide(stored: Option<&Payment>, incoming: &Payment) -> SaveOutcome {
    match stored {
        None => SaveOutcome::New,
        Some(stored) if stored == incoming => SaveOutcome::Duplicate,
        Some(stored) => SaveOutcome::conflict(stored.clone(), incoming.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payment(id: &str, amount: u64, currency: &str) -> Payment {
        Payment::parse(id, amount, currency).expect("valid payment")
    }

    #[test]
    fn absent_is_new() {
        assert_eq!(decide(None, &payment("p", 1, "EUR")), SaveOutcome::New);
    }

    #[test]
    fn identical_is_a_duplicate() {
        let p = payment("p", 1, "EUR");
        assert_eq!(decide(Some(&p.clone()), &p), SaveOutcome::Duplicate);
    }

    #[test]
    fn a_different_amount_or_currency_is_a_conflict_carrying_both_versions() {
        let stored = payment("p", 1, "EUR");
        for incoming in [payment("p", 2, "EUR"), payment("p", 1, "USD"), payment("p", 2, "USD")] {
            let outcome = decide(Some(&stored), &incoming);
            assert_eq!(outcome, SaveOutcome::conflict(stored.clone(), incoming.clone()));
        }
        let SaveOutcome::Conflict(conflict) = decide(Some(&stored), &payment("p", 2, "USD")) else {
            panic!("expected a conflict");
        };
        assert_eq!(conflict.to_string(), "payment p conflicts: stored 1 EUR, incoming 2 USD");
    }
}
