//! The file store's outbox: the journal read as a log of `PaymentRecorded` events, from a durable
//! checkpoint beside it, and never past what the writer has synced.
//!
//! The journal already holds every recorded payment once, in the order it was recorded, so every
//! record is an event and recording one costs a save nothing. What the outbox adds is the relay
//! position, `<journal>.outbox` (see `checkpoint.rs`), and a handle that reads records with its
//! own read-only file, by position, between that checkpoint and the journal's durable end.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use payments_ports::domain::{PaymentRecorded, RecordedAt};
use payments_ports::{Outbox, OutboxBacklog, RepositoryError};

use crate::Shared;
use crate::checkpoint::{self, Checkpoint};
use crate::format::{self, Parsed, Record, Version};

/// How much of the journal a claim reads at a time.
const READ_CHUNK: usize = 256 * 1024;

/// A relay's handle on a file store's outbox: see the crate's documentation for the relay
/// position, the durable-only rule and the one relay per journal.
///
/// Reads and checkpoint writes are blocking file I/O, done on tokio's blocking threads. Dropping
/// the handle (or closing it) gives its claim back and lets the store hand out another one. Once
/// the store is closed or poisoned, every call fails with `RepositoryError::Failed`, as the
/// store's own calls do; a closed handle's calls fail the same way.
pub(crate) struct FileOutbox {
    /// `None` once closed.
    held: Option<Held>,
    checkpoint_path: PathBuf,
    /// How far the events are published, as the checkpoint file says.
    published: Checkpoint,
    /// Where the checkpoint goes when the last claim is marked; `None` when no claim is held.
    claimed: Option<Checkpoint>,
    /// The time of the first unpublished record, read once per checkpoint.
    oldest: Option<(u64, RecordedAt)>,
}

/// What a live handle holds: the store's relay place, and the journal open for reading.
struct Held {
    relay: Relay,
    journal: Arc<File>,
}

/// The store's one relay place, taken; dropping it frees the place.
struct Relay(Arc<Shared>);

impl Drop for Relay {
    fn drop(&mut self) {
        self.0.relay.store(false, Ordering::Release);
    }
}

impl std::fmt::Debug for FileOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileOutbox")
            .field("checkpoint", &self.checkpoint_path)
            .field("published", &self.published)
            .field("claimed", &self.claimed)
            .finish_non_exhaustive()
    }
}

impl FileOutbox {
    /// Takes the store's relay place, opens the journal for reading and reads the checkpoint.
    pub(crate) async fn open(shared: &Arc<Shared>) -> Result<Self, RepositoryError> {
        let (records, end) = shared.durable_end()?;
        if shared.relay.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return Err(RepositoryError::failed(format!(
                "the outbox of journal {} already has a relay: one relay at a time; close or drop the other \
                 outbox handle first",
                shared.path.display()
            )));
        }
        // Frees the place again if anything below fails.
        let relay = Relay(Arc::clone(shared));
        let (path, version) = (shared.path.clone(), shared.version);
        let checkpoint_path = checkpoint::path_of(&path);
        let (journal, published) = {
            let checkpoint_path = checkpoint_path.clone();
            blocking(move || {
                let journal = File::open(&path).map_err(|err| {
                    RepositoryError::failed_because(
                        format!("cannot open journal {} for its outbox", path.display()),
                        err,
                    )
                })?;
                let published = load(&journal, version, &path, &checkpoint_path, records, end)?;
                Ok((journal, published))
            })
            .await?
        };
        Ok(Self {
            held: Some(Held { relay, journal: Arc::new(journal) }),
            checkpoint_path,
            published,
            claimed: None,
            oldest: None,
        })
    }

    fn held(&self) -> Result<&Held, RepositoryError> {
        self.held.as_ref().ok_or_else(|| {
            RepositoryError::failed(format!(
                "this outbox handle of {} is closed; ask the store for a new one",
                self.checkpoint_path.display()
            ))
        })
    }

    /// The store's shared state, unless the handle is closed.
    fn shared(&self) -> Result<&Arc<Shared>, RepositoryError> {
        self.held().map(|held| &held.relay.0)
    }

    /// The journal's durable records and end, unless the handle or the store is closed.
    fn durable_end(&self) -> Result<(u64, u64), RepositoryError> {
        self.shared()?.durable_end()
    }

    /// The journal and the shared state, for a blocking task.
    fn reader(&self) -> Result<(Arc<File>, Arc<Shared>), RepositoryError> {
        let held = self.held()?;
        Ok((Arc::clone(&held.journal), Arc::clone(&held.relay.0)))
    }
}

