//! What the dead-letter sink and the publisher write, read back with XRANGE.

use bytes::Bytes;
use libtest_mimic::Failed;
use payments_ports::domain::{Conflict, Payment};
use payments_ports::{DeadLetter, DeadLetterKind, DeadLetterSink, OutgoingMessage, Payload, Publisher};
use payments_source_redis::{RedisDeadLetters, RedisPublisher, RedisStreamConfig};
use payments_test_support::redis as test_redis;

use crate::support::{entries, field, with_keys};

fn stream_config(stream: &str) -> Result<RedisStreamConfig, Failed> {
    Ok(RedisStreamConfig::from_url(&format!("{}?stream={stream}", test_redis::url()))?)
}

pub(crate) fn the_dead_letter_sink_writes_a_whole_letter() -> Result<(), Failed> {
    with_keys("dead-letters", |keys| async move {
        let stream = keys.key("dead");
        let sink = RedisDeadLetters::connect(stream_config(&stream)?).await?;
        let binary = Bytes::from_static(b"\xff\x00{\"payment_id\":\"p-1\"}\n\x80");
        let conflict = DeadLetter {
            kind: DeadLetterKind::Conflict,
            reason: "payment p-1 arrived again with 200 EUR, 100 EUR is recorded".to_owned(),
            origin: "redis stream payments entry 1-0".to_owned(),
            attempt: 3,
            payload: Payload::Complete(binary.clone()),
            conflict: Some(Conflict {
                stored: Payment::parse("p-1", 100, "EUR")?,
                incoming: Payment::parse("p-1", 200, "EUR")?,
            }),
        };
        sink.put(&conflict).await?;
        let too_large = DeadLetter {
            kind: DeadLetterKind::TooLarge,
            reason: "too large".to_owned(),
            origin: "redis stream payments entry 2-0".to_owned(),
            attempt: 1,
            payload: Payload::TooLarge { len: 70_000, limit: 65_536, head: Bytes::from(vec![b'x'; 1024]) },
            conflict: None,
        };
        sink.put(&too_large).await?;
        sink.close().await?;

        let written = entries(&stream).await;
        assert_eq!(written.len(), 2, "one entry per letter");
        let letter = &written[0].1;
        let expect = |name: &str, value: &[u8]| {
            assert_eq!(field(letter, name), Some(value), "field {name} of the conflict letter");
        };
        expect("kind", b"conflict");
        expect("reason", conflict.reason.as_bytes());
        expect("origin", b"redis stream payments entry 1-0");
        expect("attempt", b"3");
        expect("payload", &binary);
        expect("payload_len", binary.len().to_string().as_bytes());
        expect("payload_truncated", b"false");
        expect("stored", br#"{"payment_id":"p-1","amount":100,"currency":"EUR"}"#);
        expect("incoming", br#"{"payment_id":"p-1","amount":200,"currency":"EUR"}"#);
        let letter = &written[1].1;
        assert_eq!(field(letter, "kind"), Some(&b"too_large"[..]));
        assert_eq!(field(letter, "payload"), Some(&[b'x'; 1024][..]), "the head, as it arrived");
        assert_eq!(field(letter, "payload_len"), Some(&b"70000"[..]), "the whole message's length");
        assert_eq!(field(letter, "payload_truncated"), Some(&b"true"[..]));
        assert_eq!(field(letter, "stored"), None, "only a conflict has versions");
        Ok(())
    })
}

pub(crate) fn the_publisher_round_trips_bytes_and_ids() -> Result<(), Failed> {
    with_keys("publisher", |keys| async move {
        let stream = keys.key("out");
        let publisher = RedisPublisher::connect(stream_config(&stream)?).await?;
        let messages = vec![
            OutgoingMessage { id: Some("pay-1".to_owned()), payload: Bytes::from_static(b"{\"a\":1}") },
            OutgoingMessage { id: None, payload: Bytes::new() },
            OutgoingMessage {
                id: Some("pay-3".to_owned()),
                payload: (0u8..=255).collect::<Vec<u8>>().into(),
            },
            OutgoingMessage { id: None, payload: Bytes::from(vec![7u8; 1 << 20]) },
        ];
        publisher.publish(&messages).await?;
        publisher.publish(&[]).await?;
        publisher.close().await?;
        let written = entries(&stream).await;
        assert_eq!(written.len(), messages.len(), "one entry per message, in order");
        for (message, (_, fields)) in messages.iter().zip(&written) {
            assert_eq!(field(fields, "payload"), Some(&message.payload[..]), "bytes unchanged");
            assert_eq!(field(fields, "message_id"), message.id.as_deref().map(str::as_bytes));
            assert_eq!(fields.len(), 1 + usize::from(message.id.is_some()), "nothing else");
        }
        Ok(())
    })
}
