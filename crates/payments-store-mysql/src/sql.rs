//! The statements: every one parameterised, none naming the database (the connection's default
//! database is the URL's).

/// The columns a payment is read from, in the order [`crate::rows::payment`] expects.
const COLUMNS: &str = "payment_id, amount, currency";

/// "Insert unless present", for `rows` rows of `(payment_id, amount, currency, inserted_by)`.
///
/// Not `INSERT IGNORE`, which turns every error into a warning (a truncation, a CHECK that
/// failed) along with the duplicate. Here a duplicate key runs the update, which sets the key to
/// itself: nothing changes, the row keeps its first version, and the affected rows (without
/// `CLIENT_FOUND_ROWS`) count 1 for each row inserted and 0 for each already present.
pub(crate) fn insert(rows: usize) -> String {
    let mut sql = String::with_capacity(96 + rows * 14 + 48);
    sql.push_str("INSERT INTO payments (payment_id, amount, currency, inserted_by) VALUES ");
    push_repeated(&mut sql, "(?, ?, ?, ?)", rows);
    sql.push_str(" ON DUPLICATE KEY UPDATE payment_id = payment_id");
    sql
}

/// The stored rows of `ids` IDs, with the batch that inserted each.
pub(crate) fn select_inserted(ids: usize) -> String {
    let mut sql = format!("SELECT {COLUMNS}, inserted_by FROM payments WHERE payment_id IN (");
    push_repeated(&mut sql, "?", ids);
    sql.push(')');
    sql
}

/// One payment by ID.
pub(crate) const SELECT_ONE: &str = "SELECT payment_id, amount, currency FROM payments WHERE payment_id = ?";

/// How many payments there are.
pub(crate) const COUNT: &str = "SELECT COUNT(*) FROM payments";

/// The first page of an export. The primary key's collation, ascii_bin, orders bytewise.
pub(crate) const LIST_FIRST: &str =
    "SELECT payment_id, amount, currency FROM payments ORDER BY payment_id LIMIT ?";

/// A later page of an export, strictly after a cursor.
pub(crate) const LIST_AFTER: &str =
    "SELECT payment_id, amount, currency FROM payments WHERE payment_id > ? ORDER BY payment_id LIMIT ?";

/// How many rows a statement for `rows` rows is prepared for: the next power of two, at most
/// `max`. The driver caches prepared statements per connection by their text (32 by default);
/// one statement per batch size would push each other out of the cache and cost a prepare per
/// batch, where ten sizes fit in it. A batch is padded by repeating its last row, which the
/// statement treats as a duplicate of itself.
pub(crate) fn padded(rows: usize, max: usize) -> usize {
    rows.next_power_of_two().min(max).max(rows)
}

fn push_repeated(sql: &mut String, item: &str, times: usize) {
    for i in 0..times {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(item);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_have_one_placeholder_per_value() {
        assert_eq!(
            insert(2),
            "INSERT INTO payments (payment_id, amount, currency, inserted_by) VALUES (?, ?, ?, ?), (?, ?, ?, ?) \
             ON DUPLICATE KEY UPDATE payment_id = payment_id"
        );
        assert_eq!(insert(512).matches('?').count(), 2048);
        assert_eq!(
            select_inserted(3),
            "SELECT payment_id, amount, currency, inserted_by FROM payments WHERE payment_id IN (?, ?, ?)"
        );
    }

    #[test]
    fn batches_are_padded_to_a_few_sizes() {
        assert_eq!(padded(1, 512), 1);
        assert_eq!(padded(3, 512), 4);
        assert_eq!(padded(64, 512), 64);
        assert_eq!(padded(65, 512), 128);
        assert_eq!(padded(300, 300), 300);
        assert_eq!(padded(200, 300), 256);
        assert_eq!(padded(257, 300), 300);
        let sizes: std::collections::BTreeSet<usize> = (1..=512).map(|n| padded(n, 512)).collect();
        assert_eq!(sizes.len(), 10, "{sizes:?}");
    }
}
