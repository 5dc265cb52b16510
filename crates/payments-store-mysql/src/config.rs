//! How to reach the database: [`MysqlConfig`], parsed from a `mysql://` URL, and what can be wrong
//! with one ([`ConfigError`]).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mysql_async::{Opts, OptsBuilder, PoolConstraints};

use crate::tls::{SslMode, Tls};

/// The form every MySQL URL takes, for error messages.
const URL_FORM: &str = "mysql://USER[:PASS]@HOST:PORT/DB";

/// The settings every connection of the store runs when it is opened (and again after a
/// `reset_connection`), whatever the server's defaults are.
///
/// - `sql_mode`: strict, so that a value the schema cannot hold (a too-long ID, a negative
///   amount) is an error and never a silent truncation or clipping; `STRICT_ALL_TABLES` covers
///   every engine, `NO_ENGINE_SUBSTITUTION` refuses to create the table on anything but InnoDB.
///   The list is the same on MySQL and MariaDB (no `NO_AUTO_CREATE_USER`, which MySQL 8 rejects).
/// - READ COMMITTED: a read sees what is committed when it starts, and inserts take fewer gap
///   locks, so concurrent batches wait on each other less (the duplicate check still locks).
/// - `time_zone`: `recorded_at` is UTC whatever the server's zone.
fn session_setup(lock_wait_timeout: Duration) -> Vec<String> {
    let seconds = lock_wait_timeout.as_secs().max(1);
    vec![
        "SET SESSION sql_mode = 'STRICT_ALL_TABLES,STRICT_TRANS_TABLES,ERROR_FOR_DIVISION_BY_ZERO,\
         NO_ZERO_DATE,NO_ZERO_IN_DATE,NO_ENGINE_SUBSTITUTION', time_zone = '+00:00'"
            .to_owned(),
        // Below the call timeout, so that the server gives up on a statement stuck behind a lock
        // (and rolls it back) before the client does; `lock_wait_timeout` bounds metadata locks
        // (a `LOCK TABLES`, a DDL), which would otherwise wait a year.
        format!("SET SESSION innodb_lock_wait_timeout = {seconds}, lock_wait_timeout = {seconds}"),
        "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED".to_owned(),
    ]
}

/// What is wrong with a MySQL URL or a setting. Never shows the password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Not a URL at all.
    #[error("invalid MySQL URL: {0}")]
    Url(url::ParseError),
    /// A URL, but not a `mysql://` one.
    #[error("unsupported URL scheme {0:?}: a MySQL URL is {URL_FORM}")]
    Scheme(String),
    /// The URL has no host, or more than one path segment.
    #[error("incomplete MySQL URL: {0}; the form is {URL_FORM}")]
    Incomplete(&'static str),
    /// The URL names no database.
    #[error("the MySQL URL names no database: the form is {URL_FORM}")]
    NoDatabase,
    /// The database name is not a plain identifier.
    #[error("invalid database name {0:?}: use 1 to 64 ASCII letters, digits or underscores")]
    DatabaseName(String),
    /// A parameter of this adapter has a value it cannot use.
    #[error("invalid value {value:?} for URL parameter `{name}`: expected {expected}")]
    Parameter {
        /// The parameter.
        name: String,
        /// The value given.
        value: String,
        /// What would have been accepted.
        expected: &'static str,
    },
    /// A parameter of the driver that this adapter cannot work with.
    #[error("URL parameter `{name}={value}` is not supported: {reason}")]
    Unsupported {
        /// The parameter.
        name: String,
        /// The value given.
        value: String,
        /// Why the store cannot work with it.
        reason: &'static str,
    },
    /// The driver refused one of its own parameters.
    #[error("the MySQL driver refused the URL: {0}")]
    Driver(mysql_async::UrlError),
    /// `ssl-mode` has a value MySQL does not know.
    #[error(
        "unsupported ssl-mode {0:?} in the MySQL URL: use DISABLED, PREFERRED, REQUIRED or VERIFY_IDENTITY"
    )]
    SslMode(String),
    /// The `ssl-ca` file cannot be read.
    #[error("cannot read ssl-ca {}", path.display())]
    SslCaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The `ssl-ca` file holds no CA certificate that can be used.
    #[error("ssl-ca {} holds no usable CA certificate: {reason}", path.display())]
    SslCaContent {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// `VERIFY_IDENTITY` without `ssl-ca`, and no root certificate in the system's store.
    #[error("no system root certificates to verify the server with ({0}): give ssl-ca=PATH")]
    SystemRoots(String),
}

