//! The `PaymentTaken` event on the wire: one JSON object, decoded straight into a validated [`Payment`].
//!
//! ```json
//! {"payment_id": "pay-0001", "amount": 1999, "currency": "EUR"}
//! ```
//!
//! Unknown fields are ignored, so producers can add fields without breaking consumers.
//! Every rejection names the field and the offending value, because the reason ends up in a dead
//! letter that a person has to read.

use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::error::{Field, Problem, ValidationError};
use crate::payment::{Amount, Currency, Payment, PaymentId};

/// Why a message is not a valid `PaymentTaken` event. Such a message can never succeed: it is
/// dead-lettered, never retried.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidEvent {
    /// The bytes are not a JSON object (not JSON, not UTF-8, an array, a duplicated field, ...).
    #[error("not a PaymentTaken JSON object: {0}")]
    Malformed(String),
    /// The object is well-formed but a field breaks a domain rule.
    #[error(transparent)]
    Field(#[from] ValidationError),
}

/// The event's fields as raw JSON text, each checked on its own so that an error can name it.
#[derive(Default)]
struct Wire<'a> {
    payment_id: Option<&'a RawValue>,
    amount: Option<&'a RawValue>,
    currency: Option<&'a RawValue>,
}

/// The keys of the event object; any other key is ignored.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Key {
    PaymentId,
    Amount,
    Currency,
    #[serde(other)]
    Other,
}

/// Accepts a JSON object only: a derived struct visitor would also take `["p", 5, "EUR"]` as an event.
struct WireVisitor;

impl<'de> Visitor<'de> for WireVisitor {
    type Value = Wire<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut wire = Wire::default();
        let mut seen = [false; 3];
        while let Some(key) = map.next_key::<Key>()? {
            let (slot, index, name) = match key {
                Key::PaymentId => (&mut wire.payment_id, 0, "payment_id"),
                Key::Amount => (&mut wire.amount, 1, "amount"),
                Key::Currency => (&mut wire.currency, 2, "currency"),
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            if std::mem::replace(&mut seen[index], true) {
                return Err(de::Error::duplicate_field(name));
            }
            *slot = map.next_value()?;
        }
        Ok(wire)
    }
}

impl<'de> Deserialize<'de> for Wire<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(WireVisitor)
    }
}

/// Decodes one `PaymentTaken` event and validates it into a [`Payment`].
///
/// # Errors
///
/// [`InvalidEvent::Malformed`] when `payload` is not one JSON object, [`InvalidEvent::Field`] naming
/// the first field (in the order `payment_id`, `amount`, `currency`) that is missing, of the wrong
/// type or breaks a domain rule.
pub fn decode(payload: &[u8]) -> Result<Payment, InvalidEvent> {
    let wire: Wire<'_> =
        serde_json::from_slice(payload).map_err(|e| InvalidEvent::Malformed(e.to_string()))?;
    let id = payment_id(wire.payment_id)?;
    let amount = amount(wire.amount)?;
    let currency = currency(wire.currency)?;
    Ok(Payment::new(id, amount, currency))
}

fn payment_id(raw: Option<&RawValue>) -> Result<PaymentId, ValidationError> {
    with_string(Field::PaymentId, raw, PaymentId::new)
}

fn currency(raw: Option<&RawValue>) -> Result<Currency, ValidationError> {
    with_string(Field::Currency, raw, Currency::new)
}

/// Hands the JSON string in `raw` to `build`, borrowing it when it has no escapes.
fn with_string<T>(
    field: Field,
    raw: Option<&RawValue>,
    build: impl FnOnce(&str) -> Result<T, ValidationError>,
) -> Result<T, ValidationError> {
    let text = raw.map(RawValue::get).ok_or_else(|| ValidationError::json(field, "", Problem::Missing))?;
    let wrong_type = || ValidationError::json(field, text, Problem::WrongType { expected: "a string" });
    if !text.starts_with('"') {
        return Err(wrong_type());
    }
    match serde_json::from_str::<&str>(text) {
        Ok(borrowed) => build(borrowed),
        // A string with escapes cannot be borrowed; unescape it into an owned one.
        Err(_) => build(&serde_json::from_str::<String>(text).map_err(|_| wrong_type())?),
    }
}

fn amount(raw: Option<&RawValue>) -> Result<Amount, ValidationError> {
    let text =
        raw.map(RawValue::get).ok_or_else(|| ValidationError::json(Field::Amount, "", Problem::Missing))?;
    let is_number = text.starts_with(|c: char| c == '-' || c.is_ascii_digit());
    if !is_number {
        return Err(ValidationError::json(
            Field::Amount,
            text,
            Problem::WrongType { expected: "a whole number of minor units" },
        ));
    }
    if text.contains(['.', 'e', 'E']) {
        return Err(ValidationError::new(Field::Amount, text, Problem::NotAWholeNumber));
    }
    let out_of_range = || {
        ValidationError::new(Field::Amount, text, Problem::OutOfRange { min: Amount::MIN, max: Amount::MAX })
    };
    // A leading '-' (negative) or more digits than a u64 holds can only be out of range.
    let minor_units: u64 = text.parse().map_err(|_| out_of_range())?;
    Amount::new(minor_units)
}

/// A payment in the event schema, for export and dead letters.
#[derive(Serialize)]
struct WireOut<'a> {
    payment_id: &'a str,
    amount: u64,
    currency: &'a str,
}

impl Serialize for Payment {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        WireOut {
            payment_id: self.id.as_str(),
            amount: self.amount.minor_units(),
            currency: self.currency.as_str(),
        }
        .serialize(serializer)
    }
}

