//! A [`PaymentsRepository`] on PostgreSQL: one store that many consumer instances share.
//!
//! - **One atomic statement per save.** `INSERT … ON CONFLICT (payment_id) DO NOTHING RETURNING`
//!   records a payment unless its ID is present; when nothing was inserted, the stored row is read
//!   and the domain rule decides duplicate or conflict. A row is never updated.
//! - **Group commit for the database.** Saves that arrive while earlier ones are in flight are
//!   batched into one multi-row statement (`unnest` of three arrays), so 64 concurrent savers cost
//!   a handful of round trips and commits instead of 64.
//! - **A versioned schema** is created on connect by embedded migrations, under an advisory lock,
//!   so that instances starting at the same moment do not trip over each other. The schema name is
//!   configurable (`?schema=name` in the URL, default `payments`).
//! - **Errors mapped for the consumer**: connection refused or reset, a pool timeout, an
//!   administrator shutdown, a serialization failure are [`RepositoryError::Unavailable`] (retried);
//!   anything else is [`RepositoryError::Failed`], with the driver's error as its source. A server
//!   whose TLS certificate is refused, or that refuses TLS when it is required, is a failure too:
//!   no retry makes it trusted.
//! - **TLS as libpq does it**: `sslmode` (`disable`, `prefer` by default, `require`, `verify-ca`,
//!   `verify-full`) and `sslrootcert` in the URL, on rustls with the system's roots; see
//!   [`SslMode`] and the `tls` module for what each mode checks.
//! - **A transactional outbox** (below): each payment saved as new has its `PaymentRecorded`
//!   event recorded by the same statement, once the outbox is on; relays claim events with
//!   `FOR UPDATE SKIP LOCKED`, never with a cursor.
//!
//! The driver is tokio-postgres with a deadpool pool; see docs/adr/0002-postgres-driver.md.
//!
//! # The outbox
//!
//! Two tables (migration 2): `payments_outbox`, one row per event not yet published, and
//! `outbox_switch`, one row or none.
//!
//! **The switch.** The outbox is off in a new schema, and saves record no events: a consumer
//! with no relay would otherwise fill a table nobody empties. The first
//! [`outbox()`](PaymentsRepository::outbox) call, by a consumer with `--publish-to` or by a relay,
//! inserts the switch row, and it stays there: from then on every instance records events,
//! including instances that were already running, because the save statement itself reads the
//! switch. Turning it on takes `LOCK TABLE payments IN SHARE ROW EXCLUSIVE MODE` for a moment,
//! which waits for the saves in flight and holds new ones off until the switch is committed: a
//! save that took its snapshot before the switch but committed after it would otherwise record
//! its payment without its event. Each attempt waits at most 250 ms, so that a long transaction
//! on the table does not stall every save queued behind the lock; then it lets them through and
//! tries again, within the store's call timeout. `on_since` is the instant the switch was taken:
//! every payment recorded after it has its event.
//!
//! **One statement per save, with its event.** Both save statements (one row, and the `unnest`
//! batch) are one data-modifying `WITH`:
//!
//! ```sql
//! WITH inserted AS (INSERT INTO payments … ON CONFLICT (payment_id) DO NOTHING
//!                   RETURNING payment_id, amount, currency, recorded_at),
//!      queued AS (INSERT INTO payments_outbox (payment_id, amount, currency, recorded_at)
//!                 SELECT … FROM inserted WHERE EXISTS (SELECT FROM outbox_switch))
//! SELECT payment_id FROM inserted
//! ```
//!
//! One statement commits as one: the payment and its event are both there or neither is, and a
//! duplicate or a conflict, which `ON CONFLICT` keeps out of `inserted`, queues nothing. With
//! the switch off, the second insert writes nothing: it costs the server a few microseconds a
//! statement, which saves, one at a time or batched, did not show when this was measured.
//!
//! **No cursor.** A relay that publishes "everything after the last `seq` I published" skips
//! events: a sequence value is taken when a row is inserted but becomes visible when its
//! transaction commits, and transactions commit in any order. A save that takes `seq` 7 and
//! commits after the save that took 8 has committed and been published makes 7 appear behind
//! the cursor, for ever. So nothing remembers a position: each claim reads the table afresh, and
//! an event leaves it only when it is deleted as published.
//!
//! **Claims are row locks held in a transaction.** Each relay's handle has a connection of its
//! own (never one of the pool: a pooled connection must not go back with a transaction open). A
//! claim rolls back the handle's previous unmarked claim, then `BEGIN` and
//! `SELECT … ORDER BY seq LIMIT n FOR UPDATE SKIP LOCKED`, and keeps the transaction open;
//! marking deletes those rows and commits. Several relays can run at once: `SKIP LOCKED` hands
//! each one rows no other holds, and an event committed after a claim started is simply there
//! for the next one. A relay that dies gives its claim back at once, because the server rolls
//! the transaction back when the connection ends; one that hangs, after the claim timeout
//! ([`PostgresConfig::with_claim_timeout`], 5 minutes by default), when the server ends its
//! session (`idle_in_transaction_session_timeout`): an open transaction also holds back
//! vacuum, so it must not last for ever. After a failure the handle's next call connects again.
//! A `COMMIT` whose answer is lost may have marked the events although the call failed; they
//! were confirmed by the broker before the relay marked them, so nothing is lost either way.
//!
//! **Turning it off** is an operator's decision, with every relay and every consumer with
//! `--publish-to` stopped first (the next `outbox()` call turns it on again):
//!
//! ```sql
//! DELETE FROM payments.outbox_switch;       -- saves stop recording events
//! TRUNCATE payments.payments_outbox;        -- optional: drops the events not yet published
//! ```

