//! For tests that need a RabbitMQ server: where it is, whether it answers, queue names of a
//! test's own that it deletes afterwards, and two ways to break connections: closing them by
//! name from the broker's side (`rabbitmqctl close_connection`, as an operator would, about 3 s a
//! call), and cutting them in a TCP proxy inside the test (a network fault, at once).
//!
//! The server is shared by every test that runs at the same time, so nothing here touches what it
//! did not create: queues are deleted by the names the test made, connections are closed by their
//! `connection_name`, one by one, never all at once (`close_all_connections` would break every
//! other test's connections).
//!
//! With the `tls` feature, [`TlsRabbit`]: a TLS-only node of a test's own, beside the shared one.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ::lapin::options::{ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions};
use ::lapin::types::FieldTable;
use ::lapin::uri::AMQPUri;
use ::lapin::{Connection, ConnectionProperties, ErrorKind};

use crate::proxy::TcpProxy;
use crate::servers::BoxError;
use crate::{Gate, Test, libtest_mimic};

#[cfg(feature = "tls")]
mod tls_server;
#[cfg(feature = "tls")]
pub use tls_server::{TlsRabbit, server_binary, tls_available};

/// The environment variable that names the test server.
pub const URL_ENV: &str = "PAYMENTS_TEST_AMQP_URL";

/// The test server's URL: `$PAYMENTS_TEST_AMQP_URL`, or this project's machines' server.
pub fn url() -> String {
    std::env::var(URL_ENV).unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A new connection to the test server, for a test's own work (publishing raw messages,
/// inspecting and deleting queues), named `payments-test-support`.
///
/// # Errors
///
/// lapin's error, or a timeout after 10 s.
pub async fn connect() -> Result<Connection, BoxError> {
    let properties = ConnectionProperties::default().with_connection_name("payments-test-support".into());
    let mut uri: AMQPUri = url().parse().map_err(|err| format!("{URL_ENV} is not an AMQP URL: {err}"))?;
    // lapin's parser reads the host with `Url::domain`, which is `None` for an IP address, and
    // then falls back to "localhost".
    if let Some((host, _)) = upstream_address(&url()).as_deref().and_then(|a| a.rsplit_once(':')) {
        uri.authority.host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    }
    match tokio::time::timeout(Duration::from_secs(10), Connection::connect_uri(uri, properties)).await {
        Ok(connection) => Ok(connection?),
        Err(_) => Err(format!("no answer from {} within 10 s", shown(&url())).into()),
    }
}

/// The URL with its password, if any, replaced by `***`.
fn shown(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Checks that the test server answers; says why not, and how to make it, when it does not.
///
/// # Errors
///
/// The reason, with the URL (its password hidden) and what to do.
pub async fn reachable() -> Result<(), String> {
    let answer = async {
        let connection = connect().await?;
        let _ = connection.close(200, "reachable".into()).await;
        Ok::<_, BoxError>(())
    };
    match tokio::time::timeout(Duration::from_secs(10), answer).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(unreachable_reason(&err.to_string())),
        Err(_) => Err(unreachable_reason("no answer within 10 s")),
    }
}

fn unreachable_reason(why: &str) -> String {
    format!(
        "no RabbitMQ at {} ({why}); start one (`rabbitmq-server`) or point {URL_ENV} at one",
        shown(&url())
    )
}

/// The gate for tests that need the server: run them if it answers; otherwise skip them by name,
/// or, under `CI=true`, fail them.
pub async fn gate() -> Gate {
    Gate::new(reachable().await)
}

/// The tests as libtest trials behind [`gate`]: see [`crate::trials`].
pub fn trials(prefix: &str, tests: Vec<(String, Test)>) -> Vec<libtest_mimic::Trial> {
    let gate = tokio::runtime::Builder::new_current_thread().enable_all().build().map_or_else(
        |err| Gate::Fail(format!("cannot start a runtime to reach the server: {err}")),
        |runtime| runtime.block_on(gate()),
    );
    crate::trials(prefix, &gate, tests)
}

/// Queue and exchange names of a test's own, unique in this process and across processes, a
/// connection name for the connections the test wants to be able to close, and the deletion of
/// everything it named.
#[derive(Clone, Debug)]
pub struct TestQueues {
    prefix: String,
    queues: Arc<Mutex<BTreeSet<String>>>,
    exchanges: Arc<Mutex<BTreeSet<String>>>,
}

impl TestQueues {
    /// New names for the test `test` (nothing is created on the server).
    pub fn new(test: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let test: String =
            test.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
        Self {
            prefix: format!("payments-test-{test}-{}-{n}", std::process::id()),
            queues: Arc::default(),
            exchanges: Arc::default(),
        }
    }

    /// What every name of this test starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A queue name of this test's own, `<prefix>.<name>`, deleted by [`remove`](Self::remove),
    /// with the parking queue the adapter declares beside it (`<queue>.parked`).
    pub fn queue(&self, name: &str) -> String {
        let queue = format!("{}.{name}", self.prefix);
        self.track(&queue);
        self.track(&format!("{queue}.parked"));
        queue
    }

    /// Remembers a queue the code under test makes by itself (a parking queue beside a queue),
    /// so that [`remove`](Self::remove) deletes it too.
    pub fn track(&self, queue: &str) {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner).insert(queue.to_owned());
    }

    /// An exchange name of this test's own, `<prefix>.<name>`, deleted by
    /// [`remove`](Self::remove).
    pub fn exchange(&self, name: &str) -> String {
        let exchange = format!("{}.{name}", self.prefix);
        self.exchanges.lock().unwrap_or_else(PoisonError::into_inner).insert(exchange.clone());
        exchange
    }

    /// A connection name (`connection_name`) of this test's own, for
    /// [`close_connections`](Self::close_connections).
    pub fn connection_name(&self) -> String {
        self.prefix.clone()
    }

    /// Deletes every queue and exchange this test named (a missing one is fine); returns how many
    /// messages the queues still held.
    ///
    /// # Errors
    ///
    /// lapin's error.
    pub async fn remove(&self) -> Result<u64, BoxError> {
        let queues: Vec<String> =
            self.queues.lock().unwrap_or_else(PoisonError::into_inner).iter().cloned().collect();
        let exchanges: Vec<String> =
            self.exchanges.lock().unwrap_or_else(PoisonError::into_inner).iter().cloned().collect();
        let connection = connect().await?;
        let channel = connection.create_channel().await?;
        let mut left = 0;
        for queue in &queues {
            left +=
                u64::from(channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await?);
        }
        for exchange in &exchanges {
            channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await?;
        }
        let _ = connection.close(200, "removed".into()).await;
        Ok(left)
    }

    /// Closes every connection named [`connection_name`](Self::connection_name) from the
    /// broker's side; see [`close_connections`].
    ///
    /// # Errors
    ///
    /// When `rabbitmqctl` cannot be run or fails.
    pub async fn close_connections(&self) -> Result<usize, BoxError> {
        close_connections(&self.connection_name()).await
    }
}

