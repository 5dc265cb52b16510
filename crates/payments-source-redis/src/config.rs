//! The command-line form of a Redis stream, parsed once into checked settings:
//! `redis://[USER:PASSWORD@]HOST:PORT[/DB]?stream=NAME&…` (or `rediss://` for TLS).
//!
//! The password is kept for connecting and shown nowhere: `Display`, `Debug` and every error
//! print the address with `***` in its place.
//!
//! `rediss://` always verifies the server: its certificate must chain to a trusted root and name
//! the URL's host (redis's only mode without its `insecure` feature, which is not built). The
//! roots are the system's, or, with `ssl-ca=PATH`, only the CA certificates of that PEM file,
//! read when the URL is parsed.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Why a Redis URL cannot be used. No variant ever holds the URL's password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// It is not a URL at all.
    #[error("invalid Redis URL")]
    Syntax(#[source] url::ParseError),
    /// The scheme is neither `redis` nor `rediss`.
    #[error("unsupported scheme {0:?} in a Redis URL: use redis:// or rediss://")]
    Scheme(String),
    /// There is no host.
    #[error("a Redis URL needs a host: redis://HOST:PORT")]
    MissingHost,
    /// The path is not a database number.
    #[error("invalid database {0:?} in a Redis URL: the path is a database number, such as /0")]
    Database(String),
    /// A required parameter is missing.
    #[error("a Redis URL needs the `{0}` parameter, as in ?{0}=NAME")]
    Missing(&'static str),
    /// A parameter this URL does not take.
    #[error("unknown parameter `{name}` in a Redis URL; it takes {allowed}")]
    Unknown {
        /// The parameter's name.
        name: String,
        /// The parameters it takes.
        allowed: &'static str,
    },
    /// A parameter given twice.
    #[error("parameter `{0}` is given twice in a Redis URL")]
    Repeated(String),
    /// A parameter's value is not what it must be.
    #[error("invalid value {value:?} for `{name}` in a Redis URL: {expected}")]
    Value {
        /// The parameter's name.
        name: &'static str,
        /// The value given.
        value: String,
        /// What it must be.
        expected: &'static str,
    },
    /// `ssl-ca` on a `redis://` URL, which does not use TLS.
    #[error("`ssl-ca` needs a rediss:// URL: redis:// does not use TLS")]
    CaWithoutTls,
    /// The `ssl-ca` file cannot be read.
    #[error("cannot read ssl-ca {}", path.display())]
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The `ssl-ca` file holds no PEM certificate.
    #[error("ssl-ca {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display())]
    CaContent {
        /// The file.
        path: PathBuf,
    },
}

/// The CA certificates that replace the system's roots: `ssl-ca`'s file, read once.
#[derive(Clone)]
pub(crate) struct Ca {
    path: PathBuf,
    // Read only to connect over TLS: without the feature, a rediss:// URL parses and connecting
    // to it fails, naming the feature.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pem: Arc<Vec<u8>>,
}

impl Ca {
    fn read(path: &str) -> Result<Self, ConfigError> {
        let path = PathBuf::from(path);
        let pem =
            std::fs::read(&path).map_err(|source| ConfigError::CaFile { path: path.clone(), source })?;
        if !pem.windows(27).any(|window| window == b"-----BEGIN CERTIFICATE-----") {
            return Err(ConfigError::CaContent { path });
        }
        Ok(Self { path, pem: Arc::new(pem) })
    }
}

/// Where the server is: the URL without its parameters, and the same with the password hidden.
#[derive(Clone)]
pub(crate) struct Endpoint {
    /// For connecting only: it may hold the password.
    secret_url: String,
    /// For every message: the password replaced by `***`.
    shown: String,
    /// `ssl-ca`: the only trusted roots, instead of the system's.
    ca: Option<Ca>,
}

impl Endpoint {
    /// A client for this server (no connection yet).
    pub(crate) fn client(&self) -> Result<redis::Client, redis::RedisError> {
        #[cfg(feature = "tls")]
        {
            install_crypto_provider();
            if let Some(ca) = &self.ca {
                // The root store holds these certificates only: redis uses the system's when
                // no root certificate is given, and never both.
                let certificates =
                    redis::TlsCertificates { client_tls: None, root_cert: Some(ca.pem.to_vec()) };
                return redis::Client::build_with_tls(self.secret_url.as_str(), certificates);
            }
        }
        redis::Client::open(self.secret_url.as_str())
    }

    /// The `ssl-ca` file, if the URL names one.
    pub(crate) fn ca_path(&self) -> Option<&Path> {
        self.ca.as_ref().map(|ca| ca.path.as_path())
    }

    /// Whether it is a `rediss://` (TLS) address.
    pub(crate) fn is_tls(&self) -> bool {
        self.shown.starts_with("rediss://")
    }
}

/// rustls chooses no crypto provider by itself (redis turns its defaults off); ring is the one
/// this workspace builds. Installing it twice is harmless: the second attempt is refused.
#[cfg(feature = "tls")]
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

/// A URL split into its server and its parameters, each parameter given at most once.
struct Parsed {
    endpoint: Endpoint,
    params: Vec<(String, String)>,
}

impl Parsed {
    fn new(
        text: &str,
        allowed: &'static [&'static str],
        allowed_text: &'static str,
    ) -> Result<Self, ConfigError> {
        let url = url::Url::parse(text).map_err(ConfigError::Syntax)?;
        let scheme = url.scheme();
        if scheme != "redis" && scheme != "rediss" {
            return Err(ConfigError::Scheme(scheme.to_owned()));
        }
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or(ConfigError::MissingHost)?;
        let port = url.port().unwrap_or(6379);
        let db = match url.path().trim_start_matches('/') {
            "" => 0,
            db => db.parse::<u32>().map_err(|_| ConfigError::Database(db.to_owned()))?,
        };
        let user = url.username();
        let (secret_auth, shown_auth) = match (user, url.password()) {
            ("", None) => (String::new(), String::new()),
            (user, None) => (format!("{user}@"), format!("{user}@")),
            (user, Some(password)) => (format!("{user}:{password}@"), format!("{user}:***@")),
        };
        let mut params: Vec<(String, String)> = Vec::new();
        for (name, value) in url.query_pairs() {
            if !allowed.contains(&name.as_ref()) {
                return Err(ConfigError::Unknown { name: name.into_owned(), allowed: allowed_text });
            }
            if params.iter().any(|(seen, _)| *seen == name) {
                return Err(ConfigError::Repeated(name.into_owned()));
            }
            params.push((name.into_owned(), value.into_owned()));
        }
        let ca = match params.iter().find(|(name, _)| name == "ssl-ca") {
            None => None,
            Some(_) if scheme != "rediss" => return Err(ConfigError::CaWithoutTls),
            Some((_, path)) => Some(Ca::read(path)?),
        };
        let endpoint = Endpoint {
            secret_url: format!("{scheme}://{secret_auth}{host}:{port}/{db}"),
            shown: format!("{scheme}://{shown_auth}{host}:{port}/{db}"),
            ca,
        };
        Ok(Self { endpoint, params })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// A name (a key, a group, a consumer): present and not empty.
    fn name(&self, name: &'static str) -> Result<Option<String>, ConfigError> {
        match self.get(name) {
            None => Ok(None),
            Some("") => Err(ConfigError::Value { name, value: String::new(), expected: "a name, not empty" }),
            Some(value) => Ok(Some(value.to_owned())),
        }
    }

    fn required(&self, name: &'static str) -> Result<String, ConfigError> {
        self.name(name)?.ok_or(ConfigError::Missing(name))
    }

    /// A whole number of at least 1.
    fn count(&self, name: &'static str, expected: &'static str) -> Result<Option<u64>, ConfigError> {
        self.get(name)
            .map(|value| match value.parse::<u64>() {
                Ok(n) if n >= 1 => Ok(n),
                _ => Err(ConfigError::Value { name, value: value.to_owned(), expected }),
            })
            .transpose()
    }

    /// The URL as shown: the server, password hidden, and the parameters.
    fn shown(&self) -> String {
        let query: Vec<String> = self.params.iter().map(|(n, v)| format!("{n}={v}")).collect();
        format!("{}?{}", self.endpoint.shown, query.join("&"))
    }
}

/// The bound on deliveries in flight unless [`RedisSourceConfig::with_in_flight`] says otherwise:
/// the consumer's default concurrency.
pub const DEFAULT_IN_FLIGHT: usize = 64;
/// The size limit on message bodies unless [`RedisSourceConfig::with_max_message_bytes`] says
/// otherwise.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// How long a pending entry stays with its consumer without a word before another may claim it,
/// unless the URL's `claim-idle-ms` says otherwise.
pub const DEFAULT_CLAIM_IDLE: Duration = Duration::from_secs(30);

const SOURCE_PARAMS: &[&str] =
    &["stream", "group", "consumer", "claim-idle-ms", "batch", "max-deliveries", "ssl-ca"];
const SOURCE_PARAMS_TEXT: &str =
    "stream, group, consumer, claim-idle-ms, batch, max-deliveries and (rediss:// only) ssl-ca";

/// How a [`RedisSource`](crate::RedisSource) reads: parsed from a URL, adjusted with the `with_*`
/// methods.
///
/// ```text
/// redis://HOST:PORT[/DB]?stream=NAME&group=NAME[&consumer=NAME][&claim-idle-ms=N][&batch=N][&max-deliveries=N]
/// rediss://HOST:PORT[/DB]?stream=NAME&group=NAME[&ssl-ca=PATH][&…]
/// ```
#[derive(Clone)]
pub struct RedisSourceConfig {
    pub(crate) endpoint: Endpoint,
    pub(crate) stream: String,
    pub(crate) group: String,
    pub(crate) consumer: String,
    pub(crate) claim_idle: Duration,
    batch: Option<usize>,
    max_deliveries: Option<u32>,
    pub(crate) in_flight: usize,
    pub(crate) max_message_bytes: usize,
    client_name: Option<String>,
    shown: String,
}

impl RedisSourceConfig {
    /// Parses a source URL.
    ///
    /// - `stream` (required): the stream's key.
    /// - `group` (required): the consumer group; created at the start of the stream if missing.
    /// - `consumer`: this consumer's name in the group; default `<host name>-<pid>`, unique per
    ///   process. A process that restarts under the same name gets its own pending entries back
    ///   at once; under a new name, they are taken over after `claim-idle-ms`.
    /// - `claim-idle-ms`: how long an entry stays with a consumer that says nothing before
    ///   another takes it over (the lease); default 30 000.
    /// - `batch`: entries read per command; default the in-flight bound.
    /// - `max-deliveries`: the delivery limit the consumer enforces; see [`Self::max_deliveries`].
    /// - `ssl-ca` (`rediss://` only): a PEM file whose CA certificates are the only trusted roots,
    ///   instead of the system's; read here.
    ///
    /// # Errors
    ///
    /// [`ConfigError`]: what is wrong, without the password.
    pub fn from_url(url: &str) -> Result<Self, ConfigError> {
        let parsed = Parsed::new(url, SOURCE_PARAMS, SOURCE_PARAMS_TEXT)?;
        let stream = parsed.required("stream")?;
        let group = parsed.required("group")?;
        let consumer = parsed.name("consumer")?.unwrap_or_else(default_consumer);
        let claim_idle = parsed
            .count("claim-idle-ms", "a whole number of milliseconds, at least 1")?
            .map_or(DEFAULT_CLAIM_IDLE, Duration::from_millis);
        let batch = parsed
            .count("batch", "a whole number of entries, at least 1")?
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        let max_deliveries = parsed
            .count("max-deliveries", "a whole number of deliveries, at least 1")?
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX));
        Ok(Self {
            shown: parsed.shown(),
            endpoint: parsed.endpoint,
            stream,
            group,
            consumer,
            claim_idle,
            batch,
            max_deliveries,
            in_flight: DEFAULT_IN_FLIGHT,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            client_name: None,
        })
    }

    /// Sets the bound on deliveries handed out and not yet acknowledged or dropped (at least 1):
    /// the consumer's concurrency. Without a `batch` in the URL, it is the batch size too.
    #[must_use]
    pub fn with_in_flight(mut self, in_flight: usize) -> Self {
        self.in_flight = in_flight.max(1);
        self
    }

    /// Sets the size limit: a body over it is delivered as `Payload::TooLarge`.
    #[must_use]
    pub fn with_max_message_bytes(mut self, max_message_bytes: usize) -> Self {
        self.max_message_bytes = max_message_bytes;
        self
    }

    /// Names the source's connections (`CLIENT SETNAME`), so that `CLIENT LIST` shows whose they
    /// are; default `payments-<consumer>`. Spaces and control characters become `_`.
    #[must_use]
    pub fn with_client_name(mut self, name: &str) -> Self {
        self.client_name = Some(name.to_owned());
        self
    }

    /// The stream's key.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// This consumer's name in the group.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// How long an entry stays with a silent consumer before another takes it over: the lease
    /// that receipts report.
    pub fn claim_idle(&self) -> Duration {
        self.claim_idle
    }

    /// Entries read per command: the URL's `batch`, or the in-flight bound.
    pub fn batch(&self) -> usize {
        self.batch.unwrap_or(self.in_flight).max(1)
    }

    /// The bound on deliveries in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The size limit on message bodies.
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    /// The URL's `max-deliveries`: the consumer dead-letters a delivery whose attempt is above
    /// it. The source only reports attempts; it enforces no limit itself.
    pub fn max_deliveries(&self) -> Option<u32> {
        self.max_deliveries
    }

    /// The `ssl-ca` file whose certificates are the only trusted roots, if the URL names one.
    pub fn ssl_ca(&self) -> Option<&Path> {
        self.endpoint.ca_path()
    }

    /// The name the source's connections carry.
    pub fn client_name(&self) -> String {
        let name = self.client_name.clone().unwrap_or_else(|| format!("payments-{}", self.consumer));
        name.chars().map(|c| if c.is_ascii_graphic() { c } else { '_' }).collect()
    }
}

