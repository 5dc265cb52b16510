//! A durable [`PaymentsRepository`] over an append-only journal file: the embedded default store.
//!
//! - **Durable before new.** A save reports [`SaveOutcome::New`] only after its record was written
//!   and `fdatasync`ed. A restart reads the journal back, so a redelivered payment is a duplicate,
//!   not applied again.
//! - **Group commit.** One writer thread owns the file. Saves that arrive while it syncs queue up
//!   and share the next write and `fdatasync`, so concurrent savers get far more than one sync each.
//! - **Duplicates from memory.** An in-memory index (about 30 bytes per payment beyond its ID)
//!   answers duplicates and conflicts without any disk I/O.
//! - **Poisoned on failure.** A failed write or sync is never retried as if nothing happened (the
//!   kernel may already have dropped the data): that save and every later one fail, the journal
//!   is cut back to its last synced byte, and nothing is reported new until it is opened again.
//! - **Synced on open.** What opening reads back may come from the page cache of a process that
//!   died before its fdatasync; it is synced before any duplicate is answered from it.
//! - **Crash recovery.** A torn tail (a record cut short by a crash) is cut off with a warning; a
//!   damaged record followed by good ones is corruption, and opening fails with the byte offset.
//! - **One writer.** `<journal>.lock` is locked exclusively while the journal is open.
//!
//! The format is described in `format.rs` and docs/adr/0001-journal-format.md. New journals are
//! version 2, whose records carry the time each payment was recorded; version-1 journals, from
//! before the outbox, still open and are still written as version 1.
//!
//! # The outbox
//!
//! The journal already is the ordered log of recorded payments, so the outbox is always on and
//! costs a save nothing: every record is the `PaymentRecorded` event of its payment, written in
//! the same `write` and made durable by the same `fdatasync`. [`PaymentsRepository::outbox`] hands
//! out a relay's handle on it.
//!
//! - **The relay position** is a checkpoint beside the journal, `<journal>.outbox`: a small
//!   versioned, checksummed record of the byte offset up to which events are published (and how
//!   many records lie before it, so the backlog is a subtraction). Marking a claim published
//!   replaces it atomically and durably (temporary file, `fsync`, rename, `fsync` of the
//!   directory) before it returns. Without a checkpoint, nothing is published yet: the first claim
//!   starts at the journal's first record, so a journal that predates the outbox has its whole
//!   history published once. A checkpoint that is corrupt, or that points past the journal's
//!   durable end or at a record that is not the one it remembers, is an error naming the file and
//!   what to do; the relay never silently starts over.
//! - **Durable records only.** A handle reads the journal with its own read-only file, and never
//!   beyond what the writer thread has `fdatasync`ed: an event for a payment that a crash could
//!   still take back would announce a payment that, after the restart, may be recorded with
//!   another amount, or not at all.
//! - **One relay per journal.** The journal has one writer process (the lock), and its relay runs
//!   inside that process (`consume --publish-to`); within it, one handle lives at a time, and
//!   asking for a second one while it lives is an error. Dropping or closing the handle gives its
//!   unmarked claim back and frees the place.
//! - **Recorded at.** A version-2 record carries the time its save was accepted, to the
//!   millisecond. A version-1 record carries none; its event says the journal's modification time
//!   when the store was opened, which for the records already there is no earlier than the real
//!   time (they were recorded no later than that), and for records that the same process appends to
//!   a version-1 journal afterwards is earlier than the real one.

mod checkpoint;
mod format;
mod index;
mod io;
mod journal;
mod outbox;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use payments_ports::domain::{Payment, PaymentId, RecordedAt, SaveOutcome, decide};
use payments_ports::{Outbox, PaymentsRepository, RepositoryError};
use tokio::sync::watch;

use crate::format::Version;
use crate::index::Index;
use crate::io::JournalIo;
use crate::outbox::FileOutbox;