mod batch;
mod errors;
mod migrate;
mod outbox;
mod tls;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use payments_ports::domain::{Amount, Currency, Payment, PaymentId, SaveOutcome};
use payments_ports::{Outbox, PaymentsRepository, RepositoryError};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use crate::migrate::SCHEMA_VERSION;
pub use crate::tls::SslMode;
use crate::tls::{Roots, Tls};

/// Why a PostgreSQL URL cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The schema name is not a plain lowercase identifier.
    #[error(
        "invalid schema name {0:?}: use 1 to 63 lowercase letters, digits or underscores, not starting with a digit"
    )]
    SchemaName(String),
    /// The driver does not accept the URL or one of its parameters.
    #[error("invalid PostgreSQL URL")]
    Url(#[source] tokio_postgres::Error),
    /// `sslmode` has a value this store does not know (or, for `allow`, does not do).
    #[error(
        "unsupported sslmode {0:?} in the PostgreSQL URL: use disable, prefer, require, verify-ca or verify-full"
    )]
    SslMode(String),
    /// A libpq TLS parameter this store does not implement (client certificates, CRLs, ...).
    #[error("the PostgreSQL URL parameter `{0}` is not supported: TLS takes sslmode and sslrootcert only")]
    Unsupported(String),
    /// The `sslrootcert` file cannot be read.
    #[error("cannot read sslrootcert {}", path.display())]
    RootCertFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The `sslrootcert` file holds no certificate that can be trusted.
    #[error("sslrootcert {} holds no usable CA certificate: {reason}", path.display())]
    RootCertContent {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A verifying `sslmode` without `sslrootcert`, and no root certificate in the system's store.
    #[error("no system root certificates to verify the server with ({0}): give sslrootcert=PATH")]
    SystemRoots(String),
    /// rustls refused the TLS settings.
    #[error("cannot set up TLS: {0}")]
    Tls(String),
}

/// libpq's TLS parameters that this store does not implement: refused by name rather than passed
/// to the driver, which would call them unknown.
const UNSUPPORTED_TLS_PARAMETERS: &[&str] = &[
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcertmode",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "sslcompression",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "sslkeylogfile",
    "requiressl",
    "gssencmode",
];

