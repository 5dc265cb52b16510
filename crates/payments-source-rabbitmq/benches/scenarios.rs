//! `cargo xtask bench`: the RabbitMQ source and publisher beside the raw lapin loops a
//! hand-written consumer or producer would run, measured in the same run, on the same server.
//!
//! - `rabbitmq.source.c64`: deliveries through `RabbitSource` (prefetch 64), each acknowledged,
//!   no store; against a raw lapin consumer with the same prefetch whose loop takes a delivery
//!   from the stream and awaits its `ack`.
//! - `rabbitmq.source.c64.pipelined`: the same deliveries through `RabbitSource`, against a raw
//!   consumer that does not wait for its acknowledgements either (each `ack` runs in a task of
//!   its own, all awaited at the end): the harder baseline, since the source's acker does that.
//! - `rabbitmq.publish`: `RabbitPublisher` batches of 1000 against raw confirmed publishes of 1000
//!   (`mandatory`, persistent, every confirmation awaited).
//!
//! Both sides use quorum queues declared the same way (by the publisher that fills them).
//! Payloads are 256 bytes. Needs a server: `PAYMENTS_TEST_AMQP_URL`, default
//! amqp://guest:guest@127.0.0.1:5672/%2f.

// A benchmark reports on stderr by design: what it skipped, what it could not clean up.
#![allow(clippy::print_stderr)]

use std::hint::black_box;
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation};
use payments_ports::{DeliverySource, OutgoingMessage, Payload, Publisher};
use payments_source_rabbitmq::{
    RabbitPublisher, RabbitSource, RabbitSourceConfig, RabbitTargetConfig, parked_queue,
};
use payments_test_support::bench::{self, Latencies, Row, Scale, Target, median, rate};
use payments_test_support::rabbitmq::{self as test_rabbitmq, TestQueues};

/// Rounds in which the raw loop and the adapter take turns: the medians of alternating rounds
/// compare like with like on a machine whose speed drifts.
const ROUNDS: usize = 5;
/// Deliveries in flight: the prefetch of both consumers.
const IN_FLIGHT: usize = 64;
/// Messages per publish batch.
const PUBLISH_BATCH: usize = 1000;
const PAYLOAD: usize = 256;

fn main() -> std::process::ExitCode {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    bench::main(&[("rabbitmq", &|scale| runtime.block_on(run(scale)))])
}

async fn run(scale: Scale) -> Vec<Row> {
    if let Err(reason) = test_rabbitmq::reachable().await {
        eprintln!("SKIPPED rabbitmq scenarios: {reason}");
        return Vec::new();
    }
    let queues = TestQueues::new("bench");
    let mut rows = source(&queues, scale).await;
    rows.push(publish(&queues, scale).await);
    if let Err(err) = queues.remove().await {
        eprintln!("cannot remove the bench queues {}.*: {err}", queues.prefix());
    }
    rows
}

fn payload(i: usize) -> Bytes {
    let mut body =
        format!("{{\"payment_id\":\"pay-{i:09}\",\"amount\":100,\"currency\":\"EUR\"}}").into_bytes();
    body.resize(PAYLOAD, b' ');
    Bytes::from(body)
}

/// A queue of `queues`, its parking queue remembered for deletion too.
fn queue(queues: &TestQueues, name: &str) -> String {
    let queue = queues.queue(name);
    queues.track(&parked_queue(&queue));
    queue
}

fn target(queue: &str) -> RabbitTargetConfig {
    RabbitTargetConfig::from_url(&format!("{}?queue={queue}", test_rabbitmq::url())).expect("url")
}

/// Declares `queue` and fills it with `n` messages (not timed).
async fn fill(queue: &str, n: usize) {
    let publisher = RabbitPublisher::connect(target(queue)).await.expect("connect");
    let messages: Vec<OutgoingMessage> =
        (0..n).map(|i| OutgoingMessage { id: None, payload: payload(i) }).collect();
    for batch in messages.chunks(PUBLISH_BATCH) {
        publisher.publish(batch).await.expect("fill");
    }
    publisher.close().await.expect("close");
}

