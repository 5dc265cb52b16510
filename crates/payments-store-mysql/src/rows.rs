//! Rows back into values: every column is read without panicking, and a row that is not a valid
//! payment is a broken store, not a payment.

use mysql_async::Row;
use mysql_async::prelude::FromValue;
use payments_ports::RepositoryError;
use payments_ports::domain::{Amount, Currency, Payment, PaymentId, ValidationError};

/// Column `index` of `row` as a `T`; `what` names it in the error.
pub(crate) fn column<T: FromValue>(row: &mut Row, index: usize, what: &str) -> Result<T, RepositoryError> {
    match row.take_opt::<T, usize>(index) {
        Some(Ok(value)) => Ok(value),
        Some(Err(err)) => Err(RepositoryError::failed_because(format!("unreadable {what}"), err)),
        None => Err(RepositoryError::failed(format!("no column {index} ({what}) in the row"))),
    }
}

/// A `payment_id, amount, currency` row back into a payment.
pub(crate) fn payment(row: &mut Row) -> Result<Payment, RepositoryError> {
    let id: String = column(row, 0, "payment_id")?;
    let amount: u64 = column(row, 1, "amount")?;
    let currency: String = column(row, 2, "currency")?;
    let invalid = |err: ValidationError| {
        RepositoryError::failed(format!("stored payment {id:?} is not a valid payment: {err}"))
    };
    Ok(Payment::new(
        PaymentId::new(&id).map_err(invalid)?,
        Amount::new(amount).map_err(invalid)?,
        Currency::new(&currency).map_err(invalid)?,
    ))
}
