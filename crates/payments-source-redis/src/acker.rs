//! The background task that sends what receipts enqueue: acknowledgements (`XACK`, many IDs per
//! command) and lease renewals (`XCLAIM … JUSTID`), everything queued at the moment in one
//! pipelined round trip, on a connection of its own.
//!
//! A batch that fails on a broken connection is sent again on a new one (both commands are
//! idempotent), a few times; after that it is given up with a warning. A lost acknowledgement
//! only makes its entry come again, which the store answers as a duplicate; a lost renewal at
//! worst lets the entry go to another consumer.

use std::collections::HashSet;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::errors::{self, Class};
use crate::link::Link;

/// What receipts and the source ask of the acker.
#[derive(Debug)]
pub(crate) enum Command {
    Ack(String),
    Renew(String),
    /// Answered once everything enqueued before it was sent, or given up: with the number of
    /// acknowledgements given up since the previous flush.
    Flush(oneshot::Sender<usize>),
    /// Sends what is enqueued before it, then ends the task.
    Stop,
}

/// What the acker works on.
pub(crate) struct Acker {
    pub(crate) link: Link,
    pub(crate) stream: String,
    pub(crate) group: String,
    pub(crate) consumer: String,
}

/// What one round trip carries.
#[derive(Default)]
struct Batch {
    acks: Vec<String>,
    renewals: Vec<String>,
    flushes: Vec<oneshot::Sender<usize>>,
    stop: bool,
}

impl Batch {
    fn take(&mut self, command: Command) {
        match command {
            Command::Ack(id) => self.acks.push(id),
            Command::Renew(id) => self.renewals.push(id),
            Command::Flush(reply) => self.flushes.push(reply),
            Command::Stop => self.stop = true,
        }
    }
}

/// At most this many IDs in one XACK, so that one command stays small.
const IDS_PER_COMMAND: usize = 1024;
/// Attempts at one batch before it is given up.
const ATTEMPTS: u32 = 4;

impl Acker {
    pub(crate) async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut given_up = 0;
        while let Some(first) = commands.recv().await {
            let mut batch = Batch::default();
            batch.take(first);
            // Everything queued meanwhile goes in the same round trip.
            while !batch.stop
                && let Ok(command) = commands.try_recv()
            {
                batch.take(command);
            }
            let Batch { acks, mut renewals, flushes, stop } = batch;
            if !renewals.is_empty() {
                let acked: HashSet<&String> = acks.iter().collect();
                let mut seen = HashSet::new();
                renewals.retain(|id| !acked.contains(id) && seen.insert(id.clone()));
            }
            if (!acks.is_empty() || !renewals.is_empty())
                && let Err(err) = self.send(&acks, &renewals).await
            {
                given_up += acks.len();
                tracing::warn!(
                    stream = %self.stream,
                    group = %self.group,
                    acknowledgements = acks.len(),
                    renewals = renewals.len(),
                    error = %err,
                    "giving up acknowledgements: their entries will be delivered again"
                );
            }
            for reply in flushes {
                let _ = reply.send(given_up);
                given_up = 0;
            }
            if stop {
                return;
            }
        }
    }

    async fn send(&mut self, acks: &[String], renewals: &[String]) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        for ids in acks.chunks(IDS_PER_COMMAND) {
            pipe.cmd("XACK").arg(&self.stream).arg(&self.group).arg(ids).ignore();
        }
        if !renewals.is_empty() {
            // Resets the idle time without counting a delivery; an entry no longer pending (acknowledged,
            // deleted) is left alone.
            pipe.cmd("XCLAIM")
                .arg(&self.stream)
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(0)
                .arg(renewals)
                .arg("JUSTID")
                .ignore();
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = match self.link.get().await {
                Ok(mut connection) => pipe.exec_async(&mut connection).await,
                Err(err) => Err(err),
            };
            let Err(err) = result else { return Ok(()) };
            match errors::classify(&err) {
                Class::Connection | Class::Busy if attempt < ATTEMPTS => {
                    if errors::classify(&err) == Class::Connection {
                        self.link.reset();
                    }
                    tokio::time::sleep(Duration::from_millis(25 << attempt)).await;
                }
                Class::Connection => {
                    self.link.reset();
                    return Err(err);
                }
                // The group is gone (the stream was deleted): there is nothing left to acknowledge.
                _ => return Err(err),
            }
        }
    }
}
