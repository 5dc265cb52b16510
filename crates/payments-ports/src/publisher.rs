//! The driven port for outgoing messages: [`Publisher`], for `payments-app publish` and the
//! outbox relay.

use async_trait::async_trait;
use bytes::Bytes;

use crate::BoxError;

/// One message to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// A stable ID, the same on every publication of the same message, for the broker (JetStream's
    /// `Nats-Msg-Id`) or the next consumer to deduplicate by; `None` when there is none.
    pub id: Option<String>,
    /// The body.
    pub payload: Bytes,
}

/// Where outgoing messages go: a stream, a subject, a queue.
///
/// # Contract
///
/// 1. [`publish`](Self::publish) MUST return `Ok` only once the broker has confirmed every message
///    of the batch (stored it, to whatever durability the broker is configured for).
/// 2. A message MUST arrive byte for byte, with its ID where the broker carries one.
/// 3. After an error, any of the batch's messages may or may not have been stored: the caller
///    publishes them again with the same IDs, so a publisher never promises exactly once, and the
///    next consumer deduplicates.
/// 4. A failure MUST be an error: [`PublishError::Unavailable`] when the same call may succeed
///    later (a broker that is down or overloaded), [`PublishError::Failed`] when it will not.
#[async_trait]
pub trait Publisher: Send + Sync {
    /// Publishes `messages`, in order, and returns once every one is confirmed.
    ///
    /// # Errors
    ///
    /// When the broker did not confirm them all.
    async fn publish(&self, messages: &[OutgoingMessage]) -> Result<(), PublishError>;

    /// Releases the publisher's connections. The default does nothing.
    ///
    /// # Errors
    ///
    /// When something accepted could not be finished.
    async fn close(&self) -> Result<(), PublishError> {
        Ok(())
    }
}

/// Why messages could not be published.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The broker cannot take them now; publishing again later may work.
    #[error("cannot publish to {target} now")]
    Unavailable {
        /// Where they were going, its password redacted.
        target: String,
        /// The broker client's error.
        #[source]
        source: Option<BoxError>,
    },
    /// Publishing cannot work (a missing stream, a refused message).
    #[error("cannot publish to {target}")]
    Failed {
        /// Where they were going, its password redacted.
        target: String,
        /// The broker client's error.
        #[source]
        source: Option<BoxError>,
    },
}

impl PublishError {
    /// An [`Unavailable`](Self::Unavailable) error for `target`, caused by `source`.
    pub fn unavailable_because(target: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Unavailable { target: target.into(), source: Some(source.into()) }
    }

    /// A [`Failed`](Self::Failed) error for `target`, caused by `source`.
    pub fn failed_because(target: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Failed { target: target.into(), source: Some(source.into()) }
    }

    /// Whether publishing again later may work.
    pub const fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}
