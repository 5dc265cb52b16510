//! NATS JetStream for the payments consumer: [`NatsSource`], a reader of a durable pull consumer,
//! as a `DeliverySource`; [`NatsDeadLetters`], dead letters as messages of a stream;
//! [`NatsPublisher`], messages published with JetStream's acknowledgement and deduplicated by
//! `Nats-Msg-Id`. Each is opened from a URL of the command line ([`NatsSourceConfig`],
//! [`NatsStreamConfig`]; credentials show nowhere).
//!
//! A message is a JetStream message whose body is the payload, byte for byte. The source reads
//! from the durable pull consumer the URL names (`consumer=`): that consumer is the group, and the
//! processes that read it share its messages. The consumer is created with explicit
//! acknowledgements, the URL's `ack_wait`, `max_ack_pending` = the in-flight bound and
//! `max_deliver = -1` (a server that gives up on a message drops it silently; the app's consumer
//! dead-letters by attempt instead, see [`NatsSourceConfig::max_deliveries`]). Pulls are made on
//! demand, for as many messages as can go out, and a background task (the acker) sends what
//! receipts enqueue on the same connection.
//!
//! # How the source keeps the contract
//!
//! The numbers are those of the sentences in `payments_ports`' `source` module.
//!
//! 1. **Every message, its bytes unchanged.** The body is handed over as the client received it,
//!    never decoded. A body over the limit becomes `Payload::TooLarge` through
//!    `Payload::bounded` (JetStream hands a message over whole; its size is bounded by the
//!    server's `max_payload` anyway). Every JetStream message has a body, so none is
//!    `Payload::Unreadable`.
//! 2. **Attempts** are the server's delivery count (`delivered` in the message's metadata, read
//!    from its `$JS.ACK` reply subject): 1 on the first delivery, one more on each redelivery.
//!    Deliveries the source never hands out count too: a message in transit when the connection
//!    broke, one that was in the client's pull when `close` gave it back. Attempts then grow by
//!    more than one, never less.
//! 3. **Acknowledged, never again.** `ack` enqueues the reply subject; the acker publishes `+ACK`
//!    on the client (or, with `double-ack=true`, sends it as a request and waits for the server's
//!    answer, many at once), and `close` returns once it has flushed them to the connection (and,
//!    in double-ack mode, once every one is confirmed).
//! 4. **A dropped receipt comes back.** Dropping it sends `-NAK`: JetStream delivers the message
//!    again at once, its delivery count one higher, to whichever reader of the consumer pulls.
//! 5. **A crash loses nothing.** What a crashed reader held stays pending in the consumer; after
//!    `ack_wait` without a word JetStream delivers it again to another reader. (A reader that is
//!    only dropped, not killed, still sends the `-NAK`s of the receipts dropped after it: sooner.)
//! 6. **The same identity gets its own back** for the same reasons: there is no per-reader state in
//!    JetStream, so a source opened again is one more reader of the consumer. `close` gives back
//!    at once (`-NAK`) what its pull had received but not handed out.
//! 7. **A dropped `next` loses nothing.** The pull in progress (its request being sent, or its
//!    messages arriving) lives in the source, not in `next`'s future: a dropped `next` leaves it
//!    to the next call, and a message leaves it only when `next` returns it.
//! 8. **Sharing.** JetStream does it: the readers of a durable consumer split its messages, and
//!    every durable consumer of the stream receives every message.
//! 9. **In-flight bound.** A semaphore of `with_in_flight` permits; `next` takes one before it
//!    pulls, a receipt gives it back when acknowledged or dropped. A pull asks for no more
//!    messages than there are free permits (and `batch`), and the consumer's `max_ack_pending`
//!    bounds on the server what is delivered and not acknowledged. That bound is the consumer's,
//!    so it is shared by all its readers: give every process of a group the same `--concurrency`,
//!    since each one updates the consumer to its own.
//! 10. **Leases.** A receipt's lease is the consumer's `ack_wait`; `renew` sends `+WPI` ("work in
//!     progress"), which starts the wait again. A pull waits at the server at most half of
//!     `ack_wait` (and 5 s): a reader that stops asking holds no request by the time a message it
//!     would take is due again, so a redelivery goes to a reader that asks.
//! 11. **A lost connection** is recovered inside the source: the client reconnects by itself
//!     (at once, then backing off to 2 s, without end) and subscribes its inboxes again, so a pull
//!     that the server still holds can go on delivering. A pull the server did not end by its
//!     expiry (its end was lost with the connection) is replaced a second later; messages that
//!     were in transit come again after `ack_wait`. Acknowledgements made while the connection
//!     is down wait in the client and go out on the new one; JetStream applies an
//!     acknowledgement whatever connection it comes on, and one lost with the old connection only
//!     makes its message come again. While the server cannot be reached, `next` says
//!     `SourceError::Unavailable` about a second after each pull's expiry, rather than wait.
//! 12. **Creating again is harmless.** The stream is created only if missing; the consumer is
//!     created or updated (JetStream's create-or-update) to the same settings. A consumer (or
//!     its stream) deleted under a running source is never waited on silently: a pull that fails
//!     (a 409 "Consumer Deleted"), or that the server leaves unanswered past its expiry (what a 2.9
//!     server does for a pull on a deleted consumer), makes the source ask for the consumer's
//!     info (the stall guard); when it is gone, the source
//!     creates it again (and the stream, if that is gone too), and the new consumer delivers the
//!     stream again from its start: the store answers duplicates. When the server does not answer
//!     either, the source is `Unavailable`.
//! 13. **A late acknowledgement** is applied by JetStream to the message whatever delivery it
//!     names: if another reader has the message by then, it is acknowledged all the same, and
//!     that reader's acknowledgement is a no-op.
//!
//! # Acknowledgements, plain or confirmed
//!
//! A plain acknowledgement (the default) is sent and trusted: if it is lost, the message comes
//! again after `ack_wait`. With `double-ack=true` each one is a request the server answers once it
//! has applied it; `close` then waits for every answer, and an acknowledgement that is not
//! confirmed is counted and reported by `close` (its message comes again). The benchmark measures
//! what it costs. The request goes to the delivery's `$JS.ACK` subject, which only the consumer
//! answers: when it is gone, the "no responders" status fails the request (async-nats's own
//! `double_ack` would take that status for an answer).
//!
//! # TLS
//!
//! A `tls://` URL requires TLS of the server: the client upgrades every connection after the
//! server's `INFO`, whatever that says, and sends nothing else (no `CONNECT`, no credentials)
//! before; there is no fallback to plain text. The server's certificate must chain to a trusted
//! root and name the URL's host (a host name, or an IP address as an IP subject alternative
//! name). The roots are the system's, or, with `ssl-ca=PATH`, only the CA certificates of that
//! PEM file: async-nats loads the system's only when no root certificate file is given. `ssl-ca`
//! is checked when the URL is parsed and refused on `nats://`.
//!
//! A certificate refused when connecting (not signed by a trusted root, not naming the host), or
//! a handshake rustls refuses (a server that answers it in plain text), makes `connect` fail for
//! good (`Failed`, with what it means before the client's own words), never `Unavailable`: the
//! next attempt would meet the same certificate. A server that hangs up mid-handshake looks like
//! a network fault, and is `Unavailable`. async-nats reports these as I/O errors; they are told
//! apart by the rustls error inside. Once connected, a certificate refused when the client
//! reconnects is waited out like an outage: its reconnection loop does not say why it failed.

mod acker;
mod config;
mod connection;
mod dead_letter;
mod publisher;
mod source;
mod writer;

pub use crate::config::{
    ConfigError, DEFAULT_ACK_WAIT, DEFAULT_IN_FLIGHT, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_TIMEOUT,
    NatsSourceConfig, NatsStreamConfig,
};
pub use crate::dead_letter::NatsDeadLetters;
pub use crate::publisher::NatsPublisher;
pub use crate::source::NatsSource;
