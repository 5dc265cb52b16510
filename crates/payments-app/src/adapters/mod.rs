//! The one place that knows which adapters exist: it turns a store spec (`--store`), an input
//! spec (`--input`), a dead-letter spec (`--dead-letter`) and a publish target (`--to`) into
//! adapters behind their ports.
//! `cargo xtask arch` checks that no other module of the app names an adapter crate.
//!
//! Stores are a table, [`STORES`] in `stores.rs`: adding one is adding its entry.

mod operations;
mod stores;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use payments_ports::{BoxError, DeadLetterSink, DeliverySource, PaymentsRepository, Publisher};
use payments_simulator::Opener;
use payments_sink_lines::{FileDeadLetters, StderrDeadLetters};
use payments_source_nats::{NatsDeadLetters, NatsPublisher, NatsSource, NatsSourceConfig, NatsStreamConfig};
use payments_source_rabbitmq::{
    RabbitDeadLetters, RabbitPublisher, RabbitSource, RabbitSourceConfig, RabbitTargetConfig,
};
use payments_source_redis::{
    RedisDeadLetters, RedisPublisher, RedisSource, RedisSourceConfig, RedisStreamConfig,
};

pub use self::operations::Operations;
pub use self::stores::{STORES, StoreEntry, TestEnv, store_help};

/// The store used when `--store` is omitted: the durable journal, embedded, no server to run.
pub const DEFAULT_STORE: &str = "file:./data/payments.journal";

/// The largest message by default, in bytes (64 KiB): a larger one is dead-lettered as too large.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = payments_source_lines::DEFAULT_MAX_LINE;

/// Why a spec on the command line names nothing this build can open.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// No store has this form.
    #[error("unknown store `{spec}`: expected {forms}")]
    UnknownStore {
        /// The spec as given.
        spec: String,
        /// The forms a store spec may take.
        forms: String,
    },
    /// A URL of a kind this option does not take.
    #[error("`{spec}` is not something this option takes: expected {expected}")]
    UnknownUrl {
        /// The spec, its password hidden.
        spec: String,
        /// What it takes.
        expected: &'static str,
    },
    /// A URL its adapter refused.
    #[error("invalid `{spec}`")]
    Url {
        /// The URL, its password hidden.
        spec: String,
        /// The adapter's reason.
        #[source]
        source: BoxError,
    },
    /// Only the start of a spec, such as `file:` without a path.
    #[error("`{spec}` needs more: write {form}")]
    Incomplete {
        /// The spec as given.
        spec: String,
        /// The form of the store it starts.
        form: &'static str,
    },
}

/// Why an adapter could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The store could not be opened or reached.
    #[error("cannot open store {spec}")]
    Store {
        /// The store, its password redacted.
        spec: String,
        /// The adapter's error.
        #[source]
        source: BoxError,
    },
    /// The input could not be opened.
    #[error("cannot open input {input}")]
    Input {
        /// The input, its password hidden.
        input: String,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// The dead-letter sink could not be opened.
    #[error("cannot open dead letters {target}")]
    DeadLetters {
        /// Where they go, its password hidden.
        target: String,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// The metrics endpoint could not listen.
    #[error("cannot serve metrics on {address}")]
    Metrics {
        /// The address asked for.
        address: String,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// The publish target could not be reached.
    #[error("cannot open {target}")]
    Target {
        /// Where messages go, its password hidden.
        target: String,
        /// Why.
        #[source]
        source: BoxError,
    },
}

/// A store named on the command line: which entry of [`STORES`] it is, and the spec itself.
#[derive(Clone, Debug)]
pub struct StoreSpec {
    entry: &'static StoreEntry,
    spec: String,
}

impl PartialEq for StoreSpec {
    fn eq(&self, other: &Self) -> bool {
        self.spec == other.spec
    }
}

impl Eq for StoreSpec {}

impl FromStr for StoreSpec {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        for entry in STORES {
            for prefix in entry.prefixes {
                // A prefix that ends in `:` or `/` starts a spec; any other is the whole spec.
                let opens = prefix.ends_with(':') || prefix.ends_with('/');
                if spec == *prefix && opens {
                    return Err(SpecError::Incomplete { spec: spec.to_owned(), form: entry.form });
                }
                if (opens && spec.starts_with(prefix)) || spec == *prefix {
                    return Ok(Self { entry, spec: spec.to_owned() });
                }
            }
        }
        Err(SpecError::UnknownStore {
            spec: spec.to_owned(),
            forms: STORES.iter().map(|s| format!("`{}`", s.form)).collect::<Vec<_>>().join(", "),
        })
    }
}

impl fmt::Display for StoreSpec {
    /// The spec as given, with a password replaced by `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_password(&self.spec))
    }
}

