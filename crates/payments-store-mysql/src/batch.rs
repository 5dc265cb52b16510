//! Group commit for the database: saves that wait at the same time go out as one statement.
//!
//! The batcher takes a free slot (at most `in_flight` batches run at once, each on its own
//! connection), then everything queued so far, up to `max_batch`. While every slot is busy, saves
//! queue up, so the busier the store, the larger the batches: one save alone goes out at once, as
//! a single-row insert.
//!
//! # Which rows did a batch insert?
//!
//! A multi-row `INSERT … ON DUPLICATE KEY UPDATE` reports one number, the rows it inserted, not
//! which. When that number is all of the batch's IDs, every one is new; otherwise the batch reads
//! its rows back, and a row is this batch's if and only if its `inserted_by` column holds this
//! batch's token, 16 random bytes drawn for it alone. Why that is exact, with any number of
//! batches in any number of processes:
//!
//! - The insert is one statement: for each row, InnoDB either inserts this batch's version, token
//!   included, or finds the key present and runs the update, which assigns the key to itself and
//!   changes nothing. A key held by a transaction that has not committed yet makes the statement
//!   wait for it, so "present" means committed (or inserted by this very statement).
//! - No statement of this store ever changes a row once inserted, so `inserted_by` names the
//!   inserting batch for good, and no other batch can hold the same token (two batches draw the
//!   same 128 random bits with a chance of about 2^-64 after four billion batches).
//! - The read-back runs after the insert committed (autocommit), on the same connection, so it
//!   sees every row the insert inserted or found.
//!
//! Comparing stored versions with `decide` instead would not do: an identical payment saved by
//! another instance at the same moment looks exactly like one this batch inserted, and exactly
//! one of the two must report `New`. As a check on the whole argument, the rows found with the
//! token must number exactly the affected rows; if not, the batch fails rather than guess.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use mysql_async::prelude::Queryable;
use mysql_async::{Row, Value};
use payments_ports::domain::{Payment, PaymentId, SaveOutcome, decide};
use payments_ports::{RepositoryError, error_chain};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::errors::shared;
use crate::{Inner, NoConnection, rows, sql};

/// One save waiting for its batch.
pub(crate) struct Request {
    pub(crate) payment: Payment,
    pub(crate) reply: oneshot::Sender<Result<SaveOutcome, RepositoryError>>,
}

