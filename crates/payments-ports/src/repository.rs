//! The driven port where payments are recorded: [`PaymentsRepository`], its contract and its error.

use async_trait::async_trait;
use payments_domain::{Payment, PaymentId, SaveOutcome};

use crate::Outbox;

/// A backend's own error, kept as the source of a [`RepositoryError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Where payments are recorded, exactly once per payment ID.
///
/// Deduplication lives here, beside the effect, because "record it unless it is already there"
/// must be one atomic step: a check in the caller followed by an insert is a race.
///
/// # Contract
///
/// Every adapter MUST keep each of these sentences. `payments-conformance` checks sentences 1 to
/// 4, 6 to 8 and 10 with cases named after them, which every adapter runs; sentences 5 and 9 need a
/// failure provoked inside the backend (a failed fsync, a killed process or connection), so each
/// adapter checks them with fault tests of its own.
///
/// **Saving** ([`save`](Self::save)):
///
/// 1. Saving a payment whose ID is absent MUST record it and report [`SaveOutcome::New`].
/// 2. Saving a payment identical to the recorded one (same ID, amount and currency) MUST change
///    nothing and report [`SaveOutcome::Duplicate`], not an error.
/// 3. Saving a payment whose ID is recorded with another amount or currency MUST change nothing and
///    report [`SaveOutcome::Conflict`] carrying the recorded payment as `stored`; it MUST NOT
///    overwrite, then or later.
/// 4. Any number of concurrent saves of the same payment MUST produce exactly one `New`; the
///    others report `Duplicate`. Concurrent saves of different payments MUST all be recorded.
/// 5. `New` MUST be reported only once the payment is as durable as the adapter promises (for a
///    durable adapter: it survives a crash of the process); `Duplicate` and `Conflict` likewise
///    only once the stored payment they were decided against is. A caller acknowledges the
///    message on the strength of any of the three.
///
/// **Reading**:
///
/// 6. [`get`](Self::get) MUST return the recorded payment for an ID, or `None` when it is absent.
/// 7. [`count`](Self::count) MUST return the number of recorded payments.
/// 8. [`list`](Self::list) MUST return up to `limit` recorded payments whose IDs are strictly
///    greater than `after` (all, when `after` is `None`), in ascending bytewise order of ID. An
///    empty page means there are no more. Paging from `None` to the end MUST yield every recorded
///    payment exactly once.
///
/// **Failing**:
///
/// 9. A backend failure MUST be an error, never a wrong outcome: [`RepositoryError::Unavailable`]
///    when the same call may succeed later (connection refused or lost, overload, timeout), and
///    [`RepositoryError::Failed`] when it will not (a corrupt or poisoned store, a broken schema).
///    After an error, the payment MUST be either recorded once or not at all.
///
/// **Watching**:
///
/// 10. [`ping`](Self::ping) MUST succeed on a store that answers, change nothing, and fail like
///     any other call (sentence 9) on one that does not.
///
/// Durable adapters (declared by their conformance harness) also keep everything across closing and
/// reopening; shared adapters let several instances, in several processes, use one store with all
/// of the above holding across them.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait PaymentsRepository: Send + Sync {
    /// Records `payment` unless its ID is already recorded, and says which of the three happened.
    ///
    /// # Errors
    ///
    /// [`RepositoryError::Unavailable`] or [`RepositoryError::Failed`] when the backend fails;
    /// a duplicate or a conflict is an `Ok` outcome, never an error.
    async fn save(&self, payment: &Payment) -> Result<SaveOutcome, RepositoryError>;

    /// The payment recorded under `id`, if any.
    ///
    /// # Errors
    ///
    /// When the backend fails.
    async fn get(&self, id: &PaymentId) -> Result<Option<Payment>, RepositoryError>;

    /// How many payments are recorded.
    ///
    /// # Errors
    ///
    /// When the backend fails.
    async fn count(&self) -> Result<u64, RepositoryError>;

    /// Up to `limit` recorded payments with IDs strictly greater than `after`, in ascending bytewise
    /// order of ID: one page of an export. See [`export_all`] for the loop.
    ///
    /// # Errors
    ///
    /// When the backend fails.
    async fn list(&self, after: Option<PaymentId>, limit: usize) -> Result<Vec<Payment>, RepositoryError>;

    /// Whether the store answers now, as cheaply as it can (sentence 10): for readiness checks
    /// while no save comes. The default asks for the count, which a store whose count is costly
    /// overrides.
    ///
    /// # Errors
    ///
    /// When the backend does not answer, as for any call.
    async fn ping(&self) -> Result<(), RepositoryError> {
        self.count().await.map(drop)
    }

    /// A relay's handle on the store's outbox (see [`Outbox`] and its contract), turning the
    /// outbox on first if it is off: from then on, for good and for every process that uses the
    /// store, each payment saved as new has its `PaymentRecorded` event recorded with it.
    /// `Ok(None)`: this store keeps no outbox. The default keeps none.
    ///
    /// # Errors
    ///
    /// When the backend fails, or when the store allows one relay at a time and one holds it.
    async fn outbox(&self) -> Result<Option<Box<dyn Outbox>>, RepositoryError> {
        Ok(None)
    }

    /// Finishes what the store has accepted and releases what it holds (a writer thread, a pool,
    /// a background batcher), without blocking the async runtime. Called once, when the caller is
    /// done with the store; a call after it fails with [`RepositoryError::Failed`]. `Drop` is the
    /// fallback, not the plan. The default does nothing.
    ///
    /// # Errors
    ///
    /// When something accepted could not be finished.
    async fn close(&self) -> Result<(), RepositoryError> {
        Ok(())
    }
}

