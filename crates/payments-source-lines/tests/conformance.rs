//! The JSON-lines source against the source suite. A file has no broker: no redelivery, no groups,
//! no leases, and a line cannot hold a newline, so those cases are reported as skipped by name.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use payments_conformance::BoxError;
use payments_conformance::source::{Identity, SourceCapabilities, SourceHarness};
use payments_ports::DeliverySource;
use tempfile::TempDir;

struct LinesHarness;

#[async_trait::async_trait]
impl SourceHarness for LinesHarness {
    /// A directory holding the case's input file.
    type Env = TempDir;

    fn adapter(&self) -> &'static str {
        "lines"
    }

    /// Delivering is all a file does.
    fn capabilities(&self) -> SourceCapabilities {
        SourceCapabilities::default()
    }

    /// Nothing is ever redelivered; this is how long cases watch for what must not come.
    fn redelivery_timeout(&self) -> Duration {
        Duration::from_millis(200)
    }

    async fn setup(&self) -> Result<TempDir, BoxError> {
        Ok(tempfile::tempdir()?)
    }

    async fn publish(&self, dir: &TempDir, messages: &[Bytes]) -> Result<(), BoxError> {
        let path = dir.path().join("input.jsonl");
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        for message in messages {
            file.write_all(message)?;
            file.write_all(b"\n")?;
        }
        Ok(())
    }

    async fn open(
        &self,
        dir: &TempDir,
        _: &Identity,
        max_message_bytes: usize,
    ) -> Result<Box<dyn DeliverySource>, BoxError> {
        let path = dir.path().join("input.jsonl");
        Ok(payments_source_lines::open(&path.display().to_string(), max_message_bytes).await?)
    }
}

fn main() -> ExitCode {
    payments_conformance::source::main(LinesHarness)
}
