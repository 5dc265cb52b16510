//! The driven port for messages that can never succeed: [`DeadLetterSink`].
//!
//! A dead-lettered message is acknowledged right after its letter is written, so the letter is its
//! only trace: a sink must make it durable before it returns, and must keep it whole (the raw
//! payload, the reason, both versions of a conflict).

use async_trait::async_trait;
use payments_domain::Conflict;

use crate::BoxError;
use crate::source::Payload;

/// Why a message was dead-lettered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeadLetterKind {
    /// The same payment ID arrived with another amount or currency.
    Conflict,
    /// The message cannot be decoded or breaks a domain rule.
    Invalid,
    /// The message is over the size limit.
    TooLarge,
    /// The message was delivered more often than the source's delivery limit allows.
    TooManyAttempts,
}

impl DeadLetterKind {
    /// The kind's name in dead letters: `conflict`, `invalid`, `too_large` or `too_many_attempts`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Conflict => "conflict",
            Self::Invalid => "invalid",
            Self::TooLarge => "too_large",
            Self::TooManyAttempts => "too_many_attempts",
        }
    }
}

/// A message that can never succeed, with everything needed to understand and replay it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// Why it was dead-lettered.
    pub kind: DeadLetterKind,
    /// The reason in words: which field was wrong, or both versions of a conflict.
    pub reason: String,
    /// Where it came from (the receipt's origin).
    pub origin: String,
    /// Which delivery of the message this was.
    pub attempt: u32,
    /// The message as it arrived (only its head when it was too large).
    pub payload: Payload,
    /// Both versions, for a conflict.
    pub conflict: Option<Conflict>,
}

/// Where dead letters go.
///
/// # Contract
///
/// 1. [`put`](Self::put) MUST return `Ok` only once the letter is durable (synced to disk,
///    confirmed by a broker), because the message is acknowledged right after.
/// 2. A letter MUST be kept whole: its payload byte for byte, its reason, origin and attempt, and
///    both versions of a conflict.
/// 3. A failure MUST be an error: [`DeadLetterError::Unavailable`] when the same call may succeed
///    later (a full disk, a broker that is down), [`DeadLetterError::Failed`] when it will not.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait DeadLetterSink: Send + Sync {
    /// Writes `letter`, durably.
    ///
    /// # Errors
    ///
    /// When the letter could not be made durable; the message is then not acknowledged.
    async fn put(&self, letter: &DeadLetter) -> Result<(), DeadLetterError>;

    /// Flushes and releases what the sink holds (a connection, a file). Called once, when the
    /// consumer is done. The default does nothing.
    ///
    /// # Errors
    ///
    /// When something accepted could not be flushed.
    async fn close(&self) -> Result<(), DeadLetterError> {
        Ok(())
    }
}

/// Why a dead letter could not be written. Its message is not acknowledged either way.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeadLetterError {
    /// The sink cannot take the letter now (a full disk, a broker that is down); the consumer
    /// retries with backoff, as it does for an unavailable store.
    #[error("cannot write dead letter to {target} now")]
    Unavailable {
        /// Where the letter was going.
        target: String,
        /// The sink's own error.
        #[source]
        source: Option<BoxError>,
    },
    /// The sink failed in a way a retry will not fix; the consumer stops.
    #[error("cannot write dead letter to {target}")]
    Failed {
        /// Where the letter was going.
        target: String,
        /// The sink's own error.
        #[source]
        source: Option<BoxError>,
    },
}

impl DeadLetterError {
    /// An [`Unavailable`](Self::Unavailable) error for `target`, caused by `source`.
    pub fn unavailable_because(target: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Unavailable { target: target.into(), source: Some(source.into()) }
    }

    /// A [`Failed`](Self::Failed) error for `target`, caused by `source`.
    pub fn failed_because(target: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Failed { target: target.into(), source: Some(source.into()) }
    }

    /// An I/O error writing to `target`, sorted by whether retrying may help: a full disk or a
    /// quota, an interrupted or timed-out write may clear; anything else (a read-only file
    /// system, a closed descriptor) will not.
    pub fn from_io(target: impl Into<String>, err: std::io::Error) -> Self {
        use std::io::ErrorKind;
        match err.kind() {
            ErrorKind::StorageFull
            | ErrorKind::QuotaExceeded
            | ErrorKind::Interrupted
            | ErrorKind::TimedOut
            | ErrorKind::WouldBlock => Self::unavailable_because(target, err),
            _ => Self::failed_because(target, err),
        }
    }

    /// Whether the same call may succeed later, so that retrying is worth it.
    pub const fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_names_its_target_once_and_keeps_the_cause_as_its_source() {
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        let cause = full.to_string();
        let err = DeadLetterError::from_io("data/dead.jsonl", full);
        assert!(err.is_unavailable(), "a full disk may clear: {err:?}");
        assert_eq!(
            crate::error_chain(&err),
            format!("cannot write dead letter to data/dead.jsonl now: {cause}")
        );

        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let err = DeadLetterError::from_io("data/dead.jsonl", denied);
        assert!(!err.is_unavailable(), "a permission error will not clear by itself: {err:?}");
    }
}
