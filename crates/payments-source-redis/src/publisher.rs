//! [`RedisPublisher`]: messages appended to a Redis stream.

use std::fmt;

use async_trait::async_trait;
use payments_ports::{OutgoingMessage, PublishError, Publisher};
use redis::aio::ConnectionManager;

use crate::config::RedisStreamConfig;
use crate::connection::{self, OpenError};
use crate::errors;

/// Messages appended to a Redis stream (`publish --to 'redis://HOST:PORT?stream=NAME'`), each as
/// one entry with its body in the field `payload` and, when it has one, its ID in `message_id`.
///
/// A batch goes out as one pipeline of `XADD`s, in one round trip; [`publish`](Publisher::publish)
/// returns once Redis has answered every one (held in memory; on disk as Redis's `appendfsync`
/// says). Redis 7.0 has no deduplication by ID, so a batch published again after an error may
/// add some messages twice: the consumer's store answers those as duplicates.
pub struct RedisPublisher {
    config: RedisStreamConfig,
    connection: ConnectionManager,
}

impl fmt::Debug for RedisPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisPublisher").field("config", &self.config).finish_non_exhaustive()
    }
}

impl RedisPublisher {
    /// Connects to the server (the stream is created by the first message).
    ///
    /// # Errors
    ///
    /// [`PublishError::Unavailable`] when the server cannot be reached, [`PublishError::Failed`]
    /// when the URL needs a feature this build lacks.
    pub async fn connect(config: RedisStreamConfig) -> Result<Self, PublishError> {
        match connection::open(&config).await {
            Ok(connection) => Ok(Self { config, connection }),
            Err(OpenError::Config(message, source)) => {
                Err(PublishError::Failed { target: message, source: source.map(Into::into) })
            }
            Err(OpenError::Redis(err)) => Err(error(&config, err)),
        }
    }

    /// Where the messages go.
    pub fn config(&self) -> &RedisStreamConfig {
        &self.config
    }
}

#[async_trait]
impl Publisher for RedisPublisher {
    async fn publish(&self, messages: &[OutgoingMessage]) -> Result<(), PublishError> {
        if messages.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for message in messages {
            let command =
                pipe.cmd("XADD").arg(&self.config.stream).arg("*").arg("payload").arg(&message.payload[..]);
            if let Some(id) = &message.id {
                command.arg("message_id").arg(id);
            }
            command.ignore();
        }
        let mut connection = self.connection.clone();
        pipe.exec_async(&mut connection).await.map_err(|err| error(&self.config, err))
    }
}

fn error(config: &RedisStreamConfig, err: redis::RedisError) -> PublishError {
    let target = errors::describe(config.to_string(), &err);
    if errors::is_transient(&err) {
        PublishError::unavailable_because(target, err)
    } else {
        PublishError::failed_because(target, err)
    }
}
