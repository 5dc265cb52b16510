//! The memory adapter against the conformance suite: the whole plug-in an adapter needs.

use std::process::ExitCode;
use std::sync::Arc;

use payments_conformance::{BoxError, Capabilities, Harness};
use payments_ports::PaymentsRepository;
use payments_store_memory::MemoryPaymentsRepository;

struct MemoryHarness;

#[async_trait::async_trait]
impl Harness for MemoryHarness {
    /// Nothing outlives a store, so a case needs no environment.
    type Env = ();

    fn adapter(&self) -> &'static str {
        "memory"
    }

    /// Forgets everything when dropped, and lives in one process only.
    fn capabilities(&self) -> Capabilities {
        Capabilities { durable: false, shared: false, killable: false, outbox: true }
    }

    async fn setup(&self) -> Result<(), BoxError> {
        Ok(())
    }

    async fn open(&self, _env: &()) -> Result<Arc<dyn PaymentsRepository>, BoxError> {
        Ok(Arc::new(MemoryPaymentsRepository::new()))
    }
}

fn main() -> ExitCode {
    payments_conformance::main(MemoryHarness)
}
