//! The file adapter against the conformance suite, durable cases included.

use std::process::ExitCode;
use std::sync::Arc;

use payments_conformance::{BoxError, Capabilities, Harness};
use payments_ports::PaymentsRepository;
use payments_store_file::FilePaymentsRepository;
use tempfile::TempDir;

struct FileHarness;

#[async_trait::async_trait]
impl Harness for FileHarness {
    /// Each case's journal lives in its own temporary directory, removed when the case ends.
    type Env = TempDir;

    fn adapter(&self) -> &'static str {
        "file"
    }

    /// Everything survives a reopen, and a SIGKILL; the journal is locked to one instance at a time.
    fn capabilities(&self) -> Capabilities {
        Capabilities { durable: true, shared: false, killable: true }
    }

    async fn setup(&self) -> Result<TempDir, BoxError> {
        Ok(tempfile::tempdir()?)
    }

    async fn open(&self, dir: &TempDir) -> Result<Arc<dyn PaymentsRepository>, BoxError> {
        self.open_at(&dir.path().display().to_string()).await
    }

    fn locate(&self, dir: &TempDir) -> Option<String> {
        Some(dir.path().display().to_string())
    }

    async fn open_at(&self, dir: &str) -> Result<Arc<dyn PaymentsRepository>, BoxError> {
        let path = std::path::Path::new(dir).join("payments.journal");
        let store = tokio::task::spawn_blocking(move || FilePaymentsRepository::open(path)).await??;
        Ok(Arc::new(store))
    }
}

fn main() -> ExitCode {
    payments_conformance::main(FileHarness)
}
