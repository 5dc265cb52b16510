//! For tests that need a PostgreSQL server: where it is, whether it answers, and a schema of
//! their own that they remove afterwards. With the `tls` feature, [`TestCluster`]: a server of a
//! test's own, with or without TLS.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio_postgres::NoTls;

use crate::{Gate, Test, libtest_mimic};

#[cfg(feature = "tls")]
mod cluster;
#[cfg(feature = "tls")]
pub use cluster::{BIN_ENV, TestCluster, available as cluster_available, bin_dir};

/// The environment variable that names the test server.
pub const URL_ENV: &str = "PAYMENTS_TEST_POSTGRES_URL";

/// The test server's URL: `$PAYMENTS_TEST_POSTGRES_URL`, or this project's machines' server.
pub fn url() -> String {
    std::env::var(URL_ENV).unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Checks that the test server answers; says why not, and how to make it, when it does not.
///
/// # Errors
///
/// The reason, with the URL and what to do.
pub async fn reachable() -> Result<(), String> {
    let url = url();
    let answer = async {
        let (client, connection) = tokio_postgres::connect(&url, NoTls).await?;
        let driver = tokio::spawn(connection);
        client.simple_query("SELECT 1").await?;
        drop(client);
        let _ = driver.await;
        Ok::<_, tokio_postgres::Error>(())
    };
    match tokio::time::timeout(Duration::from_secs(5), answer).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(unreachable_reason(&url, &err.to_string())),
        Err(_) => Err(unreachable_reason(&url, "no answer within 5 s")),
    }
}

fn unreachable_reason(url: &str, why: &str) -> String {
    format!(
        "no PostgreSQL at {url} ({why}); start one (see README, \"PostgreSQL\") or point {URL_ENV} at one"
    )
}

/// A schema of a test's own, unique in this process and across processes.
#[derive(Clone, Debug)]
pub struct TestSchema {
    name: String,
}

impl TestSchema {
    /// A new schema name (nothing is created until a store connects).
    pub fn new(prefix: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Self { name: format!("{prefix}_{}_{n}", std::process::id()) }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The test server's URL, pointed at this schema.
    pub fn url(&self) -> String {
        let base = url();
        let separator = if base.contains('?') { '&' } else { '?' };
        format!("{base}{separator}schema={}", self.name)
    }

    /// Runs `sql` on the test server (for tests that break things on purpose).
    ///
    /// # Errors
    ///
    /// The driver's error.
    pub async fn execute(&self, sql: &str) -> Result<(), tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::connect(&url(), NoTls).await?;
        let driver = tokio::spawn(connection);
        let result = client.batch_execute(sql).await;
        drop(client);
        let _ = driver.await;
        result
    }

    /// Locks the schema's `payments` table (ACCESS EXCLUSIVE) from a session of its own until
    /// released: saves that arrive meanwhile wait on it, mid-statement.
    ///
    /// # Errors
    ///
    /// The driver's error (for example, before any store has created the table).
    pub async fn lock_payments(&self) -> Result<TableLock, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::connect(&url(), NoTls).await?;
        let driver = tokio::spawn(connection);
        let lock = format!("BEGIN; LOCK TABLE \"{}\".payments IN ACCESS EXCLUSIVE MODE", self.name);
        match client.batch_execute(&lock).await {
            Ok(()) => Ok(TableLock { client, driver }),
            Err(err) => {
                drop(client);
                let _ = driver.await;
                Err(err)
            }
        }
    }

    /// Removes the schema and everything in it.
    ///
    /// # Errors
    ///
    /// The driver's error.
    pub async fn drop_schema(&self) -> Result<(), tokio_postgres::Error> {
        self.execute(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name)).await
    }
}

/// A lock held on a test schema's `payments` table; see [`TestSchema::lock_payments`].
#[derive(Debug)]
pub struct TableLock {
    client: tokio_postgres::Client,
    driver: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
}

impl TableLock {
    /// Releases the lock and closes its session.
    ///
    /// # Errors
    ///
    /// The driver's error.
    pub async fn release(self) -> Result<(), tokio_postgres::Error> {
        let result = self.client.batch_execute("ROLLBACK").await;
        drop(self.client);
        let _ = self.driver.await;
        result
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
