//! [`RabbitSource`]: a consumer on a RabbitMQ queue, as a [`DeliverySource`].

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, Consumer};
use payments_ports::{Backlog, BacklogProbe, Delivery, DeliverySource, Payload, Receipt, SourceError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::acker::{self, Command, Counters};
use crate::config::RabbitSourceConfig;
use crate::connection::{self, bounded};
use crate::errors;

/// How long `close` waits for the settlements enqueued before it to be handed to the connection,
/// and then for the channel and the connection to close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long setting up the consuming channel (qos, consume) may wait for the broker.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// What the source and its receipts share.
struct Shared {
    /// The queue, for origins and logs.
    queue: String,
    /// One permit per delivery in flight: a receipt holds it until it is acknowledged or dropped.
    permits: Arc<Semaphore>,
    /// To the acker.
    commands: mpsc::UnboundedSender<Command>,
    counters: Arc<Counters>,
    reconnects: AtomicU64,
    discarded: AtomicU64,
}

/// What a [`RabbitSource`] has counted since it was connected: how often it had to recover, and
/// what that cost. None of it loses a message; each one that was in flight comes again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SourceStats {
    /// Connections made after the first: after a lost connection, or a consumer the broker
    /// cancelled (a deleted queue).
    pub reconnects: u64,
    /// Acknowledgements, and rejections of dropped receipts, that lapin did not send because the
    /// delivery's channel had closed: RabbitMQ requeued the message then, so it comes again.
    pub stale_settlements: u64,
    /// Settlements that failed on the way: the connection broke while they were sent (one sent
    /// the very moment it broke may be left unanswered by lapin, and is given up after 5 s).
    pub failed_settlements: u64,
    /// Deliveries still buffered in lapin when their channel closed, discarded instead of handed
    /// out: RabbitMQ requeued them with the channel.
    pub discarded_deliveries: u64,
}

/// One connection, its consuming channel, and the consumer on it.
struct Link {
    consumer: Consumer,
    channel: Channel,
    connection: Connection,
}

/// A consumer on a RabbitMQ queue: see the crate's documentation for how it keeps each sentence
/// of the source contract.
pub struct RabbitSource {
    config: RabbitSourceConfig,
    shared: Arc<Shared>,
    /// `None` after the connection broke: the next call to `next` connects again.
    link: Option<Link>,
    acker: Option<JoinHandle<()>>,
    closed: bool,
}

impl fmt::Debug for RabbitSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitSource")
            .field("config", &self.config)
            .field("connected", &self.link.is_some())
            .finish_non_exhaustive()
    }
}

impl RabbitSource {
    /// Connects, declares the queue (a durable quorum queue, and its parking queue; a queue that
    /// exists with other arguments is used as it is), sets the prefetch and starts consuming.
    ///
    /// # Errors
    ///
    /// [`SourceError::Unavailable`] when the broker cannot be reached, [`SourceError::Failed`]
    /// when it refuses the credentials, the virtual host or the queue.
    pub async fn connect(config: RabbitSourceConfig) -> Result<Self, SourceError> {
        let link = open_link(&config).await.map_err(|err| source_error(&config, "connect", err))?;
        let counters = Arc::new(Counters::default());
        let (commands, inbox) = mpsc::unbounded_channel();
        let acker = tokio::spawn(acker::run(inbox, Arc::clone(&counters)));
        let shared = Arc::new(Shared {
            queue: config.queue.clone(),
            permits: Arc::new(Semaphore::new(usize::from(config.prefetch()))),
            commands,
            counters,
            reconnects: AtomicU64::new(0),
            discarded: AtomicU64::new(0),
        });
        Ok(Self { config, shared, link: Some(link), acker: Some(acker), closed: false })
    }

    /// How the source was configured.
    pub fn config(&self) -> &RabbitSourceConfig {
        &self.config
    }

    /// What the source has counted so far.
    pub fn stats(&self) -> SourceStats {
        SourceStats {
            reconnects: self.shared.reconnects.load(Ordering::Relaxed),
            stale_settlements: self.shared.counters.stale.load(Ordering::Relaxed),
            failed_settlements: self.shared.counters.failed.load(Ordering::Relaxed),
            discarded_deliveries: self.shared.discarded.load(Ordering::Relaxed),
        }
    }

