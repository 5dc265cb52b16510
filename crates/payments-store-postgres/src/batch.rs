//! Group commit for the database: saves that wait at the same time go out as one statement.
//!
//! The batcher takes a free slot (at most `in_flight` batches run at once, each on its own
//! connection), then everything queued so far, up to `max_batch`. While every slot is busy, saves
//! queue up, so the busier the store, the larger the batches: one save alone goes out at once, as
//! a single-row insert.

use std::collections::HashMap;
use std::sync::Arc;

use payments_ports::domain::{Payment, PaymentId, SaveOutcome, decide};
use payments_ports::{RepositoryError, error_chain};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::errors::{pool, shared};
use crate::{Inner, amount_param, row_to_payment};

/// One save waiting for its batch.
pub(crate) struct Request {
    pub(crate) payment: Payment,
    pub(crate) reply: oneshot::Sender<Result<SaveOutcome, RepositoryError>>,
}

/// Runs until every sender is gone, or until `closing`: then it stops taking saves, sends what is
/// queued, and returns once every batch in flight is done.
pub(crate) async fn run(
    inner: Arc<Inner>,
    mut requests: mpsc::Receiver<Request>,
    max_batch: usize,
    in_flight: usize,
    closing: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(in_flight));
    loop {
        // A slot first: while all are busy, saves keep queueing and the next batch grows.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else { return };
        let next = tokio::select! {
            biased;
            request = requests.recv() => request,
            // No more saves are taken; those queued are still received, then `recv` ends.
            () = closing.cancelled(), if !requests.is_closed() => {
                requests.close();
                continue;
            }
        };
        let Some(first) = next else { break };
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
    // Every slot back: the batches in flight are done.
    let _ = slots.acquire_many(u32::try_from(in_flight).unwrap_or(u32::MAX)).await;
}

/// Inserts the batch with one statement and works out each save's outcome.
async fn execute(inner: &Inner, batch: &[Request]) -> Vec<Result<SaveOutcome, RepositoryError>> {
    // A statement that hangs (a silent network, a lock held elsewhere) must not hold its saves
    // forever: past the timeout they are unavailable, and the consumer retries them, which is
    // safe because the insert is idempotent.
    let inserted = tokio::time::timeout(inner.timeout, insert(inner, batch)).await.unwrap_or_else(|_| {
        Err(Failure::Pool(format!("PostgreSQL save took longer than {:?}", inner.timeout), true))
    });
    match inserted {
        Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
        Err(Failure::Pool(message, transient)) => batch
            .iter()
            .map(|_| {
                Err(if transient {
                    RepositoryError::unavailable(message.clone())
                } else {
                    RepositoryError::failed(message.clone())
                })
            })
            .collect(),
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
    Pool(String, bool),
    Query(&'static str, Arc<tokio_postgres::Error>),
    Store(String),
}

impl From<(&'static str, tokio_postgres::Error)> for Failure {
    fn from((action, err): (&'static str, tokio_postgres::Error)) -> Self {
        Self::Query(action, Arc::new(err))
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
    // instances) then wait for each other in one direction only, and never deadlock.
    rows.sort_by_key(|p| p.id);

    let client = inner.pool.get().await.map_err(|err| {
        let err = pool("save", err);
        Failure::Pool(error_chain(&err), err.is_unavailable())
    })?;
    let inserted_rows = if let [payment] = rows.as_slice() {
        let statement = client.prepare_cached(&inner.sql.insert_one).await.map_err(|err| ("save", err))?;
        client
            .query(&statement, &[&payment.id.as_str(), &amount_param(payment), &payment.currency.as_str()])
            .await
            .map_err(|err| ("save", err))?
    } else {
        let ids: Vec<&str> = rows.iter().map(|p| p.id.as_str()).collect();
        let amounts: Vec<i64> = rows.iter().map(|p| amount_param(p)).collect();
        let currencies: Vec<&str> = rows.iter().map(|p| p.currency.as_str()).collect();
        let statement = client.prepare_cached(&inner.sql.insert_many).await.map_err(|err| ("save", err))?;
        client.query(&statement, &[&ids, &amounts, &currencies]).await.map_err(|err| ("save", err))?
    };
    let mut inserted = std::collections::HashSet::with_capacity(inserted_rows.len());
    for row in &inserted_rows {
        let id: &str = row.try_get(0).map_err(|err| ("save", err))?;
        inserted.insert(id.to_owned());
    }

    // What was already there, for the IDs this batch did not insert.
    let present: Vec<&str> =
        rows.iter().map(|p| p.id.as_str()).filter(|id| !inserted.contains(*id)).collect();
    let mut stored: HashMap<PaymentId, Payment> = HashMap::new();
    if !present.is_empty() {
        let statement =
            client.prepare_cached(&inner.sql.select_many).await.map_err(|err| ("read back", err))?;
        for row in client.query(&statement, &[&present]).await.map_err(|err| ("read back", err))? {
            let payment = row_to_payment(&row).map_err(|err| Failure::Store(error_chain(&err)))?;
            stored.insert(payment.id, payment);
        }
    }

    batch
        .iter()
        .enumerate()
        .map(|(position, request)| {
            let payment = &request.payment;
            let first = first_of[&payment.id];
            if inserted.contains(payment.id.as_str()) {
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
                        "payment {} was neither inserted nor found; was it deleted from schema {}?",
                        payment.id, inner.schema
                    ))),
                }
            }
        })
        .collect()
}
