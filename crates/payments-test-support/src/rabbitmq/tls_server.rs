//! A RabbitMQ node of a test's own that speaks TLS only (`listeners.tcp = none`, a TLS listener on
//! a free port of 127.0.0.1, no client certificate asked for), beside the shared node, which is
//! never touched: another node name (`payments-tls-<pid>-<n>@localhost`), its own distribution
//! port, and everything it writes (database, logs, plugins file, Erlang cookie) in a temporary
//! directory. Dropping it kills the node and removes the directory, so the queues a test makes on
//! it go with it.
//!
//! The node runs `rabbitmq-server` in the foreground as a child of the test, in a process group
//! of its own: Debian's `rabbitmq-server` is a wrapper that would switch to the `rabbitmq` user
//! (who cannot read the test's directory), so the script behind it is run directly, as the test's
//! own user. Its `HOME` is the temporary directory, where Erlang makes a cookie of its own: the
//! node never joins, and cannot be reached by, the shared node's cluster.

use std::fmt::Write as _;
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ::lapin::tcp::{AsyncTcpStream, RustlsConnectorConfig};
use ::lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use ::lapin::{Connection, ConnectionProperties};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

use crate::tls::{BoxError, ServerCert, TestCa};

/// How long the node may take to serve TLS: a RabbitMQ node boots in about 5 s, more on a busy
/// machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Debian's `rabbitmq-server` behind its wrapper (`/usr/sbin/rabbitmq-server`), which runs it as
/// the `rabbitmq` user.
const DEBIAN_SCRIPT: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

/// A running TLS-only RabbitMQ node of a test's own. Dropping it kills the node (its whole
/// process group) and removes its directory.
#[derive(Debug)]
pub struct TlsRabbit {
    child: Child,
    /// Its database, logs and configuration; removed after the node is killed.
    dir: tempfile::TempDir,
    port: u16,
    node: String,
}

