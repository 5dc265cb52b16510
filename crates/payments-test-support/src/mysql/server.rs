//! A MariaDB server of a test's own, beside the shared one (which is never touched):
//! `mariadb-install-db` into a temporary directory, `mariadbd` on a free port of 127.0.0.1 with
//! or without TLS, `root` without a password, and a database `payments`; killed and removed when
//! dropped, so a failed test leaves nothing running or on disk. About four seconds to start.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::tls::{BoxError, ServerCert};

/// How long the server may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Small InnoDB files and buffers: the server holds a handful of rows.
const SMALL: &[&str] = &["--innodb-log-file-size=4M", "--innodb-buffer-pool-size=16M", "--skip-name-resolve"];

/// The programs: `mariadb-install-db` (or `mysql_install_db`) and `mariadbd`, on `PATH` or in
/// Debian's places.
fn programs() -> Result<(PathBuf, PathBuf), String> {
    let find = |names: &[&str], dirs: &[&str]| {
        let path: Vec<PathBuf> = std::env::var_os("PATH").iter().flat_map(std::env::split_paths).collect();
        names.iter().find_map(|name| {
            path.iter()
                .map(PathBuf::as_path)
                .chain(dirs.iter().map(Path::new))
                .map(|dir| dir.join(name))
                .find(|candidate| candidate.is_file())
        })
    };
    let install = find(&["mariadb-install-db", "mysql_install_db"], &["/usr/bin"])
        .ok_or("no mariadb-install-db (`apt install mariadb-server`)")?;
    let server =
        find(&["mariadbd", "mysqld"], &["/usr/sbin"]).ok_or("no mariadbd (`apt install mariadb-server`)")?;
    Ok((install, server))
}

/// Whether a MariaDB server of a test's own can be started here: the gate for tests that need
/// [`TestServer`].
///
/// # Errors
///
/// Why not, and what to do.
pub fn available() -> Result<(), String> {
    programs().map(drop)
}

/// Whether this process runs as root, which `mariadbd` accepts only when told `--user=root`.
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

/// A running MariaDB of a test's own. Dropping it kills the server and removes its files.
#[derive(Debug)]
pub struct TestServer {
    child: Child,
    /// Data, certificate, socket and log; removed after the server is killed.
    dir: tempfile::TempDir,
    port: u16,
}

impl TestServer {
    /// Installs a new data directory and starts `mariadbd` on it, on a free port of 127.0.0.1,
    /// presenting `cert` over TLS when given (and without TLS otherwise).
    ///
    /// # Errors
    ///
    /// What failed, with the server's log when it would not start.
    pub fn start(cert: Option<&ServerCert>) -> Result<Self, BoxError> {
        let (install, server) = programs()?;
        let dir = tempfile::Builder::new().prefix("payments-test-mariadb-").tempdir()?;
        let data = dir.path().join("data");
        // Temporary tables of its own: servers started at the same time collide in /tmp.
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp)?;
        let tmpdir = format!("--tmpdir={}", tmp.display());
        let user = if is_root() { vec!["--user=root"] } else { Vec::new() };
        let out = Command::new(&install)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args(&user)
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .arg(&tmpdir)
            .args(SMALL)
            .output()
            .map_err(|err| format!("cannot run {}: {err}", install.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} failed: {}{}",
                install.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        let init = dir.path().join("init.sql");
        std::fs::write(&init, "CREATE DATABASE IF NOT EXISTS payments;\n")?;
        let mut last = String::new();
        // The free port may be taken between finding and binding it: try another.
        for _ in 0..3 {
            let port = free_port()?;
            let log = dir.path().join(format!("error-{port}.log"));
            let mut command = Command::new(&server);
            command
                .arg("--no-defaults")
                .args(&user)
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--socket={}", dir.path().join("mysqld.sock").display()))
                .arg(format!("--pid-file={}", dir.path().join("mysqld.pid").display()))
                .arg(format!("--log-error={}", log.display()))
                .arg(format!("--init-file={}", init.display()))
                .args(["--bind-address=127.0.0.1", "--skip-log-bin", "--innodb-flush-log-at-trx-commit=0"])
                .arg(format!("--port={port}"))
                .arg(&tmpdir)
                .args(SMALL)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if let Some(cert) = cert {
                command.arg(format!("--ssl-cert={}", cert.cert.display()));
                command.arg(format!("--ssl-key={}", cert.key.display()));
            }
            let mut child =
                command.spawn().map_err(|err| format!("cannot run {}: {err}", server.display()))?;
            match wait_listening(&mut child, port, &log) {
                Ok(()) => return Ok(Self { child, dir, port }),
                Err(err) => {
                    last = err;
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        Err(format!("mariadbd would not start: {last}").into())
    }

    /// The port it listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's error log, for a test that wants to show why the server refused a client.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("error-{}.log", self.port))).unwrap_or_default()
    }

    /// `mysql://root@<host>:<port>/payments`: `host` is what the client connects to and, under
    /// `VERIFY_IDENTITY`, what the certificate must name.
    pub fn url(&self, host: &str) -> String {
        format!("mysql://root@{host}:{}/payments", self.port)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // A throwaway: SIGKILL, and reaped before the directory is removed (as the field drops).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls until `port` accepts a connection, the server exits, or the deadline passes.
fn wait_listening(child: &mut Child, port: u16, log: &Path) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().map_err(|err| err.to_string())? {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!("mariadbd exited ({status}): {log}"));
        }
        let address = ([127, 0, 0, 1], port).into();
        if std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("not listening on port {port} within {START_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port of 127.0.0.1 that nothing listens on, as of now.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}