/// Why a repository call failed. A duplicate or a conflict is never one of these.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepositoryError {
    /// The backend cannot be reached or cannot answer now; the same call may succeed later.
    /// The consumer retries with backoff and never dead-letters a message because of it.
    #[error("payments store unavailable: {message}")]
    Unavailable {
        /// What failed, in words an operator can act on.
        message: String,
        /// The backend's own error, if there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// The backend failed in a way that retrying will not fix: a corrupt or poisoned store, a broken
    /// schema, a bug. The consumer stops without acknowledging.
    #[error("payments store failed: {message}")]
    Failed {
        /// What failed, in words an operator can act on.
        message: String,
        /// The backend's own error, if there is one.
        #[source]
        source: Option<BoxError>,
    },
}

impl RepositoryError {
    /// An [`Unavailable`](Self::Unavailable) error without a source.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable { message: message.into(), source: None }
    }

    /// An [`Unavailable`](Self::Unavailable) error caused by `source`.
    pub fn unavailable_because(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Unavailable { message: message.into(), source: Some(source.into()) }
    }

    /// A [`Failed`](Self::Failed) error without a source.
    pub fn failed(message: impl Into<String>) -> Self {
        Self::Failed { message: message.into(), source: None }
    }

    /// A [`Failed`](Self::Failed) error caused by `source`.
    pub fn failed_because(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Failed { message: message.into(), source: Some(source.into()) }
    }

    /// Whether the same call may succeed later, so that retrying is worth it.
    pub const fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

/// Pages through `repository` from the first ID to the last, handing each payment to `each`:
/// the export loop that [`PaymentsRepository::list`] is for.
///
/// Every page is checked against sentence 8 of the contract (at most `limit` payments, IDs
/// ascending, all strictly after the cursor), so that a store whose paging does not advance fails
/// with the sentence it broke instead of looping for ever.
///
/// Returns how many payments were exported.
///
/// # Errors
///
/// The first error of the repository (a page that breaks sentence 8 is
/// [`RepositoryError::Failed`]), or of `each`.
pub async fn export_all<E>(
    repository: &dyn PaymentsRepository,
    page_size: usize,
    mut each: impl FnMut(Payment) -> Result<(), E>,
) -> Result<u64, E>
where
    E: From<RepositoryError>,
{
    let limit = page_size.max(1);
    let mut after = None;
    let mut exported = 0;
    loop {
        let page = repository.list(after, limit).await?;
        check_page(after.as_ref(), limit, &page)?;
        let Some(last) = page.last() else { return Ok(exported) };
        after = Some(last.id);
        for payment in page {
            exported += 1;
            each(payment)?;
        }
    }
}

