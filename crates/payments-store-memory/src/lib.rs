//! An in-memory [`PaymentsRepository`]: correct under concurrency, and forgets everything when the process exits.
//!
//! Use it for tests, demos and the simulator. It is the reference for the contract's atomicity:
//! the lookup and the insert happen under one lock, in one step, so two concurrent saves of the
//! same payment cannot both see it absent (the race of the textbook "set of seen IDs").
//!
//! Its outbox is always on: every new payment's `PaymentRecorded` event is recorded under the same
//! lock, in the same step, and one relay at a time claims events in the order they were recorded.

use std::hash::BuildHasher;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use async_trait::async_trait;
use hashbrown::HashTable;
use payments_ports::domain::{Payment, PaymentId, PaymentRecorded, RecordedAt, SaveOutcome, decide};
use payments_ports::{Outbox, OutboxBacklog, PaymentsRepository, RepositoryError};

/// Payments in insertion order, and a hash table of positions into them.
///
/// A plain `HashMap<PaymentId, _>` would do, but its 80-byte slots spread every lookup over a
/// table too large for the cache; 4-byte slots keep the table small, and the payments themselves
/// sit in the order they arrived (docs/PERFORMANCE.md has the figures).
#[derive(Debug, Default)]
struct Payments {
    table: HashTable<u32>,
    entries: Vec<Payment>,
    /// When each entry was recorded, at the same position.
    recorded_at: Vec<RecordedAt>,
    /// The outbox: every entry is an event, published up to a watermark.
    outbox: OutboxState,
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
        // The event goes in with the payment, in the same step under the same lock.
        self.recorded_at.push(RecordedAt::from_system_time(SystemTime::now()));
        self.entries.push(payment);
        let (entries, hasher) = (&self.entries, &self.hasher);
        self.table.insert_unique(hash, slot, |&other| hasher.hash_one(entries[other as usize].id));
    }
}

/// Where the one relay of a memory store is: entries before `published` are published, those in
/// `claimed` are held by the relay.
#[derive(Debug, Default)]
struct OutboxState {
    published: usize,
    claimed: Option<Range<usize>>,
    /// Whether a relay's handle is alive: one at a time.
    relay: bool,
}

/// Payments held in memory behind one mutex.
///
/// The critical section is a single lookup (and insert), so a plain mutex beats sharding at the
/// concurrency a consumer runs with.
#[derive(Debug, Default)]
pub struct MemoryPaymentsRepository {
    payments: Arc<Mutex<Payments>>,
}

impl MemoryPaymentsRepository {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn payments(&self) -> MutexGuard<'_, Payments> {
        lock(&self.payments)
    }
}

fn lock(payments: &Mutex<Payments>) -> MutexGuard<'_, Payments> {
    // A panic while holding the lock cannot leave the store half-updated: the only update is
    // a push followed by an insert of its position, and neither can panic below u32::MAX
    // payments. So the data is consistent, and a poisoned lock is safe to reuse.
    payments.lock().unwrap_or_else(PoisonError::into_inner)
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

    async fn outbox(&self) -> Result<Option<Box<dyn Outbox>>, RepositoryError> {
        let mut payments = self.payments();
        if payments.outbox.relay {
            return Err(RepositoryError::failed(
                "the memory store's outbox has a relay already: one at a time",
            ));
        }
        payments.outbox.relay = true;
        Ok(Some(Box::new(MemoryOutbox { payments: Arc::clone(&self.payments) })))
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

/// The relay's handle on a memory store's outbox; dropping it gives its claim back.
#[derive(Debug)]
struct MemoryOutbox {
    payments: Arc<Mutex<Payments>>,
}

#[async_trait]
impl Outbox for MemoryOutbox {
    async fn claim(&mut self, limit: usize) -> Result<Vec<PaymentRecorded>, RepositoryError> {
        let mut payments = lock(&self.payments);
        let start = payments.outbox.published;
        let end = payments.entries.len().min(start.saturating_add(limit));
        payments.outbox.claimed = Some(start..end);
        Ok((start..end)
            .map(|at| PaymentRecorded::new(payments.entries[at].clone(), payments.recorded_at[at]))
            .collect())
    }

    async fn mark_published(&mut self) -> Result<(), RepositoryError> {
        let mut payments = lock(&self.payments);
        if let Some(claimed) = payments.outbox.claimed.take() {
            payments.outbox.published = payments.outbox.published.max(claimed.end);
        }
        Ok(())
    }

    async fn backlog(&mut self) -> Result<OutboxBacklog, RepositoryError> {
        let payments = lock(&self.payments);
        let published = payments.outbox.published;
        Ok(OutboxBacklog {
            pending: (payments.entries.len() - published) as u64,
            oldest: payments.recorded_at.get(published).map(|at| at.system_time()),
        })
    }
}

impl Drop for MemoryOutbox {
    fn drop(&mut self) {
        let mut payments = lock(&self.payments);
        payments.outbox.claimed = None;
        payments.outbox.relay = false;
    }
}
