//! The background task that settles what receipts hand it: an acknowledgement (`basic.ack`) for
//! an acknowledged receipt, a rejection with requeue (`basic.reject`) for a dropped one.
//!
//! `Receipt::ack` and `Drop` cannot wait, so they enqueue the delivery's lapin `Acker` here, and
//! the task keeps every settlement under way at once (they are independent frames on the
//! consuming channel). It only ever uses the delivery's own `Acker`, never a raw delivery tag:
//! an `Acker` belongs to the channel that delivered it, and once that channel has closed it
//! refuses to send anything (`Ok(false)`). A raw tag sent on a newer channel would name another
//! delivery, or none, which makes RabbitMQ close that channel (`PRECONDITION_FAILED - unknown
//! delivery tag`).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use lapin::Acker;
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use tokio::sync::{mpsc, oneshot};

/// What receipts and the source ask of the acker.
#[derive(Debug)]
pub(crate) enum Command {
    /// The receipt was acknowledged.
    Ack(Acker),
    /// The receipt was dropped: its message goes back to the queue now, counted as a delivery.
    Requeue(Acker),
    /// Answered once everything enqueued before it has been handed to the connection.
    Flush(oneshot::Sender<()>),
}

/// What the acker counted, shared with the source.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Settlements refused by lapin because their channel had closed (`Ok(false)`).
    pub(crate) stale: AtomicU64,
    /// Settlements that failed on the way (the connection broke while sending, or they were not
    /// answered in time).
    pub(crate) failed: AtomicU64,
}

#[derive(Clone, Copy, Debug)]
enum Settlement {
    Ack,
    Requeue,
}

/// Runs until every sender (the source, and every receipt) is gone, then finishes what is under
/// way.
pub(crate) async fn run(mut commands: mpsc::UnboundedReceiver<Command>, counters: std::sync::Arc<Counters>) {
    let mut under_way = FuturesUnordered::new();
    loop {
        tokio::select! {
            biased;
            Some((settlement, result)) = under_way.next(), if !under_way.is_empty() => {
                record(&counters, settlement, result);
            }
            command = commands.recv() => match command {
                Some(Command::Ack(acker)) => under_way.push(settle(acker, Settlement::Ack)),
                Some(Command::Requeue(acker)) => under_way.push(settle(acker, Settlement::Requeue)),
                Some(Command::Flush(reply)) => {
                    while let Some((settlement, result)) = under_way.next().await {
                        record(&counters, settlement, result);
                    }
                    let _ = reply.send(());
                }
                None => break,
            },
        }
    }
    while let Some((settlement, result)) = under_way.next().await {
        record(&counters, settlement, result);
    }
}

async fn settle(acker: Acker, settlement: Settlement) -> (Settlement, Result<bool, Failure>) {
    let sending = async {
        match settlement {
            Settlement::Ack => acker.ack(BasicAckOptions::default()).await,
            // `reject`, not `nack`: from RabbitMQ 4.3 on, only a reject counts as a delivery
            // attempt, and a dropped receipt must come back with a higher attempt number.
            Settlement::Requeue => acker.reject(BasicRejectOptions { requeue: true }).await,
        }
    };
    let result = match tokio::time::timeout(SETTLE_TIMEOUT, sending).await {
        Ok(Ok(sent)) => Ok(sent),
        Ok(Err(err)) => Err(Failure::Lapin(err)),
        Err(_) => Err(Failure::TimedOut),
    };
    (settlement, result)
}

/// How long one settlement may take to be handed to the socket. It takes microseconds; but one
/// sent the moment the connection dies, before lapin has noticed, is never answered (its command
/// is queued to an I/O loop that has stopped), and must not hold up a flush for ever.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a settlement was not sent.
#[derive(Debug)]
enum Failure {
    Lapin(lapin::Error),
    TimedOut,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Lapin(err) => err.fmt(f),
            Self::TimedOut => write!(f, "not handed to the connection within {SETTLE_TIMEOUT:?}"),
        }
    }
}

fn record(counters: &Counters, settlement: Settlement, result: Result<bool, Failure>) {
    match result {
        Ok(true) => {}
        Ok(false) => {
            counters.stale.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                ?settlement,
                "the delivery's channel closed before it was settled: RabbitMQ requeued its message, which comes again"
            );
        }
        Err(err) => {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                ?settlement,
                error = %err,
                "settling a delivery failed on the way; its message comes again"
            );
        }
    }
}
