//! [`RabbitPublisher`]: messages published to a RabbitMQ queue or exchange.

use std::fmt;

use async_trait::async_trait;
use lapin::BasicProperties;
use payments_ports::{OutgoingMessage, PublishError, Publisher};

use crate::config::RabbitTargetConfig;
use crate::outlet::{Outlet, OutletError};

/// Messages published to RabbitMQ (`publish --to 'amqp://…?queue=NAME'`, or
/// `…?exchange=NAME&routing-key=KEY`, or both), each as one persistent message whose body is
/// the payload, byte for byte, and whose `message_id` property is the message's ID when it has
/// one.
///
/// A batch goes out at once, and [`publish`](Publisher::publish) returns once RabbitMQ has
/// confirmed every message (publisher confirms, `mandatory`): for a quorum queue, once a
/// majority of its replicas have written it. RabbitMQ does not deduplicate by `message_id`, so a
/// batch published again after an error may store some messages twice (some confirmations
/// lost with a connection belong to messages that were stored): the consumer's store answers
/// those as duplicates.
pub struct RabbitPublisher {
    outlet: Outlet,
}

impl fmt::Debug for RabbitPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitPublisher").field("config", self.outlet.config()).finish_non_exhaustive()
    }
}

impl RabbitPublisher {
    /// Connects, declares the queue if the URL names one (as the source declares queues, so
    /// that what is published before the first consumer starts is kept), checks that the
    /// exchange exists if it names one, and binds the queue to it if both.
    ///
    /// # Errors
    ///
    /// [`PublishError::Unavailable`] when the broker cannot be reached, [`PublishError::Failed`]
    /// when it refuses the credentials, the queue or the exchange.
    pub async fn connect(config: RabbitTargetConfig) -> Result<Self, PublishError> {
        let target = config.to_string();
        let outlet = Outlet::open(config).await.map_err(|err| error(&target, err))?;
        Ok(Self { outlet })
    }

    /// Where the messages go.
    pub fn config(&self) -> &RabbitTargetConfig {
        self.outlet.config()
    }
}

#[async_trait]
impl Publisher for RabbitPublisher {
    async fn publish(&self, messages: &[OutgoingMessage]) -> Result<(), PublishError> {
        if messages.is_empty() {
            return Ok(());
        }
        let target = || self.outlet.config().to_string();
        let mut outgoing: Vec<(&[u8], BasicProperties)> = Vec::with_capacity(messages.len());
        for message in messages {
            let properties = match &message.id {
                // AMQP's short strings hold at most 255 bytes.
                Some(id) if id.len() > 255 => {
                    return Err(PublishError::Failed {
                        target: target(),
                        source: Some(format!("message ID {id:?} is longer than AMQP's 255 bytes").into()),
                    });
                }
                Some(id) => BasicProperties::default().with_message_id(id.as_str().into()),
                None => BasicProperties::default(),
            };
            outgoing.push((&message.payload[..], properties));
        }
        self.outlet.publish(outgoing).await.map_err(|err| error(&target(), err))
    }

    async fn close(&self) -> Result<(), PublishError> {
        self.outlet.close().await.map_err(|err| error(&self.outlet.config().to_string(), err))
    }
}

fn error(target: &str, err: OutletError) -> PublishError {
    if err.is_transient() {
        PublishError::unavailable_because(target, err)
    } else {
        PublishError::failed_because(target, err)
    }
}
