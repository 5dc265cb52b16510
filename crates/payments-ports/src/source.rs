//! The driving port: where deliveries come from ([`DeliverySource`]) and how the consumer settles
//! each one ([`Receipt`]).
//!
//! A broker adapter (Redis Streams, NATS JetStream, RabbitMQ, a JSON-lines file) implements these
//! two traits and nothing else; the consumer in `payments-consumer` decides what to do with each
//! delivery. The shape follows what every at-least-once broker has in common: a message body, how
//! many times it has been delivered, and a way to say "done" — or to say nothing, in which case it
//! comes back.
//!
//! # Contract
//!
//! What a source may **not** promise, and the consumer never assumes: an order (messages arrive in
//! any order, and a redelivery overtakes later messages), or delivery exactly once (any message
//! may arrive twice, even at the same time). The store makes that safe: a redelivery is answered
//! as a duplicate.
//!
//! What every source MUST keep (`payments-conformance`'s source suite checks each sentence with
//! cases named after it, against the real broker; a source declares the capabilities it has, and a
//! case that needs one it lacks is reported as skipped, never passed):
//!
//! **Delivering**
//!
//! 1. Every message published to the destination MUST be delivered, its bytes unchanged (binary,
//!    not UTF-8, empty, large); one over the size limit MUST be delivered as [`Payload::TooLarge`]
//!    with its length and first bytes, never dropped, and one the source cannot make a body of
//!    (a stream entry without its payload field) as [`Payload::Unreadable`].
//! 2. The attempt number MUST be 1 on a message's first delivery and MUST grow with each
//!    redelivery (capability: exact attempt count; a source that cannot count says 1).
//! 3. A message whose receipt was acknowledged MUST NOT be delivered again once the
//!    acknowledgement is sent, which [`DeliverySource::close`] does at the latest.
//!
//! **Redelivering**
//!
//! 4. A receipt dropped without an acknowledgement MUST make its message come back: delivered
//!    again within the source's redelivery timeout, with a higher attempt number. That is the
//!    adapter's job, not the broker's gift: RabbitMQ holds an unacknowledged message until its
//!    channel closes, so a dropped receipt must reject it with requeue; a Redis stream entry stays
//!    pending until someone claims it.
//! 5. A source dropped with receipts in flight (a crash) MUST lose nothing: a source with another
//!    identity in the same group receives every unacknowledged message, within the redelivery
//!    timeout.
//! 6. A source opened again under the same identity MUST get its own unacknowledged messages back.
//! 7. A [`next`](DeliverySource::next) dropped half-way MUST lose nothing: what it had taken from
//!    the broker is delivered again, as if its receipt had been dropped.
//!
//! **Sharing**
//!
//! 8. Sources in one group MUST split the messages between them, none lost; sources in different
//!    groups MUST each receive every message.
//! 9. Deliveries in flight (handed out, neither acknowledged nor dropped) MUST NOT exceed the
//!    source's declared bound (a prefetch, `max_ack_pending`).
//! 10. While the consumer renews a receipt's [lease](Receipt::lease), its message MUST NOT be
//!     delivered to another consumer.
//!
//! **Failing**
//!
//! 11. A lost connection MUST surface as [`SourceError::Unavailable`] (the consumer asks again
//!     with backoff) or be recovered inside the source, and MUST lose nothing; an acknowledgement
//!     made on the old connection MUST be harmless (at worst lost, and its message delivered again).
//! 12. Creating the group, the consumer or the destination again MUST be harmless.
//! 13. An acknowledgement that arrives after the redelivery timeout MUST be harmless (the message
//!     may then come twice; the store makes that safe).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::BoxError;
use crate::observer::BacklogProbe;

/// One arrival of a message. The same message can arrive many times, at the same time, out of order.
#[derive(Debug)]
pub struct Delivery {
    /// The message body, or what is known of it when it is over the size limit.
    pub payload: Payload,
    /// 1 for the first delivery of this message, 2 for its first redelivery, and so on; 1 when
    /// the source cannot tell.
    pub attempt: u32,
    /// How to settle it.
    pub receipt: Box<dyn Receipt>,
}

/// A message body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// The whole body.
    Complete(Bytes),
    /// The body is longer than the source's limit and was not read whole into memory: only its
    /// first bytes are kept, for the dead letter.
    TooLarge {
        /// The length of the whole body in bytes.
        len: u64,
        /// The limit it broke, in bytes.
        limit: usize,
        /// Its first bytes (at most a few KiB).
        head: Bytes,
    },
    /// The source cannot make a body of the message (a stream entry without its payload field):
    /// it is dead-lettered as invalid, with the reason and what there was.
    Unreadable {
        /// What is wrong with it.
        reason: String,
        /// What the message held, as the source read it.
        raw: Bytes,
    },
}

impl Payload {
    /// The bytes to keep for a dead letter: the whole body, the head of a large one, or what an
    /// unreadable message held.
    pub fn bytes(&self) -> &Bytes {
        match self {
            Self::Complete(body) => body,
            Self::TooLarge { head, .. } => head,
            Self::Unreadable { raw, .. } => raw,
        }
    }

    /// A body from a broker, which hands it over whole: over `limit` bytes it becomes
    /// [`Payload::TooLarge`], keeping its first KiB for the dead letter.
    pub fn bounded(body: Bytes, limit: usize) -> Self {
        /// How much of a body over the limit is kept for its dead letter.
        const HEAD: usize = 1024;
        if body.len() <= limit {
            Self::Complete(body)
        } else {
            Self::TooLarge { len: body.len() as u64, limit, head: body.slice(..HEAD.min(limit)) }
        }
    }
}

