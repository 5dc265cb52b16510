//! A PostgreSQL cluster of a test's own, beside the shared server (which is never touched):
//! `initdb` into a temporary directory, started by `pg_ctl` on a free port with or without TLS,
//! trust authentication; stopped (`-m immediate`) and removed when dropped, so a failed test
//! leaves nothing running or on disk.
//!
//! PostgreSQL refuses to run as root: when the tests do, `initdb`, `pg_ctl` and the server run as
//! the `postgres` user (`runuser`), in a directory it owns.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::tls::{BoxError, ServerCert};

/// The environment variable that names the directory of `initdb` and `pg_ctl`, when they are not
/// in the newest `/usr/lib/postgresql/*/bin` (nor on `PATH`).
pub const BIN_ENV: &str = "PAYMENTS_TEST_POSTGRES_BIN";

/// The user the server runs as when the tests run as root.
const SERVER_USER: &str = "postgres";

/// How long starting or stopping may take.
const PG_CTL_TIMEOUT: Duration = Duration::from_secs(60);

/// The directory holding `initdb` and `pg_ctl`: `$PAYMENTS_TEST_POSTGRES_BIN`, the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian's layout), or the directory of `initdb` on `PATH`.
///
/// # Errors
///
/// Where it looked, when none has both programs.
pub fn bin_dir() -> Result<PathBuf, String> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Ok(dir) = std::env::var(BIN_ENV) {
        let dir = PathBuf::from(dir);
        return if has_both(&dir) {
            Ok(dir)
        } else {
            Err(format!("${BIN_ENV} ({}) has no initdb and pg_ctl", dir.display()))
        };
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| has_both(bin))
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .find(|dir| has_both(dir))
        .ok_or_else(|| {
            format!(
                "no initdb and pg_ctl in /usr/lib/postgresql/*/bin or on PATH (`apt install postgresql`, or set {BIN_ENV})"
            )
        })
}

/// Whether a cluster of a test's own can be made here: the programs exist and, as root, the
/// `postgres` user and `runuser` too. The gate for tests that need one.
///
/// # Errors
///
/// Why not, and what to do.
pub fn available() -> Result<(), String> {
    bin_dir()?;
    if is_root() {
        server_user_ids().map_err(|err| format!("running as root, but {err}"))?;
        if Command::new("runuser").arg("--help").output().is_err() {
            return Err("running as root, but there is no runuser to start PostgreSQL as postgres".to_owned());
        }
    }
    Ok(())
}

/// Whether this process runs as root: `/proc/self` belongs to the process's user (no libc call,
/// so no `unsafe`); `id -u` where there is no `/proc`.
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata("/proc/self") {
        Ok(meta) => meta.uid() == 0,
        Err(_) => Command::new("id").arg("-u").output().is_ok_and(|out| out.stdout.trim_ascii() == b"0"),
    }
}

/// The `postgres` user's uid and gid.
fn server_user_ids() -> Result<(u32, u32), String> {
    let id = |flag: &str| -> Result<u32, String> {
        let out =
            Command::new("id").arg(flag).arg(SERVER_USER).output().map_err(|err| format!("id: {err}"))?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| format!("there is no `{SERVER_USER}` user to run PostgreSQL as"))
    };
    Ok((id("-u")?, id("-g")?))
}

/// A running cluster of a test's own. Dropping it stops the server and removes its directory.
#[derive(Debug)]
pub struct TestCluster {
    /// The cluster's directory: its data, certificate, key, socket and log.
    path: PathBuf,
    /// Removes `path` when dropped, after the server is stopped (fields drop after `Drop::drop`);
    /// taken by [`TestCluster::stop`] to report a failed removal.
    dir: Option<tempfile::TempDir>,
    bin: PathBuf,
    /// `Some(uid, gid)` of the user the server runs as, when this process is root.
    run_as: Option<(u32, u32)>,
    port: u16,
    running: bool,
}

impl TestCluster {
    /// Creates a cluster in a new temporary directory and starts it on a free port of
    /// 127.0.0.1, with `ssl = on` and `cert`'s certificate and key when `cert` is given, and
    /// `ssl = off` otherwise. Trust authentication for user `postgres`, database `postgres`.
    ///
    /// # Errors
    ///
    /// What failed, with the server's log when it would not start.
    pub fn start(cert: Option<&ServerCert>) -> Result<Self, BoxError> {
        let bin = bin_dir()?;
        let run_as = if is_root() { Some(server_user_ids()?) } else { None };
        let dir = tempfile::Builder::new().prefix("payments-test-pg-").tempdir()?;
        let mut cluster =
            Self { path: dir.path().to_owned(), dir: Some(dir), bin, run_as, port: 0, running: false };
        cluster.chown(&cluster.path)?;
        cluster.init(cert)?;
        // The free port is found by binding it and letting it go: another process may take it in
        // between, so a start that fails to bind tries another.
        let mut last = String::new();
        for _ in 0..3 {
            cluster.port = free_port()?;
            match cluster.pg_ctl_start() {
                Ok(()) => {
                    cluster.running = true;
                    return Ok(cluster);
                }
                Err(err) => last = err,
            }
        }
        Err(format!("PostgreSQL would not start in {}: {last}", cluster.path.display()).into())
    }

