//! What this workspace's tests and benchmarks share, so that each rule is written once.
//!
//! - [`gate`]: a test that needs a server either gets it, or is reported as skipped by name;
//!   under `CI=true` it fails instead. Trials are named after their functions.
//! - [`bench`]: the rows of `cargo xtask bench`, each scenario measured beside its raw baseline
//!   in the same run, and the command line every benchmark binary shares.
//! - `proxy` (feature `proxy`): a TCP proxy in the test, to cut a client off its server.
//! - [`scrape`]: a running consumer's HTTP endpoints read as Prometheus and a kubelet do.
//! - One module per server the tests need, behind a feature of the same name: where the test
//!   server is, whether it answers, and a fresh place of a test's own on it (a schema, a database,
//!   a stream, queues) that the test removes afterwards: `postgres`, `mysql`, `redis`, `nats` and
//!   `rabbitmq`.
//! - [`tls`] (feature `tls`): a CA of a test's own and the server certificates it signs; with
//!   `postgres`, a PostgreSQL cluster of a test's own with or without TLS; with `mysql`, a
//!   MariaDB server of a test's own likewise; with `redis`, a `redis-server` serving TLS; with
//!   `nats`, a `nats-server` serving TLS only, with JetStream; with `rabbitmq`, a RabbitMQ node
//!   serving TLS only. Each is stopped and removed when dropped.
//!
//! It depends on no crate of the workspace, so any crate (an adapter, a source, the app) may
//! use it in its tests without reaching another adapter.

pub mod bench;
pub mod gate;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "proxy")]
pub mod proxy;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
#[cfg(feature = "redis")]
pub mod redis;
pub mod scrape;
pub mod servers;
#[cfg(feature = "tls")]
pub mod tls;

pub use gate::{Gate, Test, trials, under_ci};
/// Re-exported, so that a crate using [`trials`] needs no dependency of its own to run them.
pub use libtest_mimic;
