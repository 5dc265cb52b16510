//! What the tests share: a runtime, streams removed whatever happens, sources, raw JetStream
//! calls, and waits with deadlines.

use std::future::Future;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use libtest_mimic::Failed;
use payments_ports::{Delivery, DeliverySource, Payload};
use payments_source_nats::{NatsSource, NatsSourceConfig};
use payments_test_support::nats::{self as test_nats, TestStreams};

/// How long a test waits for what must come.
pub(crate) const PATIENCE: Duration = Duration::from_secs(20);

/// Runs `test` with stream names of its own, and removes its streams afterwards, whatever happened
/// (a failed assertion panics: the streams are removed all the same, then the panic goes on).
pub(crate) fn with_streams<F, Fut>(name: &str, test: F) -> Result<(), Failed>
where
    F: FnOnce(TestStreams) -> Fut,
    Fut: Future<Output = Result<(), Failed>>,
{
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let streams = TestStreams::new(name);
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.block_on(test(streams.clone()))));
    let cleanup = runtime.block_on(streams.remove());
    let result = result.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    result.and(cleanup.map(drop).map_err(|err| Failed::from(format!("removing {}: {err}", streams.prefix()))))
}

/// Where a test's source reads: its stream `in`, its subject `in`.
pub(crate) struct Place {
    pub(crate) stream: String,
    pub(crate) subject: String,
}

impl Place {
    pub(crate) fn new(streams: &TestStreams) -> Self {
        Self { stream: streams.stream("in"), subject: streams.subject("in") }
    }

    /// A source URL for this place on `server` (the test server, or a proxy in front of it).
    pub(crate) fn url(&self, server: &str, consumer: &str, extra: &str) -> String {
        format!("{server}?stream={}&subject={}&consumer={consumer}{extra}", self.stream, self.subject)
    }
}

/// A source on `place` as `consumer` on `server`, with `in_flight` and `extra` URL parameters.
pub(crate) async fn open(
    place: &Place,
    server: &str,
    consumer: &str,
    in_flight: usize,
    extra: &str,
) -> NatsSource {
    let config = NatsSourceConfig::from_url(&place.url(server, consumer, extra))
        .expect("valid URL")
        .with_in_flight(in_flight);
    NatsSource::connect(config).await.expect("the source connects")
}

pub(crate) async fn context() -> jetstream::Context {
    test_nats::jetstream().await.expect("the test server answers")
}

/// Publishes each payload to `subject`, each confirmed, without the adapter.
pub(crate) async fn publish(subject: &str, payloads: &[Vec<u8>]) {
    let context = context().await;
    let mut acks = Vec::new();
    for payload in payloads {
        acks.push(context.publish(subject.to_owned(), Bytes::from(payload.clone())).await.expect("publish"));
    }
    for ack in acks {
        ack.await.expect("a publish acknowledgement");
    }
}

/// Makes the stream of `place` (as the source would), without a consumer.
pub(crate) async fn create_stream(place: &Place) {
    context()
        .await
        .get_or_create_stream(stream::Config {
            name: place.stream.clone(),
            subjects: vec![place.subject.clone()],
            ..Default::default()
        })
        .await
        .expect("stream");
}

/// `count` numbered payloads, `<prefix>-000` and on.
pub(crate) fn numbered(prefix: &str, count: usize) -> Vec<Vec<u8>> {
    (0..count).map(|i| format!("{prefix}-{i:03}").into_bytes()).collect()
}

/// The consumer's state on the server.
pub(crate) async fn consumer_info(stream: &str, consumer: &str) -> consumer::Info {
    let stream = context().await.get_stream(stream).await.expect("the stream");
    stream.consumer_info(consumer).await.expect("the consumer's info")
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

/// Whether the consumer has settled everything: nothing left to deliver, nothing unacknowledged.
pub(crate) async fn all_settled(stream: &str, consumer: &str) -> bool {
    let info = consumer_info(stream, consumer).await;
    info.num_pending == 0 && info.num_ack_pending == 0
}

/// The next delivery within `within`, asking again (as the consumer does) while the source is
/// unavailable; `None` when none came.
pub(crate) async fn next_within(source: &mut NatsSource, within: Duration) -> Option<Delivery> {
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

/// Every message of `stream`, read directly by sequence.
pub(crate) async fn stored(stream: &str) -> Vec<jetstream::message::StreamMessage> {
    let mut stream = context().await.get_stream(stream).await.expect("the stream");
    let last = stream.info().await.expect("stream info").state.last_sequence;
    let mut messages = Vec::new();
    for sequence in 1..=last {
        messages.push(stream.get_raw_message(sequence).await.expect("a stored message"));
    }
    messages
}
