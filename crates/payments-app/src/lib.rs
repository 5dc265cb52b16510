//! The payments consumer: the use case and everything that runs it.
//!
//! - [`handler`]: decode → validate → save → outcome (the use case).
//! - [`consumer`]: the loop that takes deliveries from a source, handles them concurrently, and
//!   acknowledges, dead-letters, retries or stops as the delivery policy says.
//! - [`source`]: delivery sources built in (JSON lines from a file or stdin).
//! - [`dead_letter`]: dead-letter sinks (a synced JSON-lines file, or stderr).
//! - [`store`]: which store `--store` names. The only module that knows the adapters.
//! - [`simulate`]: an in-process at-least-once broker with faults, and the checks of `simulate`.
//!
//! The binary `payments-app` (in `main.rs`) parses the command line and wires these together.

pub mod consumer;
pub mod dead_letter;
pub mod handler;
pub mod simulate;
pub mod source;
pub mod store;
