//! The one place that knows which adapters exist: it turns a store spec (`--store`), an input
//! spec (`--input`) and a dead-letter spec (`--dead-letter`) into adapters behind their ports.
//! `cargo xtask arch` checks that no other module of the app names an adapter crate.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use payments_ports::{BoxError, DeadLetterSink, DeliverySource, PaymentsRepository};
use payments_simulator::Opener;
use payments_sink_lines::{FileDeadLetters, StderrDeadLetters};
use payments_store_file::FilePaymentsRepository;
use payments_store_memory::MemoryPaymentsRepository;
use payments_store_mysql::{MysqlConfig, MysqlPaymentsRepository};
use payments_store_postgres::{PostgresConfig, PostgresPaymentsRepository};

/// The store used when `--store` is omitted: the durable journal, embedded, no server to run.
pub const DEFAULT_STORE: &str = "file:./data/payments.journal";

/// The largest message by default, in bytes (64 KiB): a larger one is dead-lettered as too large.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = payments_source_lines::DEFAULT_MAX_LINE;

/// The help text of `--store`.
pub const STORE_HELP: &str = "Where payments are recorded: `file:<path>` (a crash-safe journal), `postgres://…` or `mysql://…` (shared by several instances) or `memory`";

/// Why a spec on the command line names nothing this build can open.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// No store has this form.
    #[error("unknown store `{0}`: expected `memory`, `file:<path>`, `postgres://…` or `mysql://…`")]
    UnknownStore(String),
    /// `file:` without a path.
    #[error("`file:` needs a path, such as file:./data/payments.journal")]
    FileWithoutPath,
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
        /// The input as given.
        input: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The dead-letter file could not be opened.
    #[error("cannot open dead-letter file {}", path.display())]
    DeadLetters {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A store named on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreSpec {
    /// `memory`: in this process only, forgotten on exit.
    Memory,
    /// `file:<path>`: the durable journal at `path`.
    File(PathBuf),
    /// `postgres://…`: a PostgreSQL database that several instances can share.
    Postgres(String),
    /// `mysql://…`: a MySQL or MariaDB database that several instances can share.
    Mysql(String),
}

impl FromStr for StoreSpec {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        if spec == "memory" {
            Ok(Self::Memory)
        } else if let Some(path) = spec.strip_prefix("file:") {
            if path.is_empty() {
                return Err(SpecError::FileWithoutPath);
            }
            Ok(Self::File(PathBuf::from(path)))
        } else if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
            Ok(Self::Postgres(spec.to_owned()))
        } else if spec.starts_with("mysql://") {
            Ok(Self::Mysql(spec.to_owned()))
        } else {
            Err(SpecError::UnknownStore(spec.to_owned()))
        }
    }
}

