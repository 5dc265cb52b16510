//! A [`PaymentsRepository`] on MySQL or MariaDB: one store that many consumer instances share.
//!
//! - **One atomic statement per save.** `INSERT … ON DUPLICATE KEY UPDATE payment_id =
//!   payment_id` records a payment unless its ID is present, and its affected rows say which
//!   (1 inserted, 0 present and unchanged); when it was present, the stored row is read back and
//!   the domain rule decides duplicate or conflict. A row is never updated. Not `INSERT IGNORE`,
//!   which would turn a truncation or a failed CHECK into a warning along with the duplicate.
//! - **Group commit for the database.** Saves that arrive while earlier ones are in flight are
//!   batched into one multi-row statement, so 64 concurrent savers cost a handful of round trips
//!   and commits instead of 64; a per-batch token tells which rows a batch inserted (batch.rs).
//! - **Strict sessions.** Every connection sets a strict `sql_mode`, so that a value the schema
//!   cannot hold is an error, never a silent truncation, whatever the server's default.
//! - **A versioned schema** in the URL's database, created on connect by embedded migrations
//!   under a named lock (`GET_LOCK`), so that instances starting at the same moment take turns.
//!   A schema newer than the build is refused.
//! - **Errors mapped for the consumer**: a deadlock, a lock wait timeout, a lost, refused or
//!   killed connection, too many connections, a server shutting down, a call past its timeout
//!   are [`RepositoryError::Unavailable`] (retried); anything else is [`RepositoryError::Failed`],
//!   with the server's error as its source. A certificate that TLS refuses, or a server without
//!   TLS when `ssl-mode` requires it, is a failure too: no retry changes it.
//! - **TLS as MySQL's client reads it**: `ssl-mode` (`DISABLED`, `PREFERRED` by default,
//!   `REQUIRED`, `VERIFY_IDENTITY`) and `ssl-ca`, on rustls with the system's roots; see
//!   [`SslMode`] and the `tls` module for what each mode checks, and why `VERIFY_CA` is refused.
//!
//! The URL is `mysql://USER[:PASS]@HOST:PORT/DB` ([`MysqlConfig::from_url`] lists the
//! parameters); the database must exist. The driver is mysql_async; see
//! docs/adr/0003-mysql-driver.md. Needs MySQL 8.0.16 or MariaDB 10.2 or later, for enforced
//! CHECK constraints.

mod batch;
mod config;
mod errors;
mod migrate;
mod rows;
mod sql;
#[cfg(feature = "testing")]
pub mod testing;
mod tls;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, DriverError, Opts, OptsBuilder, Pool, Row, Value};
use payments_ports::domain::{Payment, PaymentId, SaveOutcome};
use payments_ports::{PaymentsRepository, RepositoryError};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use crate::config::{ConfigError, DatabaseName, MysqlConfig};
pub use crate::migrate::SCHEMA_VERSION;
pub use crate::tls::SslMode;

/// What saves, reads and the batcher share.
struct Inner {
    pool: Pool,
    database: DatabaseName,
    call_timeout: Duration,
    connect_timeout: Duration,
    max_batch: usize,
}

/// Why no connection could be had.
enum NoConnection {
    /// Not within the connect timeout: the message says so.
    TimedOut(String),
    /// The driver's error: refused, reset, access denied, the pool closed.
    Driver(mysql_async::Error),
}

impl NoConnection {
    fn into_error(self, action: &str) -> RepositoryError {
        match self {
            Self::TimedOut(message) => RepositoryError::unavailable(message),
            Self::Driver(err) if errors::server_code(&err) == Some(1049) => RepositoryError::failed_because(
                "the database in the MySQL URL does not exist; create it first (CREATE DATABASE)",
                err,
            ),
            Self::Driver(err) => errors::query(action, err),
        }
    }
}

impl Inner {
    /// A connection from the pool, connecting one if need be, within the connect timeout.
    async fn conn(&self) -> Result<Conn, NoConnection> {
        let timeout = self.connect_timeout;
        match tokio::time::timeout(timeout, self.pool.get_conn()).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(err)) => Err(NoConnection::Driver(err)),
            Err(_) => Err(NoConnection::TimedOut(format!(
                "no MySQL connection to database {} within {timeout:?}",
                self.database
            ))),
        }
    }
}

