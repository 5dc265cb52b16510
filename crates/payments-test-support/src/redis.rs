//! For tests that need a Redis server: where it is, whether it answers, key names of a test's own
//! that it removes afterwards, and killing the connections of named clients. With the `tls`
//! feature, [`TlsRedis`]: a TLS-only server of a test's own.
//!
//! The server is shared by every test that runs at the same time, so nothing here touches what it
//! did not create: keys are removed by their test's own prefix, and connections are killed by
//! their client name (`CLIENT SETNAME`), one `CLIENT KILL ID` each, never by type.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, RedisError, RedisResult, Value};

use crate::{Gate, Test, libtest_mimic};

#[cfg(feature = "tls")]
mod tls_server;
#[cfg(feature = "tls")]
pub use tls_server::{TlsRedis, tls_available};

/// The environment variable that names the test server.
pub const URL_ENV: &str = "PAYMENTS_TEST_REDIS_URL";

/// The test server's URL: `$PAYMENTS_TEST_REDIS_URL`, or this project's machines' server.
pub fn url() -> String {
    std::env::var(URL_ENV).unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A new connection to the test server, for a test's own commands (publishing, inspecting,
/// breaking things), with a response timeout that no test command comes near.
///
/// # Errors
///
/// The client's error.
pub async fn connect() -> RedisResult<MultiplexedConnection> {
    let client = ::redis::Client::open(url())?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(30)));
    client.get_multiplexed_async_connection_with_config(&config).await
}

/// Checks that the test server answers; says why not, and how to make it, when it does not.
///
/// # Errors
///
/// The reason, with the URL and what to do.
pub async fn reachable() -> Result<(), String> {
    let url = url();
    let answer = async {
        let mut connection = connect().await?;
        ::redis::cmd("PING").query_async::<String>(&mut connection).await
    };
    match tokio::time::timeout(Duration::from_secs(5), answer).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => Err(unreachable_reason(&url, &err.to_string())),
        Err(_) => Err(unreachable_reason(&url, "no answer within 5 s")),
    }
}

fn unreachable_reason(url: &str, why: &str) -> String {
    format!("no Redis at {url} ({why}); start one (`redis-server`) or point {URL_ENV} at one")
}

/// Key names of a test's own, unique in this process and across processes, and a client name
/// for the connections the test wants to be able to kill.
#[derive(Clone, Debug)]
pub struct TestKeys {
    prefix: String,
}

impl TestKeys {
    /// New names for the test `test` (nothing is created on the server).
    pub fn new(test: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let test: String =
            test.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
        Self { prefix: format!("payments-test-{test}-{}-{n}", std::process::id()) }
    }

    /// What every name of this test starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A key of this test's own: `<prefix>:<name>`.
    pub fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    /// A client name (`CLIENT SETNAME`) of this test's own, for [`kill_clients`].
    pub fn client_name(&self) -> String {
        self.prefix.clone()
    }

    /// Removes every key of this test (found with `SCAN MATCH <prefix>:*`); returns how many.
    ///
    /// # Errors
    ///
    /// The client's error.
    pub async fn remove(&self) -> RedisResult<usize> {
        let mut connection = connect().await?;
        let pattern = format!("{}:*", self.prefix);
        let mut cursor = 0u64;
        let mut removed = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = ::redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut connection)
                .await?;
            if !keys.is_empty() {
                removed += ::redis::cmd("DEL").arg(&keys).query_async::<usize>(&mut connection).await?;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }

    /// Kills every connection named [`client_name`](Self::client_name); see [`kill_clients`].
    ///
    /// # Errors
    ///
    /// The client's error.
    pub async fn kill_clients(&self) -> RedisResult<usize> {
        kill_clients(&self.client_name()).await
    }
}

/// Kills every connection whose client name is exactly `name`, one `CLIENT KILL ID` each (Redis
/// 7.0 has no name filter, and `CLIENT KILL TYPE normal` would kill other tests' connections
/// too); returns how many were killed.
///
/// # Errors
///
/// The client's error.
pub async fn kill_clients(name: &str) -> RedisResult<usize> {
    let mut connection = connect().await?;
    let list: String = ::redis::cmd("CLIENT").arg("LIST").query_async(&mut connection).await?;
    let mut killed = 0;
    for id in client_ids(&list, name) {
        // A client that went away meanwhile is an error reply ("No such client"): nothing to kill.
        match ::redis::cmd("CLIENT").arg("KILL").arg("ID").arg(id).query_async::<usize>(&mut connection).await
        {
            Ok(n) => killed += n,
            Err(err) if err.code() == Some("ERR") => {}
            Err(err) => return Err(err),
        }
    }
    Ok(killed)
}

