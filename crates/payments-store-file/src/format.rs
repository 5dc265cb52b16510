//! The journal's bytes: a versioned header, then one checksummed record per recorded payment.
//!
//! ```text
//! header (16 bytes)   magic "PAYJOURN" | version u16 | reserved u16 (0) | crc32c of the 12 bytes before
//! record (20..83)     crc32c u32 | len u16 | kind u8 | body (len bytes)
//!   kind 1, payment   id_len u8 | id (1..=64 bytes) | amount u64 | currency [u8; 3]
//! ```
//!
//! All integers are little-endian. A record's checksum covers everything after it (length, kind,
//! body), so a torn or flipped length is caught like a torn or flipped body. See
//! docs/adr/0001-journal-format.md for why it is binary and framed this way.

use payments_ports::domain::{Amount, Currency, Payment, PaymentId};

/// The first eight bytes of every journal.
pub(crate) const MAGIC: [u8; 8] = *b"PAYJOURN";
/// The format version this code writes and reads.
pub(crate) const VERSION: u16 = 1;
/// The header's length in bytes.
pub(crate) const HEADER_LEN: usize = 16;

/// Bytes before a record's body: checksum, length, kind.
const PREFIX_LEN: usize = 7;
/// The kind byte of a payment record.
const KIND_PAYMENT: u8 = 1;
/// A payment body without its ID: id_len, amount, currency.
const BODY_FIXED: usize = 1 + 8 + 3;
/// The shortest and longest payment body.
const MIN_BODY: usize = BODY_FIXED + 1;
const MAX_BODY: usize = BODY_FIXED + PaymentId::MAX_LEN;
/// The longest record, in bytes.
pub(crate) const MAX_RECORD: usize = PREFIX_LEN + MAX_BODY;

/// The header of a new journal.
pub(crate) fn header() -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..8].copy_from_slice(&MAGIC);
    header[8..10].copy_from_slice(&VERSION.to_le_bytes());
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

/// Checks the first bytes of a file.
pub(crate) fn check_header(bytes: &[u8]) -> Result<(), BadHeader> {
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
    match u16::from_le_bytes([bytes[8], bytes[9]]) {
        VERSION => Ok(()),
        other => Err(BadHeader::UnknownVersion(other)),
    }
}

