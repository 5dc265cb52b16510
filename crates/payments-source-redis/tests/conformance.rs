//! The Redis Streams source against the source suite, every capability declared.
//! Needs a server: `PAYMENTS_TEST_REDIS_URL`, default redis://127.0.0.1:6379.

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use payments_conformance::BoxError;
use payments_conformance::source::{Identity, SourceCapabilities, SourceHarness};
use payments_ports::{DeliverySource, OutgoingMessage, Publisher};
use payments_source_redis::{RedisPublisher, RedisSource, RedisSourceConfig, RedisStreamConfig};
use payments_test_support::redis::{self as test_redis, TestKeys};

/// The claim timeout the sources are opened with: short, so that the cases that wait for a
/// takeover are quick, long enough that a busy machine does not take over what is renewed.
const CLAIM_IDLE: Duration = Duration::from_millis(500);
/// The in-flight bound the sources are opened with.
const IN_FLIGHT: usize = 8;

struct RedisHarness;

/// One case's stream: a key of its own, and a client name for its sources' connections.
struct Env {
    keys: TestKeys,
    stream: String,
    publisher: RedisPublisher,
}

#[async_trait::async_trait]
impl SourceHarness for RedisHarness {
    type Env = Env;

    fn adapter(&self) -> &'static str {
        "redis"
    }

    fn capabilities(&self) -> SourceCapabilities {
        SourceCapabilities {
            binary_safe: true,
            redelivers_dropped: true,
            exact_attempts: true,
            groups: true,
            resumes: true,
            in_flight_bound: Some(IN_FLIGHT),
            leases: true,
            kill_connections: true,
        }
    }

    /// An entry held by a crashed consumer becomes claimable after `CLAIM_IDLE`, and the takeover
    /// passes run every `CLAIM_IDLE / 2`; a dropped receipt comes back sooner.
    fn redelivery_timeout(&self) -> Duration {
        CLAIM_IDLE * 3 / 2 + Duration::from_millis(250)
    }

    async fn available(&self) -> Result<(), String> {
        test_redis::reachable().await
    }

    async fn setup(&self) -> Result<Env, BoxError> {
        let keys = TestKeys::new("conformance");
        let stream = keys.key("stream");
        let config = RedisStreamConfig::from_url(&format!("{}?stream={stream}", test_redis::url()))?;
        let publisher = RedisPublisher::connect(config).await?;
        Ok(Env { keys, stream, publisher })
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
        let url = format!(
            "{}?stream={}&group={}&consumer={}&claim-idle-ms={}",
            test_redis::url(),
            env.stream,
            identity.group,
            identity.consumer,
            CLAIM_IDLE.as_millis()
        );
        let config = RedisSourceConfig::from_url(&url)?
            .with_in_flight(IN_FLIGHT)
            .with_max_message_bytes(max_message_bytes)
            .with_client_name(&env.keys.client_name());
        Ok(Box::new(RedisSource::connect(config).await?))
    }

    async fn kill_connections(&self, env: &Env) -> Result<(), BoxError> {
        let killed = env.keys.kill_clients().await?;
        if killed == 0 {
            return Err(format!("no connection named {} to kill", env.keys.client_name()).into());
        }
        Ok(())
    }

    async fn teardown(&self, env: &Env) -> Result<(), BoxError> {
        env.keys.remove().await?;
        Ok(())
    }
}

fn main() -> ExitCode {
    payments_conformance::source::main(RedisHarness)
}
