//! End-to-end tests of the `payments-app` binary: what users and scripts see.

mod cli;
mod consume;
mod file_store;
mod operations;
mod simulate;
#[path = "../support/mod.rs"]
mod support;