/// How many messages are ready in `queue` (a passive declaration: unacknowledged messages are
/// not counted); `None` when the queue does not exist.
///
/// # Errors
///
/// lapin's error, for anything but a missing queue.
pub async fn ready_messages(queue: &str) -> Result<Option<u32>, BoxError> {
    let connection = connect().await?;
    let channel = connection.create_channel().await?;
    let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
    let answer = channel.queue_declare(queue.into(), passive, FieldTable::default()).await;
    let _ = connection.close(200, "looked".into()).await;
    match answer {
        Ok(queue) => Ok(Some(queue.message_count())),
        Err(err) if matches!(err.kind(), ErrorKind::ProtocolError(amqp) if amqp.get_id() == 404) => Ok(None),
        Err(err) => Err(err.into()),
    }
}

/// Closes every connection whose `connection_name` is exactly `name`, as an operator would
/// (`rabbitmqctl close_connection`, which the client sees as `CONNECTION_FORCED`); returns how
/// many. Each `rabbitmqctl` call starts an Erlang VM: about 3 s.
///
/// # Errors
///
/// When `rabbitmqctl` cannot be run or fails.
pub async fn close_connections(name: &str) -> Result<usize, BoxError> {
    let list = rabbitmqctl(&["list_connections", "-q", "pid", "client_properties"]).await?;
    let mut closed = 0;
    for pid in connection_pids(&list, name) {
        // A connection that went away meanwhile is an error here: nothing to close.
        if rabbitmqctl(&["close_connection", &pid, "closed by a test"]).await.is_ok() {
            closed += 1;
        }
    }
    Ok(closed)
}