#[async_trait]
impl Outbox for FileOutbox {
    async fn claim(&mut self, limit: usize) -> Result<Vec<PaymentRecorded>, RepositoryError> {
        // A new claim starts at the checkpoint: the previous one, if unmarked, is given back.
        self.claimed = None;
        let (_, end) = self.durable_end()?;
        let from = self.published;
        if limit == 0 || from.offset >= end {
            return Ok(Vec::new());
        }
        let (journal, shared) = self.reader()?;
        let batch = blocking(move || {
            read_records(&journal, shared.version, from.offset, end, limit)
                .map_err(|failure| failure.into_error(&shared.path))
        })
        .await?;
        let Some((last_len, last_crc)) = batch.last else { return Ok(Vec::new()) };
        self.claimed = Some(Checkpoint {
            offset: batch.end,
            records: from.records + batch.records.len() as u64,
            last_len,
            last_crc,
        });
        let legacy = self.shared()?.legacy_recorded_at;
        Ok(batch
            .records
            .into_iter()
            .map(|record| PaymentRecorded::new(record.payment, record.recorded_at.unwrap_or(legacy)))
            .collect())
    }

    async fn mark_published(&mut self) -> Result<(), RepositoryError> {
        self.durable_end()?;
        // Taken first: if writing fails, the claim is unmarked and handed out again.
        let Some(next) = self.claimed.take() else { return Ok(()) };
        let (path, shared) = (self.checkpoint_path.clone(), Arc::clone(self.shared()?));
        blocking(move || {
            // A mark whose caller stopped waiting (a cancelled future) still runs here: one write
            // at a time, and never one that takes the checkpoint back.
            let mut marked = shared.marked.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if *marked >= next.offset {
                return Ok(());
            }
            checkpoint::write(&path, &next).map_err(|err| {
                RepositoryError::failed_because(
                    format!(
                        "cannot write the outbox checkpoint {}; the events of the last claim stay unpublished \
                         and are handed out again",
                        path.display()
                    ),
                    err,
                )
            })?;
            *marked = next.offset;
            Ok(())
        })
        .await?;
        self.published = next;
        Ok(())
    }

    async fn backlog(&mut self) -> Result<OutboxBacklog, RepositoryError> {
        let (records, end) = self.durable_end()?;
        let published = self.published;
        let pending = records.checked_sub(published.records).ok_or_else(|| {
            RepositoryError::failed(format!(
                "the outbox checkpoint {} counts {} records published, more than journal {} holds ({records})",
                self.checkpoint_path.display(),
                published.records,
                self.shared().map_or_else(|_| String::new(), |shared| shared.path.display().to_string()),
            ))
        })?;
        if pending == 0 {
            return Ok(OutboxBacklog { pending, oldest: None });
        }
        let oldest = match self.oldest {
            Some((offset, at)) if offset == published.offset => at,
            _ => {
                let (journal, shared) = self.reader()?;
                let batch = blocking(move || {
                    read_records(&journal, shared.version, published.offset, end, 1)
                        .map_err(|failure| failure.into_error(&shared.path))
                })
                .await?;
                let legacy = self.shared()?.legacy_recorded_at;
                let at = batch.records.first().map_or(legacy, |record| record.recorded_at.unwrap_or(legacy));
                self.oldest = Some((published.offset, at));
                at
            }
        };
        Ok(OutboxBacklog { pending, oldest: Some(oldest.system_time()) })
    }

    async fn close(&mut self) -> Result<(), RepositoryError> {
        self.claimed = None;
        self.held = None;
        Ok(())
    }
}

/// Runs blocking file I/O on tokio's blocking threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, RepositoryError> + Send + 'static,
) -> Result<T, RepositoryError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| RepositoryError::failed_because("the outbox's file I/O task failed", err))?
}