/// Appends `payment` to `out` as one `PaymentTaken` JSON object (no newline), the form that
/// [`decode`] reads back: an export can be consumed again.
pub fn encode(payment: &Payment, out: &mut Vec<u8>) {
    // Writing JSON into a Vec cannot fail: every value is a plain string or integer.
    serde_json::to_writer(out, payment).expect("serialising a payment into memory cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The single place decoding is exercised: `expected` is the payment's `Display` or the error's.
    fn check(input: &str, expected: &str) {
        let got = match decode(input.as_bytes()) {
            Ok(payment) => payment.to_string(),
            Err(err) => err.to_string(),
        };
        assert_eq!(got, expected, "input: {input}");
    }

    #[test]
    fn decodes_valid_events() {
        check(r#"{"payment_id": "pay-0001", "amount": 1999, "currency": "EUR"}"#, "pay-0001 (1999 EUR)");
        check(r#"{"currency":"USD","amount":1,"payment_id":"a"}"#, "a (1 USD)");
        check(
            r#"{"payment_id": "p", "amount": 5, "currency": "GBP", "note": {"any": ["thing"]}}"#,
            "p (5 GBP)",
        );
        check(
            r#"{"payment_id": "\u0041b", "amount": 1000000000000, "currency": "EUR"}"#,
            "Ab (1000000000000 EUR)",
        );
        check("  {\"payment_id\":\"p\",\"amount\":7,\"currency\":\"JPY\"}\r\n", "p (7 JPY)");
    }

    #[test]
    fn rejects_malformed_json_with_the_parser_position() {
        check(
            r#"{"payment_id": "p", "amount": 5"#,
            "not a PaymentTaken JSON object: EOF while parsing an object at line 1 column 31",
        );
        check(
            r#"["p", 5, "EUR"]"#,
            "not a PaymentTaken JSON object: invalid type: sequence, expected a JSON object at line 1 column 0",
        );
        check(
            "42",
            "not a PaymentTaken JSON object: invalid type: integer `42`, expected a JSON object at line 1 column 2",
        );
        check("", "not a PaymentTaken JSON object: EOF while parsing a value at line 1 column 0");
        check(
            r#"{"payment_id":"p","amount":1,"amount":2,"currency":"EUR"}"#,
            "not a PaymentTaken JSON object: duplicate field `amount` at line 1 column 37",
        );
        assert!(matches!(decode(b"{\"payment_id\":\"\xff\"}"), Err(InvalidEvent::Malformed(_))));
    }

    #[test]
    fn rejects_each_field_by_name() {
        check(r#"{"amount": 5, "currency": "EUR"}"#, "invalid payment_id: is missing");
        check(r#"{"payment_id": null, "amount": 5, "currency": "EUR"}"#, "invalid payment_id: is missing");
        check(
            r#"{"payment_id": 17, "amount": 5, "currency": "EUR"}"#,
            "invalid payment_id 17: must be a string",
        );
        check(r#"{"payment_id": "p", "currency": "EUR"}"#, "invalid amount: is missing");
        check(
            r#"{"payment_id": "p", "amount": "5", "currency": "EUR"}"#,
            r#"invalid amount "5": must be a whole number of minor units"#,
        );
        check(
            r#"{"payment_id": "p", "amount": 19.99, "currency": "EUR"}"#,
            "invalid amount 19.99: must be a whole number of minor units, without fraction or exponent",
        );
        check(
            r#"{"payment_id": "p", "amount": 1e3, "currency": "EUR"}"#,
            "invalid amount 1e3: must be a whole number of minor units, without fraction or exponent",
        );
        check(
            r#"{"payment_id": "p", "amount": -5, "currency": "EUR"}"#,
            "invalid amount -5: is out of range, it must be a whole number of minor units from 1 to 1000000000000",
        );
        check(
            r#"{"payment_id": "p", "amount": 0, "currency": "EUR"}"#,
            "invalid amount 0: is out of range, it must be a whole number of minor units from 1 to 1000000000000",
        );
        check(
            r#"{"payment_id": "p", "amount": 184467440737095516150, "currency": "EUR"}"#,
            "invalid amount 184467440737095516150: is out of range, it must be a whole number of minor units from 1 to 1000000000000",
        );
        check(r#"{"payment_id": "p", "amount": 5}"#, "invalid currency: is missing");
        check(
            r#"{"payment_id": "p", "amount": 5, "currency": "eur"}"#,
            r#"invalid currency "eur": must be exactly three ASCII uppercase letters, such as EUR"#,
        );
        check(
            r#"{"payment_id": "p", "amount": 5, "currency": ["EUR"]}"#,
            r#"invalid currency ["EUR"]: must be a string"#,
        );
    }

    #[test]
    fn encode_writes_what_decode_reads() {
        let payment = Payment::parse("pay:1_a.b-c", 42, "CHF").expect("valid");
        let mut line = Vec::new();
        encode(&payment, &mut line);
        assert_eq!(line, br#"{"payment_id":"pay:1_a.b-c","amount":42,"currency":"CHF"}"#);
        assert_eq!(decode(&line), Ok(payment));
    }

    proptest::proptest! {
        #[test]
        fn every_valid_payment_survives_encode_then_decode(
            id in "[A-Za-z0-9_.:-]{1,64}",
            amount in Amount::MIN..=Amount::MAX,
            currency in "[A-Z]{3}",
        ) {
            let payment = Payment::parse(&id, amount, &currency).expect("generated valid");
            let mut line = Vec::new();
            encode(&payment, &mut line);
            proptest::prop_assert_eq!(decode(&line), Ok(payment));
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_errors_are_never_empty(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            if let Err(err) = decode(&bytes) {
                proptest::prop_assert!(!err.to_string().is_empty());
            }
        }
    }
}
