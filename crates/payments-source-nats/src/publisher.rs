//! [`NatsPublisher`]: messages published to a JetStream subject, each confirmed.

use std::fmt;

use async_nats::jetstream::message::PublishMessage;
use async_trait::async_trait;
use payments_ports::{OutgoingMessage, PublishError, Publisher};

use crate::config::NatsStreamConfig;
use crate::writer::{WriteError, Writer};

/// Messages published to a JetStream subject (`publish --to 'nats://HOST:PORT?stream=NAME&subject=SUBJECT'`),
/// the body as it is and, when the message has an ID, the ID as `Nats-Msg-Id`.
///
/// JetStream drops a message whose `Nats-Msg-Id` it stored within the stream's duplicate window
/// (two minutes unless the stream says otherwise) and acknowledges it as a duplicate: so a batch
/// published again after an error stores each message once, and that acknowledgement counts as
/// success. Messages without an ID are stored again.
///
/// A batch goes out pipelined (up to 1024 publishes awaiting their acknowledgement at once);
/// [`publish`](Publisher::publish) returns once JetStream has acknowledged every one, that is,
/// stored it as the stream's storage and replicas say. The stream is created on connect if
/// missing, with the subject as its only subject; an acknowledgement from any other stream is an
/// error.
pub struct NatsPublisher {
    writer: Writer,
}

impl fmt::Debug for NatsPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsPublisher").field("config", self.writer.config()).finish_non_exhaustive()
    }
}

impl NatsPublisher {
    /// Connects and creates the stream if it is missing.
    ///
    /// # Errors
    ///
    /// [`PublishError::Unavailable`] when the server cannot be reached, [`PublishError::Failed`]
    /// when it refuses (credentials, a stream that cannot be made) or TLS refuses it (its
    /// certificate, a handshake answered in plain text).
    pub async fn connect(config: NatsStreamConfig) -> Result<Self, PublishError> {
        let target = config.to_string();
        Writer::connect(config, "publisher")
            .await
            .map(|writer| Self { writer })
            .map_err(|err| error(target, err))
    }

    /// Where the messages go.
    pub fn config(&self) -> &NatsStreamConfig {
        self.writer.config()
    }
}

#[async_trait]
impl Publisher for NatsPublisher {
    async fn publish(&self, messages: &[OutgoingMessage]) -> Result<(), PublishError> {
        let publishes: Vec<PublishMessage> = messages
            .iter()
            .map(|message| {
                let publish = PublishMessage::build().payload(message.payload.clone());
                match &message.id {
                    Some(id) => publish.message_id(id),
                    None => publish,
                }
            })
            .collect();
        self.writer.publish(publishes).await.map_err(|err| error(self.config().to_string(), err))
    }

    async fn close(&self) -> Result<(), PublishError> {
        self.writer.close().await.map_err(|err| error(self.config().to_string(), err))
    }
}

fn error(target: String, err: WriteError) -> PublishError {
    match err {
        WriteError::Unavailable(source) => PublishError::unavailable_because(target, source),
        WriteError::Failed(source) => PublishError::failed_because(target, source),
    }
}
