//! For tests that need a NATS server with JetStream: where it is, whether it answers, stream and
//! subject names of a test's own that it removes afterwards, and a TCP proxy whose connections a
//! test can cut.
//!
//! The server is shared by every test that runs at the same time, so nothing here touches what it
//! did not create: streams are removed by their test's own prefix. The machines' server has no
//! monitoring port (no `connz`, no kick), so a test that must kill a client's connections points
//! the client at a [`TestProxy`] instead, and cuts them there: a network fault, as the client
//! sees it.
//!
//! With the `tls` feature, [`TlsNats`]: a TLS-only server of a test's own, with JetStream.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt as _;

use crate::proxy::TcpProxy;
use crate::{Gate, Test, libtest_mimic};

#[cfg(feature = "tls")]
mod tls_server;
#[cfg(feature = "tls")]
pub use tls_server::{TlsNats, server_binary, tls_available};

/// An error of the helpers.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The environment variable that names the test server.
pub const URL_ENV: &str = "PAYMENTS_TEST_NATS_URL";

/// What every stream a test makes is named after: `<PREFIX><test>_<pid>_<n>`.
pub const STREAM_PREFIX: &str = "PAYMENTS_TEST_";

/// The test server's URL: `$PAYMENTS_TEST_NATS_URL`, or this project's machines' server.
pub fn url() -> String {
    std::env::var(URL_ENV).unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// The test server's `HOST:PORT`, for a [`TestProxy`] in front of it.
pub fn address() -> String {
    let url = url();
    let rest = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    let host_port = rest.split(['/', '?']).next().unwrap_or(rest);
    if host_port.contains(':') && !host_port.ends_with(']') {
        host_port.to_owned()
    } else {
        format!("{host_port}:4222")
    }
}

/// A new client of the test server, for a test's own commands (publishing, inspecting, deleting).
///
/// # Errors
///
/// The client's error.
pub async fn connect() -> Result<async_nats::Client, async_nats::ConnectError> {
    async_nats::ConnectOptions::new()
        .name("payments-test-support")
        .connection_timeout(Duration::from_secs(5))
        .connect(url())
        .await
}

/// A JetStream context on a new client of the test server, whose requests wait up to 10 s.
///
/// # Errors
///
/// The client's error.
pub async fn jetstream() -> Result<jetstream::Context, async_nats::ConnectError> {
    let client = connect().await?;
    Ok(jetstream::ContextBuilder::new().timeout(Duration::from_secs(10)).build(client))
}

/// Checks that the test server answers and has JetStream; says why not, and how to make it, when
/// it does not.
///
/// # Errors
///
/// The reason, with the URL and what to do.
pub async fn reachable() -> Result<(), String> {
    let url = url();
    let answer = async {
        let context = jetstream().await.map_err(|err| err.to_string())?;
        // Only JetStream answers this (`$JS.API.STREAM.NAMES`); a 2.9 server's account info does
        // not parse in this client.
        match context.stream_names().next().await {
            Some(Err(err)) => Err(format!("no JetStream: {err}")),
            Some(Ok(_)) | None => Ok(()),
        }
    };
    match tokio::time::timeout(Duration::from_secs(5), answer).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(why)) => Err(unreachable_reason(&url, &why)),
        Err(_) => Err(unreachable_reason(&url, "no answer within 5 s")),
    }
}

fn unreachable_reason(url: &str, why: &str) -> String {
    format!(
        "no NATS with JetStream at {url} ({why}); start one (`nats-server -js`) or point {URL_ENV} at one"
    )
}

/// Stream and subject names of a test's own, unique in this process and across processes.
#[derive(Clone, Debug)]
pub struct TestStreams {
    prefix: String,
}

impl TestStreams {
    /// New names for the test `test` (nothing is created on the server).
    pub fn new(test: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let test: String = test
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' })
            .collect();
        Self { prefix: format!("{STREAM_PREFIX}{test}_{}_{n}", std::process::id()) }
    }

    /// What every stream name of this test starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A stream name of this test's own: `<prefix>_<NAME>`.
    pub fn stream(&self, name: &str) -> String {
        format!("{}_{}", self.prefix, name.to_ascii_uppercase())
    }

    /// A subject of this test's own: `payments-test.<prefix>.<name>`.
    pub fn subject(&self, name: &str) -> String {
        format!("payments-test.{}.{name}", self.prefix)
    }

