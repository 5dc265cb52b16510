//! Validated payment values: a [`Payment`] can only be built from a valid ID, amount and currency.
//!
//! "Parse, don't validate": every constructor checks its input once, and code past this boundary
//! never sees an invalid value.

use std::fmt;
use std::hash::{Hash, Hasher};

use crate::error::{Field, Problem, ValidationError};

/// The deduplication key of a payment: 1 to 64 bytes of `[A-Za-z0-9_.:-]`.
///
/// Stored inline (no heap allocation), so building, copying and hashing one is cheap on the hot path
/// of a consumer that handles every delivery.
#[derive(Clone, Copy)]
pub struct PaymentId {
    len: u8,
    bytes: [u8; PaymentId::MAX_LEN],
}

impl PaymentId {
    /// The longest payment ID, in bytes.
    pub const MAX_LEN: usize = 64;

    /// Checks `value` and builds a payment ID from it.
    ///
    /// # Errors
    ///
    /// A [`ValidationError`] naming the `payment_id` field when `value` is empty, longer than
    /// [`PaymentId::MAX_LEN`] bytes, or holds a character outside `[A-Za-z0-9_.:-]`.
    pub fn new(value: &str) -> Result<Self, ValidationError> {
        let raw = value.as_bytes();
        if raw.is_empty() {
            return Err(ValidationError::new(Field::PaymentId, value, Problem::Empty));
        }
        if raw.len() > Self::MAX_LEN {
            return Err(ValidationError::new(
                Field::PaymentId,
                value,
                Problem::TooLong { len: raw.len(), max: Self::MAX_LEN },
            ));
        }
        if let Some(at) = raw.iter().position(|&b| !is_id_byte(b)) {
            // `at` is a byte offset; report the whole character that starts there (or contains it).
            let ch = value[floor_char_boundary(value, at)..].chars().next().unwrap_or('\u{FFFD}');
            return Err(ValidationError::new(Field::PaymentId, value, Problem::Character { ch, at }));
        }
        let mut bytes = [0u8; Self::MAX_LEN];
        bytes[..raw.len()].copy_from_slice(raw);
        Ok(Self {
            // Cannot truncate: the length was checked against MAX_LEN (64) above.
            len: raw.len() as u8,
            bytes,
        })
    }

    /// The ID as a string slice.
    pub fn as_str(&self) -> &str {
        // Every byte was checked to be ASCII in `new`, so this cannot fail.
        std::str::from_utf8(self.as_bytes()).expect("a PaymentId holds only ASCII bytes")
    }

    /// The ID's bytes (ASCII).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The length of the ID in bytes (1 to 64).
    #[allow(clippy::len_without_is_empty)] // A PaymentId is never empty.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }
}

/// Whether `b` may appear in a payment ID.
pub(crate) const fn is_id_byte(b: u8) -> bool {
    ID_BYTES[b as usize]
}

/// The ID alphabet as a table: one load per byte on the hot path of every delivery and of
/// reading a journal back.
const ID_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let byte = b as u8;
        table[b] = byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b':' | b'-');
        b += 1;
    }
    table
};