/// `scheme://user:secret@host/db` → `scheme://user:***@host/db`.
pub fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let Some((credentials, host)) = rest.split_once('@') else { return url.to_owned() };
    match credentials.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

impl StoreSpec {
    /// The journal at `path`: where `simulate` keeps its own store.
    pub fn journal(path: &std::path::Path) -> Self {
        Self { entry: &STORES[0], spec: format!("file:{}", path.display()) }
    }

    /// Its entry in the table.
    pub const fn entry(&self) -> &'static StoreEntry {
        self.entry
    }

    /// Opens the store.
    ///
    /// # Errors
    ///
    /// When it cannot be opened; the message names it, its password redacted.
    pub async fn open(&self) -> Result<Arc<dyn PaymentsRepository>, OpenError> {
        (self.entry.open)(self.spec.clone())
            .await
            .map_err(|source| OpenError::Store { spec: self.to_string(), source })
    }

    /// Where dead letters go when `--dead-letter` is not given: beside a file store
    /// (`payments.journal` → `payments.dead-letters.jsonl`), to `./data/dead-letters.jsonl` for
    /// a database store, and to stderr for the memory store, which keeps nothing after exit either.
    pub fn default_dead_letters(&self) -> DeadLetterSpec {
        (self.entry.dead_letters)(&self.spec)
    }

    /// How `simulate` reaches this store across its simulated crashes. A store that lives in this
    /// process cannot outlive a crash of it: it stands for a store that lives elsewhere, so the
    /// same instance is kept. Any other store is opened again after each crash, from what it holds.
    ///
    /// # Errors
    ///
    /// When the store kept across crashes cannot be opened.
    pub async fn simulation_opener(&self) -> Result<Opener, OpenError> {
        if self.entry.in_process {
            let store = self.open().await?;
            return Ok(Box::new(move || {
                let store = Arc::clone(&store);
                Box::pin(async move { Ok(store) })
            }));
        }
        let spec = self.clone();
        Ok(Box::new(move || {
            let spec = spec.clone();
            Box::pin(async move { spec.open().await.map_err(BoxError::from) })
        }))
    }
}

/// Where deliveries come from.
#[derive(Clone, Debug)]
pub enum InputSpec {
    /// JSON lines from a file, or from stdin for `-`.
    Lines(String),
    /// A Redis stream, read by a consumer group: `redis://HOST:PORT[/DB]?stream=…&group=…`.
    Redis(RedisSourceConfig),
    /// A NATS JetStream durable pull consumer: `nats://HOST:PORT?stream=…&subject=…&consumer=…`.
    Nats(NatsSourceConfig),
    /// A RabbitMQ queue: `amqp://USER:PASS@HOST:PORT/VHOST?queue=…`.
    Rabbit(RabbitSourceConfig),
}

/// Which broker a URL is for, by its scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Broker {
    Redis,
    Nats,
    Rabbit,
}

