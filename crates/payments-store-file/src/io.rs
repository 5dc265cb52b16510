//! The seam between the journal writer and the file: appending bytes and syncing them.
//!
//! Production code uses [`std::fs::File`]. Tests put a fault injector in between that fails the
//! Nth write or sync (once, or forever after), the way SQLite's I/O error tests do.

use std::io::{self, Write};

/// Appending to the journal and making it durable.
pub(crate) trait JournalIo: Send + 'static {
    /// Appends all of `bytes` at the end of the journal (it may write part of them and fail).
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Makes everything appended so far durable (fdatasync).
    fn sync(&mut self) -> io::Result<()>;
    /// Cuts the journal back to `len` bytes and makes the cut durable: after a failed write or
    /// sync, what followed the last good sync must not be read back as if it were durable.
    fn truncate(&mut self, len: u64) -> io::Result<()>;
}

impl JournalIo for std::fs::File {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_all(bytes)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.sync_data()
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.set_len(len)?;
        self.sync_all()
    }
}

#[cfg(test)]
pub(crate) mod faults {
    //! A [`JournalIo`] that fails on cue, and remembers how much was durable when it did.

    use std::sync::{Arc, Mutex};

    use super::*;

    /// Which operation fails.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) enum Op {
        Append,
        Sync,
    }

    /// Whether the failure happens once or on every call from then on.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) enum Mode {
        Once,
        Forever,
    }

    /// What the injector saw, shared with the test.
    #[derive(Debug, Default)]
    pub(crate) struct Log {
        /// Bytes appended (including the part of a failed append that got written).
        pub(crate) appended: u64,
        /// Bytes appended before the last successful sync: what a crash keeps.
        pub(crate) durable: u64,
        /// Failures injected.
        pub(crate) failures: u32,
        /// Where the journal was cut back to after a failure.
        pub(crate) truncated_to: Option<u64>,
    }

    /// Fails the `nth` (1-based) call of `op`.
    #[derive(Debug)]
    pub(crate) struct Faulty {
        pub(crate) file: std::fs::File,
        pub(crate) op: Op,
        pub(crate) nth: u32,
        pub(crate) mode: Mode,
        pub(crate) calls: u32,
        pub(crate) log: Arc<Mutex<Log>>,
    }

    impl Faulty {
        fn fails_now(&mut self, op: Op) -> bool {
            if op != self.op {
                return false;
            }
            self.calls += 1;
            let fails = match self.mode {
                Mode::Once => self.calls == self.nth,
                Mode::Forever => self.calls >= self.nth,
            };
            if fails {
                self.log.lock().expect("log").failures += 1;
            }
            fails
        }
    }

    impl JournalIo for Faulty {
        fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
            if self.fails_now(Op::Append) {
                // A failing write may still have written a part: write half, like a full disk.
                let half = &bytes[..bytes.len() / 2];
                self.file.write_all(half)?;
                self.log.lock().expect("log").appended += half.len() as u64;
                return Err(io::Error::new(io::ErrorKind::StorageFull, "injected write failure"));
            }
            self.file.write_all(bytes)?;
            self.log.lock().expect("log").appended += bytes.len() as u64;
            Ok(())
        }

        fn sync(&mut self) -> io::Result<()> {
            if self.fails_now(Op::Sync) {
                return Err(io::Error::other("injected fsync failure"));
            }
            self.file.sync_data()?;
            let mut log = self.log.lock().expect("log");
            log.durable = log.appended;
            Ok(())
        }

        fn truncate(&mut self, len: u64) -> io::Result<()> {
            self.file.set_len(len)?;
            self.file.sync_all()?;
            self.log.lock().expect("log").truncated_to = Some(len);
            Ok(())
        }
    }
}
