//! What the consumer cannot see by itself while nothing arrives: whether the store still answers,
//! and how much waits on the broker. [`watch`] asks both on a schedule of its own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use payments_ports::{BacklogProbe, PaymentsRepository, RepositoryError, StoreAnswer, error_chain};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::Metrics;

/// How long one ping or backlog question may take before it counts as unanswered.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// Every `every`, pings `store` (its time and answer go to `payments_store_*` and readiness) and
/// asks `probe`, if any, for the backlog; until `stop`.
pub fn watch(
    metrics: Arc<Metrics>,
    store: Arc<dyn PaymentsRepository>,
    probe: Option<Arc<dyn BacklogProbe>>,
    every: Duration,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            // A ping that does not come back in time is unavailable.
            let started = Instant::now();
            let pinged = match tokio::time::timeout(ANSWER_WITHIN, store.ping()).await {
                Ok(pinged) => pinged,
                Err(_) => Err(RepositoryError::unavailable(format!(
                    "the store did not answer a ping within {ANSWER_WITHIN:?}"
                ))),
            };
            if let Err(err) = &pinged {
                tracing::debug!(error = %error_chain(err), "pinging the store failed");
            }
            metrics.store_pinged(started.elapsed(), StoreAnswer::of(&pinged));
            let Some(probe) = &probe else { continue };
            match tokio::time::timeout(ANSWER_WITHIN, probe.backlog()).await {
                Ok(Ok(backlog)) => {
                    metrics.set_source_up(true);
                    metrics.set_backlog(backlog);
                }
                Ok(Err(err)) => {
                    tracing::debug!(error = %error_chain(&err), "asking the broker for the backlog failed");
                    metrics.set_source_up(false);
                }
                Err(_) => metrics.set_source_up(false),
            }
        }
    })
}