impl Broker {
    fn of(spec: &str) -> Option<Self> {
        let (scheme, _) = spec.split_once("://")?;
        match scheme {
            "redis" | "rediss" => Some(Self::Redis),
            "nats" | "tls" => Some(Self::Nats),
            "amqp" | "amqps" => Some(Self::Rabbit),
            _ => None,
        }
    }
}

impl FromStr for InputSpec {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let parsed = match Broker::of(spec) {
            Some(Broker::Redis) => RedisSourceConfig::from_url(spec).map(Self::Redis).map_err(BoxError::from),
            Some(Broker::Nats) => NatsSourceConfig::from_url(spec).map(Self::Nats).map_err(BoxError::from),
            Some(Broker::Rabbit) => {
                RabbitSourceConfig::from_url(spec).map(Self::Rabbit).map_err(BoxError::from)
            }
            None if spec.contains("://") => {
                return Err(SpecError::UnknownUrl {
                    spec: redact_password(spec),
                    expected: "a path, `-`, redis://…, nats://… or amqp://…",
                });
            }
            None => Ok(Self::Lines(spec.to_owned())),
        };
        parsed.map_err(|err| url_error(spec, err))
    }
}

impl fmt::Display for InputSpec {
    /// The input, with a password hidden.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Lines(path) => f.write_str(path),
            Self::Redis(config) => write!(f, "{config}"),
            Self::Nats(config) => write!(f, "{config}"),
            Self::Rabbit(config) => write!(f, "{config}"),
        }
    }
}

/// A URL a driver refused, with the password hidden.
fn url_error(spec: &str, err: impl Into<BoxError>) -> SpecError {
    SpecError::Url { spec: redact_password(spec), source: err.into() }
}

/// How sources read, whatever they read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceOptions {
    /// The largest message, in bytes; a larger one is dead-lettered as too large.
    pub max_message_bytes: usize,
    /// How many deliveries may be handed out and not yet settled: a broker's prefetch.
    pub in_flight: usize,
}

impl InputSpec {
    /// The most deliveries of one message the input allows before it is dead-lettered unhandled
    /// (a broker URL's `max-deliveries`); `None`: no limit.
    pub fn max_deliveries(&self) -> Option<u32> {
        match self {
            Self::Lines(_) => None,
            Self::Redis(config) => config.max_deliveries(),
            Self::Nats(config) => config.max_deliveries(),
            Self::Rabbit(config) => config.max_deliveries(),
        }
    }

    /// Opens the source.
    ///
    /// # Errors
    ///
    /// When it cannot be opened.
    pub async fn open(&self, options: SourceOptions) -> Result<Box<dyn DeliverySource>, OpenError> {
        match self {
            Self::Lines(input) => payments_source_lines::open(input, options.max_message_bytes)
                .await
                .map_err(|source| OpenError::Input { input: input.clone(), source: source.into() }),
            Self::Redis(config) => {
                let config = config
                    .clone()
                    .with_in_flight(options.in_flight)
                    .with_max_message_bytes(options.max_message_bytes);
                let shown = config.to_string();
                let source = RedisSource::connect(config)
                    .await
                    .map_err(|source| OpenError::Input { input: shown, source: source.into() })?;
                Ok(Box::new(source))
            }
            Self::Nats(config) => {
                let config = config
                    .clone()
                    .with_in_flight(options.in_flight)
                    .with_max_message_bytes(options.max_message_bytes);
                let shown = config.to_string();
                let source = NatsSource::connect(config)
                    .await
                    .map_err(|source| OpenError::Input { input: shown, source: source.into() })?;
                Ok(Box::new(source))
            }
            Self::Rabbit(config) => {
                let config = config
                    .clone()
                    .with_in_flight(options.in_flight)
                    .with_max_message_bytes(options.max_message_bytes);
                let shown = config.to_string();
                let source = RabbitSource::connect(config)
                    .await
                    .map_err(|source| OpenError::Input { input: shown, source: source.into() })?;
                Ok(Box::new(source))
            }
        }
    }
}

