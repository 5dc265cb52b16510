//! [`NatsDeadLetters`]: dead letters as messages of a JetStream subject.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use async_nats::jetstream::message::PublishMessage;
use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use payments_ports::domain::{Payment, event};
use payments_ports::{DeadLetter, DeadLetterError, DeadLetterSink, Payload};
use serde_json::{Value, json};

use crate::config::NatsStreamConfig;
use crate::writer::{WriteError, Writer};

/// Dead letters published to a JetStream subject (`--dead-letter 'nats://HOST:PORT?stream=NAME&subject=SUBJECT'`),
/// one message per letter, its body a JSON object in the shape of the JSON-lines sink's:
///
/// ```json
/// {"kind":"conflict","reason":"…","origin":"nats stream PAYMENTS sequence 17","attempt":1,
///  "recorded_at_unix_ms":1795770000000,
///  "stored":{"payment_id":"p-1","amount":100,"currency":"EUR"},
///  "incoming":{"payment_id":"p-1","amount":200,"currency":"EUR"},
///  "payload_len":55,"payload_truncated":false,"payload":"{…}","payload_base64":"eyJw…"}
/// ```
///
/// - `kind`: `conflict`, `invalid`, `too_large` or `too_many_attempts`; `reason`, `origin`,
///   `attempt`: as the consumer gave them.
/// - `stored`, `incoming`: for a conflict only, both versions in the event schema.
/// - `payload_base64`: the message's bytes as they arrived (only its head when it was too large),
///   lossless; `payload`: the same as text when they are UTF-8; `payload_len`: the whole
///   message's length; `payload_truncated`: whether only the head is kept.
///
/// [`put`](DeadLetterSink::put) returns once JetStream has acknowledged the letter, that is,
/// stored it as the stream's storage and replicas say (file storage, the default, writes it
/// through to the stream's files before the acknowledgement; replicated streams wait for a
/// quorum). A `put` whose acknowledgement timed out may have stored the letter: retried, it may
/// be stored twice, never lost.
pub struct NatsDeadLetters {
    writer: Writer,
}

impl fmt::Debug for NatsDeadLetters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsDeadLetters").field("config", self.writer.config()).finish_non_exhaustive()
    }
}

impl NatsDeadLetters {
    /// Connects and creates the stream if it is missing.
    ///
    /// # Errors
    ///
    /// [`DeadLetterError::Unavailable`] when the server cannot be reached,
    /// [`DeadLetterError::Failed`] when it refuses (credentials, a stream that cannot be made) or
    /// TLS refuses it (its certificate, a handshake answered in plain text).
    pub async fn connect(config: NatsStreamConfig) -> Result<Self, DeadLetterError> {
        let target = config.to_string();
        Writer::connect(config, "dead-letters")
            .await
            .map(|writer| Self { writer })
            .map_err(|err| error(target, err))
    }

    /// Where the letters go.
    pub fn config(&self) -> &NatsStreamConfig {
        self.writer.config()
    }
}

/// A payment in the event schema, as JSON.
fn version(payment: &Payment) -> Value {
    let mut bytes = Vec::new();
    event::encode(payment, &mut bytes);
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
}

/// The letter's body.
fn encode(letter: &DeadLetter) -> Bytes {
    let (bytes, len, truncated) = match &letter.payload {
        Payload::Complete(body) | Payload::Unreadable { raw: body, .. } => {
            (&body[..], body.len() as u64, false)
        }
        Payload::TooLarge { len, head, .. } => (&head[..], *len, true),
    };
    let mut body = json!({
        "kind": letter.kind.name(),
        "reason": letter.reason,
        "origin": letter.origin,
        "attempt": letter.attempt,
        "recorded_at_unix_ms": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        "payload_len": len,
        "payload_truncated": truncated,
        "payload_base64": BASE64.encode(bytes),
    });
    if let Ok(text) = std::str::from_utf8(bytes) {
        body["payload"] = Value::String(text.to_owned());
    }
    if let Some(conflict) = &letter.conflict {
        body["stored"] = version(&conflict.stored);
        body["incoming"] = version(&conflict.incoming);
    }
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

#[async_trait]
impl DeadLetterSink for NatsDeadLetters {
    async fn put(&self, letter: &DeadLetter) -> Result<(), DeadLetterError> {
        let publish = PublishMessage::build().payload(encode(letter));
        self.writer.publish([publish]).await.map_err(|err| error(self.config().to_string(), err))
    }

    async fn close(&self) -> Result<(), DeadLetterError> {
        self.writer.close().await.map_err(|err| error(self.config().to_string(), err))
    }
}

fn error(target: String, err: WriteError) -> DeadLetterError {
    match err {
        WriteError::Unavailable(source) => DeadLetterError::unavailable_because(target, source),
        WriteError::Failed(source) => DeadLetterError::failed_because(target, source),
    }
}