/// Runs until every sender is gone or `stop` is cancelled, then finishes the saves already queued
/// and the batches in flight, and closes the pool.
pub(crate) async fn run(
    inner: Arc<Inner>,
    mut requests: mpsc::Receiver<Request>,
    stop: CancellationToken,
    max_batch: usize,
    in_flight: usize,
) {
    let slots = Arc::new(Semaphore::new(in_flight));
    let mut closing = false;
    loop {
        // A slot first: while all are busy, saves keep queueing and the next batch grows.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else { break };
        let first = if closing {
            requests.recv().await
        } else {
            tokio::select! {
                request = requests.recv() => request,
                () = stop.cancelled() => {
                    // No new saves from now on; the ones already queued still go out.
                    closing = true;
                    requests.close();
                    requests.recv().await
                }
            }
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let inner = Arc::clone(&inner);
        tokio::spawn(async move {
            let replies = execute(&inner, &batch).await;
            for (request, reply) in batch.into_iter().zip(replies) {
                // A save whose caller went away (a cancelled future) has nobody to tell.
                let _ = request.reply.send(reply);
            }
            drop(slot);
        });
    }
    // Every batch in flight holds a slot: taking them all waits for the last one.
    let _all = slots.acquire_many(u32::try_from(in_flight).unwrap_or(u32::MAX)).await;
    // Closing the pool waits for every connection to come back, then says goodbye to the server.
    if let Err(err) = inner.pool.clone().disconnect().await {
        tracing::warn!(database = %inner.database, error = %err, "closing the MySQL pool failed");
    }
}

/// Inserts the batch with one statement and works out each save's outcome.
async fn execute(inner: &Inner, batch: &[Request]) -> Vec<Result<SaveOutcome, RepositoryError>> {
    // A statement that hangs (a silent network, a lock held elsewhere) must not hold its saves
    // forever: past the timeout they are unavailable, and the consumer retries them, which is
    // safe because the insert is idempotent.
    let timeout = inner.call_timeout;
    let inserted = tokio::time::timeout(timeout, insert(inner, batch))
        .await
        .unwrap_or_else(|_| Err(Failure::Unavailable(format!("MySQL save took longer than {timeout:?}"))));
    match inserted {
        Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
        Err(Failure::Unavailable(message)) => {
            batch.iter().map(|_| Err(RepositoryError::unavailable(message.clone()))).collect()
        }
        Err(Failure::Query(action, err)) => {
            batch.iter().map(|_| Err(shared(action, Arc::clone(&err)))).collect()
        }
        Err(Failure::Store(message)) => {
            batch.iter().map(|_| Err(RepositoryError::failed(message.clone()))).collect()
        }
    }
}

/// Why a whole batch failed; turned into one error per save.
enum Failure {
    /// Worth retrying, with no driver error to keep (a timeout).
    Unavailable(String),
    /// The driver's error, shared by every save of the batch.
    Query(&'static str, Arc<mysql_async::Error>),
    /// The store is not what this build expects.
    Store(String),
}

impl From<(&'static str, mysql_async::Error)> for Failure {
    fn from((action, err): (&'static str, mysql_async::Error)) -> Self {
        Self::Query(action, Arc::new(err))
    }
}

impl From<NoConnection> for Failure {
    fn from(err: NoConnection) -> Self {
        match err {
            NoConnection::TimedOut(message) => Self::Unavailable(message),
            NoConnection::Driver(err) => Self::Query("save", Arc::new(err)),
        }
    }
}

impl From<RepositoryError> for Failure {
    fn from(err: RepositoryError) -> Self {
        Self::Store(error_chain(&err))
    }
}

async fn insert(inner: &Inner, batch: &[Request]) -> Result<Vec<SaveOutcome>, Failure> {
    // One row per distinct ID, the first save's version: first writer wins inside a batch too.
    let mut first_of: HashMap<PaymentId, usize> = HashMap::with_capacity(batch.len());
    for (position, request) in batch.iter().enumerate() {
        first_of.entry(request.payment.id).or_insert(position);
    }
    let mut rows: Vec<&Payment> = batch
        .iter()
        .enumerate()
        .filter(|(position, request)| first_of[&request.payment.id] == *position)
        .map(|(_, request)| &request.payment)
        .collect();
    // Every batch inserts in ID order: two batches that share IDs (redeliveries, several
    // instances) then lock them in one direction only, and do not deadlock each other.
    rows.sort_by_key(|p| p.id);

    let token: [u8; 16] = rand::random();
    let size = sql::padded(rows.len(), inner.max_batch);
    let mut params = Vec::with_capacity(size * 4);
    for payment in padded(&rows, size) {
        params.extend([
            Value::Bytes(payment.id.as_bytes().to_vec()),
            Value::UInt(payment.amount.minor_units()),
            Value::Bytes(payment.currency.as_str().as_bytes().to_vec()),
            Value::Bytes(token.to_vec()),
        ]);
    }
    let mut conn = inner.conn().await?;
    conn.exec_drop(sql::insert(size), params).await.map_err(|err| ("save", err))?;
    let affected = conn.affected_rows();

    let mut inserted: HashSet<PaymentId> = HashSet::with_capacity(rows.len());
    let mut stored: HashMap<PaymentId, Payment> = HashMap::new();
    if usize::try_from(affected) == Ok(rows.len()) {
        // Each row counted 1, so each was inserted by this statement.
        inserted.extend(rows.iter().map(|p| p.id));
    } else {
        let ids: Vec<Value> = padded(&rows, size).map(|p| Value::Bytes(p.id.as_bytes().to_vec())).collect();
        let read: Vec<Row> =
            conn.exec(sql::select_inserted(ids.len()), ids).await.map_err(|err| ("read back", err))?;
        for mut row in read {
            let payment = rows::payment(&mut row)?;
            let inserted_by: Vec<u8> = rows::column(&mut row, 3, "inserted_by")?;
            if inserted_by == token {
                inserted.insert(payment.id);
            } else {
                stored.insert(payment.id, payment);
            }
        }
        if u64::try_from(inserted.len()) != Ok(affected) {
            return Err(Failure::Store(format!(
                "a batch of {} payments was told {affected} rows were inserted, but {} carry its token; \
                 is something else writing to the payments table of database {}?",
                rows.len(),
                inserted.len(),
                inner.database
            )));
        }
    }

    batch
        .iter()
        .enumerate()
        .map(|(position, request)| {
            let payment = &request.payment;
            let first = first_of[&payment.id];
            if inserted.contains(&payment.id) {
                // This batch inserted the ID: new for its first save, decided against it for the others.
                Ok(if first == position {
                    SaveOutcome::New
                } else {
                    decide(Some(&batch[first].payment), payment)
                })
            } else {
                match stored.get(&payment.id) {
                    Some(existing) => Ok(decide(Some(existing), payment)),
                    // Neither inserted nor present: something deleted it in between. Never guess.
                    None => Err(Failure::Store(format!(
                        "payment {} was neither inserted nor found; was it deleted from database {}?",
                        payment.id, inner.database
                    ))),
                }
            }
        })
        .collect()
}

/// `rows`, then its last row again until there are `size`: see [`sql::padded`].
fn padded<'a>(rows: &'a [&'a Payment], size: usize) -> impl Iterator<Item = &'a Payment> + 'a {
    let last = rows.last().copied();
    rows.iter().copied().chain(std::iter::repeat_n(last, size - rows.len()).flatten())
}
