//! TLS for the store's connections: MySQL's `ssl-mode` and `ssl-ca`, on mysql_async's rustls
//! support with the ring provider.
//!
//! | `ssl-mode`        | TLS                                   | the server's certificate                      |
//! |-------------------|---------------------------------------|-----------------------------------------------|
//! | `DISABLED`        | never                                 | -                                             |
//! | `PREFERRED`       | if the server offers it, else plain   | not checked                                   |
//! | `REQUIRED`        | always: no plain-text fallback        | not checked                                   |
//! | `VERIFY_CA`       | refused: see below                    |                                               |
//! | `VERIFY_IDENTITY` | always                                | signed by a trusted root, naming the URL host |
//!
//! - `PREFERRED` is the default, as in MySQL's client. mysql_async has no "TLS if offered": with
//!   TLS asked for, a server without it is an error. So the store asks once, when it connects,
//!   with a connection of its own: if the server says it has no TLS, the pool is plain text,
//!   otherwise TLS. A server that stops offering TLS later is then refused, never used in plain
//!   text behind the store's back.
//! - The trusted roots of `VERIFY_IDENTITY` are the system's (`rustls-native-certs`, not
//!   mysql_async's built-in Mozilla list), or, with `ssl-ca=PATH`, only the CA certificates of
//!   that PEM file. Both are read when the URL is parsed.
//! - `VERIFY_CA` (the chain without the host name) cannot be honoured with mysql_async 0.37.1:
//!   its rustls verifier recognises a name mismatch by the text "NotValidForName" in the error,
//!   which rustls 0.23 no longer prints, so it checks the host name whatever it is told
//!   (blackbeam/mysql_async#404, fixed upstream and not released). It is refused, by name, rather
//!   than quietly made `VERIFY_IDENTITY`.
//! - `ssl-ca` is used by `VERIFY_IDENTITY` alone, and refused with the other modes rather than
//!   ignored: `REQUIRED` with a CA means `VERIFY_CA` to libpq and to most readers.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use mysql_async::SslOpts;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::config::ConfigError;

/// How a connection uses TLS: MySQL's `ssl-mode`, less `VERIFY_CA` (see the module).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SslMode {
    /// Plain text only.
    Disabled,
    /// TLS if the server offers it when the store connects, plain text otherwise; the
    /// certificate is not checked. The default.
    Preferred,
    /// TLS or no connection; the certificate is not checked.
    Required,
    /// TLS or no connection, with a certificate signed by a trusted root that names the URL's
    /// host.
    VerifyIdentity,
}

impl SslMode {
    /// The value as MySQL spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "DISABLED",
            Self::Preferred => "PREFERRED",
            Self::Required => "REQUIRED",
            Self::VerifyIdentity => "VERIFY_IDENTITY",
        }
    }
}

impl FromStr for SslMode {
    type Err = ConfigError;