/// How the consumer settles one delivery.
///
/// Dropping a receipt without calling [`ack`](Receipt::ack) leaves the message unacknowledged:
/// the source delivers it again later (after a visibility timeout, a restart, a reconnect).
/// That is always safe, because handling is idempotent.
pub trait Receipt: Send + Sync + fmt::Debug {
    /// Where the message came from, for dead letters and logs: `line 17`, a stream entry ID.
    fn origin(&self) -> String;

    /// Tells the source the message is done; call it only once the effect (or the dead letter) is
    /// durable.
    ///
    /// It may only enqueue the acknowledgement and send it later, in batches: an acknowledgement
    /// that is lost makes the source redeliver the message, and the handler answers that with a
    /// duplicate. So a failure here is logged by the adapter, not returned.
    fn ack(self: Box<Self>);

    /// How long the source keeps this delivery from every other consumer without hearing about
    /// it: a claim timeout, an `ack_wait`. `None` (the default) when it keeps it for as long as
    /// the connection lives.
    ///
    /// A consumer that holds a delivery longer (a store retry can last a minute) calls
    /// [`renew`](Self::renew) well within this time.
    fn lease(&self) -> Option<Duration> {
        None
    }

    /// Renews the lease: the consumer still holds this delivery, so it must not go to another
    /// consumer yet. Like `ack`, it may only enqueue the request. The default does nothing.
    fn renew(&self) {}
}

/// Where deliveries come from.
///
/// `next` is awaited from one task at a time. On a graceful stop the consumer drops a pending
/// `next` (so a broker waiting for messages does not hold the stop up), settles what it holds,
/// then calls [`close`](Self::close): dropping `next` half-way MUST lose nothing, that is, a
/// message it had already taken from the broker is delivered again later, like any message whose
/// receipt was dropped.
#[async_trait]
pub trait DeliverySource: Send {
    /// The next delivery; `None` when the source is exhausted (the end of a file). A broker
    /// waits for the next message instead.
    ///
    /// # Errors
    ///
    /// [`SourceError::Unavailable`] when the broker cannot be reached now (the consumer waits and
    /// asks again), [`SourceError::Failed`] when reading cannot go on (the consumer stops).
    async fn next(&mut self) -> Result<Option<Delivery>, SourceError>;

    /// Sends the acknowledgements enqueued so far, gives back what it holds unhanded (so that it
    /// is delivered again at once rather than after a timeout) and releases its connections.
    /// Called once, after every receipt was settled or dropped. The default does nothing.
    ///
    /// # Errors
    ///
    /// When acknowledgements could not be sent: harmless for correctness (their messages come
    /// again, as duplicates), but worth a warning.
    async fn close(&mut self) -> Result<(), SourceError> {
        Ok(())
    }

    /// A way to ask the broker how much waits for this source's group, for metrics; asked once,
    /// before the source is handed to the consumer. `None` (the default) when the broker cannot
    /// tell, or there is none.
    fn backlog_probe(&self) -> Option<Arc<dyn BacklogProbe>> {
        None
    }
}

/// A source chosen at run time is a source too, so that one consumer loop runs them all.
#[async_trait]
impl DeliverySource for Box<dyn DeliverySource> {
    async fn next(&mut self) -> Result<Option<Delivery>, SourceError> {
        (**self).next().await
    }

    async fn close(&mut self) -> Result<(), SourceError> {
        (**self).close().await
    }

    fn backlog_probe(&self) -> Option<Arc<dyn BacklogProbe>> {
        (**self).backlog_probe()
    }
}

/// Why a source could not produce the next delivery.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The broker cannot be reached now; asking again later may work.
    #[error("message source unavailable: {message}")]
    Unavailable {
        /// What failed.
        message: String,
        /// The adapter's own error, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// Reading cannot go on (an unreadable file, a deleted stream).
    #[error("message source failed: {message}")]
    Failed {
        /// What failed.
        message: String,
        /// The adapter's own error, if any.
        #[source]
        source: Option<BoxError>,
    },
}

impl SourceError {
    /// A [`Failed`](Self::Failed) error without a source.
    pub fn failed(message: impl Into<String>) -> Self {
        Self::Failed { message: message.into(), source: None }
    }

    /// An [`Unavailable`](Self::Unavailable) error without a source.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable { message: message.into(), source: None }
    }

    /// A [`Failed`](Self::Failed) error caused by `source`.
    pub fn failed_because(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Failed { message: message.into(), source: Some(source.into()) }
    }

    /// An [`Unavailable`](Self::Unavailable) error caused by `source`.
    pub fn unavailable_because(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Unavailable { message: message.into(), source: Some(source.into()) }
    }

    /// Whether asking again later may work.
    pub const fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_over_the_limit_keeps_its_length_and_first_kilobyte() {
        let body = Bytes::from(vec![7u8; 5000]);
        assert_eq!(Payload::bounded(body.clone(), 5000), Payload::Complete(body.clone()));
        let Payload::TooLarge { len, limit, head } = Payload::bounded(body.clone(), 4999) else {
            panic!("over the limit")
        };
        assert_eq!((len, limit, head.len()), (5000, 4999, 1024));
        assert_eq!(Payload::bounded(body, 10).bytes().len(), 10, "never more head than the limit");
    }
}