/// Payments in a MySQL or MariaDB table, shared by every instance that connects to it.
///
/// Close it with [`close`](Self::close), which finishes the saves already queued and closes the
/// connections; dropping it does the same in the background.
pub struct MysqlPaymentsRepository {
    inner: Arc<Inner>,
    saves: mpsc::Sender<batch::Request>,
    stop: CancellationToken,
    batcher: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for MysqlPaymentsRepository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MysqlPaymentsRepository")
            .field("database", &self.inner.database)
            .finish_non_exhaustive()
    }
}

impl MysqlPaymentsRepository {
    /// Connects, applies the migrations the database lacks, and starts the batcher.
    ///
    /// # Errors
    ///
    /// [`RepositoryError::Unavailable`] when the server cannot be reached (or another instance's
    /// migration holds the lock past the call timeout), [`RepositoryError::Failed`] when the
    /// database does not exist, the credentials are refused, or the schema cannot be set up or
    /// is newer than this build.
    pub async fn connect(config: MysqlConfig) -> Result<Self, RepositoryError> {
        let action = format!("connect to {config} (ssl-mode={})", config.ssl_mode());
        let pool = Pool::new(session_opts(&config, &action).await?);
        let inner = Arc::new(Inner {
            pool,
            database: config.database().clone(),
            call_timeout: config.call_timeout(),
            connect_timeout: config.connect_timeout(),
            max_batch: config.max_batch(),
        });
        // Getting the first connection has the connect timeout, and the migrations a call's
        // worth of time, waiting for another instance's included.
        let wait_seconds = config.call_timeout().as_secs().max(1);
        let migrated = bounded("connect", config.connect_timeout() + config.call_timeout(), async {
            let mut conn = inner.conn().await.map_err(|err| err.into_error(&action))?;
            migrate::run(&mut conn, &inner.database, wait_seconds).await
        })
        .await;
        if let Err(err) = migrated {
            // Nothing will use the pool: close what it opened rather than leave it to Drop.
            let _ = tokio::time::timeout(config.connect_timeout(), inner.pool.clone().disconnect()).await;
            return Err(err);
        }
        let (saves, requests) = mpsc::channel(config.max_batch() * config.batches_in_flight());
        let stop = CancellationToken::new();
        let batcher = tokio::spawn(batch::run(
            Arc::clone(&inner),
            requests,
            stop.clone(),
            config.max_batch(),
            config.batches_in_flight(),
        ));
        Ok(Self { inner, saves, stop, batcher: Mutex::new(Some(batcher)) })
    }

    /// The database the store lives in.
    pub fn database(&self) -> &DatabaseName {
        &self.inner.database
    }

    /// Stops taking saves, finishes those already queued and the batches in flight, then closes
    /// every connection (waiting for reads in flight to give theirs back).
    ///
    /// Calls after it fail with [`RepositoryError::Failed`] ("the store is closed"). Closing
    /// again, or concurrently, waits for the first close to finish.
    pub async fn close(&self) {
        let mut batcher = self.batcher.lock().await;
        if let Some(handle) = batcher.take() {
            self.stop.cancel();
            if let Err(err) = handle.await {
                tracing::warn!(database = %self.inner.database, error = %err, "the MySQL batcher ended abnormally");
            }
        }
    }

    /// Runs `work` on a pooled connection within the call timeout.
    async fn with_conn<T>(
        &self,
        action: &'static str,
        work: impl AsyncFnOnce(&mut Conn) -> Result<T, mysql_async::Error>,
    ) -> Result<T, RepositoryError> {
        bounded(action, self.inner.call_timeout, async {
            let mut conn = self.inner.conn().await.map_err(|err| err.into_error(action))?;
            work(&mut conn).await.map_err(|err| errors::query(action, err))
        })
        .await
    }
}

/// The driver's options for the store's sessions, TLS decided: for `PREFERRED`, see [`preferred`].
pub(crate) async fn session_opts(config: &MysqlConfig, action: &str) -> Result<Opts, RepositoryError> {
    match config.ssl_mode() {
        SslMode::Preferred => preferred(config, action).await,
        _ => Ok(config.driver_opts()),
    }
}

