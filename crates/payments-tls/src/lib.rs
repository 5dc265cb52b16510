//! What every adapter that speaks TLS through rustls shares, whatever its client: finding out
//! whether an error is the TLS layer refusing the server ([`refusal`]), which retrying cannot fix,
//! so that the adapter reports it as a failure with its reason instead of as an outage.
//!
//! Clients bury rustls's error differently: as a source, inside an `io::Error` (which does not
//! show its inner error as a source, only through `get_ref`), or inside an
//! `Arc<dyn Error + Send + Sync>` shared by a connection's waiters. [`refusal`] looks through all
//! three, along the whole chain of sources.

use std::error::Error;
use std::sync::Arc;

use rustls::CertificateError;

/// How the TLS layer refused a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The certificate is not signed by a trusted root.
    UnknownIssuer,
    /// The certificate does not name the host connected to.
    WrongName,
    /// The certificate was refused for another reason (expired, revoked, malformed…).
    Certificate,
    /// The handshake failed before any certificate was judged: often a server that does not
    /// speak TLS on that port.
    Handshake,
}

impl Refusal {
    /// The refusal in words, for the person reading the error; `roots` names where the trusted
    /// roots came from (`"ssl-ca"`, `"sslrootcert"`), and `host` what the host was called.
    pub const fn explain(self, roots: Roots) -> &'static str {
        match (self, roots) {
            (Self::UnknownIssuer, Roots::SslCa) => {
                "the server's certificate is not signed by a trusted root (the system's, or ssl-ca's)"
            }
            (Self::UnknownIssuer, Roots::SslRootCert) => {
                "the server's certificate is not signed by a trusted root (the system's, or sslrootcert's)"
            }
            (Self::WrongName, Roots::SslCa) => "the server's certificate does not name the URL's host",
            (Self::WrongName, Roots::SslRootCert) => {
                "the server's certificate does not name the host connected to"
            }
            (Self::Certificate, _) => "the server's certificate was refused",
            (Self::Handshake, _) => "the TLS handshake failed (does the server speak TLS on this port?)",
        }
    }
}

/// Where an adapter's trusted roots come from, as its URL names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Roots {
    /// The system's, or a URL's `ssl-ca=PATH` (the brokers, MySQL).
    SslCa,
    /// The system's, or libpq's `sslrootcert=PATH` (PostgreSQL).
    SslRootCert,
}

/// How the TLS layer refused the server, if `err` (or anything it was caused by) says it did.
pub fn refusal(err: &(dyn Error + 'static)) -> Option<Refusal> {
    let mut cause = Some(err);
    while let Some(current) = cause {
        if let Some(rustls) = rustls_error(current) {
            return Some(match rustls {
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => Refusal::UnknownIssuer,
                rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
                ) => Refusal::WrongName,
                rustls::Error::InvalidCertificate(_) => Refusal::Certificate,
                _ => Refusal::Handshake,
            });
        }
        cause = current.source();
    }
    None
}

/// rustls's error, if `err` is one, or holds one where clients put it.
fn rustls_error<'a>(err: &'a (dyn Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(rustls) = err.downcast_ref::<rustls::Error>() {
        return Some(rustls);
    }
    let io = err.downcast_ref::<std::io::Error>().or_else(|| {
        err.downcast_ref::<Arc<dyn Error + Send + Sync>>()
            .and_then(|shared| shared.downcast_ref::<std::io::Error>())
    })?;
    io.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that wraps another as its source, as clients do.
    #[derive(Debug)]
    struct Wrapped(Box<dyn Error + Send + Sync>);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("cannot connect")
        }
    }

    impl Error for Wrapped {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(self.0.as_ref())
        }
    }

    fn in_io(err: rustls::Error) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, err)
    }

    #[test]
    fn a_refusal_is_found_as_a_source_inside_an_io_error_or_a_shared_one() {
        let unknown = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert_eq!(refusal(&Wrapped(Box::new(unknown.clone()))), Some(Refusal::UnknownIssuer));
        let wrong_name = rustls::Error::InvalidCertificate(CertificateError::NotValidForName);
        assert_eq!(refusal(&Wrapped(Box::new(in_io(wrong_name)))), Some(Refusal::WrongName));
        let shared: Arc<dyn Error + Send + Sync> =
            Arc::new(in_io(rustls::Error::InvalidCertificate(CertificateError::Expired)));
        assert_eq!(refusal(&shared), Some(Refusal::Certificate));
        let handshake = in_io(rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType));
        assert_eq!(refusal(&Wrapped(Box::new(handshake))), Some(Refusal::Handshake));
    }

    #[test]
    fn an_outage_is_no_refusal() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        assert_eq!(refusal(&Wrapped(Box::new(refused))), None);
        assert_eq!(refusal(&std::io::Error::other("reset")), None);
    }

    #[test]
    fn every_refusal_says_what_it_means_in_the_words_of_its_url() {
        assert!(Refusal::UnknownIssuer.explain(Roots::SslCa).contains("ssl-ca's"));
        assert!(Refusal::UnknownIssuer.explain(Roots::SslRootCert).contains("sslrootcert's"));
        assert!(Refusal::WrongName.explain(Roots::SslCa).contains("URL's host"));
        assert!(Refusal::Handshake.explain(Roots::SslCa).contains("speak TLS"));
    }
}
