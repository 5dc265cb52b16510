//! TLS for the store's connections: libpq's `sslmode` and `sslrootcert`, on rustls with the ring
//! provider (no aws-lc-rs).
//!
//! | `sslmode`     | TLS                                  | the server's certificate                         |
//! |---------------|--------------------------------------|--------------------------------------------------|
//! | `disable`     | never                                | -                                                |
//! | `prefer`      | if the server offers it, else plain  | not checked                                      |
//! | `require`     | always: no plain-text fallback       | not checked; with `sslrootcert`, as `verify-ca`  |
//! | `verify-ca`   | always                               | signed by a trusted root; any host name          |
//! | `verify-full` | always                               | signed by a trusted root, and names the host     |
//!
//! The trusted roots are the system's (`rustls-native-certs`: `/etc/ssl/certs`, `SSL_CERT_FILE`),
//! or, with `sslrootcert=PATH`, only the certificates of that PEM file, as in libpq (so that a
//! private CA's file does not let every public CA vouch for the server too).
//! `sslrootcert=system` names the system's roots explicitly.
//!
//! Two choices differ from libpq, both on the side of the stronger guarantee or the clearer one:
//! libpq's `prefer` verifies the certificate when a root file exists and falls back to plain text
//! when that fails; here `prefer` never verifies (an attacker who can intercept can refuse TLS
//! anyway, so a check there proves nothing) and never falls back once the server said yes.
//! And libpq reads `~/.postgresql/root.crt` by default; here the default is the system's roots.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{WebPkiServerVerifier, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::ConfigError;

/// How a connection uses TLS: libpq's `sslmode`, less `allow` (plain text first, which no
/// managed service accepts and which tokio-postgres cannot do).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SslMode {
    /// Plain text only.
    Disable,
    /// TLS if the server offers it, plain text otherwise; the certificate is not checked.
    /// libpq's default, and this store's.
    Prefer,
    /// TLS or no connection; the certificate is not checked (unless `sslrootcert` is given: then
    /// as [`SslMode::VerifyCa`], like libpq).
    Require,
    /// TLS or no connection, with a certificate signed by a trusted root; the host name is not
    /// checked.
    VerifyCa,
    /// TLS or no connection, with a certificate signed by a trusted root that names the host
    /// connected to (`host`, even when `hostaddr` says where to connect).
    VerifyFull,
}

impl SslMode {
    /// The value as the URL spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// What the driver is told: whether to ask for TLS, and whether to give up without it.
    pub(crate) fn driver(self) -> tokio_postgres::config::SslMode {
        match self {
            Self::Disable => tokio_postgres::config::SslMode::Disable,
            Self::Prefer => tokio_postgres::config::SslMode::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => tokio_postgres::config::SslMode::Require,
        }
    }
}

impl FromStr for SslMode {
    type Err = ConfigError;

    fn from_str(value: &str) -> Result<Self, ConfigError> {
        match value {
            "disable" => Ok(Self::Disable),
            "prefer" => Ok(Self::Prefer),
            "require" => Ok(Self::Require),
            "verify-ca" => Ok(Self::VerifyCa),
            "verify-full" => Ok(Self::VerifyFull),
            other => Err(ConfigError::SslMode(other.to_owned())),
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the trusted roots come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Roots {
    /// The system's trust store.
    System,
    /// The certificates of this PEM file, only.
    File(PathBuf),
}

impl Roots {
    /// `sslrootcert`'s value: `system`, or a path.
    pub(crate) fn from_param(value: &str) -> Self {
        if value == "system" { Self::System } else { Self::File(PathBuf::from(value)) }
    }
}

impl fmt::Display for Roots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::System => f.write_str("the system's roots"),
            Self::File(path) => write!(f, "sslrootcert {}", path.display()),
        }
    }
}

/// What the store's connections do about TLS, decided once from the URL.
#[derive(Clone)]
pub(crate) struct Tls {
    mode: SslMode,
    /// `None`: no `sslrootcert` in the URL.
    roots: Option<Roots>,
    /// Checks what `mode` says, and nothing else.
    connector: MakeRustlsConnect,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls").field("sslmode", &self.mode).field("sslrootcert", &self.roots).finish()
    }
}

