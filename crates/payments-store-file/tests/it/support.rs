//! Building journals, reading them back, and running this binary as a child process.

use std::path::Path;

use payments_ports::domain::{Payment, SaveOutcome};
use payments_ports::{PaymentsRepository, RepositoryError, export_all};
use payments_store_file::{FilePaymentsRepository, OpenError};

/// The bytes before the first record.
pub(crate) const HEADER_LEN: u64 = 16;

/// A temporary directory for the sweeps, which open a journal thousands of times: in memory
/// (`/dev/shm`) where there is one, since what they test is recovery logic, not the disk.
pub(crate) fn scratch() -> std::io::Result<tempfile::TempDir> {
    match Path::new("/dev/shm") {
        shm if shm.is_dir() => tempfile::tempdir_in(shm),
        _ => tempfile::tempdir(),
    }
}

/// A single-threaded runtime for one test.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// The `i`th payment of a test journal; IDs of varying length, so records are of varying size.
pub(crate) fn payment(i: usize) -> Payment {
    let id = format!("p{i}-{}", "x".repeat(i % 7));
    Payment::parse(&id, 1 + i as u64 * 101, ["EUR", "USD", "JPY"][i % 3]).expect("valid")
}

/// Where each record of `payments` ends, as a byte offset in a journal of the latest version
/// (version 2: 27 bytes a record beyond the ID).
pub(crate) fn record_ends(payments: &[Payment]) -> Vec<u64> {
    let mut end = HEADER_LEN;
    payments
        .iter()
        .map(|p| {
            end += 27 + p.id.len() as u64;
            end
        })
        .collect()
}

/// Writes a journal holding `payments`, one save (and one sync) at a time, and closes it.
pub(crate) fn write_journal(path: &Path, payments: &[Payment]) {
    let store = FilePaymentsRepository::open(path).expect("create journal");
    runtime().block_on(async {
        for p in payments {
            assert_eq!(store.save(p).await.expect("save"), SaveOutcome::New);
        }
    });
}

/// Every payment the store holds, in ID order.
pub(crate) fn contents(store: &FilePaymentsRepository) -> Vec<Payment> {
    runtime().block_on(async {
        let mut all = Vec::new();
        export_all(store, 1000, |p| {
            all.push(p);
            Ok::<_, RepositoryError>(())
        })
        .await
        .expect("export");
        all
    })
}

/// Opens a copy of `bytes` as a journal in `dir`.
pub(crate) fn open_copy(dir: &Path, bytes: &[u8]) -> Result<FilePaymentsRepository, OpenError> {
    let path = dir.join("copy.journal");
    std::fs::write(&path, bytes).expect("write copy");
    FilePaymentsRepository::open(&path)
}

/// Sorted by ID, as an export returns them.
pub(crate) fn sorted(payments: &[Payment]) -> Vec<Payment> {
    let mut sorted = payments.to_vec();
    sorted.sort_by_key(|p| p.id);
    sorted
}

pub(crate) mod child {
    //! This binary, started again with `PAYMENTS_FILE_IT_CHILD` set, plays a child process.

    use std::io::Write;
    use std::process::{Command, ExitCode};
    use std::sync::Arc;

    use super::*;

    const ENV: &str = "PAYMENTS_FILE_IT_CHILD";

    /// A command that runs this binary as a child doing `role`.
    pub(crate) fn command(role: &str) -> Command {
        let mut command = Command::new(std::env::current_exe().expect("the test binary's path"));
        command.env(ENV, role);
        command
    }

    /// Runs the child's role when this process is a child.
    pub(crate) fn run_if_child() -> Option<ExitCode> {
        let role = std::env::var(ENV).ok()?;
        let mut parts = role.splitn(3, ':');
        let code = match (parts.next(), parts.next(), parts.next()) {
            (Some("open"), Some(path), None) => open_and_report(path),
            (Some("save"), Some(count), Some(path)) => save_and_report(path, count.parse().expect("a count")),
            _ => {
                eprintln!("unknown child role {role}");
                ExitCode::FAILURE
            }
        };
        Some(code)
    }

    /// Opens the journal and prints what happened.
    fn open_and_report(path: &str) -> ExitCode {
        match FilePaymentsRepository::open(path) {
            Ok(_) => println!("opened"),
            Err(err) => println!("error: {err}"),
        }
        ExitCode::SUCCESS
    }

    /// Saves payments 0..count from 16 concurrent tasks and prints `new <id>` after each is
    /// reported new, then `done`.
    fn save_and_report(path: &str, count: usize) -> ExitCode {
        let store = Arc::new(FilePaymentsRepository::open(path).expect("open journal"));
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
        runtime.block_on(async {
            let tasks: Vec<_> = (0..16)
                .map(|task| {
                    let store = Arc::clone(&store);
                    tokio::spawn(async move {
                        for i in (task..count).step_by(16) {
                            let p = payment(i);
                            if store.save(&p).await.expect("save").is_new() {
                                // One write per line, so a kill never leaves half a line behind a
                                // whole one.
                                let line = format!("new {}\n", p.id);
                                std::io::stdout().lock().write_all(line.as_bytes()).expect("stdout");
                            }
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.expect("task");
            }
        });
        println!("done");
        ExitCode::SUCCESS
    }
}
