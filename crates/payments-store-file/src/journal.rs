//! Opening a journal: lock it, create it if absent, read it back into an index, and cut off a torn
//! tail — or refuse, naming the offset, when the damage is not at the tail.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
#[cfg(unix)]
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use payments_ports::domain::RecordedAt;

use crate::OpenError;
use crate::format::{self, BadHeader, HEADER_LEN, MAX_RECORD, Parsed, Version};
use crate::index::Index;

/// How much of the journal is read at a time while recovering.
const READ_CHUNK: usize = 1 << 20;

/// How often the lock is tried, 10 ms apart, before the journal counts as locked.
const LOCK_ATTEMPTS: u32 = 20;

/// An open, locked, recovered journal.
#[derive(Debug)]
pub(crate) struct Opened {
    /// The journal, positioned for appending.
    pub(crate) file: File,
    /// Held for as long as the journal is open: the exclusive lock.
    pub(crate) lock: File,
    /// Every payment the journal holds.
    pub(crate) index: Index,
    /// Bytes of torn tail that were cut off.
    pub(crate) dropped_bytes: u64,
    /// The journal's length: where the next record goes.
    pub(crate) len: u64,
    /// Its format version, which every record appended to it keeps.
    pub(crate) version: Version,
    /// The journal's modification time when it was opened: no earlier than any record in it was
    /// written, so the time a version-1 record (which has none of its own) is recorded no later than.
    pub(crate) modified: RecordedAt,
}

/// `<journal>.lock`, `<journal>.tmp`, `<journal>.outbox`: files that live beside the journal.
pub(crate) fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn io_error<'p>(action: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> OpenError + 'p {
    move |source| OpenError::Io { action, path: path.to_owned(), source }
}

pub(crate) fn owner_only(options: &mut OpenOptions) -> &mut OpenOptions {
    #[cfg(unix)]
    options.mode(0o600);
    options
}

/// Locks, creates if needed, and recovers the journal at `path`.
pub(crate) fn open(path: &Path) -> Result<Opened, OpenError> {
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty())
        && !dir.is_dir()
    {
        create_directories(dir).map_err(io_error("create the directory of", path))?;
    }
    let lock = take_lock(path)?;
    let created = match std::fs::metadata(path) {
        Ok(_) => false,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            create(path)?;
            true
        }
        Err(err) => return Err(io_error("inspect", path)(err)),
    };
    let mut file = OpenOptions::new().read(true).append(true).open(path).map_err(io_error("open", path))?;
    let metadata = file.metadata().map_err(io_error("inspect", path))?;
    let len = metadata.len();
    // Before anything below cuts a torn tail, which would move it on. Where the platform keeps no
    // modification time, now is a later time still.
    let modified =
        RecordedAt::from_system_time(metadata.modified().unwrap_or_else(|_| std::time::SystemTime::now()));

    let mut header = [0u8; HEADER_LEN];
    let header_len = read_up_to(&mut file, &mut header).map_err(io_error("read", path))?;
    let version = format::check_header(&header[..header_len]).map_err(|bad| match bad {
        BadHeader::NotAJournal(detail) => OpenError::NotAJournal { path: path.to_owned(), detail },
        BadHeader::UnknownVersion(version) => OpenError::UnknownVersion { path: path.to_owned(), version },
    })?;

    let (index, end) = scan(&mut file, version, len, path)?;
    let dropped_bytes = len - end;
    if dropped_bytes > 0 {
        // A torn tail: a write that a crash cut short, never acknowledged. Cut it off before
        // anything is appended after it.
        tracing::warn!(
            journal = %path.display(),
            dropped_bytes,
            offset = end,
            "the journal ended in a torn record; cut off {dropped_bytes} bytes at offset {end}"
        );
        file.set_len(end).map_err(io_error("truncate the torn tail of", path))?;
    }
    // What was read back may have come from the page cache without ever reaching the disk: the
    // process that wrote it may have died between its write and its fdatasync. Every duplicate
    // answered from now on is acknowledged on the strength of these records, so they must be
    // durable first (and so must a cut).
    file.sync_all().map_err(io_error("sync", path))?;
    file.seek(SeekFrom::End(0)).map_err(io_error("seek in", path))?;
    if created {
        // Loud: a journal expected elsewhere (another working directory, an unmounted volume)
        // would otherwise look like an empty store, and every redelivery would be applied again.
        let shown = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
        tracing::warn!(journal = %shown.display(), "created a new, empty journal; if one was expected here, stop now");
    }
    Ok(Opened { file, lock, index, dropped_bytes, len: end, version, modified })
}

/// Takes the exclusive lock on `<journal>.lock`, held until the returned file is closed.
///
/// Tries for a short while before giving up: a process that starts a child process holds a copy
/// of every open file between its fork and the child's exec, so a lock released just then is
/// briefly still held. Another process that really has the journal open holds it for longer.
fn take_lock(path: &Path) -> Result<File, OpenError> {
    let lock_path = beside(path, ".lock");
    let lock = owner_only(OpenOptions::new().create(true).truncate(false).read(true).write(true))
        .open(&lock_path)
        .map_err(io_error("open the lock file of", path))?;
    let mut attempt = 1;
    loop {
        match lock.try_lock() {
            Ok(()) => return Ok(lock),
            Err(std::fs::TryLockError::WouldBlock) if attempt < LOCK_ATTEMPTS => {
                std::thread::sleep(std::time::Duration::from_millis(10));
                attempt += 1;
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(OpenError::Locked { path: path.to_owned() });
            }
            Err(std::fs::TryLockError::Error(err)) => return Err(io_error("lock", path)(err)),
        }
    }
}

