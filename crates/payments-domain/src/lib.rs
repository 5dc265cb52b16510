//! The payment model and the idempotency rules of the payments consumer, with no I/O and no async runtime.
//!
//! - [`Payment`] and its parts ([`PaymentId`], [`Amount`], [`Currency`]) can only be built valid.
//! - [`event::decode`] turns a `PaymentTaken` JSON message into a [`Payment`] or says which field is wrong.
//! - [`decide`] is the idempotency rule: new, duplicate or conflict.
//! - [`PaymentRecorded`] is the outgoing event a store keeps in its outbox, with a message ID that
//!   is the same on every publication.
//!
//! Stores (through `payments-ports`) and the use case (`payments-consumer`) build on these; nothing
//! here knows they exist, nor what a message is: what happens to a message is the use case's policy.

mod error;
pub mod event;
mod idempotency;
mod payment;
mod recorded;

pub use error::{Field, Problem, ValidationError};
pub use event::InvalidEvent;
pub use idempotency::{Conflict, SaveOutcome, decide};
pub use payment::{Amount, Currency, Payment, PaymentId};
pub use recorded::{MESSAGE_ID_PREFIX, PaymentRecorded, RecordedAt, message_id};