/// A schema name: lowercase letters, digits and underscores, starting with a letter or
/// underscore, at most 63 bytes. Checked, then quoted wherever it appears in SQL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaName(String);

impl SchemaName {
    /// Checks `name`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::SchemaName`] when it is not a plain lowercase identifier.
    pub fn new(name: &str) -> Result<Self, ConfigError> {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if valid { Ok(Self(name.to_owned())) } else { Err(ConfigError::SchemaName(name.to_owned())) }
    }

    /// The name as it is.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name quoted for SQL.
    fn quoted(&self) -> String {
        // Validated above: no quote can appear inside.
        format!("\"{}\"", self.0)
    }
}

impl fmt::Display for SchemaName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How to reach the database: parsed from a URL, adjusted with the `with_*` methods.
#[derive(Clone)]
pub struct PostgresConfig {
    connection: tokio_postgres::Config,
    tls: Tls,
    schema: SchemaName,
    /// Connections in the pool: the batches in flight, plus room for reads and migrations.
    pool_size: usize,
    /// How long a call waits for a connection from the pool before it counts as unavailable.
    wait_timeout: Duration,
    /// How long one call may take in all before it counts as unavailable (and is retried): a
    /// statement that hangs on a silent network must not hold its saves forever.
    timeout: Duration,
    /// Batches in flight at once, each on its own connection: enough to keep the server busy while
    /// one batch's round trip is on the wire, few enough to leave it room for other clients.
    batches_in_flight: usize,
    /// The most saves in one statement; larger batches gain little and hold locks longer.
    max_batch: usize,
    /// How long an outbox handle may hold a claim with no call before the server ends its session.
    claim_timeout: Duration,
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // tokio_postgres::Config's Debug redacts the password.
        f.debug_struct("PostgresConfig")
            .field("connection", &self.connection)
            .field("tls", &self.tls)
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

impl PostgresConfig {
    /// Parses a `postgres://` URL. A `schema=<name>` query parameter picks the schema (default
    /// `payments`). `sslmode` and `sslrootcert` are libpq's (see [`SslMode`]): `sslmode` defaults
    /// to `prefer`, and `sslrootcert=PATH` (percent-encoded like any URL value) replaces the
    /// system's roots with the CA certificates of that PEM file, which is read here. Every other
    /// parameter is the driver's (`connect_timeout`, `application_name`, `hostaddr`, ...).
    /// Without a `connect_timeout`, connecting gives up after 5 s.
    ///
    /// # Errors
    ///
    /// [`ConfigError`]: what is wrong with the URL, the schema name, the TLS parameters or the
    /// root certificates. It never contains the password.
    pub fn from_url(url: &str) -> Result<Self, ConfigError> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut schema = SchemaName::new("payments")?;
        let (mut ssl_mode, mut roots) = (None, None);
        let mut rest = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decoded = || percent_encoding::percent_decode_str(value).decode_utf8_lossy().into_owned();
            match name {
                "schema" => schema = SchemaName::new(value)?,
                "sslmode" => ssl_mode = Some(decoded().parse::<SslMode>()?),
                "sslrootcert" => roots = Some(Roots::from_param(&decoded())),
                name if UNSUPPORTED_TLS_PARAMETERS.contains(&name) => {
                    return Err(ConfigError::Unsupported(name.to_owned()));
                }
                _ => rest.push(pair),
            }
        }
        let url = if rest.is_empty() { base.to_owned() } else { format!("{base}?{}", rest.join("&")) };
        let mut connection = tokio_postgres::Config::from_str(&url).map_err(ConfigError::Url)?;
        // A key=value connection string carries its sslmode to the driver, which knows the first
        // three: keep what it read rather than override it with the default.
        let ssl_mode = ssl_mode.unwrap_or(match connection.get_ssl_mode() {
            tokio_postgres::config::SslMode::Disable => SslMode::Disable,
            tokio_postgres::config::SslMode::Require => SslMode::Require,
            _ => SslMode::Prefer,
        });
        connection.ssl_mode(ssl_mode.driver());
        if connection.get_application_name().is_none() {
            connection.application_name("payments-app");
        }
        if connection.get_connect_timeout().is_none() {
            connection.connect_timeout(Duration::from_secs(5));
        }
        Ok(Self {
            connection,
            tls: Tls::new(ssl_mode, roots)?,
            schema,
            pool_size: 16,
            wait_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
            batches_in_flight: 4,
            max_batch: 512,
            claim_timeout: Duration::from_secs(300),
        })
    }

    /// How connections use TLS.
    pub fn ssl_mode(&self) -> SslMode {
        self.tls.mode()
    }

    /// The `sslrootcert` file whose certificates are the only trusted roots, if the URL names one
    /// (`sslrootcert=system` names none: the system's roots, as without it).
    pub fn ssl_root_cert(&self) -> Option<&std::path::Path> {
        match self.tls.roots() {
            Some(Roots::File(path)) => Some(path),
            _ => None,
        }
    }

    /// The schema the store lives in.
    pub fn schema(&self) -> &SchemaName {
        &self.schema
    }

    /// Names the connections (`application_name`), so that they can be found in `pg_stat_activity`.
    #[must_use]
    pub fn with_application_name(mut self, name: &str) -> Self {
        self.connection.application_name(name);
        self
    }

    /// Sets how long one call may take in all before it counts as unavailable.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets how long a call waits for a connection (and a new connection for its server) before
    /// it counts as unavailable.
    #[must_use]
    pub fn with_wait_timeout(mut self, wait_timeout: Duration) -> Self {
        self.wait_timeout = wait_timeout;
        self
    }

    /// Sets how long an outbox handle may hold a claim without calling the store (while its relay
    /// publishes, or hangs) before the server ends the handle's session, which gives the claim
    /// back to the other relays: the session's `idle_in_transaction_session_timeout`, 5 minutes
    /// by default. The handle's next call connects again. Zero means never, and lets a hung relay
    /// hold its events (and an open transaction) for as long as its connection lives.
    #[must_use]
    pub fn with_claim_timeout(mut self, claim_timeout: Duration) -> Self {
        self.claim_timeout = claim_timeout;
        self
    }

    /// How long connecting to the server may take: the URL's `connect_timeout`, or 5 s.
    pub fn connect_timeout(&self) -> Option<Duration> {
        self.connection.get_connect_timeout().copied()
    }

    /// Where and how the store connects, for messages: hosts, port, TLS; never the password.
    fn describe(&self) -> String {
        let hosts: Vec<String> = self
            .connection
            .get_hosts()
            .iter()
            .map(|host| match host {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        let ports: Vec<String> = self.connection.get_ports().iter().map(ToString::to_string).collect();
        format!("{} port {} ({})", hosts.join(","), ports.join(","), self.tls.describe())
    }
}

/// The SQL of a store, with its schema filled in.
struct Sql {
    insert_one: String,
    insert_many: String,
    select_one: String,
    select_many: String,
    count: String,
    list_first: String,
    list_after: String,
}

impl Sql {
    fn new(schema: &SchemaName) -> Self {
        let table = format!("{}.payments", schema.quoted());
        Self {
            insert_one: save_statement(schema, "VALUES ($1, $2, $3)"),
            insert_many: save_statement(schema, "SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[])"),
            select_one: format!("SELECT payment_id, amount, currency FROM {table} WHERE payment_id = $1"),
            select_many: format!(
                "SELECT payment_id, amount, currency FROM {table} WHERE payment_id = ANY($1)"
            ),
            count: format!("SELECT count(*) FROM {table}"),
            list_first: format!(
                "SELECT payment_id, amount, currency FROM {table} ORDER BY payment_id LIMIT $1"
            ),
            list_after: format!(
                "SELECT payment_id, amount, currency FROM {table} WHERE payment_id > $1 ORDER BY payment_id LIMIT $2"
            ),
        }
    }
}

/// The save statement: inserts the payments of `rows` whose IDs are absent, and, in the same
/// statement, their events into the outbox if the switch is on; returns the IDs it inserted.
///
/// One statement is one atomic step: the payment and its event commit together or not at all,
/// and a row that `ON CONFLICT` skips (a duplicate, a conflict) never reaches `inserted`, so it
/// queues nothing. The switch is read by the statement itself, with the snapshot it inserts
/// under, so an instance that connected before the outbox was turned on records events from the
/// first statement that sees the switch, with no restart and nothing cached. A data-modifying
/// `WITH` runs to completion whether or not the outer query reads it.
fn save_statement(schema: &SchemaName, rows: &str) -> String {
    let schema = schema.quoted();
    format!(
        "WITH inserted AS ( \
             INSERT INTO {schema}.payments (payment_id, amount, currency) {rows} \
             ON CONFLICT (payment_id) DO NOTHING \
             RETURNING payment_id, amount, currency, recorded_at \
         ), queued AS ( \
             INSERT INTO {schema}.payments_outbox (payment_id, amount, currency, recorded_at) \
             SELECT payment_id, amount, currency, recorded_at FROM inserted \
             WHERE EXISTS (SELECT FROM {schema}.outbox_switch) \
         ) \
         SELECT payment_id FROM inserted"
    )
}

/// What saves and the batcher share.
struct Inner {
    pool: Pool,
    sql: Sql,
    schema: SchemaName,
    timeout: Duration,
    /// What each outbox handle needs to connect a session of its own.
    outbox: Arc<outbox::Settings>,
}

/// Payments in a PostgreSQL table, shared by every instance that connects to it.
pub struct PostgresPaymentsRepository {
    inner: Arc<Inner>,
    saves: mpsc::Sender<batch::Request>,
    /// Tells the batcher to finish what is queued and stop.
    closing: CancellationToken,
    /// The batcher, awaited by the first close.
    batcher: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for PostgresPaymentsRepository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresPaymentsRepository")
            .field("schema", &self.inner.schema)
            .finish_non_exhaustive()
    }
}

