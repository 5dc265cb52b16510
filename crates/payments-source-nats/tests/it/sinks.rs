//! What the dead-letter sink and the publisher write, read back from the stream by sequence.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use libtest_mimic::Failed;
use payments_ports::domain::{Conflict, Payment};
use payments_ports::{
    DeadLetter, DeadLetterKind, DeadLetterSink, OutgoingMessage, Payload, Publisher, error_chain,
};
use payments_source_nats::{NatsDeadLetters, NatsPublisher, NatsStreamConfig};
use payments_test_support::nats as test_nats;
use serde_json::{Value, json};

use crate::support::{context, stored, with_streams};

fn stream_config(stream: &str, subject: &str) -> Result<NatsStreamConfig, Failed> {
    Ok(NatsStreamConfig::from_url(&format!("{}?stream={stream}&subject={subject}", test_nats::url()))?)
}

pub(crate) fn the_dead_letter_sink_writes_a_whole_letter() -> Result<(), Failed> {
    with_streams("dead-letters", |streams| async move {
        let (stream, subject) = (streams.stream("dead"), streams.subject("dead"));
        let sink = NatsDeadLetters::connect(stream_config(&stream, &subject)?).await?;
        let binary = Bytes::from_static(b"\xff\x00{\"payment_id\":\"p-1\"}\n\x80");
        let conflict = DeadLetter {
            kind: DeadLetterKind::Conflict,
            reason: "payment p-1 arrived again with 200 EUR,\r\n100 EUR is recorded".to_owned(),
            origin: "nats stream PAYMENTS sequence 17".to_owned(),
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
            origin: "nats stream PAYMENTS sequence 18".to_owned(),
            attempt: 1,
            payload: Payload::TooLarge { len: 70_000, limit: 65_536, head: Bytes::from(vec![b'x'; 1024]) },
            conflict: None,
        };
        sink.put(&too_large).await?;
        sink.close().await?;

        let written = stored(&stream).await;
        assert_eq!(written.len(), 2, "one message per letter, each stored before put returned");
        assert_eq!(written[0].subject.as_str(), subject);
        let letter: Value = serde_json::from_slice(&written[0].payload)?;
        assert_eq!(letter["kind"], "conflict");
        assert_eq!(letter["reason"], conflict.reason.as_str(), "kept whole, line breaks and all");
        assert_eq!(letter["origin"], "nats stream PAYMENTS sequence 17");
        assert_eq!(letter["attempt"], 3);
        let payload = BASE64.decode(letter["payload_base64"].as_str().expect("base64 text"))?;
        assert_eq!(payload, binary, "the payload byte for byte");
        assert_eq!(letter["payload"], Value::Null, "no text form for bytes that are not UTF-8");
        assert_eq!(
            (letter["payload_len"].as_u64(), letter["payload_truncated"].as_bool()),
            (Some(24), Some(false))
        );
        assert_eq!(letter["stored"], json!({"payment_id": "p-1", "amount": 100, "currency": "EUR"}));
        assert_eq!(letter["incoming"], json!({"payment_id": "p-1", "amount": 200, "currency": "EUR"}));

        let letter: Value = serde_json::from_slice(&written[1].payload)?;
        assert_eq!(letter["kind"], "too_large");
        assert_eq!(letter["payload"], "x".repeat(1024), "the head, as it arrived");
        assert_eq!(letter["payload_len"], 70_000, "the whole message's length");
        assert_eq!(letter["payload_truncated"], true);
        assert_eq!(letter.get("stored"), None, "only a conflict has versions");
        Ok(())
    })
}

pub(crate) fn the_publisher_round_trips_bytes_headers_and_ids() -> Result<(), Failed> {
    with_streams("publisher", |streams| async move {
        let (stream, subject) = (streams.stream("out"), streams.subject("out"));
        let publisher = NatsPublisher::connect(stream_config(&stream, &subject)?).await?;
        let messages = vec![
            OutgoingMessage { id: Some("pay-1".to_owned()), payload: Bytes::from_static(b"{\"a\":1}") },
            OutgoingMessage { id: None, payload: Bytes::new() },
            OutgoingMessage {
                id: Some("pay-3".to_owned()),
                payload: (0u8..=255).collect::<Vec<u8>>().into(),
            },
            OutgoingMessage { id: None, payload: Bytes::from(vec![7u8; 512 * 1024]) },
        ];
        publisher.publish(&messages).await?;
        publisher.publish(&[]).await?;
        publisher.close().await?;
        let written = stored(&stream).await;
        assert_eq!(written.len(), messages.len(), "one stored message per message, in order");
        for (message, stored) in messages.iter().zip(&written) {
            assert_eq!(stored.payload, message.payload, "bytes unchanged");
            assert_eq!(stored.subject.as_str(), subject);
            let id = stored.headers.get("Nats-Msg-Id").map(|v| v.as_str().to_owned());
            assert_eq!(id.as_deref(), message.id.as_deref(), "the ID as Nats-Msg-Id");
            let names: Vec<String> = stored.headers.iter().map(|(name, _)| name.to_string()).collect();
            assert!(names.iter().all(|n| n == "Nats-Msg-Id"), "no other header: {names:?}");
        }
        Ok(())
    })
}

