//! [`NatsSource`]: a reader of a JetStream durable pull consumer, as a [`DeliverySource`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::consumer::pull::{Batch, BatchError};
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::stream::ConsumerErrorKind;
use async_nats::jetstream::{self, ErrorCode};
use async_nats::{Client, Subject};
use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use payments_ports::{Backlog, BacklogProbe, Delivery, DeliverySource, Payload, Receipt, SourceError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::acker::{Acker, Command};
use crate::config::NatsSourceConfig;
use crate::connection;

/// The longest a pull request waits at the server for messages. Shorter than the lease (half of
/// `ack_wait`), so that a source that stops asking holds no request by the time a message it
/// would take is due again: redeliveries go to sources that ask.
const MAX_EXPIRES: Duration = Duration::from_secs(5);
/// The shortest.
const MIN_EXPIRES: Duration = Duration::from_millis(100);
/// A pull still open this long after its `expires` was not ended by the server: its end was lost
/// with a connection, or the server is away, or the consumer is gone (a 2.9 server says nothing to
/// a pull on a deleted consumer). The pull is replaced and the consumer checked.
const STALL_MARGIN: Duration = Duration::from_secs(1);
/// Failed pulls within one `next` before it reports the source unavailable.
const PULL_ATTEMPTS: u32 = 3;

/// What the source and its receipts share.
struct Shared {
    /// The stream, for logs.
    stream: String,
    lease: Duration,
    /// One permit per delivery in flight: a receipt holds it until it is acknowledged or dropped.
    permits: Arc<Semaphore>,
    /// To the acker.
    commands: mpsc::UnboundedSender<Command>,
}

/// A pull request for messages: being sent, or open (its messages arriving).
enum Pull {
    /// None: the next `next` sends one.
    Idle,
    /// Subscribing to its inbox and sending it. Kept here, not in a local, so that a `next`
    /// dropped half-way leaves it to the next call.
    Requesting { request: Pin<Box<dyn Future<Output = Result<Batch, BatchError>> + Send>>, since: Instant },
    /// Sent: its messages arrive in `batch` until it has them all or it expires (the server then
    /// ends it with a 408 status).
    Open {
        /// Boxed: a batch is large, and most of the time there is one.
        batch: Box<Batch>,
        since: Instant,
    },
}

/// What waiting on an open pull came to.
// Lives on the stack for one match; boxing the message would allocate once per delivery.
#[allow(clippy::large_enum_variant)]
enum Step {
    /// A message, an error, or the end of the pull.
    Item(Option<Result<jetstream::Message, async_nats::Error>>),
    /// The pull is still open past its expiry and a margin.
    Overdue,
}

/// A reader of a JetStream durable pull consumer: see the crate's documentation for how it keeps
/// each sentence of the source contract.
pub struct NatsSource {
    config: NatsSourceConfig,
    client: Client,
    context: jetstream::Context,
    consumer: PullConsumer,
    shared: Arc<Shared>,
    pull: Pull,
    /// How long a pull request waits at the server.
    expires: Duration,
    acker: Option<JoinHandle<()>>,
    closed: bool,
}

impl fmt::Debug for NatsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsSource").field("config", &self.config).finish_non_exhaustive()
    }
}

impl NatsSource {
    /// Connects, creates the stream if it is missing (with the URL's subject) and creates or
    /// updates the durable consumer (explicit acknowledgements, the URL's `ack_wait`,
    /// `max_ack_pending` = the in-flight bound, `max_deliver = -1`), and starts the acker.
    ///
    /// # Errors
    ///
    /// [`SourceError::Unavailable`] when the server cannot be reached or does not answer,
    /// [`SourceError::Failed`] when it refuses (credentials, a stream whose subjects do not cover
    /// the subject, a consumer of that name that cannot take these settings) or TLS refuses it
    /// (a certificate not signed by a trusted root or not naming the host, a handshake answered in plain text).
    pub async fn connect(config: NatsSourceConfig) -> Result<Self, SourceError> {
        let name = format!("payments-source {}/{}", config.stream, config.consumer);
        let client = connection::connect(&config.endpoint, &name).await.map_err(|err| {
            let message = format!("cannot connect to {}", config.endpoint);
            if connection::connect_is_transient(&err) {
                SourceError::unavailable_because(message, connection::connect_error(err))
            } else {
                SourceError::failed_because(message, connection::connect_error(err))
            }
        })?;
        let context = connection::jetstream(client.clone(), config.timeout);
        let consumer = ensure_consumer(&context, &config).await?;
        let lease = consumer.cached_info().config.ack_wait;
        let (commands, queue) = mpsc::unbounded_channel();
        let acker = Acker {
            client: client.clone(),
            double_ack: config.double_ack,
            timeout: config.timeout,
            consumer: config.consumer.clone(),
        };
        let acker = tokio::spawn(acker.run(queue));
        let shared = Arc::new(Shared {
            stream: config.stream.clone(),
            lease,
            permits: Arc::new(Semaphore::new(config.in_flight)),
            commands,
        });
        Ok(Self {
            expires: (config.ack_wait / 2).clamp(MIN_EXPIRES, MAX_EXPIRES),
            config,
            client,
            context,
            consumer,
            shared,
            pull: Pull::Idle,
            acker: Some(acker),
            closed: false,
        })
    }

