//! A certificate authority of a test's own, and the server certificates it signs, as PEM files in
//! a temporary directory that is removed when the authority is dropped: for tests that start TLS
//! servers ([`crate::postgres::TestCluster`], [`crate::redis::TlsRedis`],
//! [`crate::nats::TlsNats`], [`crate::rabbitmq::TlsRabbit`]) and connect to them with the right
//! CA, another CA, or the wrong host name.
//!
//! Keys are ECDSA P-256 (rcgen with ring); certificates keep rcgen's validity (1975 to 4096), so
//! that no clock fails a test.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// An error of the helpers.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A CA of a test's own: its certificate in `ca.pem`, and what it needs to sign server
/// certificates. Everything is written under a temporary directory removed on drop.
pub struct TestCa {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
    cert: PathBuf,
    issued: AtomicU32,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").field("cert", &self.cert).finish_non_exhaustive()
    }
}

/// A server certificate and its key, as PEM files in the directory of the [`TestCa`] that issued
/// it (so they live as long as it does).
#[derive(Clone, Debug)]
pub struct ServerCert {
    /// The certificate (the server's alone; the CA is the root).
    pub cert: PathBuf,
    /// Its private key (PKCS#8), readable by this process's user only.
    pub key: PathBuf,
    /// The names it was issued for.
    pub names: Vec<String>,
}

impl TestCa {
    /// A new CA named `name` (its common name), with its certificate written to
    /// [`cert_path`](Self::cert_path).
    ///
    /// # Errors
    ///
    /// When the key cannot be made or the files cannot be written.
    pub fn new(name: &str) -> Result<Self, BoxError> {
        let dir = tempfile::Builder::new().prefix("payments-test-ca-").tempdir()?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let certificate = params.self_signed(&key)?;
        let cert = dir.path().join("ca.pem");
        std::fs::write(&cert, certificate.pem())?;
        Ok(Self { dir, issuer: Issuer::new(params, key), cert, issued: AtomicU32::new(0) })
    }

    /// The CA's certificate, PEM: what a client given this CA trusts.
    pub fn cert_path(&self) -> &Path {
        &self.cert
    }

    /// The directory the CA writes to (removed with it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Signs a server certificate for `names` (host names, or IP addresses such as `127.0.0.1`,
    /// which become IP subject alternative names), and writes it and its key beside the CA.
    ///
    /// # Errors
    ///
    /// When a name is not valid, or the files cannot be written.
    pub fn issue(&self, names: &[&str]) -> Result<ServerCert, BoxError> {
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.clone())?;
        params.distinguished_name.push(DnType::CommonName, names.first().map_or("server", String::as_str));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let certificate = params.signed_by(&key, &self.issuer)?;
        let cert = self.dir.path().join(format!("server-{n}.pem"));
        let key_path = self.dir.path().join(format!("server-{n}.key"));
        std::fs::write(&cert, certificate.pem())?;
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        Ok(ServerCert { cert, key: key_path, names })
    }
}

/// Writes `contents` to a new file that only its owner may read (servers refuse a key others can).
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_writes_its_certificate_and_issues_server_certificates_beside_it() {
        let ca = TestCa::new("payments test CA").expect("a CA");
        let pem = std::fs::read_to_string(ca.cert_path()).expect("ca.pem");
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
        let server = ca.issue(&["localhost", "127.0.0.1"]).expect("a certificate");
        let other = ca.issue(&["other.invalid"]).expect("another");
        assert_ne!(server.cert, other.cert);
        assert!(server.cert.starts_with(ca.dir()) && server.key.starts_with(ca.dir()));
        assert!(std::fs::read_to_string(&server.key).expect("key").contains("PRIVATE KEY"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&server.key).expect("key").permissions().mode();
        assert_eq!(mode & 0o077, 0, "the key is its owner's only: {mode:o}");
        let dir = ca.dir().to_owned();
        drop(ca);
        assert!(!dir.exists(), "the CA's directory is removed with it");
    }
}