/// Where dead letters go.
#[derive(Clone, Debug)]
pub enum DeadLetterSpec {
    /// A JSON-lines file, synced before each acknowledgement.
    File(PathBuf),
    /// Standard error, one JSON line each.
    Stderr,
    /// A Redis stream: `redis://HOST:PORT[/DB]?stream=NAME`.
    Redis(RedisStreamConfig),
    /// A JetStream subject: `nats://HOST:PORT?stream=NAME&subject=SUBJECT`.
    Nats(NatsStreamConfig),
    /// A RabbitMQ queue or exchange: `amqp://USER:PASS@HOST:PORT/VHOST?queue=NAME`.
    Rabbit(RabbitTargetConfig),
}

impl PartialEq for DeadLetterSpec {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl fmt::Display for DeadLetterSpec {
    /// Where the letters go, with a password hidden.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Stderr => f.write_str("stderr"),
            Self::Redis(config) => write!(f, "{config}"),
            Self::Nats(config) => write!(f, "{config}"),
            Self::Rabbit(config) => write!(f, "{config}"),
        }
    }
}

impl FromStr for DeadLetterSpec {
    type Err = SpecError;

    /// A path, or a broker URL.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let parsed = match Broker::of(spec) {
            Some(Broker::Redis) => RedisStreamConfig::from_url(spec).map(Self::Redis).map_err(BoxError::from),
            Some(Broker::Nats) => NatsStreamConfig::from_url(spec).map(Self::Nats).map_err(BoxError::from),
            Some(Broker::Rabbit) => {
                RabbitTargetConfig::from_url(spec).map(Self::Rabbit).map_err(BoxError::from)
            }
            None if spec.contains("://") => {
                return Err(SpecError::UnknownUrl {
                    spec: redact_password(spec),
                    expected: "a path, redis://…?stream=…, nats://…?stream=…&subject=… or amqp://…?queue=…",
                });
            }
            None => Ok(Self::File(PathBuf::from(spec))),
        };
        parsed.map_err(|err| url_error(spec, err))
    }
}

impl DeadLetterSpec {
    /// Opens the sink.
    ///
    /// # Errors
    ///
    /// When the file cannot be opened for appending, or the broker cannot be reached.
    pub async fn open(&self) -> Result<Arc<dyn DeadLetterSink>, OpenError> {
        let failed = |source: BoxError| OpenError::DeadLetters { target: self.to_string(), source };
        Ok(match self {
            Self::File(path) => {
                Arc::new(FileDeadLetters::open(path).await.map_err(|err| failed(err.into()))?)
            }
            Self::Stderr => Arc::new(StderrDeadLetters::default()),
            Self::Redis(config) => {
                Arc::new(RedisDeadLetters::connect(config.clone()).await.map_err(|err| failed(err.into()))?)
            }
            Self::Nats(config) => {
                Arc::new(NatsDeadLetters::connect(config.clone()).await.map_err(|err| failed(err.into()))?)
            }
            Self::Rabbit(config) => {
                Arc::new(RabbitDeadLetters::connect(config.clone()).await.map_err(|err| failed(err.into()))?)
            }
        })
    }
}

/// Where `publish` sends messages.
#[derive(Clone, Debug)]
pub enum TargetSpec {
    /// A Redis stream: `redis://HOST:PORT[/DB]?stream=NAME`.
    Redis(RedisStreamConfig),
    /// A JetStream subject: `nats://HOST:PORT?stream=NAME&subject=SUBJECT`.
    Nats(NatsStreamConfig),
    /// A RabbitMQ queue or exchange: `amqp://USER:PASS@HOST:PORT/VHOST?queue=NAME`.
    Rabbit(RabbitTargetConfig),
}