    /// Sends every settlement enqueued so far (acknowledgements, rejections of dropped
    /// receipts), and returns once RabbitMQ's channel has them: after the acker has handed them
    /// to the connection, a `basic.qos` with the same prefetch makes a round trip on the consuming
    /// channel, whose frames RabbitMQ handles in order. Settlements that belong to a channel that
    /// has closed are not sent (their messages come again), and do not hold this up.
    ///
    /// A quorum queue applies what the channel passes on a little later, so a connection that
    /// breaks right after this returns may still bring a few of these messages back (see the
    /// crate's documentation, sentence 3); [`close`](DeliverySource::close) waits for that too.
    /// A caller that wants its acknowledgements out before it goes on (a test that breaks the
    /// connection next) calls this.
    ///
    /// # Errors
    ///
    /// [`SourceError::Unavailable`] when that did not happen within `within`, or the channel
    /// broke meanwhile: the messages of settlements that were lost come again.
    pub async fn flush(&self, within: Duration) -> Result<(), SourceError> {
        let started = tokio::time::Instant::now();
        self.hand_over(within).await?;
        let Some(link) = &self.link else { return Ok(()) };
        let left = within.saturating_sub(started.elapsed());
        let qos = link.channel.basic_qos(self.config.prefetch(), BasicQosOptions { global: false });
        bounded(left, "confirm the acknowledgements", qos).await.map_err(|err| {
            SourceError::unavailable_because(
                format!(
                    "the channel to {} broke before RabbitMQ had the acknowledgements; their messages may come again",
                    self.config
                ),
                err,
            )
        })
    }

    /// Waits until the acker has handed every settlement enqueued so far to the connection.
    async fn hand_over(&self, within: Duration) -> Result<(), SourceError> {
        let (reply, answer) = oneshot::channel();
        let handed = match self.shared.commands.send(Command::Flush(reply)) {
            Ok(()) => matches!(tokio::time::timeout(within, answer).await, Ok(Ok(()))),
            Err(_) => false,
        };
        if handed {
            Ok(())
        } else {
            Err(SourceError::unavailable(format!(
                "the acknowledgements to {} were not all sent within {within:?}; their messages will be delivered again",
                self.config
            )))
        }
    }

    /// Connects again after the connection broke (or the broker cancelled the consumer).
    async fn reconnect(&mut self) -> Result<(), SourceError> {
        self.link = None;
        let link =
            open_link(&self.config).await.map_err(|err| source_error(&self.config, "reconnect", err))?;
        let reconnects = self.shared.reconnects.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(queue = %self.config.queue, reconnects, "consuming again on a new connection");
        self.link = Some(link);
        Ok(())
    }

    fn hand_out(&self, delivery: lapin::message::Delivery, permit: OwnedSemaphorePermit) -> Delivery {
        let attempt = attempt(&delivery);
        let lapin::message::Delivery { delivery_tag, properties, data, acker, .. } = delivery;
        Delivery {
            payload: Payload::bounded(Bytes::from(data), self.config.max_message_bytes),
            attempt,
            receipt: Box::new(RabbitReceipt {
                acker: Some(acker),
                permit: Some(permit),
                shared: Arc::clone(&self.shared),
                delivery_tag,
                message_id: properties.message_id().clone(),
            }),
        }
    }
}

#[async_trait]
impl DeliverySource for RabbitSource {
    /// The queue's ready count, from a passive declaration on a connection of the probe's own;
    /// the unacknowledged count is left out, as AMQP does not give it.
    fn backlog_probe(&self) -> Option<Arc<dyn BacklogProbe>> {
        Some(Arc::new(RabbitBacklog {
            config: self.config.clone(),
            connection: tokio::sync::Mutex::new(None),
        }))
    }

