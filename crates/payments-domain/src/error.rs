//! The validation error: which field was wrong, with what value, and why.

use std::fmt;

/// A field of a `PaymentTaken` event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Field {
    /// `payment_id`, the deduplication key.
    PaymentId,
    /// `amount`, in minor units.
    Amount,
    /// `currency`, a three-letter code.
    Currency,
}

impl Field {
    /// The field's name in the event schema.
    pub const fn name(self) -> &'static str {
        match self {
            Self::PaymentId => "payment_id",
            Self::Amount => "amount",
            Self::Currency => "currency",
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What was wrong with a field's value.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// The field is absent or `null`.
    Missing,
    /// The field holds the wrong JSON type.
    WrongType {
        /// What the schema expects, such as "a string".
        expected: &'static str,
    },
    /// The value is empty.
    Empty,
    /// The value is longer than allowed.
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The longest allowed, in bytes.
        max: usize,
    },
    /// The value holds a character that is not allowed.
    Character {
        /// The offending character.
        ch: char,
        /// Its byte offset in the value.
        at: usize,
    },
    /// A number outside the allowed range (negative, zero or too large included).
    OutOfRange {
        /// The smallest allowed value.
        min: u64,
        /// The largest allowed value.
        max: u64,
    },
    /// A number with a fraction or an exponent where whole minor units are required.
    NotAWholeNumber,
    /// Not exactly three ASCII uppercase letters.
    NotACurrencyCode,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("is missing"),
            Self::WrongType { expected } => write!(f, "must be {expected}"),
            Self::Empty => f.write_str("is empty"),
            Self::TooLong { len, max } => write!(f, "is {len} bytes long, at most {max} are allowed"),
            Self::Character { ch, at } => {
                write!(f, "contains {ch:?} at byte {at}, only A-Z a-z 0-9 _ . : - are allowed")
            }
            Self::OutOfRange { min, max } => {
                write!(f, "is out of range, it must be a whole number of minor units from {min} to {max}")
            }
            Self::NotAWholeNumber => {
                f.write_str("must be a whole number of minor units, without fraction or exponent")
            }
            Self::NotACurrencyCode => {
                f.write_str("must be exactly three ASCII uppercase letters, such as EUR")
            }
        }
    }
}

/// A value that breaks a domain rule, naming the field, the offending value (shortened if long) and the rule.
///
/// Displayed as, for example, `invalid amount 0: is out of range, it must be a whole number of minor units from 1 to 1000000000000`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidationError {
    field: Field,
    shown: String,
    problem: Problem,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.shown.is_empty() {
            write!(f, "invalid {}: {}", self.field, self.problem)
        } else {
            write!(f, "invalid {} {}: {}", self.field, self.shown, self.problem)
        }
    }
}

impl std::error::Error for ValidationError {}

/// How many characters of an offending value an error shows before it shortens it.
const SHOWN_CHARS: usize = 32;

impl ValidationError {
    /// An error about a string or number `value` of `field`.
    ///
    /// Strings are shown quoted and escaped, numbers (the amount) as they are; either is shortened
    /// to its first 32 characters plus its length when longer.
    pub fn new(field: Field, value: &str, problem: Problem) -> Self {
        let shown = match field {
            Field::Amount => shorten_raw(value),
            Field::PaymentId | Field::Currency => shorten_quoted(value),
        };
        Self { field, shown, problem }
    }

    /// An error about `field` whose raw JSON text is `json` (for a wrong type), or which is absent (`json` empty).
    pub fn json(field: Field, json: &str, problem: Problem) -> Self {
        Self { field, shown: shorten_raw(json), problem }
    }

    /// The field that was wrong.
    pub const fn field(&self) -> Field {
        self.field
    }

    /// What was wrong with it.
    pub const fn problem(&self) -> &Problem {
        &self.problem
    }
}

fn shorten_quoted(value: &str) -> String {
    match value.char_indices().nth(SHOWN_CHARS) {
        None => format!("{value:?}"),
        Some((cut, _)) => {
            let head = format!("{:?}", &value[..cut]);
            format!("{}…\" ({} bytes)", &head[..head.len() - 1], value.len())
        }
    }
}

fn shorten_raw(value: &str) -> String {
    match value.char_indices().nth(SHOWN_CHARS) {
        None => value.to_owned(),
        Some((cut, _)) => format!("{}… ({} bytes)", &value[..cut], value.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_shortened_with_their_length() {
        let err =
            ValidationError::new(Field::Amount, &"9".repeat(40), Problem::OutOfRange { min: 1, max: 2 });
        assert!(
            err.to_string().starts_with(&format!("invalid amount {}… (40 bytes): ", "9".repeat(32))),
            "{err}"
        );

        let err = ValidationError::new(Field::Currency, &"é".repeat(40), Problem::NotACurrencyCode);
        assert!(
            err.to_string().starts_with(&format!("invalid currency \"{}…\" (80 bytes): ", "é".repeat(32))),
            "{err}"
        );
    }

    #[test]
    fn a_missing_field_shows_no_value() {
        let err = ValidationError::json(Field::Currency, "", Problem::Missing);
        assert_eq!(err.to_string(), "invalid currency: is missing");
    }
}
