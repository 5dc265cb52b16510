//! The outgoing event: [`PaymentRecorded`], what the rest of the system is told once a payment is
//! recorded, and the message ID that is the same on every publication of it.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::{Payment, PaymentId};

/// What every `PaymentRecorded` message ID starts with, before the payment ID.
pub const MESSAGE_ID_PREFIX: &str = "payment-recorded:";

/// A payment was recorded: the event a store keeps in its outbox, in the same atomic step as the
/// payment, and a relay publishes at least once.
///
/// Its [`message_id`](Self::message_id) depends on the payment ID alone, so every publication of
/// it, by any relay, after any crash, carries the same one: the broker (JetStream's
/// `Nats-Msg-Id`) or the next consumer deduplicates by it, as this project's consumer
/// deduplicates `PaymentTaken` by payment ID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentRecorded {
    /// The payment as it was recorded (the first version, whatever conflicts came after).
    pub payment: Payment,
    /// When the store recorded it, to the millisecond.
    pub recorded_at: RecordedAt,
}

impl PaymentRecorded {
    /// The event of `payment`, recorded at `recorded_at`.
    pub const fn new(payment: Payment, recorded_at: RecordedAt) -> Self {
        Self { payment, recorded_at }
    }

    /// The message ID of this event: [`MESSAGE_ID_PREFIX`] and the payment ID, the same on every
    /// publication.
    pub fn message_id(&self) -> String {
        message_id(&self.payment.id)
    }

    /// Appends the event to `out` as one JSON object (no newline):
    ///
    /// ```json
    /// {"type":"PaymentRecorded","message_id":"payment-recorded:pay-1","payment_id":"pay-1","amount":1999,"currency":"EUR","recorded_at":"2026-11-28T05:00:00.123Z"}
    /// ```
    ///
    /// The payment's fields are those of `PaymentTaken`, at the top level, so the next consumer
    /// can be this project's own: it reads them and ignores the rest.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let wire = Wire {
            kind: "PaymentRecorded",
            message_id: &self.message_id(),
            payment_id: self.payment.id.as_str(),
            amount: self.payment.amount.minor_units(),
            currency: self.payment.currency.as_str(),
            recorded_at: &self.recorded_at.to_string(),
        };
        // Writing JSON into a Vec cannot fail: every value is a plain string or integer.
        serde_json::to_writer(out, &wire).expect("serialising an event into memory cannot fail");
    }
}

/// The message ID of the `PaymentRecorded` event of the payment `id`.
pub fn message_id(id: &PaymentId) -> String {
    format!("{MESSAGE_ID_PREFIX}{id}")
}

#[derive(Serialize)]
struct Wire<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message_id: &'a str,
    payment_id: &'a str,
    amount: u64,
    currency: &'a str,
    recorded_at: &'a str,
}

/// When a payment was recorded: milliseconds since the Unix epoch, shown in RFC 3339 (UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordedAt(u64);

impl RecordedAt {
    /// The instant `millis` milliseconds after the Unix epoch.
    pub const fn from_unix_millis(millis: u64) -> Self {
        Self(millis)
    }

    /// The instant `time`, to the millisecond; before the epoch counts as the epoch.
    pub fn from_system_time(time: SystemTime) -> Self {
        let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        Self(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
    }

    /// Milliseconds since the Unix epoch.
    pub const fn unix_millis(self) -> u64 {
        self.0
    }

    /// The same instant as a [`SystemTime`].
    pub fn system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }
}

impl fmt::Display for RecordedAt {
    /// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (secs, millis) = (self.0 / 1000, self.0 % 1000);
        let (days, second_of_day) = (secs / 86_400, secs % 86_400);
        let (year, month, day) = civil_from_days(days);
        let (hour, minute, second) = (second_of_day / 3600, second_of_day / 60 % 60, second_of_day % 60);
        write!(f, "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z")
    }
}

/// The proleptic Gregorian date `days` days after 1970-01-01 (Howard Hinnant's `civil_from_days`,
/// for days on or after the epoch).
const fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 { shifted_month + 3 } else { shifted_month - 9 };
    let year = year_of_era + era * 400 + if month <= 2 { 1 } else { 0 };
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event;

    fn recorded(id: &str, millis: u64) -> PaymentRecorded {
        PaymentRecorded::new(
            Payment::parse(id, 1999, "EUR").expect("valid"),
            RecordedAt::from_unix_millis(millis),
        )
    }

    #[test]
    fn the_message_id_depends_on_the_payment_id_alone() {
        let early = recorded("pay-1", 0);
        let late = PaymentRecorded::new(
            Payment::parse("pay-1", 5, "USD").expect("valid"),
            RecordedAt::from_unix_millis(1_800_000_000_000),
        );
        assert_eq!(early.message_id(), "payment-recorded:pay-1");
        assert_eq!(early.message_id(), late.message_id());
        assert_ne!(early.message_id(), recorded("pay-2", 0).message_id());
    }

    #[test]
    fn encodes_the_payment_at_the_top_level_with_type_id_and_time() {
        let mut out = Vec::new();
        recorded("pay-1", 1_795_842_000_123).encode(&mut out);
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            r#"{"type":"PaymentRecorded","message_id":"payment-recorded:pay-1","payment_id":"pay-1","amount":1999,"currency":"EUR","recorded_at":"2026-11-28T05:00:00.123Z"}"#
        );
    }

    #[test]
    fn the_next_consumer_reads_the_payment_back_from_the_event() {
        let event = recorded("pay-1", 42);
        let mut out = Vec::new();
        event.encode(&mut out);
        assert_eq!(event::decode(&out).expect("a PaymentTaken reader accepts it"), event.payment);
    }

    #[test]
    fn shows_instants_in_rfc_3339() {
        let show = |millis| RecordedAt::from_unix_millis(millis).to_string();
        assert_eq!(show(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(show(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(show(951_868_799_999), "2000-02-29T23:59:59.999Z");
        assert_eq!(show(4_107_542_400_000), "2100-03-01T00:00:00.000Z");
        assert_eq!(show(1_704_067_199_000), "2023-12-31T23:59:59.000Z");
    }

    #[test]
    fn keeps_system_times_to_the_millisecond() {
        let time = UNIX_EPOCH + Duration::from_micros(1_795_842_000_123_456);
        let at = RecordedAt::from_system_time(time);
        assert_eq!(at.unix_millis(), 1_795_842_000_123);
        assert_eq!(at.system_time(), UNIX_EPOCH + Duration::from_millis(1_795_842_000_123));
        assert_eq!(RecordedAt::from_system_time(UNIX_EPOCH - Duration::from_secs(1)).unix_millis(), 0);
    }
}
