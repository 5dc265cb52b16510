//! Which driver errors are worth retrying: the line between `Unavailable` and `Failed`.

use std::sync::Arc;

use deadpool_postgres::PoolError;
use payments_ports::RepositoryError;
use tokio_postgres::error::SqlState;

/// Whether the same statement may succeed later: the connection is gone or refused, the server
/// is shutting down or starting, overloaded, or the transaction lost a race. Not when TLS refused
/// the server (its certificate, the handshake) or the server refused TLS that `sslmode` requires:
/// retrying would meet the same server with the same certificate.
pub(crate) fn is_transient(err: &tokio_postgres::Error) -> bool {
    if err.is_closed() {
        return true;
    }
    if crate::tls::is_refused(err) {
        return false;
    }
    if let Some(code) = err.code() {
        return code.code().starts_with("08") // connection exceptions
            || [
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
                SqlState::CANNOT_CONNECT_NOW,
                SqlState::TOO_MANY_CONNECTIONS,
                SqlState::T_R_SERIALIZATION_FAILURE,
                SqlState::T_R_DEADLOCK_DETECTED,
                SqlState::QUERY_CANCELED,
                SqlState::LOCK_NOT_AVAILABLE,
            ]
            .contains(code);
    }
    // No SQLSTATE: the error came from the connection itself (refused, reset, broken pipe, timeout).
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if cause.is::<std::io::Error>() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// A failed statement, as the consumer should see it.
pub(crate) fn query(action: &str, err: tokio_postgres::Error) -> RepositoryError {
    shared(action, Arc::new(err))
}

/// The same, for an error that several waiting saves share.
pub(crate) fn shared(action: &str, err: Arc<tokio_postgres::Error>) -> RepositoryError {
    let message = format!("PostgreSQL {action} failed");
    if is_transient(&err) {
        RepositoryError::unavailable_because(message, err)
    } else {
        RepositoryError::failed_because(message, err)
    }
}

/// A connection that could not be had from the pool.
pub(crate) fn pool(action: &str, err: PoolError) -> RepositoryError {
    match err {
        PoolError::Backend(err) => query(action, err),
        PoolError::Timeout(kind) => RepositoryError::unavailable(format!(
            "PostgreSQL {action}: no connection within the pool's timeout ({kind:?})"
        )),
        other => {
            RepositoryError::failed_because(format!("PostgreSQL {action}: the connection pool failed"), other)
        }
    }
}

/// The first connection failed: says where, with which TLS settings, and, for a TLS failure,
/// what it means, before the driver's own words.
pub(crate) fn connect(target: &str, err: PoolError) -> RepositoryError {
    match err {
        PoolError::Backend(err) => connect_directly(target, err),
        other => pool("connect", other),
    }
}

/// The same, for a connection made outside the pool (an outbox handle's own).
pub(crate) fn connect_directly(target: &str, err: tokio_postgres::Error) -> RepositoryError {
    let hint = crate::tls::explain(&err).map(|hint| format!(": {hint}")).unwrap_or_default();
    let message = format!("cannot connect to PostgreSQL at {target}{hint}");
    if is_transient(&err) {
        RepositoryError::unavailable_because(message, err)
    } else {
        RepositoryError::failed_because(message, err)
    }
}
