//! What the tests share: a runtime, keys removed whatever happens, sources, raw commands, and
//! waits with deadlines.

use std::future::Future;
use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use payments_ports::{Delivery, DeliverySource, Payload};
use payments_source_redis::{RedisSource, RedisSourceConfig};
use payments_test_support::redis::{self as test_redis, TestKeys};
use redis::aio::MultiplexedConnection;

/// The claim timeout of the tests' sources: takeovers come quickly.
pub(crate) const CLAIM_IDLE_MS: u64 = 400;

/// Runs `test` with keys of its own, and removes them afterwards, whatever happened (a failed
/// assertion panics: the keys are removed all the same, then the panic goes on).
pub(crate) fn with_keys<F, Fut>(name: &str, test: F) -> Result<(), Failed>
where
    F: FnOnce(TestKeys) -> Fut,
    Fut: Future<Output = Result<(), Failed>>,
{
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let keys = TestKeys::new(name);
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.block_on(test(keys.clone()))));
    let cleanup = runtime.block_on(keys.remove());
    let result = result.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    result.and(cleanup.map(drop).map_err(|err| Failed::from(format!("removing {}: {err}", keys.prefix()))))
}

/// A source on `keys`' stream, as `consumer` in `group`, its connections named after the test.
pub(crate) async fn open(keys: &TestKeys, group: &str, consumer: &str, in_flight: usize) -> RedisSource {
    open_with(keys, group, consumer, in_flight, CLAIM_IDLE_MS).await
}

/// [`open`], with a claim timeout of its own.
pub(crate) async fn open_with(
    keys: &TestKeys,
    group: &str,
    consumer: &str,
    in_flight: usize,
    claim_idle_ms: u64,
) -> RedisSource {
    let config = RedisSourceConfig::from_url(&format!(
        "{}?stream={}&group={group}&consumer={consumer}&claim-idle-ms={claim_idle_ms}",
        test_redis::url(),
        keys.key("stream")
    ))
    .expect("valid URL")
    .with_in_flight(in_flight)
    .with_client_name(&keys.client_name());
    RedisSource::connect(config).await.expect("the source connects")
}

pub(crate) async fn connection() -> MultiplexedConnection {
    test_redis::connect().await.expect("the test server answers")
}

/// Adds entries with a `payload` field each, in one pipeline; returns their IDs.
pub(crate) async fn add(stream: &str, payloads: &[Vec<u8>]) -> Vec<String> {
    let mut pipe = redis::pipe();
    for payload in payloads {
        pipe.cmd("XADD").arg(stream).arg("*").arg("payload").arg(&payload[..]);
    }
    pipe.query_async(&mut connection().await).await.expect("XADD")
}

/// `count` numbered payloads, `<prefix>-000` and on.
pub(crate) fn numbered(prefix: &str, count: usize) -> Vec<Vec<u8>> {
    (0..count).map(|i| format!("{prefix}-{i:03}").into_bytes()).collect()
}

/// How many entries the group has pending, over all its consumers (XPENDING's summary).
pub(crate) async fn pending_count(stream: &str, group: &str) -> usize {
    // `[count, first, last, [[consumer, count]…]]`: only the count is wanted.
    let summary: Vec<redis::Value> = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query_async(&mut connection().await)
        .await
        .expect("XPENDING");
    match summary.first() {
        Some(redis::Value::Int(count)) => usize::try_from(*count).expect("a count"),
        other => panic!("unexpected XPENDING summary {other:?}"),
    }
}

/// Polls `condition` until it holds or `within` has passed; says whether it held.
pub(crate) async fn eventually<F, Fut>(within: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next delivery within `within`, asking again (as the consumer does) while the source is
/// unavailable; `None` when none came.
pub(crate) async fn next_within(source: &mut RedisSource, within: Duration) -> Option<Delivery> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, source.next()).await {
            Err(_) => return None,
            Ok(Ok(delivery)) => return delivery,
            Ok(Err(err)) if err.is_unavailable() => tokio::time::sleep(Duration::from_millis(20)).await,
            Ok(Err(err)) => panic!("the source failed: {}", payments_ports::error_chain(&err)),
        }
    }
}

/// The body of a whole payload.
pub(crate) fn body(delivery: &Delivery) -> Vec<u8> {
    match &delivery.payload {
        Payload::Complete(body) => body.to_vec(),
        other => panic!("expected a whole payload, got {other:?}"),
    }
}

/// A field of an entry read with XRANGE, as raw bytes.
pub(crate) fn field<'a>(fields: &'a [(Vec<u8>, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    fields.iter().find(|(n, _)| n == name.as_bytes()).map(|(_, v)| v.as_slice())
}

/// Every entry of `stream`: its ID and fields, as raw bytes.
pub(crate) async fn entries(stream: &str) -> Vec<(String, Vec<(Vec<u8>, Vec<u8>)>)> {
    let raw: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(&mut connection().await)
        .await
        .expect("XRANGE");
    raw.into_iter()
        .map(|(id, flat)| {
            let pairs = flat.chunks(2).map(|pair| (pair[0].clone(), pair[1].clone())).collect();
            (id, pairs)
        })
        .collect()
}