    /// How the source was configured.
    pub fn config(&self) -> &NatsSourceConfig {
        &self.config
    }

    /// A pull request for as many messages as can go out soon: never more than the free
    /// in-flight permits (plus the one the caller holds) and `batch`, since a message that waits
    /// in the client is already under its `ack_wait`.
    fn request(&self) -> Pull {
        let room = (1 + self.shared.permits.available_permits()).min(self.config.batch());
        let (consumer, expires) = (self.consumer.clone(), self.expires);
        let request = async move { consumer.batch().max_messages(room).expires(expires).messages().await };
        Pull::Requesting { request: Box::pin(request), since: Instant::now() }
    }

    /// The stall guard, after a pull failed (`cause`) or went unanswered: asks the server about
    /// the consumer. Gone (deleted, or its stream deleted): it is created again, and the caller
    /// pulls again. There: a failure was passing, and is reported as such. No answer, or no
    /// connection: the server is unavailable.
    async fn recover(&mut self, cause: Option<String>) -> Result<(), SourceError> {
        let cause = cause.map(|c| format!(": {c}")).unwrap_or_default();
        if self.client.connection_state() != State::Connected {
            return Err(SourceError::unavailable(format!(
                "not connected to {}; reconnecting{cause}",
                self.config
            )));
        }
        match self.consumer.get_info().await {
            Ok(_) if cause.is_empty() => Ok(()),
            Ok(_) => Err(SourceError::unavailable(format!("pulling from {} failed{cause}", self.config))),
            Err(err) => match err.kind() {
                ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::StreamNotFound => {
                    tracing::warn!(
                        stream = %self.config.stream,
                        consumer = %self.config.consumer,
                        error = %err,
                        "the consumer or its stream is gone (deleted?); creating it again: it delivers the stream again from its start"
                    );
                    self.consumer = ensure_consumer(&self.context, &self.config).await?;
                    Ok(())
                }
                ConsumerInfoErrorKind::TimedOut
                | ConsumerInfoErrorKind::NoResponders
                | ConsumerInfoErrorKind::Request
                | ConsumerInfoErrorKind::Offline => Err(SourceError::unavailable_because(
                    format!("cannot reach the consumer on {}{cause}", self.config),
                    err,
                )),
                _ => Err(SourceError::failed_because(
                    format!("cannot read the consumer on {}{cause}", self.config),
                    err,
                )),
            },
        }
    }

    fn hand_out(&self, message: jetstream::Message, permit: OwnedSemaphorePermit) -> Delivery {
        let (attempt, origin) = match message.info() {
            Ok(info) => (
                u32::try_from(info.delivered).unwrap_or(u32::MAX).max(1),
                format!("nats stream {} sequence {}", info.stream, info.stream_sequence),
            ),
            // Not from JetStream (no `$JS.ACK` reply subject): it cannot be counted.
            Err(_) => (1, format!("nats subject {}", message.subject)),
        };
        let message = message.message;
        Delivery {
            payload: Payload::bounded(message.payload, self.config.max_message_bytes),
            attempt,
            receipt: Box::new(NatsReceipt {
                origin,
                reply: message.reply,
                shared: Arc::clone(&self.shared),
                permit: Some(permit),
            }),
        }
    }
}