/// Why a journal could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Another process (or another store in this one) has the journal open.
    #[error("journal {} is locked by another process", path.display())]
    Locked {
        /// The journal.
        path: PathBuf,
    },
    /// The file exists but is not a payments journal.
    #[error("{} is not a payments journal: {detail}", path.display())]
    NotAJournal {
        /// The file.
        path: PathBuf,
        /// What gave it away.
        detail: String,
    },
    /// A journal of a format version this build does not read.
    #[error(
        "journal {} has format version {version}; this build reads versions 1 to {}",
        path.display(),
        format::Version::LATEST.number()
    )]
    UnknownVersion {
        /// The journal.
        path: PathBuf,
        /// Its version.
        version: u16,
    },
    /// Damage that is not a torn tail: opening it could lose acknowledged payments.
    #[error("journal {} is corrupt at byte offset {offset}: {detail}", path.display())]
    Corrupt {
        /// The journal.
        path: PathBuf,
        /// Where the damaged record starts.
        offset: u64,
        /// What is wrong there.
        detail: String,
    },
    /// The file system refused.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// To which file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

/// What opening found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// Payments read back from the journal.
    pub payments: u64,
    /// Bytes of a torn tail cut off (0 after a clean shutdown).
    pub dropped_bytes: u64,
}

/// How much memory the index uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryUsage {
    /// Payments indexed.
    pub payments: u64,
    /// Bytes allocated by the index, IDs included.
    pub allocated_bytes: u64,
    /// Bytes of the IDs themselves.
    pub id_bytes: u64,
}

impl MemoryUsage {
    /// Bytes per payment beyond the ID itself.
    pub fn bytes_per_payment_beyond_id(&self) -> f64 {
        if self.payments == 0 {
            return 0.0;
        }
        (self.allocated_bytes - self.id_bytes) as f64 / self.payments as f64
    }
}

/// A journal-backed [`PaymentsRepository`]. Closing it (or, as a fallback, dropping it) flushes
/// what is queued, stops the writer and releases the lock.
pub struct FilePaymentsRepository {
    shared: Arc<Shared>,
    /// The writer thread and the lock file, taken by the first close.
    open: Mutex<Option<(JoinHandle<()>, File)>>,
    recovery: Recovery,
}

impl std::fmt::Debug for FilePaymentsRepository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilePaymentsRepository").field("path", &self.shared.path).finish_non_exhaustive()
    }
}

/// What saves, the writer and the outbox handle share.
struct Shared {
    path: PathBuf,
    /// The journal's format version, which every record appended keeps.
    version: Version,
    /// The time a version-1 record's event says it was recorded: the journal's modification time
    /// at open (see the crate's documentation).
    legacy_recorded_at: RecordedAt,
    /// Whether an outbox handle lives: one relay at a time.
    relay: AtomicBool,
    /// The furthest journal offset an outbox handle of this store has written as its checkpoint
    /// (0 before the first), locked while one writes it.
    marked: Mutex<u64>,
    state: Mutex<State>,
    /// Wakes the writer when a record is queued, or on close.
    queued: Condvar,
    /// Records queued since the writer last took a batch, readable without the lock.
    pending: AtomicUsize,
    /// Whether the writer sleeps on `queued` (set and cleared under the lock), so that a save
    /// makes the wake-up system call only when someone sleeps.
    sleeping: AtomicBool,
    /// How many queued records the writer waits for before it writes.
    target: AtomicUsize,
    /// Published by the writer after every sync (or failure), awaited by saves.
    commits: watch::Sender<Commit>,
}

struct State {
    index: Index,
    /// Entries `0..durable` of the index are synced to disk; the rest are queued or being written.
    durable: usize,
    /// The journal's length up to the end of entry `durable - 1` (the header's end when none is):
    /// the outbox reads no further.
    durable_len: u64,
    /// Encoded records of the entries queued since the writer last took a batch.
    queue: Vec<u8>,
    /// Why the journal is poisoned, once a write or sync failed.
    poisoned: Option<Arc<str>>,
    closing: bool,
    /// Durable positions sorted by ID, for `list`; rebuilt when `durable` moved on.
    sorted: Option<(usize, Arc<[u32]>)>,
}

