//! The relay's side of the outbox: [`PostgresOutbox`], one relay's handle, which claims events
//! with `SELECT … FOR UPDATE SKIP LOCKED` in a transaction it keeps open on a connection of its
//! own until the events are marked (deleted) or given back (rolled back).
//!
//! The handle never remembers where it got to: every claim reads the table afresh, so an event
//! whose save committed late, after events with a higher `seq` were already published, is simply
//! still there for the next claim (the crate's docs say why a cursor would skip it).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use payments_ports::domain::{PaymentRecorded, RecordedAt};
use payments_ports::{Outbox, OutboxBacklog, RepositoryError};
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::errors::{connect_directly, query};
use crate::{SchemaName, row_to_payment};

/// How long one attempt to turn the outbox on waits for the saves in flight before it lets the
/// saves queued behind it go, and tries again: the lock it waits for stalls every new save.
const SWITCH_LOCK_WAIT: Duration = Duration::from_millis(250);

/// What every handle of one store needs: where to connect, the SQL, the limits.
pub(crate) struct Settings {
    pub(crate) connection: tokio_postgres::Config,
    pub(crate) tls: MakeRustlsConnect,
    /// Hosts, port and TLS, for messages.
    pub(crate) target: String,
    pub(crate) schema: SchemaName,
    /// How long one call may take.
    pub(crate) timeout: Duration,
    /// The session's `idle_in_transaction_session_timeout`: how long a claim may be held with no
    /// call on the handle before the server ends the session and gives the claim back.
    pub(crate) claim_timeout: Duration,
    sql: Sql,
}

impl Settings {
    pub(crate) fn new(
        connection: tokio_postgres::Config,
        tls: MakeRustlsConnect,
        target: String,
        schema: SchemaName,
        timeout: Duration,
        claim_timeout: Duration,
    ) -> Self {
        let sql = Sql::new(&schema);
        Self { connection, tls, target, schema, timeout, claim_timeout, sql }
    }
}

/// The outbox's SQL, with the schema filled in.
struct Sql {
    claim: String,
    mark: String,
    backlog: String,
    is_on: String,
    turn_on: String,
}

impl Sql {
    fn new(schema: &SchemaName) -> Self {
        let schema = schema.quoted();
        let outbox = format!("{schema}.payments_outbox");
        let wait_ms = SWITCH_LOCK_WAIT.as_millis();
        Self {
            // `row_to_payment` reads the first three columns.
            claim: format!(
                "SELECT payment_id, amount, currency, recorded_at, seq FROM {outbox} \
                 ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED"
            ),
            mark: format!("DELETE FROM {outbox} WHERE seq = ANY($1)"),
            backlog: format!("SELECT count(*), min(recorded_at) FROM {outbox}"),
            is_on: format!("SELECT EXISTS (SELECT FROM {schema}.outbox_switch)"),
            // SHARE ROW EXCLUSIVE waits for every transaction that is inserting payments, and holds
            // new ones off until the switch is committed: a save either committed before the
            // switch (and records no event) or takes its snapshot after it (and sees it). Without
            // the lock, a save whose snapshot predates the switch but which commits after it
            // would record its payment without an event although the outbox was on.
            // `on_since` is read once the lock is held: every payment recorded after it has its event.
            turn_on: format!(
                "BEGIN; \
                 SET LOCAL lock_timeout = {wait_ms}; \
                 LOCK TABLE {schema}.payments IN SHARE ROW EXCLUSIVE MODE; \
                 INSERT INTO {schema}.outbox_switch (on_since) VALUES (clock_timestamp()) ON CONFLICT DO NOTHING; \
                 COMMIT"
            ),
        }
    }
}

/// A connection of the handle's own, with its statements prepared.
struct Session {
    client: Client,
    /// Drives the connection; it ends once the client is dropped (or the server hangs up).
    driver: JoinHandle<()>,
    claim: Statement,
    mark: Statement,
    backlog: Statement,
}

impl Session {
    /// Connects, bounds how long the server lets a claim sit idle, and prepares the statements.
    async fn open(settings: &Settings) -> Result<Self, RepositoryError> {
        let (client, connection) = settings
            .connection
            .connect(settings.tls.clone())
            .await
            .map_err(|err| connect_directly(&settings.target, err))?;
        let driver = tokio::spawn(async move {
            // The server ends the session itself when a claim sits idle too long, or when an
            // administrator terminates it: its reason arrives here, not at any call.
            if let Err(err) = connection.await {
                tracing::warn!(error = %err, "the PostgreSQL outbox connection ended");
            }
        });
        // Dropping the client (on an error below) ends the session; the driver then returns.
        // Whole milliseconds, where 0 means never: a timeout under a millisecond is one.
        let timeout = settings.claim_timeout;
        let timeout_ms = if timeout.is_zero() { 0 } else { timeout.as_millis().max(1) };
        let timeout_ms = timeout_ms.min(u128::from(i32::MAX.unsigned_abs()));
        client
            .batch_execute(&format!("SET idle_in_transaction_session_timeout = {timeout_ms}"))
            .await
            .map_err(|err| query("outbox setup", err))?;
        let (claim, mark, backlog) = tokio::try_join!(
            client.prepare(&settings.sql.claim),
            client.prepare(&settings.sql.mark),
            client.prepare(&settings.sql.backlog),
        )
        .map_err(|err| query("outbox setup", err))?;
        Ok(Self { client, driver, claim, mark, backlog })
    }