/// Reads and checks the checkpoint of the journal at `path`, which holds `records` durable records
/// up to byte `end`. A missing checkpoint means nothing is published yet.
fn load(
    journal: &File,
    version: Version,
    path: &Path,
    checkpoint_path: &Path,
    records: u64,
    end: u64,
) -> Result<Checkpoint, RepositoryError> {
    let refuse = |detail: String| {
        RepositoryError::failed(format!(
            "outbox checkpoint {} {detail}. It records how far the events of journal {} are published, and the \
             relay will not guess: if the journal was replaced or restored, or the checkpoint cannot be trusted, \
             remove the checkpoint to publish every recorded payment's event again from the first (each keeps its \
             message ID, so the next consumer can drop those it has); otherwise restore it from a backup",
            checkpoint_path.display(),
            path.display()
        ))
    };
    let bytes = match checkpoint::read(checkpoint_path) {
        Ok(None) => return Ok(Checkpoint::START),
        Ok(Some(bytes)) => bytes,
        Err(err) => {
            return Err(RepositoryError::failed_because(
                format!(
                    "cannot read outbox checkpoint {}, which records how far the events of journal {} are published",
                    checkpoint_path.display(),
                    path.display()
                ),
                err,
            ));
        }
    };
    let checkpoint = Checkpoint::decode(&bytes).map_err(|why| refuse(format!("is corrupt: {why}")))?;
    let header = format::HEADER_LEN as u64;
    if checkpoint.offset > end || checkpoint.records > records {
        return Err(refuse(format!(
            "points past the journal's durable end: {} records up to byte offset {}, where the journal holds {records} \
             up to byte offset {end}",
            checkpoint.records, checkpoint.offset
        )));
    }
    let span = checkpoint.offset.checked_sub(header);
    let fits = span.is_some_and(|span| {
        let records = u128::from(checkpoint.records);
        records * version.min_record() as u128 <= u128::from(span)
            && u128::from(span) <= records * version.max_record() as u128
    });
    if !fits {
        return Err(refuse(format!(
            "is inconsistent: {} records cannot end at byte offset {} of a version-{} journal",
            checkpoint.records,
            checkpoint.offset,
            version.number()
        )));
    }
    if checkpoint.records > 0 {
        // The record that ends at the checkpoint must be there, with the checksum the checkpoint
        // remembers: otherwise the checkpoint belongs to another journal.
        let last = u64::from(checkpoint.last_len);
        let matches =
            checkpoint.offset.checked_sub(last).filter(|&start| start >= header).is_some_and(|start| {
                read_records(journal, version, start, checkpoint.offset, 1).is_ok_and(|batch| {
                    batch.end == checkpoint.offset
                        && batch.last == Some((checkpoint.last_len, checkpoint.last_crc))
                })
            });
        if !matches {
            return Err(refuse(format!(
                "does not match the journal: the last published record does not end at byte offset {} with the \
                 checksum it remembers",
                checkpoint.offset
            )));
        }
    }
    Ok(checkpoint)
}

/// Records read from the journal.
#[derive(Debug)]
struct Batch {
    records: Vec<Record>,
    /// The offset where the last of them ends.
    end: u64,
    /// The length and checksum of the last of them.
    last: Option<(u16, u32)>,
}

/// Why reading records failed.
#[derive(Debug)]
enum ReadFailure {
    Io(std::io::Error),
    Damaged { offset: u64, detail: String },
}

impl ReadFailure {
    fn into_error(self, path: &Path) -> RepositoryError {
        match self {
            Self::Io(err) => RepositoryError::failed_because(
                format!("cannot read journal {} for its outbox", path.display()),
                err,
            ),
            Self::Damaged { offset, detail } => RepositoryError::failed(format!(
                "journal {} is damaged at byte offset {offset}, inside its durable part, where the outbox reads: \
                 {detail}; reopen it to have it checked",
                path.display()
            )),
        }
    }
}

/// Up to `limit` records of a journal of `version` from byte `from` (a record boundary), none
/// beyond byte `to` (the durable end, also a boundary).
fn read_records(
    journal: &File,
    version: Version,
    from: u64,
    to: u64,
    limit: usize,
) -> Result<Batch, ReadFailure> {
    let mut batch = Batch { records: Vec::new(), end: from, last: None };
    let mut buffer = Vec::new();
    let mut at = from;
    while batch.records.len() < limit && at < to {
        let want = usize::try_from(to - at).unwrap_or(READ_CHUNK).min(READ_CHUNK);
        buffer.resize(want, 0);
        read_at(journal, &mut buffer, at).map_err(ReadFailure::Io)?;
        let mut used = 0;
        while batch.records.len() < limit && used < buffer.len() {
            let detail = match format::parse(version, &buffer[used..]) {
                Parsed::Record(record, len) => {
                    // A record is at most 91 bytes, so its length fits in a u16.
                    batch.last = Some((len as u16, record.crc));
                    batch.records.push(record);
                    used += len;
                    continue;
                }
                // Cut by the end of this chunk, and more follows: read on from this record.
                Parsed::Incomplete if at + (buffer.len() as u64) < to && used > 0 => break,
                Parsed::Incomplete => "the durable part ends inside a record".to_owned(),
                Parsed::Damaged(why) => why.to_owned(),
                Parsed::Invalid(why) => why,
            };
            return Err(ReadFailure::Damaged { offset: at + used as u64, detail });
        }
        at += used as u64;
        batch.end = at;
    }
    Ok(batch)
}

/// Fills `buf` from byte `offset` of `file`, without moving a shared file position where the
/// platform has positional reads.
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
    }
    #[cfg(not(unix))]
    {
        // The handle owns this file and uses it from one task at a time.
        use std::io::{Read, Seek, SeekFrom};
        let mut file = file;
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(buf)
    }
}

#[cfg(test)]
mod tests;
