//! `cargo xtask bench`: the NATS source and publisher beside the raw async-nats loops a
//! hand-written consumer or producer would run, measured in the same run, on the same server.
//!
//! - `nats.source.c64`: deliveries through `NatsSource` (64 in flight, so pulls of 64), each
//!   acknowledged (`+ACK`), no store; against a loop of `batch().max_messages(64)` pulls, each
//!   message acknowledged with `ack()` as it comes.
//! - `nats.source.c64.double_ack`: the same with `double-ack=true`; against the same raw loop whose
//!   messages are acknowledged with `double_ack()`, a pull's worth at once.
//! - `nats.source.double_ack_cost`: the double-ack source beside the plain one: what confirmed
//!   acknowledgements cost.
//! - `nats.publish`: `NatsPublisher` batches of 1000 (each with a `Nats-Msg-Id`) against raw
//!   `send_publish` of the same 1000, then their acknowledgements awaited.
//!
//! Payloads are 256 bytes. Needs a server with JetStream: `PAYMENTS_TEST_NATS_URL`, default
//! nats://127.0.0.1:4222.

// A benchmark reports on stderr by design: what it skipped, what it could not clean up.
#![allow(clippy::print_stderr)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use futures::StreamExt;
use payments_ports::{DeliverySource, OutgoingMessage, Payload, Publisher};
use payments_source_nats::{NatsPublisher, NatsSource, NatsSourceConfig, NatsStreamConfig};
use payments_test_support::bench::{self, Latencies, Row, Scale, Target, median, rate};
use payments_test_support::nats::{self as test_nats, TestStreams};

/// Rounds in which the raw loop and the adapter take turns: the medians of alternating rounds
/// compare like with like on a machine whose speed drifts.
const ROUNDS: usize = 5;
/// Deliveries in flight, and so messages per pull.
const IN_FLIGHT: usize = 64;
/// Messages per publish batch.
const PUBLISH_BATCH: usize = 1000;
const PAYLOAD: usize = 256;
/// How long a pull waits at the server: the source's own for the default ack wait of 30 s.
const EXPIRES: Duration = Duration::from_secs(5);

fn main() -> std::process::ExitCode {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    bench::main(&[("nats", &|scale| runtime.block_on(run(scale)))])
}

async fn run(scale: Scale) -> Vec<Row> {
    if let Err(reason) = test_nats::reachable().await {
        eprintln!("SKIPPED nats scenarios: {reason}");
        return Vec::new();
    }
    let streams = TestStreams::new("bench");
    let mut rows = source(&streams, scale).await;
    rows.push(publish(&streams, scale).await);
    if let Err(err) = streams.remove().await {
        eprintln!("cannot remove the bench streams {}*: {err}", streams.prefix());
    }
    rows
}

fn payload(i: usize) -> Bytes {
    let mut body =
        format!("{{\"payment_id\":\"pay-{i:09}\",\"amount\":100,\"currency\":\"EUR\"}}").into_bytes();
    body.resize(PAYLOAD, b' ');
    Bytes::from(body)
}

async fn context() -> jetstream::Context {
    test_nats::jetstream().await.expect("connect")
}

/// Makes the stream `name` on `subject` and fills it with `n` messages (not timed).
async fn fill(context: &jetstream::Context, name: &str, subject: &str, n: usize) {
    context
        .create_stream(stream::Config {
            name: name.to_owned(),
            subjects: vec![subject.to_owned()],
            ..Default::default()
        })
        .await
        .expect("stream");
    for chunk in (0..n).collect::<Vec<_>>().chunks(PUBLISH_BATCH) {
        let mut acks = Vec::with_capacity(chunk.len());
        for &i in chunk {
            acks.push(context.publish(subject.to_owned(), payload(i)).await.expect("publish"));
        }
        for ack in acks {
            ack.await.expect("publish ack");
        }
    }
}

