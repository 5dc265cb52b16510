//! What a crash or a damaged disk can leave in a journal, and what opening it does.

use libtest_mimic::Failed;
use payments_store_file::{FilePaymentsRepository, OpenError};

use crate::support::{HEADER_LEN, contents, open_copy, payment, record_ends, scratch, sorted, write_journal};

/// A journal of 60 payments: its bytes, the payments, and where each record ends.
fn sixty() -> (Vec<u8>, Vec<payments_ports::domain::Payment>, Vec<u64>) {
    let dir = scratch().expect("temp dir");
    let path = dir.path().join("p.journal");
    let payments: Vec<_> = (0..60).map(payment).collect();
    write_journal(&path, &payments);
    let bytes = std::fs::read(&path).expect("read");
    let ends = record_ends(&payments);
    assert_eq!(ends.last().copied(), Some(bytes.len() as u64), "the journal is exactly its records");
    (bytes, payments, ends)
}

/// Truncation sweep: cut at every byte offset; the journal opens to exactly the longest complete
/// prefix, says how many bytes it dropped, and never panics.
pub(crate) fn every_cut_opens_to_the_longest_complete_prefix() -> Result<(), Failed> {
    let (bytes, payments, ends) = sixty();
    let dir = scratch()?;
    for cut in 0..=bytes.len() {
        let opened = open_copy(dir.path(), &bytes[..cut]);
        if (cut as u64) < HEADER_LEN {
            match opened {
                Err(OpenError::NotAJournal { .. }) => continue,
                other => return Err(format!("cut at {cut}: a torn header must not open: {other:?}").into()),
            }
        }
        let store = opened.map_err(|err| format!("cut at {cut}: {err}"))?;
        let complete = ends.iter().filter(|&&end| end <= cut as u64).count();
        let prefix_end = if complete == 0 { HEADER_LEN } else { ends[complete - 1] };
        let recovery = store.recovery();
        assert_eq!(recovery.payments, complete as u64, "cut at {cut}");
        assert_eq!(recovery.dropped_bytes, cut as u64 - prefix_end, "cut at {cut}");
        assert_eq!(contents(&store), sorted(&payments[..complete]), "cut at {cut}");
        drop(store);
        // The cut is durable: the file now ends where the good records end.
        let after = std::fs::metadata(dir.path().join("copy.journal"))?.len();
        assert_eq!(after, prefix_end, "cut at {cut}: the torn tail must be truncated");
    }
    Ok(())
}

/// Bit-flip sweep: every single-bit flip inside a record is detected — as a torn tail (dropped,
/// with a warning) when it is the last record, and as corruption naming the record's offset
/// otherwise. Flips in the header make the file fail to open.
pub(crate) fn every_bit_flip_in_a_record_is_detected() -> Result<(), Failed> {
    let (bytes, payments, ends) = sixty();
    let dir = scratch()?;
    let starts: Vec<u64> = std::iter::once(HEADER_LEN).chain(ends.iter().copied()).collect();
    for bit in 0..bytes.len() * 8 {
        let mut flipped = bytes.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        let byte = (bit / 8) as u64;
        let opened = open_copy(dir.path(), &flipped);
        if byte < HEADER_LEN {
            assert!(
                matches!(opened, Err(OpenError::NotAJournal { .. } | OpenError::UnknownVersion { .. })),
                "flip of bit {bit} in the header: {opened:?}"
            );
            continue;
        }
        let record = ends.iter().position(|&end| byte < end).expect("inside a record");
        if record == payments.len() - 1 {
            let store =
                opened.map_err(|err| format!("bit {bit} in the last record must be a torn tail: {err}"))?;
            assert_eq!(store.recovery().payments, 59, "bit {bit}");
            assert_eq!(store.recovery().dropped_bytes, ends[59] - ends[58], "bit {bit}");
            assert_eq!(contents(&store), sorted(&payments[..59]), "bit {bit}");
        } else {
            match opened {
                Err(OpenError::Corrupt { offset, .. }) => {
                    assert_eq!(
                        offset, starts[record],
                        "bit {bit} is in record {record}, which starts elsewhere"
                    );
                }
                other => {
                    return Err(
                        format!("bit {bit} in record {record} of 60 went undetected: {other:?}").into()
                    );
                }
            }
        }
    }
    Ok(())
}

