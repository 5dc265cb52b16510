//! [`RedisDeadLetters`]: dead letters as entries of a Redis stream.

use std::fmt;

use async_trait::async_trait;
use payments_ports::domain::event;
use payments_ports::{DeadLetter, DeadLetterError, DeadLetterSink, Payload};
use redis::aio::ConnectionManager;

use crate::config::RedisStreamConfig;
use crate::connection::{self, OpenError};
use crate::errors;

/// Dead letters appended to a Redis stream (`--dead-letter 'redis://HOST:PORT?stream=NAME'`),
/// one entry per letter, with these fields:
///
/// | field | value |
/// |---|---|
/// | `kind` | `conflict`, `invalid`, `too_large` or `too_many_attempts` |
/// | `reason` | the reason in words |
/// | `origin` | where the message came from (a stream entry, a line) |
/// | `attempt` | which delivery it was, in decimal |
/// | `payload` | the message's bytes as they arrived (its head when it was too large), raw |
/// | `payload_len` | the whole message's length in bytes, in decimal |
/// | `payload_truncated` | `true` when `payload` is only the head |
/// | `stored`, `incoming` | for a conflict only: both versions, as `PaymentTaken` JSON |
///
/// [`put`](DeadLetterSink::put) returns once `XADD` has returned, that is, once Redis holds the
/// letter in memory. How durable that is, is Redis's persistence setting: with `appendonly yes`
/// and `appendfsync always` the entry is on disk before Redis answers; with the default
/// `appendfsync everysec` a crash of the Redis host can lose the last second of letters (whose
/// messages are acknowledged by then); without persistence a restart loses them all.
pub struct RedisDeadLetters {
    config: RedisStreamConfig,
    connection: ConnectionManager,
}

impl fmt::Debug for RedisDeadLetters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisDeadLetters").field("config", &self.config).finish_non_exhaustive()
    }
}

impl RedisDeadLetters {
    /// Connects to the server (the stream is created by the first letter).
    ///
    /// # Errors
    ///
    /// [`DeadLetterError::Unavailable`] when the server cannot be reached,
    /// [`DeadLetterError::Failed`] when the URL needs a feature this build lacks.
    pub async fn connect(config: RedisStreamConfig) -> Result<Self, DeadLetterError> {
        match connection::open(&config).await {
            Ok(connection) => Ok(Self { config, connection }),
            Err(OpenError::Config(message, source)) => {
                Err(DeadLetterError::Failed { target: message, source: source.map(Into::into) })
            }
            Err(OpenError::Redis(err)) => Err(error(&config, err)),
        }
    }

    /// Where the letters go.
    pub fn config(&self) -> &RedisStreamConfig {
        &self.config
    }
}

#[async_trait]
impl DeadLetterSink for RedisDeadLetters {
    async fn put(&self, letter: &DeadLetter) -> Result<(), DeadLetterError> {
        let (payload, len, truncated) = match &letter.payload {
            Payload::Complete(body) | Payload::Unreadable { raw: body, .. } => {
                (body, body.len() as u64, false)
            }
            Payload::TooLarge { len, head, .. } => (head, *len, true),
        };
        let mut command = redis::cmd("XADD");
        command
            .arg(&self.config.stream)
            .arg("*")
            .arg("kind")
            .arg(letter.kind.name())
            .arg("reason")
            .arg(&letter.reason)
            .arg("origin")
            .arg(&letter.origin)
            .arg("attempt")
            .arg(letter.attempt)
            .arg("payload")
            .arg(&payload[..])
            .arg("payload_len")
            .arg(len)
            .arg("payload_truncated")
            .arg(if truncated { "true" } else { "false" });
        if let Some(conflict) = &letter.conflict {
            let (mut stored, mut incoming) = (Vec::new(), Vec::new());
            event::encode(&conflict.stored, &mut stored);
            event::encode(&conflict.incoming, &mut incoming);
            command.arg("stored").arg(stored).arg("incoming").arg(incoming);
        }
        let mut connection = self.connection.clone();
        command.query_async::<String>(&mut connection).await.map(drop).map_err(|err| error(&self.config, err))
    }
}

fn error(config: &RedisStreamConfig, err: redis::RedisError) -> DeadLetterError {
    let target = errors::describe(config.to_string(), &err);
    if errors::is_transient(&err) {
        DeadLetterError::unavailable_because(target, err)
    } else {
        DeadLetterError::failed_because(target, err)
    }
}
