//! Connecting: one NATS client per source, sink or publisher, which reconnects by itself for as
//! long as it lives; the JetStream context on it; and the stream, created if missing.
//!
//! Which errors are worth retrying lives here too: the line between `Unavailable` and `Failed`.
//! A TLS refusal (a server certificate that does not chain to a trusted root or does not name the
//! host, a handshake answered in plain text) is `Failed`: the next attempt would meet the same
//! certificate.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::{Client, ConnectErrorKind, Event};

use payments_ports::BoxError;

use crate::config::Endpoint;

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest pause between two reconnection attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);

/// Connects to `endpoint`, naming the connection `name` (the server's `connz` shows it).
///
/// The first connection must succeed here; after that the client reconnects by itself, without
/// end, at once and then at most every [`MAX_RECONNECT_DELAY`]. Publishes and acknowledgements
/// made while it is away wait in its buffer and go out on the new connection.
pub(crate) async fn connect(endpoint: &Endpoint, name: &str) -> Result<Client, async_nats::ConnectError> {
    let shown = endpoint.to_string();
    endpoint
        .options()
        .name(name)
        .connection_timeout(CONNECT_TIMEOUT)
        .max_reconnects(None)
        .reconnect_delay_callback(reconnect_delay)
        .event_callback(move |event| {
            let shown = shown.clone();
            async move {
                match event {
                    Event::Connected => tracing::debug!(server = %shown, "connected to NATS"),
                    Event::Disconnected => tracing::warn!(server = %shown, "lost the NATS connection; reconnecting"),
                    Event::SlowConsumer(sid) => tracing::warn!(server = %shown, sid, "NATS slow consumer: messages were dropped in the client (they come again after ack_wait)"),
                    other => tracing::debug!(server = %shown, event = %other, "NATS event"),
                }
            }
        })
        .connect(endpoint.address())
        .await
}

/// The pause before reconnection attempt `attempts`: none for the first, then doubling from 50 ms
/// up to [`MAX_RECONNECT_DELAY`].
fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let doublings = u32::try_from(attempts - 2).unwrap_or(u32::MAX).min(8);
    (Duration::from_millis(50) * 2u32.pow(doublings)).min(MAX_RECONNECT_DELAY)
}

/// The JetStream context on `client`, whose requests (and publish acknowledgements) wait at most
/// `timeout`.
pub(crate) fn jetstream(client: Client, timeout: Duration) -> jetstream::Context {
    jetstream::ContextBuilder::new().timeout(timeout).backpressure_on_inflight(true).build(client)
}

/// The stream `name` with `subject` as its only subject, created if missing. An existing stream
/// is taken as it is, whatever its settings (its subjects must cover `subject`).
pub(crate) async fn ensure_stream(
    context: &jetstream::Context,
    name: &str,
    subject: &str,
) -> Result<stream::Stream, jetstream::context::CreateStreamError> {
    context
        .get_or_create_stream(stream::Config {
            name: name.to_owned(),
            subjects: vec![subject.to_owned()],
            ..Default::default()
        })
        .await
}

/// Whether a failed connection attempt may work later (a server down or slow), rather than never
/// (bad credentials, a TLS setup the server refuses, an address that does not parse).
///
/// async-nats reports a failed TLS handshake (a refused certificate included) as an I/O error:
/// it is told apart by the rustls error inside.
pub(crate) fn connect_is_transient(err: &async_nats::ConnectError) -> bool {
    tls_refusal(err).is_none()
        && matches!(err.kind(), ConnectErrorKind::TimedOut | ConnectErrorKind::Io | ConnectErrorKind::Dns)
}

/// A failed connection, for its caller's error: `err` itself, or, when TLS refused the server,
/// `err` behind what that means for the person reading it.
pub(crate) fn connect_error(err: async_nats::ConnectError) -> BoxError {
    match tls_refusal(&err) {
        Some(meaning) => Box::new(TlsRefused { meaning, source: err }),
        None => Box::new(err),
    }
}

/// TLS refused the server: what that means, then the client's own error.
#[derive(Debug, thiserror::Error)]
#[error("{meaning}")]
struct TlsRefused {
    meaning: &'static str,
    #[source]
    source: async_nats::ConnectError,
}

/// What a TLS refusal means, for the person reading the error: `None` when `err` is not one.
fn tls_refusal(err: &async_nats::ConnectError) -> Option<&'static str> {
    payments_tls::refusal(err).map(|refusal| refusal.explain(payments_tls::Roots::SslCa))
}

/// Whether a stream could not be made for a reason that may clear (no answer, JetStream not
/// ready), rather than for good (a name in use with other subjects, subjects overlapping another
/// stream's).
pub(crate) fn create_stream_is_transient(err: &jetstream::context::CreateStreamError) -> bool {
    use jetstream::context::CreateStreamErrorKind as Kind;
    match err.kind() {
        Kind::TimedOut | Kind::JetStreamUnavailable | Kind::Response => true,
        // The server failed for now (a 5xx status), rather than refused.
        Kind::JetStream(js) => js.code() >= 500,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnections_start_at_once_and_back_off_to_a_bound() {
        let delays: Vec<u64> =
            [1, 2, 3, 4, 7, 100].into_iter().map(|n| reconnect_delay(n).as_millis() as u64).collect();
        assert_eq!(delays, [0, 50, 100, 200, 1600, 2000]);
    }
}