/// Sends every acknowledgement enqueued so far; `None` if the acker did not answer in time.
async fn flush(shared: &Shared, within: Duration) -> Option<usize> {
    let (reply, answer) = oneshot::channel();
    shared.commands.send(Command::Flush(reply)).ok()?;
    tokio::time::timeout(within, answer).await.ok()?.ok()
}

#[async_trait]
impl DeliverySource for NatsSource {
    async fn next(&mut self) -> Result<Option<Delivery>, SourceError> {
        if self.closed {
            return Err(SourceError::failed(format!("the source on {} is closed", self.config)));
        }
        // Waiting here is safe to drop: nothing is taken from the server before a delivery can go
        // out.
        let permit = Arc::clone(&self.shared.permits)
            .acquire_owned()
            .await
            .map_err(|_| SourceError::failed(format!("the source on {} is closed", self.config)))?;
        let mut failures = 0;
        loop {
            if matches!(self.pull, Pull::Idle) {
                self.pull = self.request();
            }
            if let Pull::Requesting { request, since } = &mut self.pull {
                let since = *since;
                match request.await {
                    Ok(batch) => {
                        self.pull = Pull::Open { batch: Box::new(batch), since };
                    }
                    Err(err) => {
                        self.pull = Pull::Idle;
                        failures += 1;
                        self.recover(Some(err.to_string())).await?;
                        continue;
                    }
                }
            }
            let Pull::Open { batch, since } = &mut self.pull else { continue };
            // Safe to drop: a message leaves the batch only when it is returned. A message already
            // there goes out before the pull is found overdue.
            let overdue = *since + self.expires + STALL_MARGIN;
            let step = tokio::select! {
                biased;
                item = batch.next() => Step::Item(item),
                () = tokio::time::sleep_until(overdue) => Step::Overdue,
            };
            match step {
                Step::Item(Some(Ok(message))) => return Ok(Some(self.hand_out(message, permit))),
                Step::Item(Some(Err(err))) => {
                    self.pull = Pull::Idle;
                    failures += 1;
                    if failures > PULL_ATTEMPTS {
                        return Err(SourceError::unavailable(format!(
                            "pulling from {} keeps failing: {err}",
                            self.config
                        )));
                    }
                    self.recover(Some(err.to_string())).await?;
                }
                Step::Item(None) => self.pull = Pull::Idle,
                // The server ends a pull at its expiry; this one it did not: its end was lost with
                // a connection (the pull is replaced), or the server is away (unavailable), or the
                // consumer is gone (created again): the guard tells which.
                Step::Overdue => {
                    self.pull = Pull::Idle;
                    self.recover(None).await?;
                }
            }
        }
    }

    /// The consumer's info: `num_pending` waits, `num_ack_pending` is unacknowledged.
    fn backlog_probe(&self) -> Option<Arc<dyn BacklogProbe>> {
        Some(Arc::new(NatsBacklog { consumer: self.consumer.clone(), described: self.config.to_string() }))
    }

    async fn close(&mut self) -> Result<(), SourceError> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        // What the open pull holds unhanded goes back at once, rather than after ack_wait.
        if let Pull::Open { mut batch, .. } = std::mem::replace(&mut self.pull, Pull::Idle) {
            while let Some(Some(Ok(message))) = batch.next().now_or_never() {
                if let Some(reply) = message.message.reply {
                    let _ = self.shared.commands.send(Command::Nak(reply));
                }
            }
        }
        let given_up = flush(&self.shared, self.config.timeout * 2).await;
        self.shared.permits.close();
        // Every receipt is settled or dropped by now (the contract of `close`): the acker can go,
        // and the connection with it, its last bytes written first.
        let _ = self.shared.commands.send(Command::Stop);
        if let Some(acker) = self.acker.take() {
            let _ = tokio::time::timeout(self.config.timeout, acker).await;
        }
        if let Err(err) = self.client.drain().await {
            tracing::debug!(stream = %self.config.stream, error = %err, "cannot close the NATS connection");
        }
        match given_up {
            Some(0) => Ok(()),
            Some(n) => Err(SourceError::unavailable(format!(
                "{n} acknowledgements to {} were not sent or confirmed; their messages will be delivered again",
                self.config
            ))),
            None => Err(SourceError::unavailable(format!(
                "the acknowledgements to {} were not all sent in time; their messages will be delivered again",
                self.config
            ))),
        }
    }
}