#[derive(Clone, Copy, Debug)]
struct Commit {
    durable: usize,
    poisoned: bool,
}

impl FilePaymentsRepository {
    /// Opens the journal at `path`, creating it (and its directory) if absent, and reads it back.
    ///
    /// This blocks on file I/O: from async code, call it through `tokio::task::spawn_blocking`.
    ///
    /// # Errors
    ///
    /// [`OpenError`]: locked by another process, not a journal, an unknown version, corrupt (with
    /// the offset), or an I/O failure.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, OpenError> {
        Self::open_with(path.as_ref(), |file| Box::new(file))
    }

    fn open_with(path: &Path, io: impl FnOnce(File) -> Box<dyn JournalIo>) -> Result<Self, OpenError> {
        let journal::Opened { file, lock, index, dropped_bytes, len, version, modified } =
            journal::open(path)?;
        let recovery = Recovery { payments: index.len() as u64, dropped_bytes };
        let durable = index.len();
        let (commits, _) = watch::channel(Commit { durable, poisoned: false });
        let shared = Arc::new(Shared {
            path: path.to_owned(),
            version,
            legacy_recorded_at: modified,
            relay: AtomicBool::new(false),
            marked: Mutex::new(0),
            state: Mutex::new(State {
                index,
                durable,
                durable_len: len,
                queue: Vec::new(),
                poisoned: None,
                closing: false,
                sorted: None,
            }),
            queued: Condvar::new(),
            pending: AtomicUsize::new(0),
            sleeping: AtomicBool::new(false),
            target: AtomicUsize::new(1),
            commits,
        });
        let writer = {
            let (shared, io) = (Arc::clone(&shared), io(file));
            std::thread::Builder::new()
                .name("journal-writer".to_owned())
                .spawn(move || write_batches(&shared, io, len))
                .map_err(|source| OpenError::Io {
                    action: "start the writer thread of",
                    path: path.to_owned(),
                    source,
                })?
        };
        Ok(Self { shared, open: Mutex::new(Some((writer, lock))), recovery })
    }

    /// The journal's path.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// What opening found: how many payments, and how many bytes of torn tail were cut off.
    pub fn recovery(&self) -> Recovery {
        self.recovery
    }

    /// The journal's format version: 2 for a journal created by this build, 1 for one created
    /// before the outbox (whose events carry no time of their own; see the crate's documentation).
    pub fn format_version(&self) -> u16 {
        self.shared.version.number()
    }

    /// How much memory the index uses now.
    pub fn memory(&self) -> MemoryUsage {
        let state = self.shared.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (allocated, ids) = state.index.memory();
        MemoryUsage {
            payments: state.index.len() as u64,
            allocated_bytes: allocated as u64,
            id_bytes: ids as u64,
        }
    }

    /// The state, unless the journal is poisoned or closed.
    fn state(&self) -> Result<MutexGuard<'_, State>, RepositoryError> {
        self.shared.state()
    }

    fn poisoned(&self, reason: &str) -> RepositoryError {
        self.shared.poisoned(reason)
    }
}

