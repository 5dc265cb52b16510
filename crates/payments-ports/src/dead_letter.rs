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
}

impl DeadLetterKind {
    /// The kind's name in dead letters: `conflict`, `invalid` or `too_large`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Conflict => "conflict",
            Self::Invalid => "invalid",
            Self::TooLarge => "too_large",
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
#[async_trait]
pub trait DeadLetterSink: Send + Sync {
    /// Writes `letter`. MUST return `Ok` only once the letter is durable, because the message is
    /// acknowledged right after.
    ///
    /// # Errors
    ///
    /// When the letter could not be made durable; the message is then not acknowledged.
    async fn put(&self, letter: &DeadLetter) -> Result<(), DeadLetterError>;
}

/// Why a dead letter could not be written. The consumer treats it like a store failure: the
/// message is not acknowledged.
#[derive(Debug, thiserror::Error)]
#[error("cannot write dead letter to {target}: {message}")]
pub struct DeadLetterError {
    /// Where the letter was going.
    pub target: String,
    /// What failed.
    pub message: String,
    /// The sink's own error.
    #[source]
    pub source: Option<BoxError>,
}
