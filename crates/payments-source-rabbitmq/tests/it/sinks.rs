//! What the dead-letter sink and the publisher write, read back with `basic.get`.

use bytes::Bytes;
use lapin::ExchangeKind;
use lapin::options::ExchangeDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use libtest_mimic::Failed;
use payments_ports::domain::{Conflict, Payment};
use payments_ports::{
    DeadLetter, DeadLetterKind, DeadLetterSink, OutgoingMessage, Payload, Publisher, error_chain,
};
use payments_source_rabbitmq::{RabbitDeadLetters, RabbitPublisher, RabbitTargetConfig};
use payments_test_support::rabbitmq as test_rabbitmq;

use crate::support::{drain, queue, ready, with_queues};

fn target(query: &str) -> Result<RabbitTargetConfig, Failed> {
    Ok(RabbitTargetConfig::from_url(&format!("{}?{query}", test_rabbitmq::url()))?)
}

/// A header of a message, as text or as a number.
fn header(message: &lapin::message::BasicGetMessage, name: &str) -> Option<String> {
    let headers = message.delivery.properties.headers().as_ref()?;
    Some(match headers.inner().get(name)? {
        AMQPValue::LongString(text) => String::from_utf8_lossy(text.as_bytes()).into_owned(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        other => format!("{other:?}"),
    })
}

pub(crate) fn the_dead_letter_sink_confirms_a_whole_letter() -> Result<(), Failed> {
    with_queues("dead-letters", |queues| async move {
        let dead = queue(&queues, "dead");
        let sink = RabbitDeadLetters::connect(target(&format!("queue={dead}"))?).await?;
        let binary = Bytes::from_static(b"\xff\x00{\"payment_id\":\"p-1\"}\n\x80");
        let conflict = DeadLetter {
            kind: DeadLetterKind::Conflict,
            reason: "payment p-1 arrived again with 200 EUR, 100 EUR is recorded".to_owned(),
            origin: "rabbitmq queue payments delivery 7 message_id p-1".to_owned(),
            attempt: 3,
            payload: Payload::Complete(binary.clone()),
            conflict: Some(Conflict {
                stored: Payment::parse("p-1", 100, "EUR")?,
                incoming: Payment::parse("p-1", 200, "EUR")?,
            }),
        };
        sink.put(&conflict).await?;
        // Confirmed means stored: it is in the queue the moment `put` returns.
        assert_eq!(ready(&dead).await, 1, "put returns once RabbitMQ has the letter");
        let too_large = DeadLetter {
            kind: DeadLetterKind::TooLarge,
            reason: "too large".to_owned(),
            origin: "rabbitmq queue payments delivery 8".to_owned(),
            attempt: 1,
            payload: Payload::TooLarge { len: 70_000, limit: 65_536, head: Bytes::from(vec![b'x'; 1024]) },
            conflict: None,
        };
        sink.put(&too_large).await?;
        sink.close().await?;

        let letters = drain(&dead).await;
        assert_eq!(letters.len(), 2, "one message per letter");
        let letter = &letters[0];
        assert_eq!(letter.delivery.data, &binary[..], "the body is the message's bytes, unchanged");
        let expect = |name: &str, value: &str| {
            assert_eq!(header(letter, name).as_deref(), Some(value), "header {name} of the conflict letter");
        };
        expect("kind", "conflict");
        expect("reason", &conflict.reason);
        expect("origin", &conflict.origin);
        expect("attempt", "3");
        expect("payload_len", &binary.len().to_string());
        expect("payload_truncated", "false");
        expect("stored", r#"{"payment_id":"p-1","amount":100,"currency":"EUR"}"#);
        expect("incoming", r#"{"payment_id":"p-1","amount":200,"currency":"EUR"}"#);
        assert_eq!(letter.delivery.properties.delivery_mode(), &Some(2), "persistent");
        let letter = &letters[1];
        assert_eq!(header(letter, "kind").as_deref(), Some("too_large"));
        assert_eq!(letter.delivery.data, vec![b'x'; 1024], "the head, as it arrived");
        assert_eq!(header(letter, "payload_len").as_deref(), Some("70000"), "the whole message's length");
        assert_eq!(header(letter, "payload_truncated").as_deref(), Some("true"));
        assert_eq!(header(letter, "stored"), None, "only a conflict has versions");
        Ok(())
    })
}

/// Through an exchange: bound to a queue by the URL's `queue`, the letters arrive there; with
/// nothing bound, a letter is refused as unroutable, never confirmed and dropped; a missing
/// exchange is refused when connecting.
pub(crate) fn a_letter_through_an_exchange_arrives_or_is_refused() -> Result<(), Failed> {
    with_queues("exchange", |queues| async move {
        let exchange = queues.exchange("dead-letters");
        let connection = test_rabbitmq::connect().await?;
        let channel = connection.create_channel().await?;
        let options = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
        channel
            .exchange_declare(exchange.as_str().into(), ExchangeKind::Direct, options, FieldTable::default())
            .await?;
        let letter = DeadLetter {
            kind: DeadLetterKind::Invalid,
            reason: "amount: not a number".to_owned(),
            origin: "line 1".to_owned(),
            attempt: 1,
            payload: Payload::Complete(Bytes::from_static(b"{}")),
            conflict: None,
        };

        let dead = queue(&queues, "dead");
        let bound =
            RabbitDeadLetters::connect(target(&format!("queue={dead}&exchange={exchange}&routing-key=k"))?)
                .await?;
        bound.put(&letter).await?;
        bound.close().await?;
        assert_eq!(drain(&dead).await.len(), 1, "bound by the URL, the letter arrives");

        let unbound =
            RabbitDeadLetters::connect(target(&format!("exchange={exchange}&routing-key=nowhere"))?).await?;
        let err = unbound.put(&letter).await.expect_err("no queue takes it");
        assert!(!err.is_unavailable(), "a retry cannot route it: {err}");
        assert!(error_chain(&err).contains("NO_ROUTE"), "{}", error_chain(&err));
        // The channel survived: a letter that can be routed still goes.
        let routed =
            RabbitDeadLetters::connect(target(&format!("exchange={exchange}&routing-key=k"))?).await?;
        routed.put(&letter).await?;
        assert_eq!(drain(&dead).await.len(), 1);
        unbound.close().await?;
        routed.close().await?;

        let missing = queues.exchange("missing");
        let err =
            RabbitDeadLetters::connect(target(&format!("exchange={missing}"))?).await.expect_err("missing");
        assert!(!err.is_unavailable() && error_chain(&err).contains("NOT_FOUND"), "{}", error_chain(&err));
        let _ = connection.close(200, "done".into()).await;
        Ok(())
    })
}

pub(crate) fn the_publisher_confirms_and_round_trips_bytes_and_ids() -> Result<(), Failed> {
    with_queues("publisher", |queues| async move {
        let out = queue(&queues, "out");
        let publisher = RabbitPublisher::connect(target(&format!("queue={out}"))?).await?;
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
        assert_eq!(ready(&out).await, 4, "publish returns once RabbitMQ has them all");
        publisher.publish(&[]).await?;
        let batch: Vec<OutgoingMessage> = (0..1000)
            .map(|i| OutgoingMessage { id: Some(format!("b-{i}")), payload: Bytes::from(format!("b-{i}")) })
            .collect();
        publisher.publish(&batch).await?;
        let too_long = OutgoingMessage { id: Some("x".repeat(256)), payload: Bytes::new() };
        let err = publisher.publish(&[too_long]).await.expect_err("an ID over 255 bytes");
        assert!(!err.is_unavailable(), "{err}");
        publisher.close().await?;
        let written = drain(&out).await;
        assert_eq!(written.len(), messages.len() + batch.len(), "one message each, nothing else");
        for (message, got) in messages.iter().chain(&batch).zip(&written) {
            assert_eq!(got.delivery.data, &message.payload[..], "bytes unchanged, in order");
            assert_eq!(
                got.delivery.properties.message_id().as_ref().map(|id| id.as_str()),
                message.id.as_deref()
            );
            assert_eq!(got.delivery.properties.delivery_mode(), &Some(2), "persistent");
        }
        Ok(())
    })
}
