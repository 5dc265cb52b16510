//! `cargo xtask bench`: the Redis source and publisher beside the raw commands a hand-written
//! consumer or producer would send, measured in the same run, on the same server.
//!
//! - `redis.source.c64`: deliveries through `RedisSource` (64 in flight, so reads of 64), each
//!   acknowledged, no store; against a loop of `XREADGROUP … COUNT 64` then `XACK` of the batch.
//! - `redis.publish`: `RedisPublisher` batches of 1000 against raw pipelined `XADD`s of 1000.
//!
//! Payloads are 256 bytes. Needs a server: `PAYMENTS_TEST_REDIS_URL`, default redis://127.0.0.1:6379.

// A benchmark reports on stderr by design: what it skipped, what it could not clean up.
#![allow(clippy::print_stderr)]

use std::hint::black_box;
use std::time::Instant;

use bytes::Bytes;
use payments_ports::{DeliverySource, OutgoingMessage, Payload, Publisher};
use payments_source_redis::{RedisPublisher, RedisSource, RedisSourceConfig, RedisStreamConfig};
use payments_test_support::bench::{self, Latencies, Row, Scale, Target, median, rate};
use payments_test_support::redis::{self as test_redis, TestKeys};
use redis::aio::MultiplexedConnection;

/// Rounds in which the raw loop and the adapter take turns: the medians of alternating rounds
/// compare like with like on a machine whose speed drifts.
const ROUNDS: usize = 5;
/// Deliveries in flight, and so entries per read.
const IN_FLIGHT: usize = 64;
/// Messages per publish batch.
const PUBLISH_BATCH: usize = 1000;
const PAYLOAD: usize = 256;

fn main() -> std::process::ExitCode {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    bench::main(&[("redis", &|scale| runtime.block_on(run(scale)))])
}

async fn run(scale: Scale) -> Vec<Row> {
    if let Err(reason) = test_redis::reachable().await {
        eprintln!("SKIPPED redis scenarios: {reason}");
        return Vec::new();
    }
    let keys = TestKeys::new("bench");
    let rows = vec![source(&keys, scale).await, publish(&keys, scale).await];
    if let Err(err) = keys.remove().await {
        eprintln!("cannot remove the bench keys {}:*: {err}", keys.prefix());
    }
    rows
}

fn payload(i: usize) -> Vec<u8> {
    let mut body =
        format!("{{\"payment_id\":\"pay-{i:09}\",\"amount\":100,\"currency\":\"EUR\"}}").into_bytes();
    body.resize(PAYLOAD, b' ');
    body
}

async fn connection() -> MultiplexedConnection {
    test_redis::connect().await.expect("connect")
}

/// Fills `stream` with `n` entries and creates the group `g` at its start (not timed).
async fn fill(stream: &str, n: usize) {
    test_redis::fill_stream(stream, "g", (0..n).map(payload), PUBLISH_BATCH).await.expect("fill");
}

async fn delete(stream: &str) {
    redis::cmd("DEL").arg(stream).exec_async(&mut connection().await).await.expect("DEL");
}

/// The raw consumer, in test support so that the app's end-to-end benchmark compares with the same.
async fn raw_consume(stream: &str, n: usize) -> f64 {
    test_redis::raw_consume(stream, "g", IN_FLIGHT, n).await.expect("raw consume")
}

/// The adapter: `next`, then `ack`, until `n` came; then `close`, which sends the last
/// acknowledgements (timed, since the raw loop's are all sent when it ends).
async fn source_consume(stream: &str, n: usize, latencies: &mut Latencies) -> f64 {
    let config = RedisSourceConfig::from_url(&format!(
        "{}?stream={stream}&group=g&consumer=adapter",
        test_redis::url()
    ))
    .expect("url")
    .with_in_flight(IN_FLIGHT);
    let mut source = RedisSource::connect(config).await.expect("connect");
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

async fn source(keys: &TestKeys, scale: Scale) -> Row {
    let n = scale.pick(40_000, 200_000) / ROUNDS;
    let (mut raw_rates, mut rates, mut latencies) =
        (Vec::new(), Vec::new(), Latencies::with_capacity(n * ROUNDS));
    for round in 0..ROUNDS {
        let (raw, adapter) = (keys.key(&format!("raw-{round}")), keys.key(&format!("source-{round}")));
        fill(&raw, n).await;
        fill(&adapter, n).await;
        raw_rates.push(raw_consume(&raw, n).await);
        rates.push(source_consume(&adapter, n, &mut latencies).await);
        delete(&raw).await;
        delete(&adapter).await;
    }
    Row::new(
        "redis.source.c64",
        median(&mut rates),
        &mut latencies,
        "raw XREADGROUP COUNT 64 + XACK, one by one",
        Some(median(&mut raw_rates)),
        Target::Ratio(0.8),
        format!(
            "{n} deliveries of {PAYLOAD} B per round, acknowledged, no store; medians of {ROUNDS} alternating rounds"
        ),
    )
}

async fn raw_publish(stream: &str, batches: &[Vec<Vec<u8>>]) -> f64 {
    let mut con = connection().await;
    let started = Instant::now();
    for batch in batches {
        let mut pipe = redis::pipe();
        for body in batch {
            pipe.cmd("XADD").arg(stream).arg("*").arg("payload").arg(&body[..]).ignore();
        }
        pipe.exec_async(&mut con).await.expect("XADD");
    }
    rate(batches.iter().map(Vec::len).sum(), started.elapsed())
}

async fn adapter_publish(stream: &str, batches: &[Vec<OutgoingMessage>], latencies: &mut Latencies) -> f64 {
    let config = RedisStreamConfig::from_url(&format!("{}?stream={stream}", test_redis::url())).expect("url");
    let publisher = RedisPublisher::connect(config).await.expect("connect");
    let started = Instant::now();
    for batch in batches {
        let began = Instant::now();
        publisher.publish(batch).await.expect("publish");
        latencies.push(began.elapsed());
    }
    rate(batches.iter().map(Vec::len).sum(), started.elapsed())
}

async fn publish(keys: &TestKeys, scale: Scale) -> Row {
    let n = scale.pick(100_000, 500_000) / ROUNDS;
    let bodies: Vec<Vec<Vec<u8>>> = (0..n)
        .collect::<Vec<_>>()
        .chunks(PUBLISH_BATCH)
        .map(|c| c.iter().map(|&i| payload(i)).collect())
        .collect();
    let messages: Vec<Vec<OutgoingMessage>> = bodies
        .iter()
        .map(|batch| {
            batch.iter().map(|b| OutgoingMessage { id: None, payload: Bytes::from(b.clone()) }).collect()
        })
        .collect();
    let (mut raw_rates, mut rates, mut latencies) = (Vec::new(), Vec::new(), Latencies::default());
    for round in 0..ROUNDS {
        let (raw, adapter) = (keys.key(&format!("raw-out-{round}")), keys.key(&format!("out-{round}")));
        raw_rates.push(raw_publish(&raw, &bodies).await);
        rates.push(adapter_publish(&adapter, &messages, &mut latencies).await);
        delete(&raw).await;
        delete(&adapter).await;
    }
    Row::new(
        "redis.publish",
        median(&mut rates),
        &mut latencies,
        "raw pipelined XADD, 1000 per round trip",
        Some(median(&mut raw_rates)),
        Target::Ratio(0.8),
        format!(
            "{n} messages of {PAYLOAD} B per round in batches of {PUBLISH_BATCH} (latency per batch); medians of {ROUNDS} alternating rounds"
        ),
    )
}