impl PostgresPaymentsRepository {
    /// Connects, applies the migrations the schema lacks, and starts the batcher.
    ///
    /// # Errors
    ///
    /// [`RepositoryError::Unavailable`] when the server cannot be reached, [`RepositoryError::Failed`]
    /// when the schema cannot be set up (or is newer than this build).
    pub async fn connect(config: PostgresConfig) -> Result<Self, RepositoryError> {
        let manager = Manager::from_config(
            config.connection.clone(),
            config.tls.connector(),
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(2))
            .wait_timeout(Some(config.wait_timeout))
            .create_timeout(Some(config.wait_timeout))
            .recycle_timeout(Some(config.wait_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|err| RepositoryError::failed_because("cannot build the connection pool", err))?;
        {
            let mut client = pool.get().await.map_err(|err| errors::connect(&config.describe(), err))?;
            migrate::run(&mut client, &config.schema).await?;
        }
        let inner = Arc::new(Inner {
            pool,
            sql: Sql::new(&config.schema),
            schema: config.schema.clone(),
            timeout: config.timeout,
            outbox: Arc::new(outbox::Settings::new(
                config.connection.clone(),
                config.tls.connector(),
                config.describe(),
                config.schema.clone(),
                config.timeout,
                config.claim_timeout,
            )),
        });
        // Room for one full batch per slot: saves beyond that wait to be queued, as they would
        // wait for a connection.
        let (saves, requests) = mpsc::channel(config.max_batch.max(1) * config.batches_in_flight.max(1));
        let closing = CancellationToken::new();
        let batcher = tokio::spawn(batch::run(
            Arc::clone(&inner),
            requests,
            config.max_batch.max(1),
            config.batches_in_flight.max(1),
            closing.clone(),
        ));
        Ok(Self { inner, saves, closing, batcher: std::sync::Mutex::new(Some(batcher)) })
    }

    /// The schema the store lives in.
    pub fn schema(&self) -> &SchemaName {
        &self.inner.schema
    }
}

/// A stored row back into a payment; a row that is not a valid payment is a broken store.
fn row_to_payment(row: &tokio_postgres::Row) -> Result<Payment, RepositoryError> {
    let id: &str =
        row.try_get(0).map_err(|err| RepositoryError::failed_because("unreadable payment_id", err))?;
    let amount: i64 =
        row.try_get(1).map_err(|err| RepositoryError::failed_because("unreadable amount", err))?;
    let currency: &str =
        row.try_get(2).map_err(|err| RepositoryError::failed_because("unreadable currency", err))?;
    let invalid = |err: payments_ports::domain::ValidationError| {
        RepositoryError::failed(format!("stored payment {id:?} is not a valid payment: {err}"))
    };
    let amount = u64::try_from(amount)
        .map_err(|_| RepositoryError::failed(format!("stored payment {id:?} has amount {amount}")))?;
    Ok(Payment::new(
        PaymentId::new(id).map_err(invalid)?,
        Amount::new(amount).map_err(invalid)?,
        Currency::new(currency).map_err(invalid)?,
    ))
}

/// The amount as the `bigint` column holds it (at most 10^12, far below `i64::MAX`).
fn amount_param(payment: &Payment) -> i64 {
    i64::try_from(payment.amount.minor_units()).unwrap_or(i64::MAX)
}

#[async_trait]
impl PaymentsRepository for PostgresPaymentsRepository {
    async fn save(&self, payment: &Payment) -> Result<SaveOutcome, RepositoryError> {
        let closed =
            || RepositoryError::failed(format!("the store in schema {} is closed", self.inner.schema));
        if self.closing.is_cancelled() {
            return Err(closed());
        }
        let (reply, outcome) = oneshot::channel();
        self.saves.send(batch::Request { payment: payment.clone(), reply }).await.map_err(|_| closed())?;
        // Dropped unanswered only when the store closed under it (the save was never sent).
        outcome.await.map_err(|_| closed())?
    }