    /// The port it listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@<host>:<port>/postgres`: `host` is what the client resolves and,
    /// under `verify-full`, what the certificate must name (`localhost` and `127.0.0.1` both
    /// reach the cluster).
    pub fn url(&self, host: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres", self.port)
    }

    /// Stops the server and removes the cluster.
    ///
    /// # Errors
    ///
    /// When the server could not be stopped (it is then killed) or the directory removed.
    pub fn stop(mut self) -> Result<(), BoxError> {
        let stopped = self.shut_down();
        if let Some(dir) = self.dir.take() {
            dir.close()?;
        }
        stopped.map_err(Into::into)
    }

    fn data(&self) -> PathBuf {
        self.path.join("data")
    }

    fn chown(&self, path: &Path) -> std::io::Result<()> {
        match self.run_as {
            Some((uid, gid)) => std::os::unix::fs::chown(path, Some(uid), Some(gid)),
            None => Ok(()),
        }
    }

    /// Runs one of the server's programs, as the server's user.
    fn run(&self, program: &str, args: &[&str]) -> Result<Output, String> {
        let path = self.bin.join(program);
        let mut command = if self.run_as.is_some() {
            let mut command = Command::new("runuser");
            command.args(["-u", SERVER_USER, "--"]).arg(&path);
            command
        } else {
            Command::new(&path)
        };
        command.args(args).current_dir(&self.path);
        command.output().map_err(|err| format!("cannot run {}: {err}", path.display()))
    }

    fn init(&self, cert: Option<&ServerCert>) -> Result<(), BoxError> {
        let data = self.data();
        let data_arg = data.to_string_lossy();
        let out = self.run(
            "initdb",
            &[
                "-D",
                &data_arg,
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "-N",
                "--no-instructions",
            ],
        )?;
        if !out.status.success() {
            return Err(format!("initdb failed: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        let dir = self.path.display();
        let mut settings = format!(
            "\n# payments-test-support\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{dir}'\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 40\n\
             shared_buffers = 16MB\n"
        );
        match cert {
            Some(cert) => {
                // The server reads its key only if no one else can: copies it owns, mode 0600.
                let (crt, key) = (self.path.join("server.crt"), self.path.join("server.key"));
                std::fs::copy(&cert.cert, &crt)?;
                crate::tls::write_private(&key, &std::fs::read(&cert.key)?)?;
                self.chown(&crt)?;
                self.chown(&key)?;
                settings.push_str(&format!(
                    "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
                    crt.display(),
                    key.display()
                ));
            }
            None => settings.push_str("ssl = off\n"),
        }
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf)?;
        text.push_str(&settings);
        std::fs::write(&conf, text)?;
        Ok(())
    }

    /// `pg_ctl start -w`: returns once the server accepts connections (pg_ctl polls it), or
    /// with the log when it gave up.
    fn pg_ctl_start(&self) -> Result<(), String> {
        let (data, log) = (self.data(), self.path.join("server.log"));
        let port = format!("-p {}", self.port);
        let timeout = PG_CTL_TIMEOUT.as_secs().to_string();
        let out = self.run(
            "pg_ctl",
            &[
                "-D",
                &data.to_string_lossy(),
                "-l",
                &log.to_string_lossy(),
                "-o",
                &port,
                "-w",
                "-t",
                &timeout,
                "-s",
                "start",
            ],
        )?;
        if out.status.success() {
            return Ok(());
        }
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        // A server that did start but was not seen ready must not be left behind.
        let _ = self.run("pg_ctl", &["-D", &data.to_string_lossy(), "-m", "immediate", "-w", "-s", "stop"]);
        Err(format!("pg_ctl start: {}{log}", String::from_utf8_lossy(&out.stderr)))
    }

    /// Stops the server: `pg_ctl stop -m immediate`, or, if that fails, SIGKILL to the postmaster.
    fn shut_down(&mut self) -> Result<(), String> {
        if !std::mem::take(&mut self.running) {
            return Ok(());
        }
        let data = self.data();
        let timeout = PG_CTL_TIMEOUT.as_secs().to_string();
        let out = self.run(
            "pg_ctl",
            &["-D", &data.to_string_lossy(), "-m", "immediate", "-w", "-t", &timeout, "-s", "stop"],
        );
        match out {
            Ok(out) if out.status.success() => Ok(()),
            other => {
                let why = match other {
                    Ok(out) => String::from_utf8_lossy(&out.stderr).into_owned(),
                    Err(err) => err,
                };
                let pid = std::fs::read_to_string(data.join("postmaster.pid"))
                    .ok()
                    .and_then(|text| text.lines().next().map(str::to_owned));
                if let Some(pid) = pid {
                    let _ = Command::new("kill").args(["-KILL", &pid]).status();
                }
                Err(format!("pg_ctl stop failed ({why}); the postmaster was killed"))
            }
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let _ = self.shut_down();
    }
}

/// A port of 127.0.0.1 that nothing listens on, as of now.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}
