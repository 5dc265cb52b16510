//! A decorator that lets the simulation check what really happened: every `New` the store reported.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use payments_ports::domain::{Payment, PaymentId, SaveOutcome};
use payments_ports::{PaymentsRepository, RepositoryError};

/// The payments a store reported new, with how often each ID was.
pub(crate) type NewOutcomes = Arc<Mutex<HashMap<PaymentId, (Payment, u32)>>>;

/// A repository that records each `New` it passes on.
pub(crate) struct Recording {
    pub(crate) inner: Arc<dyn PaymentsRepository>,
    pub(crate) news: NewOutcomes,
}

#[async_trait]
impl PaymentsRepository for Recording {
    async fn save(&self, payment: &Payment) -> Result<SaveOutcome, RepositoryError> {
        let outcome = self.inner.save(payment).await?;
        if outcome.is_new() {
            let mut news = self.news.lock().unwrap_or_else(PoisonError::into_inner);
            news.entry(payment.id).or_insert_with(|| (payment.clone(), 0)).1 += 1;
        }
        Ok(outcome)
    }

    async fn get(&self, id: &PaymentId) -> Result<Option<Payment>, RepositoryError> {
        self.inner.get(id).await
    }

    async fn count(&self) -> Result<u64, RepositoryError> {
        self.inner.count().await
    }

    async fn list(&self, after: Option<PaymentId>, limit: usize) -> Result<Vec<Payment>, RepositoryError> {
        self.inner.list(after, limit).await
    }
}