    async fn get(&self, id: &PaymentId) -> Result<Option<Payment>, RepositoryError> {
        self.bounded("get", async {
            let client = self.inner.pool.get().await.map_err(|err| errors::pool("get", err))?;
            let statement = client
                .prepare_cached(&self.inner.sql.select_one)
                .await
                .map_err(|err| errors::query("get", err))?;
            let row = client
                .query_opt(&statement, &[&id.as_str()])
                .await
                .map_err(|err| errors::query("get", err))?;
            row.as_ref().map(row_to_payment).transpose()
        })
        .await
    }

    async fn count(&self) -> Result<u64, RepositoryError> {
        self.bounded("count", async {
            let client = self.inner.pool.get().await.map_err(|err| errors::pool("count", err))?;
            let statement = client
                .prepare_cached(&self.inner.sql.count)
                .await
                .map_err(|err| errors::query("count", err))?;
            let row = client.query_one(&statement, &[]).await.map_err(|err| errors::query("count", err))?;
            let count: i64 = row.try_get(0).map_err(|err| errors::query("count", err))?;
            Ok(u64::try_from(count).unwrap_or(0))
        })
        .await
    }

    /// `SELECT 1` on a pooled connection: a count scans the table.
    async fn ping(&self) -> Result<(), RepositoryError> {
        self.bounded("ping", async {
            let client = self.inner.pool.get().await.map_err(|err| errors::pool("ping", err))?;
            client.simple_query("SELECT 1").await.map_err(|err| errors::query("ping", err))?;
            Ok(())
        })
        .await
    }

