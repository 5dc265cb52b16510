//! The kill case must be able to fail: against a store that reports a payment new before it has
//! written it (it writes a moment later, in the background), a SIGKILL loses reported payments and
//! the case must say so. The same store writing before it answers is the control: it passes.

// A test program reports on stderr by design.
#![allow(clippy::print_stderr)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use payments_conformance::{
    BoxError, Capabilities, CaseOutcome, Harness, all_cases, child_if_asked, run_case,
};
use payments_ports::domain::{Payment, PaymentId, SaveOutcome, decide, event};
use payments_ports::{PaymentsRepository, RepositoryError};

/// Payments in memory, written to a file of JSON lines: at once, or lazily (the bug).
struct LineFileStore {
    payments: Mutex<BTreeMap<PaymentId, Payment>>,
    file: Arc<Mutex<std::fs::File>>,
    /// Lines answered new but not written yet (the lazy store's only).
    unwritten: Arc<Mutex<Vec<u8>>>,
    lazy: bool,
}

impl LineFileStore {
    fn open(path: &Path, lazy: bool) -> Result<Self, BoxError> {
        let mut payments = BTreeMap::new();
        if let Ok(text) = std::fs::read(path) {
            for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                if let Ok(payment) = event::decode(line) {
                    payments.insert(payment.id, payment);
                }
            }
        }
        let file = Arc::new(Mutex::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?));
        let unwritten: Arc<Mutex<Vec<u8>>> = Arc::default();
        if lazy {
            // Writes what was answered new a moment later: a crash in between loses it.
            let (file, unwritten) = (Arc::clone(&file), Arc::clone(&unwritten));
            std::thread::spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_millis(200));
                    let bytes =
                        std::mem::take(&mut *unwritten.lock().unwrap_or_else(PoisonError::into_inner));
                    let _ = file.lock().unwrap_or_else(PoisonError::into_inner).write_all(&bytes);
                }
            });
        }
        Ok(Self { payments: Mutex::new(payments), file, unwritten, lazy })
    }
}

#[async_trait]
impl PaymentsRepository for LineFileStore {
    async fn save(&self, payment: &Payment) -> Result<SaveOutcome, RepositoryError> {
        let mut payments = self.payments.lock().unwrap_or_else(PoisonError::into_inner);
        let outcome = decide(payments.get(&payment.id), payment);
        if outcome.is_new() {
            let mut line = Vec::new();
            event::encode(payment, &mut line);
            line.push(b'\n');
            if self.lazy {
                self.unwritten.lock().unwrap_or_else(PoisonError::into_inner).extend(line);
            } else {
                // Written (to the page cache, which a SIGKILL keeps) before the answer.
                self.file
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .write_all(&line)
                    .map_err(|err| RepositoryError::failed_because("write", err))?;
            }
            payments.insert(payment.id, payment.clone());
        }
        Ok(outcome)
    }

    async fn get(&self, id: &PaymentId) -> Result<Option<Payment>, RepositoryError> {
        Ok(self.payments.lock().unwrap_or_else(PoisonError::into_inner).get(id).cloned())
    }

    async fn count(&self) -> Result<u64, RepositoryError> {
        Ok(self.payments.lock().unwrap_or_else(PoisonError::into_inner).len() as u64)
    }

    async fn list(&self, after: Option<PaymentId>, limit: usize) -> Result<Vec<Payment>, RepositoryError> {
        let payments = self.payments.lock().unwrap_or_else(PoisonError::into_inner);
        let from = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        Ok(payments.range((from, std::ops::Bound::Unbounded)).take(limit).map(|(_, p)| p.clone()).collect())
    }
}

struct LineFileHarness {
    lazy: bool,
}

#[async_trait]
impl Harness for LineFileHarness {
    type Env = tempfile::TempDir;

    fn adapter(&self) -> &'static str {
        if self.lazy { "lazy-line-file" } else { "line-file" }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { durable: true, shared: false, killable: true, outbox: false }
    }

    async fn setup(&self) -> Result<tempfile::TempDir, BoxError> {
        Ok(tempfile::tempdir()?)
    }

    async fn open(&self, dir: &tempfile::TempDir) -> Result<Arc<dyn PaymentsRepository>, BoxError> {
        Ok(Arc::new(LineFileStore::open(&dir.path().join("payments.jsonl"), self.lazy)?))
    }

    /// The directory, and (for the child, which is this binary again) whether the store is lazy.
    fn locate(&self, dir: &tempfile::TempDir) -> Option<String> {
        Some(format!("{}:{}", if self.lazy { "lazy" } else { "writing" }, dir.path().display()))
    }

    async fn open_at(&self, locator: &str) -> Result<Arc<dyn PaymentsRepository>, BoxError> {
        let (kind, dir) = locator.split_once(':').ok_or("a locator is kind:dir")?;
        Ok(Arc::new(LineFileStore::open(&PathBuf::from(dir).join("payments.jsonl"), kind == "lazy")?))
    }
}

fn main() -> ExitCode {
    // The child of the case is this binary again; its locator says which store it opens.
    if let Some(code) = child_if_asked(&LineFileHarness { lazy: false }) {
        return code;
    }
    let case = all_cases()
        .into_iter()
        .find(|c| c.name == "every_payment_reported_new_survives_a_sigkill")
        .expect("the kill case");
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mut failed = false;
    for lazy in [false, true] {
        let outcome = runtime.block_on(run_case(Arc::new(LineFileHarness { lazy }), &case));
        let ok = match (&outcome, lazy) {
            (CaseOutcome::Passed, false) => true,
            (CaseOutcome::Failed(text), true) => text.contains("payments reported new are not there"),
            _ => false,
        };
        eprintln!(
            "{} store: {outcome:?} ({})",
            if lazy { "lazy" } else { "writing" },
            if ok { "as it must" } else { "WRONG" }
        );
        failed |= !ok;
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
