//! Which Redis errors are worth retrying: the line between `Unavailable` and `Failed`, and the
//! errors that mean the group is gone.

/// What a Redis error means for the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// The connection is broken, refused, or did not answer in time: drop it, connect again, and
    /// assume any reply in flight was lost.
    Connection,
    /// The stream or its group is gone (`NOGROUP`, or `UNBLOCKED` when the key was deleted under
    /// a blocked read): create the group again.
    GroupGone,
    /// The server is busy for now (loading, out of memory, a script running, a failover): the
    /// connection is fine, and the same command may work later.
    Busy,
    /// The server refused the command for good (a wrong type, a bad argument).
    Refused,
}

/// Error codes of replies that clear by themselves.
const BUSY_CODES: &[&str] = &["LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "OOM", "READONLY", "CLUSTERDOWN"];

pub(crate) fn classify(err: &redis::RedisError) -> Class {
    match err.code() {
        Some("NOGROUP" | "UNBLOCKED") => Class::GroupGone,
        Some(code) if BUSY_CODES.contains(&code) => Class::Busy,
        // TLS refused the server (its certificate, the handshake): the next connection would
        // meet the same certificate, so this is not an outage to wait out.
        _ if tls_refusal(err).is_some() => Class::Refused,
        // A timeout leaves the connection usable, but its reply may still come and be taken for
        // the next command's: a new connection is the safe answer. A reply the client cannot
        // parse is treated the same way (redis's own manager reconnects on it too).
        _ if err.is_timeout() || err.is_io_error() || err.is_unrecoverable_error() => Class::Connection,
        _ => Class::Refused,
    }
}

/// Whether retrying later may help.
pub(crate) fn is_transient(err: &redis::RedisError) -> bool {
    matches!(classify(err), Class::Connection | Class::Busy | Class::GroupGone)
}

/// What a TLS refusal means, for the person reading the error: `None` when `err` is not one.
#[cfg(feature = "tls")]
pub(crate) fn tls_refusal(err: &redis::RedisError) -> Option<&'static str> {
    payments_tls::refusal(err).map(|refusal| refusal.explain(payments_tls::Roots::SslCa))
}

/// Without TLS built in, no error comes from it.
#[cfg(not(feature = "tls"))]
pub(crate) fn tls_refusal(_err: &redis::RedisError) -> Option<&'static str> {
    None
}

/// `target`, followed by what a TLS refusal means when `err` is one.
pub(crate) fn describe(target: String, err: &redis::RedisError) -> String {
    match tls_refusal(err) {
        Some(hint) => format!("{target}: {hint}"),
        None => target,
    }
}