/// The raw consumer: lapin's consumer stream with the same prefetch, each delivery's payload
/// looked at, then its `ack` awaited, one after the other.
async fn raw_consume(queue: &str, n: usize) -> f64 {
    let connection = test_rabbitmq::connect().await.expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    let prefetch = u16::try_from(IN_FLIGHT).expect("a prefetch");
    channel.basic_qos(prefetch, BasicQosOptions::default()).await.expect("qos");
    let mut consumer = channel
        .basic_consume(queue.into(), "raw".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .expect("consume");
    let started = Instant::now();
    for _ in 0..n {
        let delivery = consumer.next().await.expect("a broker never ends").expect("delivery");
        black_box(&delivery.data);
        delivery.acker.ack(BasicAckOptions::default()).await.expect("ack");
    }
    let _ = channel.close(200, "done".into()).await;
    let elapsed = started.elapsed();
    let _ = connection.close(200, "done".into()).await;
    rate(n, elapsed)
}

/// The raw consumer that does not wait for its acknowledgements: each one is spawned, and all
/// are awaited before the channel closes.
async fn raw_consume_pipelined(queue: &str, n: usize) -> f64 {
    let connection = test_rabbitmq::connect().await.expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    let prefetch = u16::try_from(IN_FLIGHT).expect("a prefetch");
    channel.basic_qos(prefetch, BasicQosOptions::default()).await.expect("qos");
    let mut consumer = channel
        .basic_consume(queue.into(), "raw".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .expect("consume");
    let started = Instant::now();
    let mut acks = Vec::with_capacity(n);
    for _ in 0..n {
        let delivery = consumer.next().await.expect("a broker never ends").expect("delivery");
        black_box(&delivery.data);
        acks.push(tokio::spawn(async move { delivery.acker.ack(BasicAckOptions::default()).await }));
    }
    for ack in acks {
        ack.await.expect("the task").expect("ack");
    }
    let _ = channel.close(200, "done".into()).await;
    let elapsed = started.elapsed();
    let _ = connection.close(200, "done".into()).await;
    rate(n, elapsed)
}

/// The adapter: `next`, then `ack`, until `n` came; then `close`, which makes sure RabbitMQ has
/// the last acknowledgements (timed, as the raw loop's channel close is).
async fn source_consume(queue: &str, n: usize, latencies: &mut Latencies) -> f64 {
    let config = RabbitSourceConfig::from_url(&format!("{}?queue={queue}", test_rabbitmq::url()))
        .expect("url")
        .with_in_flight(IN_FLIGHT);
    let mut source = RabbitSource::connect(config).await.expect("connect");
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

async fn source(queues: &TestQueues, scale: Scale) -> Vec<Row> {
    let n = scale.pick(20_000, 100_000) / ROUNDS;
    let (mut raw_rates, mut pipelined_rates, mut rates) = (Vec::new(), Vec::new(), Vec::new());
    let mut latencies = Latencies::with_capacity(n * ROUNDS);
    for round in 0..ROUNDS {
        let raw = queue(queues, &format!("raw-{round}"));
        let pipelined = queue(queues, &format!("pipelined-{round}"));
        let adapter = queue(queues, &format!("source-{round}"));
        for queue in [&raw, &pipelined, &adapter] {
            fill(queue, n).await;
        }
        raw_rates.push(raw_consume(&raw, n).await);
        pipelined_rates.push(raw_consume_pipelined(&pipelined, n).await);
        rates.push(source_consume(&adapter, n, &mut latencies).await);
    }
    let rate = median(&mut rates);
    let note = format!(
        "{n} deliveries of {PAYLOAD} B per round from a quorum queue, acknowledged, no store; medians of {ROUNDS} alternating rounds"
    );
    let mut pipelined_latencies = Latencies::default();
    vec![
        Row::new(
            "rabbitmq.source.c64",
            rate,
            &mut latencies,
            "raw lapin consume (prefetch 64), ack awaited",
            Some(median(&mut raw_rates)),
            Target::Ratio(0.8),
            note.clone(),
        ),
        Row::new(
            "rabbitmq.source.c64.pipelined",
            rate,
            &mut pipelined_latencies,
            "raw lapin consume (prefetch 64), acks spawned",
            Some(median(&mut pipelined_rates)),
            Target::Ratio(0.8),
            format!("the same rounds; latencies in the row above. {note}"),
        ),
    ]
}

/// Raw confirmed publishes: a batch of `basic.publish` (`mandatory`, persistent), then every
/// confirmation awaited and checked.
async fn raw_publish(queue: &str, batches: &[Vec<Bytes>]) -> f64 {
    let connection = test_rabbitmq::connect().await.expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    channel.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    let options = BasicPublishOptions { mandatory: true, immediate: false };
    let started = Instant::now();
    for batch in batches {
        let mut confirms = Vec::with_capacity(batch.len());
        for body in batch {
            let properties = BasicProperties::default().with_delivery_mode(2);
            confirms.push(
                channel
                    .basic_publish("".into(), queue.into(), options, body, properties)
                    .await
                    .expect("publish"),
            );
        }
        for confirm in confirms {
            assert!(matches!(confirm.await.expect("confirm"), Confirmation::Ack(None)), "stored");
        }
    }
    let elapsed = started.elapsed();
    let _ = connection.close(200, "done".into()).await;
    rate(batches.iter().map(Vec::len).sum(), elapsed)
}

async fn adapter_publish(queue: &str, batches: &[Vec<OutgoingMessage>], latencies: &mut Latencies) -> f64 {
    let publisher = RabbitPublisher::connect(target(queue)).await.expect("connect");
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

async fn publish(queues: &TestQueues, scale: Scale) -> Row {
    let n = scale.pick(50_000, 250_000) / ROUNDS;
    let bodies: Vec<Vec<Bytes>> = (0..n)
        .collect::<Vec<_>>()
        .chunks(PUBLISH_BATCH)
        .map(|c| c.iter().map(|&i| payload(i)).collect())
        .collect();
    let messages: Vec<Vec<OutgoingMessage>> = bodies
        .iter()
        .map(|batch| batch.iter().map(|b| OutgoingMessage { id: None, payload: b.clone() }).collect())
        .collect();
    let (mut raw_rates, mut rates, mut latencies) = (Vec::new(), Vec::new(), Latencies::default());
    for round in 0..ROUNDS {
        let (raw, adapter) =
            (queue(queues, &format!("raw-out-{round}")), queue(queues, &format!("out-{round}")));
        // Declared the same way, before the clock starts: the adapter declares when it connects.
        RabbitPublisher::connect(target(&raw)).await.expect("declare").close().await.expect("close");
        raw_rates.push(raw_publish(&raw, &bodies).await);
        rates.push(adapter_publish(&adapter, &messages, &mut latencies).await);
        // Emptied as the round ends, so that the next rounds do not run against a full broker.
        if let Err(err) = queues.remove().await {
            eprintln!("cannot empty the bench queues: {err}");
        }
    }
    Row::new(
        "rabbitmq.publish",
        median(&mut rates),
        &mut latencies,
        "raw confirmed basic.publish, 1000 per batch",
        Some(median(&mut raw_rates)),
        Target::Ratio(0.8),
        format!(
            "{n} messages of {PAYLOAD} B per round in batches of {PUBLISH_BATCH} (latency per batch), to a quorum queue; medians of {ROUNDS} alternating rounds"
        ),
    )
}