async fn rabbitmqctl(args: &[&str]) -> Result<String, BoxError> {
    let output = tokio::process::Command::new("rabbitmqctl")
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|err| format!("cannot run rabbitmqctl: {err}"))?;
    if !output.status.success() {
        return Err(format!(
            "rabbitmqctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The pids of the connections named `name` in `rabbitmqctl list_connections -q pid
/// client_properties` output: `<pid>\t[…,{"connection_name","NAME"},…]` lines.
fn connection_pids(list: &str, name: &str) -> Vec<String> {
    let wanted = format!("{{\"connection_name\",\"{name}\"}}");
    list.lines()
        .filter(|line| line.contains(&wanted))
        .filter_map(|line| line.split('\t').next().map(|pid| pid.trim().to_owned()))
        .filter(|pid| pid.starts_with('<'))
        .collect()
}

/// A TCP proxy in front of the test server ([`TcpProxy`]): clients connect to
/// [`url`](Self::url), and [`cut`](TcpProxy::cut) breaks every connection made through it, as a
/// network fault would; while [`set_down`](TcpProxy::set_down) is on, new connections are
/// refused.
#[derive(Clone, Debug)]
pub struct Proxy(TcpProxy);

impl std::ops::Deref for Proxy {
    type Target = TcpProxy;

    fn deref(&self) -> &TcpProxy {
        &self.0
    }
}

impl Proxy {
    /// Starts a proxy to the test server, on a free port of 127.0.0.1.
    ///
    /// # Errors
    ///
    /// When the test server's URL has no host and port, or no port can be bound.
    pub async fn start() -> Result<Self, BoxError> {
        let upstream = upstream_address(&url()).ok_or("the test server's URL has no host:port")?;
        Ok(Self(TcpProxy::start(&upstream).await?))
    }

    /// The test server's URL with the proxy in the server's place.
    pub fn url(&self) -> String {
        self.0.replace_in(&url())
    }
}

/// `host:port` of an AMQP URL (`amqp://user:pass@host:port/vhost`), port 5672 by default.
fn upstream_address(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    if host_port.is_empty() {
        return None;
    }
    if host_port.contains(':') { Some(host_port.to_owned()) } else { Some(format!("{host_port}:5672")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_found_by_their_exact_name_only() {
        let list = "<rabbit@h.1.1>\t[{\"connection_name\",\"t-1\"},{\"product\",\"lapin\"}]\n\
                    <rabbit@h.1.2>\t[{\"connection_name\",\"t-10\"},{\"product\",\"lapin\"}]\n\
                    <rabbit@h.1.3>\t[{\"product\",\"lapin\"}]\n\
                    <rabbit@h.1.4>\t[{\"platform\",\"rust\"},{\"connection_name\",\"t-1\"}]\n";
        assert_eq!(connection_pids(list, "t-1"), ["<rabbit@h.1.1>", "<rabbit@h.1.4>"]);
        assert!(connection_pids(list, "t").is_empty());
    }

    #[test]
    fn names_are_unique_and_plain() {
        let (a, b) = (TestQueues::new("a test/with:odd*chars"), TestQueues::new("a test/with:odd*chars"));
        assert_ne!(a.prefix(), b.prefix());
        assert!(!a.prefix().contains([' ', '/', ':', '*']), "{}", a.prefix());
        assert_eq!(a.queue("payments"), format!("{}.payments", a.prefix()));
    }

    #[test]
    fn the_upstream_and_the_shown_url_come_from_the_url() {
        assert_eq!(
            upstream_address("amqp://guest:guest@127.0.0.1:5672/%2f").as_deref(),
            Some("127.0.0.1:5672")
        );
        assert_eq!(upstream_address("amqp://rabbit/%2f").as_deref(), Some("rabbit:5672"));
        assert_eq!(shown("amqp://guest:s3cret@127.0.0.1:5672/%2f"), "amqp://guest:***@127.0.0.1:5672/%2f");
        assert_eq!(shown("amqp://127.0.0.1:5672/%2f"), "amqp://127.0.0.1:5672/%2f");
    }
}
