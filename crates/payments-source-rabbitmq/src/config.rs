//! The command-line form of a RabbitMQ queue, parsed once into checked settings:
//! `amqp://USER:PASSWORD@HOST:PORT/VHOST?queue=NAME&…` (or `amqps://` for TLS).
//!
//! The password is kept for connecting and shown nowhere: `Display`, `Debug` and every error
//! print the address with `***` in its place.
//!
//! `amqps://` speaks TLS only, never falling back to plain text, and always verifies the server:
//! its certificate must chain to a trusted root and name the URL's host. The roots are the
//! system's, or, with `ssl-ca=PATH`, only the CA certificates of that PEM file (read and checked
//! when the URL is parsed). `ssl-ca` on an `amqp://` URL is refused.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

/// Why a RabbitMQ URL cannot be used. No variant ever holds the URL's password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// It is not a URL at all.
    #[error("invalid RabbitMQ URL")]
    Syntax(#[source] url::ParseError),
    /// The scheme is neither `amqp` nor `amqps`.
    #[error("unsupported scheme {0:?} in a RabbitMQ URL: use amqp:// or amqps://")]
    Scheme(String),
    /// There is no host.
    #[error("a RabbitMQ URL needs a host: amqp://USER:PASSWORD@HOST:PORT/VHOST")]
    MissingHost,
    /// The user, the password or the virtual host is not valid percent-encoded UTF-8.
    #[error("the {0} of a RabbitMQ URL is not valid percent-encoded UTF-8")]
    Encoding(&'static str),
    /// A required parameter is missing.
    #[error("a RabbitMQ URL needs the `{0}` parameter, as in ?{0}=NAME")]
    Missing(&'static str),
    /// A URL to publish to names neither a queue nor an exchange.
    #[error("a RabbitMQ URL to publish to needs `queue=NAME`, `exchange=NAME&routing-key=KEY`, or both")]
    MissingTarget,
    /// A parameter this URL does not take.
    #[error("unknown parameter `{name}` in a RabbitMQ URL; it takes {allowed}")]
    Unknown {
        /// The parameter's name.
        name: String,
        /// The parameters it takes.
        allowed: &'static str,
    },
    /// A parameter given twice.
    #[error("parameter `{0}` is given twice in a RabbitMQ URL")]
    Repeated(String),
    /// A parameter's value is not what it must be.
    #[error("invalid value {value:?} for `{name}` in a RabbitMQ URL: {expected}")]
    Value {
        /// The parameter's name.
        name: &'static str,
        /// The value given.
        value: String,
        /// What it must be.
        expected: &'static str,
    },
    /// `ssl-ca` on an `amqp://` URL, which does not use TLS.
    #[error("`ssl-ca` needs an amqps:// URL: amqp:// does not use TLS")]
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
    /// The `ssl-ca` file holds no PEM certificate, or one that does not parse.
    #[error("ssl-ca {} holds no valid PEM certificate (-----BEGIN CERTIFICATE-----)", path.display())]
    CaContent {
        /// The file.
        path: PathBuf,
    },
}

/// How long a silent connection is tolerated: the heartbeat asked of the server. Two missed
/// heartbeats close the connection, so a dead network is noticed within about 20 s.
const HEARTBEAT_SECS: u16 = 10;
/// How long opening a connection may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the server is: the URL without its parameters, and the same with the password hidden.
#[derive(Clone)]
pub(crate) struct Endpoint {
    /// For connecting only: it holds the password. `AMQPUri`'s own `Debug` shows it, so it is
    /// never printed.
    uri: AMQPUri,
    /// For every message: the password replaced by `***`.
    shown: String,
    /// `ssl-ca` (`amqps://` only): the only trusted roots, instead of the system's.
    ca: Option<TrustedCa>,
}

/// The CA certificates of an `ssl-ca` file, read when the URL was parsed.
#[derive(Clone)]
pub(crate) struct TrustedCa {
    /// The file, as the URL names it.
    pub(crate) path: PathBuf,
    /// Its certificates (at least one), DER.
    pub(crate) certificates: Arc<[CertificateDer<'static>]>,
}

impl Endpoint {
    /// The address lapin connects to, with a heartbeat and a connection timeout.
    pub(crate) fn uri(&self) -> AMQPUri {
        self.uri.clone()
    }

    /// The `ssl-ca` file's certificates, when the URL names one: the only roots to trust.
    pub(crate) fn trusted_ca(&self) -> Option<&TrustedCa> {
        self.ca.as_ref()
    }

    /// The `ssl-ca` file, if the URL names one.
    pub(crate) fn ca_path(&self) -> Option<&Path> {
        self.ca.as_ref().map(|ca| ca.path.as_path())
    }
}

/// Reads the PEM certificates of `path`: at least one, each of which parses.
fn read_ca(path: &str) -> Result<TrustedCa, ConfigError> {
    let path = PathBuf::from(path);
    let pem = std::fs::read(&path).map_err(|source| ConfigError::CaFile { path: path.clone(), source })?;
    let certificates: Result<Vec<CertificateDer<'static>>, _> =
        CertificateDer::pem_slice_iter(&pem).map(|cert| cert.map(CertificateDer::into_owned)).collect();
    match certificates {
        Ok(certificates) if !certificates.is_empty() => {
            Ok(TrustedCa { path, certificates: certificates.into() })
        }
        _ => Err(ConfigError::CaContent { path }),
    }
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
        let scheme = match url.scheme() {
            "amqp" => AMQPScheme::AMQP,
            "amqps" => AMQPScheme::AMQPS,
            other => return Err(ConfigError::Scheme(other.to_owned())),
        };
        // `host_str`, not `domain`: lapin's own parser reads the host with `domain()`, which is
        // `None` for an IP address, and then connects to "localhost" instead.
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or(ConfigError::MissingHost)?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = url.port().unwrap_or_else(|| scheme.default_port());
        let username = match url.username() {
            "" => "guest".to_owned(),
            user => decode(user, "user")?,
        };
        let password = match url.password() {
            None => "guest".to_owned(),
            Some(password) => decode(password, "password")?,
        };
        // As the AMQP URI specification says: no path is the default virtual host `/`; a path of
        // `/` alone is the virtual host with an empty name; `/%2f` is `/` again.
        let vhost = match url.path() {
            "" => "/".to_owned(),
            path => decode(&path[1..], "virtual host")?,
        };
        // As written in the URL (percent-encoded), the password starred.
        let shown_auth = match (url.username(), url.password()) {
            ("", None) => String::new(),
            (user, None) => format!("{user}@"),
            (user, Some(_)) => format!("{user}:***@"),
        };
        let shown_host = if host.contains(':') { format!("[{host}]") } else { host.clone() };
        let shown = format!("{scheme}://{shown_auth}{shown_host}:{port}/{}", encode_vhost(&vhost));
        let uri = AMQPUri {
            scheme,
            authority: AMQPAuthority { userinfo: AMQPUserInfo { username, password }, host, port },
            vhost,
            query: AMQPQueryString {
                heartbeat: Some(HEARTBEAT_SECS),
                connection_timeout: Some(CONNECT_TIMEOUT.as_millis().try_into().unwrap_or(u64::MAX)),
                ..AMQPQueryString::default()
            },
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
            Some(_) if uri.scheme != AMQPScheme::AMQPS => return Err(ConfigError::CaWithoutTls),
            Some((_, path)) => Some(read_ca(path)?),
        };
        Ok(Self { endpoint: Endpoint { uri, shown, ca }, params })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// A name (a queue, an exchange): not empty, and at most 255 bytes, AMQP's limit.
    fn name(&self, name: &'static str) -> Result<Option<String>, ConfigError> {
        match self.get(name) {
            None => Ok(None),
            Some(value) if value.is_empty() || value.len() > 255 => Err(ConfigError::Value {
                name,
                value: value.to_owned(),
                expected: "a name of 1 to 255 bytes",
            }),
            Some(value) => Ok(Some(value.to_owned())),
        }
    }

    /// A whole number from 1 to `max`.
    fn count(
        &self,
        name: &'static str,
        max: u64,
        expected: &'static str,
    ) -> Result<Option<u64>, ConfigError> {
        self.get(name)
            .map(|value| match value.parse::<u64>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
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

fn decode(text: &str, part: &'static str) -> Result<String, ConfigError> {
    percent_decode(text).ok_or(ConfigError::Encoding(part))
}

/// `text` with every `%XX` escape decoded; `None` when an escape is broken or the result is not
/// UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
            decoded.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(decoded).ok()
}

/// The virtual host as it is written in a URL: `/` is `%2f`.
fn encode_vhost(vhost: &str) -> String {
    let mut out = String::with_capacity(vhost.len());
    for c in vhost.chars() {
        if c.is_ascii_alphanumeric() || "-._~".contains(c) {
            out.push(c);
        } else {
            let mut buffer = [0u8; 4];
            for byte in c.encode_utf8(&mut buffer).bytes() {
                out.push_str(&format!("%{byte:02x}"));
            }
        }
    }
    out
}

/// The bound on deliveries in flight unless [`RabbitSourceConfig::with_in_flight`] says otherwise:
/// the consumer's default concurrency.
pub const DEFAULT_IN_FLIGHT: usize = 64;
/// The size limit on message bodies unless [`RabbitSourceConfig::with_max_message_bytes`] says
/// otherwise.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// The `x-delivery-limit` of every queue this crate declares: RabbitMQ moves a message returned
/// more often than this to the queue's parking queue, `<queue>.parked`, instead of delivering
/// it again. A URL's `max-deliveries` may not be above it, so that the consumer always sees the
/// delivery it must dead-letter before RabbitMQ gives up on the message. See the crate's
/// documentation for why there is a limit at all.
pub const QUEUE_DELIVERY_LIMIT: u32 = 100;

/// The largest prefetch AMQP can say (`basic.qos` takes 16 bits).
const MAX_PREFETCH: u64 = u16::MAX as u64;

const SOURCE_PARAMS: &[&str] = &["queue", "prefetch", "max-deliveries", "ssl-ca"];
const SOURCE_PARAMS_TEXT: &str = "queue, prefetch, max-deliveries and (amqps:// only) ssl-ca";

/// How a [`RabbitSource`](crate::RabbitSource) consumes: parsed from a URL, adjusted with the
/// `with_*` methods.
///
/// ```text
/// amqp://USER:PASSWORD@HOST:PORT/VHOST?queue=NAME[&prefetch=N][&max-deliveries=N]
/// amqps://USER:PASSWORD@HOST:PORT/VHOST?queue=NAME[&ssl-ca=PATH][&…]
/// ```
///
/// `amqps://` connects with TLS only, checking the server's certificate against the system's
/// roots, or only against those of `ssl-ca`.
#[derive(Clone)]
pub struct RabbitSourceConfig {
    pub(crate) endpoint: Endpoint,
    pub(crate) queue: String,
    prefetch: Option<u16>,
    max_deliveries: Option<u32>,
    in_flight: usize,
    pub(crate) max_message_bytes: usize,
    connection_name: Option<String>,
    shown: String,
}

impl RabbitSourceConfig {
    /// Parses a source URL.
    ///
    /// - The user and password default to `guest`; the port to 5672 (`amqps`: 5671); the path is
    ///   the percent-encoded virtual host (`/%2f` is `/`, the default when there is no path).
    /// - `queue` (required): the queue, declared durable (a quorum queue) if it is missing.
    /// - `prefetch`: how many deliveries RabbitMQ may hand this consumer before it acknowledges
    ///   any (1 to 65535); default the in-flight bound ([`Self::with_in_flight`]).
    /// - `max-deliveries`: the delivery limit the consumer enforces, 1 to
    ///   [`QUEUE_DELIVERY_LIMIT`]; see [`Self::max_deliveries`].
    /// - `ssl-ca` (`amqps://` only): a PEM file whose CA certificates are the only trusted roots,
    ///   instead of the system's. It is read here, and must hold at least one certificate.
    ///
    /// With `amqps://`, the client speaks TLS only (never plain text) and verifies the server: its
    /// certificate must chain to a trusted root and name the URL's host. A refused certificate
    /// makes connecting fail for good (`SourceError::Failed`), not unavailable.
    ///
    /// # Errors
    ///
    /// [`ConfigError`]: what is wrong, without the password.
    pub fn from_url(url: &str) -> Result<Self, ConfigError> {
        let parsed = Parsed::new(url, SOURCE_PARAMS, SOURCE_PARAMS_TEXT)?;
        let queue = parsed.name("queue")?.ok_or(ConfigError::Missing("queue"))?;
        let prefetch = parsed
            .count("prefetch", MAX_PREFETCH, "a whole number of deliveries from 1 to 65535")?
            .map(|n| u16::try_from(n).unwrap_or(u16::MAX));
        let max_deliveries = parsed
            .count(
                "max-deliveries",
                u64::from(QUEUE_DELIVERY_LIMIT),
                "a whole number of deliveries from 1 to 100 (the queues' x-delivery-limit)",
            )?
            .map(|n| u32::try_from(n).unwrap_or(QUEUE_DELIVERY_LIMIT));
        Ok(Self {
            shown: parsed.shown(),
            endpoint: parsed.endpoint,
            queue,
            prefetch,
            max_deliveries,
            in_flight: DEFAULT_IN_FLIGHT,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            connection_name: None,
        })
    }

    /// Sets how many deliveries the consumer handles at once (at least 1): its concurrency.
    /// Without a `prefetch` in the URL, the prefetch follows it (up to 65535).
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

    /// Names the source's connection (the `connection_name` client property), so that
    /// `rabbitmqctl list_connections client_properties` and the management UI show whose it
    /// is; default `payments-<host name>-<pid>`.
    #[must_use]
    pub fn with_connection_name(mut self, name: &str) -> Self {
        self.connection_name = Some(name.to_owned());
        self
    }

    /// The queue.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Where RabbitMQ moves a message of this queue that it has delivered more than
    /// [`QUEUE_DELIVERY_LIMIT`] times: `<queue>.parked`.
    pub fn parked_queue(&self) -> String {
        parked_queue(&self.queue)
    }

    /// How many deliveries RabbitMQ may hand out unacknowledged to this consumer (`basic.qos`):
    /// the URL's `prefetch`, or the in-flight bound. It is the source's bound on deliveries in
    /// flight.
    pub fn prefetch(&self) -> u16 {
        self.prefetch.unwrap_or_else(|| u16::try_from(self.in_flight).unwrap_or(u16::MAX))
    }

    /// How many deliveries the consumer handles at once, as [`Self::with_in_flight`] set it.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The size limit on message bodies.
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    /// The URL's `max-deliveries`: the consumer dead-letters a delivery whose attempt is above
    /// it. The source only reports attempts; it enforces no limit itself. RabbitMQ's own limit,
    /// [`QUEUE_DELIVERY_LIMIT`], is never below it.
    pub fn max_deliveries(&self) -> Option<u32> {
        self.max_deliveries
    }

    /// The name the source's connection carries.
    pub fn connection_name(&self) -> String {
        self.connection_name.clone().unwrap_or_else(|| format!("payments-{}", host_and_pid()))
    }

    /// The `ssl-ca` file whose certificates are the only trusted roots, if the URL names one.
    pub fn ssl_ca(&self) -> Option<&Path> {
        self.endpoint.ca_path()
    }
}

impl fmt::Display for RabbitSourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for RabbitSourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitSourceConfig")
            .field("endpoint", &self.endpoint)
            .field("queue", &self.queue)
            .field("prefetch", &self.prefetch())
            .field("in_flight", &self.in_flight)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("max_deliveries", &self.max_deliveries)
            .field("ssl_ca", &self.ssl_ca())
            .field("connection_name", &self.connection_name())
            .finish()
    }
}

/// Where RabbitMQ moves a message of `queue` that it has delivered more than
/// [`QUEUE_DELIVERY_LIMIT`] times: `<queue>.parked`, declared beside every queue this crate
/// declares.
pub fn parked_queue(queue: &str) -> String {
    format!("{queue}.parked")
}

/// `<host name>-<pid>`: unique per process on a host, and recognisable in a list of connections.
fn host_and_pid() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    format!("{host}-{}", std::process::id())
}

const TARGET_PARAMS: &[&str] = &["queue", "exchange", "routing-key", "ssl-ca"];
const TARGET_PARAMS_TEXT: &str = "queue, exchange, routing-key and (amqps:// only) ssl-ca";

/// Where a [`RabbitDeadLetters`](crate::RabbitDeadLetters) or a
/// [`RabbitPublisher`](crate::RabbitPublisher) publishes:
///
/// ```text
/// amqp://USER:PASSWORD@HOST:PORT/VHOST?queue=NAME
/// amqp://USER:PASSWORD@HOST:PORT/VHOST?exchange=NAME&routing-key=KEY
/// amqp://USER:PASSWORD@HOST:PORT/VHOST?queue=NAME&exchange=NAME[&routing-key=KEY]
/// amqps://USER:PASSWORD@HOST:PORT/VHOST?queue=NAME[&ssl-ca=PATH]
/// ```
///
/// - `queue` alone: the queue is declared (as the source declares it) and messages go to it
///   through the default exchange.
/// - `exchange`: messages go to this exchange, which must exist, with `routing-key` (default:
///   the queue's name when there is a queue, else empty).
/// - Both: the queue is declared and bound to the exchange with the routing key, so that what is
///   published there reaches it.
/// - `ssl-ca` (`amqps://` only): the only trusted roots, read as by
///   [`RabbitSourceConfig::from_url`].
#[derive(Clone)]
pub struct RabbitTargetConfig {
    pub(crate) endpoint: Endpoint,
    pub(crate) queue: Option<String>,
    pub(crate) exchange: Option<String>,
    routing_key: Option<String>,
    pub(crate) timeout: Duration,
    connection_name: Option<String>,
    shown: String,
}

impl RabbitTargetConfig {
    /// Parses a URL to publish to; see the type's documentation.
    ///
    /// # Errors
    ///
    /// [`ConfigError`]: what is wrong, without the password.
    pub fn from_url(url: &str) -> Result<Self, ConfigError> {
        let parsed = Parsed::new(url, TARGET_PARAMS, TARGET_PARAMS_TEXT)?;
        let queue = parsed.name("queue")?;
        let exchange = parsed.name("exchange")?;
        let routing_key = parsed.get("routing-key").map(str::to_owned);
        if queue.is_none() && exchange.is_none() {
            return Err(ConfigError::MissingTarget);
        }
        if let Some(key) = &routing_key {
            if exchange.is_none() {
                return Err(ConfigError::Value {
                    name: "routing-key",
                    value: key.clone(),
                    expected: "a routing key goes with an `exchange`; a `queue` alone is reached through the default exchange",
                });
            }
            if key.len() > 255 {
                return Err(ConfigError::Value {
                    name: "routing-key",
                    value: key.clone(),
                    expected: "at most 255 bytes",
                });
            }
        }
        Ok(Self {
            shown: parsed.shown(),
            endpoint: parsed.endpoint,
            queue,
            exchange,
            routing_key,
            timeout: Duration::from_secs(10),
            connection_name: None,
        })
    }

    /// Sets how long a publication may wait for RabbitMQ's confirmation before it counts as
    /// unavailable (default 10 s).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Names the connection (the `connection_name` client property); default
    /// `payments-<host name>-<pid>-publish`.
    #[must_use]
    pub fn with_connection_name(mut self, name: &str) -> Self {
        self.connection_name = Some(name.to_owned());
        self
    }

    /// The queue, if the URL names one.
    pub fn queue(&self) -> Option<&str> {
        self.queue.as_deref()
    }

    /// The exchange, if the URL names one.
    pub fn exchange(&self) -> Option<&str> {
        self.exchange.as_deref()
    }

    /// The exchange messages are published to: the URL's, or the default exchange (`""`).
    pub fn publish_exchange(&self) -> &str {
        self.exchange.as_deref().unwrap_or("")
    }

    /// The routing key messages are published with: the URL's `routing-key`, else the queue's
    /// name, else empty.
    pub fn routing_key(&self) -> &str {
        self.routing_key.as_deref().or(self.queue.as_deref()).unwrap_or("")
    }

    /// The name the connection carries.
    pub fn connection_name(&self) -> String {
        self.connection_name.clone().unwrap_or_else(|| format!("payments-{}-publish", host_and_pid()))
    }

    /// The `ssl-ca` file whose certificates are the only trusted roots, if the URL names one.
    pub fn ssl_ca(&self) -> Option<&Path> {
        self.endpoint.ca_path()
    }
}

impl fmt::Display for RabbitTargetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for RabbitTargetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitTargetConfig")
            .field("endpoint", &self.endpoint)
            .field("queue", &self.queue)
            .field("exchange", &self.exchange)
            .field("routing_key", &self.routing_key())
            .field("timeout", &self.timeout)
            .field("ssl_ca", &self.ssl_ca())
            .field("connection_name", &self.connection_name())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_part_is_rebuilt_for_lapin_with_the_password_decoded() {
        let config =
            RabbitSourceConfig::from_url("amqp://u%40x:p%40ss%2B1@10.0.0.7:5673/prod%2fpayments?queue=q")
                .expect("valid");
        let uri = config.endpoint.uri();
        assert_eq!(uri.authority.userinfo.username, "u@x");
        assert_eq!(uri.authority.userinfo.password, "p@ss+1");
        assert_eq!((uri.authority.host.as_str(), uri.authority.port), ("10.0.0.7", 5673));
        assert_eq!(uri.vhost, "prod/payments");
        assert_eq!(uri.query.heartbeat, Some(HEARTBEAT_SECS));
        assert_eq!(config.endpoint.to_string(), "amqp://u%40x:***@10.0.0.7:5673/prod%2fpayments");
    }

    #[test]
    fn the_virtual_host_follows_the_amqp_uri_specification() {
        let vhost = |url: &str| RabbitSourceConfig::from_url(url).expect("valid").endpoint.uri().vhost;
        assert_eq!(vhost("amqp://h?queue=q"), "/");
        assert_eq!(vhost("amqp://h/%2f?queue=q"), "/");
        assert_eq!(vhost("amqp://h/%2F?queue=q"), "/");
        assert_eq!(vhost("amqp://h/?queue=q"), "");
        assert_eq!(vhost("amqp://h/v1?queue=q"), "v1");
        let defaults = RabbitSourceConfig::from_url("amqps://h?queue=q").expect("valid").endpoint.uri();
        assert_eq!(defaults.authority.port, 5671);
        assert_eq!(defaults.authority.userinfo.username, "guest");
    }

    #[test]
    fn bad_percent_encoding_is_refused_without_showing_it() {
        let err = RabbitSourceConfig::from_url("amqp://u:%ff%fe@h/%2f?queue=q").expect_err("not UTF-8");
        assert_eq!(err.to_string(), "the password of a RabbitMQ URL is not valid percent-encoded UTF-8");
        let err = RabbitSourceConfig::from_url("amqp://u:p@h/%zz?queue=q").expect_err("not an escape");
        assert!(matches!(err, ConfigError::Encoding("virtual host")), "{err}");
    }
}