/// A database name: 1 to 64 ASCII letters, digits or underscores. Checked, then quoted with
/// backticks wherever it appears in SQL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatabaseName(String);

impl DatabaseName {
    /// Checks `name`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::DatabaseName`] when it is not a plain identifier.
    pub fn new(name: &str) -> Result<Self, ConfigError> {
        let valid = (1..=64).contains(&name.len())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            // An unquoted MySQL identifier may not be all digits; refusing it keeps the name
            // usable in a console without quotes.
            && !name.bytes().all(|b| b.is_ascii_digit());
        if valid { Ok(Self(name.to_owned())) } else { Err(ConfigError::DatabaseName(name.to_owned())) }
    }

    /// The name as it is.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DatabaseName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How to reach the database, and how the store behaves on it.
///
/// Built from a URL with [`MysqlConfig::from_url`], then adjusted with the `with_*` methods:
///
/// ```
/// # use std::time::Duration;
/// # use payments_store_mysql::MysqlConfig;
/// let config = MysqlConfig::from_url("mysql://app:secret@db.internal:3306/payments?connect_timeout=2")?
///     .with_pool_size(32)
///     .with_call_timeout(Duration::from_secs(10));
/// assert_eq!(config.connect_timeout(), Duration::from_secs(2));
/// assert_eq!(config.to_string(), "mysql://app:***@db.internal:3306/payments");
/// # Ok::<(), payments_store_mysql::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct MysqlConfig {
    /// The driver's options from the URL, before this adapter's settings are added.
    opts: Opts,
    database: DatabaseName,
    pool_size: usize,
    call_timeout: Duration,
    connect_timeout: Duration,
    lock_wait_timeout: Duration,
    batches_in_flight: usize,
    max_batch: usize,
    program_name: String,
    reset_connection: bool,
    tls: Tls,
}

impl fmt::Debug for MysqlConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the driver's `Opts`: its derived Debug prints the password.
        f.debug_struct("MysqlConfig")
            .field("host", &self.opts.ip_or_hostname())
            .field("port", &self.opts.tcp_port())
            .field("user", &self.opts.user())
            .field("password", &self.opts.pass().map(|_| "***"))
            .field("database", &self.database)
            .field("pool_size", &self.pool_size)
            .field("call_timeout", &self.call_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("lock_wait_timeout", &self.lock_wait_timeout)
            .field("batches_in_flight", &self.batches_in_flight)
            .field("max_batch", &self.max_batch)
            .field("program_name", &self.program_name)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// The URL without its parameters, the password replaced by `***`: safe for logs.
impl fmt::Display for MysqlConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("mysql://")?;
        if let Some(user) = self.opts.user() {
            f.write_str(user)?;
            if self.opts.pass().is_some() {
                f.write_str(":***")?;
            }
            f.write_str("@")?;
        }
        let host = self.opts.ip_or_hostname();
        if host.contains(':') {
            write!(f, "[{host}]")?;
        } else {
            f.write_str(host)?;
        }
        write!(f, ":{}/{}", self.opts.tcp_port(), self.database)
    }
}

impl MysqlConfig {
    /// The pool size when the URL gives no `pool_max`.
    pub const DEFAULT_POOL_SIZE: usize = 16;
    /// How long a call may take by default.
    pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
    /// How long getting a connection may take when the URL gives no `connect_timeout`.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// How long the server lets a statement wait for a lock by default.
    pub const DEFAULT_LOCK_WAIT_TIMEOUT: Duration = Duration::from_secs(10);

