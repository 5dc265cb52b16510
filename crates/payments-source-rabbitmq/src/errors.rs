//! Which lapin errors are worth retrying: the line between `Unavailable` and `Failed`.

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