impl Shared {
    /// The state, unless the journal is poisoned (or a panic left the lock poisoned, which is
    /// treated the same way: the state may be half-updated, so nothing more is trusted) or closed.
    fn state(&self) -> Result<MutexGuard<'_, State>, RepositoryError> {
        let state = self.state.lock().map_err(|_| {
            RepositoryError::failed(format!(
                "journal {}: a panic interrupted an update; reopen the journal",
                self.path.display()
            ))
        })?;
        match &state.poisoned {
            None if state.closing => {
                Err(RepositoryError::failed(format!("journal {} is closed", self.path.display())))
            }
            None => Ok(state),
            Some(reason) => Err(self.poisoned(reason)),
        }
    }

    fn poisoned(&self, reason: &str) -> RepositoryError {
        RepositoryError::failed(format!(
            "journal {} is poisoned: {reason}; nothing after it was reported new. Reopen the journal to \
             continue from what is on disk",
            self.path.display()
        ))
    }

    /// How many records are durable, and the byte offset where they end.
    fn durable_end(&self) -> Result<(u64, u64), RepositoryError> {
        let state = self.state()?;
        Ok((state.durable as u64, state.durable_len))
    }

    /// When a payment saved now is recorded, for the journal's record.
    fn recorded_now(&self) -> RecordedAt {
        match self.version {
            // A version-1 record has no room for it: spare the clock.
            Version::V1 => self.legacy_recorded_at,
            Version::V2 => RecordedAt::from_system_time(SystemTime::now()),
        }
    }
}

impl FilePaymentsRepository {
    /// Tells the writer to finish: it flushes what is queued, then exits, closing the file. Returns
    /// the thread to join and the lock to release, unless an earlier close took them.
    fn stop_writer(&self) -> Option<(JoinHandle<()>, File)> {
        if let Ok(mut state) = self.shared.state.lock() {
            state.closing = true;
        }
        self.shared.queued.notify_one();
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }
}

impl Drop for FilePaymentsRepository {
    /// The fallback when the store was not closed: joins the writer on this thread.
    fn drop(&mut self) {
        if let Some((writer, _lock)) = self.stop_writer() {
            let _ = writer.join();
        }
    }
}

#[async_trait]
impl PaymentsRepository for FilePaymentsRepository {
    async fn save(&self, payment: &Payment) -> Result<SaveOutcome, RepositoryError> {
        let (outcome, position) = {
            let mut state = self.state()?;
            // One probe of the index: the lookup and the insert are one step under the lock.
            match state.index.insert_if_absent(payment) {
                Err(position) => {
                    let outcome = if state.index.same_value(position, payment) {
                        SaveOutcome::Duplicate
                    } else {
                        decide(Some(&state.index.payment(position)), payment)
                    };
                    if position < state.durable {
                        // Answered from memory: the stored payment is already on disk.
                        return Ok(outcome);
                    }
                    // Stored, but not synced yet: the answer holds only once it is.
                    (outcome, position)
                }
                Ok(position) => {
                    // The event is this record: recorded in the same write, synced by the same sync.
                    let recorded_at = self.shared.recorded_now();
                    format::encode(self.shared.version, payment, recorded_at, &mut state.queue);
                    let pending = self.shared.pending.fetch_add(1, Ordering::AcqRel) + 1;
                    // Wake a sleeping writer for the first record (to start its clock) and for the
                    // one that completes the batch it waits for.
                    let target = self.shared.target.load(Ordering::Acquire);
                    if self.shared.sleeping.load(Ordering::Acquire) && (pending == 1 || pending >= target) {
                        self.shared.queued.notify_one();
                    }
                    (SaveOutcome::New, position)
                }
            }
        };
        let mut commits = self.shared.commits.subscribe();
        let commit = *commits
            .wait_for(|commit| commit.durable > position || commit.poisoned)
            .await
            .map_err(|_| RepositoryError::failed("the journal writer is gone"))?;
        if commit.durable > position {
            Ok(outcome)
        } else {
            // Poisoned before this record was synced: it must not be reported, whatever it was.
            let state = self.shared.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            Err(self.poisoned(state.poisoned.as_deref().unwrap_or("the writer failed")))
        }
    }

    async fn get(&self, id: &PaymentId) -> Result<Option<Payment>, RepositoryError> {
        let state = self.state()?;
        Ok(state.index.find(id).filter(|&position| position < state.durable).map(|p| state.index.payment(p)))
    }

    async fn count(&self) -> Result<u64, RepositoryError> {
        Ok(self.state()?.durable as u64)
    }