/// The raw consumer: the consumer the source would make, pulls of 64, each message's body looked
/// at and acknowledged (`ack`, or `double_ack` of a pull's worth at once).
async fn raw_consume(stream: &str, subject: &str, n: usize, double_ack: bool) -> f64 {
    let context = context().await;
    let consumer: PullConsumer = context
        .get_stream(stream)
        .await
        .expect("stream")
        .create_consumer(pull::Config {
            durable_name: Some("raw".to_owned()),
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            max_deliver: -1,
            max_ack_pending: IN_FLIGHT as i64,
            filter_subject: subject.to_owned(),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let started = Instant::now();
    let mut consumed = 0;
    while consumed < n {
        // No more than remain: a pull for more would wait out its expiry for them.
        let wanted = (n - consumed).min(IN_FLIGHT);
        let mut batch =
            consumer.batch().max_messages(wanted).expires(EXPIRES).messages().await.expect("pull");
        let mut held = Vec::with_capacity(IN_FLIGHT);
        while let Some(message) = batch.next().await {
            let message = message.expect("a message");
            black_box(&message.payload);
            consumed += 1;
            if double_ack {
                held.push(message);
            } else {
                message.ack().await.expect("ack");
            }
        }
        let confirmed = futures::future::join_all(held.iter().map(|m| m.double_ack())).await;
        assert!(confirmed.iter().all(Result::is_ok), "double acks confirmed");
    }
    context.client().flush().await.expect("flush");
    rate(consumed, started.elapsed())
}

/// The adapter: `next`, then `ack`, until `n` came; then `close`, which sends the last
/// acknowledgements (timed, since the raw loop's are all sent when it ends).
async fn source_consume(
    stream: &str,
    subject: &str,
    n: usize,
    double_ack: bool,
    latencies: &mut Latencies,
) -> f64 {
    let config = NatsSourceConfig::from_url(&format!(
        "{}?stream={stream}&subject={subject}&consumer=adapter&double-ack={double_ack}",
        test_nats::url()
    ))
    .expect("url")
    .with_in_flight(IN_FLIGHT);
    let mut source = NatsSource::connect(config).await.expect("connect");
    let started = Instant::now();
    for _ in 0..n {
        let began = Instant::now();
        let delivery = source.next().await.expect("next").expect("a broker never ends");
        latencies.push(began.elapsed());
        let Payload::Complete(body) = &delivery.payload else { panic!("whole payloads only") };
        black_box(body);
        delivery.receipt.ack();
    }
    source.close().await.expect("close");
    rate(n, started.elapsed())
}

/// Per ack mode: the adapter's rates, the raw loop's, and the adapter's latencies.
struct Measured {
    adapter: Vec<f64>,
    raw: Vec<f64>,
    latencies: Latencies,
}

async fn measure(streams: &TestStreams, n: usize, double_ack: bool) -> Measured {
    let context = context().await;
    let mode = if double_ack { "double" } else { "plain" };
    let mut measured =
        Measured { adapter: Vec::new(), raw: Vec::new(), latencies: Latencies::with_capacity(n * ROUNDS) };
    for round in 0..ROUNDS {
        let (raw, adapter) = (format!("raw-{mode}-{round}"), format!("source-{mode}-{round}"));
        let (raw_stream, raw_subject) = (streams.stream(&raw.replace('-', "_")), streams.subject(&raw));
        let (stream, subject) = (streams.stream(&adapter.replace('-', "_")), streams.subject(&adapter));
        fill(&context, &raw_stream, &raw_subject, n).await;
        fill(&context, &stream, &subject, n).await;
        measured.raw.push(raw_consume(&raw_stream, &raw_subject, n, double_ack).await);
        measured
            .adapter
            .push(source_consume(&stream, &subject, n, double_ack, &mut measured.latencies).await);
        context.delete_stream(&raw_stream).await.expect("delete");
        context.delete_stream(&stream).await.expect("delete");
    }
    measured
}

async fn source(streams: &TestStreams, scale: Scale) -> Vec<Row> {
    let n = scale.pick(20_000, 100_000) / ROUNDS;
    let note = |what: &str| {
        format!(
            "{n} deliveries of {PAYLOAD} B per round, {what}, no store; medians of {ROUNDS} alternating rounds"
        )
    };
    let mut plain = measure(streams, n, false).await;
    let mut double = measure(streams, n, true).await;
    let (plain_rate, double_rate) = (median(&mut plain.adapter), median(&mut double.adapter));
    vec![
        Row::new(
            "nats.source.c64",
            plain_rate,
            &mut plain.latencies,
            "raw pull of 64 + ack() each",
            Some(median(&mut plain.raw)),
            Target::Ratio(0.8),
            note("acknowledged (+ACK)"),
        ),
        Row::new(
            "nats.source.c64.double_ack",
            double_rate,
            &mut double.latencies,
            "raw pull of 64 + double_ack() of the pull",
            Some(median(&mut double.raw)),
            Target::Ratio(0.8),
            note("acknowledgements confirmed (double ack)"),
        ),
        Row::new(
            "nats.source.double_ack_cost",
            double_rate,
            &mut Latencies::default(),
            "the same source with plain acks",
            Some(plain_rate),
            Target::None,
            "what confirmed acknowledgements cost: double-ack rate over plain-ack rate".to_owned(),
        ),
    ]
}

async fn raw_publish(context: &jetstream::Context, subject: &str, batches: &[Vec<OutgoingMessage>]) -> f64 {
    let started = Instant::now();
    for batch in batches {
        let mut acks = Vec::with_capacity(batch.len());
        for message in batch {
            let mut publish = PublishMessage::build().payload(message.payload.clone());
            if let Some(id) = &message.id {
                publish = publish.message_id(id);
            }
            acks.push(context.send_publish(subject.to_owned(), publish).await.expect("publish"));
        }
        for ack in acks {
            ack.await.expect("publish ack");
        }
    }
    rate(batches.iter().map(Vec::len).sum(), started.elapsed())
}

async fn adapter_publish(
    stream: &str,
    subject: &str,
    batches: &[Vec<OutgoingMessage>],
    latencies: &mut Latencies,
) -> f64 {
    let config =
        NatsStreamConfig::from_url(&format!("{}?stream={stream}&subject={subject}", test_nats::url()))
            .expect("url");
    let publisher = NatsPublisher::connect(config).await.expect("connect");
    let started = Instant::now();
    for batch in batches {
        let began = Instant::now();
        publisher.publish(batch).await.expect("publish");
        latencies.push(began.elapsed());
    }
    let elapsed = started.elapsed();
    publisher.close().await.expect("close");
    rate(batches.iter().map(Vec::len).sum(), elapsed)
}

async fn publish(streams: &TestStreams, scale: Scale) -> Row {
    let n = scale.pick(50_000, 250_000) / ROUNDS;
    let messages: Vec<Vec<OutgoingMessage>> = (0..n)
        .collect::<Vec<_>>()
        .chunks(PUBLISH_BATCH)
        .map(|c| {
            c.iter()
                .map(|&i| OutgoingMessage { id: Some(format!("pay-{i:09}")), payload: payload(i) })
                .collect()
        })
        .collect();
    let context = context().await;
    let (mut raw_rates, mut rates, mut latencies) = (Vec::new(), Vec::new(), Latencies::default());
    for round in 0..ROUNDS {
        let (raw, adapter) = (format!("raw-out-{round}"), format!("out-{round}"));
        let (raw_stream, raw_subject) = (streams.stream(&raw.replace('-', "_")), streams.subject(&raw));
        let (stream, subject) = (streams.stream(&adapter.replace('-', "_")), streams.subject(&adapter));
        context
            .create_stream(stream::Config {
                name: raw_stream.clone(),
                subjects: vec![raw_subject.clone()],
                ..Default::default()
            })
            .await
            .expect("stream");
        raw_rates.push(raw_publish(&context, &raw_subject, &messages).await);
        rates.push(adapter_publish(&stream, &subject, &messages, &mut latencies).await);
        context.delete_stream(&raw_stream).await.expect("delete");
        context.delete_stream(&stream).await.expect("delete");
    }
    Row::new(
        "nats.publish",
        median(&mut rates),
        &mut latencies,
        "raw send_publish of 1000, then their acks",
        Some(median(&mut raw_rates)),
        Target::Ratio(0.8),
        format!(
            "{n} messages of {PAYLOAD} B with a Nats-Msg-Id per round in batches of {PUBLISH_BATCH} (latency per batch); medians of {ROUNDS} alternating rounds"
        ),
    )
}