/// Whether `page`, the answer to `list(after, limit)`, keeps sentence 8.
///
/// # Errors
///
/// [`RepositoryError::Failed`] naming the sentence and what the page held.
pub fn check_page(after: Option<&PaymentId>, limit: usize, page: &[Payment]) -> Result<(), RepositoryError> {
    let broke = |what: String| {
        RepositoryError::failed(format!(
            "the store broke sentence 8 of the PaymentsRepository contract: {what}"
        ))
    };
    let cursor = after.map_or_else(|| "the start".to_owned(), |id| format!("`{id}`"));
    if page.len() > limit {
        return Err(broke(format!(
            "a page after {cursor} holds {} payments, over the limit of {limit}",
            page.len()
        )));
    }
    let mut previous = after;
    for payment in page {
        if previous.is_some_and(|previous| payment.id <= *previous) {
            return Err(broke(format!(
                "the page after {cursor} lists `{}` after `{}`: IDs must ascend strictly from after the cursor",
                payment.id,
                previous.map_or_else(String::new, ToString::to_string)
            )));
        }
        previous = Some(&payment.id);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payment(id: &str) -> Payment {
        Payment::parse(id, 1, "EUR").expect("valid")
    }

    #[test]
    fn the_trait_is_object_safe_and_shareable() {
        fn assert_shareable<T: Send + Sync + ?Sized>() {}
        assert_shareable::<dyn PaymentsRepository>();
    }

    #[test]
    fn errors_say_whether_a_retry_may_help_and_keep_their_source() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = RepositoryError::unavailable_because("cannot connect to 127.0.0.1:5432", io);
        assert!(err.is_unavailable());
        assert_eq!(err.to_string(), "payments store unavailable: cannot connect to 127.0.0.1:5432");
        assert_eq!(std::error::Error::source(&err).map(ToString::to_string), Some("refused".to_owned()));
        assert!(!RepositoryError::failed("journal poisoned").is_unavailable());
    }

    #[tokio::test]
    async fn export_all_follows_pages_until_an_empty_one() {
        let mut repository = MockPaymentsRepository::new();
        let mut pages = mockall::Sequence::new();
        repository
            .expect_list()
            .withf(|after, limit| after.is_none() && *limit == 2)
            .times(1)
            .in_sequence(&mut pages)
            .returning(|_, _| Ok(vec![payment("a"), payment("b")]));
        repository
            .expect_list()
            .withf(|after, _| after.map(|id| id.to_string()) == Some("b".to_owned()))
            .times(1)
            .in_sequence(&mut pages)
            .returning(|_, _| Ok(vec![payment("c")]));
        repository
            .expect_list()
            .withf(|after, _| after.map(|id| id.to_string()) == Some("c".to_owned()))
            .times(1)
            .in_sequence(&mut pages)
            .returning(|_, _| Ok(vec![]));

        let mut seen = Vec::new();
        let exported = export_all(&repository, 2, |p| {
            seen.push(p.id.to_string());
            Ok::<_, RepositoryError>(())
        })
        .await
        .expect("export succeeds");
        assert_eq!(exported, 3);
        assert_eq!(seen, ["a", "b", "c"]);
    }

    #[tokio::test]
    async fn export_all_refuses_a_page_that_does_not_advance_instead_of_looping() {
        let mut repository = MockPaymentsRepository::new();
        // `list` includes its cursor: a store with `>=` where `>` belongs.
        repository.expect_list().returning(|after, _| {
            Ok(match after {
                None => vec![payment("a"), payment("b")],
                Some(after) => {
                    vec![Payment::new(after, payment("x").amount, payment("x").currency), payment("c")]
                }
            })
        });
        let result = export_all(&repository, 2, |_| Ok::<_, RepositoryError>(())).await;
        let err = result.expect_err("a page that repeats the cursor breaks sentence 8");
        assert!(!err.is_unavailable());
        assert_eq!(
            err.to_string(),
            "payments store failed: the store broke sentence 8 of the PaymentsRepository contract: the page after `b` \
             lists `b` after `b`: IDs must ascend strictly from after the cursor"
        );
    }

    #[tokio::test]
    async fn export_all_stops_at_the_first_error() {
        let mut repository = MockPaymentsRepository::new();
        repository.expect_list().times(1).returning(|_, _| Err(RepositoryError::unavailable("down")));
        let result = export_all(&repository, 10, |_| Ok::<_, RepositoryError>(())).await;
        assert!(matches!(result, Err(RepositoryError::Unavailable { .. })), "{result:?}");
    }
}