    async fn next(&mut self) -> Result<Option<Delivery>, SourceError> {
        if self.closed {
            return Err(SourceError::failed(format!("the source on {} is closed", self.config)));
        }
        // Waiting here is safe to drop: nothing is taken from the consumer before a delivery can
        // go out.
        let permit = Arc::clone(&self.shared.permits)
            .acquire_owned()
            .await
            .map_err(|_| SourceError::failed(format!("the source on {} is closed", self.config)))?;
        // One new connection per call at most: if that one breaks at once too, the consumer is
        // told the source is unavailable and asks again after its backoff.
        let mut reconnected = false;
        loop {
            if self.link.is_none() {
                self.reconnect().await?;
                reconnected = true;
            }
            let Some(link) = self.link.as_mut() else { continue };
            // Dropping this wait loses nothing: lapin's consumer stream hands a delivery over
            // only from a completed poll.
            let broke = match link.consumer.next().await {
                Some(Ok(delivery)) if delivery.acker.usable() => {
                    return Ok(Some(self.hand_out(delivery, permit)));
                }
                Some(Ok(_stale)) => {
                    // Buffered before its channel closed: RabbitMQ has requeued it, and it will
                    // come again on the new channel. Handing it out would only make a delivery
                    // whose acknowledgement cannot be sent.
                    self.shared.discarded.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Some(Err(err)) => err.to_string(),
                None => "the broker cancelled the consumer (was the queue deleted?)".to_owned(),
            };
            tracing::warn!(
                queue = %self.config.queue,
                reason = %broke,
                "lost the consuming channel; its unacknowledged messages are requeued by RabbitMQ and come again"
            );
            self.link = None;
            if reconnected {
                return Err(SourceError::unavailable(format!(
                    "consuming from {} broke again right after reconnecting: {broke}",
                    self.config
                )));
            }
        }
    }

    async fn close(&mut self) -> Result<(), SourceError> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        self.shared.permits.close();
        let mut result = self.hand_over(CLOSE_TIMEOUT).await;
        if let Some(link) = self.link.take() {
            let settled = settle_before_closing(&link, self.config.prefetch()).await;
            if result.is_ok() {
                result = settled.map_err(|err| {
                    SourceError::unavailable_because(
                        format!(
                            "closing the channel to {} failed, so the last acknowledgements may not have arrived; their messages will be delivered again",
                            self.config
                        ),
                        err,
                    )
                });
            }
            let _ =
                bounded(CLOSE_TIMEOUT, "close the connection", link.connection.close(200, "closing".into()))
                    .await;
        }
        if let Some(acker) = self.acker.take() {
            // It ends once the last receipt is gone; receipts still held (the contract says there
            // are none) would keep it, so it is not waited for.
            drop(acker);
        }
        result
    }
}

/// Closes the consuming channel once RabbitMQ has applied the acknowledgements sent on it.
///
/// A quorum queue applies acknowledgements asynchronously: the channel passes them on to the
/// queue, and while more than a few dozen of its commands are not applied yet, it holds the next
/// ones back, and sends them when earlier ones are applied (RabbitMQ 3.10's `rabbit_fifo_client`
/// has a soft limit of 32). A channel closed meanwhile never sends them, and the queue returns
/// their messages, acknowledged as they were. So the consumer is cancelled first: that is a
/// command the queue applies after everything the channel has sent, and RabbitMQ answers it only
/// then; a round trip more (`basic.qos`) lets the channel send what it held back, before the
/// close, which the queue handles after those. Then closing the channel makes RabbitMQ requeue
/// what it held for this consumer and was not handed out, so that it goes to another consumer at
/// once.
async fn settle_before_closing(link: &Link, prefetch: u16) -> lapin::Result<()> {
    let tag = link.consumer.tag();
    bounded(
        CLOSE_TIMEOUT,
        "cancel the consumer",
        link.channel.basic_cancel(tag, BasicCancelOptions::default()),
    )
    .await?;
    bounded(
        CLOSE_TIMEOUT,
        "wait for the channel",
        link.channel.basic_qos(prefetch, BasicQosOptions { global: false }),
    )
    .await?;
    bounded(CLOSE_TIMEOUT, "close the channel", link.channel.close(200, "closing".into())).await
}

