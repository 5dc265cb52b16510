//! Connecting, and declaring what this crate consumes from and publishes to, the same way from
//! every side: one function says what a queue is ([`declare_queue`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::tcp::{AsyncTcpStream, RustlsConnectorConfig};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties, ExchangeKind};

use crate::config::{CONNECT_TIMEOUT, Endpoint, QUEUE_DELIVERY_LIMIT, TrustedCa, parked_queue};
use crate::errors::{self, PRECONDITION_FAILED};

/// How long one step of setting up (a declaration, opening a channel) may wait for the broker.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `step`, failing with a timed-out I/O error (transient) if the broker does not answer
/// within `within`: a broker under a resource alarm, or a network that drops packets silently,
/// must not hang the caller.
pub(crate) async fn bounded<T>(
    within: Duration,
    what: &str,
    step: impl Future<Output = lapin::Result<T>>,
) -> lapin::Result<T> {
    match tokio::time::timeout(within, step).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{what}: no answer from RabbitMQ within {within:?}"),
        )
        .into()),
    }
}

/// A new connection, named `name` (the `connection_name` client property). No automatic
/// recovery: the caller makes a new connection when this one breaks (see the crate's
/// documentation for why).
///
/// `amqps://` is TLS from the first byte (lapin never falls back to plain text). Without
/// `ssl-ca`, lapin verifies the server against the system's roots. With it, the TLS connector is
/// built here, trusting the `ssl-ca` certificates alone: lapin's own `OwnedTLSConfig::cert_chain`
/// would add them to the system's roots (tcp-stream loads the native certificates, then
/// `add_parsable_certificates`), and so trust every public CA too.
pub(crate) async fn connect(endpoint: &Endpoint, name: &str) -> lapin::Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let connecting = async {
        match endpoint.trusted_ca() {
            None => Connection::connect_uri(endpoint.uri(), properties).await,
            Some(ca) => connect_trusting_only(endpoint.uri(), ca, properties).await,
        }
    };
    bounded(CONNECT_TIMEOUT, "connect", connecting).await
}

/// Connects to `uri` (`amqps://`) over TLS whose only roots are `ca`'s certificates: a TCP
/// connection to the host's addresses, one after the other, then the handshake, verifying that
/// the server's certificate chains to `ca` and names the URL's host.
async fn connect_trusting_only(
    uri: AMQPUri,
    ca: &TrustedCa,
    properties: ConnectionProperties,
) -> lapin::Result<Connection> {
    // No system roots: `RustlsConnectorConfig::default()` starts with an empty store.
    let connector = RustlsConnectorConfig::default()
        .with_parsable_certificates(ca.certificates.to_vec())
        .connector_with_no_client_auth()?;
    let runtime = lapin::runtime::default_runtime()?;
    Connection::connector(
        uri,
        runtime,
        async move |uri: AMQPUri, runtime| {
            let host = uri.authority.host.as_str();
            let addresses: Vec<SocketAddr> =
                tokio::net::lookup_host((host, uri.authority.port)).await?.collect();
            let stream = AsyncTcpStream::connect(&runtime, addresses).await?;
            Ok(stream.into_rustls(&connector, host).await?)
        },
        properties,
    )
    .await
}

/// How a queue was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Declared {
    /// Declared as this crate declares queues: created, or found the same.
    AsAsked,
    /// It existed with other arguments (a classic queue, another delivery limit, declared by
    /// an operator): used as it is.
    Existing,
}

/// What every queue of this crate is: durable, a quorum queue, with a delivery limit
/// ([`QUEUE_DELIVERY_LIMIT`]) past which RabbitMQ dead-letters a message to `<queue>.parked`
/// (at least once) rather than dropping it, and publishers refused rather than old messages
/// dropped if an operator ever caps its length.
fn queue_arguments(queue: &str) -> FieldTable {
    let mut arguments = quorum();
    arguments.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(i64::from(QUEUE_DELIVERY_LIMIT)));
    arguments.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(LongString::from("")));
    arguments.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(LongString::from(parked_queue(queue).as_str())),
    );
    arguments.insert("x-dead-letter-strategy".into(), AMQPValue::LongString("at-least-once".into()));
    arguments.insert("x-overflow".into(), AMQPValue::LongString("reject-publish".into()));
    arguments
}