impl FromStr for TargetSpec {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let parsed = match Broker::of(spec) {
            Some(Broker::Redis) => RedisStreamConfig::from_url(spec).map(Self::Redis).map_err(BoxError::from),
            Some(Broker::Nats) => NatsStreamConfig::from_url(spec).map(Self::Nats).map_err(BoxError::from),
            Some(Broker::Rabbit) => {
                RabbitTargetConfig::from_url(spec).map(Self::Rabbit).map_err(BoxError::from)
            }
            None => {
                return Err(SpecError::UnknownUrl {
                    spec: redact_password(spec),
                    expected: "redis://…?stream=…, nats://…?stream=…&subject=… or amqp://…?queue=…",
                });
            }
        };
        parsed.map_err(|err| url_error(spec, err))
    }
}

impl fmt::Display for TargetSpec {
    /// Where messages go, with a password hidden.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Redis(config) => write!(f, "{config}"),
            Self::Nats(config) => write!(f, "{config}"),
            Self::Rabbit(config) => write!(f, "{config}"),
        }
    }
}

impl TargetSpec {
    /// Connects the publisher.
    ///
    /// # Errors
    ///
    /// When the broker cannot be reached.
    pub async fn open(&self) -> Result<Arc<dyn Publisher>, OpenError> {
        let failed = |source: BoxError| OpenError::Target { target: self.to_string(), source };
        Ok(match self {
            Self::Redis(config) => {
                Arc::new(RedisPublisher::connect(config.clone()).await.map_err(|err| failed(err.into()))?)
            }
            Self::Nats(config) => {
                Arc::new(NatsPublisher::connect(config.clone()).await.map_err(|err| failed(err.into()))?)
            }
            Self::Rabbit(config) => {
                Arc::new(RabbitPublisher::connect(config.clone()).await.map_err(|err| failed(err.into()))?)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_of_store_and_explains_the_rest() {
        let name = |spec: &str| spec.parse::<StoreSpec>().map(|s| s.entry().name).map_err(|e| e.to_string());
        assert_eq!(name("memory"), Ok("memory"));
        assert_eq!(name("file:data/p.journal"), Ok("file"));
        assert_eq!(name("postgres://u@h/db"), Ok("postgres"));
        assert_eq!(name("postgresql://h/db"), Ok("postgres"));
        assert_eq!(name("mysql://root@h:3306/db"), Ok("mysql"));
        assert_eq!(name("file:"), Err("`file:` needs more: write file:<path>".to_owned()));
        assert_eq!(name("memory:x").map_err(|e| e.starts_with("unknown store `memory:x`")), Err(true));
        assert_eq!(
            name("redis://x"),
            Err("unknown store `redis://x`: expected `file:<path>`, `postgres://…`, `mysql://…`, `memory`"
                .to_owned())
        );
    }

    #[test]
    fn the_store_help_names_every_store_of_the_table() {
        let help = store_help();
        for entry in STORES {
            assert!(help.contains(entry.form), "{help}");
        }
    }

    #[test]
    fn never_shows_a_password() {
        let spec: StoreSpec = "postgres://app:s3cret@db:5432/payments".parse().expect("valid");
        assert_eq!(spec.to_string(), "postgres://app:***@db:5432/payments");
        let spec: StoreSpec = "postgres://app@db/payments".parse().expect("valid");
        assert_eq!(spec.to_string(), "postgres://app@db/payments");
        let spec: StoreSpec = "mysql://app:s3cret@db:3306/payments".parse().expect("valid");
        assert_eq!(spec.to_string(), "mysql://app:***@db:3306/payments");
    }

    #[test]
    fn dead_letters_go_beside_a_file_store() {
        let spec: StoreSpec = "file:data/payments.journal".parse().expect("valid");
        assert_eq!(
            spec.default_dead_letters(),
            DeadLetterSpec::File(PathBuf::from("data/payments.dead-letters.jsonl"))
        );
        let memory: StoreSpec = "memory".parse().expect("valid");
        assert_eq!(memory.default_dead_letters(), DeadLetterSpec::Stderr);
    }
}
