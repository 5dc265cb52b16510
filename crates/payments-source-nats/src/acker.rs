//! The background task that sends what receipts enqueue: acknowledgements (`+ACK`), negative
//! acknowledgements of dropped receipts (`-NAK`, so that the message comes again at once) and
//! lease renewals (`+WPI`, "work in progress", which restarts the delivery's `ack_wait`).
//!
//! A receipt cannot wait (`Receipt::ack` is not async, and a receipt's `Drop` runs anywhere), so
//! it hands its reply subject to this task, which publishes it on the source's client. In
//! double-ack mode each acknowledgement is a request, and the server's answer confirms it was
//! applied; the task keeps many in flight at once. A lost or unconfirmed acknowledgement only
//! makes its message come again, which the store answers as a duplicate: it is counted and
//! reported by the next flush, never retried for ever.

use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::{Client, Subject};
use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};

/// What receipts and the source ask of the acker. Each carries the delivery's reply subject
/// (`$JS.ACK.<stream>.<consumer>.…`), which is all JetStream needs to know which delivery it is.
#[derive(Debug)]
pub(crate) enum Command {
    Ack(Subject),
    Nak(Subject),
    Renew(Subject),
    /// Answered once everything enqueued before it was written to the connection (and, in
    /// double-ack mode, confirmed or given up): with the number of acknowledgements given up since
    /// the previous flush.
    Flush(oneshot::Sender<usize>),
    /// Sends what is enqueued before it, then ends the task.
    Stop,
}

/// What the acker works with.
pub(crate) struct Acker {
    pub(crate) client: Client,
    /// Whether acknowledgements wait for the server's confirmation.
    pub(crate) double_ack: bool,
    /// How long a confirmation may take.
    pub(crate) timeout: Duration,
    /// For logs.
    pub(crate) consumer: String,
}

/// Commands taken from the queue at once: one wake-up of the task for many acknowledgements.
const COMMANDS_PER_TURN: usize = 256;

impl Acker {
    /// Runs until told to stop, or until every sender is gone (the source and all its receipts:
    /// a crash), then flushes what it sent.
    pub(crate) async fn run(self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut confirming: FuturesUnordered<BoxFuture<'static, bool>> = FuturesUnordered::new();
        let mut given_up = 0usize;
        let mut turn = Vec::with_capacity(COMMANDS_PER_TURN);
        loop {
            tokio::select! {
                Some(confirmed) = confirming.next(), if !confirming.is_empty() => {
                    if !confirmed {
                        given_up += 1;
                    }
                }
                taken = commands.recv_many(&mut turn, COMMANDS_PER_TURN) => {
                    if taken == 0 {
                        break;
                    }
                    let mut stop = false;
                    for command in turn.drain(..) {
                        match command {
                            Command::Ack(reply) if self.double_ack => confirming.push(self.confirm(reply)),
                            Command::Ack(reply) => given_up += usize::from(!self.send(reply, AckKind::Ack).await),
                            Command::Nak(reply) => {
                                self.send(reply, AckKind::Nak(None)).await;
                            }
                            Command::Renew(reply) => {
                                self.send(reply, AckKind::Progress).await;
                            }
                            Command::Flush(answer) => {
                                while let Some(confirmed) = confirming.next().await {
                                    given_up += usize::from(!confirmed);
                                }
                                given_up += usize::from(!self.flush().await);
                                let _ = answer.send(std::mem::take(&mut given_up));
                            }
                            Command::Stop => stop = true,
                        }
                    }
                    if stop {
                        break;
                    }
                }
            }
        }
        while let Some(confirmed) = confirming.next().await {
            given_up += usize::from(!confirmed);
        }
        self.flush().await;
        if given_up > 0 {
            tracing::warn!(consumer = %self.consumer, given_up, "acknowledgements were not confirmed; their messages come again");
        }
    }

    /// Publishes `kind` to the delivery's reply subject; whether the client took it (it fails only
    /// once the client is closed: while disconnected it buffers).
    async fn send(&self, reply: Subject, kind: AckKind) -> bool {
        match self.client.publish(reply, Bytes::from(kind)).await {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!(consumer = %self.consumer, ?kind, error = %err, "cannot send an acknowledgement; its message comes again");
                false
            }
        }
    }

    /// An acknowledgement as a request: the server answers once it has applied it. No responder
    /// (the consumer is gone) or no answer in time counts as not confirmed.
    fn confirm(&self, reply: Subject) -> BoxFuture<'static, bool> {
        let (client, timeout, consumer) = (self.client.clone(), self.timeout, self.consumer.clone());
        Box::pin(async move {
            let request = client.request(reply, Bytes::from(AckKind::Ack));
            match tokio::time::timeout(timeout, request).await {
                Ok(Ok(_)) => true,
                Ok(Err(err)) => {
                    tracing::warn!(consumer = %consumer, error = %err, "an acknowledgement was not confirmed; its message comes again");
                    false
                }
                Err(_) => {
                    tracing::warn!(consumer = %consumer, ?timeout, "no confirmation of an acknowledgement in time; its message may come again");
                    false
                }
            }
        })
    }

    /// Writes what the client buffered to the connection; whether it could.
    async fn flush(&self) -> bool {
        match tokio::time::timeout(self.timeout, self.client.flush()).await {
            Ok(Ok(())) => true,
            Ok(Err(err)) => {
                tracing::warn!(consumer = %self.consumer, error = %err, "cannot flush acknowledgements");
                false
            }
            Err(_) => {
                tracing::warn!(consumer = %self.consumer, timeout = ?self.timeout, "acknowledgements not flushed in time (disconnected?)");
                false
            }
        }
    }
}
