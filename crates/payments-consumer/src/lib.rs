//! The use case of the payments consumer, on the ports alone: it names no adapter.
//!
//! - [`handler`]: one message in, one [`Action`] out. Decode, validate, save through the
//!   [`PaymentsRepository`](payments_ports::PaymentsRepository), and decide what happens to the
//!   message: acknowledge it, dead-letter it, retry it, or stop. The delivery policy is that one
//!   exhaustive decision.
//! - [`consumer`]: the engine that takes deliveries from any
//!   [`DeliverySource`](payments_ports::DeliverySource), handles up to N at once, carries out each
//!   action (with backoff for retries, lease renewal for long ones), and stops or shuts down
//!   cleanly.
//! - [`relay`]: the outbox relay, which claims the `PaymentRecorded` events a store recorded,
//!   publishes them through any [`Publisher`](payments_ports::Publisher), and marks them
//!   published once the broker has confirmed them.
//! - [`backoff`]: how long to wait before the next retry.
//!
//! Its tests use the ports' test doubles (`payments-ports` with the `mock` feature), never a
//! concrete adapter.

pub mod backoff;
pub mod consumer;
pub mod handler;
pub mod relay;

pub use backoff::RetryPolicy;
pub use consumer::{Consumer, ConsumerConfig, Ending, HEARTBEAT, Run, StopReason, Summary};
pub use handler::{Action, Handler, Rejection, Settled};
pub use relay::{Relay, RelayConfig, RelayControl, RelayEnding, RelayError, RelayRun};