    /// Parses `mysql://USER[:PASS]@HOST:PORT/DB[?PARAMS]`. The path names the database, which
    /// must exist (the store creates its tables, not the database).
    ///
    /// Parameters:
    ///
    /// - `connect_timeout=SECONDS` (this adapter's): how long getting a connection may take,
    ///   connecting included (default 5).
    /// - `ssl-mode` (this adapter's, MySQL's names in any case): `DISABLED`, `PREFERRED` (the
    ///   default), `REQUIRED` or `VERIFY_IDENTITY`; see [`SslMode`]. `VERIFY_CA` is refused: the
    ///   driver cannot skip the host name check.
    /// - `ssl-ca=PATH` (this adapter's, with `ssl-mode=VERIFY_IDENTITY` only): the CA
    ///   certificates (PEM) that are the only trusted roots, instead of the system's. Read here.
    /// - The driver's (mysql_async), passed on as they are: `pool_max` (the pool size, default
    ///   16 here), `pool_min`, `inactive_connection_ttl`, `ttl_check_interval`, `conn_ttl`,
    ///   `abs_conn_ttl`, `abs_conn_ttl_jitter`, `tcp_keepalive`, `tcp_nodelay`,
    ///   `stmt_cache_size`, `prefer_socket`, `socket`, `compression`, `max_allowed_packet`,
    ///   `wait_timeout`, `reset_connection` (default `false` here: the store's sessions hold no
    ///   state to reset, and keeping them keeps their prepared statements), `secure_auth`,
    ///   `enable_cleartext_plugin`. An unknown parameter is an error.
    /// - Refused: `client_found_rows=true` (see [`ConfigError::Unsupported`]: affected rows must
    ///   count changed rows, not found ones), and the driver's own TLS switches (`require_ssl`,
    ///   `verify_ca`, `verify_identity`, `built_in_roots`), which `ssl-mode` replaces.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] saying what is wrong; it never contains the password.
    pub fn from_url(url: &str) -> Result<Self, ConfigError> {
        let mut parsed = url::Url::parse(url).map_err(ConfigError::Url)?;
        if parsed.scheme() != "mysql" {
            return Err(ConfigError::Scheme(parsed.scheme().to_owned()));
        }
        if !parsed.has_host() || parsed.host_str() == Some("") {
            return Err(ConfigError::Incomplete("no host"));
        }
        let database = database_from_path(parsed.path())?;

        let mut connect_timeout = Self::DEFAULT_CONNECT_TIMEOUT;
        let mut pool_size = None;
        let mut reset_connection = false;
        let (mut ssl_mode, mut ssl_ca) = (None, None);
        let mut driver_params = Vec::new();
        for (name, value) in parsed.query_pairs() {
            let (name, value) = (name.into_owned(), value.into_owned());
            match name.as_str() {
                "ssl-mode" => {
                    ssl_mode = Some(value.parse::<SslMode>()?);
                    continue;
                }
                "ssl-ca" => {
                    ssl_ca = Some(PathBuf::from(value));
                    continue;
                }
                "connect_timeout" => {
                    connect_timeout = match value.parse::<u64>() {
                        Ok(seconds) if seconds > 0 => Duration::from_secs(seconds),
                        _ => return Err(parameter(name, value, "a whole number of seconds, at least 1")),
                    };
                    continue;
                }
                "pool_max" => {
                    pool_size = match value.parse::<usize>() {
                        Ok(size) if size > 0 => Some(size),
                        _ => return Err(parameter(name, value, "a number of connections, at least 1")),
                    };
                }
                "reset_connection" => reset_connection = value == "true",
                "client_found_rows" if value != "false" => {
                    return Err(ConfigError::Unsupported {
                        name,
                        value,
                        reason: "the store tells an inserted row (1) from one already present (0) by \
                                 the affected rows, which CLIENT_FOUND_ROWS would make 1 for both",
                    });
                }
                "require_ssl" | "verify_ca" | "verify_identity" | "built_in_roots" => {
                    return Err(ConfigError::Unsupported {
                        name,
                        value,
                        reason: "TLS is set with ssl-mode=DISABLED|PREFERRED|REQUIRED|VERIFY_IDENTITY \
                                 and ssl-ca=PATH",
                    });
                }
                _ => {}
            }
            driver_params.push((name, value));
        }
        if driver_params.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(&driver_params);
        }
        let opts = Opts::from_url(parsed.as_str()).map_err(ConfigError::Driver)?;
        let tls = Tls::new(ssl_mode, ssl_ca)?;
        Ok(Self {
            opts,
            database,
            pool_size: pool_size.unwrap_or(Self::DEFAULT_POOL_SIZE),
            call_timeout: Self::DEFAULT_CALL_TIMEOUT,
            connect_timeout,
            lock_wait_timeout: Self::DEFAULT_LOCK_WAIT_TIMEOUT,
            batches_in_flight: 4,
            max_batch: 512,
            program_name: "payments-app".to_owned(),
            reset_connection,
            tls,
        })
    }

    /// How connections use TLS.
    pub fn ssl_mode(&self) -> SslMode {
        self.tls.mode()
    }

    /// The `ssl-ca` file whose certificates are the only trusted roots, if the URL names one.
    pub fn ssl_ca(&self) -> Option<&Path> {
        self.tls.ca()
    }

    /// The database the store lives in.
    pub fn database(&self) -> &DatabaseName {
        &self.database
    }

    /// Puts the store in `database` instead (on the same server).
    #[must_use]
    pub fn with_database(mut self, database: DatabaseName) -> Self {
        self.database = database;
        self
    }

    /// How many connections the pool holds at most.
    pub fn pool_size(&self) -> usize {
        self.pool_size
    }

    /// Holds at most `size` connections (at least one).
    #[must_use]
    pub fn with_pool_size(mut self, size: usize) -> Self {
        self.pool_size = size.max(1);
        self
    }

    /// How long one call (a save, a read) may take in all before it is
    /// [`Unavailable`](payments_ports::RepositoryError::Unavailable), and retried.
    pub fn call_timeout(&self) -> Duration {
        self.call_timeout
    }

    /// Gives each call at most `timeout`.
    #[must_use]
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// How long getting a connection may take, connecting included, before the call is
    /// unavailable.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// Gives getting a connection at most `timeout`.
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long the server lets one of the store's statements wait for a lock before it fails it
    /// (`innodb_lock_wait_timeout` and `lock_wait_timeout`, in whole seconds).
    pub fn lock_wait_timeout(&self) -> Duration {
        self.lock_wait_timeout
    }

    /// Lets statements wait for a lock at most `timeout` (rounded down to whole seconds, at
    /// least one). Keep it below the call timeout, so that the server gives up first.
    #[must_use]
    pub fn with_lock_wait_timeout(mut self, timeout: Duration) -> Self {
        self.lock_wait_timeout = Duration::from_secs(timeout.as_secs().max(1));
        self
    }

    /// How many batches of saves may run at once, each on its own connection.
    pub fn batches_in_flight(&self) -> usize {
        self.batches_in_flight
    }

    /// Runs at most `batches` batches at once (at least one).
    #[must_use]
    pub fn with_batches_in_flight(mut self, batches: usize) -> Self {
        self.batches_in_flight = batches.max(1);
        self
    }

    /// The most saves in one statement.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Puts at most `saves` saves in one statement (1 to 4096: each row takes four of the
    /// 65,535 placeholders a statement may have, and four thousand rows is far past the point
    /// where larger batches stop paying).
    #[must_use]
    pub fn with_max_batch(mut self, saves: usize) -> Self {
        self.max_batch = saves.clamp(1, 4096);
        self
    }

    /// The `program_name` connection attribute (shown in `performance_schema.session_connect_attrs`).
    pub fn program_name(&self) -> &str {
        &self.program_name
    }

    /// Names the connections `name`, so that an operator can find them.
    #[must_use]
    pub fn with_program_name(mut self, name: &str) -> Self {
        name.clone_into(&mut self.program_name);
        self
    }

    /// The driver's options: the URL's, with this adapter's database, pool and session settings.
    pub(crate) fn driver_opts(&self) -> Opts {
        let min = self.opts.pool_opts().constraints().min().min(self.pool_size);
        let constraints = PoolConstraints::new(min, self.pool_size).unwrap_or_default();
        let pool = self
            .opts
            .pool_opts()
            .clone()
            .with_constraints(constraints)
            .with_reset_connection(self.reset_connection);
        let attributes = HashMap::from([("program_name".to_owned(), self.program_name.clone())]);
        OptsBuilder::from_opts(self.opts.clone())
            .db_name(Some(self.database.as_str()))
            .pool_opts(pool)
            // Off whatever the URL said (`from_url` refuses it): see `ConfigError::Unsupported`.
            .client_found_rows(false)
            .connect_attributes(attributes)
            // `setup` rather than `init`: it runs again after a connection reset, which clears
            // session variables.
            .setup(session_setup(self.lock_wait_timeout))
            // For PREFERRED too: the store drops it if the server turns out to have no TLS.
            .ssl_opts(self.tls.ssl_opts())
            .into()
    }
}

