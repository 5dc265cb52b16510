//! A `redis-server` of a test's own that speaks TLS only (`--port 0 --tls-port N`), beside the
//! shared server (which is never touched): no persistence, its files in a temporary directory,
//! killed and removed when dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::tls::{BoxError, ServerCert, TestCa};

/// How long the server may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running TLS-only Redis. Dropping it kills the server and removes its directory.
#[derive(Debug)]
pub struct TlsRedis {
    child: Child,
    /// Its log and working directory; removed after the server is killed.
    dir: tempfile::TempDir,
    port: u16,
}

impl TlsRedis {
    /// Starts `redis-server` on a free port of 127.0.0.1, TLS only, presenting `cert` (clients
    /// are not asked for certificates: `ca` is only what the server would check them against),
    /// with `requirepass password` when given. Returns once the port accepts connections.
    ///
    /// # Errors
    ///
    /// What failed, with the server's log when it would not start (a build without TLS says so
    /// there).
    pub fn start(cert: &ServerCert, ca: &TestCa, password: Option<&str>) -> Result<Self, BoxError> {
        let mut last = String::new();
        // The free port may be taken between finding and binding it: try another.
        for _ in 0..3 {
            let dir = tempfile::Builder::new().prefix("payments-test-redis-").tempdir()?;
            let port = free_port()?;
            let log = dir.path().join("redis.log");
            let mut command = Command::new("redis-server");
            command
                .args(["--port", "0", "--bind", "127.0.0.1", "--tls-port", &port.to_string()])
                .arg("--tls-cert-file")
                .arg(&cert.cert)
                .arg("--tls-key-file")
                .arg(&cert.key)
                .arg("--tls-ca-cert-file")
                .arg(ca.cert_path())
                .args(["--tls-auth-clients", "no", "--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(dir.path())
                .arg("--logfile")
                .arg(&log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            if let Some(password) = password {
                command.args(["--requirepass", password]);
            }
            let child = command.spawn().map_err(|err| format!("cannot run redis-server: {err}"))?;
            let mut server = Self { child, dir, port };
            match server.wait_listening(&log) {
                Ok(()) => return Ok(server),
                Err(err) => last = err,
            }
        }
        Err(format!("redis-server would not serve TLS: {last}").into())
    }

    /// The TLS port, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log, for a test that wants to show why the server refused a client.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// `rediss://[:PASSWORD@]HOST:PORT`: `host` is what the client connects to and what the
    /// certificate must name.
    pub fn url(&self, host: &str, password: Option<&str>) -> String {
        match password {
            Some(password) => format!("rediss://:{password}@{host}:{}", self.port),
            None => format!("rediss://{host}:{}", self.port),
        }
    }

    /// Polls until the port accepts a connection, the server exits, or the deadline passes.
    fn wait_listening(&mut self, log: &Path) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|err| err.to_string())? {
                let mut stderr = String::new();
                if let Some(mut pipe) = self.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
                }
                let log = std::fs::read_to_string(log).unwrap_or_default();
                return Err(format!("redis-server exited ({status}): {stderr}{log}"));
            }
            if std::net::TcpStream::connect_timeout(
                &([127, 0, 0, 1], self.port).into(),
                Duration::from_millis(200),
            )
            .is_ok()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("not listening on port {} within {START_TIMEOUT:?}", self.port));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        // Reaped before `dir` is removed, as the field drops.
        let _ = self.child.wait();
    }
}

/// Whether this machine's `redis-server` can serve TLS: starts one with a throwaway CA, and stops
/// it. The gate for tests that need [`TlsRedis`].
///
/// # Errors
///
/// Why not: no `redis-server`, or a build without TLS (its own words).
pub fn tls_available() -> Result<(), String> {
    let ca = TestCa::new("payments test CA (probe)").map_err(|err| err.to_string())?;
    let cert = ca.issue(&["127.0.0.1"]).map_err(|err| err.to_string())?;
    TlsRedis::start(&cert, &ca, None).map(drop).map_err(|err| err.to_string())
}

/// A port of 127.0.0.1 that nothing listens on, as of now.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}