/// A durable quorum queue, nothing more: the parking queue.
fn quorum() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    arguments
}

/// Declares `queue` and its parking queue, each on a channel of its own that is closed
/// afterwards: a refused declaration closes its channel, which must not be one that consumes or
/// publishes. Declaring again is harmless: the same arguments are accepted.
///
/// A queue that exists with other arguments is used as it is, with a warning.
pub(crate) async fn declare_queue(connection: &Connection, queue: &str) -> lapin::Result<Declared> {
    // The parking queue first, so that RabbitMQ never dead-letters to a queue that is missing
    // (a message dead-lettered to nowhere is dropped).
    declare_one(connection, &parked_queue(queue), quorum()).await?;
    declare_one(connection, queue, queue_arguments(queue)).await
}

async fn declare_one(connection: &Connection, queue: &str, arguments: FieldTable) -> lapin::Result<Declared> {
    let options = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    let channel = bounded(STEP_TIMEOUT, "open a channel", connection.create_channel()).await?;
    let declared =
        bounded(STEP_TIMEOUT, "declare the queue", channel.queue_declare(queue.into(), options, arguments))
            .await;
    match declared {
        Ok(_) => {
            close_quietly(&channel).await;
            Ok(Declared::AsAsked)
        }
        Err(err) if errors::reply_code(&err) == Some(PRECONDITION_FAILED) => {
            // The broker closed that channel; a passive declaration on another says whether the
            // queue is there at all.
            let channel = bounded(STEP_TIMEOUT, "open a channel", connection.create_channel()).await?;
            let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
            bounded(
                STEP_TIMEOUT,
                "look the queue up",
                channel.queue_declare(queue.into(), passive, FieldTable::default()),
            )
            .await?;
            close_quietly(&channel).await;
            tracing::warn!(
                queue,
                reason = %err,
                "the queue exists with other arguments and is used as it is: its delivery limit and dead-lettering are its own, and unless it is a quorum queue attempts are counted only as first or later"
            );
            Ok(Declared::Existing)
        }
        Err(err) => Err(err),
    }
}

/// How many messages are ready in `queue` (not delivered to any consumer): a passive declaration
/// on a channel of its own. AMQP does not tell the unacknowledged count; the management API does.
pub(crate) async fn ready_count(connection: &Connection, queue: &str) -> lapin::Result<u32> {
    let channel = bounded(STEP_TIMEOUT, "open a channel", connection.create_channel()).await?;
    let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
    let found = bounded(
        STEP_TIMEOUT,
        "look the queue up",
        channel.queue_declare(queue.into(), passive, FieldTable::default()),
    )
    .await;
    close_quietly(&channel).await;
    Ok(found?.message_count())
}

/// Checks that `exchange` exists (a passive declaration), and binds `queue` to it with
/// `routing_key` when there is a queue.
pub(crate) async fn check_exchange(
    connection: &Connection,
    exchange: &str,
    queue: Option<&str>,
    routing_key: &str,
) -> lapin::Result<()> {
    let channel = bounded(STEP_TIMEOUT, "open a channel", connection.create_channel()).await?;
    let passive = ExchangeDeclareOptions { passive: true, ..ExchangeDeclareOptions::default() };
    bounded(
        STEP_TIMEOUT,
        "look the exchange up",
        channel.exchange_declare(exchange.into(), ExchangeKind::Direct, passive, FieldTable::default()),
    )
    .await?;
    if let Some(queue) = queue {
        bounded(
            STEP_TIMEOUT,
            "bind the queue",
            channel.queue_bind(
                queue.into(),
                exchange.into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
    }
    close_quietly(&channel).await;
    Ok(())
}

/// Closes a channel that served its purpose; a failure only means it is closed already.
pub(crate) async fn close_quietly(channel: &lapin::Channel) {
    let _ = tokio::time::timeout(STEP_TIMEOUT, channel.close(200, "done".into())).await;
}
