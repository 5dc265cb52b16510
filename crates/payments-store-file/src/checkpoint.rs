//! The relay position of the file store's outbox: `<journal>.outbox`, a small checksummed record
//! of how far into the journal the events are published, replaced atomically on every mark.
//!
//! ```text
//! checkpoint (40 bytes)  magic "PAYOUTBX" | version u16 (1) | reserved u16 (0)
//!                        | offset u64 | records u64 | last_len u16 | reserved u16 (0) | last_crc u32
//!                        | crc32c of the 36 bytes before
//! ```
//!
//! Little-endian, like the journal. `offset` is the journal byte offset up to which every record's
//! event is published, always a record boundary; `records` is how many records lie before it, so
//! that the backlog is one subtraction. `last_len` and `last_crc` are the length and the checksum
//! of the record that ends at `offset` (zero when none is published): they tie the checkpoint to
//! this journal, so that one left beside a journal that was replaced is refused instead of
//! skipping that journal's first events.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::format::HEADER_LEN;
use crate::journal::{beside, owner_only, sync_directory};

/// The first eight bytes of every checkpoint.
const MAGIC: [u8; 8] = *b"PAYOUTBX";
/// The checkpoint format version this code writes and reads.
const VERSION: u16 = 1;
/// A checkpoint's length in bytes.
pub(crate) const LEN: usize = 40;

/// How far a journal's events are published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    /// The journal byte offset where the published records end (the header's end when none is).
    pub(crate) offset: u64,
    /// How many records lie before `offset`.
    pub(crate) records: u64,
    /// The length of the record that ends at `offset`; 0 when none is published.
    pub(crate) last_len: u16,
    /// The checksum of the record that ends at `offset`; 0 when none is published.
    pub(crate) last_crc: u32,
}

impl Checkpoint {
    /// Nothing published: the first event is the journal's first record.
    pub(crate) const START: Self = Self { offset: HEADER_LEN as u64, records: 0, last_len: 0, last_crc: 0 };

    /// The checkpoint's bytes.
    pub(crate) fn encode(&self) -> [u8; LEN] {
        let mut out = [0u8; LEN];
        out[..8].copy_from_slice(&MAGIC);
        out[8..10].copy_from_slice(&VERSION.to_le_bytes());
        out[12..20].copy_from_slice(&self.offset.to_le_bytes());
        out[20..28].copy_from_slice(&self.records.to_le_bytes());
        out[28..30].copy_from_slice(&self.last_len.to_le_bytes());
        out[32..36].copy_from_slice(&self.last_crc.to_le_bytes());
        let crc = crc32c::crc32c(&out[..36]);
        out[36..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Reads a checkpoint's bytes, or says what is wrong with them.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, String> {
        let Ok(bytes) = <&[u8; LEN]>::try_from(bytes) else {
            return Err(format!("it is {} bytes long, not {LEN}", bytes.len()));
        };
        if bytes[..8] != MAGIC {
            return Err("it does not start with PAYOUTBX".to_owned());
        }
        let stored = u32::from_le_bytes([bytes[36], bytes[37], bytes[38], bytes[39]]);
        if crc32c::crc32c(&bytes[..36]) != stored {
            return Err("its checksum does not match".to_owned());
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version != VERSION {
            return Err(format!("it has format version {version}; this build reads version {VERSION} only"));
        }
        let u64_at = |at: usize| {
            let mut le = [0u8; 8];
            le.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(le)
        };
        Ok(Self {
            offset: u64_at(12),
            records: u64_at(20),
            last_len: u16::from_le_bytes([bytes[28], bytes[29]]),
            last_crc: u32::from_le_bytes([bytes[32], bytes[33], bytes[34], bytes[35]]),
        })
    }
}

/// `<journal>.outbox`: where the checkpoint of the journal at `journal` lives.
pub(crate) fn path_of(journal: &Path) -> PathBuf {
    beside(journal, ".outbox")
}

/// The bytes of the checkpoint at `path`; `None` when there is none (nothing was published yet).
pub(crate) fn read(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

/// Replaces the checkpoint at `path` with `checkpoint`, atomically and durably: into a temporary
/// file, synced, renamed over the old one, and the directory synced. A crash at any instant leaves
/// the old checkpoint or the new one, never a mix, and once this returns `Ok` the new one survives.
pub(crate) fn write(path: &Path, checkpoint: &Checkpoint) -> io::Result<()> {
    let temporary = beside(path, ".tmp");
    let mut file = owner_only(OpenOptions::new().create(true).write(true).truncate(true)).open(&temporary)?;
    file.write_all(&checkpoint.encode())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path)?;
    sync_directory(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOME: Checkpoint =
        Checkpoint { offset: 16 + 3 * 35, records: 3, last_len: 35, last_crc: 0xdead_beef };

    #[test]
    fn round_trips() {
        for checkpoint in [Checkpoint::START, SOME] {
            assert_eq!(Checkpoint::decode(&checkpoint.encode()), Ok(checkpoint));
        }
    }

    #[test]
    fn every_bit_flip_and_every_cut_is_refused() {
        let bytes = SOME.encode();
        for bit in 0..LEN * 8 {
            let mut flipped = bytes;
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(Checkpoint::decode(&flipped).is_err(), "flipping bit {bit} went unnoticed");
        }
        for cut in 0..LEN {
            assert!(Checkpoint::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(Checkpoint::decode(&longer).is_err());
    }

    #[test]
    fn an_unknown_version_says_so() {
        let mut bytes = SOME.encode();
        bytes[8] = 2;
        let crc = crc32c::crc32c(&bytes[..36]);
        bytes[36..].copy_from_slice(&crc.to_le_bytes());
        let err = Checkpoint::decode(&bytes).expect_err("version 2");
        assert!(err.contains("format version 2"), "{err}");
    }

    #[test]
    fn writing_replaces_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = path_of(&dir.path().join("p.journal"));
        assert_eq!(path.file_name().and_then(|n| n.to_str()), Some("p.journal.outbox"));
        assert_eq!(read(&path).expect("read"), None, "missing: nothing published");
        write(&path, &Checkpoint::START).expect("write");
        write(&path, &SOME).expect("write again");
        let bytes = read(&path).expect("read").expect("present");
        assert_eq!(Checkpoint::decode(&bytes), Ok(SOME));
        let names: Vec<_> =
            std::fs::read_dir(dir.path()).expect("list").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names, ["p.journal.outbox"], "the temporary file was renamed into place");
    }
}
