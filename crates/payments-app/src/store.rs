//! Store selection: which [`PaymentsRepository`] adapter `--store` names, and where its dead letters go.
//!
//! This is the only place that knows which adapters exist.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::Context as _;
use payments_adapter_file::FilePaymentsRepository;
use payments_adapter_memory::MemoryPaymentsRepository;
use payments_adapter_postgres::{PostgresConfig, PostgresPaymentsRepository};
use payments_ports::{DeadLetterSink, PaymentsRepository};

use crate::dead_letter::{FileDeadLetters, StderrDeadLetters};

/// The store used when `--store` is omitted: the durable journal, embedded, no server to run.
pub const DEFAULT_STORE: &str = "file:./data/payments.journal";

/// A store named on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreSpec {
    /// `memory`: in this process only, forgotten on exit.
    Memory,
    /// `file:<path>`: the durable journal at `path`.
    File(PathBuf),
    /// `postgres://…`: a PostgreSQL database that several instances can share.
    Postgres(String),
}

impl FromStr for StoreSpec {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        if spec == "memory" {
            Ok(Self::Memory)
        } else if let Some(path) = spec.strip_prefix("file:") {
            if path.is_empty() {
                return Err("`file:` needs a path, such as file:./data/payments.journal".to_owned());
            }
            Ok(Self::File(PathBuf::from(path)))
        } else if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
            Ok(Self::Postgres(spec.to_owned()))
        } else {
            Err(format!("unknown store `{spec}`: expected `memory`, `file:<path>` or `postgres://…`"))
        }
    }
}

impl fmt::Display for StoreSpec {
    /// The spec as given, with a PostgreSQL password replaced by `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory => f.write_str("memory"),
            Self::File(path) => write!(f, "file:{}", path.display()),
            Self::Postgres(url) => f.write_str(&redact_password(url)),
        }
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let Some((credentials, host)) = rest.split_once('@') else { return url.to_owned() };
    match credentials.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// Opens the store `spec` names.
///
/// # Errors
///
/// When the store cannot be opened; the message names it.
pub async fn open(spec: &StoreSpec) -> anyhow::Result<Arc<dyn PaymentsRepository>> {
    match spec {
        StoreSpec::Memory => Ok(Arc::new(MemoryPaymentsRepository::new())),
        StoreSpec::File(path) => {
            let path = path.clone();
            let store = tokio::task::spawn_blocking(move || FilePaymentsRepository::open(path))
                .await
                .context("the task opening the journal failed")??;
            let recovery = store.recovery();
            tracing::info!(journal = %store.path().display(), payments = recovery.payments, "journal opened");
            Ok(Arc::new(store))
        }
        StoreSpec::Postgres(url) => {
            let config = PostgresConfig::from_url(url).map_err(anyhow::Error::msg)?;
            let store = PostgresPaymentsRepository::connect(config)
                .await
                .with_context(|| format!("cannot open store {spec}"))?;
            Ok(Arc::new(store))
        }
    }
}

/// Where dead letters go when `--dead-letter` is not given: beside a file store
/// (`payments.journal` → `payments.dead-letters.jsonl`), to `./data/dead-letters.jsonl` for
/// PostgreSQL, and to stderr for the memory store, which keeps nothing after exit either.
pub fn default_dead_letters(spec: &StoreSpec) -> Option<PathBuf> {
    match spec {
        StoreSpec::Memory => None,
        StoreSpec::File(journal) => Some(journal.with_extension("dead-letters.jsonl")),
        StoreSpec::Postgres(_) => Some(PathBuf::from("data/dead-letters.jsonl")),
    }
}

/// Opens the dead-letter sink: the file at `path`, or stderr.
///
/// # Errors
///
/// When the file cannot be opened for appending.
pub async fn open_dead_letters(path: Option<&std::path::Path>) -> anyhow::Result<Arc<dyn DeadLetterSink>> {
    Ok(match path {
        Some(path) => Arc::new(
            FileDeadLetters::open(path)
                .await
                .with_context(|| format!("cannot open dead-letter file {}", path.display()))?,
        ),
        None => Arc::new(StderrDeadLetters::default()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_of_store_and_explains_the_rest() {
        assert_eq!("memory".parse(), Ok(StoreSpec::Memory));
        assert_eq!("file:data/p.journal".parse(), Ok(StoreSpec::File(PathBuf::from("data/p.journal"))));
        assert_eq!("postgres://u@h/db".parse(), Ok(StoreSpec::Postgres("postgres://u@h/db".to_owned())));
        assert_eq!("postgresql://h/db".parse(), Ok(StoreSpec::Postgres("postgresql://h/db".to_owned())));
        assert!("file:".parse::<StoreSpec>().unwrap_err().contains("needs a path"));
        let err = "redis://x".parse::<StoreSpec>().unwrap_err();
        assert_eq!(err, "unknown store `redis://x`: expected `memory`, `file:<path>` or `postgres://…`");
    }

    #[test]
    fn never_shows_a_password() {
        let spec: StoreSpec = "postgres://app:s3cret@db:5432/payments".parse().expect("valid");
        assert_eq!(spec.to_string(), "postgres://app:***@db:5432/payments");
        let spec: StoreSpec = "postgres://app@db/payments".parse().expect("valid");
        assert_eq!(spec.to_string(), "postgres://app@db/payments");
    }

    #[test]
    fn dead_letters_go_beside_a_file_store() {
        let spec = StoreSpec::File(PathBuf::from("data/payments.journal"));
        assert_eq!(default_dead_letters(&spec), Some(PathBuf::from("data/payments.dead-letters.jsonl")));
        assert_eq!(default_dead_letters(&StoreSpec::Memory), None);
    }
}