    async fn close(&self) -> Result<(), RepositoryError> {
        self.shut_down().await
    }

    /// A handle with a connection of its own (a claim is a transaction held open between calls,
    /// which a pooled connection must never carry back to the pool), after turning the outbox on
    /// if it is off. The handle outlives [`close`](PaymentsRepository::close): close it too.
    async fn outbox(&self) -> Result<Option<Box<dyn Outbox>>, RepositoryError> {
        if self.closing.is_cancelled() {
            return Err(RepositoryError::failed(format!(
                "the store in schema {} is closed",
                self.inner.schema
            )));
        }
        let handle = outbox::PostgresOutbox::open(Arc::clone(&self.inner.outbox)).await?;
        Ok(Some(Box::new(handle)))
    }

    async fn list(&self, after: Option<PaymentId>, limit: usize) -> Result<Vec<Payment>, RepositoryError> {
        self.bounded("list", async {
            let client = self.inner.pool.get().await.map_err(|err| errors::pool("list", err))?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = match after {
                None => {
                    let statement = client
                        .prepare_cached(&self.inner.sql.list_first)
                        .await
                        .map_err(|err| errors::query("list", err))?;
                    client.query(&statement, &[&limit]).await
                }
                Some(after) => {
                    let statement = client
                        .prepare_cached(&self.inner.sql.list_after)
                        .await
                        .map_err(|err| errors::query("list", err))?;
                    client.query(&statement, &[&after.as_str(), &limit]).await
                }
            }
            .map_err(|err| errors::query("list", err))?;
            rows.iter().map(row_to_payment).collect()
        })
        .await
    }
}

impl PostgresPaymentsRepository {
    /// Stops the batcher once what is queued is saved, then closes the pool's connections.
    async fn shut_down(&self) -> Result<(), RepositoryError> {
        self.closing.cancel();
        let batcher = self.batcher.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(batcher) = batcher {
            batcher
                .await
                .map_err(|err| RepositoryError::failed_because("the PostgreSQL batcher failed", err))?;
        }
        self.inner.pool.close();
        Ok(())
    }

