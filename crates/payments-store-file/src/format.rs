//! The journal's bytes: a versioned header, then one checksummed record per recorded payment.
//!
//! ```text
//! header (16 bytes)   magic "PAYJOURN" | version u16 | reserved u16 (0) | crc32c of the 12 bytes before
//! record              crc32c u32 | len u16 | kind u8 | body (len bytes)
//!   kind 1, payment               id_len u8 | id (1..=64 bytes) | amount u64 | currency [u8; 3]
//!   kind 2, payment, recorded at  the kind-1 body | recorded_at u64 (milliseconds since the Unix epoch)
//! ```
//!
//! All integers are little-endian. A record's checksum covers everything after it (length, kind,
//! body), so a torn or flipped length is caught like a torn or flipped body.
//!
//! Each version has exactly one record kind, and a reader accepts only that kind:
//!
//! - **Version 2** (every journal created now): kind 2 only, 28 to 91 bytes a record. The time is
//!   what the file store's outbox hands out as the event's `recorded_at`.
//! - **Version 1** (journals created before the outbox): kind 1 only, 20 to 83 bytes. Such a
//!   journal still opens, and is still written as version 1 with kind-1 records, so that the
//!   binary that created it can open it again. Its records carry no time.
//!
//! Why a new version and not just a new kind in version 1: a version-1 reader sees a kind-2 record
//! of a short ID as a checksummed record that is not a payment (corruption: it refuses to open),
//! and a kind-2 record of an ID over 56 bytes as a record whose length is out of range, that is, as
//! damage; when such a record ends the journal, it takes it for a torn tail and cuts off an
//! acknowledged payment. A new version makes every older binary refuse the whole file, clearly,
//! before it reads a record. See docs/adr/0001-journal-format.md.

use payments_ports::domain::{Amount, Currency, Payment, PaymentId, RecordedAt};

/// The first eight bytes of every journal.
pub(crate) const MAGIC: [u8; 8] = *b"PAYJOURN";
/// The header's length in bytes.
pub(crate) const HEADER_LEN: usize = 16;

/// Bytes before a record's body: checksum, length, kind.
const PREFIX_LEN: usize = 7;
/// The kind byte of a payment record (version 1).
const KIND_PAYMENT: u8 = 1;
/// The kind byte of a payment record with the time it was recorded (version 2).
const KIND_PAYMENT_RECORDED_AT: u8 = 2;
/// A payment body without its ID: id_len, amount, currency.
const PAYMENT_FIXED: usize = 1 + 8 + 3;
/// The recorded-at field after a kind-2 body's payment.
const RECORDED_AT_LEN: usize = 8;
/// The longest record of any version, in bytes.
pub(crate) const MAX_RECORD: usize = PREFIX_LEN + PAYMENT_FIXED + PaymentId::MAX_LEN + RECORDED_AT_LEN;

/// A journal's format version, as its header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Version {
    /// Kind-1 records: payments without a time.
    V1,
    /// Kind-2 records: payments with the time they were recorded.
    V2,
}

impl Version {
    /// The version of every journal created now.
    pub(crate) const LATEST: Self = Self::V2;

    /// The number in the header.
    pub(crate) const fn number(self) -> u16 {
        match self {
            Self::V1 => 1,
            Self::V2 => 2,
        }
    }

    /// The version numbered `number`, if this code knows it.
    pub(crate) const fn from_number(number: u16) -> Option<Self> {
        match number {
            1 => Some(Self::V1),
            2 => Some(Self::V2),
            _ => None,
        }
    }

    /// The one record kind a journal of this version holds.
    const fn kind(self) -> u8 {
        match self {
            Self::V1 => KIND_PAYMENT,
            Self::V2 => KIND_PAYMENT_RECORDED_AT,
        }
    }

    /// Bytes of a body beyond the payment's ID.
    const fn body_fixed(self) -> usize {
        match self {
            Self::V1 => PAYMENT_FIXED,
            Self::V2 => PAYMENT_FIXED + RECORDED_AT_LEN,
        }
    }

    /// The shortest and the longest body of a record of this version.
    const fn body_range(self) -> std::ops::RangeInclusive<usize> {
        self.body_fixed() + 1..=self.body_fixed() + PaymentId::MAX_LEN
    }

    /// The shortest record of this version, in bytes.
    pub(crate) const fn min_record(self) -> usize {
        PREFIX_LEN + self.body_fixed() + 1
    }

    /// The longest record of this version, in bytes.
    pub(crate) const fn max_record(self) -> usize {
        PREFIX_LEN + self.body_fixed() + PaymentId::MAX_LEN
    }
}

/// The header of a new journal of `version`.
pub(crate) fn header(version: Version) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..8].copy_from_slice(&MAGIC);
    header[8..10].copy_from_slice(&version.number().to_le_bytes());
    let crc = crc32c::crc32c(&header[..12]);
    header[12..].copy_from_slice(&crc.to_le_bytes());
    header
}

