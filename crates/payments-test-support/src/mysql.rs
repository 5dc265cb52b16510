//! For tests that need a MySQL or MariaDB server: where it is, whether it answers, and a database
//! of their own that they drop afterwards. With the `tls` feature, [`TestServer`]: a MariaDB of a
//! test's own, with or without TLS.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts};

use crate::{Gate, Test, libtest_mimic};

#[cfg(feature = "tls")]
mod server;
#[cfg(feature = "tls")]
pub use server::{TestServer, available as server_available};

/// An error of the test helpers.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The environment variable that names the test server.
pub const URL_ENV: &str = "PAYMENTS_TEST_MYSQL_URL";

/// The test server's URL: `$PAYMENTS_TEST_MYSQL_URL`, or this project's machines' server. Its
/// database is where test databases are created from; it must exist.
pub fn url() -> String {
    std::env::var(URL_ENV).unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned())
}

/// The test server's URL with its password hidden, for messages.
fn shown_url() -> String {
    let url = url();
    match url::Url::parse(&url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.into()
        }
        Ok(_) => url,
        Err(_) => format!("${URL_ENV} (not a URL)"),
    }
}

/// A connection to the test server's own database, with the driver's defaults.
async fn admin() -> Result<Conn, BoxError> {
    Ok(Conn::new(Opts::from_url(&url())?).await?)
}

/// Checks that the test server answers; says why not, and how to make it, when it does not.
///
/// # Errors
///
/// The reason, with the URL (without its password) and what to do.
pub async fn reachable() -> Result<(), String> {
    let answer = async {
        let mut conn = admin().await?;
        conn.query_drop("SELECT 1").await?;
        conn.disconnect().await?;
        Ok::<_, BoxError>(())
    };
    let why = match tokio::time::timeout(Duration::from_secs(5), answer).await {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(err)) => err.to_string(),
        Err(_) => "no answer within 5 s".to_owned(),
    };
    Err(format!(
        "no MySQL at {} ({why}); start one (`apt install mariadb-server`, or a mysql:8 container) or point {URL_ENV} at one",
        shown_url()
    ))
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

/// A database of a test's own, unique in this process and across processes:
/// `<prefix>_<pid>_<n>`.
#[derive(Clone, Debug)]
pub struct TestDatabase {
    name: String,
}

impl TestDatabase {
    /// Creates a new, empty database on the test server.
    ///
    /// # Errors
    ///
    /// When `prefix` is not made of lowercase letters, digits and underscores, or the server refuses.
    pub async fn create(prefix: &str) -> Result<Self, BoxError> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        if prefix.is_empty()
            || !prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(format!(
                "test database prefix {prefix:?}: use lowercase letters, digits and underscores"
            )
            .into());
        }
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let database = Self { name: format!("{prefix}_{}_{n}", std::process::id()) };
        let mut conn = admin().await?;
        conn.query_drop(format!("CREATE DATABASE {}", database.quoted())).await?;
        conn.disconnect().await?;
        Ok(database)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its name quoted for SQL (checked in [`create`](Self::create): no backtick can occur).
    fn quoted(&self) -> String {
        format!("`{}`", self.name)
    }

    /// The test server's URL, pointed at this database.
    ///
    /// # Panics
    ///
    /// When `$PAYMENTS_TEST_MYSQL_URL` is not a URL (then no database could have been created).
    pub fn url(&self) -> String {
        let mut url = url::Url::parse(&url()).unwrap_or_else(|err| panic!("${URL_ENV} is not a URL: {err}"));
        url.set_path(&format!("/{}", self.name));
        url.into()
    }

    /// A connection of its own to this database, with the driver's defaults (not a store's
    /// session settings): for tests that hold locks, look around, or break things on purpose.
    ///
    /// # Errors
    ///
    /// The driver's error.
    pub async fn session(&self) -> Result<Conn, BoxError> {
        Ok(Conn::new(Opts::from_url(&self.url())?).await?)
    }

    /// Runs `sql` on a connection of its own to this database.
    ///
    /// # Errors
    ///
    /// The driver's error.
    pub async fn execute(&self, sql: &str) -> Result<(), BoxError> {
        let mut conn = self.session().await?;
        let result = conn.query_drop(sql).await;
        conn.disconnect().await?;
        Ok(result?)
    }

    /// Locks this database's `payments` table (`LOCK TABLES … WRITE`) from a session of its own
    /// until released: a store's statements that arrive meanwhile wait on it, mid-statement.
    ///
    /// # Errors
    ///
    /// The driver's error (for example, before any store has created the table).
    pub async fn lock_payments(&self) -> Result<TableLock, BoxError> {
        let mut conn = self.session().await?;
        conn.query_drop("LOCK TABLES payments WRITE").await?;
        Ok(TableLock { conn })
    }

    /// Kills every session on this database but `spared` (`KILL CONNECTION`), as an
    /// administrator or a failover would; returns how many it killed.
    ///
    /// # Errors
    ///
    /// The driver's error.
    pub async fn kill_sessions_except(&self, spared: u32) -> Result<usize, BoxError> {
        let mut conn = admin().await?;
        let sessions: Vec<u64> = conn
            .exec(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = ? AND ID <> ? AND ID <> CONNECTION_ID()",
                (self.name.as_str(), spared),
            )
            .await?;
        let mut killed = 0;
        for id in sessions {
            // It may have ended on its own meanwhile.
            if conn.query_drop(format!("KILL CONNECTION {id}")).await.is_ok() {
                killed += 1;
            }
        }
        conn.disconnect().await?;
        Ok(killed)
    }

    /// Removes the database and everything in it, ending the sessions still connected to it.
    ///
    /// # Errors
    ///
    /// The driver's error.
    pub async fn drop_database(&self) -> Result<(), BoxError> {
        let mut conn = admin().await?;
        let result = async {
            // A test that failed may have left a session holding a lock on the database (a
            // `LOCK TABLES`, an open transaction), on which the drop would wait: end them first,
            // and never wait for a lock past a minute.
            conn.query_drop("SET SESSION lock_wait_timeout = 60").await?;
            let sessions: Vec<u64> = conn
                .exec("SELECT ID FROM information_schema.PROCESSLIST WHERE DB = ?", (self.name.as_str(),))
                .await?;
            for id in sessions {
                // It may have ended on its own meanwhile.
                let _ = conn.query_drop(format!("KILL CONNECTION {id}")).await;
            }
            conn.query_drop(format!("DROP DATABASE IF EXISTS {}", self.quoted())).await
        }
        .await;
        conn.disconnect().await?;
        Ok(result?)
    }
}

/// A lock held on a test database's `payments` table; see [`TestDatabase::lock_payments`].
#[derive(Debug)]
pub struct TableLock {
    conn: Conn,
}

impl TableLock {
    /// The server's ID of the session holding the lock, to tell it from a store's sessions.
    pub fn connection_id(&self) -> u32 {
        self.conn.id()
    }

    /// Releases the lock and closes its session.
    ///
    /// # Errors
    ///
    /// The driver's error.
    pub async fn release(mut self) -> Result<(), BoxError> {
        let result = self.conn.query_drop("UNLOCK TABLES").await;
        self.conn.disconnect().await?;
        Ok(result?)
    }
}
