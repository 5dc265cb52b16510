//! Stream replies read from redis's `Value` by hand: the payload's bytes are moved out, never
//! copied, and both RESP2 (arrays) and RESP3 (maps) are understood. (redis's typed
//! `StreamReadReply` clones the whole reply first and keeps every field in a map.)

use redis::Value;

/// The field a message's body is carried in.
pub(crate) const PAYLOAD_FIELD: &[u8] = b"payload";

/// One stream entry.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) id: String,
    pub(crate) body: Body,
}

/// What an entry holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Body {
    /// The entry is pending but no longer in the stream (trimmed or deleted): Redis answers its
    /// fields with nil.
    Deleted,
    /// Its `payload` field.
    Payload(Vec<u8>),
    /// An entry without a `payload` field: its fields, as they are.
    Fields(Vec<(Vec<u8>, Vec<u8>)>),
}

fn text(value: Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        Value::SimpleString(text) => Some(text),
        _ => None,
    }
}

fn bytes(value: Value) -> Vec<u8> {
    match value {
        Value::BulkString(bytes) => bytes,
        Value::SimpleString(text) => text.into_bytes(),
        Value::Int(n) => n.to_string().into_bytes(),
        _ => Vec::new(),
    }
}

/// `[id, [f1, v1, …] | {f1: v1, …} | nil]`.
fn entry(value: Value) -> Option<Entry> {
    let Value::Array(mut parts) = value else { return None };
    if parts.len() < 2 {
        return None;
    }
    let fields = parts.swap_remove(1);
    let id = text(parts.swap_remove(0))?;
    let pairs: Vec<(Value, Value)> = match fields {
        Value::Nil => return Some(Entry { id, body: Body::Deleted }),
        Value::Array(flat) => {
            let mut flat = flat.into_iter();
            std::iter::from_fn(|| Some((flat.next()?, flat.next()?))).collect()
        }
        Value::Map(pairs) => pairs,
        _ => return None,
    };
    let mut fields: Vec<(Vec<u8>, Vec<u8>)> = pairs.into_iter().map(|(k, v)| (bytes(k), bytes(v))).collect();
    match fields.iter().position(|(name, _)| name == PAYLOAD_FIELD) {
        Some(at) => Some(Entry { id, body: Body::Payload(fields.swap_remove(at).1) }),
        None => Some(Entry { id, body: Body::Fields(fields) }),
    }
}

/// A list of entries (XCLAIM's reply, or one stream's part of XREADGROUP's).
pub(crate) fn entries(value: Value) -> Vec<Entry> {
    match value {
        Value::Array(entries) => entries.into_iter().filter_map(entry).collect(),
        _ => Vec::new(),
    }
}

/// XREADGROUP's reply: nil (BLOCK timed out), RESP2 `[[key, [entry…]]…]` or RESP3 `{key: [entry…]}`.
pub(crate) fn read(value: Value) -> Vec<Entry> {
    let per_stream: Vec<Value> = match value {
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|stream| match stream {
                Value::Array(mut pair) if pair.len() == 2 => Some(pair.swap_remove(1)),
                _ => None,
            })
            .collect(),
        Value::Map(streams) => streams.into_iter().map(|(_, entries)| entries).collect(),
        _ => Vec::new(),
    };
    per_stream.into_iter().flat_map(entries).collect()
}

/// XAUTOCLAIM's reply: the cursor to go on from (`0-0` once the whole pending list was walked),
/// the entries claimed, and the IDs Redis found deleted (and removed from the pending list).
pub(crate) struct AutoClaim {
    pub(crate) cursor: String,
    pub(crate) claimed: Vec<Entry>,
    pub(crate) deleted: Vec<String>,
}

pub(crate) fn autoclaim(value: Value) -> Option<AutoClaim> {
    let Value::Array(parts) = value else { return None };
    let mut parts = parts.into_iter();
    let cursor = text(parts.next()?)?;
    let claimed = entries(parts.next()?);
    // Redis 6.2 sends two elements; 7.0 adds the deleted IDs.
    let deleted = match parts.next() {
        Some(Value::Array(ids)) => ids.into_iter().filter_map(text).collect(),
        _ => Vec::new(),
    };
    Some(AutoClaim { cursor, claimed, deleted })
}

