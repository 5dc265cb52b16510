//! RabbitMQ for the payments consumer: [`RabbitSource`], a consumer on a durable quorum queue,
//! as a `DeliverySource`; [`RabbitDeadLetters`], dead letters published with publisher confirms;
//! [`RabbitPublisher`], messages published with publisher confirms. Each is opened from a URL of
//! the command line ([`RabbitSourceConfig`], [`RabbitTargetConfig`]); the password shows nowhere.
//!
//! A message is an AMQP message whose body holds its bytes; the publisher sets `message_id` when
//! it has an ID. The source consumes on a channel of its own, with manual acknowledgements and a
//! prefetch; receipts hand their delivery's lapin `Acker` to a background task (the acker), which
//! acknowledges (or, for a dropped receipt, rejects with requeue) while the source goes on
//! delivering. Declarations run on short-lived channels of their own, because RabbitMQ closes the
//! channel of a declaration it refuses.
//!
//! # The queue
//!
//! Every queue this crate declares (the source's, and a publisher's or dead-letter sink's
//! `queue`) is declared the same way: durable, `x-queue-type: quorum`, and
//! `x-delivery-limit` [`QUEUE_DELIVERY_LIMIT`] with a dead-letter exchange that moves a message
//! past the limit to `<queue>.parked` (declared beside it, `x-dead-letter-strategy:
//! at-least-once`, `x-overflow: reject-publish`). A queue that exists with other arguments (a
//! classic queue, a limit an operator chose) is used as it is, with a warning.
//!
//! Why a limit at all: the consumer's `max-deliveries` dead-letters a delivery whose attempt is
//! above it, and RabbitMQ must never drop a message before the consumer has seen that attempt.
//! A quorum queue with a delivery limit and no dead-letter exchange drops a message silently
//! past the limit; RabbitMQ 3.x sets no limit unless told to, but RabbitMQ 4.0 and later give
//! every quorum queue a default limit of 20, so "no limit" cannot be had on both by leaving the
//! argument out; and `x-delivery-limit: -1`, which means "no limit" on 4.x, means a limit of -1
//! on 3.10 (checked on 3.10.8: the message is dropped at its first return). So the limit is set
//! explicitly, the same on every version, with a dead-letter exchange behind it, and a URL's
//! `max-deliveries` may not be above it: the consumer dead-letters first, to its own sink, and
//! what RabbitMQ gives up on (a message returned more than 100 times without the consumer
//! dead-lettering it: crash loops without `max-deliveries`, returns of prefetched deliveries
//! the consumer never saw) is parked, not lost, for an operator to move back.
//!
//! # How the source keeps the contract
//!
//! The numbers are those of the sentences in `payments_ports`' `source` module.
//!
//! 1. **Every message, its bytes unchanged.** The body is handed over as lapin received it,
//!    moved into `Bytes`, never decoded. RabbitMQ sends a body whole (up to its
//!    `max_message_size`, 128 MiB by default, which lapin assembles in memory), so a body over
//!    the limit becomes `Payload::TooLarge` through `Payload::bounded`, keeping its first KiB. A
//!    message always has a body, so nothing is `Payload::Unreadable`.
//! 2. **Attempts.** A quorum queue counts a message's earlier deliveries in the
//!    `x-delivery-count` header (absent on the first): attempt = count + 1. Every return counts
//!    on RabbitMQ 3.10: a reject, a nack, a channel or connection that closes holding it. A queue
//!    without the header (a classic queue declared by someone else) only says `redelivered`: its
//!    attempts are 1, then 2 for every redelivery. Prefetched deliveries that a closing channel
//!    returns unseen are counted too, so attempts can grow by more than one, never less.
//!    RabbitMQ 4.3 changes what counts (a reject does, a nack or a closing channel does not, and a
//!    new `x-acquired-count` counts every hand-out); this adapter rejects dropped receipts, so
//!    sentence 2 holds there for them, but a crash there may not raise the attempt.
//! 3. **Acknowledged, never again.** `ack` enqueues the delivery's `Acker`; the acker sends it at
//!    once. `close` waits until the acker has handed every acknowledgement to the connection,
//!    cancels the consumer, makes one more round trip, and only then closes the channel: a
//!    quorum queue applies acknowledgements asynchronously, and RabbitMQ 3.10's channel holds
//!    back some of a burst while its earlier commands are pending, losing them if the channel
//!    closes meanwhile (measured: 8 of 20 runs of acknowledging 200 deliveries and closing at
//!    once got one back; none in 45 with the cancel). Cancelling is applied by the queue after
//!    everything the channel sent before, and RabbitMQ answers it only then.
//!    [`RabbitSource::flush`] does the first part and a round trip, for callers that want
//!    acknowledgements out before they go on.
//! 4. **A dropped receipt comes back.** RabbitMQ holds an unacknowledged message until its
//!    channel closes, so dropping a receipt enqueues `basic.reject` with requeue through its
//!    `Acker`: the message is back in the queue at once, its delivery count one higher.
//! 5. **A crash loses nothing.** When a source is dropped, lapin closes its connection, and
//!    RabbitMQ requeues everything that connection held unacknowledged, for the queue's other
//!    consumers; a process that dies closes its socket, with the same effect. There is no
//!    takeover timeout to wait for. (The suite checks this under `groups`, which a queue does not
//!    have as a whole: see `tests/conformance.rs`; `tests/it` checks it.)
//! 6. **The same identity gets its own back.** A source opened again consumes the same queue, and
//!    what the old one held was requeued when its channel closed. RabbitMQ has no consumer
//!    identity: any consumer of the queue gets them.
//! 7. **A dropped `next` loses nothing.** `next` waits for a permit, then for lapin's consumer
//!    stream, both safe to drop: the stream hands a delivery over only from a completed poll, and
//!    nothing is awaited between taking it and returning it. A `next` dropped while it connects
//!    drops the new connection, whose deliveries RabbitMQ requeues.
//! 8. **Sharing.** The consumers of a queue split its messages. Independent groups are separate
//!    queues bound to one exchange, which only receive what is published after they are bound;
//!    this crate does not make them (see `tests/conformance.rs`).
//! 9. **In-flight bound.** `basic.qos` with the prefetch ([`RabbitSourceConfig::prefetch`]) keeps
//!    RabbitMQ from sending more unacknowledged deliveries; a semaphore of as many permits keeps
//!    the source from handing out more, even when deliveries of a broken channel are still held
//!    by the consumer after a reconnect.
//! 10. **Leases.** None: RabbitMQ holds a delivery for its consumer for as long as the channel
//!     lives, so receipts report no lease and have nothing to renew. That is why a store retry
//!     that lasts minutes is safe: no other consumer gets the message meanwhile, and if the
//!     consumer dies, its connection closes and the message is requeued. The bound is
//!     RabbitMQ's `consumer_timeout` (30 minutes by default; 1 800 000 ms on the 3.10.8 this was
//!     tested against): a delivery held longer makes RabbitMQ close the channel
//!     (`PRECONDITION_FAILED`); the consumer gives up on a store after a minute by default, far
//!     sooner. If the channel is closed all the same, the source then
//!     reconnects, the message comes again, and the late acknowledgement is refused by its
//!     `Acker` (sentence 13).
//! 11. **A lost connection.** The source does not use lapin's automatic recovery: when the
//!     consumer stream reports an error, or ends (the broker cancelled the consumer: a deleted
//!     queue), `next` makes a new connection at once, declares the queue again and consumes
//!     again; if that fails too, it returns `SourceError::Unavailable` (or `Failed` for refused
//!     credentials, a refused virtual host or queue, a failed TLS handshake), and connects again
//!     at the next call, so a broker that stays away is reported, never waited for (each attempt
//!     is bounded by a 10 s connect timeout; heartbeats every 10 s notice a silent network).
//!     Deliveries lapin had buffered from the broken channel are discarded, not handed out:
//!     RabbitMQ requeued them. An acknowledgement of a delivery from before the break goes through that
//!     delivery's own `Acker`, which lapin refuses once its channel is gone (`Ok(false)`,
//!     counted in [`SourceStats::stale_settlements`]): it never reaches the new channel, where
//!     its delivery tag would name another delivery, or none, and make RabbitMQ close it. One
//!     sent the very moment the connection dies may look sent, or never be answered by lapin
//!     (it is given up after 5 s); either way its message comes again.
//!     [`RabbitSource::stats`] counts reconnections and these settlements.
//! 12. **Declaring again is harmless.** The same arguments are accepted as they are; a deleted
//!     queue is declared again when the source reconnects.
//! 13. **A late acknowledgement.** There is no redelivery timeout; an acknowledgement after the
//!     channel closed (a reconnect, `consumer_timeout`) is refused by its `Acker`, as in 11.
//!
//! Without leases and groups, the source lacks two of the suite's capabilities: `leases`
//! (nothing to renew, see 10) and `groups` (see 5 and 8).
//!
//! # Dead letters and publishing
//!
//! [`RabbitDeadLetters`] and [`RabbitPublisher`] publish on a channel in confirm mode, with
//! `mandatory` and persistent messages, and count a message as stored only when RabbitMQ confirms
//! it with a plain `basic.ack`: one returned unroutable (`NO_ROUTE`) or refused (`basic.nack`)
//! is an error, never a silent loss. A broken connection fails the call as unavailable, and the
//! next call connects again.
//!
//! # TLS
//!
//! An `amqps://` URL speaks TLS from the first byte (rustls with ring): there is no fallback to
//! plain text, and nothing (no protocol header, no credentials) is sent before the handshake. The
//! server's certificate must chain to a trusted root and name the URL's host (a host name, or an
//! IP address as an IP subject alternative name). The roots are the system's, or, with
//! `ssl-ca=PATH`, only the CA certificates of that PEM file, read and checked when the URL is
//! parsed, and refused on `amqp://`. lapin's own way to give a CA (`OwnedTLSConfig::cert_chain`)
//! adds it to the system's roots, so with `ssl-ca` this crate builds the TLS connector itself,
//! from an empty root store, and hands lapin the connected stream.
//!
//! A certificate refused (not signed by a trusted root, not naming the host), or a handshake
//! rustls refuses (a server that answers in plain text, as RabbitMQ's plain port does), makes
//! connecting fail for good (`Failed`, with what it means before lapin's own words), never
//! `Unavailable`: the next attempt would meet the same certificate. This holds when the source
//! connects again after a lost connection too: the consumer then stops with the reason. A server
//! that hangs up mid-handshake looks like a network fault, and is `Unavailable`.

mod acker;
mod config;
mod connection;
mod dead_letter;
mod errors;
mod outlet;
mod publisher;
mod source;

pub use crate::config::{
    ConfigError, DEFAULT_IN_FLIGHT, DEFAULT_MAX_MESSAGE_BYTES, QUEUE_DELIVERY_LIMIT, RabbitSourceConfig,
    RabbitTargetConfig, parked_queue,
};
pub use crate::dead_letter::RabbitDeadLetters;
pub use crate::publisher::RabbitPublisher;
pub use crate::source::{RabbitSource, SourceStats};
