//! What the tests share: a runtime, queues deleted whatever happens, sources and publishers on
//! them, raw reads, and waits with deadlines.

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lapin::message::BasicGetMessage;
use lapin::options::BasicGetOptions;
use libtest_mimic::Failed;
use payments_ports::{Delivery, DeliverySource, OutgoingMessage, Payload, Publisher};
use payments_source_rabbitmq::{
    RabbitPublisher, RabbitSource, RabbitSourceConfig, RabbitTargetConfig, parked_queue,
};
use payments_test_support::rabbitmq::{self as test_rabbitmq, TestQueues};

/// How long a test waits for what must come.
pub(crate) const PATIENCE: Duration = Duration::from_secs(15);

/// Runs `test` with queue names of its own, and deletes the queues afterwards, whatever happened
/// (a failed assertion panics: the queues are deleted all the same, then the panic goes on).
pub(crate) fn with_queues<F, Fut>(name: &str, test: F) -> Result<(), Failed>
where
    F: FnOnce(TestQueues) -> Fut,
    Fut: Future<Output = Result<(), Failed>>,
{
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let queues = TestQueues::new(name);
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.block_on(test(queues.clone()))));
    let cleanup = runtime.block_on(queues.remove());
    let result = result.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    result.and(cleanup.map(drop).map_err(|err| Failed::from(format!("removing {}: {err}", queues.prefix()))))
}

/// The queue `name` of `queues`, its parking queue remembered for deletion too.
pub(crate) fn queue(queues: &TestQueues, name: &str) -> String {
    let queue = queues.queue(name);
    queues.track(&parked_queue(&queue));
    queue
}

/// The configuration of a source on `queue` at `url` (the server's, or a proxy's), its
/// connection named after the test.
pub(crate) fn source_config(
    queues: &TestQueues,
    url: &str,
    queue: &str,
    prefetch: usize,
) -> RabbitSourceConfig {
    RabbitSourceConfig::from_url(&format!("{url}?queue={queue}"))
        .expect("valid URL")
        .with_in_flight(prefetch)
        .with_connection_name(&queues.connection_name())
}

/// A source on `queue`, straight to the server.
pub(crate) async fn open(queues: &TestQueues, queue: &str, prefetch: usize) -> RabbitSource {
    let config = source_config(queues, &test_rabbitmq::url(), queue, prefetch);
    RabbitSource::connect(config).await.expect("the source connects")
}

/// A publisher to `queue`.
pub(crate) async fn publisher(queues: &TestQueues, queue: &str) -> RabbitPublisher {
    let config = RabbitTargetConfig::from_url(&format!("{}?queue={queue}", test_rabbitmq::url()))
        .expect("valid URL")
        .with_connection_name(&format!("{}-publisher", queues.connection_name()));
    RabbitPublisher::connect(config).await.expect("the publisher connects")
}

/// Publishes `bodies` to `queue`, each with its body as its ID when it is short enough for one,
/// and closes the publisher.
pub(crate) async fn publish(queues: &TestQueues, queue: &str, bodies: &[Vec<u8>]) {
    let publisher = publisher(queues, queue).await;
    let messages: Vec<OutgoingMessage> = bodies
        .iter()
        .map(|body| OutgoingMessage {
            id: (body.len() <= 64).then(|| String::from_utf8_lossy(body).into_owned()),
            payload: Bytes::from(body.clone()),
        })
        .collect();
    publisher.publish(&messages).await.expect("published");
    publisher.close().await.expect("closed");
}

/// `count` numbered bodies, `<prefix>-000` and on.
pub(crate) fn numbered(prefix: &str, count: usize) -> Vec<Vec<u8>> {
    (0..count).map(|i| format!("{prefix}-{i:03}").into_bytes()).collect()
}

/// The next delivery within `within`, asking again (as the consumer does) while the source is
/// unavailable; `None` when none came.
pub(crate) async fn next_within(source: &mut RabbitSource, within: Duration) -> Option<Delivery> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, source.next()).await {
            Err(_) => return None,
            Ok(Ok(delivery)) => return delivery,
            Ok(Err(err)) if err.is_unavailable() => tokio::time::sleep(Duration::from_millis(50)).await,
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
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many messages are ready in `queue`.
pub(crate) async fn ready(queue: &str) -> u32 {
    test_rabbitmq::ready_messages(queue).await.expect("passive declare").unwrap_or(0)
}

/// Every message of `queue`, taken with `basic.get` (acknowledged as they are taken), in order.
pub(crate) async fn drain(queue: &str) -> Vec<BasicGetMessage> {
    let connection = test_rabbitmq::connect().await.expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    let mut messages = Vec::new();
    while let Some(message) =
        channel.basic_get(queue.into(), BasicGetOptions { no_ack: true }).await.expect("basic.get")
    {
        messages.push(message);
    }
    let _ = connection.close(200, "drained".into()).await;
    messages
}
