//! Which driver errors are worth retrying: the line between `Unavailable` and `Failed`.

use std::sync::Arc;

use mysql_async::{DriverError, Error};
use payments_ports::RepositoryError;

/// Server error numbers after which the same statement may succeed later, with why. Numbers, not
/// SQLSTATEs: MySQL gives many of these the catch-all `HY000`.
const TRANSIENT: &[(u16, &str)] = &[
    (1040, "too many connections"),
    (1053, "server shutdown in progress"),
    (1158, "network read error"),
    (1159, "network read timeout"),
    (1160, "network write error"),
    (1161, "network write timeout"),
    (1203, "user has too many connections"),
    (1205, "lock wait timeout"),
    (1213, "deadlock; the statement was rolled back"),
    (1317, "query interrupted"),
    // MariaDB's answer to a statement whose connection was killed (KILL CONNECTION).
    (1927, "connection killed"),
    // MariaDB's max_statement_time and MySQL's max_execution_time.
    (1969, "statement timeout"),
    (3024, "statement timeout"),
    // The client library's own numbers, which a proxy in between may send.
    (2006, "server gone away"),
    (2013, "lost connection during query"),
    // MySQL 8's goodbye to a connection idle past wait_timeout.
    (4031, "disconnected for inactivity"),
];

/// Whether the same call may succeed later: the connection is gone or refused, the server is
/// shutting down or overloaded, or the statement lost a race for a lock.
pub(crate) fn is_transient(err: &Error) -> bool {
    match err {
        // TLS refused the server's certificate or handshake: the next connection meets the same.
        _ if crate::tls::is_refused(err) => false,
        // Refused, reset, broken pipe, end of stream: the connection itself failed.
        Error::Io(_) => true,
        Error::Driver(DriverError::ConnectionClosed) => true,
        Error::Server(server) => {
            // SQLSTATE class 08 is "connection exception" (1040 too many connections among them).
            server.state.starts_with("08") || TRANSIENT.iter().any(|(code, _)| *code == server.code)
        }
        // A closed pool (the store was closed), a protocol error, a bad URL: retrying will not help.
        Error::Driver(_) | Error::Url(_) | Error::Other(_) => false,
    }
}

/// A failed statement, as the consumer should see it.
pub(crate) fn query(action: &str, err: Error) -> RepositoryError {
    shared(action, Arc::new(err))
}

/// The same, for an error that several waiting saves share.
pub(crate) fn shared(action: &str, err: Arc<Error>) -> RepositoryError {
    if matches!(*err, Error::Driver(DriverError::PoolDisconnected)) {
        return RepositoryError::failed(format!("MySQL {action}: the store is closed"));
    }
    let message = match &*err {
        Error::Server(server) => match TRANSIENT.iter().find(|(code, _)| *code == server.code) {
            Some((_, why)) => format!("MySQL {action} failed ({why})"),
            None => format!("MySQL {action} failed"),
        },
        _ => match crate::tls::explain(&err) {
            Some(hint) => format!("MySQL {action} failed: {hint}"),
            None => format!("MySQL {action} failed"),
        },
    };
    if is_transient(&err) {
        RepositoryError::unavailable_because(message, err)
    } else {
        RepositoryError::failed_because(message, err)
    }
}

/// The server's error number, if the server answered with one.
pub(crate) fn server_code(err: &Error) -> Option<u16> {
    match err {
        Error::Server(server) => Some(server.code),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use mysql_async::{IoError, ServerError, UrlError};

    use super::*;

    fn server(code: u16, state: &str) -> Error {
        Error::Server(ServerError { code, message: format!("error {code}"), state: state.to_owned() })
    }

    fn check(err: Error, unavailable: bool) {
        let text = format!("{err}");
        let mapped = query("save", err);
        assert_eq!(mapped.is_unavailable(), unavailable, "{text} mapped to {mapped}");
        assert!(std::error::Error::source(&mapped).is_some(), "the driver's error is kept: {mapped}");
    }

    #[test]
    fn outages_overload_and_lost_races_are_unavailable() {
        for (code, state) in [
            (1213, "40001"),
            (1205, "HY000"),
            (1040, "08004"),
            (1053, "08S01"),
            (2006, "HY000"),
            (2013, "HY000"),
            (1927, "70100"),
            (1317, "70100"),
            (1203, "42000"),
            (1969, "70100"),
            (4031, "HY000"),
        ] {
            check(server(code, state), true);
        }
        // Any connection exception, by its SQLSTATE class.
        check(server(1081, "08S01"), true);
        for kind in
            [io::ErrorKind::ConnectionRefused, io::ErrorKind::ConnectionReset, io::ErrorKind::UnexpectedEof]
        {
            check(Error::Io(IoError::Io(io::Error::new(kind, "socket"))), true);
        }
        check(Error::Driver(DriverError::ConnectionClosed), true);
    }

    #[test]
    fn everything_else_is_a_failure() {
        for (code, state) in [
            (1146, "42S02"), // no such table
            (1049, "42000"), // no such database
            (1045, "28000"), // access denied
            (1406, "22001"), // data too long
            (1264, "22003"), // out of range
            (4025, "23000"), // CHECK constraint
            (1062, "23000"), // duplicate key (never expected: the insert handles duplicates)
            (1064, "42000"), // syntax
        ] {
            check(server(code, state), false);
        }
        check(Error::Url(UrlError::Invalid), false);
        check(Error::Driver(DriverError::PacketOutOfOrder), false);
    }

    #[test]
    fn a_closed_store_is_a_failure_that_says_so() {
        let err = query("get", Error::Driver(DriverError::PoolDisconnected));
        assert!(!err.is_unavailable());
        assert_eq!(err.to_string(), "payments store failed: MySQL get: the store is closed");
    }

    #[test]
    fn the_message_says_why_a_retry_may_help() {
        let err = query("save", server(1213, "40001"));
        assert_eq!(
            err.to_string(),
            "payments store unavailable: MySQL save failed (deadlock; the statement was rolled back)"
        );
        let err = query("save", server(1146, "42S02"));
        assert_eq!(err.to_string(), "payments store failed: MySQL save failed");
        let chain = payments_ports::error_chain(&err);
        assert!(chain.contains("error 1146"), "the server's message is the source: {chain}");
    }
}