    /// The journal's outbox, which is always on: see the crate's documentation.
    async fn outbox(&self) -> Result<Option<Box<dyn Outbox>>, RepositoryError> {
        Ok(Some(Box::new(FileOutbox::open(&self.shared).await?)))
    }

    async fn close(&self) -> Result<(), RepositoryError> {
        let Some((writer, lock)) = self.stop_writer() else { return Ok(()) };
        // Joining waits for the last fdatasync: on a blocking thread, not a runtime worker.
        let joined = tokio::task::spawn_blocking(move || writer.join()).await;
        drop(lock);
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(RepositoryError::failed("the journal writer panicked")),
            Err(err) => return Err(RepositoryError::failed_because("cannot join the journal writer", err)),
        }
        let state = self.shared.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match &state.poisoned {
            None => Ok(()),
            Some(reason) => Err(self.poisoned(reason)),
        }
    }

    async fn list(&self, after: Option<PaymentId>, limit: usize) -> Result<Vec<Payment>, RepositoryError> {
        let mut state = self.state()?;
        let durable = state.durable;
        let sorted = match &state.sorted {
            Some((len, sorted)) if *len == durable => Arc::clone(sorted),
            _ => {
                // Sorting happens under the lock, so saves wait for it: an export is rare, and the
                // sort is reused page after page until a new payment arrives.
                let index = &state.index;
                // Positions fit in u32: the index holds at most u32::MAX payments.
                let mut positions: Vec<u32> = (0..durable as u32).collect();
                positions.sort_unstable_by(|&a, &b| index.id_at(a as usize).cmp(index.id_at(b as usize)));
                let sorted: Arc<[u32]> = positions.into();
                state.sorted = Some((durable, Arc::clone(&sorted)));
                sorted
            }
        };
        let index = &state.index;
        let start =
            after.map_or(0, |after| sorted.partition_point(|&p| index.id_at(p as usize) <= after.as_bytes()));
        Ok(sorted[start..].iter().take(limit).map(|&p| index.payment(p as usize)).collect())
    }
}

/// How long the writer waits for the next batch to fill before it writes what it has (or sleeps).
const SPIN: Duration = Duration::from_micros(200);

/// Waits until the next batch is worth writing, and returns the state locked; `None` if the lock
/// is poisoned.
///
/// The savers of the last batch come back with their next records a few microseconds after its
/// commit. The writer waits for about as many records as the last batch held, but never longer
/// than [`SPIN`] once the first one is there: so batches stay as large as the load, and a lone
/// saver is not kept waiting. Behind a lone saver (a target of one or two records) it spins,
/// because waking a sleeping thread takes longer than the saver does; for larger batches it
/// sleeps, and the saver that completes the batch wakes it, so that it does not take a CPU from
/// the savers it waits for.
fn wait_for_batch(shared: &Shared, last_batch: usize) -> Option<MutexGuard<'_, State>> {
    let target = last_batch.max(1);
    shared.target.store(target, Ordering::Release);
    if target <= 2 {
        let spin_until = Instant::now() + SPIN;
        while shared.pending.load(Ordering::Acquire) < target && Instant::now() < spin_until {
            std::thread::yield_now();
        }
    }
    let mut state = shared.state.lock().ok()?;
    let mut deadline = None;
    loop {
        let pending = shared.pending.load(Ordering::Acquire);
        if state.closing || pending >= target {
            return Some(state);
        }
        let now = Instant::now();
        let until = match (pending, deadline) {
            // Nothing queued: sleep until the first record arrives.
            (0, _) => None,
            // The first records are here: give the rest of the batch until the deadline.
            (_, None) => Some(*deadline.insert(now + SPIN)),
            (_, Some(at)) if now >= at => return Some(state),
            (_, Some(at)) => Some(at),
        };
        shared.sleeping.store(true, Ordering::Release);
        state = match until {
            None => shared.queued.wait(state).ok()?,
            Some(at) => shared.queued.wait_timeout(state, at - now).ok()?.0,
        };
        shared.sleeping.store(false, Ordering::Release);
    }
}

