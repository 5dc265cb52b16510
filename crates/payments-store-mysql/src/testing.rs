//! White-box helpers for this crate's own tests (feature `testing`): the store's statements and
//! sessions, to check what the server answers to them. Where the test server is, and a database of
//! a test's own, come from `payments-test-support` (feature `mysql`).

use mysql_async::Conn;
use payments_ports::BoxError;

use crate::{DatabaseName, MysqlConfig};

/// The store's own "insert unless present" for `rows` rows of `(payment_id, amount, currency,
/// inserted_by)`, for tests of what the server answers to it.
pub fn insert_statement(rows: usize) -> String {
    crate::sql::insert(rows)
}

/// A connection to `database` opened exactly as the store opens its own (strict `sql_mode`, lock
/// wait timeouts, isolation level, TLS as `ssl-mode` decides): for tests of what those settings
/// do.
///
/// # Errors
///
/// The driver's error, or a database name the store would refuse.
pub async fn store_session(config: &MysqlConfig, database: &str) -> Result<Conn, BoxError> {
    let config = config.clone().with_database(DatabaseName::new(database)?);
    let opts = crate::session_opts(&config, "open a session").await?;
    Ok(Conn::new(opts).await?)
}