/// A batch published again (after an error, say) with the same IDs: JetStream drops the
/// republications within its duplicate window, and acknowledges them as duplicates, which is
/// success. A message without an ID is stored again.
pub(crate) fn a_republication_with_the_same_id_is_deduplicated() -> Result<(), Failed> {
    with_streams("dedup", |streams| async move {
        let (stream, subject) = (streams.stream("out"), streams.subject("out"));
        let publisher = NatsPublisher::connect(stream_config(&stream, &subject)?).await?;
        let batch: Vec<OutgoingMessage> = (0..50)
            .map(|i| OutgoingMessage {
                id: Some(format!("pay-{i}")),
                payload: Bytes::from(format!("body-{i}")),
            })
            .collect();
        publisher.publish(&batch).await?;
        publisher.publish(&batch).await?;
        publisher.publish(&batch[10..20]).await?;
        let anonymous = OutgoingMessage { id: None, payload: Bytes::from_static(b"no id") };
        publisher.publish(&[anonymous.clone(), anonymous]).await?;
        publisher.close().await?;
        let written = stored(&stream).await;
        assert_eq!(written.len(), 52, "each ID stored once; messages without an ID each time");
        let bodies: Vec<Bytes> = written.iter().take(50).map(|m| m.payload.clone()).collect();
        let expected: Vec<Bytes> = batch.iter().map(|m| m.payload.clone()).collect();
        assert_eq!(bodies, expected, "the first publication, in order");
        Ok(())
    })
}

/// A stream URL whose subject belongs to another stream: the stream cannot be made, and no retry
/// will change that.
pub(crate) fn a_subject_of_another_stream_is_refused() -> Result<(), Failed> {
    with_streams("taken", |streams| async move {
        let subject = streams.subject("taken");
        NatsPublisher::connect(stream_config(&streams.stream("owner"), &subject)?).await?.close().await?;
        let err = NatsPublisher::connect(stream_config(&streams.stream("other"), &subject)?)
            .await
            .expect_err("the subject is another stream's");
        assert!(!err.is_unavailable(), "no retry fixes it: {}", error_chain(&err));
        assert!(error_chain(&err).contains(&streams.stream("other")), "{}", error_chain(&err));
        let err = NatsDeadLetters::connect(stream_config(&streams.stream("other"), &subject)?)
            .await
            .expect_err("the subject is another stream's");
        assert!(!err.is_unavailable(), "no retry fixes it: {}", error_chain(&err));
        assert!(context().await.get_stream(streams.stream("other")).await.is_err(), "nothing was made");
        Ok(())
    })
}

/// A sink whose server went away closes within its timeout, with an error, instead of waiting for
/// the server to come back: a consumer shutting down must not hang on it.
pub(crate) fn closing_a_sink_cut_off_from_its_server_ends_within_the_timeout() -> Result<(), Failed> {
    with_streams("close-cut-off", |streams| async move {
        let (stream, subject) = (streams.stream("dead"), streams.subject("dead"));
        let proxy = test_nats::TestProxy::start().await?;
        let config =
            NatsStreamConfig::from_url(&format!("{}?stream={stream}&subject={subject}", proxy.url()))?;
        let sink = NatsDeadLetters::connect(config).await?;
        proxy.cut(std::time::Duration::from_secs(120));
        // A letter handed to the client while the server is away stays in its buffer: given up
        // on here, as a shutdown gives up on what is in flight.
        let letter = DeadLetter {
            kind: DeadLetterKind::Invalid,
            reason: "not a payment".to_owned(),
            origin: "test".to_owned(),
            attempt: 1,
            payload: Payload::Complete(Bytes::from_static(b"{}")),
            conflict: None,
        };
        let put = tokio::time::timeout(std::time::Duration::from_secs(2), sink.put(&letter)).await;
        assert!(!matches!(put, Ok(Ok(()))), "a letter was stored although the server is cut off");
        let started = std::time::Instant::now();
        let closed = tokio::time::timeout(std::time::Duration::from_secs(40), sink.close()).await;
        let took = started.elapsed();
        let closed = closed.map_err(|_| format!("close still waiting after {took:?}"))?;
        let err = closed.expect_err("a close that could not reach the server says so");
        assert!(err.is_unavailable(), "{}", error_chain(&err));
        assert!(took < std::time::Duration::from_secs(30), "close took {took:?}, over its 10 s timeout");
        Ok(())
    })
}