fn floor_char_boundary(s: &str, mut at: usize) -> usize {
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

impl PartialEq for PaymentId {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for PaymentId {}

impl Hash for PaymentId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl PartialOrd for PaymentId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Payment IDs order bytewise, which for their ASCII alphabet is also the SQL `"C"` collation.
impl Ord for PaymentId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl fmt::Debug for PaymentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for PaymentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for PaymentId {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// An amount of money in integer minor units (cents for EUR), from 1 to [`Amount::MAX`].
///
/// Never a float: money is counted, not measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Amount(u64);

impl Amount {
    /// The smallest amount: one minor unit.
    pub const MIN: u64 = 1;
    /// The largest amount: 1,000,000,000,000 minor units (ten billion in a two-decimal currency).
    pub const MAX: u64 = 1_000_000_000_000;

    /// Checks `minor_units` and builds an amount from it.
    ///
    /// # Errors
    ///
    /// A [`ValidationError`] naming the `amount` field when the value is outside 1 to [`Amount::MAX`].
    pub fn new(minor_units: u64) -> Result<Self, ValidationError> {
        if (Self::MIN..=Self::MAX).contains(&minor_units) {
            Ok(Self(minor_units))
        } else {
            Err(ValidationError::new(
                Field::Amount,
                &minor_units.to_string(),
                Problem::OutOfRange { min: Self::MIN, max: Self::MAX },
            ))
        }
    }

    /// The amount in minor units.
    pub const fn minor_units(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A currency code: exactly three ASCII uppercase letters, such as `EUR`.
///
/// The shape is checked, not membership in ISO 4217: a new or private code must not turn a payment
/// into a poison message, and the effect is stored exactly as it arrived.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency([u8; 3]);

impl Currency {
    /// Checks `code` and builds a currency from it.
    ///
    /// # Errors
    ///
    /// A [`ValidationError`] naming the `currency` field unless `code` is exactly three ASCII uppercase letters.
    pub fn new(code: &str) -> Result<Self, ValidationError> {
        match code.as_bytes() {
            &[a, b, c] if [a, b, c].iter().all(u8::is_ascii_uppercase) => Ok(Self([a, b, c])),
            _ => Err(ValidationError::new(Field::Currency, code, Problem::NotACurrencyCode)),
        }
    }

    /// Builds a currency from its three bytes, as a store keeps them.
    ///
    /// # Errors
    ///
    /// The same as [`Currency::new`].
    pub fn from_bytes(code: [u8; 3]) -> Result<Self, ValidationError> {
        if code.iter().all(u8::is_ascii_uppercase) {
            Ok(Self(code))
        } else {
            Err(ValidationError::new(
                Field::Currency,
                &String::from_utf8_lossy(&code),
                Problem::NotACurrencyCode,
            ))
        }
    }

    /// The code as a string slice.
    pub fn as_str(&self) -> &str {
        // Checked to be ASCII uppercase in every constructor, so this cannot fail.
        std::str::from_utf8(&self.0).expect("a Currency holds only ASCII bytes")
    }

    /// The code's three bytes.
    pub const fn to_bytes(self) -> [u8; 3] {
        self.0
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A payment that was taken: the effect a `PaymentTaken` event asks to record.
///
/// Two payments are the same payment when all three fields are equal; the same ID with another
/// amount or currency is a conflict (see [`decide`](crate::decide)).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Payment {
    /// The deduplication key.
    pub id: PaymentId,
    /// How much was taken, in minor units.
    pub amount: Amount,
    /// In which currency.
    pub currency: Currency,
}

impl Payment {
    /// Builds a payment from already validated parts.
    pub const fn new(id: PaymentId, amount: Amount, currency: Currency) -> Self {
        Self { id, amount, currency }
    }

    /// Validates raw parts and builds a payment from them.
    ///
    /// # Errors
    ///
    /// The first [`ValidationError`] found, checking the ID, then the amount, then the currency.
    pub fn parse(id: &str, amount: u64, currency: &str) -> Result<Self, ValidationError> {
        Ok(Self::new(PaymentId::new(id)?, Amount::new(amount)?, Currency::new(currency)?))
    }
}

impl fmt::Display for Payment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} {})", self.id, self.amount, self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payment_id_accepts_the_whole_alphabet_and_both_length_edges() {
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-";
        for ch in alphabet.chars() {
            let id = PaymentId::new(&ch.to_string()).expect("single allowed character");
            assert_eq!(id.as_str(), ch.to_string());
        }
        let longest = "x".repeat(PaymentId::MAX_LEN);
        assert_eq!(PaymentId::new(&longest).expect("64 bytes is allowed").len(), 64);
    }

    #[test]
    fn payment_id_rejections_name_the_problem() {
        let check = |input: &str, expected: &str| {
            let err = PaymentId::new(input).expect_err(input);
            assert_eq!(err.to_string(), expected, "input {input:?}");
        };
        check("", r#"invalid payment_id "": is empty"#);
        check(
            &"a".repeat(65),
            &format!(
                r#"invalid payment_id "{}…" (65 bytes): is 65 bytes long, at most 64 are allowed"#,
                "a".repeat(32)
            ),
        );
        check(
            "pay 1",
            r#"invalid payment_id "pay 1": contains ' ' at byte 3, only A-Z a-z 0-9 _ . : - are allowed"#,
        );
        check(
            "péy",
            r#"invalid payment_id "péy": contains 'é' at byte 1, only A-Z a-z 0-9 _ . : - are allowed"#,
        );
        check(
            "x'); DROP TABLE payments;--",
            r#"invalid payment_id "x'); DROP TABLE payments;--": contains '\'' at byte 1, only A-Z a-z 0-9 _ . : - are allowed"#,
        );
        check(
            "a\0b",
            r#"invalid payment_id "a\0b": contains '\0' at byte 1, only A-Z a-z 0-9 _ . : - are allowed"#,
        );
    }

    #[test]
    fn payment_ids_compare_by_content_not_by_padding() {
        let a = PaymentId::new("abc").expect("valid");
        let b = PaymentId::new("abc").expect("valid");
        let c = PaymentId::new("abd").expect("valid");
        let upper = PaymentId::new("ABC").expect("valid");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, upper, "IDs are case-sensitive");
        assert!(a < c);
        assert!(upper < a, "bytewise order puts uppercase first");
    }

    #[test]
    fn amount_accepts_its_range_and_names_the_value_outside_it() {
        assert_eq!(Amount::new(1).expect("min").minor_units(), 1);
        assert_eq!(Amount::new(Amount::MAX).expect("max").minor_units(), Amount::MAX);
        assert_eq!(
            Amount::new(0).expect_err("zero").to_string(),
            "invalid amount 0: is out of range, it must be a whole number of minor units from 1 to 1000000000000"
        );
        assert!(Amount::new(Amount::MAX + 1).is_err());
    }

    #[test]
    fn currency_is_three_ascii_uppercase_letters() {
        assert_eq!(Currency::new("EUR").expect("valid").as_str(), "EUR");
        for bad in ["eur", "EURO", "EU", "", "E1R", "ÉUR"] {
            let err = Currency::new(bad).expect_err(bad);
            assert_eq!(err.field(), Field::Currency);
            assert!(err.to_string().contains("three ASCII uppercase letters"), "{err}");
        }
        assert!(Currency::from_bytes(*b"usd").is_err());
        assert_eq!(Currency::from_bytes(*b"USD").expect("valid").to_bytes(), *b"USD");
    }

    #[test]
    fn parse_reports_the_first_invalid_field() {
        assert_eq!(Payment::parse("", 0, "x").expect_err("all bad").field(), Field::PaymentId);
        assert_eq!(Payment::parse("p", 0, "x").expect_err("amount bad").field(), Field::Amount);
        assert_eq!(Payment::parse("p", 1, "x").expect_err("currency bad").field(), Field::Currency);
        let payment = Payment::parse("p-1", 1999, "EUR").expect("valid");
        assert_eq!(payment.to_string(), "p-1 (1999 EUR)");
    }
}