fn parameter(name: String, value: String, expected: &'static str) -> ConfigError {
    ConfigError::Parameter { name, value, expected }
}

/// The database named by the URL's path: `/DB`, percent-decoded.
fn database_from_path(path: &str) -> Result<DatabaseName, ConfigError> {
    let name = path.strip_prefix('/').unwrap_or(path);
    if name.is_empty() {
        return Err(ConfigError::NoDatabase);
    }
    if name.contains('/') {
        return Err(ConfigError::Incomplete("the path names more than a database"));
    }
    let decoded = url::form_urlencoded::parse(format!("n={name}").as_bytes())
        .next()
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default();
    DatabaseName::new(&decoded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::SslMode;

    #[test]
    fn database_names_are_plain_identifiers_only() {
        for good in ["payments", "Payments_2", "_p", "p1", &"a".repeat(64)] {
            assert!(DatabaseName::new(good).is_ok(), "{good}");
        }
        for bad in ["", "123", "p-q", "p q", "p`q", "x`; DROP DATABASE mysql;--", "pé", &"a".repeat(65)] {
            let err = DatabaseName::new(bad).expect_err(bad);
            assert!(err.to_string().starts_with("invalid database name"), "{err}");
        }
    }

    #[test]
    fn the_url_names_the_database_and_the_defaults_apply() {
        let config = MysqlConfig::from_url("mysql://app@db:3307/pay").expect("valid");
        assert_eq!(config.database().as_str(), "pay");
        assert_eq!(config.opts.tcp_port(), 3307);
        assert_eq!(config.opts.ip_or_hostname(), "db");
        assert_eq!(config.pool_size(), 16);
        assert_eq!(config.call_timeout(), Duration::from_secs(30));
        assert_eq!(config.connect_timeout(), Duration::from_secs(5));
        assert_eq!(config.lock_wait_timeout(), Duration::from_secs(10));
        assert_eq!(config.program_name(), "payments-app");
        let opts = config.driver_opts();
        assert_eq!(opts.db_name(), Some("pay"));
        assert_eq!(opts.pool_opts().constraints().max(), 16);
        assert!(!opts.client_found_rows(), "affected rows must count changed rows");
        assert!(!opts.pool_opts().reset_connection());
        assert!(opts.setup().iter().any(|s| s.contains("STRICT_ALL_TABLES")), "{:?}", opts.setup());
    }

    #[test]
    fn what_the_url_says_wins_over_the_defaults() {
        let config =
            MysqlConfig::from_url("mysql://app@db/pay?connect_timeout=2&pool_max=40&stmt_cache_size=64")
                .expect("valid");
        assert_eq!(config.connect_timeout(), Duration::from_secs(2));
        assert_eq!(config.pool_size(), 40);
        let opts = config.driver_opts();
        assert_eq!(opts.stmt_cache_size(), 64);
        assert_eq!(opts.pool_opts().constraints().max(), 40);
        assert_eq!(opts.tcp_port(), 3306, "the default port");
        let config = MysqlConfig::from_url("mysql://app@db/pay?reset_connection=true").expect("valid");
        assert!(config.driver_opts().pool_opts().reset_connection());
    }

    #[test]
    fn the_builder_adjusts_every_setting() {
        let config = MysqlConfig::from_url("mysql://app@db/pay")
            .expect("valid")
            .with_database(DatabaseName::new("other").expect("valid"))
            .with_pool_size(0)
            .with_call_timeout(Duration::from_millis(300))
            .with_connect_timeout(Duration::from_secs(1))
            .with_lock_wait_timeout(Duration::from_millis(10))
            .with_batches_in_flight(0)
            .with_max_batch(100_000)
            .with_program_name("payments-test");
        assert_eq!(config.database().as_str(), "other");
        assert_eq!(config.pool_size(), 1);
        assert_eq!(config.call_timeout(), Duration::from_millis(300));
        assert_eq!(config.connect_timeout(), Duration::from_secs(1));
        assert_eq!(config.lock_wait_timeout(), Duration::from_secs(1), "whole seconds, at least one");
        assert_eq!(config.batches_in_flight(), 1);
        assert_eq!(config.max_batch(), 4096);
        let opts = config.driver_opts();
        assert_eq!(opts.db_name(), Some("other"));
        assert_eq!(
            opts.connect_attributes().and_then(|a| a.get("program_name")).map(String::as_str),
            Some("payments-test")
        );
        assert!(
            opts.setup().iter().any(|s| s.contains("innodb_lock_wait_timeout = 1,")),
            "{:?}",
            opts.setup()
        );
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        let cases: &[(&str, &str)] = &[
            ("not a url", "invalid MySQL URL"),
            ("postgres://db/pay", "unsupported URL scheme \"postgres\""),
            ("mysql://app@db", "names no database"),
            ("mysql://app@db/", "names no database"),
            ("mysql://app@db/pay/more", "more than a database"),
            ("mysql://app@db/pay-q", "invalid database name \"pay-q\""),
            ("mysql://app@db/pay?connect_timeout=soon", "URL parameter `connect_timeout`"),
            ("mysql://app@db/pay?connect_timeout=0", "URL parameter `connect_timeout`"),
            ("mysql://app@db/pay?pool_max=0", "URL parameter `pool_max`"),
            ("mysql://app@db/pay?client_found_rows=true", "`client_found_rows=true` is not supported"),
            ("mysql://app@db/pay?require_ssl=true", "`require_ssl=true` is not supported"),
            ("mysql://app@db/pay?nonsense=1", "the MySQL driver refused the URL"),
            ("mysql://app@db/pay?tcp_nodelay=maybe", "the MySQL driver refused the URL"),
        ];
        for (url, expected) in cases {
            let err = MysqlConfig::from_url(url).expect_err(url);
            assert!(err.to_string().contains(expected), "{url}: {err}");
        }
        assert!(MysqlConfig::from_url("mysql://app@db/pay?client_found_rows=false").is_ok());
    }

    #[test]
    fn the_password_never_shows() {
        let url = "mysql://app:hunter2-secret@db.internal:3306/pay?connect_timeout=3";
        let config = MysqlConfig::from_url(url).expect("valid");
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("\"***\""), "{debug}");
        assert_eq!(config.to_string(), "mysql://app:***@db.internal:3306/pay");
        // Nor in the errors about the rest of the URL.
        for bad in [
            "mysql://app:hunter2-secret@db/pay?nonsense=1",
            "mysql://app:hunter2-secret@db/pay?connect_timeout=x",
            "mysql://app:hunter2-secret@db/pay?client_found_rows=true",
            "mysql://app:hunter2-secret@db/pay-q",
            "mysql://app:hunter2-secret@db",
            "mysql://app:hunter2-secret@db:99999/pay",
            "mysqlx://app:hunter2-secret@db/pay",
        ] {
            let err = MysqlConfig::from_url(bad).expect_err(bad);
            assert!(!format!("{err} {err:?}").contains("hunter2"), "{bad}: {err} {err:?}");
        }
    }

    #[test]
    fn ssl_mode_is_mysqls_with_preferred_by_default() {
        let config = MysqlConfig::from_url("mysql://app@db/pay").expect("valid");
        assert_eq!(config.ssl_mode(), SslMode::Preferred);
        assert!(config.driver_opts().ssl_opts().is_some(), "PREFERRED asks for TLS first");
        for (value, expected) in [
            ("DISABLED", SslMode::Disabled),
            ("disabled", SslMode::Disabled),
            ("PREFERRED", SslMode::Preferred),
            ("Required", SslMode::Required),
            ("VERIFY_IDENTITY", SslMode::VerifyIdentity),
        ] {
            let config = MysqlConfig::from_url(&format!("mysql://app@db/pay?ssl-mode={value}")).expect(value);
            assert_eq!(config.ssl_mode(), expected, "{value}");
            let ssl = config.driver_opts().ssl_opts().cloned();
            match expected {
                SslMode::Disabled => assert!(ssl.is_none(), "DISABLED never asks for TLS"),
                SslMode::Preferred | SslMode::Required => {
                    let ssl = ssl.expect("TLS");
                    assert!(ssl.accept_invalid_certs(), "{value} does not check the certificate");
                }
                _ => {
                    let ssl = ssl.expect("TLS");
                    assert!(!ssl.accept_invalid_certs() && !ssl.skip_domain_validation(), "{value}");
                    assert!(ssl.disable_built_in_roots(), "the system's roots, not the driver's list");
                    assert!(!ssl.root_certs().is_empty(), "the system's roots are read");
                }
            }
        }
        assert!(format!("{config:?}").contains("Preferred"), "{config:?}");
    }

    #[test]
    fn unknown_ssl_modes_verify_ca_and_the_drivers_tls_switches_are_refused_by_name() {
        for value in ["VERIFY_FULL", "on", "", "prefer"] {
            let err = MysqlConfig::from_url(&format!("mysql://app:hunter2@db/pay?ssl-mode={value}"))
                .expect_err(value);
            assert!(matches!(&err, ConfigError::SslMode(given) if given == value), "{err:?}");
            assert!(err.to_string().contains(&format!("unsupported ssl-mode {value:?}")), "{err}");
            assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
        }
        let err = MysqlConfig::from_url("mysql://app@db/pay?ssl-mode=VERIFY_CA").expect_err("VERIFY_CA");
        assert!(err.to_string().contains("`ssl-mode=VERIFY_CA` is not supported"), "{err}");
        assert!(err.to_string().contains("mysql_async#404"), "{err}");
        for (name, value) in [
            ("require_ssl", "true"),
            ("require_ssl", "false"),
            ("verify_ca", "false"),
            ("built_in_roots", "false"),
        ] {
            let err = MysqlConfig::from_url(&format!("mysql://app@db/pay?{name}={value}")).expect_err(name);
            assert!(err.to_string().contains(&format!("`{name}={value}` is not supported")), "{err}");
            assert!(err.to_string().contains("ssl-mode="), "{err}");
        }
    }

    #[test]
    fn ssl_ca_is_read_with_the_url_and_needs_verify_identity() {
        let dir = std::env::temp_dir().join(format!("payments-mysql-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "not a certificate\n").expect("write");
        let url = |params: &str| format!("mysql://app:hunter2@db/pay?{params}");
        let cases = [
            (
                url("ssl-mode=VERIFY_IDENTITY&ssl-ca=/nonexistent/ca.pem"),
                "cannot read ssl-ca /nonexistent/ca.pem",
            ),
            (
                url(&format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={}", not_pem.display())),
                "holds no usable CA certificate",
            ),
            (url("ssl-ca=/nonexistent/ca.pem"), "`ssl-ca=/nonexistent/ca.pem` is not supported"),
            (url("ssl-mode=REQUIRED&ssl-ca=/x.pem"), "add ssl-mode=VERIFY_IDENTITY"),
        ];
        let results: Vec<_> = cases.iter().map(|(url, _)| MysqlConfig::from_url(url)).collect();
        std::fs::remove_dir_all(&dir).expect("cleanup");
        for ((url, expected), result) in cases.iter().zip(results) {
            let err = result.expect_err(url);
            assert!(err.to_string().contains(expected), "{url}: {err}");
            assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
        }
    }

    #[test]
    fn a_percent_encoded_database_name_is_decoded_then_checked() {
        let config = MysqlConfig::from_url("mysql://app@db/pay%5Fments").expect("valid");
        assert_eq!(config.database().as_str(), "pay_ments");
        let err = MysqlConfig::from_url("mysql://app@db/pay%60ments").expect_err("a backtick");
        assert!(err.to_string().contains("invalid database name \"pay`ments\""), "{err}");
    }
}