/// The writer thread: takes everything queued, writes it with one `write`, syncs it with one
/// `fdatasync`, publishes how far the journal is durable, and starts over. On a failure it poisons
/// the journal and stops: nothing is written after a failed write or sync.
fn write_batches(shared: &Shared, mut io: Box<dyn JournalIo>, mut durable_len: u64) {
    // A panic under the lock (never expected) leaves the state untrustworthy: stop, and make every
    // waiting save fail instead of waiting forever.
    let abandon = || shared.commits.send_modify(|commit| commit.poisoned = true);
    let mut batch = Vec::new();
    // How many records the last batch held: about how many savers will send the next one.
    let mut last_batch = 1;
    loop {
        let upto = {
            let Some(mut state) = wait_for_batch(shared, last_batch) else { return abandon() };
            if state.queue.is_empty() {
                return; // closing, and everything queued is written
            }
            std::mem::swap(&mut state.queue, &mut batch);
            last_batch = shared.pending.swap(0, Ordering::AcqRel).max(1);
            state.index.len()
        };
        let failure = match io.append(&batch) {
            Err(err) => Some(format!("writing {} bytes failed: {err}", batch.len())),
            Ok(()) => io.sync().err().map(|err| format!("fdatasync failed: {err}")),
        };
        let failure = match failure {
            None => {
                durable_len += batch.len() as u64;
                None
            }
            // Cut off what the failed batch left in the file (and in the page cache, which after a
            // failed fsync may hold pages marked clean that never reached the disk): a reopen must
            // not read them back as durable and answer their redeliveries as duplicates.
            Some(reason) => Some(match io.truncate(durable_len) {
                Ok(()) => reason,
                Err(err) => format!(
                    "{reason}; cutting the journal back to its last synced byte ({durable_len}) failed too ({err}): \
                     records after that offset were never acknowledged, and must be cut off before reopening"
                ),
            }),
        };
        batch.clear();
        let Ok(mut state) = shared.state.lock() else { return abandon() };
        match failure {
            None => {
                state.durable = upto;
                state.durable_len = durable_len;
                shared.commits.send_replace(Commit { durable: upto, poisoned: false });
            }
            Some(reason) => {
                tracing::error!(journal = %shared.path.display(), %reason, "journal poisoned: no further saves");
                state.poisoned = Some(reason.into());
                shared.commits.send_replace(Commit { durable: state.durable, poisoned: true });
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests;

/// For the fuzz targets in `fuzz/`: the journal's decoding, without a file.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    /// Reads `bytes` as a whole journal, header included, the way opening a file does (without
    /// cutting anything off). Returns how many payments it holds and where the good records end,
    /// or why it cannot be opened. Must never panic, whatever the bytes.
    ///
    /// # Errors
    ///
    /// The reason opening such a file would fail.
    pub fn read_journal(bytes: &[u8]) -> Result<(usize, u64), String> {
        let path = std::path::Path::new("fuzzed.journal");
        let header_len = bytes.len().min(crate::format::HEADER_LEN);
        let version = crate::format::check_header(&bytes[..header_len]).map_err(|bad| format!("{bad:?}"))?;
        let mut records = &bytes[crate::format::HEADER_LEN..];
        let (index, end) = crate::journal::scan(&mut records, version, bytes.len() as u64, path)
            .map_err(|err| err.to_string())?;
        Ok((index.len(), end))
    }

    /// Parses one record at the start of `bytes`, of either version's kind; `Some(len)` for a
    /// valid payment record. (A record's checksum covers its kind, so a record valid in a journal
    /// of one version parses to the same length here.)
    pub fn parse_record(bytes: &[u8]) -> Option<usize> {
        use crate::format::{Parsed, Version, parse};
        [Version::V1, Version::V2].into_iter().find_map(|version| match parse(version, bytes) {
            Parsed::Record(_, len) => Some(len),
            _ => None,
        })
    }
}