/// Connects, declares the queue, and consumes with the configured prefetch.
async fn open_link(config: &RabbitSourceConfig) -> lapin::Result<Link> {
    let connection = connection::connect(&config.endpoint, &config.connection_name()).await?;
    connection::declare_queue(&connection, &config.queue).await?;
    let channel = bounded(SETUP_TIMEOUT, "open the consuming channel", connection.create_channel()).await?;
    bounded(
        SETUP_TIMEOUT,
        "set the prefetch",
        channel.basic_qos(config.prefetch(), BasicQosOptions { global: false }),
    )
    .await?;
    let consumer = bounded(
        SETUP_TIMEOUT,
        "start consuming",
        channel.basic_consume(
            config.queue.as_str().into(),
            config.connection_name().into(),
            // Manual acknowledgements (`no_ack: false`), not exclusive.
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await?;
    Ok(Link { consumer, channel, connection })
}

/// The attempt number of a delivery: quorum queues count the earlier deliveries of a message in
/// `x-delivery-count` (absent on the first); a classic queue says only whether it was delivered
/// before (`redelivered`), so its redeliveries all say 2.
fn attempt(delivery: &lapin::message::Delivery) -> u32 {
    let count = delivery.properties.headers().as_ref().and_then(|headers| {
        headers.inner().get("x-delivery-count").and_then(|value| match *value {
            AMQPValue::LongLongInt(n) => u64::try_from(n).ok(),
            AMQPValue::LongInt(n) => u64::try_from(n).ok(),
            AMQPValue::LongUInt(n) => Some(u64::from(n)),
            AMQPValue::ShortInt(n) => u64::try_from(n).ok(),
            AMQPValue::ShortUInt(n) => Some(u64::from(n)),
            AMQPValue::ShortShortInt(n) => u64::try_from(n).ok(),
            AMQPValue::ShortShortUInt(n) => Some(u64::from(n)),
            _ => None,
        })
    });
    match count {
        Some(count) => u32::try_from(count.saturating_add(1)).unwrap_or(u32::MAX),
        None if delivery.redelivered => 2,
        None => 1,
    }
}

/// How one delivery is settled: through its own lapin `Acker`, by the acker task.
struct RabbitReceipt {
    /// Taken by `ack`; still here when the receipt is dropped unacknowledged.
    acker: Option<lapin::Acker>,
    /// The in-flight slot, given back when the receipt is settled or dropped.
    permit: Option<OwnedSemaphorePermit>,
    shared: Arc<Shared>,
    delivery_tag: u64,
    message_id: Option<ShortString>,
}

impl fmt::Debug for RabbitReceipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitReceipt")
            .field("queue", &self.shared.queue)
            .field("delivery_tag", &self.delivery_tag)
            .field("message_id", &self.message_id)
            .finish()
    }
}

impl Receipt for RabbitReceipt {
    fn origin(&self) -> String {
        match &self.message_id {
            Some(id) => {
                format!("rabbitmq queue {} delivery {} message_id {id}", self.shared.queue, self.delivery_tag)
            }
            None => format!("rabbitmq queue {} delivery {}", self.shared.queue, self.delivery_tag),
        }
    }

    fn ack(mut self: Box<Self>) {
        if let Some(acker) = self.acker.take() {
            // After close the acker is gone, and so is the channel: the message was requeued
            // when it closed, and comes again, which is harmless.
            let _ = self.shared.commands.send(Command::Ack(acker));
        }
        self.permit.take();
    }

    // No lease: RabbitMQ keeps an unacknowledged delivery for its consumer as long as the
    // channel lives (see the crate's documentation), so there is nothing to renew.
}

impl Drop for RabbitReceipt {
    fn drop(&mut self) {
        if let Some(acker) = self.acker.take() {
            // Without this, RabbitMQ would hold the message until the channel closes.
            let _ = self.shared.commands.send(Command::Requeue(acker));
        }
    }
}

/// Asks RabbitMQ how many messages are ready in the queue, on a connection of its own (made when
/// first asked, and again after it broke).
struct RabbitBacklog {
    config: RabbitSourceConfig,
    connection: tokio::sync::Mutex<Option<lapin::Connection>>,
}

#[async_trait]
impl BacklogProbe for RabbitBacklog {
    async fn backlog(&self) -> Result<Backlog, SourceError> {
        let mut held = self.connection.lock().await;
        let connection = match held.take() {
            Some(connection) if connection.status().connected() => connection,
            _ => {
                let name = format!("{}-backlog", self.config.connection_name());
                connection::connect(&self.config.endpoint, &name)
                    .await
                    .map_err(|err| source_error(&self.config, "connect", err))?
            }
        };
        let ready = connection::ready_count(&connection, &self.config.queue).await.map_err(|err| {
            SourceError::unavailable_because(
                format!("cannot count the ready messages on {}", self.config),
                err,
            )
        })?;
        *held = Some(connection);
        Ok(Backlog { waiting: Some(u64::from(ready)), unacknowledged: None })
    }
}

fn source_error(config: &RabbitSourceConfig, action: &str, err: lapin::Error) -> SourceError {
    let message = format!("cannot {action} to {config}");
    if errors::is_transient(&err) {
        SourceError::unavailable_because(message, err)
    } else {
        SourceError::failed_because(message, errors::explained(err))
    }
}
