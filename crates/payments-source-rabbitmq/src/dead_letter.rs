//! [`RabbitDeadLetters`]: dead letters published to a RabbitMQ queue or exchange.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};
use payments_ports::domain::event;
use payments_ports::{DeadLetter, DeadLetterError, DeadLetterSink, Payload};

use crate::config::RabbitTargetConfig;
use crate::outlet::{Outlet, OutletError};

/// Dead letters published to RabbitMQ (`--dead-letter 'amqp://…?queue=NAME'`, or
/// `…?exchange=NAME&routing-key=KEY`, or both), one message per letter.
///
/// The message's body is the dead message's bytes as they arrived (only the first KiB when it
/// was too large), so that replaying a letter is publishing its body again. Everything else is
/// in its headers:
///
/// | header | value |
/// |---|---|
/// | `kind` | `conflict`, `invalid`, `too_large` or `too_many_attempts` |
/// | `reason` | the reason in words |
/// | `origin` | where the message came from (a queue and delivery, a stream entry, a line) |
/// | `attempt` | which delivery it was (a long integer) |
/// | `payload_len` | the whole message's length in bytes (a long integer) |
/// | `payload_truncated` | `true` when the body is only the head |
/// | `stored`, `incoming` | for a conflict only: both versions, as `PaymentTaken` JSON |
///
/// [`put`](DeadLetterSink::put) returns once RabbitMQ has confirmed the letter (publisher
/// confirms, `mandatory`, persistent): for a quorum queue, once a majority of its replicas
/// have written it to disk. A letter that no queue takes (an exchange with nothing bound) is an
/// error, never a silent loss.
pub struct RabbitDeadLetters {
    outlet: Outlet,
}

impl fmt::Debug for RabbitDeadLetters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitDeadLetters").field("config", self.outlet.config()).finish_non_exhaustive()
    }
}

impl RabbitDeadLetters {
    /// Connects, declares the queue if the URL names one (as the source declares queues),
    /// checks that the exchange exists if it names one, and binds the queue to it if both.
    ///
    /// # Errors
    ///
    /// [`DeadLetterError::Unavailable`] when the broker cannot be reached,
    /// [`DeadLetterError::Failed`] when it refuses the credentials, the queue or the exchange.
    pub async fn connect(config: RabbitTargetConfig) -> Result<Self, DeadLetterError> {
        let target = config.to_string();
        let outlet = Outlet::open(config).await.map_err(|err| error(&target, err))?;
        Ok(Self { outlet })
    }

    /// Where the letters go.
    pub fn config(&self) -> &RabbitTargetConfig {
        self.outlet.config()
    }
}

#[async_trait]
impl DeadLetterSink for RabbitDeadLetters {
    async fn put(&self, letter: &DeadLetter) -> Result<(), DeadLetterError> {
        let (body, len, truncated) = match &letter.payload {
            Payload::Complete(body) | Payload::Unreadable { raw: body, .. } => {
                (body, body.len() as u64, false)
            }
            Payload::TooLarge { len, head, .. } => (head, *len, true),
        };
        let mut headers = FieldTable::default();
        let text = |value: &str| AMQPValue::LongString(LongString::from(value));
        headers.insert("kind".into(), text(letter.kind.name()));
        headers.insert("reason".into(), text(&letter.reason));
        headers.insert("origin".into(), text(&letter.origin));
        headers.insert("attempt".into(), AMQPValue::LongLongInt(i64::from(letter.attempt)));
        headers.insert("payload_len".into(), AMQPValue::LongLongInt(i64::try_from(len).unwrap_or(i64::MAX)));
        headers.insert("payload_truncated".into(), AMQPValue::Boolean(truncated));
        if let Some(conflict) = &letter.conflict {
            let (mut stored, mut incoming) = (Vec::new(), Vec::new());
            event::encode(&conflict.stored, &mut stored);
            event::encode(&conflict.incoming, &mut incoming);
            headers.insert("stored".into(), AMQPValue::LongString(LongString::from(stored)));
            headers.insert("incoming".into(), AMQPValue::LongString(LongString::from(incoming)));
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let properties = BasicProperties::default()
            .with_headers(headers)
            .with_type("payments.dead-letter".into())
            .with_timestamp(now);
        self.outlet
            .publish(vec![(&body[..], properties)])
            .await
            .map_err(|err| error(&self.outlet.config().to_string(), err))
    }

    async fn close(&self) -> Result<(), DeadLetterError> {
        self.outlet.close().await.map_err(|err| error(&self.outlet.config().to_string(), err))
    }
}

fn error(target: &str, err: OutletError) -> DeadLetterError {
    if err.is_transient() {
        DeadLetterError::unavailable_because(target, err)
    } else {
        DeadLetterError::failed_because(target, err)
    }
}
