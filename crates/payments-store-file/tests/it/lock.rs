//! One writer at a time: the journal is locked while a store has it open.

use libtest_mimic::Failed;
use payments_store_file::{FilePaymentsRepository, OpenError};

use crate::support::child;

pub(crate) fn a_second_store_in_this_process_is_refused() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("p.journal");
    let first = FilePaymentsRepository::open(&path)?;
    match FilePaymentsRepository::open(&path) {
        Err(err @ OpenError::Locked { .. }) => {
            assert_eq!(err.to_string(), format!("journal {} is locked by another process", path.display()));
        }
        other => return Err(format!("a second open must be refused: {other:?}").into()),
    }
    drop(first);
    FilePaymentsRepository::open(&path).map_err(|err| format!("closing must release the lock: {err}"))?;
    Ok(())
}

pub(crate) fn a_second_process_gets_a_clear_error() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("p.journal");
    let held = FilePaymentsRepository::open(&path)?;
    let output = child::command(&format!("open:{}", path.display())).output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stdout.trim(), format!("error: journal {} is locked by another process", path.display()));
    let before = std::fs::read(&path)?;
    drop(held);
    assert_eq!(std::fs::read(&path)?, before, "the refused process must not have touched the journal");
    let output = child::command(&format!("open:{}", path.display())).output()?;
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "opened", "once released, it opens");
    Ok(())
}
