//! Operations for the consumer, as an adapter: Prometheus metrics, and the health endpoints an
//! orchestrator probes. It implements the [`Observer`](payments_ports::Observer) port and pings
//! the store through its port; the use case knows nothing of it.
//!
//! - [`Metrics`]: the registry (explicit, never global, so that tests can read it) and every
//!   metric. The consumer reports to it as its observer, the time of each save included.
//! - [`Health`]: liveness (the consume loop's heartbeat is recent) and readiness (started, store
//!   and source answering), fed by the same reports.
//! - [`watch`]: pings the store and asks the broker for its backlog on a schedule, for what the
//!   consumer cannot see while nothing arrives.
//! - [`Endpoints`]: `/metrics`, `/livez` and `/readyz` over HTTP.
//!
//! No label ever carries a payment or message ID: the observer port does not even hand them over.

mod health;
mod histogram;
mod metrics;
mod relay;
mod server;
mod store;
mod watch;

pub use health::{HEARTBEAT_LIMIT, Health, Report};
pub use metrics::{Destination, Metrics, PROCESS_DURATION_BUCKETS};
pub use server::Endpoints;
pub use watch::watch;