/// Creates an empty journal of the latest version atomically: header into a temporary file,
/// synced, renamed into place, and the directory synced, so that a crash leaves either no journal
/// or a valid empty one.
fn create(path: &Path) -> Result<(), OpenError> {
    let temporary = beside(path, ".tmp");
    let mut file = owner_only(OpenOptions::new().create(true).write(true).truncate(true))
        .open(&temporary)
        .map_err(io_error("create", &temporary))?;
    file.write_all(&format::header(Version::LATEST)).map_err(io_error("write the header of", &temporary))?;
    file.sync_all().map_err(io_error("sync", &temporary))?;
    drop(file);
    std::fs::rename(&temporary, path).map_err(io_error("move the new journal into place at", path))?;
    sync_directory(path).map_err(io_error("sync the directory of", path))
}

/// Creates `dir` and its missing ancestors, and makes each new entry durable in its parent.
fn create_directories(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut current = Some(dir);
    while let Some(path) = current.filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        missing.push(path);
        current = path.parent();
    }
    std::fs::create_dir_all(dir)?;
    for created in missing.iter().rev() {
        sync_directory(created)?;
    }
    Ok(())
}

/// Makes a file's creation or renaming durable.
pub(crate) fn sync_directory(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Reads the records of a journal of `version` after the header; returns the index and the offset
/// where the good records end.
pub(crate) fn scan(
    file: &mut impl Read,
    version: Version,
    len: u64,
    path: &Path,
) -> Result<(Index, u64), OpenError> {
    let shortest = version.min_record() as u64;
    let estimate = usize::try_from(len.saturating_sub(HEADER_LEN as u64) / shortest).unwrap_or(usize::MAX);
    let mut reader = Chunks::new(file, HEADER_LEN as u64, len);
    // Sized for the shortest records; trimmed below once the real count is known.
    let mut index = Index::with_capacity(estimate, estimate.saturating_mul(8));
    let corrupt = |offset, detail| OpenError::Corrupt { path: path.to_owned(), offset, detail };
    loop {
        let bytes = reader.at_least(MAX_RECORD).map_err(io_error("read", path))?;
        if bytes.is_empty() {
            index.shrink_to_fit();
            return Ok((index, reader.offset()));
        }
        match format::parse(version, bytes) {
            Parsed::Record(format::Record { payment, .. }, len) => {
                if index.insert_if_absent(&payment).is_err() {
                    return Err(corrupt(
                        reader.offset(),
                        format!("payment {} is recorded a second time", payment.id),
                    ));
                }
                reader.advance(len);
            }
            Parsed::Invalid(reason) => {
                return Err(corrupt(
                    reader.offset(),
                    format!("a record with a valid checksum is not a payment: {reason}"),
                ));
            }
            damaged => {
                let why = match damaged {
                    Parsed::Damaged(why) => why,
                    _ => "the record is cut short",
                };
                let bad = reader.offset();
                if let Some(next) = next_record(&mut reader, version).map_err(io_error("read", path))? {
                    return Err(corrupt(
                        bad,
                        format!(
                            "{why}, and a valid record follows at offset {next}; a damaged record before good ones \
                             is not a torn write, so it is not cut off (that could drop acknowledged payments)"
                        ),
                    ));
                }
                index.shrink_to_fit();
                return Ok((index, bad));
            }
        }
    }
}

/// The offset of the first record after the current one that has a valid checksum, if any.
fn next_record<R: Read>(reader: &mut Chunks<'_, R>, version: Version) -> io::Result<Option<u64>> {
    loop {
        reader.advance(1);
        let bytes = reader.at_least(MAX_RECORD)?;
        if bytes.is_empty() {
            return Ok(None);
        }
        if let Parsed::Record(..) | Parsed::Invalid(_) = format::parse(version, bytes) {
            return Ok(Some(reader.offset()));
        }
    }
}

/// Reads a file forward in large chunks, keeping what is not consumed yet.
struct Chunks<'f, R> {
    file: &'f mut R,
    /// Bytes of the file not read yet, to size reads of a small file small.
    unread: u64,
    buffer: Vec<u8>,
    start: usize,
    /// The file offset of `buffer[0]`.
    base: u64,
    eof: bool,
}

impl<'f, R: Read> Chunks<'f, R> {
    fn new(file: &'f mut R, base: u64, len: u64) -> Self {
        Self { file, unread: len.saturating_sub(base), buffer: Vec::new(), start: 0, base, eof: false }
    }

    /// The unconsumed bytes, at least `want` of them unless the file ends first.
    fn at_least(&mut self, want: usize) -> io::Result<&[u8]> {
        while self.buffer.len() - self.start < want && !self.eof {
            self.buffer.drain(..self.start);
            self.base += self.start as u64;
            self.start = 0;
            let filled = self.buffer.len();
            // At least one byte, so that a file that grew since it was measured still ends in EOF.
            let chunk = usize::try_from(self.unread).unwrap_or(READ_CHUNK).clamp(1, READ_CHUNK);
            self.buffer.resize(filled + chunk, 0);
            let read = self.file.read(&mut self.buffer[filled..])?;
            self.buffer.truncate(filled + read);
            self.unread = self.unread.saturating_sub(read as u64);
            self.eof = read == 0;
        }
        Ok(&self.buffer[self.start..])
    }

    fn advance(&mut self, len: usize) {
        self.start += len;
    }

    fn offset(&self) -> u64 {
        self.base + self.start as u64
    }
}
