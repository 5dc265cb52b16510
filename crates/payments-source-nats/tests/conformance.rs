//! The NATS JetStream source against the source suite, every capability declared.
//! Needs a server with JetStream: `PAYMENTS_TEST_NATS_URL`, default nats://127.0.0.1:4222.
//!
//! Each case gets a stream of its own and a TCP proxy in front of the server: its sources connect
//! through the proxy, so that `kill_connections` can cut them; the publisher connects directly.
//! A group is a durable consumer; the identity's consumer name means nothing to JetStream (the
//! readers of a durable consumer are anonymous), so two sources of one identity are simply two
//! readers of the same durable consumer.

// The binary reports streams it could not remove on stderr.
#![allow(clippy::print_stderr)]

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use payments_conformance::BoxError;
use payments_conformance::source::{Identity, SourceCapabilities, SourceHarness};
use payments_ports::{DeliverySource, OutgoingMessage, Publisher};
use payments_source_nats::{NatsPublisher, NatsSource, NatsSourceConfig, NatsStreamConfig};
use payments_test_support::nats::{self as test_nats, TestProxy, TestStreams};

/// The `ack_wait` the sources are opened with: short, so that the cases that wait for a
/// redelivery are quick; long enough that a busy machine renews in time.
const ACK_WAIT: Duration = Duration::from_secs(1);
/// The in-flight bound the sources are opened with (the consumer's `max_ack_pending`).
const IN_FLIGHT: usize = 8;
/// How long the proxy refuses new connections after a cut.
const OUTAGE: Duration = Duration::from_millis(300);

struct NatsHarness;

/// One case's stream, and the proxy its sources connect through.
struct Env {
    streams: TestStreams,
    stream: String,
    subject: String,
    publisher: NatsPublisher,
    proxy: TestProxy,
}

#[async_trait::async_trait]
impl SourceHarness for NatsHarness {
    type Env = Env;

    fn adapter(&self) -> &'static str {
        "nats"
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

    /// A message held by a crashed or silent reader is due again `ACK_WAIT` after its delivery
    /// (the server checks its pending deliveries on a timer of its own); a dropped receipt comes
    /// back sooner, with a negative acknowledgement.
    fn redelivery_timeout(&self) -> Duration {
        ACK_WAIT + Duration::from_millis(500)
    }

    async fn available(&self) -> Result<(), String> {
        test_nats::reachable().await
    }

    async fn setup(&self) -> Result<Env, BoxError> {
        let streams = TestStreams::new("conformance");
        let (stream, subject) = (streams.stream("in"), streams.subject("in"));
        let config =
            NatsStreamConfig::from_url(&format!("{}?stream={stream}&subject={subject}", test_nats::url()))?;
        let publisher = NatsPublisher::connect(config).await?;
        let proxy = TestProxy::start().await?;
        Ok(Env { streams, stream, subject, publisher, proxy })
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
            "{}?stream={}&subject={}&consumer={}&ack-wait-ms={}",
            env.proxy.url(),
            env.stream,
            env.subject,
            identity.group,
            ACK_WAIT.as_millis()
        );
        let config = NatsSourceConfig::from_url(&url)?
            .with_in_flight(IN_FLIGHT)
            .with_max_message_bytes(max_message_bytes);
        Ok(Box::new(NatsSource::connect(config).await?))
    }

    async fn kill_connections(&self, env: &Env) -> Result<(), BoxError> {
        if env.proxy.cut(OUTAGE) == 0 {
            return Err("no connection through the proxy to cut".into());
        }
        Ok(())
    }

    async fn teardown(&self, env: &Env) -> Result<(), BoxError> {
        env.publisher.close().await?;
        env.streams.remove().await?;
        Ok(())
    }
}

fn main() -> ExitCode {
    let code = payments_conformance::source::main(NatsHarness);
    if let Err(left) = test_nats::no_streams_left() {
        eprintln!("{left}");
        return ExitCode::FAILURE;
    }
    code
}
