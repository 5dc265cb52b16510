//! What the dead-letter sink and the publisher share: a client, the stream (created if missing),
//! and publishing with JetStream's acknowledgement, many at once, each one awaited.

use std::collections::VecDeque;

use async_nats::Client;
use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, context::PublishError};
use payments_ports::BoxError;

use crate::config::NatsStreamConfig;
use crate::connection;

/// Publishes whose acknowledgement is awaited before more go out: below the context's bound on
/// acknowledgements in flight (5000), which would otherwise make a long batch wait for itself.
const WINDOW: usize = 1024;

/// Why a write failed: worth retrying later, or not.
pub(crate) enum WriteError {
    Unavailable(BoxError),
    Failed(BoxError),
}

/// A connection that publishes to one subject of one stream.
pub(crate) struct Writer {
    config: NatsStreamConfig,
    client: Client,
    context: jetstream::Context,
}

impl Writer {
    /// Connects and creates the stream if it is missing.
    pub(crate) async fn connect(config: NatsStreamConfig, role: &str) -> Result<Self, WriteError> {
        let name = format!("payments-{role} {}", config.stream);
        let client = connection::connect(&config.endpoint, &name).await.map_err(|err| {
            if connection::connect_is_transient(&err) {
                WriteError::Unavailable(connection::connect_error(err))
            } else {
                WriteError::Failed(connection::connect_error(err))
            }
        })?;
        let context = connection::jetstream(client.clone(), config.timeout);
        connection::ensure_stream(&context, &config.stream, &config.subject).await.map_err(|err| {
            if connection::create_stream_is_transient(&err) {
                WriteError::Unavailable(err.into())
            } else {
                WriteError::Failed(err.into())
            }
        })?;
        Ok(Self { config, client, context })
    }

    pub(crate) fn config(&self) -> &NatsStreamConfig {
        &self.config
    }

    /// Publishes every message, in order, and returns once JetStream has acknowledged each one (a
    /// duplicate within the stream's window, dropped by its `Nats-Msg-Id`, is acknowledged too).
    pub(crate) async fn publish(
        &self,
        messages: impl IntoIterator<Item = PublishMessage>,
    ) -> Result<(), WriteError> {
        let mut acks: VecDeque<PublishAckFuture> = VecDeque::new();
        for message in messages {
            if acks.len() >= WINDOW
                && let Some(ack) = acks.pop_front()
            {
                self.confirmed(ack).await?;
            }
            let ack =
                self.context.send_publish(self.config.subject.clone(), message).await.map_err(classify)?;
            acks.push_back(ack);
        }
        for ack in acks {
            self.confirmed(ack).await?;
        }
        Ok(())
    }

    async fn confirmed(&self, ack: PublishAckFuture) -> Result<(), WriteError> {
        let ack = ack.await.map_err(classify)?;
        if ack.stream != self.config.stream {
            return Err(WriteError::Failed(
                format!(
                    "subject {} is stored by stream {}, not {}",
                    self.config.subject, ack.stream, self.config.stream
                )
                .into(),
            ));
        }
        Ok(())
    }

    /// Writes what the client buffered, then closes the connection, within the config's timeout:
    /// everything that mattered was acknowledged already, and a flush to a server that is down
    /// would otherwise wait for it to come back, holding up the exit of the process.
    pub(crate) async fn close(&self) -> Result<(), WriteError> {
        let closing = async {
            self.client.flush().await.map_err(|err| WriteError::Unavailable(err.into()))?;
            self.client.drain().await.map_err(|err| WriteError::Unavailable(err.into()))
        };
        tokio::time::timeout(self.config.timeout, closing).await.unwrap_or_else(|_| {
            Err(WriteError::Unavailable(
                format!("the connection did not close within {:?}", self.config.timeout).into(),
            ))
        })
    }
}

/// A missing stream, a message over the server's size limit, a failed expectation: publishing
/// again will not help. No answer in time, a broken connection, too many acknowledgements in
/// flight, a JetStream error (storage full): it may.
fn classify(err: PublishError) -> WriteError {
    match err.kind() {
        PublishErrorKind::StreamNotFound
        | PublishErrorKind::MaxPayloadExceeded
        | PublishErrorKind::WrongLastMessageId
        | PublishErrorKind::WrongLastSequence => WriteError::Failed(err.into()),
        _ => WriteError::Unavailable(err.into()),
    }
}