/// The IDs of the clients named `name` in a `CLIENT LIST` reply (`id=7 addr=… name=x …` lines).
fn client_ids(list: &str, name: &str) -> Vec<u64> {
    list.lines()
        .filter_map(|line| {
            let mut id = None;
            let mut named = false;
            for field in line.split(' ') {
                if let Some(value) = field.strip_prefix("id=") {
                    id = value.parse().ok();
                } else if let Some(value) = field.strip_prefix("name=") {
                    named = value == name;
                }
            }
            id.filter(|_| named)
        })
        .collect()
}

/// How many keys the test server's current database holds (`DBSIZE`).
///
/// # Errors
///
/// The client's error.
pub async fn dbsize() -> Result<usize, RedisError> {
    let mut connection = connect().await?;
    ::redis::cmd("DBSIZE").query_async(&mut connection).await
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

/// Fills `stream` with an entry per payload (field `payload`), `batch` to a round trip, and creates
/// the consumer group `group` at its start: for benchmarks, untimed.
///
/// # Errors
///
/// The client's error.
pub async fn fill_stream(
    stream: &str,
    group: &str,
    payloads: impl Iterator<Item = Vec<u8>>,
    batch: usize,
) -> RedisResult<()> {
    let mut connection = connect().await?;
    let payloads: Vec<Vec<u8>> = payloads.collect();
    for chunk in payloads.chunks(batch.max(1)) {
        let mut pipe = ::redis::pipe();
        for body in chunk {
            pipe.cmd("XADD").arg(stream).arg("*").arg("payload").arg(&body[..]).ignore();
        }
        pipe.exec_async(&mut connection).await?;
    }
    ::redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .exec_async(&mut connection)
        .await
}

/// The raw consumer a hand-written program would be, for benchmarks to compare with: `XREADGROUP
/// … COUNT count` on one connection, each payload taken out of the reply, then `XACK` of the
/// batch's IDs on another, one after the other, until `n` entries came; returns entries per second.
///
/// # Errors
///
/// The client's error.
pub async fn raw_consume(stream: &str, group: &str, count: usize, n: usize) -> RedisResult<f64> {
    let client = ::redis::Client::open(url())?;
    let config = ::redis::AsyncConnectionConfig::new().set_response_timeout(None);
    let mut reader = client.get_multiplexed_async_connection_with_config(&config).await?;
    let mut acker = connect().await?;
    let started = std::time::Instant::now();
    let mut consumed = 0;
    while consumed < n {
        let reply: Value = ::redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(group)
            .arg("raw")
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(1000)
            .arg("STREAMS")
            .arg(stream)
            .arg(">")
            .query_async(&mut reader)
            .await?;
        let ids = raw_entries(reply);
        if ids.is_empty() {
            continue;
        }
        consumed += ids.len();
        ::redis::cmd("XACK").arg(stream).arg(group).arg(&ids).exec_async(&mut acker).await?;
    }
    Ok(crate::bench::rate(consumed, started.elapsed()))
}

/// The IDs of an XREADGROUP reply (RESP2), each entry's payload moved out and looked at.
fn raw_entries(reply: Value) -> Vec<String> {
    let Value::Array(streams) = reply else { return Vec::new() };
    let mut ids = Vec::new();
    for stream in streams {
        let Value::Array(mut pair) = stream else { continue };
        let Value::Array(entries) = pair.swap_remove(1) else { continue };
        for entry in entries {
            let Value::Array(mut parts) = entry else { continue };
            if let Value::Array(fields) = parts.swap_remove(1) {
                std::hint::black_box(fields.into_iter().nth(1));
            }
            if let Value::BulkString(id) = parts.swap_remove(0) {
                ids.push(String::from_utf8_lossy(&id).into_owned());
            }
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_found_by_their_exact_name_only() {
        let list = "id=3 addr=127.0.0.1:1 laddr=127.0.0.1:6379 fd=8 name=t-1 age=0\n\
                    id=4 addr=127.0.0.1:2 laddr=127.0.0.1:6379 fd=9 name=t-10 age=0\n\
                    id=5 addr=127.0.0.1:3 laddr=127.0.0.1:6379 fd=10 name= age=0\n\
                    id=6 addr=127.0.0.1:4 laddr=127.0.0.1:6379 fd=11 name=t-1 age=0\n";
        assert_eq!(client_ids(list, "t-1"), [3, 6]);
        assert_eq!(client_ids(list, "t"), Vec::<u64>::new());
    }

    #[test]
    fn names_are_unique_and_plain() {
        let (a, b) = (TestKeys::new("a test/with:odd*chars"), TestKeys::new("a test/with:odd*chars"));
        assert_ne!(a.prefix(), b.prefix());
        assert!(!a.prefix().contains([' ', '/', ':', '*']), "{}", a.prefix());
        assert_eq!(a.key("stream"), format!("{}:stream", a.prefix()));
    }
}