impl fmt::Display for RedisSourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for RedisSourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSourceConfig")
            .field("endpoint", &self.endpoint)
            .field("stream", &self.stream)
            .field("group", &self.group)
            .field("consumer", &self.consumer)
            .field("claim_idle", &self.claim_idle)
            .field("batch", &self.batch())
            .field("in_flight", &self.in_flight)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("max_deliveries", &self.max_deliveries)
            .finish()
    }
}

/// `<host name>-<pid>`: unique per process on a host, and recognisable in `XINFO CONSUMERS`.
fn default_consumer() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    format!("{host}-{}", std::process::id())
}

const STREAM_PARAMS: &[&str] = &["stream", "ssl-ca"];
const STREAM_PARAMS_TEXT: &str = "stream and (rediss:// only) ssl-ca";

/// Where a [`RedisDeadLetters`](crate::RedisDeadLetters) or a
/// [`RedisPublisher`](crate::RedisPublisher) writes: `redis://HOST:PORT[/DB]?stream=NAME`, or
/// `rediss://HOST:PORT[/DB]?stream=NAME[&ssl-ca=PATH]`.
#[derive(Clone)]
pub struct RedisStreamConfig {
    pub(crate) endpoint: Endpoint,
    pub(crate) stream: String,
    pub(crate) timeout: Duration,
    shown: String,
}

