//! Test doubles of the ports, for the tests of the crates that use them (feature `testing`;
//! `mock` adds the mockall mocks): a [`ListSource`] that delivers a list of payloads and records
//! how each delivery was settled, and [`KeptDeadLetters`], a sink that keeps its letters in memory.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::{
    DeadLetter, DeadLetterError, DeadLetterSink, Delivery, DeliverySource, Payload, Receipt, SourceError,
};

/// How the deliveries of a [`ListSource`] were settled, by origin (`message 1`, `message 2`, ...).
#[derive(Clone, Debug, Default)]
pub struct Settlements(Arc<Mutex<Settled>>);

#[derive(Debug, Default)]
struct Settled {
    acked: Vec<String>,
    dropped: Vec<String>,
    renewals: usize,
    closed: bool,
}

impl Settlements {
    fn lock(&self) -> MutexGuard<'_, Settled> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The origins of the acknowledged deliveries, in the order they were acknowledged.
    pub fn acked(&self) -> Vec<String> {
        self.lock().acked.clone()
    }

    /// The origins of the deliveries whose receipt was dropped unacknowledged.
    pub fn dropped(&self) -> Vec<String> {
        self.lock().dropped.clone()
    }

    /// How many times a lease was renewed, over every delivery.
    pub fn renewals(&self) -> usize {
        self.lock().renewals
    }

    /// Whether the source was closed.
    pub fn closed(&self) -> bool {
        self.lock().closed
    }
}

/// A source that delivers a list of payloads once each, in order, then ends (or, like a broker,
/// waits for more that never come).
#[derive(Debug)]
pub struct ListSource {
    payloads: VecDeque<Bytes>,
    delivered: usize,
    settlements: Settlements,
    lease: Option<Duration>,
    wait_at_end: bool,
    outages: usize,
}

impl ListSource {
    /// Delivers `payloads`, then ends.
    pub fn new<P: Into<Bytes>>(payloads: impl IntoIterator<Item = P>) -> Self {
        Self {
            payloads: payloads.into_iter().map(Into::into).collect(),
            delivered: 0,
            settlements: Settlements::default(),
            lease: None,
            wait_at_end: false,
            outages: 0,
        }
    }

    /// Answers the first `reads` reads with an unavailable error, as a broker that is down.
    #[must_use]
    pub fn unavailable_first(mut self, reads: usize) -> Self {
        self.outages = reads;
        self
    }

    /// Gives every receipt this lease.
    #[must_use]
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Waits forever after the last payload instead of ending, as a broker does.
    #[must_use]
    pub fn waiting_at_end(mut self) -> Self {
        self.wait_at_end = true;
        self
    }

    /// How the deliveries are settled, readable after the source is gone.
    pub fn settlements(&self) -> Settlements {
        self.settlements.clone()
    }
}

#[async_trait]
impl DeliverySource for ListSource {
    async fn next(&mut self) -> Result<Option<Delivery>, SourceError> {
        if self.outages > 0 {
            self.outages -= 1;
            return Err(SourceError::unavailable("the list is down"));
        }
        let Some(payload) = self.payloads.pop_front() else {
            if self.wait_at_end {
                std::future::pending::<()>().await;
            }
            return Ok(None);
        };
        self.delivered += 1;
        let receipt = ListReceipt {
            origin: format!("message {}", self.delivered),
            settlements: self.settlements.clone(),
            lease: self.lease,
            acked: false,
        };
        Ok(Some(Delivery { payload: Payload::Complete(payload), attempt: 1, receipt: Box::new(receipt) }))
    }

    async fn close(&mut self) -> Result<(), SourceError> {
        self.settlements.lock().closed = true;
        Ok(())
    }
}

#[derive(Debug)]
struct ListReceipt {
    origin: String,
    settlements: Settlements,
    lease: Option<Duration>,
    acked: bool,
}

impl Receipt for ListReceipt {
    fn origin(&self) -> String {
        self.origin.clone()
    }

    fn ack(mut self: Box<Self>) {
        self.acked = true;
        self.settlements.lock().acked.push(self.origin.clone());
    }

    fn lease(&self) -> Option<Duration> {
        self.lease
    }

    fn renew(&self) {
        self.settlements.lock().renewals += 1;
    }
}

impl Drop for ListReceipt {
    fn drop(&mut self) {
        if !self.acked {
            self.settlements.lock().dropped.push(self.origin.clone());
        }
    }
}

/// A dead-letter sink that keeps every letter in memory.
#[derive(Debug, Default)]
pub struct KeptDeadLetters {
    letters: Mutex<Vec<DeadLetter>>,
}

impl KeptDeadLetters {
    /// The letters written so far, in order.
    pub fn letters(&self) -> Vec<DeadLetter> {
        self.letters.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

#[async_trait]
impl DeadLetterSink for KeptDeadLetters {
    async fn put(&self, letter: &DeadLetter) -> Result<(), DeadLetterError> {
        self.letters.lock().unwrap_or_else(PoisonError::into_inner).push(letter.clone());
        Ok(())
    }
}
