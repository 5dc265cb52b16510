//! The command-line form of a JetStream destination, parsed once into checked settings:
//! `nats://[USER:PASSWORD@|TOKEN@]HOST:PORT?stream=NAME&subject=SUBJECT&…` (or `tls://` for TLS).
//!
//! Credentials are kept for connecting and shown nowhere: `Display`, `Debug` and every error print
//! the address with `***` in their place (a token, alone before the `@`, is a secret as a whole).
//!
//! `tls://` requires TLS of the server, never falling back to plain text, and always verifies it:
//! its certificate must chain to a trusted root and name the URL's host. The roots are the
//! system's, or, with `ssl-ca=PATH`, only the CA certificates of that PEM file (checked when the
//! URL is parsed, read again at every connection). `ssl-ca` on a `nats://` URL is refused.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::rustls::pki_types::CertificateDer;
use async_nats::rustls::pki_types::pem::PemObject as _;

/// Why a NATS URL cannot be used. No variant ever holds the URL's password or token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// It is not a URL at all.
    #[error("invalid NATS URL")]
    Syntax(#[source] url::ParseError),
    /// The scheme is neither `nats` nor `tls`.
    #[error("unsupported scheme {0:?} in a NATS URL: use nats:// or tls://")]
    Scheme(String),
    /// There is no host.
    #[error("a NATS URL needs a host: nats://HOST:PORT")]
    MissingHost,
    /// There is a path, which a NATS URL does not have.
    #[error("unexpected path {0:?} in a NATS URL: put everything in parameters, as in ?stream=NAME")]
    Path(String),
    /// A required parameter is missing.
    #[error("a NATS URL needs the `{0}` parameter, as in ?{0}=NAME")]
    Missing(&'static str),
    /// A parameter this URL does not take.
    #[error("unknown parameter `{name}` in a NATS URL; it takes {allowed}")]
    Unknown {
        /// The parameter's name.
        name: String,
        /// The parameters it takes.
        allowed: &'static str,
    },
    /// A parameter given twice.
    #[error("parameter `{0}` is given twice in a NATS URL")]
    Repeated(String),
    /// A parameter's value is not what it must be.
    #[error("invalid value {value:?} for `{name}` in a NATS URL: {expected}")]
    Value {
        /// The parameter's name.
        name: &'static str,
        /// The value given.
        value: String,
        /// What it must be.
        expected: &'static str,
    },
    /// `ssl-ca` on a `nats://` URL, which does not use TLS.
    #[error("`ssl-ca` needs a tls:// URL: nats:// does not use TLS")]
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

/// How the client proves who it is.
#[derive(Clone)]
enum Auth {
    None,
    Token(String),
    UserPassword(String, String),
}

/// Where the server is: the address without credentials, the credentials apart, and the URL as
/// shown (credentials starred).
#[derive(Clone)]
pub(crate) struct Endpoint {
    /// `nats://HOST:PORT` or `tls://HOST:PORT`: no secret in it.
    address: String,
    auth: Auth,
    /// `tls://`: TLS is required of the server.
    tls: bool,
    /// `ssl-ca`: the file whose CA certificates are the only trusted roots, instead of the
    /// system's (`tls://` only).
    ca: Option<PathBuf>,
    /// For every message: credentials replaced by `***`.
    shown: String,
}

impl Endpoint {
    /// The address to connect to, without credentials.
    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    /// Connection options carrying the credentials, if any, and for `tls://` requiring TLS with
    /// the trusted roots: the system's, or only `ssl-ca`'s.
    pub(crate) fn options(&self) -> async_nats::ConnectOptions {
        let options = match &self.auth {
            Auth::None => async_nats::ConnectOptions::new(),
            Auth::Token(token) => async_nats::ConnectOptions::with_token(token.clone()),
            Auth::UserPassword(user, password) => {
                async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
            }
        };
        if !self.tls {
            return options;
        }
        // The `tls://` scheme makes async-nats upgrade a connection to this address to TLS
        // whatever the server's INFO says. Requiring TLS covers every other server too: those the
        // client learns from a cluster's INFO (`connect_urls`, without a scheme) and reconnects
        // to, which would otherwise be upgraded only if they asked for it.
        let options = options.require_tls(true);
        match &self.ca {
            // async-nats loads the system's roots only when no root certificate file is given
            // (and no rustls config): with one, its CA certificates are the only roots.
            Some(ca) => options.add_root_certificates(ca.clone()),
            None => options,
        }
    }

    /// The `ssl-ca` file, if the URL names one.
    pub(crate) fn ca_path(&self) -> Option<&Path> {
        self.ca.as_deref()
    }
}

/// Checks that `path` holds at least one PEM certificate, each of which parses: what async-nats
/// reads again at every connection, where an error would only show as a failed handshake.
fn check_ca(path: &str) -> Result<PathBuf, ConfigError> {
    let path = PathBuf::from(path);
    let pem = std::fs::read(&path).map_err(|source| ConfigError::CaFile { path: path.clone(), source })?;
    let certificates: Result<Vec<CertificateDer<'_>>, _> = CertificateDer::pem_slice_iter(&pem).collect();
    match certificates {
        Ok(certificates) if !certificates.is_empty() => Ok(path),
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

/// `%XX` escapes decoded (the URL's user part is kept encoded by `url`); a bad escape is kept as
/// it is.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) =
                (bytes.get(i + 1).and_then(|&b| hex(b)), bytes.get(i + 2).and_then(|&b| hex(b)))
        {
            #[allow(clippy::cast_possible_truncation)] // Two hex digits make a byte.
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
        if scheme != "nats" && scheme != "tls" {
            return Err(ConfigError::Scheme(scheme.to_owned()));
        }
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or(ConfigError::MissingHost)?;
        let port = url.port().unwrap_or(4222);
        match url.path() {
            "" | "/" => {}
            path => return Err(ConfigError::Path(path.to_owned())),
        }
        let (auth, shown_auth) = match (url.username(), url.password()) {
            ("", None) => (Auth::None, String::new()),
            // Alone before the `@`, it is a token: a secret as a whole.
            (token, None) => (Auth::Token(percent_decode(token)), "***@".to_owned()),
            (user, Some(password)) => {
                (Auth::UserPassword(percent_decode(user), percent_decode(password)), format!("{user}:***@"))
            }
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
        let tls = scheme == "tls";
        let ca = match params.iter().find(|(name, _)| name == "ssl-ca") {
            None => None,
            Some(_) if !tls => return Err(ConfigError::CaWithoutTls),
            Some((_, path)) => Some(check_ca(path)?),
        };
        let address = format!("{scheme}://{host}:{port}");
        let endpoint =
            Endpoint { address, auth, tls, ca, shown: format!("{scheme}://{shown_auth}{host}:{port}") };
        Ok(Self { endpoint, params })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// A stream or consumer name: present, and a name JetStream takes (no spaces, no `.`, `*`,
    /// `>`, path separators).
    fn name(&self, name: &'static str) -> Result<String, ConfigError> {
        let value = self.get(name).ok_or(ConfigError::Missing(name))?;
        let bad = |c: char| c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\');
        if value.is_empty() || value.contains(bad) {
            return Err(ConfigError::Value {
                name,
                value: value.to_owned(),
                expected: "a name without spaces, `.`, `*`, `>`, `/` or `\\`, not empty",
            });
        }
        Ok(value.to_owned())
    }

    /// A subject: present, dot-separated tokens, none empty, no spaces; wildcards (`*`, a final
    /// `>`) only where `wildcards` allows them.
    fn subject(&self, wildcards: bool) -> Result<String, ConfigError> {
        let value = self.get("subject").ok_or(ConfigError::Missing("subject"))?;
        let tokens: Vec<&str> = value.split('.').collect();
        let valid = tokens.iter().enumerate().all(|(i, token)| {
            !token.is_empty()
                && !token.contains(|c: char| c.is_whitespace() || c.is_control())
                && match *token {
                    "*" => wildcards,
                    ">" => wildcards && i + 1 == tokens.len(),
                    token => !token.contains(['*', '>']),
                }
        });
        if !valid {
            return Err(ConfigError::Value {
                name: "subject",
                value: value.to_owned(),
                expected: if wildcards {
                    "dot-separated tokens without spaces, none empty; `*` and a final `>` are wildcards"
                } else {
                    "dot-separated tokens without spaces or wildcards, none empty"
                },
            });
        }
        Ok(value.to_owned())
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

    fn flag(&self, name: &'static str) -> Result<bool, ConfigError> {
        match self.get(name) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(value) => {
                Err(ConfigError::Value { name, value: value.to_owned(), expected: "true or false" })
            }
        }
    }

    /// The URL as shown: the server, credentials hidden, and the parameters.
    fn shown(&self) -> String {
        let query: Vec<String> = self.params.iter().map(|(n, v)| format!("{n}={v}")).collect();
        format!("{}?{}", self.endpoint.shown, query.join("&"))
    }
}

/// The bound on deliveries in flight unless [`NatsSourceConfig::with_in_flight`] says otherwise:
/// the consumer's default concurrency.
pub const DEFAULT_IN_FLIGHT: usize = 64;
/// The size limit on message bodies unless [`NatsSourceConfig::with_max_message_bytes`] says
/// otherwise.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// How long JetStream waits for the acknowledgement of a delivery before it delivers the message
/// again, unless the URL's `ack-wait-ms` says otherwise.
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);
/// How long a JetStream request (a publish's acknowledgement, a double ack, consumer info) may
/// take before it counts as unavailable, unless `with_timeout` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

const SOURCE_PARAMS: &[&str] =
    &["stream", "subject", "consumer", "ack-wait-ms", "batch", "max-deliveries", "double-ack", "ssl-ca"];
const SOURCE_PARAMS_TEXT: &str =
    "stream, subject, consumer, ack-wait-ms, batch, max-deliveries, double-ack and (tls:// only) ssl-ca";

/// How a [`NatsSource`](crate::NatsSource) reads: parsed from a URL, adjusted with the `with_*`
/// methods.
///
/// ```text
/// nats://HOST:PORT?stream=NAME&subject=SUBJECT&consumer=NAME[&ack-wait-ms=N][&batch=N][&max-deliveries=N][&double-ack=true]
/// tls://HOST:PORT?stream=NAME&subject=SUBJECT&consumer=NAME[&ssl-ca=PATH][&…]
/// ```
#[derive(Clone)]
pub struct NatsSourceConfig {
    pub(crate) endpoint: Endpoint,
    pub(crate) stream: String,
    pub(crate) subject: String,
    pub(crate) consumer: String,
    pub(crate) ack_wait: Duration,
    batch: Option<usize>,
    max_deliveries: Option<u32>,
    pub(crate) double_ack: bool,
    pub(crate) in_flight: usize,
    pub(crate) max_message_bytes: usize,
    pub(crate) timeout: Duration,
    shown: String,
}

impl NatsSourceConfig {
    /// Parses a source URL.
    ///
    /// - `stream` (required): the JetStream stream; created if missing, with `subject` as its
    ///   only subject.
    /// - `subject` (required): what the consumer reads from the stream (its filter subject);
    ///   `*` and a final `>` are wildcards.
    /// - `consumer` (required): the durable pull consumer, that is, the group: every process that
    ///   reads with the same name shares its messages. Created if missing, updated to these
    ///   settings if present.
    /// - `ack-wait-ms`: how long a delivery stays with its reader without a word before JetStream
    ///   delivers it again (the lease); default 30 000.
    /// - `batch`: messages asked for per pull request; default (and at most) the in-flight bound.
    /// - `max-deliveries`: the delivery limit the consumer enforces; see [`Self::max_deliveries`].
    /// - `double-ack`: `true` to have every acknowledgement confirmed by the server (one round
    ///   trip each, sent concurrently) rather than sent and trusted; default `false`.
    /// - `ssl-ca` (`tls://` only): a PEM file whose CA certificates are the only trusted roots,
    ///   instead of the system's. It must hold at least one certificate; it is read here, and
    ///   again at every connection.
    ///
    /// With `tls://`, the client requires TLS (never plain text) and verifies the server: its
    /// certificate must chain to a trusted root and name the URL's host. A refused certificate
    /// makes connecting fail for good (`SourceError::Failed`), not unavailable.
    ///
    /// # Errors
    ///
    /// [`ConfigError`]: what is wrong, without the credentials.
    pub fn from_url(url: &str) -> Result<Self, ConfigError> {
        let parsed = Parsed::new(url, SOURCE_PARAMS, SOURCE_PARAMS_TEXT)?;
        let stream = parsed.name("stream")?;
        let subject = parsed.subject(true)?;
        let consumer = parsed.name("consumer")?;
        let ack_wait = parsed
            .count("ack-wait-ms", "a whole number of milliseconds, at least 1")?
            .map_or(DEFAULT_ACK_WAIT, Duration::from_millis);
        let batch = parsed
            .count("batch", "a whole number of messages, at least 1")?
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        let max_deliveries = parsed
            .count("max-deliveries", "a whole number of deliveries, at least 1")?
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX));
        let double_ack = parsed.flag("double-ack")?;
        Ok(Self {
            shown: parsed.shown(),
            endpoint: parsed.endpoint,
            stream,
            subject,
            consumer,
            ack_wait,
            batch,
            max_deliveries,
            double_ack,
            in_flight: DEFAULT_IN_FLIGHT,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Sets the bound on deliveries handed out and not yet acknowledged or dropped (at least 1):
    /// the consumer's concurrency. It is the JetStream consumer's `max_ack_pending` too, and,
    /// without a `batch` in the URL, the batch size.
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

    /// Sets how long one JetStream request (consumer info, a double ack) may take before it
    /// counts as unavailable (default 10 s).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The stream's name.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The subject the consumer reads.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The durable consumer's name: the group.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// How long a silent reader keeps a delivery before JetStream delivers it again: the lease
    /// that receipts report.
    pub fn ack_wait(&self) -> Duration {
        self.ack_wait
    }

    /// Messages asked for per pull request: the URL's `batch` (at most the in-flight bound), or
    /// the in-flight bound.
    pub fn batch(&self) -> usize {
        self.batch.unwrap_or(self.in_flight).clamp(1, self.in_flight)
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
    /// it. The source only reports attempts; the JetStream consumer itself is made with
    /// `max_deliver = -1`, because a server that gives up on a message drops it silently.
    pub fn max_deliveries(&self) -> Option<u32> {
        self.max_deliveries
    }

    /// Whether acknowledgements are confirmed by the server (`double-ack=true`).
    pub fn double_ack(&self) -> bool {
        self.double_ack
    }

    /// The `ssl-ca` file whose certificates are the only trusted roots, if the URL names one.
    pub fn ssl_ca(&self) -> Option<&Path> {
        self.endpoint.ca_path()
    }
}

impl fmt::Display for NatsSourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for NatsSourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsSourceConfig")
            .field("endpoint", &self.endpoint)
            .field("stream", &self.stream)
            .field("subject", &self.subject)
            .field("consumer", &self.consumer)
            .field("ack_wait", &self.ack_wait)
            .field("batch", &self.batch())
            .field("in_flight", &self.in_flight)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("max_deliveries", &self.max_deliveries)
            .field("double_ack", &self.double_ack)
            .field("ssl_ca", &self.ssl_ca())
            .field("timeout", &self.timeout)
            .finish()
    }
}

const STREAM_PARAMS: &[&str] = &["stream", "subject", "ssl-ca"];
const STREAM_PARAMS_TEXT: &str = "stream, subject and (tls:// only) ssl-ca";

/// Where a [`NatsDeadLetters`](crate::NatsDeadLetters) or a
/// [`NatsPublisher`](crate::NatsPublisher) writes:
/// `nats://HOST:PORT?stream=NAME&subject=SUBJECT`, or
/// `tls://HOST:PORT?stream=NAME&subject=SUBJECT[&ssl-ca=PATH]`.
#[derive(Clone)]
pub struct NatsStreamConfig {
    pub(crate) endpoint: Endpoint,
    pub(crate) stream: String,
    pub(crate) subject: String,
    pub(crate) timeout: Duration,
    shown: String,
}

impl NatsStreamConfig {
    /// Parses a stream URL: `stream` (created if missing, with `subject` as its only subject)
    /// and `subject` (where messages are published; no wildcards), both required; and, with
    /// `tls://` only, `ssl-ca`, read as by [`NatsSourceConfig::from_url`].
    ///
    /// # Errors
    ///
    /// [`ConfigError`]: what is wrong, without the credentials.
    pub fn from_url(url: &str) -> Result<Self, ConfigError> {
        let parsed = Parsed::new(url, STREAM_PARAMS, STREAM_PARAMS_TEXT)?;
        let stream = parsed.name("stream")?;
        let subject = parsed.subject(false)?;
        Ok(Self {
            shown: parsed.shown(),
            endpoint: parsed.endpoint,
            stream,
            subject,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Sets how long one publish may wait for JetStream's acknowledgement before it counts as
    /// unavailable (default 10 s).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The stream's name.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The subject messages are published to.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The `ssl-ca` file whose certificates are the only trusted roots, if the URL names one.
    pub fn ssl_ca(&self) -> Option<&Path> {
        self.endpoint.ca_path()
    }
}

impl fmt::Display for NatsStreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for NatsStreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsStreamConfig")
            .field("endpoint", &self.endpoint)
            .field("stream", &self.stream)
            .field("subject", &self.subject)
            .field("ssl_ca", &self.ssl_ca())
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_part_is_rebuilt_without_credentials() {
        let config =
            NatsSourceConfig::from_url("tls://u%40x:p%40ss@mq.example:4333?stream=s&subject=a.b&consumer=c")
                .expect("valid");
        assert_eq!(config.endpoint.address(), "tls://mq.example:4333");
        assert_eq!(config.endpoint.to_string(), "tls://u%40x:***@mq.example:4333");
        let Auth::UserPassword(user, password) = &config.endpoint.auth else { panic!("user and password") };
        assert_eq!((user.as_str(), password.as_str()), ("u@x", "p@ss"));

        let token = NatsStreamConfig::from_url("nats://t0k%2Fen@h?stream=s&subject=a").expect("valid");
        assert_eq!(token.endpoint.address(), "nats://h:4222");
        assert_eq!(token.endpoint.to_string(), "nats://***@h:4222");
        let Auth::Token(secret) = &token.endpoint.auth else { panic!("a token") };
        assert_eq!(secret, "t0k/en");
    }

    #[test]
    fn percent_escapes_are_decoded_and_bad_ones_kept() {
        assert_eq!(percent_decode("a%20b%2"), "a b%2");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
    }
}