/// What is wrong with a header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum BadHeader {
    /// Too short, wrong magic or wrong checksum: not a journal.
    NotAJournal(String),
    /// A journal of a version this code does not know.
    UnknownVersion(u16),
}

/// Checks the first bytes of a file, and says which version of journal it is.
pub(crate) fn check_header(bytes: &[u8]) -> Result<Version, BadHeader> {
    if bytes.len() < HEADER_LEN {
        return Err(BadHeader::NotAJournal(format!(
            "it is {} bytes long, shorter than a header",
            bytes.len()
        )));
    }
    if bytes[..8] != MAGIC {
        return Err(BadHeader::NotAJournal("it does not start with PAYJOURN".to_owned()));
    }
    let stored = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
    if crc32c::crc32c(&bytes[..12]) != stored {
        return Err(BadHeader::NotAJournal("its header checksum does not match".to_owned()));
    }
    let number = u16::from_le_bytes([bytes[8], bytes[9]]);
    Version::from_number(number).ok_or(BadHeader::UnknownVersion(number))
}

/// Appends the record of `payment`, recorded at `recorded_at`, to `out`, in the kind of `version`
/// (a version-1 record has no room for the time, and drops it).
pub(crate) fn encode(version: Version, payment: &Payment, recorded_at: RecordedAt, out: &mut Vec<u8>) {
    let id = payment.id.as_bytes();
    let start = out.len();
    out.extend_from_slice(&[0; 4]); // the checksum, filled in below
    // The body is at most 84 bytes, so its length fits in a u16.
    out.extend_from_slice(&((version.body_fixed() + id.len()) as u16).to_le_bytes());
    out.push(version.kind());
    out.push(id.len() as u8);
    out.extend_from_slice(id);
    out.extend_from_slice(&payment.amount.minor_units().to_le_bytes());
    out.extend_from_slice(&payment.currency.to_bytes());
    if version == Version::V2 {
        out.extend_from_slice(&recorded_at.unix_millis().to_le_bytes());
    }
    let crc = crc32c::crc32c(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// One record, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    /// The payment.
    pub(crate) payment: Payment,
    /// When it was recorded: `None` for a version-1 record, which does not say.
    pub(crate) recorded_at: Option<RecordedAt>,
    /// The record's checksum, as stored in its first four bytes: what tells it from another
    /// record at the same offset of another journal.
    pub(crate) crc: u32,
}

/// What the bytes at one offset hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// A complete record with a matching checksum and a valid payment, and its length in bytes.
    Record(Record, usize),
    /// Fewer bytes than a record needs: the end of the input cuts it short.
    Incomplete,
    /// A length out of range or a checksum that does not match: torn, or corrupt.
    Damaged(&'static str),
    /// A matching checksum over content that is not a valid payment of this version: written by
    /// something else.
    Invalid(String),
}

/// Parses the record at the start of `bytes`, in a journal of `version`.
pub(crate) fn parse(version: Version, bytes: &[u8]) -> Parsed {
    let Some(prefix) = bytes.get(..PREFIX_LEN) else { return Parsed::Incomplete };
    let body_len = usize::from(u16::from_le_bytes([prefix[4], prefix[5]]));
    if !version.body_range().contains(&body_len) {
        return Parsed::Damaged("its length is out of range");
    }
    let Some(record) = bytes.get(..PREFIX_LEN + body_len) else { return Parsed::Incomplete };
    let stored = u32::from_le_bytes([record[0], record[1], record[2], record[3]]);
    if crc32c::crc32c(&record[4..]) != stored {
        return Parsed::Damaged("its checksum does not match");
    }
    match decode_body(version, record[6], &record[PREFIX_LEN..]) {
        Ok((payment, recorded_at)) => {
            Parsed::Record(Record { payment, recorded_at, crc: stored }, record.len())
        }
        Err(reason) => Parsed::Invalid(reason),
    }
}

fn decode_body(version: Version, kind: u8, body: &[u8]) -> Result<(Payment, Option<RecordedAt>), String> {
    if kind != version.kind() {
        return Err(match kind {
            KIND_PAYMENT | KIND_PAYMENT_RECORDED_AT => {
                format!("record kind {kind} does not belong in a version-{} journal", version.number())
            }
            _ => format!("unknown record kind {kind}"),
        });
    }
    let id_len = usize::from(body[0]);
    if body.len() != version.body_fixed() + id_len {
        return Err(format!("ID length {id_len} does not fit a body of {} bytes", body.len()));
    }
    let id =
        std::str::from_utf8(&body[1..1 + id_len]).map_err(|_| "the payment ID is not UTF-8".to_owned())?;
    let id = PaymentId::new(id).map_err(|e| e.to_string())?;
    let rest = &body[1 + id_len..];
    let amount = Amount::new(u64_at(rest, 0)).map_err(|e| e.to_string())?;
    let currency = Currency::from_bytes([rest[8], rest[9], rest[10]]).map_err(|e| e.to_string())?;
    let recorded_at = match version {
        Version::V1 => None,
        Version::V2 => Some(RecordedAt::from_unix_millis(u64_at(rest, 11))),
    };
    Ok((Payment::new(id, amount, currency), recorded_at))
}

/// The little-endian u64 at `at` in `bytes`, which the caller has sized to hold it.
fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut le = [0u8; 8];
    le.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(le)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERSIONS: [Version; 2] = [Version::V1, Version::V2];
    const AT: RecordedAt = RecordedAt::from_unix_millis(1_795_842_000_123);

    fn payment(id: &str) -> Payment {
        Payment::parse(id, 1999, "EUR").expect("valid")
    }

    fn encoded(version: Version, id: &str) -> Vec<u8> {
        let mut out = Vec::new();
        encode(version, &payment(id), AT, &mut out);
        out
    }

    #[test]
    fn a_record_round_trips_and_has_the_documented_size() {
        for (version, fixed, recorded_at) in [(Version::V1, 19, None), (Version::V2, 27, Some(AT))] {
            for id in ["a", "pay-0001", &"x".repeat(64)] {
                let out = encoded(version, id);
                assert_eq!(out.len(), fixed + id.len(), "{version:?} record size for a {}-byte ID", id.len());
                let crc = u32::from_le_bytes([out[0], out[1], out[2], out[3]]);
                let record = Record { payment: payment(id), recorded_at, crc };
                assert_eq!(parse(version, &out), Parsed::Record(record, out.len()), "{version:?}");
                assert!((version.min_record()..=version.max_record()).contains(&out.len()));
                assert!(out.len() <= MAX_RECORD);
            }
        }
        assert_eq!((Version::V1.min_record(), Version::V1.max_record()), (20, 83));
        assert_eq!((Version::V2.min_record(), Version::V2.max_record()), (28, 91));
    }

    #[test]
    fn a_version_1_record_is_the_bytes_version_1_always_wrote() {
        // Written out by hand from the format of version 1, not by the code under test.
        let mut old = vec![0, 0, 0, 0, 13, 0, 1, 1, b'a'];
        old.extend_from_slice(&1999u64.to_le_bytes());
        old.extend_from_slice(b"EUR");
        let crc = crc32c::crc32c(&old[4..]);
        old[..4].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(encoded(Version::V1, "a"), old);
    }

    #[test]
    fn each_version_accepts_its_own_kind_only() {
        let v1 = encoded(Version::V1, "pay-0001-with-a-long-enough-id");
        let v2 = encoded(Version::V2, "pay-0001-with-a-long-enough-id");
        assert!(
            matches!(parse(Version::V2, &v1), Parsed::Invalid(reason) if reason.contains("record kind 1 does not belong in a version-2 journal")),
            "{:?}",
            parse(Version::V2, &v1)
        );
        assert!(matches!(parse(Version::V1, &v2), Parsed::Invalid(_) | Parsed::Damaged(_)));
    }

    #[test]
    fn every_prefix_of_a_record_is_incomplete_or_damaged_never_a_payment() {
        for version in VERSIONS {
            let out = encoded(version, "pay-0001");
            for cut in 0..out.len() {
                assert!(
                    matches!(parse(version, &out[..cut]), Parsed::Incomplete | Parsed::Damaged(_)),
                    "{version:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn every_bit_flip_is_caught() {
        for version in VERSIONS {
            let out = encoded(version, "pay-0001");
            for bit in 0..out.len() * 8 {
                let mut flipped = out.clone();
                flipped[bit / 8] ^= 1 << (bit % 8);
                assert!(
                    matches!(parse(version, &flipped), Parsed::Damaged(_) | Parsed::Incomplete),
                    "{version:?}: flipping bit {bit} went unnoticed: {:?}",
                    parse(version, &flipped)
                );
            }
        }
    }

    #[test]
    fn a_checksummed_record_with_bad_content_is_invalid_not_damaged() {
        for version in VERSIONS {
            let mut out = encoded(version, "pay-0001");
            out[PREFIX_LEN + 1] = b' '; // a space in the ID, then a fresh checksum
            let crc = crc32c::crc32c(&out[4..]);
            out[..4].copy_from_slice(&crc.to_le_bytes());
            assert!(matches!(parse(version, &out), Parsed::Invalid(reason) if reason.contains("payment_id")));
        }
    }

    #[test]
    fn headers_are_checked() {
        assert_eq!(check_header(&header(Version::V1)), Ok(Version::V1));
        assert_eq!(check_header(&header(Version::V2)), Ok(Version::V2));
        assert!(matches!(check_header(b"PAYJ"), Err(BadHeader::NotAJournal(_))));
        assert!(matches!(check_header(b"{\"payment_id\": \"x\"}"), Err(BadHeader::NotAJournal(_))));
        let mut future = header(Version::LATEST);
        future[8] = 3;
        let crc = crc32c::crc32c(&future[..12]);
        future[12..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(check_header(&future), Err(BadHeader::UnknownVersion(3)));
        let mut flipped = header(Version::LATEST);
        flipped[9] ^= 0x40;
        assert!(matches!(check_header(&flipped), Err(BadHeader::NotAJournal(_))));
    }
}