/// One entry of `XPENDING key group id id 1`: who holds it and how often it was delivered.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Pending {
    pub(crate) consumer: String,
    pub(crate) deliveries: u64,
}

/// `XPENDING key group start end count`'s reply for one ID: `[[id, consumer, idle, count]]`, or
/// empty when the entry is not pending (acknowledged meanwhile).
pub(crate) fn pending(value: Value) -> Option<Pending> {
    let Value::Array(rows) = value else { return None };
    let Value::Array(fields) = rows.into_iter().next()? else { return None };
    let mut fields = fields.into_iter();
    let _id = fields.next()?;
    let consumer = text(fields.next()?)?;
    let _idle = fields.next()?;
    let deliveries = match fields.next()? {
        Value::Int(n) => u64::try_from(n).ok()?,
        other => text(other)?.parse().ok()?,
    };
    Some(Pending { consumer, deliveries })
}

/// The IDs in the extended form of XPENDING's reply: `[[id, consumer, idle, count]…]`.
pub(crate) fn pending_ids(value: Value) -> Vec<String> {
    let Value::Array(rows) = value else { return Vec::new() };
    rows.into_iter()
        .filter_map(|row| match row {
            Value::Array(fields) => fields.into_iter().next().and_then(text),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(b: &[u8]) -> Value {
        Value::BulkString(b.to_vec())
    }

    #[test]
    fn entries_are_read_from_resp2_and_resp3() {
        let resp2 = Value::Array(vec![Value::Array(vec![
            bulk(b"key"),
            Value::Array(vec![
                Value::Array(vec![bulk(b"1-0"), Value::Array(vec![bulk(b"payload"), bulk(b"\xff\x00")])]),
                Value::Array(vec![bulk(b"2-0"), Value::Nil]),
                Value::Array(vec![bulk(b"3-0"), Value::Array(vec![bulk(b"other"), bulk(b"x")])]),
            ]),
        ])]);
        let expected = vec![
            Entry { id: "1-0".into(), body: Body::Payload(b"\xff\x00".to_vec()) },
            Entry { id: "2-0".into(), body: Body::Deleted },
            Entry { id: "3-0".into(), body: Body::Fields(vec![(b"other".to_vec(), b"x".to_vec())]) },
        ];
        assert_eq!(read(resp2), expected);
        let resp3 = Value::Map(vec![(
            bulk(b"key"),
            Value::Array(vec![Value::Array(vec![
                bulk(b"1-0"),
                Value::Map(vec![(bulk(b"id"), bulk(b"7")), (bulk(b"payload"), bulk(b"p"))]),
            ])]),
        )]);
        assert_eq!(read(resp3), vec![Entry { id: "1-0".into(), body: Body::Payload(b"p".to_vec()) }]);
        assert_eq!(read(Value::Nil), vec![]);
    }

    #[test]
    fn pending_rows_and_autoclaim_replies_are_read() {
        let row =
            Value::Array(vec![Value::Array(vec![bulk(b"1-0"), bulk(b"c"), Value::Int(5), Value::Int(3)])]);
        assert_eq!(pending(row), Some(Pending { consumer: "c".into(), deliveries: 3 }));
        assert_eq!(pending(Value::Array(vec![])), None);
        let reply = autoclaim(Value::Array(vec![
            bulk(b"0-0"),
            Value::Array(vec![Value::Array(vec![
                bulk(b"1-0"),
                Value::Array(vec![bulk(b"payload"), bulk(b"")]),
            ])]),
            Value::Array(vec![bulk(b"2-0")]),
        ]))
        .expect("valid");
        assert_eq!(
            (reply.cursor.as_str(), reply.claimed.len(), reply.deleted),
            ("0-0", 1, vec!["2-0".to_owned()])
        );
    }
}
