//! The ports of the payments consumer: the traits that stand between the use case and the outside world.
//!
//! - [`PaymentsRepository`] (driven port): where payments are recorded, exactly once per ID.
//!   Its contract is written on the trait as MUST sentences; `payments-conformance` checks each one
//!   against every adapter.
//! - [`DeliverySource`] and [`Receipt`] (driving port): where deliveries come from, and how each
//!   one is acknowledged. A broker adapter implements these two.
//! - [`DeadLetterSink`] (driven port): where messages that can never succeed are kept.
//! - [`Publisher`] (driven port): where outgoing messages go, confirmed by their broker.
//! - [`Outbox`] (driven port): one relay's hold on the `PaymentRecorded` events a store records
//!   with its payments, handed out until marked published; its contract is on the trait too.
//! - [`Observer`] (driven port): what the consumer reports as it works, for metrics and health;
//!   [`BacklogProbe`]: how much waits on a source's broker.
//!
//! For other crates' tests: with the `testing` feature, the [`testing`] module's doubles (a source
//! that delivers a list, a sink that keeps its letters); with `mock`, also the mockall mocks
//! `MockPaymentsRepository` and `MockDeadLetterSink`.

mod dead_letter;
mod observer;
mod outbox;
mod publisher;
mod repository;
mod source;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

#[cfg(any(test, feature = "mock"))]
pub use dead_letter::MockDeadLetterSink;
pub use dead_letter::{DeadLetter, DeadLetterError, DeadLetterKind, DeadLetterSink};
pub use observer::{
    Backlog, BacklogProbe, Observer, Outcome, RelayObserver, RetryCause, StoreAnswer, Unobserved,
};
#[cfg(any(test, feature = "mock"))]
pub use outbox::MockOutbox;
pub use outbox::{Outbox, OutboxBacklog};
pub use publisher::{OutgoingMessage, PublishError, Publisher};
#[cfg(any(test, feature = "mock"))]
pub use repository::MockPaymentsRepository;
pub use repository::{BoxError, PaymentsRepository, RepositoryError, check_page, export_all};
pub use source::{Delivery, DeliverySource, Payload, Receipt, SourceError};

/// Re-exported so that an adapter needs only this crate to implement the port.
pub use payments_domain as domain;

/// An error and all its sources on one line, `outer: inner: innermost`: for logs, reports and
/// test failures, where the source chain is the part that says what actually went wrong.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