impl fmt::Display for StoreSpec {
    /// The spec as given, with a password replaced by `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory => f.write_str("memory"),
            Self::File(path) => write!(f, "file:{}", path.display()),
            Self::Postgres(url) | Self::Mysql(url) => f.write_str(&redact_password(url)),
        }
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
    /// Opens the store.
    ///
    /// # Errors
    ///
    /// When it cannot be opened; the message names it, its password redacted.
    pub async fn open(&self) -> Result<Arc<dyn PaymentsRepository>, OpenError> {
        let failed = |source: BoxError| OpenError::Store { spec: self.to_string(), source };
        match self {
            Self::Memory => Ok(Arc::new(MemoryPaymentsRepository::new())),
            Self::File(path) => {
                let path = path.clone();
                let store = tokio::task::spawn_blocking(move || FilePaymentsRepository::open(path))
                    .await
                    .map_err(|err| failed(err.into()))?
                    .map_err(|err| failed(err.into()))?;
                let recovery = store.recovery();
                tracing::info!(journal = %store.path().display(), payments = recovery.payments, "journal opened");
                Ok(Arc::new(store))
            }
            Self::Postgres(url) => {
                let config = PostgresConfig::from_url(url).map_err(|err| failed(err.into()))?;
                let store =
                    PostgresPaymentsRepository::connect(config).await.map_err(|err| failed(err.into()))?;
                Ok(Arc::new(store))
            }
            Self::Mysql(url) => {
                let config = MysqlConfig::from_url(url).map_err(|err| failed(err.into()))?;
                let store =
                    MysqlPaymentsRepository::connect(config).await.map_err(|err| failed(err.into()))?;
                Ok(Arc::new(store))
            }
        }
    }

    /// Where dead letters go when `--dead-letter` is not given: beside a file store
    /// (`payments.journal` → `payments.dead-letters.jsonl`), to `./data/dead-letters.jsonl` for
    /// a database store, and to stderr for the memory store, which keeps nothing after exit either.
    pub fn default_dead_letters(&self) -> DeadLetterSpec {
        match self {
            Self::Memory => DeadLetterSpec::Stderr,
            Self::File(journal) => DeadLetterSpec::File(journal.with_extension("dead-letters.jsonl")),
            Self::Postgres(_) | Self::Mysql(_) => {
                DeadLetterSpec::File(PathBuf::from("data/dead-letters.jsonl"))
            }
        }
    }

    /// How `simulate` reaches this store across its simulated crashes. A memory store cannot
    /// outlive a crash of its process: it stands for a store that lives elsewhere, so the same
    /// instance is kept. Any other store is opened again after each crash, from what it holds.
    ///
    /// # Errors
    ///
    /// When the memory store cannot be made (never, today).
    pub async fn simulation_opener(&self) -> Result<Opener, OpenError> {
        Ok(match self {
            Self::Memory => {
                let store = self.open().await?;
                Box::new(move || {
                    let store = Arc::clone(&store);
                    Box::pin(async move { Ok(store) })
                })
            }
            _ => {
                let spec = self.clone();
                Box::new(move || {
                    let spec = spec.clone();
                    Box::pin(async move { spec.open().await.map_err(BoxError::from) })
                })
            }
        })
    }
}

/// Where deliveries come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InputSpec {
    /// JSON lines from a file, or from stdin for `-`.
    Lines(String),
}

impl FromStr for InputSpec {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        Ok(Self::Lines(spec.to_owned()))
    }
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
                .map_err(|source| OpenError::Input { input: input.clone(), source }),
        }
    }
}

/// Where dead letters go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeadLetterSpec {
    /// A JSON-lines file, synced before each acknowledgement.
    File(PathBuf),
    /// Standard error, one JSON line each.
    Stderr,
}

impl FromStr for DeadLetterSpec {
    type Err = SpecError;

    /// A path.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        Ok(Self::File(PathBuf::from(spec)))
    }
}

impl DeadLetterSpec {
    /// Opens the sink.
    ///
    /// # Errors
    ///
    /// When the file cannot be opened for appending.
    pub async fn open(&self) -> Result<Arc<dyn DeadLetterSink>, OpenError> {
        Ok(match self {
            Self::File(path) => Arc::new(
                FileDeadLetters::open(path)
                    .await
                    .map_err(|source| OpenError::DeadLetters { path: path.clone(), source })?,
            ),
            Self::Stderr => Arc::new(StderrDeadLetters::default()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_of_store_and_explains_the_rest() {
        assert_eq!("memory".parse::<StoreSpec>().ok(), Some(StoreSpec::Memory));
        assert_eq!(
            "file:data/p.journal".parse::<StoreSpec>().ok(),
            Some(StoreSpec::File(PathBuf::from("data/p.journal")))
        );
        assert_eq!(
            "postgres://u@h/db".parse::<StoreSpec>().ok(),
            Some(StoreSpec::Postgres("postgres://u@h/db".to_owned()))
        );
        assert_eq!(
            "postgresql://h/db".parse::<StoreSpec>().ok(),
            Some(StoreSpec::Postgres("postgresql://h/db".to_owned()))
        );
        assert!(matches!("file:".parse::<StoreSpec>(), Err(SpecError::FileWithoutPath)));
        let err = "redis://x".parse::<StoreSpec>().expect_err("not a store");
        assert_eq!(
            err.to_string(),
            "unknown store `redis://x`: expected `memory`, `file:<path>`, `postgres://…` or `mysql://…`"
        );
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
        let spec = StoreSpec::File(PathBuf::from("data/payments.journal"));
        assert_eq!(
            spec.default_dead_letters(),
            DeadLetterSpec::File(PathBuf::from("data/payments.dead-letters.jsonl"))
        );
        assert_eq!(StoreSpec::Memory.default_dead_letters(), DeadLetterSpec::Stderr);
    }
}