/// Garbage after the last complete record (a torn write, a preallocated block) is cut off.
pub(crate) fn garbage_after_the_last_record_is_cut_off() -> Result<(), Failed> {
    let (bytes, payments, _) = sixty();
    let dir = scratch()?;
    for garbage in
        [vec![0u8; 4096], vec![0xff; 7], b"{\"payment_id\":\"x\"}".to_vec(), vec![1, 0, 0, 0, 20, 0, 1]]
    {
        let mut damaged = bytes.clone();
        damaged.extend_from_slice(&garbage);
        let store = open_copy(dir.path(), &damaged)?;
        assert_eq!(store.recovery().dropped_bytes, garbage.len() as u64);
        assert_eq!(contents(&store), sorted(&payments));
    }
    Ok(())
}

pub(crate) fn a_file_that_is_not_a_journal_fails_clearly() -> Result<(), Failed> {
    let dir = scratch()?;
    let path = dir.path().join("payments.jsonl");
    let json = "{\"payment_id\": \"pay-1\", \"amount\": 1, \"currency\": \"EUR\"}\n";
    std::fs::write(&path, json)?;
    let err = FilePaymentsRepository::open(&path).expect_err("a JSON file is not a journal");
    let text = err.to_string();
    assert!(text.contains("payments.jsonl is not a payments journal"), "{text}");
    assert_eq!(std::fs::read_to_string(&path)?, json, "a file that is not a journal is left alone");
    Ok(())
}

pub(crate) fn an_unknown_version_fails_clearly() -> Result<(), Failed> {
    let dir = scratch()?;
    let path = dir.path().join("p.journal");
    write_journal(&path, &[payment(1)]);
    let mut bytes = std::fs::read(&path)?;
    bytes[8] = 9; // version 9, with a valid header checksum
    let crc = crc32c_of(&bytes[..12]);
    bytes[12..16].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, &bytes)?;
    let err = FilePaymentsRepository::open(&path).expect_err("an unknown version");
    assert!(err.to_string().contains("has format version 9; this build reads versions 1 to 2"), "{err}");
    Ok(())
}

/// A journal where the same payment appears twice cannot come from this writer: refuse it.
pub(crate) fn a_payment_recorded_twice_is_corruption() -> Result<(), Failed> {
    let dir = scratch()?;
    let path = dir.path().join("p.journal");
    write_journal(&path, &[payment(1), payment(2)]);
    let mut bytes = std::fs::read(&path)?;
    let first_record = bytes[HEADER_LEN as usize..record_ends(&[payment(1)])[0] as usize].to_vec();
    bytes.extend_from_slice(&first_record);
    std::fs::write(&path, &bytes)?;
    match FilePaymentsRepository::open(&path) {
        Err(OpenError::Corrupt { offset, detail, .. }) => {
            assert_eq!(offset, record_ends(&[payment(1), payment(2)])[1]);
            assert!(detail.contains("recorded a second time"), "{detail}");
            Ok(())
        }
        other => Err(format!("a payment recorded twice must not open: {other:?}").into()),
    }
}

pub(crate) fn the_journal_is_private_to_its_owner() -> Result<(), Failed> {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch()?;
    let path = dir.path().join("nested").join("p.journal");
    write_journal(&path, &[payment(1)]);
    let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the journal holds payments: owner only");
    Ok(())
}

fn crc32c_of(bytes: &[u8]) -> u32 {
    // CRC-32C (Castagnoli), bit by bit: the tests do not trust the code under test for it.
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
        }
    }
    !crc
}
