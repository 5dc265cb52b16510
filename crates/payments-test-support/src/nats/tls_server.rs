//! A `nats-server` of a test's own that speaks TLS only (`--tls`: every client must upgrade, and
//! is not asked for a certificate), with JetStream, beside the shared server (which is never
//! touched): its store and log in a temporary directory, killed and removed when dropped, so the
//! streams a test makes on it go with it.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::tls::{BoxError, ServerCert, TestCa};

/// How long the server may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Where Debian installs `nats-server`, outside an ordinary user's `PATH`.
const SYSTEM_BINARY: &str = "/usr/sbin/nats-server";

/// A running TLS-only NATS server with JetStream. Dropping it kills the server and removes its
/// directory (store and log).
#[derive(Debug)]
pub struct TlsNats {
    child: Child,
    /// Its store and log; removed after the server is killed.
    dir: tempfile::TempDir,
    port: u16,
}

impl TlsNats {
    /// Starts `nats-server -js` on a free port of 127.0.0.1, TLS only, presenting `cert`, and,
    /// when `user` is given as `(name, password)`, admitting that user alone. Returns once the
    /// port accepts connections and the server has said, in its `INFO`, that it requires TLS.
    ///
    /// # Errors
    ///
    /// What failed: no `nats-server` ([`server_binary`]), or the server's own words when it would
    /// not start.
    pub fn start(cert: &ServerCert, user: Option<(&str, &str)>) -> Result<Self, BoxError> {
        let binary = server_binary().ok_or_else(|| {
            format!("no nats-server in PATH or at {SYSTEM_BINARY}; install it (`apt install nats-server`)")
        })?;
        let mut last = String::new();
        // The free port may be taken between finding and binding it: try another.
        for _ in 0..3 {
            let dir = tempfile::Builder::new().prefix("payments-test-nats-").tempdir()?;
            let port = free_port()?;
            let log = dir.path().join("nats-server.log");
            let mut command = Command::new(&binary);
            command
                .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                .arg(dir.path().join("store"))
                .arg("--tls")
                .arg("--tlscert")
                .arg(&cert.cert)
                .arg("--tlskey")
                .arg(&cert.key)
                .arg("-l")
                .arg(&log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            if let Some((name, password)) = user {
                command.args(["--user", name, "--pass", password]);
            }
            let child = command.spawn().map_err(|err| format!("cannot run {}: {err}", binary.display()))?;
            let mut server = Self { child, dir, port };
            match server.wait_listening(&log) {
                Ok(()) => return Ok(server),
                Err(err) => last = err,
            }
        }
        Err(format!("nats-server would not serve TLS: {last}").into())
    }

    /// The TLS port, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `tls://HOST:PORT`: `host` is what the client connects to and what the certificate must
    /// name; credentials and parameters are the caller's to add.
    pub fn url(&self, host: &str) -> String {
        format!("tls://{host}:{}", self.port)
    }

    /// The server's log, for a test that wants to show why the server refused a client.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats-server.log")).unwrap_or_default()
    }

    /// Polls until the port accepts a connection and greets it with an `INFO` that requires TLS,
    /// or the server exits, or the deadline passes.
    fn wait_listening(&mut self, log: &Path) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|err| err.to_string())? {
                let mut stderr = String::new();
                if let Some(mut pipe) = self.child.stderr.take() {
                    let _ = pipe.read_to_string(&mut stderr);
                }
                let log = std::fs::read_to_string(log).unwrap_or_default();
                return Err(format!("nats-server exited ({status}): {stderr}{log}"));
            }
            if let Some(info) = greeting(self.port) {
                return if info.contains("\"tls_required\":true") {
                    Ok(())
                } else {
                    Err(format!("the server on port {} does not require TLS: {info}", self.port))
                };
            }
            if Instant::now() >= deadline {
                return Err(format!("not listening on port {} within {START_TIMEOUT:?}", self.port));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TlsNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        // Reaped before `dir` is removed, as the field drops.
        let _ = self.child.wait();
    }
}

/// The `INFO` line a NATS server sends, in plain text, to a client that connects to `port` (TLS
/// starts after it): `None` when nothing listens there yet, or it says nothing else.
fn greeting(port: u16) -> Option<String> {
    let mut stream =
        std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
            .ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let mut received = Vec::new();
    let mut buffer = [0_u8; 1024];
    while !received.ends_with(b"\r\n") && received.len() < 64 * 1024 {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
        }
    }
    let text = String::from_utf8_lossy(&received).into_owned();
    text.starts_with("INFO ").then_some(text)
}

/// The `nats-server` these helpers run: the first in `PATH`, else Debian's
/// `/usr/sbin/nats-server`; `None` when there is neither.
pub fn server_binary() -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("nats-server"))
        .chain(std::iter::once(PathBuf::from(SYSTEM_BINARY)))
        .find(|path| is_executable(path))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Whether this machine can run a [`TlsNats`]: starts one with a throwaway CA, and stops it. The
/// gate for tests that need it.
///
/// # Errors
///
/// Why not: no `nats-server`, or its own words when it would not start.
pub fn tls_available() -> Result<(), String> {
    let ca = TestCa::new("payments test CA (probe)").map_err(|err| err.to_string())?;
    let cert = ca.issue(&["127.0.0.1"]).map_err(|err| err.to_string())?;
    TlsNats::start(&cert, None).map(drop).map_err(|err| err.to_string())
}

/// A port of 127.0.0.1 that nothing listens on, as of now.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}
