//! The schema, created and upgraded on connect by embedded, versioned migrations.
//!
//! Every instance runs this when it connects. One transaction, under an advisory lock on the
//! schema's name, creates the schema and its `schema_migrations` table if absent, and applies
//! the migrations newer than the recorded version: two instances starting at the same moment
//! take turns, and the second finds nothing to do.

use payments_ports::RepositoryError;

use crate::SchemaName;
use crate::errors::query;

/// The schema version this build creates and expects.
pub const SCHEMA_VERSION: i32 = 2;

/// `(version, SQL)`, oldest first; `{schema}` stands for the quoted schema name.
/// Never edit a released migration: add the next one.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r#"
    CREATE TABLE {schema}.payments (
        -- "C" collation: bytewise order, which is the order the port's `list` promises.
        payment_id  text COLLATE "C" PRIMARY KEY
                    CHECK (octet_length(payment_id) BETWEEN 1 AND 64 AND payment_id ~ '^[A-Za-z0-9_.:-]+$'),
        amount      bigint NOT NULL CHECK (amount BETWEEN 1 AND 1000000000000),
        currency    text   NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
        recorded_at timestamptz NOT NULL DEFAULT now()
    );
    "#,
    ),
    (
        2,
        r#"
    -- The transactional outbox: one row per PaymentRecorded event not yet published, written by
    -- the same statement as its payment, deleted by the relay that published it. `seq` orders
    -- claims; it is never a relay's cursor (commits make it visible out of order).
    -- No foreign key to payments: the save statement inserts both from the same rows, and a key
    -- would cost every save a lookup and a row lock for nothing.
    CREATE TABLE {schema}.payments_outbox (
        seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        payment_id  text COLLATE "C" NOT NULL,
        amount      bigint NOT NULL,
        currency    text   NOT NULL,
        recorded_at timestamptz NOT NULL
    );
    -- One row, or none: whether saves record events. Off (empty) until a relay's handle turns
    -- it on; an operator turns it off by deleting the row.
    CREATE TABLE {schema}.outbox_switch (
        singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
        on_since  timestamptz NOT NULL DEFAULT now()
    );
    "#,
    ),
];

/// Brings `schema` up to [`SCHEMA_VERSION`].
pub(crate) async fn run(
    client: &mut tokio_postgres::Client,
    schema: &SchemaName,
) -> Result<(), RepositoryError> {
    let quoted = schema.quoted();
    let transaction = client.transaction().await.map_err(|err| query("begin the migration", err))?;
    // Taken before anything else: CREATE SCHEMA IF NOT EXISTS alone is not safe from a race.
    transaction
        .execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&format!("payments-migrations/{schema}")])
        .await
        .map_err(|err| query("lock the migration", err))?;
    transaction
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {quoted};
             CREATE TABLE IF NOT EXISTS {quoted}.schema_migrations (
                 version    integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );"
        ))
        .await
        .map_err(|err| query("create the schema", err))?;
    let current: i32 = transaction
        .query_one(&format!("SELECT coalesce(max(version), 0) FROM {quoted}.schema_migrations"), &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(|err| query("read the schema version", err))?;
    if current > SCHEMA_VERSION {
        return Err(RepositoryError::failed(format!(
            "schema {schema} is at version {current}, newer than this build knows ({SCHEMA_VERSION}); upgrade payments-app"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(version, _)| *version > current) {
        transaction
            .batch_execute(&sql.replace("{schema}", &quoted))
            .await
            .map_err(|err| query("apply a migration", err))?;
        transaction
            .execute(&format!("INSERT INTO {quoted}.schema_migrations (version) VALUES ($1)"), &[version])
            .await
            .map_err(|err| query("record a migration", err))?;
        tracing::info!(%schema, version, "applied migration");
    }
    transaction.commit().await.map_err(|err| query("commit the migration", err))
}