/// How one delivery is settled: through its reply subject, by the acker.
struct NatsReceipt {
    origin: String,
    /// `None` once acknowledged (and for a message that did not come from JetStream).
    reply: Option<Subject>,
    shared: Arc<Shared>,
    /// The in-flight slot, given back when the receipt is settled or dropped.
    permit: Option<OwnedSemaphorePermit>,
}

impl fmt::Debug for NatsReceipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsReceipt").field("origin", &self.origin).finish()
    }
}

impl Receipt for NatsReceipt {
    fn origin(&self) -> String {
        self.origin.clone()
    }

    fn ack(mut self: Box<Self>) {
        if let Some(reply) = self.reply.take() {
            // After the source is gone with its acker, the message comes again: harmless.
            let _ = self.shared.commands.send(Command::Ack(reply));
        } else {
            tracing::warn!(origin = %self.origin, stream = %self.shared.stream, "a message without a JetStream reply subject cannot be acknowledged");
        }
        self.permit.take();
    }

    fn lease(&self) -> Option<Duration> {
        Some(self.shared.lease)
    }

    fn renew(&self) {
        if let Some(reply) = &self.reply {
            let _ = self.shared.commands.send(Command::Renew(reply.clone()));
        }
    }
}

impl Drop for NatsReceipt {
    fn drop(&mut self) {
        // Dropped unacknowledged: a negative acknowledgement makes JetStream deliver it again at
        // once, counted, rather than after ack_wait.
        if let Some(reply) = self.reply.take() {
            let _ = self.shared.commands.send(Command::Nak(reply));
        }
    }
}

/// Asks the server for the durable consumer's counts, by its name: a consumer made again after a
/// deletion is asked the same way. NATS multiplexes one connection, so the question never waits
/// behind a pull.
struct NatsBacklog {
    consumer: PullConsumer,
    described: String,
}

#[async_trait]
impl BacklogProbe for NatsBacklog {
    async fn backlog(&self) -> Result<Backlog, SourceError> {
        let info = self.consumer.get_info().await.map_err(|err| {
            SourceError::unavailable_because(format!("cannot read the consumer on {}", self.described), err)
        })?;
        Ok(Backlog { waiting: Some(info.num_pending), unacknowledged: Some(info.num_ack_pending as u64) })
    }
}

/// The stream (created if missing) and the durable consumer on it, created or updated to the
/// configured settings: creating again is harmless, and changes to the editable settings take
/// effect.
async fn ensure_consumer(
    context: &jetstream::Context,
    config: &NatsSourceConfig,
) -> Result<PullConsumer, SourceError> {
    let stream =
        connection::ensure_stream(context, &config.stream, &config.subject).await.map_err(|err| {
            let message = format!("cannot create the stream on {config}");
            if connection::create_stream_is_transient(&err) {
                SourceError::unavailable_because(message, err)
            } else {
                SourceError::failed_because(message, err)
            }
        })?;
    let settings = pull::Config {
        durable_name: Some(config.consumer.clone()),
        ack_policy: AckPolicy::Explicit,
        ack_wait: config.ack_wait,
        // The server would drop a message silently after that many deliveries; the app's
        // consumer dead-letters by attempt instead (`max_deliveries`).
        max_deliver: -1,
        max_ack_pending: i64::try_from(config.in_flight).unwrap_or(i64::MAX),
        filter_subject: config.subject.clone(),
        ..Default::default()
    };
    stream.create_consumer(settings).await.map_err(|err| {
        let message = format!("cannot create the consumer on {config}");
        let transient = match err.kind() {
            ConsumerErrorKind::TimedOut | ConsumerErrorKind::Request => true,
            // The stream went away between the two calls (the next attempt makes it again), or
            // the server failed for now: a consumer created right after its namesake was deleted
            // can meet the old one's store still being removed (500, "error creating store").
            ConsumerErrorKind::JetStream(js) => {
                js.error_code() == ErrorCode::STREAM_NOT_FOUND || js.code() >= 500
            }
            _ => false,
        };
        if transient {
            SourceError::unavailable_because(message, err)
        } else {
            SourceError::failed_because(message, err)
        }
    })
}