impl Tls {
    /// Builds the TLS client for `mode`, reading the roots it needs (the `sslrootcert` file, or
    /// the system's) now, so that a missing or empty file is a configuration error.
    pub(crate) fn new(mode: SslMode, roots: Option<Roots>) -> Result<Self, ConfigError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let algorithms = provider.signature_verification_algorithms;
        // libpq: `require` with a root certificate verifies the chain, as `verify-ca`.
        let check = match (mode, &roots) {
            (SslMode::Disable | SslMode::Prefer, _) | (SslMode::Require, None) => Check::Nothing,
            (SslMode::Require | SslMode::VerifyCa, _) => Check::Chain,
            (SslMode::VerifyFull, _) => Check::ChainAndName,
        };
        let verifier: Arc<dyn ServerCertVerifier> = match check {
            Check::Nothing => Arc::new(NoCheck { algorithms }),
            Check::Chain => {
                let roots = Arc::new(load_roots(roots.as_ref().unwrap_or(&Roots::System))?);
                Arc::new(ChainOnly { roots, algorithms })
            }
            Check::ChainAndName => {
                let store = Arc::new(load_roots(roots.as_ref().unwrap_or(&Roots::System))?);
                WebPkiServerVerifier::builder_with_provider(store, Arc::clone(&provider))
                    .build()
                    .map_err(|err| ConfigError::Tls(err.to_string()))?
            }
        };
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| ConfigError::Tls(err.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Self { mode, roots, connector: MakeRustlsConnect::new(config) })
    }

    /// The mode.
    pub(crate) fn mode(&self) -> SslMode {
        self.mode
    }

    /// The `sslrootcert` given, if any.
    pub(crate) fn roots(&self) -> Option<&Roots> {
        self.roots.as_ref()
    }

    /// The connector to hand the driver.
    pub(crate) fn connector(&self) -> MakeRustlsConnect {
        self.connector.clone()
    }

    /// How connections are made, for messages: `sslmode=verify-full, sslrootcert /etc/ca.pem`.
    pub(crate) fn describe(&self) -> String {
        match &self.roots {
            Some(roots) if self.mode != SslMode::Disable => format!("sslmode={}, {roots}", self.mode),
            _ => format!("sslmode={}", self.mode),
        }
    }
}

/// What the verifier checks.
enum Check {
    Nothing,
    Chain,
    ChainAndName,
}

/// The trusted roots: the file's certificates only, or the system's.
fn load_roots(roots: &Roots) -> Result<RootCertStore, ConfigError> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::File(path) => {
            let pem = std::fs::read(path)
                .map_err(|source| ConfigError::RootCertFile { path: path.clone(), source })?;
            let certificates = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|err| unusable(path, &err.to_string()))?;
            if certificates.is_empty() {
                return Err(unusable(path, "no PEM certificate in it"));
            }
            for certificate in certificates {
                store.add(certificate).map_err(|err| unusable(path, &err.to_string()))?;
            }
        }
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
                return Err(ConfigError::SystemRoots(if why.is_empty() {
                    "the system's trust store is empty".to_owned()
                } else {
                    why.join("; ")
                }));
            }
        }
    }
    Ok(store)
}

fn unusable(path: &Path, reason: &str) -> ConfigError {
    ConfigError::RootCertContent { path: path.to_owned(), reason: reason.to_owned() }
}

/// `prefer`, and `require` without roots: encryption without authentication. The handshake's
/// signatures are still checked, so the peer holds the key of the certificate it shows.
#[derive(Debug)]
struct NoCheck {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NoCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `verify-ca` (and `require` with `sslrootcert`): the chain up to a trusted root, validity dates
/// and purpose included; not the name.
#[derive(Debug)]
struct ChainOnly {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let certificate = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &certificate,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// What a TLS failure means, for the person reading the error: `None` when `err` is not one.
pub(crate) fn explain(err: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    payments_tls::refusal(err).map(|refusal| refusal.explain(payments_tls::Roots::SslRootCert))
}

/// Whether `err` comes from the TLS layer refusing the server (its certificate, the handshake):
/// that does not get better by retrying.
pub(crate) fn is_refused(err: &(dyn std::error::Error + 'static)) -> bool {
    explain(err).is_some()
}
