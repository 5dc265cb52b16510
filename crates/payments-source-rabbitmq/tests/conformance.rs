//! The RabbitMQ source against the source suite.
//! Needs a server: `PAYMENTS_TEST_AMQP_URL`, default amqp://guest:guest@127.0.0.1:5672/%2f.
//!
//! Each case gets a queue of its own (and its parking queue), deleted afterwards. The sources
//! connect through a TCP proxy of the case's own, so that `kill_connections` cuts exactly their
//! connections, at once, as a network fault would; the harness publishes on a direct connection.
//!
//! # Groups
//!
//! In RabbitMQ the group is the queue: every consumer of a queue competes for its messages, and
//! a second group is a second queue bound to the same exchange. So `Identity.group` is ignored
//! here (every source of a case consumes the case's queue) and the `groups` capability is
//! declared missing: a group made by binding a new queue would not receive what was published
//! before it existed, and the suite's group cases publish first and open the groups afterwards,
//! as a Redis consumer group created at the start of its stream allows. Two of the three things
//! the capability stands for do hold for consumers of one queue (a crashed consumer's
//! unacknowledged messages go to the others when its connection closes; consumers split the
//! messages, none lost): the crate's own tests check them (`tests/it`).
//!
//! # Leases
//!
//! RabbitMQ holds an unacknowledged delivery for its consumer for as long as the channel lives,
//! with no lease to renew (its `consumer_timeout`, 30 minutes by default, closes the whole
//! channel). So `leases` is declared missing, and receipts report no lease.

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use payments_conformance::BoxError;
use payments_conformance::source::{Identity, SourceCapabilities, SourceHarness};
use payments_ports::{DeliverySource, OutgoingMessage, Publisher};
use payments_source_rabbitmq::{
    RabbitPublisher, RabbitSource, RabbitSourceConfig, RabbitTargetConfig, parked_queue,
};
use payments_test_support::rabbitmq::{self as test_rabbitmq, Proxy, TestQueues};

/// The prefetch the sources are opened with: their bound on deliveries in flight.
const IN_FLIGHT: usize = 8;

struct RabbitHarness;

/// One case's queue, the proxy its sources connect through, and a publisher to it.
struct Env {
    queues: TestQueues,
    queue: String,
    proxy: Proxy,
    publisher: RabbitPublisher,
}

#[async_trait::async_trait]
impl SourceHarness for RabbitHarness {
    type Env = Env;

    fn adapter(&self) -> &'static str {
        "rabbitmq"
    }

    fn capabilities(&self) -> SourceCapabilities {
        SourceCapabilities {
            binary_safe: true,
            // A dropped receipt rejects its delivery with requeue.
            redelivers_dropped: true,
            // A quorum queue counts deliveries (x-delivery-count).
            exact_attempts: true,
            groups: false,
            // Closing the channel requeues what it held; any consumer of the queue, this
            // identity's next source included, receives it.
            resumes: true,
            in_flight_bound: Some(IN_FLIGHT),
            leases: false,
            kill_connections: true,
        }
    }

    /// A dropped receipt is rejected with requeue as soon as the acker task runs, and the message
    /// comes back at once; a crashed source's messages are requeued when its connection closes,
    /// and a killed connection is noticed as soon as the socket closes. Each takes a few
    /// milliseconds; a second allows for a loaded machine and for the reconnection.
    fn redelivery_timeout(&self) -> Duration {
        Duration::from_secs(1)
    }

    async fn available(&self) -> Result<(), String> {
        test_rabbitmq::reachable().await
    }

    async fn setup(&self) -> Result<Env, BoxError> {
        let queues = TestQueues::new("conformance");
        let queue = queues.queue("payments");
        let config = RabbitTargetConfig::from_url(&format!("{}?queue={queue}", test_rabbitmq::url()))?
            .with_connection_name(&format!("{}-publisher", queues.connection_name()));
        let publisher = RabbitPublisher::connect(config).await?;
        queues.track(&parked_queue(&queue));
        let proxy = Proxy::start().await?;
        Ok(Env { queues, queue, proxy, publisher })
    }

    async fn publish(&self, env: &Env, messages: &[Bytes]) -> Result<(), BoxError> {
        let messages: Vec<OutgoingMessage> =
            messages.iter().map(|payload| OutgoingMessage { id: None, payload: payload.clone() }).collect();
        Ok(env.publisher.publish(&messages).await?)
    }

    async fn open(
        &self,
        env: &Env,
        identity: &Identity,
        max_message_bytes: usize,
    ) -> Result<Box<dyn DeliverySource>, BoxError> {
        let config = RabbitSourceConfig::from_url(&format!("{}?queue={}", env.proxy.url(), env.queue))?
            .with_in_flight(IN_FLIGHT)
            .with_max_message_bytes(max_message_bytes)
            .with_connection_name(&format!("{}-{}", env.queues.connection_name(), identity.consumer));
        Ok(Box::new(RabbitSource::connect(config).await?))
    }

    async fn kill_connections(&self, env: &Env) -> Result<(), BoxError> {
        if env.proxy.cut() == 0 {
            return Err(format!("no connection through the proxy of {} to cut", env.queue).into());
        }
        Ok(())
    }

    async fn teardown(&self, env: &Env) -> Result<(), BoxError> {
        env.publisher.close().await?;
        env.queues.remove().await?;
        Ok(())
    }
}

fn main() -> ExitCode {
    payments_conformance::source::main(RabbitHarness)
}