/// The driver's options for `PREFERRED`: TLS if the server offers it, asked once with a
/// connection of its own (mysql_async fails a connection that asks for TLS from a server without
/// it, rather than go on in plain text); plain text if it does not.
async fn preferred(config: &MysqlConfig, action: &str) -> Result<Opts, RepositoryError> {
    let opts = config.driver_opts();
    let timeout = config.connect_timeout();
    match tokio::time::timeout(timeout, Conn::new(opts.clone())).await {
        Ok(Ok(conn)) => {
            let _ = conn.disconnect().await;
            Ok(opts)
        }
        Ok(Err(mysql_async::Error::Driver(DriverError::NoClientSslFlagFromServer))) => {
            tracing::debug!(server = %config, "the server offers no TLS: ssl-mode=PREFERRED connects in plain text");
            Ok(OptsBuilder::from_opts(opts).ssl_opts(None).into())
        }
        Ok(Err(err)) => Err(NoConnection::Driver(err).into_error(action)),
        Err(_) => {
            Err(RepositoryError::unavailable(format!("MySQL {action}: no connection within {timeout:?}")))
        }
    }
}

/// Runs `work` within `timeout`; past it, the call is unavailable (and retried).
async fn bounded<T>(
    action: &str,
    timeout: Duration,
    work: impl Future<Output = Result<T, RepositoryError>>,
) -> Result<T, RepositoryError> {
    tokio::time::timeout(timeout, work).await.unwrap_or_else(|_| {
        Err(RepositoryError::unavailable(format!("MySQL {action} took longer than {timeout:?}")))
    })
}

/// A limit as the `LIMIT ?` parameter takes it.
fn limit_param(limit: usize) -> Value {
    Value::UInt(u64::try_from(limit).unwrap_or(u64::MAX))
}

#[async_trait]
impl PaymentsRepository for MysqlPaymentsRepository {
    async fn save(&self, payment: &Payment) -> Result<SaveOutcome, RepositoryError> {
        // The whole save, queueing included, is bounded: a save that gives up may still be
        // inserted by its batch, and the retry then finds it (recorded once either way).
        bounded("save", self.inner.call_timeout, async {
            let (reply, outcome) = oneshot::channel();
            self.saves
                .send(batch::Request { payment: payment.clone(), reply })
                .await
                .map_err(|_| RepositoryError::failed("MySQL save: the store is closed"))?;
            outcome.await.map_err(|_| RepositoryError::failed("the MySQL batcher dropped a save"))?
        })
        .await
    }

    async fn get(&self, id: &PaymentId) -> Result<Option<Payment>, RepositoryError> {
        let row = self
            .with_conn("get", async |conn| {
                conn.exec_first::<Row, _, _>(sql::SELECT_ONE, (id.as_bytes(),)).await
            })
            .await?;
        row.map(|mut row| rows::payment(&mut row)).transpose()
    }

    async fn count(&self) -> Result<u64, RepositoryError> {
        let row =
            self.with_conn("count", async |conn| conn.exec_first::<Row, _, _>(sql::COUNT, ()).await).await?;
        let mut row = row.ok_or_else(|| RepositoryError::failed("MySQL count returned no row"))?;
        rows::column(&mut row, 0, "the count")
    }

    /// `SELECT 1` on a pooled connection: a count scans the table.
    async fn ping(&self) -> Result<(), RepositoryError> {
        self.with_conn("ping", async |conn| conn.query_drop("SELECT 1").await).await
    }

    async fn list(&self, after: Option<PaymentId>, limit: usize) -> Result<Vec<Payment>, RepositoryError> {
        let read = self
            .with_conn("list", async |conn| match after {
                None => conn.exec::<Row, _, _>(sql::LIST_FIRST, (limit_param(limit),)).await,
                Some(after) => {
                    conn.exec::<Row, _, _>(sql::LIST_AFTER, (after.as_bytes(), limit_param(limit))).await
                }
            })
            .await?;
        read.into_iter().map(|mut row| rows::payment(&mut row)).collect()
    }
}