    /// Runs `work` within the call timeout; past it, the call is unavailable (and retried).
    async fn bounded<T>(
        &self,
        action: &str,
        work: impl std::future::Future<Output = Result<T, RepositoryError>>,
    ) -> Result<T, RepositoryError> {
        let timeout = self.inner.timeout;
        tokio::time::timeout(timeout, work).await.unwrap_or_else(|_| {
            Err(RepositoryError::unavailable(format!("PostgreSQL {action} took longer than {timeout:?}")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers_only() {
        for good in ["payments", "_p", "p_2026", &"a".repeat(63)] {
            assert!(SchemaName::new(good).is_ok(), "{good}");
        }
        for bad in ["", "Payments", "2p", "p-q", "p q", "x\"; DROP TABLE payments;--", &"a".repeat(64)] {
            let err = SchemaName::new(bad).expect_err(bad);
            assert!(err.to_string().starts_with("invalid schema name"), "{err}");
        }
    }

    #[test]
    fn the_schema_comes_from_the_url_and_the_rest_goes_to_the_driver() {
        let config =
            PostgresConfig::from_url("postgres://app:secret@db:5433/pay?schema=ledger&sslmode=disable")
                .expect("valid");
        assert_eq!(config.schema().as_str(), "ledger");
        assert_eq!(config.connection.get_ports(), [5433]);
        assert_eq!(config.connection.get_dbname(), Some("pay"));
        assert!(!format!("{config:?}").contains("secret"), "the password never shows: {config:?}");
        let config = PostgresConfig::from_url("postgres://db/pay").expect("valid");
        assert_eq!(config.schema().as_str(), "payments");
        assert!(PostgresConfig::from_url("postgres://db/pay?schema=Bad-Name").is_err());
        assert!(PostgresConfig::from_url("postgres://db/pay?nonsense=1").is_err());
    }

    #[test]
    fn sslmode_is_libpqs_with_prefer_by_default() {
        let mode = |url: &str| PostgresConfig::from_url(url).map(|config| config.ssl_mode());
        assert_eq!(mode("postgres://db/pay").expect("valid"), SslMode::Prefer);
        for (value, expected, driver) in [
            ("disable", SslMode::Disable, tokio_postgres::config::SslMode::Disable),
            ("prefer", SslMode::Prefer, tokio_postgres::config::SslMode::Prefer),
            ("require", SslMode::Require, tokio_postgres::config::SslMode::Require),
            ("verify-ca", SslMode::VerifyCa, tokio_postgres::config::SslMode::Require),
            ("verify-full", SslMode::VerifyFull, tokio_postgres::config::SslMode::Require),
        ] {
            let config =
                PostgresConfig::from_url(&format!("postgres://db/pay?sslmode={value}")).expect(value);
            assert_eq!(config.ssl_mode(), expected);
            assert_eq!(config.ssl_mode().to_string(), value);
            assert_eq!(config.connection.get_ssl_mode(), driver, "{value}: never plain text past prefer");
        }
        // A key=value string keeps the mode the driver read from it.
        let config = PostgresConfig::from_url("host=db dbname=pay sslmode=require").expect("valid");
        assert_eq!(config.ssl_mode(), SslMode::Require);
    }

    #[test]
    fn unknown_sslmodes_and_tls_parameters_are_refused_by_name() {
        for value in ["allow", "VERIFY-FULL", "verify_full", "on", ""] {
            let err = PostgresConfig::from_url(&format!("postgres://u:hunter2@db/pay?sslmode={value}"))
                .expect_err(value);
            assert!(matches!(&err, ConfigError::SslMode(given) if given == value), "{err:?}");
            assert!(err.to_string().contains(&format!("unsupported sslmode {value:?}")), "{err}");
            assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
        }
        for name in ["sslcert", "sslkey", "sslcrl", "sslpassword"] {
            let err = PostgresConfig::from_url(&format!("postgres://db/pay?{name}=/x")).expect_err(name);
            assert!(matches!(&err, ConfigError::Unsupported(given) if given == name), "{err:?}");
            assert!(err.to_string().contains(&format!("`{name}` is not supported")), "{err}");
        }
    }

    #[test]
    fn sslrootcert_is_read_when_the_url_is() {
        let missing = PostgresConfig::from_url(
            "postgres://u:hunter2@db/pay?sslmode=verify-full&sslrootcert=/nonexistent/ca%20file.pem",
        )
        .expect_err("no such file");
        assert!(
            matches!(&missing, ConfigError::RootCertFile { path, .. } if path == std::path::Path::new("/nonexistent/ca file.pem")),
            "the path is percent-decoded: {missing:?}"
        );
        assert!(
            missing.to_string().contains("cannot read sslrootcert /nonexistent/ca file.pem"),
            "{missing}"
        );
        assert!(!format!("{missing:?}").contains("hunter2"));

        let dir = std::env::temp_dir().join(format!("payments-pg-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let url = format!("postgres://db/pay?sslmode=verify-ca&sslrootcert={}", empty.display());
        let err = PostgresConfig::from_url(&url).expect_err("no certificate");
        std::fs::remove_dir_all(&dir).expect("cleanup");
        assert!(matches!(err, ConfigError::RootCertContent { .. }), "{err:?}");
        assert!(err.to_string().contains("holds no usable CA certificate"), "{err}");

        // Without verification, nothing needs the roots: libpq ignores sslrootcert there too.
        let config = PostgresConfig::from_url("postgres://db/pay?sslmode=prefer&sslrootcert=/nonexistent")
            .expect("unused");
        assert_eq!(config.ssl_root_cert(), Some(std::path::Path::new("/nonexistent")));
        let config = PostgresConfig::from_url("postgres://db/pay?sslmode=verify-full&sslrootcert=system")
            .expect("the system's roots");
        assert_eq!(config.ssl_root_cert(), None);
        assert!(format!("{config:?}").contains("VerifyFull"), "{config:?}");
    }

    #[test]
    fn the_urls_connect_timeout_is_honoured_and_five_seconds_otherwise() {
        let given = PostgresConfig::from_url("postgres://db/pay?connect_timeout=17").expect("valid");
        assert_eq!(given.connect_timeout(), Some(Duration::from_secs(17)));
        let default = PostgresConfig::from_url("postgres://db/pay").expect("valid");
        assert_eq!(default.connect_timeout(), Some(Duration::from_secs(5)));
    }
}