    /// Turns the outbox on unless it is on; says whether this call did.
    async fn turn_on(&self, settings: &Settings) -> Result<bool, RepositoryError> {
        loop {
            let on: bool = self
                .client
                .query_one(settings.sql.is_on.as_str(), &[])
                .await
                .and_then(|row| row.try_get(0))
                .map_err(|err| query("outbox switch", err))?;
            if on {
                return Ok(false);
            }
            match self.client.batch_execute(&settings.sql.turn_on).await {
                Ok(()) => return Ok(true),
                // Saves held the table past the short wait: let the saves queued behind the lock
                // through, then try again (the call's timeout bounds the attempts).
                Err(err) if err.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                    tracing::debug!(schema = %settings.schema, "turning the outbox on waits for saves in flight");
                    self.client.batch_execute("ROLLBACK").await.map_err(|err| query("outbox switch", err))?;
                    tokio::time::sleep(SWITCH_LOCK_WAIT).await;
                }
                Err(err) => return Err(query("outbox switch", err)),
            }
        }
    }
}

/// What the handle holds.
#[derive(Debug)]
enum Held {
    /// No transaction is open.
    Nothing,
    /// A transaction is open and holds the rows of these events, locked.
    Claim(Vec<i64>),
    /// The last claim went with its session, in a call that did not report it (a backlog that
    /// failed): the next mark says so, once.
    Lost,
}

/// One relay's handle on a PostgreSQL outbox. See the crate's docs for the design.
pub(crate) struct PostgresOutbox {
    settings: Arc<Settings>,
    /// `None` until connected, and after a failure (the next call connects again).
    session: Option<Session>,
    held: Held,
    closed: bool,
}

impl PostgresOutbox {
    /// Connects a handle and turns the outbox on (for good, for every instance) if it is off.
    pub(crate) async fn open(settings: Arc<Settings>) -> Result<Self, RepositoryError> {
        let timeout = settings.timeout;
        let session = within(timeout, "turning the outbox on", async {
            let session = Session::open(&settings).await?;
            if session.turn_on(&settings).await? {
                tracing::info!(
                    schema = %settings.schema,
                    "outbox turned on: every payment saved as new now records its PaymentRecorded event"
                );
            }
            Ok(session)
        })
        .await?;
        Ok(Self { settings, session: Some(session), held: Held::Nothing, closed: false })
    }

    fn check_open(&self) -> Result<(), RepositoryError> {
        if self.closed {
            Err(RepositoryError::failed(format!(
                "the outbox handle on schema {} is closed",
                self.settings.schema
            )))
        } else {
            Ok(())
        }
    }