    /// Reads a value as MySQL's client does: in any case.
    fn from_str(value: &str) -> Result<Self, ConfigError> {
        match value.to_ascii_uppercase().as_str() {
            "DISABLED" => Ok(Self::Disabled),
            "PREFERRED" => Ok(Self::Preferred),
            "REQUIRED" => Ok(Self::Required),
            "VERIFY_IDENTITY" => Ok(Self::VerifyIdentity),
            "VERIFY_CA" => Err(ConfigError::Unsupported {
                name: "ssl-mode".to_owned(),
                value: value.to_owned(),
                reason: "mysql_async 0.37.1 checks the host name even when told not to \
                         (blackbeam/mysql_async#404), so the chain cannot be verified without it; \
                         use VERIFY_IDENTITY (the certificate must name the URL's host) or REQUIRED",
            }),
            _ => Err(ConfigError::SslMode(value.to_owned())),
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the store's connections do about TLS, decided from the URL.
#[derive(Clone)]
pub(crate) struct Tls {
    mode: SslMode,
    ca: Option<PathBuf>,
    /// The driver's options for a TLS connection in `mode` (`None` for `DISABLED`), the roots
    /// read already.
    opts: Option<SslOpts>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls").field("ssl_mode", &self.mode).field("ssl_ca", &self.ca).finish()
    }
}

impl Tls {
    /// The settings for `mode` (default `PREFERRED`) and `ssl-ca`, reading the roots that
    /// `VERIFY_IDENTITY` needs.
    pub(crate) fn new(mode: Option<SslMode>, ca: Option<PathBuf>) -> Result<Self, ConfigError> {
        let mode = mode.unwrap_or(SslMode::Preferred);
        if let Some(path) = &ca
            && mode != SslMode::VerifyIdentity
        {
            return Err(ConfigError::Unsupported {
                name: "ssl-ca".to_owned(),
                value: path.display().to_string(),
                reason: "a CA is used by ssl-mode=VERIFY_IDENTITY only (the other modes do not check \
                         the certificate); add ssl-mode=VERIFY_IDENTITY",
            });
        }
        let opts = match mode {
            SslMode::Disabled => None,
            // The chain is not checked; the handshake's signatures still are.
            SslMode::Preferred | SslMode::Required => {
                Some(SslOpts::default().with_danger_accept_invalid_certs(true))
            }
            SslMode::VerifyIdentity => {
                let roots = match &ca {
                    Some(path) => roots_from_file(path)?,
                    None => system_roots()?,
                };
                Some(
                    SslOpts::default()
                        .with_root_certs(roots.into_iter().map(Into::into).collect())
                        .with_disable_built_in_roots(true),
                )
            }
        };
        Ok(Self { mode, ca, opts })
    }

    /// The mode.
    pub(crate) fn mode(&self) -> SslMode {
        self.mode
    }

    /// The `ssl-ca` file, if given.
    pub(crate) fn ca(&self) -> Option<&Path> {
        self.ca.as_deref()
    }

    /// The driver's TLS options (`None`: plain text).
    pub(crate) fn ssl_opts(&self) -> Option<SslOpts> {
        self.opts.clone()
    }
}

/// The DER certificates of a PEM file.
fn roots_from_file(path: &Path) -> Result<Vec<Vec<u8>>, ConfigError> {
    let pem =
        std::fs::read(path).map_err(|source| ConfigError::SslCaFile { path: path.to_owned(), source })?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .map(|certificate| certificate.map(|der| der.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| ConfigError::SslCaContent { path: path.to_owned(), reason: err.to_string() })?;
    if certificates.is_empty() {
        return Err(ConfigError::SslCaContent {
            path: path.to_owned(),
            reason: "no PEM certificate in it".to_owned(),
        });
    }
    Ok(certificates)
}

/// The system's trusted roots, as DER.
fn system_roots() -> Result<Vec<Vec<u8>>, ConfigError> {
    let found = rustls_native_certs::load_native_certs();
    if found.certs.is_empty() {
        let why: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        return Err(ConfigError::SystemRoots(if why.is_empty() {
            "the system's trust store is empty".to_owned()
        } else {
            why.join("; ")
        }));
    }
    Ok(found.certs.into_iter().map(|der| der.to_vec()).collect())
}

/// What a TLS failure means, for the person reading the error: `None` when `err` is not one.
pub(crate) fn explain(err: &mysql_async::Error) -> Option<&'static str> {
    use mysql_async::{DriverError, Error, IoError};
    match err {
        Error::Driver(DriverError::NoClientSslFlagFromServer) => {
            Some("the server does not offer TLS, which ssl-mode requires")
        }
        Error::Io(IoError::Tls(_)) => Some("TLS could not be set up"),
        Error::Io(IoError::Io(io)) => {
            payments_tls::refusal(io).map(|refusal| refusal.explain(payments_tls::Roots::SslCa))
        }
        _ => None,
    }
}

/// Whether TLS refused the server (its certificate, the handshake), or the server refused TLS:
/// no retry changes either.
pub(crate) fn is_refused(err: &mysql_async::Error) -> bool {
    explain(err).is_some()
}
