//! The stores this build can open: one entry each in [`STORES`]. Adding a store to the app is
//! adding its entry here: `--store` then parses and opens it, its help text names it, and the crash
//! torture and the benchmarks take it in.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use payments_ports::{BoxError, PaymentsRepository};
use payments_store_file::FilePaymentsRepository;
use payments_store_memory::MemoryPaymentsRepository;
use payments_store_mysql::{MysqlConfig, MysqlPaymentsRepository};
use payments_store_postgres::{PostgresConfig, PostgresPaymentsRepository};

use super::DeadLetterSpec;

type Opening = Pin<Box<dyn Future<Output = Result<Arc<dyn PaymentsRepository>, BoxError>> + Send>>;

/// One store: how `--store` names it, how it opens, and how tests reach a fresh one.
#[derive(Debug)]
pub struct StoreEntry {
    /// Its short name, as the crash torture and the benchmarks call it.
    pub name: &'static str,
    /// How a spec of it starts: `memory`, `file:`, `postgres://`; the spec is for the store itself.
    pub prefixes: &'static [&'static str],
    /// How `--store` writes it, for the help text: `file:<path>`, `postgres://…`.
    pub form: &'static str,
    /// What it is, in a few words, for the help text.
    pub what: &'static str,
    /// Opens it from the whole spec.
    pub open: fn(String) -> Opening,
    /// Where its dead letters go when `--dead-letter` is not given.
    pub dead_letters: fn(&str) -> DeadLetterSpec,
    /// Whether it lives in this process only: `simulate` then keeps the same instance across its
    /// simulated crashes, as a store that lives elsewhere would outlive them.
    pub in_process: bool,
    /// Whether several processes may use it at once (a database), or one at a time (a journal).
    pub shared: bool,
    /// How the crash torture and the benchmarks reach a fresh one.
    pub test_env: TestEnv,
}

/// How tests reach a fresh store of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestEnv {
    /// It lives in the process: nothing to set up (and nothing to crash-test).
    InProcess,
    /// It lives in files: the spec, with `{dir}` standing for a fresh temporary directory.
    TempDir(&'static str),
    /// It lives on a server that `payments-test-support` reaches by this name, which makes a
    /// fresh place on it (a schema, a database) and removes it afterwards.
    Server(&'static str),
}

/// Every store this build can open, the default first.
pub const STORES: &[StoreEntry] = &[
    StoreEntry {
        name: "file",
        prefixes: &["file:"],
        form: "file:<path>",
        what: "a crash-safe journal, embedded; the default",
        open: |spec| Box::pin(open_file(spec)),
        dead_letters: |spec| {
            let journal = Path::new(spec.trim_start_matches("file:"));
            DeadLetterSpec::File(journal.with_extension("dead-letters.jsonl"))
        },
        in_process: false,
        shared: false,
        test_env: TestEnv::TempDir("file:{dir}/payments.journal"),
    },
    StoreEntry {
        name: "postgres",
        prefixes: &["postgres://", "postgresql://"],
        form: "postgres://…",
        what: "PostgreSQL, shared by several instances",
        open: |url| {
            Box::pin(async move {
                let store = PostgresPaymentsRepository::connect(PostgresConfig::from_url(&url)?).await?;
                Ok(Arc::new(store) as Arc<dyn PaymentsRepository>)
            })
        },
        dead_letters: |_| DeadLetterSpec::File(PathBuf::from("data/dead-letters.jsonl")),
        in_process: false,
        shared: true,
        test_env: TestEnv::Server("postgres"),
    },
    StoreEntry {
        name: "mysql",
        prefixes: &["mysql://"],
        form: "mysql://…",
        what: "MySQL or MariaDB, shared by several instances",
        open: |url| {
            Box::pin(async move {
                let store = MysqlPaymentsRepository::connect(MysqlConfig::from_url(&url)?).await?;
                Ok(Arc::new(store) as Arc<dyn PaymentsRepository>)
            })
        },
        dead_letters: |_| DeadLetterSpec::File(PathBuf::from("data/dead-letters.jsonl")),
        in_process: false,
        shared: true,
        test_env: TestEnv::Server("mysql"),
    },
    StoreEntry {
        name: "memory",
        prefixes: &["memory"],
        form: "memory",
        what: "this process only, forgotten on exit",
        open: |_| {
            Box::pin(async { Ok(Arc::new(MemoryPaymentsRepository::new()) as Arc<dyn PaymentsRepository>) })
        },
        // It keeps nothing after exit; neither do its dead letters.
        dead_letters: |_| DeadLetterSpec::Stderr,
        in_process: true,
        shared: false,
        test_env: TestEnv::InProcess,
    },
];

async fn open_file(spec: String) -> Result<Arc<dyn PaymentsRepository>, BoxError> {
    let path = PathBuf::from(spec.trim_start_matches("file:"));
    if path.as_os_str().is_empty() {
        return Err("`file:` needs a path, such as file:./data/payments.journal".into());
    }
    let store = tokio::task::spawn_blocking(move || FilePaymentsRepository::open(path)).await??;
    let recovery = store.recovery();
    tracing::info!(journal = %store.path().display(), payments = recovery.payments, "journal opened");
    Ok(Arc::new(store))
}

/// The help text of `--store`, from the table.
pub fn store_help() -> String {
    let forms: Vec<String> = STORES.iter().map(|s| format!("`{}` ({})", s.form, s.what)).collect();
    format!("Where payments are recorded: {}", forms.join(", "))
}