    /// Removes every stream of this test (and with them their consumers); returns how many.
    ///
    /// A deletion the server fails (a 2.9 server answers 500, "directory not empty", when a
    /// consumer was created again while its files were being removed) is tried again, for up to
    /// five seconds.
    ///
    /// # Errors
    ///
    /// The client's error, once the deletion keeps failing.
    pub async fn remove(&self) -> Result<usize, BoxError> {
        let context = jetstream().await?;
        let mut removed = 0;
        for name in streams_named(&context, &self.prefix).await? {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match context.delete_stream(&name).await {
                    Ok(_) => break,
                    // Gone already: an attempt that failed had deleted it after all.
                    Err(err)
                        if matches!(err.kind(), jetstream::context::DeleteStreamErrorKind::JetStream(js)
                            if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
                    {
                        break;
                    }
                    Err(_) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                    Err(err) => return Err(format!("cannot delete the stream {name}: {err}").into()),
                }
            }
            removed += 1;
        }
        Ok(removed)
    }
}

/// The streams on the test server whose names start with `prefix`.
async fn streams_named(context: &jetstream::Context, prefix: &str) -> Result<Vec<String>, BoxError> {
    let mut names = context.stream_names();
    let mut found = Vec::new();
    while let Some(name) = names.next().await {
        let name = name?;
        if name.starts_with(prefix) {
            found.push(name);
        }
    }
    Ok(found)
}

/// The streams this process's tests made and did not remove: a test binary checks that there
/// are none when it ends.
///
/// # Errors
///
/// The client's error.
pub async fn leftover_streams() -> Result<Vec<String>, BoxError> {
    let context = jetstream().await?;
    let ours = format!("_{}_", std::process::id());
    Ok(streams_named(&context, STREAM_PREFIX)
        .await?
        .into_iter()
        .filter(|name| name.contains(&ours))
        .collect())
}

/// For the end of a test binary: `Err` naming the streams this process left behind on the test
/// server; `Ok` when there are none, or when the server cannot be asked (its tests were skipped).
///
/// # Errors
///
/// The streams left behind.
pub fn no_streams_left() -> Result<(), String> {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        return Ok(());
    };
    match runtime.block_on(async { tokio::time::timeout(Duration::from_secs(10), leftover_streams()).await })
    {
        Ok(Ok(left)) if !left.is_empty() => {
            Err(format!("streams left behind on the NATS test server: {left:?}"))
        }
        _ => Ok(()),
    }
}

/// A TCP proxy in front of the test server ([`TcpProxy`]): clients connect to
/// [`url`](Self::url), and a test cuts their connections with [`cut`](Self::cut), as a network
/// fault would. Dropping it stops it and closes every connection through it.
#[derive(Debug)]
pub struct TestProxy(TcpProxy);

impl TestProxy {
    /// Starts a proxy to the test server on a free port of 127.0.0.1, in the current runtime.
    ///
    /// # Errors
    ///
    /// When no port can be bound.
    pub async fn start() -> std::io::Result<Self> {
        TcpProxy::start(&address()).await.map(Self)
    }

    /// The test server's URL through the proxy: `nats://127.0.0.1:<port>`, credentials of
    /// [`url`] kept.
    pub fn url(&self) -> String {
        let real = url();
        let (scheme, rest) = real.split_once("://").unwrap_or(("nats", real.as_str()));
        let credentials =
            rest.rsplit_once('@').map_or(String::new(), |(credentials, _)| format!("{credentials}@"));
        format!("{scheme}://{credentials}{}", self.0.address())
    }

    /// Cuts every connection through the proxy and refuses new ones for `outage` (the clients'
    /// reconnection attempts fail meanwhile); returns how many were cut.
    pub fn cut(&self, outage: Duration) -> usize {
        self.0.refuse_for(outage);
        self.0.cut()
    }

    /// How many connections go through the proxy now.
    pub fn connections(&self) -> usize {
        self.0.connections()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_plain() {
        let (a, b) = (TestStreams::new("a test/with.odd*chars"), TestStreams::new("a test/with.odd*chars"));
        assert_ne!(a.prefix(), b.prefix());
        assert!(a.prefix().starts_with("PAYMENTS_TEST_A_TEST_WITH_ODD_CHARS_"), "{}", a.prefix());
        assert!(!a.stream("dlq").contains(['.', ' ', '*', '>']), "{}", a.stream("dlq"));
        assert_eq!(a.subject("in"), format!("payments-test.{}.in", a.prefix()));
    }
}
