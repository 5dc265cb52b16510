//! Which lapin errors are worth retrying: the line between `Unavailable` and `Failed`.
//!
//! A TLS refusal (a server certificate that does not chain to a trusted root or does not name the
//! host, a handshake answered in plain text) is `Failed`: the next attempt would meet the same
//! certificate. lapin reports it as an I/O error; it is told apart, and explained, by the rustls
//! error inside.

use lapin::ErrorKind;
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};

/// Whether the same call may work later, on this connection or a new one.
///
/// Transient: the network (I/O errors, a missed heartbeat, a connection or channel that is
/// closed or closing), the broker closing the connection (`CONNECTION_FORCED`: an operator, a
/// restart), a resource alarm or an internal error. Permanent: what a retry cannot change
/// (refused credentials or virtual host, a TLS handshake that fails, a missing exchange, a queue
/// that exists with other arguments or is exclusive to another connection, a message too large
/// for the broker), and errors that mean this client broke the protocol.
pub(crate) fn is_transient(err: &lapin::Error) -> bool {
    if tls_refusal(err).is_some() {
        return false;
    }
    match err.kind() {
        ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Soft(soft) => !matches!(
                soft,
                AMQPSoftError::ACCESSREFUSED
                    | AMQPSoftError::NOTFOUND
                    | AMQPSoftError::RESOURCELOCKED
                    | AMQPSoftError::PRECONDITIONFAILED
                    | AMQPSoftError::CONTENTTOOLARGE
                    | AMQPSoftError::NOROUTE
            ),
            AMQPErrorKind::Hard(hard) => matches!(
                hard,
                AMQPHardError::CONNECTIONFORCED
                    | AMQPHardError::RESOURCEERROR
                    | AMQPHardError::INTERNALERROR
                    | AMQPHardError::CHANNELERROR
            ),
        },
        // What rustls reports as I/O: a certificate it refuses, a server that does not speak TLS.
        ErrorKind::IOError(io) if io.kind() == std::io::ErrorKind::InvalidData => false,
        ErrorKind::InvalidProtocolVersion(_)
        | ErrorKind::SerialisationError(_)
        | ErrorKind::AuthProviderError(_)
        | ErrorKind::NoDefaultRuntime
        | ErrorKind::FutureCompleted => false,
        // I/O, a missed heartbeat, a closed channel or connection, a reply that could not be
        // parsed (a new connection starts clean), the channel limit (channels close again).
        _ => true,
    }
}

/// The AMQP reply code of a broker's error, if it is one: 406 for `PRECONDITION_FAILED`.
pub(crate) fn reply_code(err: &lapin::Error) -> Option<u16> {
    match err.kind() {
        ErrorKind::ProtocolError(amqp) => Some(amqp.get_id()),
        _ => None,
    }
}

/// `PRECONDITION_FAILED`: for a declaration, the queue exists with other arguments.
pub(crate) const PRECONDITION_FAILED: u16 = 406;

/// TLS refused the server: what that means for the person reading the error, then lapin's own.
#[derive(Debug, thiserror::Error)]
#[error("{meaning}")]
pub(crate) struct TlsRefused {
    meaning: &'static str,
    #[source]
    source: lapin::Error,
}

impl TlsRefused {
    /// `err` explained, when it is a TLS refusal; else `err` back.
    pub(crate) fn new(err: lapin::Error) -> Result<Self, lapin::Error> {
        match tls_refusal(&err) {
            Some(meaning) => Ok(Self { meaning, source: err }),
            None => Err(err),
        }
    }
}

/// `err` itself, or, when TLS refused the server, `err` behind what that means.
pub(crate) fn explained(err: lapin::Error) -> payments_ports::BoxError {
    match TlsRefused::new(err) {
        Ok(refused) => Box::new(refused),
        Err(err) => Box::new(err),
    }
}

/// What a TLS refusal means, for the person reading the error: `None` when `err` is not one.
///
/// rustls's error travels inside an `io::Error` (futures-rustls, then lapin's
/// `ErrorKind::IOError`), which does not show it as a source: it is reached through `get_ref`.
pub(crate) fn tls_refusal(err: &lapin::Error) -> Option<&'static str> {
    let ErrorKind::IOError(io) = err.kind() else { return None };
    let inner = io.get_ref()?;
    payments_tls::refusal(inner).map(|refusal| refusal.explain(payments_tls::Roots::SslCa))
}