impl RedisStreamConfig {
    /// Parses a stream URL; `stream` (the key) is required, and `ssl-ca` is read as by
    /// [`RedisSourceConfig::from_url`].
    ///
    /// # Errors
    ///
    /// [`ConfigError`]: what is wrong, without the password.
    pub fn from_url(url: &str) -> Result<Self, ConfigError> {
        let parsed = Parsed::new(url, STREAM_PARAMS, STREAM_PARAMS_TEXT)?;
        let stream = parsed.required("stream")?;
        Ok(Self {
            shown: parsed.shown(),
            endpoint: parsed.endpoint,
            stream,
            timeout: Duration::from_secs(10),
        })
    }

    /// Sets how long one write may wait for Redis's answer before it counts as unavailable
    /// (default 10 s).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The stream's key.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The `ssl-ca` file whose certificates are the only trusted roots, if the URL names one.
    pub fn ssl_ca(&self) -> Option<&Path> {
        self.endpoint.ca_path()
    }
}

impl fmt::Display for RedisStreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for RedisStreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStreamConfig")
            .field("endpoint", &self.endpoint)
            .field("stream", &self.stream)
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_part_is_rebuilt_without_parameters() {
        let config = RedisSourceConfig::from_url("redis://u:p%40ss@db.example:6380/2?stream=s&group=g")
            .expect("valid");
        assert_eq!(config.endpoint.secret_url, "redis://u:p%40ss@db.example:6380/2");
        assert_eq!(config.endpoint.to_string(), "redis://u:***@db.example:6380/2");
        let bare = RedisStreamConfig::from_url("redis://h?stream=s").expect("valid");
        assert_eq!(bare.endpoint.secret_url, "redis://h:6379/0");
    }
}
