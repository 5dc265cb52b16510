//! The schema, created and upgraded on connect by embedded, versioned migrations.
//!
//! Every instance runs this when it connects, on one connection, under a named lock
//! (`GET_LOCK`): two instances starting at the same moment take turns, and the second finds
//! nothing to do. The lock is released on the same connection (`RELEASE_LOCK`), and by the server
//! if that connection dies first.
//!
//! MySQL commits every DDL statement on its own, so a migration and the row that records it are
//! not one transaction: each migration must be safe to run again (`IF NOT EXISTS`), for the
//! instance that dies between the two.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row};
use payments_ports::RepositoryError;

use crate::DatabaseName;
use crate::errors::query;
use crate::rows::column;

/// The schema version this build creates and expects.
pub const SCHEMA_VERSION: u32 = 1;

/// `(version, statements)`, oldest first. Never edit a released migration: add the next one.
const MIGRATIONS: &[(u32, &[&str])] = &[(
    1,
    &[r"
    CREATE TABLE IF NOT EXISTS payments (
        -- ascii_bin: compared and ordered byte by byte, which is the order the port's `list`
        -- promises (the ID alphabet has no space, so the collation's trailing-space padding never
        -- matters). A text type rather than VARBINARY so that the CHECKs' REGEXP works on MySQL 8
        -- too, which refuses REGEXP on binary strings.
        payment_id  VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
        amount      BIGINT UNSIGNED NOT NULL,
        currency    CHAR(3) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
        -- The batch that inserted the row: how a multi-row insert learns which of its rows it
        -- inserted (batch.rs). Written once, like the rest of the row.
        inserted_by BINARY(16) NOT NULL,
        -- DATETIME rather than TIMESTAMP, which ends in 2038; UTC (every session sets time_zone).
        recorded_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        PRIMARY KEY (payment_id),
        CONSTRAINT payment_id_format CHECK (payment_id REGEXP '^[A-Za-z0-9_.:-]{1,64}$'),
        CONSTRAINT amount_range CHECK (amount BETWEEN 1 AND 1000000000000),
        CONSTRAINT currency_format CHECK (currency REGEXP '^[A-Z]{3}$')
    ) ENGINE = InnoDB DEFAULT CHARACTER SET = ascii COLLATE = ascii_bin
    "],
)];

/// The migration lock's name. Lock names are server-wide and at most 64 characters, and so may
/// be a database name: the database's MD5 keeps the name short and the lock per database.
const LOCK_NAME: &str = "CONCAT('payments-migrations:', MD5(DATABASE()))";

/// Brings the connection's database up to [`SCHEMA_VERSION`], waiting at most `wait_seconds`
/// for another instance's migration.
pub(crate) async fn run(
    conn: &mut Conn,
    database: &DatabaseName,
    wait_seconds: u64,
) -> Result<(), RepositoryError> {
    let mut row = conn
        .exec_first::<Row, _, _>(format!("SELECT GET_LOCK({LOCK_NAME}, ?)"), (wait_seconds,))
        .await
        .map_err(|err| query("lock the migration", err))?
        .ok_or_else(|| RepositoryError::failed("GET_LOCK returned no row"))?;
    match column::<Option<i64>>(&mut row, 0, "GET_LOCK")? {
        Some(1) => {}
        Some(_) => {
            return Err(RepositoryError::unavailable(format!(
                "another instance has held the migration lock of database {database} for more than {wait_seconds} s"
            )));
        }
        None => return Err(RepositoryError::failed("GET_LOCK failed (returned NULL)")),
    }
    let migrated = migrate(conn, database).await;
    // A failure to release means the connection is gone, and the lock with its session.
    if let Err(err) = conn.query_drop(format!("DO RELEASE_LOCK({LOCK_NAME})")).await {
        tracing::warn!(%database, error = %err, "could not release the migration lock; its session ended");
    }
    migrated
}

async fn migrate(conn: &mut Conn, database: &DatabaseName) -> Result<(), RepositoryError> {
    conn.query_drop(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    INT UNSIGNED NOT NULL PRIMARY KEY,
             applied_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
         ) ENGINE = InnoDB",
    )
    .await
    .map_err(|err| query("create schema_migrations", err))?;
    let mut row = conn
        .query_first::<Row, _>("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        .await
        .map_err(|err| query("read the schema version", err))?
        .ok_or_else(|| RepositoryError::failed("reading the schema version returned no row"))?;
    let current: u64 = column(&mut row, 0, "the schema version")?;
    if current > u64::from(SCHEMA_VERSION) {
        return Err(RepositoryError::failed(format!(
            "database {database} is at schema version {current}, newer than this build knows ({SCHEMA_VERSION}); upgrade payments-app"
        )));
    }
    for (version, statements) in MIGRATIONS.iter().filter(|(version, _)| u64::from(*version) > current) {
        for statement in *statements {
            conn.query_drop(*statement).await.map_err(|err| query("apply a migration", err))?;
        }
        conn.exec_drop("INSERT INTO schema_migrations (version) VALUES (?)", (*version,))
            .await
            .map_err(|err| query("record a migration", err))?;
        tracing::info!(%database, version, "applied migration");
    }
    Ok(())
}