impl TlsRabbit {
    /// Starts a RabbitMQ node serving AMQP over TLS only, on a free port of 127.0.0.1, presenting
    /// `cert` (issued by `ca`), and, when `user` is given as `(name, password)`, with that user
    /// alone (full rights on the virtual host `/`; the password must fit on one line of
    /// `rabbitmq.conf`), else with `guest`/`guest`. Returns once a client that trusts only `ca`
    /// completes a TLS handshake for `cert`'s first name and logs in as that user, over AMQP.
    ///
    /// It runs a runtime of its own to check that: call it outside any async context.
    ///
    /// # Errors
    ///
    /// What failed: no `rabbitmq-server` ([`server_binary`]), or the node's own words (its
    /// console and log) when it would not start or serve TLS within 60 s.
    pub fn start(ca: &TestCa, cert: &ServerCert, user: Option<(&str, &str)>) -> Result<Self, BoxError> {
        let binary = server_binary().ok_or_else(|| {
            format!(
                "no rabbitmq-server at {DEBIAN_SCRIPT} or in PATH; install it (`apt install rabbitmq-server`)"
            )
        })?;
        let (name, password) = user.unwrap_or(("guest", "guest"));
        let domain = cert.names.first().ok_or("the certificate names no host")?.clone();
        let ca_pem = std::fs::read(ca.cert_path())?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let mut last = String::new();
        // A free port may be taken between finding and binding it (the node exits): try others.
        for _ in 0..3 {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let node = format!(
                "payments-tls-{}-{}@localhost",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            let dir = tempfile::Builder::new().prefix("payments-test-rabbitmq-").tempdir()?;
            let port = free_port()?;
            let config = NodeConfig { dir: dir.path(), port, ca: ca.cert_path(), cert, user };
            let child = config.spawn(&binary, &node)?;
            let mut server = Self { child, dir, port, node };
            let probe = |port| probe(port, &ca_pem, &domain, (name, password));
            match server.wait_serving(&runtime, probe) {
                Ok(()) => return Ok(server),
                // A node still running did not fail for a port: another would not do better.
                Err(err) if matches!(server.child.try_wait(), Ok(None)) => {
                    return Err(format!("the RabbitMQ node would not serve TLS: {err}").into());
                }
                Err(err) => last = err,
            }
        }
        Err(format!("the RabbitMQ node would not serve TLS: {last}").into())
    }

    /// The TLS port, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The node's name, `payments-tls-<pid>-<n>@localhost`.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// `amqps://HOST:PORT/%2f`: `host` is what the client connects to and what the certificate
    /// must name; credentials and parameters are the caller's to add.
    pub fn url(&self, host: &str) -> String {
        format!("amqps://{host}:{}/%2f", self.port)
    }

    /// The node's console output and log, for a test that wants to show why it refused a client.
    pub fn log(&self) -> String {
        node_output(self.dir.path(), &self.node)
    }

    /// Polls until `probe` (a TLS handshake and an AMQP login) works, or the node exits, or the
    /// deadline passes.
    fn wait_serving<F, Fut>(&mut self, runtime: &tokio::runtime::Runtime, probe: F) -> Result<(), String>
    where
        F: Fn(u16) -> Fut,
        Fut: Future<Output = Result<(), BoxError>>,
    {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last = "nothing listens yet".to_owned();
        loop {
            if let Some(status) = self.child.try_wait().map_err(|err| err.to_string())? {
                return Err(format!("{} exited ({status}): {}", self.node, self.log()));
            }
            let address = SocketAddr::from(([127, 0, 0, 1], self.port));
            if std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                match runtime
                    .block_on(async { tokio::time::timeout(Duration::from_secs(10), probe(self.port)).await })
                {
                    Ok(Ok(())) => return Ok(()),
                    Ok(Err(err)) => last = err.to_string(),
                    Err(_) => last = "no answer to the TLS probe within 10 s".to_owned(),
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} not serving TLS on port {} within {START_TIMEOUT:?} ({last}): {}",
                    self.node,
                    self.port,
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for TlsRabbit {
    fn drop(&mut self) {
        // The whole group: the VM and its helpers (erl_child_setup, inet_gethost).
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{}", self.child.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        // Reaped before `dir` is removed, as the field drops.
        let _ = self.child.wait();
    }
}

/// What a node is started with.
struct NodeConfig<'a> {
    dir: &'a Path,
    port: u16,
    ca: &'a Path,
    cert: &'a ServerCert,
    user: Option<(&'a str, &'a str)>,
}

impl NodeConfig<'_> {
    /// Writes the node's files into `dir` and starts it, in the foreground, in a process group of
    /// its own, its console output in `dir/console.log`.
    fn spawn(&self, binary: &Path, node: &str) -> Result<Child, BoxError> {
        let dir = self.dir;
        let mut conf = String::new();
        // TLS only: no plain-text listener at all.
        writeln!(conf, "listeners.tcp = none")?;
        writeln!(conf, "listeners.ssl.default = 127.0.0.1:{}", self.port)?;
        writeln!(conf, "ssl_options.cacertfile = {}", self.ca.display())?;
        writeln!(conf, "ssl_options.certfile = {}", self.cert.cert.display())?;
        writeln!(conf, "ssl_options.keyfile = {}", self.cert.key.display())?;
        writeln!(conf, "ssl_options.verify = verify_none")?;
        writeln!(conf, "ssl_options.fail_if_no_peer_cert = false")?;
        // Clients come from 127.0.0.1, which `guest` may use; another user may too.
        writeln!(conf, "loopback_users = none")?;
        if let Some((name, password)) = self.user {
            writeln!(conf, "default_user = {name}")?;
            writeln!(conf, "default_pass = {password}")?;
        }
        // No disk alarm on a test machine with little room left: the node's data is thrown away.
        writeln!(conf, "disk_free_limit.absolute = 1MB")?;
        std::fs::write(dir.join("rabbitmq.conf"), conf)?;
        // No plugins (no management listener to clash with the shared node's).
        std::fs::write(dir.join("enabled_plugins"), "[].\n")?;
        // Instead of /etc/rabbitmq/rabbitmq-env.conf, which names the shared node.
        std::fs::write(dir.join("rabbitmq-env.conf"), "")?;
        let home = dir.join("home");
        std::fs::create_dir(&home)?;
        let console = std::fs::File::create(dir.join("console.log"))?;

        let mut command = Command::new(binary);
        // Nothing of the caller's RabbitMQ or Erlang settings (a RABBITMQ_NODENAME would name the
        // shared node).
        for (name, _) in std::env::vars_os() {
            let name_text = name.to_string_lossy();
            if name_text.starts_with("RABBITMQ_") || name_text.starts_with("ERL_") || name_text == "NODENAME"
            {
                command.env_remove(&name);
            }
        }
        use std::os::unix::process::CommandExt as _;
        command
            .current_dir(dir)
            .env("HOME", &home)
            .env("RABBITMQ_NODENAME", node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            // Unused (`listeners.tcp = none`), but never the shared node's 5672.
            .env("RABBITMQ_NODE_PORT", free_port()?.to_string())
            .env("RABBITMQ_DIST_PORT", free_port()?.to_string())
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", "-kernel inet_dist_use_interface {127,0,0,1}")
            // The script's own switch to `exec` the VM rather than wait for it in a shell: the
            // child is the VM itself, killed and reaped by `Drop`.
            .env("RUNNING_UNDER_SYSTEMD", "true")
            .stdin(Stdio::null())
            .stdout(console.try_clone()?)
            .stderr(console)
            .process_group(0);
        Ok(command.spawn().map_err(|err| format!("cannot run {}: {err}", binary.display()))?)
    }
}

/// The node's console output, then the end of its log.
fn node_output(dir: &Path, node: &str) -> String {
    let console = std::fs::read_to_string(dir.join("console.log")).unwrap_or_default();
    let mut log = String::new();
    if let Ok(mut file) = std::fs::File::open(dir.join("log").join(format!("{node}.log"))) {
        let _ = file.read_to_string(&mut log);
    }
    let tail: String =
        log.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    format!("{console}\n{tail}")
}

/// A TLS handshake with 127.0.0.1:`port`, trusting only the certificates of `ca_pem` and
/// expecting one for `domain`, then an AMQP login as `user`.
async fn probe(port: u16, ca_pem: &[u8], domain: &str, user: (&str, &str)) -> Result<(), BoxError> {
    let roots: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(ca_pem).collect::<Result<_, _>>()?;
    let connector =
        RustlsConnectorConfig::default().with_parsable_certificates(roots).connector_with_no_client_auth()?;
    let uri = AMQPUri {
        scheme: AMQPScheme::AMQPS,
        authority: AMQPAuthority {
            userinfo: AMQPUserInfo { username: user.0.to_owned(), password: user.1.to_owned() },
            host: domain.to_owned(),
            port,
        },
        vhost: "/".to_owned(),
        query: AMQPQueryString::default(),
    };
    let domain = domain.to_owned();
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let connection = Connection::connector(
        uri,
        ::lapin::runtime::default_runtime()?,
        async move |_uri, runtime| {
            let stream = AsyncTcpStream::connect(&runtime, address).await?;
            Ok(stream.into_rustls(&connector, &domain).await?)
        },
        ConnectionProperties::default().with_connection_name("payments-test-support-probe".into()),
    )
    .await?;
    let _ = connection.close(200, "serving".into()).await;
    Ok(())
}

/// The `rabbitmq-server` these helpers run: Debian's script behind its wrapper, else the first in
/// `PATH` that is not that wrapper; `None` when there is neither.
pub fn server_binary() -> Option<PathBuf> {
    std::iter::once(PathBuf::from(DEBIAN_SCRIPT))
        .chain(
            std::env::var_os("PATH")
                .iter()
                .flat_map(std::env::split_paths)
                .map(|dir| dir.join("rabbitmq-server")),
        )
        .filter(|path| is_executable(path))
        .find(|path| std::fs::canonicalize(path).is_ok_and(|real| !real.ends_with("rabbitmq-script-wrapper")))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Whether this machine can run a [`TlsRabbit`]: starts one with a throwaway CA, and stops it. The
/// gate for tests that need it.
///
/// # Errors
///
/// Why not: no `rabbitmq-server`, or the node's own words when it would not start.
pub fn tls_available() -> Result<(), String> {
    let ca = TestCa::new("payments test CA (probe)").map_err(|err| err.to_string())?;
    let cert = ca.issue(&["localhost"]).map_err(|err| err.to_string())?;
    TlsRabbit::start(&ca, &cert, None).map(drop).map_err(|err| err.to_string())
}

/// A port of 127.0.0.1 that nothing listens on, as of now.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}