/// Appends the record of `payment` to `out`.
pub(crate) fn encode(payment: &Payment, out: &mut Vec<u8>) {
    let id = payment.id.as_bytes();
    let start = out.len();
    out.extend_from_slice(&[0; 4]); // the checksum, filled in below
    // The body is at most 76 bytes, so its length fits in a u16.
    out.extend_from_slice(&((BODY_FIXED + id.len()) as u16).to_le_bytes());
    out.push(KIND_PAYMENT);
    out.push(id.len() as u8);
    out.extend_from_slice(id);
    out.extend_from_slice(&payment.amount.minor_units().to_le_bytes());
    out.extend_from_slice(&payment.currency.to_bytes());
    let crc = crc32c::crc32c(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// What the bytes at one offset hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// A complete record with a matching checksum and a valid payment, and its length in bytes.
    Payment(Payment, usize),
    /// Fewer bytes than a record needs: the end of the input cuts it short.
    Incomplete,
    /// A length out of range or a checksum that does not match: torn, or corrupt.
    Damaged(&'static str),
    /// A matching checksum over content that is not a valid payment: written by something else.
    Invalid(String),
}

/// Parses the record at the start of `bytes`.
pub(crate) fn parse(bytes: &[u8]) -> Parsed {
    let Some(prefix) = bytes.get(..PREFIX_LEN) else { return Parsed::Incomplete };
    let body_len = usize::from(u16::from_le_bytes([prefix[4], prefix[5]]));
    if !(MIN_BODY..=MAX_BODY).contains(&body_len) {
        return Parsed::Damaged("its length is out of range");
    }
    let Some(record) = bytes.get(..PREFIX_LEN + body_len) else { return Parsed::Incomplete };
    let stored = u32::from_le_bytes([record[0], record[1], record[2], record[3]]);
    if crc32c::crc32c(&record[4..]) != stored {
        return Parsed::Damaged("its checksum does not match");
    }
    match decode_body(record[6], &record[PREFIX_LEN..]) {
        Ok(payment) => Parsed::Payment(payment, record.len()),
        Err(reason) => Parsed::Invalid(reason),
    }
}

fn decode_body(kind: u8, body: &[u8]) -> Result<Payment, String> {
    if kind != KIND_PAYMENT {
        return Err(format!("unknown record kind {kind}"));
    }
    let id_len = usize::from(body[0]);
    if body.len() != BODY_FIXED + id_len {
        return Err(format!("ID length {id_len} does not fit a body of {} bytes", body.len()));
    }
    let id =
        std::str::from_utf8(&body[1..1 + id_len]).map_err(|_| "the payment ID is not UTF-8".to_owned())?;
    let id = PaymentId::new(id).map_err(|e| e.to_string())?;
    let rest = &body[1 + id_len..];
    let mut amount = [0u8; 8];
    amount.copy_from_slice(&rest[..8]);
    let amount = Amount::new(u64::from_le_bytes(amount)).map_err(|e| e.to_string())?;
    let currency = Currency::from_bytes([rest[8], rest[9], rest[10]]).map_err(|e| e.to_string())?;
    Ok(Payment::new(id, amount, currency))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payment(id: &str) -> Payment {
        Payment::parse(id, 1999, "EUR").expect("valid")
    }

    #[test]
    fn a_record_round_trips_and_has_the_documented_size() {
        for id in ["a", "pay-0001", &"x".repeat(64)] {
            let mut out = Vec::new();
            encode(&payment(id), &mut out);
            assert_eq!(out.len(), 19 + id.len(), "record size for a {}-byte ID", id.len());
            assert_eq!(parse(&out), Parsed::Payment(payment(id), out.len()));
            assert!(out.len() <= MAX_RECORD);
        }
    }

    #[test]
    fn every_prefix_of_a_record_is_incomplete_or_damaged_never_a_payment() {
        let mut out = Vec::new();
        encode(&payment("pay-0001"), &mut out);
        for cut in 0..out.len() {
            assert!(matches!(parse(&out[..cut]), Parsed::Incomplete | Parsed::Damaged(_)), "cut at {cut}");
        }
    }

    #[test]
    fn every_bit_flip_is_caught() {
        let mut out = Vec::new();
        encode(&payment("pay-0001"), &mut out);
        for bit in 0..out.len() * 8 {
            let mut flipped = out.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(
                matches!(parse(&flipped), Parsed::Damaged(_) | Parsed::Incomplete),
                "flipping bit {bit} went unnoticed: {:?}",
                parse(&flipped)
            );
        }
    }

    #[test]
    fn a_checksummed_record_with_bad_content_is_invalid_not_damaged() {
        let mut out = Vec::new();
        encode(&payment("pay-0001"), &mut out);
        out[PREFIX_LEN + 1] = b' '; // a space in the ID, then a fresh checksum
        let crc = crc32c::crc32c(&out[4..]);
        out[..4].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(parse(&out), Parsed::Invalid(reason) if reason.contains("payment_id")));
    }

    #[test]
    fn headers_are_checked() {
        assert_eq!(check_header(&header()), Ok(()));
        assert!(matches!(check_header(b"PAYJ"), Err(BadHeader::NotAJournal(_))));
        assert!(matches!(check_header(b"{\"payment_id\": \"x\"}"), Err(BadHeader::NotAJournal(_))));
        let mut future = header();
        future[8] = 2;
        let crc = crc32c::crc32c(&future[..12]);
        future[12..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(check_header(&future), Err(BadHeader::UnknownVersion(2)));
        let mut flipped = header();
        flipped[9] ^= 0x40;
        assert!(matches!(check_header(&flipped), Err(BadHeader::NotAJournal(_))));
    }
}
