//! An in-memory [`PaymentsRepository`]: correct under concurrency, and forgets everything when the process exits.
//!
//! Use it for tests, demos and the simulator. It is the reference for the contract's atomicity:
//! the lookup and the insert happen under one lock, in one step, so two concurrent saves of the
//! same payment cannot both see it absent (the race of the textbook "set of seen IDs").

use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use hashbrown::HashTable;
use payments_ports::domain::{Payment, PaymentId, SaveOutcome, decide};
use payments_ports::{PaymentsRepository, RepositoryError};

/// Payments in insertion order, and a hash table of positions into them.
///
/// A plain `HashMap<PaymentId, _>` would do, but its 80-byte slots spread every lookup over a
/// table too large for the cache; 4-byte slots keep the table small, and the payments themselves
/// sit in the order they arrived (docs/PERFORMANCE.md has the figures).
#[derive(Debug, Default)]
struct Payments {
    table: HashTable<u32>,
    entries: Vec<Payment>,
    /// Randomly seeded: payment IDs come from outside, and must not be able to force collisions.
    hasher: foldhash::quality::RandomState,
}

impl Payments {
    fn find(&self, id: &PaymentId) -> Option<&Payment> {
        let hash = self.hasher.hash_one(id);
        self.table
            .find(hash, |&slot| self.entries[slot as usize].id == *id)
            .map(|&slot| &self.entries[slot as usize])
    }

    fn insert(&mut self, payment: Payment) {
        // Beyond u32::MAX payments the slot would wrap: refuse loudly rather than corrupt the index.
        let slot =
            u32::try_from(self.entries.len()).expect("the memory store holds at most u32::MAX payments");
        let hash = self.hasher.hash_one(payment.id);
        self.entries.push(payment);
        let (entries, hasher) = (&self.entries, &self.hasher);
        self.table.insert_unique(hash, slot, |&other| hasher.hash_one(entries[other as usize].id));
    }
}

/// Payments held in memory behind one mutex.
///
/// The critical section is a single lookup (and insert), so a plain mutex beats sharding at the
/// concurrency a consumer runs with.
#[derive(Debug, Default)]
pub struct MemoryPaymentsRepository {
    payments: Mutex<Payments>,
}

impl MemoryPaymentsRepository {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn payments(&self) -> MutexGuard<'_, Payments> {
        // A panic while holding the lock cannot leave the store half-updated: the only update is
        // a push followed by an insert of its position, and neither can panic below u32::MAX
        // payments. So the data is consistent, and a poisoned lock is safe to reuse.
        self.payments.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl PaymentsRepository for MemoryPaymentsRepository {
    async fn save(&self, payment: &Payment) -> Result<SaveOutcome, RepositoryError> {
        // The whole point of the adapter: the lookup, the decision and the insert happen under one
        // lock, so no other save can come between "absent" and "recorded".
        let mut payments = self.payments();
        let outcome = decide(payments.find(&payment.id), payment);
        if outcome.is_new() {
            payments.insert(payment.clone());
        }
        Ok(outcome)
    }

    async fn get(&self, id: &PaymentId) -> Result<Option<Payment>, RepositoryError> {
        Ok(self.payments().find(id).cloned())
    }

    async fn count(&self) -> Result<u64, RepositoryError> {
        Ok(self.payments().entries.len() as u64)
    }

    async fn list(&self, after: Option<PaymentId>, limit: usize) -> Result<Vec<Payment>, RepositoryError> {
        // Entries are in arrival order, so each page is a scan plus a partial sort. Fine for the
        // sizes an in-memory store holds; a store that exports often keeps an ordered index.
        let mut page: Vec<Payment> = self
            .payments()
            .entries
            .iter()
            .filter(|p| after.is_none_or(|after| p.id > after))
            .cloned()
            .collect();
        if page.len() > limit {
            page.select_nth_unstable_by_key(limit, |p| p.id);
            page.truncate(limit);
        }
        page.sort_unstable_by_key(|p| p.id);
        Ok(page)
    }
}