    /// The session, connected first if there is none or the server hung up on it. A claim held
    /// by a session that is gone is lost, for the next mark to report.
    async fn session<'a>(
        session: &'a mut Option<Session>,
        held: &mut Held,
        settings: &Settings,
    ) -> Result<&'a mut Session, RepositoryError> {
        if session.as_ref().is_some_and(|session| session.client.is_closed()) {
            *session = None;
            if matches!(held, Held::Claim(_)) {
                *held = Held::Lost;
            }
        }
        match session {
            Some(session) => Ok(session),
            None => Ok(session.insert(Session::open(settings).await?)),
        }
    }

    /// Ends the session after a failure: the server rolls its transaction back, which gives the
    /// claim back to every other handle at once. `tell` says whether a claim held now goes
    /// unreported, for the next mark to report.
    fn reset(&mut self, tell: bool) {
        self.session = None;
        self.held = match self.held {
            Held::Claim(_) if tell => Held::Lost,
            Held::Lost => Held::Lost,
            _ => Held::Nothing,
        };
    }

    async fn try_claim(&mut self, limit: usize) -> Result<Vec<PaymentRecorded>, RepositoryError> {
        let Self { settings, session, held, .. } = self;
        let session = Self::session(session, held, settings).await?;
        // Whatever a session that is gone held went with it.
        let begin = if matches!(held, Held::Claim(_)) { "ROLLBACK; BEGIN" } else { "BEGIN" };
        *held = Held::Nothing;
        if limit == 0 {
            if begin != "BEGIN" {
                session.client.batch_execute("ROLLBACK").await.map_err(|err| query("outbox claim", err))?;
            }
            return Ok(Vec::new());
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // Pipelined: both go out before either answer comes back.
        let params: [&(dyn ToSql + Sync); 1] = [&limit];
        let ((), rows) = tokio::try_join!(
            biased;
            session.client.batch_execute(begin),
            session.client.query(&session.claim, &params),
        )
        .map_err(|err| query("outbox claim", err))?;
        if rows.is_empty() {
            // Holding an empty transaction open would only keep the session idle in transaction.
            session.client.batch_execute("ROLLBACK").await.map_err(|err| query("outbox claim", err))?;
            return Ok(Vec::new());
        }
        let mut seqs = Vec::with_capacity(rows.len());
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            let recorded_at: SystemTime = row.try_get(3).map_err(|err| query("outbox claim", err))?;
            events
                .push(PaymentRecorded::new(row_to_payment(row)?, RecordedAt::from_system_time(recorded_at)));
            seqs.push(row.try_get::<_, i64>(4).map_err(|err| query("outbox claim", err))?);
        }
        *held = Held::Claim(seqs);
        Ok(events)
    }

    async fn try_mark(&mut self) -> Result<(), RepositoryError> {
        let Held::Claim(seqs) = &self.held else { return Ok(()) };
        let session = self.session.as_ref().ok_or_else(|| {
            RepositoryError::failed("the outbox handle holds a claim without a connection (a bug)")
        })?;
        // Pipelined. A failed DELETE aborts the transaction, and the COMMIT then rolls it back.
        let params: [&(dyn ToSql + Sync); 1] = [seqs];
        tokio::try_join!(
            biased;
            session.client.execute(&session.mark, &params),
            session.client.batch_execute("COMMIT"),
        )
        .map_err(|err| query("outbox mark", err))?;
        self.held = Held::Nothing;
        Ok(())
    }

    async fn try_backlog(&mut self) -> Result<OutboxBacklog, RepositoryError> {
        let session = Self::session(&mut self.session, &mut self.held, &self.settings).await?;
        let row = session
            .client
            .query_one(&session.backlog, &[])
            .await
            .map_err(|err| query("outbox backlog", err))?;
        let pending: i64 = row.try_get(0).map_err(|err| query("outbox backlog", err))?;
        let oldest: Option<SystemTime> = row.try_get(1).map_err(|err| query("outbox backlog", err))?;
        // To the millisecond, as the events' own `recorded_at`: the oldest event's time, exactly.
        let oldest = oldest.map(|time| RecordedAt::from_system_time(time).system_time());
        Ok(OutboxBacklog { pending: u64::try_from(pending).unwrap_or(0), oldest })
    }

    async fn try_close(&mut self) -> Result<(), RepositoryError> {
        let Some(session) = self.session.take() else { return Ok(()) };
        let held = std::mem::replace(&mut self.held, Held::Nothing);
        if matches!(held, Held::Claim(_)) {
            session.client.batch_execute("ROLLBACK").await.map_err(|err| query("outbox close", err))?;
        }
        let Session { client, driver, .. } = session;
        drop(client);
        driver
            .await
            .map_err(|err| RepositoryError::failed_because("the PostgreSQL outbox connection failed", err))
    }
}

#[async_trait]
impl Outbox for PostgresOutbox {
    async fn claim(&mut self, limit: usize) -> Result<Vec<PaymentRecorded>, RepositoryError> {
        self.check_open()?;
        let result = within(self.settings.timeout, "outbox claim", self.try_claim(limit)).await;
        if result.is_err() {
            // The caller hears of it: nothing for the next mark to report.
            self.reset(false);
        }
        result
    }

    async fn mark_published(&mut self) -> Result<(), RepositoryError> {
        self.check_open()?;
        if matches!(self.held, Held::Lost) {
            self.held = Held::Nothing;
            return Err(RepositoryError::unavailable(
                "the outbox claim was given back when its PostgreSQL connection failed: nothing was marked; claim again",
            ));
        }
        let result = within(self.settings.timeout, "outbox mark", self.try_mark()).await;
        if result.is_err() {
            self.reset(false);
        }
        result
    }

    async fn backlog(&mut self) -> Result<OutboxBacklog, RepositoryError> {
        self.check_open()?;
        let result = within(self.settings.timeout, "outbox backlog", self.try_backlog()).await;
        if result.is_err() {
            // Its claim went with the session, which the caller does not learn from this error.
            self.reset(true);
        }
        result
    }

    async fn close(&mut self) -> Result<(), RepositoryError> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        let result = within(self.settings.timeout, "outbox close", self.try_close()).await;
        self.reset(false);
        result
    }
}

/// Runs `work` within `timeout`; past it, the call is unavailable (and may be retried).
async fn within<T>(
    timeout: Duration,
    action: &str,
    work: impl Future<Output = Result<T, RepositoryError>>,
) -> Result<T, RepositoryError> {
    tokio::time::timeout(timeout, work).await.unwrap_or_else(|_| {
        Err(RepositoryError::unavailable(format!("PostgreSQL {action} took longer than {timeout:?}")))
    })
}
