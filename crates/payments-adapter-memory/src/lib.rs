//! An in-memory [`PaymentsRepository`]: correct under concurrency, and forgets everything when the process exits.
//!
//! Use it for tests, demos and the simulator. It is the reference for the contract's atomicity:
//! the lookup and the insert happen under one lock, in one step, so two concurrent saves of the
//! same payment cannot both see it absent (the race of the textbook "set of seen IDs").

use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use hashbrown::HashMap;
use hashbrown::hash_map::Entry;
use payments_ports::domain::{Amount, Currency, Payment, PaymentId, SaveOutcome, decide};
use payments_ports::{PaymentsRepository, RepositoryError};

/// Payments held in a hash map behind one mutex.
///
/// The critical section is a single hash-map operation, so a plain mutex beats sharding at the
/// concurrency a consumer runs with.
#[derive(Debug, Default)]
pub struct MemoryPaymentsRepository {
    payments: Mutex<HashMap<PaymentId, (Amount, Currency), foldhash::fast::RandomState>>,
}

impl MemoryPaymentsRepository {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn payments(
        &self,
    ) -> MutexGuard<'_, HashMap<PaymentId, (Amount, Currency), foldhash::fast::RandomState>> {
        // A panic while holding the lock cannot leave the map half-updated: every critical section
        // is one hash-map call. So the data is still consistent, and a poisoned lock is safe to reuse.
        self.payments.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl PaymentsRepository for MemoryPaymentsRepository {
    async fn save(&self, payment: &Payment) -> Result<SaveOutcome, RepositoryError> {
        // Lookup and insert under one lock: this is the whole point of the adapter.
        let mut payments = self.payments();
        Ok(match payments.entry(payment.id) {
            Entry::Vacant(slot) => {
                slot.insert((payment.amount, payment.currency));
                SaveOutcome::New
            }
            Entry::Occupied(slot) => {
                let &(amount, currency) = slot.get();
                decide(Some(&Payment::new(payment.id, amount, currency)), payment)
            }
        })
    }

    async fn get(&self, id: &PaymentId) -> Result<Option<Payment>, RepositoryError> {
        Ok(self.payments().get(id).map(|&(amount, currency)| Payment::new(*id, amount, currency)))
    }

    async fn count(&self) -> Result<u64, RepositoryError> {
        Ok(self.payments().len() as u64)
    }

    async fn list(&self, after: Option<PaymentId>, limit: usize) -> Result<Vec<Payment>, RepositoryError> {
        // A hash map has no order, so each page is a scan plus a partial sort. Fine for the sizes an
        // in-memory store holds; a store that exports often keeps an ordered index instead.
        let mut page: Vec<Payment> = self
            .payments()
            .iter()
            .filter(|(id, _)| after.is_none_or(|after| **id > after))
            .map(|(&id, &(amount, currency))| Payment::new(id, amount, currency))
            .collect();
        if page.len() > limit {
            page.select_nth_unstable_by_key(limit, |p| p.id);
            page.truncate(limit);
        }
        page.sort_unstable_by_key(|p| p.id);
        Ok(page)
    }
}
