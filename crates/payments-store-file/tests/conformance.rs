//! The file store against the conformance suite: durable and killable cases included, each case in
//! a temporary directory of its own.

use std::process::ExitCode;
use std::sync::Arc;

use payments_conformance::Capabilities;
use payments_conformance::harnesses::InTempDir;
use payments_ports::PaymentsRepository;
use payments_store_file::FilePaymentsRepository;

fn main() -> ExitCode {
    // Everything survives a reopen and a SIGKILL; the journal is locked to one instance at a time;
    // the journal is its own outbox, with one relay at a time.
    let capabilities = Capabilities { durable: true, shared: false, killable: true, outbox: true };
    payments_conformance::main(InTempDir::new("file", capabilities, |dir| async move {
        let path = dir.join("payments.journal");
        let store = tokio::task::spawn_blocking(move || FilePaymentsRepository::open(path)).await??;
        Ok(Arc::new(store) as Arc<dyn PaymentsRepository>)
    }))
}
