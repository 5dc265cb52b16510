//! Redis Streams for the payments consumer: [`RedisSource`], a consumer in a consumer group, as a
//! `DeliverySource`; [`RedisDeadLetters`], dead letters as stream entries; [`RedisPublisher`],
//! messages appended to a stream. Each is opened from a URL of the command line
//! ([`RedisSourceConfig`], [`RedisStreamConfig`]).
//!
//! A message is a stream entry whose field `payload` holds its bytes (the publisher adds
//! `message_id` when it has one). The source reads with `XREADGROUP` in the group named by the
//! URL, on a connection of its own (a blocked read holds up everything else on a connection), and
//! a background task (the acker) sends what receipts enqueue, on another.
//!
//! # How the source keeps the contract
//!
//! The numbers are those of the sentences in `payments_ports`' `source` module.
//!
//! 1. **Every message, its bytes unchanged.** Fields are read from redis's raw replies, the bytes
//!    moved, never decoded as text. A body over the limit becomes `Payload::TooLarge` through
//!    `Payload::bounded`; an entry without a `payload` field is `Payload::Unreadable`, its
//!    fields as `name=value` lines.
//! 2. **Attempts.** Redis counts deliveries per pending entry. A new entry (`>`) is attempt 1;
//!    an entry read again from the own pending list, claimed back or taken over was counted by
//!    that read or claim, and `XPENDING key group id id 1` (pipelined, one round trip per batch)
//!    says how often. Lease renewals use `XCLAIM … JUSTID`, which does not count. Two places
//!    count a delivery that is not handed out: a replay after a reconnect reads the whole own
//!    pending list, deliveries in flight included; and a takeover pass claims a delivery in
//!    flight whose lease ran out unrenewed (it stays with its receipt). Attempts then grow by
//!    more than one, never less.
//! 3. **Acknowledged, never again.** `ack` enqueues the ID; the acker sends everything queued in
//!    one round trip (`XACK` with many IDs, pipelined with renewals), and `close` waits until it
//!    has. Before a replay of the own pending list, the source flushes the acker, so that the
//!    replay does not bring back what is settled.
//! 4. **A dropped receipt comes back.** Dropping it gives back its in-flight slot and queues its
//!    ID; the next `next` claims it back for this consumer with a counted `XCLAIM` (after checking
//!    with `XPENDING` that no one else took it over), so it comes again at once, attempt + 1. A
//!    `next` blocked in `XREADGROUP` sees it when its read ends: reads block at most half the
//!    claim timeout, and 2 s.
//! 5. **A crash loses nothing.** What a crashed consumer held stays pending in the group. Every
//!    source runs a takeover pass (`XAUTOCLAIM` with min-idle = the claim timeout, the cursor
//!    carried until it comes back to `0-0`) when it starts and every half claim timeout; so its
//!    entries reach another consumer within 1.5 claim timeouts.
//! 6. **The same identity gets its own back.** A source starts (and starts again after every
//!    reconnect) by reading its own pending list from `0`, page by page, before new entries.
//!    `close` makes what it holds unhanded claimable by others at once (`XCLAIM … IDLE <claim
//!    timeout> JUSTID`), and removes the consumer from the group when it holds nothing.
//! 7. **A dropped `next` loses nothing.** What a step reads goes into the source's own buffer
//!    before the step ends; a `next` dropped while a step is under way leaves a mark, and the next
//!    call drops the connection (a read still blocked on it is cancelled with the socket),
//!    flushes the acknowledgements, and replays the own pending list, where Redis keeps whatever
//!    the lost reply held.
//! 8. **Sharing.** Consumer groups do it: the consumers of a group split its entries, and every
//!    group reads the whole stream.
//! 9. **In-flight bound.** A semaphore of `with_in_flight` permits; `next` takes one before it
//!    reads, a receipt gives it back when acknowledged or dropped. A read asks for no more
//!    entries than there are free permits (and `batch`), so entries do not wait in the buffer
//!    long enough to grow idle.
//! 10. **Leases.** A receipt's lease is the claim timeout; `renew` enqueues `XCLAIM … JUSTID`,
//!     which resets the entry's idle time, so no takeover pass claims it.
//! 11. **A lost connection** fails the step with `SourceError::Unavailable` and marks the source
//!     for a resync: the next call connects again and replays the own pending list. The acker
//!     sends a failed batch again on a new connection (`XACK` and `XCLAIM … JUSTID` are
//!     idempotent); one it gives up on only makes its entries come again.
//! 12. **Creating again is harmless.** `XGROUP CREATE … 0 MKSTREAM` answers `BUSYGROUP` when the
//!     group exists, which is fine. When the stream or its group is deleted under a running
//!     source (`NOGROUP`, `UNBLOCKED`), the group is created again at the start of the stream.
//! 13. **A late acknowledgement** is an `XACK` of an entry another consumer took over, or that is
//!     acknowledged already: Redis removes it from the pending list or ignores it.
//!
//! Entries deleted from the stream while pending (`XTRIM`, `XDEL`) can never be delivered: a
//! replay or a claim that meets one acknowledges it with a warning, so that nothing stays pending
//! for ever. (Trimming a stream by length can delete entries that are not acknowledged yet, which
//! loses those messages: trim by `MINID` below the oldest pending entry, or not at all.)
//!
//! Connections: the source's reader and the acker are `MultiplexedConnection`s named with
//! `CLIENT SETNAME` and made again after they break; the dead-letter sink and the publisher use
//! redis's `ConnectionManager`. `rediss://` needs the `tls` feature.

mod acker;
mod backlog;
mod config;
mod connection;
mod dead_letter;
mod errors;
mod link;
mod publisher;
mod reply;
mod source;

pub use crate::config::{
    ConfigError, DEFAULT_CLAIM_IDLE, DEFAULT_IN_FLIGHT, DEFAULT_MAX_MESSAGE_BYTES, RedisSourceConfig,
    RedisStreamConfig,
};
pub use crate::dead_letter::RedisDeadLetters;
pub use crate::publisher::RedisPublisher;
pub use crate::source::RedisSource;
