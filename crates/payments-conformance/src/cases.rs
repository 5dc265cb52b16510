//! The cases, each named after the sentence of the [`PaymentsRepository`] contract it checks (and,
//! for stores with an outbox, of the `Outbox` contract: see `outbox_cases`).
//!
//! A case panics (through `assert!`) when the adapter breaks its sentence; the message quotes what
//! the contract says and what the adapter did.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::future::join_all;
use payments_ports::domain::{Amount, Payment, PaymentId, SaveOutcome};
use payments_ports::{PaymentsRepository, check_page, error_chain};
use tokio::sync::Barrier;

use crate::kill::{
    every_payment_reported_new_survives_a_sigkill,
    no_sigkill_leaves_a_payment_without_its_event_or_an_event_without_its_payment,
};
use crate::model::random_operation_sequences_match_a_btreemap_model;
use crate::outbox_cases::{
    a_duplicate_or_a_conflict_adds_nothing_to_the_outbox, a_new_claim_gives_back_the_previous_unmarked_one,
    a_new_payment_and_its_event_are_recorded_in_the_same_atomic_step,
    a_relay_dropped_mid_claim_leaves_its_events_to_the_other_relay, claims_hand_out_events_oldest_first,
    every_new_payment_appears_in_the_outbox_exactly_once, marking_with_no_claim_held_marks_nothing,
    nothing_committed_is_skipped_under_concurrent_saves,
    relays_on_two_instances_never_hold_the_same_event_at_once,
    relays_on_two_instances_publish_every_event_exactly_once_between_them,
    the_backlog_counts_pending_events_and_gives_the_oldest_time,
    what_is_marked_published_is_not_handed_out_by_a_second_handle,
    what_is_marked_published_stays_published_after_a_reopen,
    what_is_not_yet_marked_is_handed_out_again_after_a_reopen,
    what_is_not_yet_marked_is_handed_out_again_once_its_holder_is_closed_or_dropped,
};
use crate::{Capability, Fixture};

type CaseFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// One case of the suite.
#[derive(Clone, Copy)]
pub struct Case {
    /// The contract sentence it checks, in snake case; the test's name.
    pub name: &'static str,
    /// The capability it needs, if any.
    pub needs: Option<Capability>,
    pub(crate) run: for<'a> fn(&'a Fixture) -> CaseFuture<'a>,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Case").field("name", &self.name).field("needs", &self.needs).finish()
    }
}

macro_rules! cases {
    ($($name:ident $(needs $capability:ident)?),* $(,)?) => {
        /// Every case of the suite, in the order they are reported.
        pub fn all_cases() -> Vec<Case> {
            vec![$(Case {
                name: stringify!($name),
                needs: cases!(@needs $($capability)?),
                run: |fixture| Box::pin($name(fixture)),
            }),*]
        }
    };
    (@needs) => { None };
    (@needs $capability:ident) => { Some(Capability::$capability) };
}

cases! {
    saving_an_absent_payment_records_it_and_reports_new,
    saving_an_identical_payment_again_reports_duplicate_not_an_error,
    a_duplicate_changes_nothing,
    a_different_amount_under_a_recorded_id_is_a_conflict_carrying_the_stored_payment,
    a_different_currency_under_a_recorded_id_is_a_conflict_carrying_the_stored_payment,
    a_conflict_never_overwrites_the_stored_payment,
    an_identical_save_after_a_conflict_is_still_a_duplicate,
    concurrent_saves_of_the_same_payment_produce_exactly_one_new,
    concurrent_saves_of_overlapping_payments_record_each_exactly_once,
    concurrent_conflicting_saves_keep_exactly_one_version,
    get_returns_the_recorded_payment,
    get_of_an_absent_id_returns_none,
    an_empty_store_counts_zero_and_lists_nothing,
    ping_succeeds_on_a_store_that_answers_and_changes_nothing,
    every_recorded_payment_round_trips_through_the_export,
    list_pages_ascend_by_id_and_start_strictly_after_the_cursor,
    ids_at_the_length_limits_are_kept_exactly,
    ids_using_every_allowed_character_are_kept_exactly,
    ids_that_differ_only_in_case_are_different_payments,
    ids_that_share_a_prefix_are_different_payments,
    amounts_at_the_limits_are_kept_exactly,
    random_operation_sequences_match_a_btreemap_model,
    a_hundred_thousand_payments_from_many_tasks_are_counted_listed_and_found,
    a_reopened_store_keeps_every_payment needs Durable,
    saving_again_after_reopening_reports_duplicate needs Durable,
    a_conflicting_save_after_reopening_reports_conflict needs Durable,
    payments_saved_after_reopening_survive_the_next_reopening needs Durable,
    every_payment_reported_new_survives_a_sigkill needs Killable,
    instances_sharing_a_store_record_each_payment_exactly_once needs Shared,
    a_payment_saved_through_one_instance_is_a_duplicate_through_another needs Shared,
    a_conflict_is_detected_across_instances needs Shared,
    every_new_payment_appears_in_the_outbox_exactly_once needs Outbox,
    a_duplicate_or_a_conflict_adds_nothing_to_the_outbox needs Outbox,
    a_new_payment_and_its_event_are_recorded_in_the_same_atomic_step needs Outbox,
    claims_hand_out_events_oldest_first needs Outbox,
    a_new_claim_gives_back_the_previous_unmarked_one needs Outbox,
    marking_with_no_claim_held_marks_nothing needs Outbox,
    nothing_committed_is_skipped_under_concurrent_saves needs Outbox,
    what_is_marked_published_is_not_handed_out_by_a_second_handle needs Outbox,
    what_is_not_yet_marked_is_handed_out_again_once_its_holder_is_closed_or_dropped needs Outbox,
    the_backlog_counts_pending_events_and_gives_the_oldest_time needs Outbox,
    what_is_marked_published_stays_published_after_a_reopen needs DurableOutbox,
    what_is_not_yet_marked_is_handed_out_again_after_a_reopen needs DurableOutbox,
    relays_on_two_instances_never_hold_the_same_event_at_once needs SharedOutbox,
    relays_on_two_instances_publish_every_event_exactly_once_between_them needs SharedOutbox,
    a_relay_dropped_mid_claim_leaves_its_events_to_the_other_relay needs SharedOutbox,
    no_sigkill_leaves_a_payment_without_its_event_or_an_event_without_its_payment needs KillableOutbox,
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// A valid payment with the given parts.
pub(crate) fn payment(id: &str, amount: u64, currency: &str) -> Payment {
    Payment::parse(id, amount, currency)
        .unwrap_or_else(|err| panic!("the suite built an invalid payment: {err}"))
}

/// The `i`th payment of a numbered set, with an amount derived from `i`.
pub(crate) fn numbered(i: usize) -> Payment {
    payment(&format!("pay-{i:06}"), 100 + i as u64, if i.is_multiple_of(2) { "EUR" } else { "USD" })
}

pub(crate) async fn save(store: &dyn PaymentsRepository, payment: &Payment) -> SaveOutcome {
    store.save(payment).await.unwrap_or_else(|err| panic!("saving {payment} failed: {}", error_chain(&err)))
}

async fn get(store: &dyn PaymentsRepository, id: &PaymentId) -> Option<Payment> {
    store.get(id).await.unwrap_or_else(|err| panic!("get {id} failed: {}", error_chain(&err)))
}

pub(crate) async fn count(store: &dyn PaymentsRepository) -> u64 {
    store.count().await.unwrap_or_else(|err| panic!("count failed: {}", error_chain(&err)))
}

/// Every recorded payment, through the export loop.
pub(crate) async fn export(store: &dyn PaymentsRepository) -> Vec<Payment> {
    export_paged(store, 1000).await
}

/// Every recorded payment, through `list` pages of `page_size`. Each page is checked against
/// sentence 8, and the loop is bounded (at most count / page_size + 2 pages, which is count + 2
/// for pages of one), so that a store whose paging runs away fails with the sentence it broke,
/// well inside the case timeout, instead of eating memory until the process is killed.
async fn export_paged(store: &dyn PaymentsRepository, page_size: usize) -> Vec<Payment> {
    let count = count(store).await;
    let most_pages = count / page_size as u64 + 2;
    let mut all = Vec::new();
    let mut after = None;
    for _ in 0..most_pages {
        let page = store
            .list(after, page_size)
            .await
            .unwrap_or_else(|err| panic!("list failed: {}", error_chain(&err)));
        if let Err(err) = check_page(after.as_ref(), page_size, &page) {
            panic!("{}", error_chain(&err));
        }
        let Some(last) = page.last() else { return all };
        after = Some(last.id);
        all.extend(page);
    }
    panic!(
        "the store broke sentence 8 of the PaymentsRepository contract: paging from the start in pages of \
         {page_size} did not end after {most_pages} pages, though the store counts {count} payments"
    )
}

fn assert_conflict(outcome: SaveOutcome, stored: &Payment, incoming: &Payment, sentence: &str) {
    match outcome {
        SaveOutcome::Conflict(conflict) => {
            assert_eq!(&conflict.stored, stored, "{sentence}: the conflict must carry the stored payment");
            assert_eq!(
                &conflict.incoming, incoming,
                "{sentence}: the conflict must carry the incoming payment"
            );
        }
        other => panic!("{sentence}: saving {incoming} over {stored} must report a conflict, got {other:?}"),
    }
}

/// Saves each payment from `tasks` concurrent tasks released at once; returns every outcome.
pub(crate) async fn save_concurrently(
    store: &Arc<dyn PaymentsRepository>,
    tasks: usize,
    work: impl Fn(usize) -> Vec<Payment>,
) -> Vec<(Payment, SaveOutcome)> {
    let barrier = Arc::new(Barrier::new(tasks));
    let handles = (0..tasks).map(|task| {
        let (store, barrier, payments) = (Arc::clone(store), Arc::clone(&barrier), work(task));
        tokio::spawn(async move {
            barrier.wait().await;
            let mut outcomes = Vec::with_capacity(payments.len());
            for payment in payments {
                let outcome = save(store.as_ref(), &payment).await;
                outcomes.push((payment, outcome));
            }
            outcomes
        })
    });
    join_all(handles)
        .await
        .into_iter()
        .flat_map(|joined| joined.unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic())))
        .collect()
}

/// Saves `payments` with up to 64 saves in flight, asserting each is new.
pub(crate) async fn save_all_new(store: &dyn PaymentsRepository, payments: &[Payment]) {
    for chunk in payments.chunks(64) {
        let outcomes = join_all(chunk.iter().map(|p| save(store, p))).await;
        for (payment, outcome) in chunk.iter().zip(outcomes) {
            assert_eq!(outcome, SaveOutcome::New, "saving the absent payment {payment} must report new");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Saving

async fn saving_an_absent_payment_records_it_and_reports_new(f: &Fixture) {
    let store = f.open().await;
    let p = payment("pay-0001", 1999, "EUR");
    assert_eq!(save(store.as_ref(), &p).await, SaveOutcome::New, "saving an absent payment must report new");
    assert_eq!(get(store.as_ref(), &p.id).await, Some(p), "saving an absent payment must record it");
    assert_eq!(count(store.as_ref()).await, 1, "one saved payment must count one");
}

async fn saving_an_identical_payment_again_reports_duplicate_not_an_error(f: &Fixture) {
    let store = f.open().await;
    let p = payment("pay-0001", 1999, "EUR");
    save(store.as_ref(), &p).await;
    for attempt in 2..=5 {
        match store.save(&p).await {
            Ok(SaveOutcome::Duplicate) => {}
            Ok(other) => {
                panic!("save number {attempt} of an identical payment must report duplicate, got {other:?}")
            }
            Err(err) => panic!(
                "save number {attempt} of an identical payment must report duplicate, not an error \
                 (an error makes the broker redeliver it forever): {}",
                error_chain(&err)
            ),
        }
    }
}

async fn a_duplicate_changes_nothing(f: &Fixture) {
    let store = f.open().await;
    let p = payment("pay-0001", 1999, "EUR");
    let other = payment("pay-0002", 5, "GBP");
    save(store.as_ref(), &p).await;
    save(store.as_ref(), &other).await;
    let before = export(store.as_ref()).await;
    save(store.as_ref(), &p).await;
    assert_eq!(count(store.as_ref()).await, 2, "a duplicate must not change the count");
    assert_eq!(export(store.as_ref()).await, before, "a duplicate must not change what is recorded");
}

async fn a_different_amount_under_a_recorded_id_is_a_conflict_carrying_the_stored_payment(f: &Fixture) {
    let store = f.open().await;
    let stored = payment("pay-0001", 1999, "EUR");
    let incoming = payment("pay-0001", 2000, "EUR");
    save(store.as_ref(), &stored).await;
    let outcome = save(store.as_ref(), &incoming).await;
    assert_conflict(outcome, &stored, &incoming, "a different amount under a recorded ID");
}

async fn a_different_currency_under_a_recorded_id_is_a_conflict_carrying_the_stored_payment(f: &Fixture) {
    let store = f.open().await;
    let stored = payment("pay-0001", 1999, "EUR");
    let incoming = payment("pay-0001", 1999, "USD");
    save(store.as_ref(), &stored).await;
    let outcome = save(store.as_ref(), &incoming).await;
    assert_conflict(outcome, &stored, &incoming, "a different currency under a recorded ID");
}

async fn a_conflict_never_overwrites_the_stored_payment(f: &Fixture) {
    let store = f.open().await;
    let stored = payment("pay-0001", 1999, "EUR");
    save(store.as_ref(), &stored).await;
    for incoming in
        [payment("pay-0001", 1, "EUR"), payment("pay-0001", 1999, "JPY"), payment("pay-0001", 7, "CHF")]
    {
        let outcome = save(store.as_ref(), &incoming).await;
        assert_conflict(outcome, &stored, &incoming, "every later conflicting save");
        assert_eq!(
            get(store.as_ref(), &stored.id).await,
            Some(stored.clone()),
            "a conflict must never overwrite: get must still return the first payment after {incoming}"
        );
    }
    assert_eq!(count(store.as_ref()).await, 1, "conflicts must not add payments");
    assert_eq!(export(store.as_ref()).await, [stored], "the export must hold the first payment only");
}

async fn an_identical_save_after_a_conflict_is_still_a_duplicate(f: &Fixture) {
    let store = f.open().await;
    let stored = payment("pay-0001", 1999, "EUR");
    save(store.as_ref(), &stored).await;
    save(store.as_ref(), &payment("pay-0001", 2, "EUR")).await;
    assert_eq!(
        save(store.as_ref(), &stored).await,
        SaveOutcome::Duplicate,
        "after a conflict, saving the stored payment again must still report duplicate"
    );
}

// ---------------------------------------------------------------------------------------------
// Concurrency

async fn concurrent_saves_of_the_same_payment_produce_exactly_one_new(f: &Fixture) {
    let store = f.open().await;
    // Several rounds, each with a fresh ID, so that a race that needs luck gets many chances.
    const ROUNDS: u64 = 16;
    for round in 0..ROUNDS {
        let p = payment(&format!("pay-race-{round}"), 500, "EUR");
        let outcomes = save_concurrently(&store, 64, |_| vec![p.clone()]).await;
        let new = outcomes.iter().filter(|(_, o)| o.is_new()).count();
        let duplicates = outcomes.iter().filter(|(_, o)| *o == SaveOutcome::Duplicate).count();
        assert_eq!(
            new, 1,
            "64 concurrent saves of {p} must produce exactly one new, got {new} (round {round})"
        );
        assert_eq!(
            duplicates, 63,
            "the other 63 concurrent saves of {p} must report duplicate (round {round})"
        );
    }
    assert_eq!(count(store.as_ref()).await, ROUNDS, "each raced payment must be recorded once");
}

async fn concurrent_saves_of_overlapping_payments_record_each_exactly_once(f: &Fixture) {
    let store = f.open().await;
    const PAYMENTS: usize = 1000;
    const TASKS: usize = 64;
    // Eight groups of eight tasks. The tasks of a group save the same window of 250 payments in the
    // same order, in lockstep, so they keep arriving at the same ID at the same moment; the windows
    // of the groups overlap, and odd groups walk theirs backwards. Every payment is saved 16 times.
    let outcomes = save_concurrently(&store, TASKS, |task| {
        let group = task % 8;
        let mut window: Vec<Payment> = (0..250).map(|k| numbered((group * 125 + k) % PAYMENTS)).collect();
        if !group.is_multiple_of(2) {
            window.reverse();
        }
        window
    })
    .await;
    let mut new_per_id: BTreeMap<PaymentId, usize> = BTreeMap::new();
    for (payment, outcome) in &outcomes {
        match outcome {
            SaveOutcome::New => *new_per_id.entry(payment.id).or_default() += 1,
            SaveOutcome::Duplicate => {}
            SaveOutcome::Conflict(c) => panic!("identical concurrent saves must never conflict: {c}"),
        }
    }
    let twice: Vec<_> =
        new_per_id.iter().filter(|(_, n)| **n > 1).map(|(id, n)| format!("{id} ({n})")).collect();
    assert!(twice.is_empty(), "each payment must be reported new exactly once; reported more: {twice:?}");
    assert_eq!(new_per_id.len(), PAYMENTS, "every one of the {PAYMENTS} payments must be reported new once");
    assert_eq!(
        outcomes.len() - PAYMENTS,
        outcomes.iter().filter(|(_, o)| *o == SaveOutcome::Duplicate).count(),
        "every other save must report duplicate"
    );
    assert_eq!(count(store.as_ref()).await, PAYMENTS as u64, "the count must be exact");
    let exported = export(store.as_ref()).await;
    let expected: Vec<Payment> = (0..PAYMENTS).map(numbered).collect();
    assert_eq!(exported, expected, "the export must hold each payment exactly once, in ID order");
}

async fn concurrent_conflicting_saves_keep_exactly_one_version(f: &Fixture) {
    let store = f.open().await;
    let id = "pay-contested";
    // 64 tasks, 8 distinct versions of the same payment: exactly one version wins, once.
    let version = |task: usize| payment(id, 1000 + (task % 8) as u64, "EUR");
    let outcomes = save_concurrently(&store, 64, |task| vec![version(task)]).await;
    let winners: Vec<&Payment> = outcomes.iter().filter(|(_, o)| o.is_new()).map(|(p, _)| p).collect();
    assert_eq!(
        winners.len(),
        1,
        "concurrent saves under one ID must produce exactly one new, got {winners:?}"
    );
    let winner = winners[0].clone();
    for (incoming, outcome) in &outcomes {
        match outcome {
            SaveOutcome::New => {}
            SaveOutcome::Duplicate => {
                assert_eq!(incoming, &winner, "only the winning version may be reported duplicate")
            }
            SaveOutcome::Conflict(c) => {
                assert_eq!(c.stored, winner, "every conflict must carry the one stored version")
            }
        }
    }
    assert_eq!(get(store.as_ref(), &winner.id).await, Some(winner), "the stored version must be the winner");
    assert_eq!(count(store.as_ref()).await, 1);
}

// ---------------------------------------------------------------------------------------------
// Reading

async fn get_returns_the_recorded_payment(f: &Fixture) {
    let store = f.open().await;
    let payments = [payment("a", 1, "EUR"), payment("b", 2, "USD"), payment("c", 3, "JPY")];
    for p in &payments {
        save(store.as_ref(), p).await;
    }
    for p in &payments {
        assert_eq!(get(store.as_ref(), &p.id).await.as_ref(), Some(p), "get must return what was saved");
    }
}

async fn get_of_an_absent_id_returns_none(f: &Fixture) {
    let store = f.open().await;
    let absent = payment("pay-absent", 1, "EUR").id;
    assert_eq!(
        get(store.as_ref(), &absent).await,
        None,
        "get of an absent ID in an empty store must be none"
    );
    save(store.as_ref(), &payment("pay-present", 1, "EUR")).await;
    assert_eq!(get(store.as_ref(), &absent).await, None, "get of an absent ID must be none");
}

async fn an_empty_store_counts_zero_and_lists_nothing(f: &Fixture) {
    let store = f.open().await;
    assert_eq!(count(store.as_ref()).await, 0, "an empty store must count zero");
    let page = store.list(None, 10).await.unwrap_or_else(|err| panic!("list failed: {}", error_chain(&err)));
    assert!(page.is_empty(), "an empty store must list nothing, got {page:?}");
}

async fn ping_succeeds_on_a_store_that_answers_and_changes_nothing(f: &Fixture) {
    let store = f.open().await;
    let ping = |when: &'static str| {
        let store = Arc::clone(&store);
        async move {
            if let Err(err) = store.ping().await {
                panic!(
                    "sentence 10: ping must succeed on a store that answers ({when}), got {}",
                    error_chain(&err)
                );
            }
        }
    };
    ping("empty").await;
    let recorded = payment("pay-pinged", 5, "EUR");
    save(store.as_ref(), &recorded).await;
    ping("holding a payment").await;
    assert_eq!(count(store.as_ref()).await, 1, "sentence 10: ping must change nothing");
    assert_eq!(
        get(store.as_ref(), &recorded.id).await,
        Some(recorded),
        "sentence 10: ping must change nothing"
    );
}

async fn every_recorded_payment_round_trips_through_the_export(f: &Fixture) {
    let store = f.open().await;
    const PAYMENTS: usize = 10_000;
    // Saved in a shuffled order (a fixed permutation), so that insertion order is not ID order.
    let mut payments: Vec<Payment> = (0..PAYMENTS).map(|i| numbered((i * 7919) % PAYMENTS)).collect();
    save_all_new(store.as_ref(), &payments).await;
    payments.sort_by_key(|p| p.id);
    assert_eq!(count(store.as_ref()).await, PAYMENTS as u64, "the count must be exact");
    let exported = export(store.as_ref()).await;
    assert_eq!(exported.len(), PAYMENTS, "the export must hold every recorded payment");
    let mismatch = exported.iter().zip(&payments).position(|(got, want)| got != want);
    assert_eq!(mismatch, None, "the export must return every payment as saved, in ascending ID order");
}

async fn list_pages_ascend_by_id_and_start_strictly_after_the_cursor(f: &Fixture) {
    let store = f.open().await;
    let ids = ["b", "a", "a-", "a.", "a0", "aA", "a_", "B", "0", "z", "Z", "a:"];
    for id in ids {
        save(store.as_ref(), &payment(id, 1, "EUR")).await;
    }
    let mut expected: Vec<&str> = ids.to_vec();
    expected.sort_unstable(); // bytewise, as the contract says
    let list = |after: Option<&str>, limit| {
        let after = after.map(|id| payment(id, 1, "EUR").id);
        let store = Arc::clone(&store);
        async move {
            let page = store
                .list(after, limit)
                .await
                .unwrap_or_else(|err| panic!("list failed: {}", error_chain(&err)));
            page.into_iter().map(|p| p.id.to_string()).collect::<Vec<_>>()
        }
    };
    assert_eq!(list(None, 100).await, expected, "one page must hold every payment in bytewise ID order");
    assert_eq!(
        list(None, 3).await,
        expected[..3],
        "a page must hold at most `limit` payments, the lowest IDs"
    );
    assert_eq!(list(Some("a."), 2).await, ["a0", "a:"], "a page must start strictly after the cursor");
    assert_eq!(list(Some("a1"), 2).await, ["a:", "aA"], "the cursor need not be a recorded ID");
    assert!(list(Some("z"), 5).await.is_empty(), "nothing is listed after the highest ID");
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = list(after.as_deref(), 5).await;
        let Some(last) = page.last() else { break };
        after = Some(last.clone());
        paged.extend(page);
    }
    assert_eq!(paged, expected, "paging from the start to an empty page must yield every payment once");
}

// ---------------------------------------------------------------------------------------------
// Edges of the domain

async fn ids_at_the_length_limits_are_kept_exactly(f: &Fixture) {
    let store = f.open().await;
    let shortest = payment("x", 1, "EUR");
    let longest = payment(&"y".repeat(PaymentId::MAX_LEN), 2, "EUR");
    let almost = payment(&"y".repeat(PaymentId::MAX_LEN - 1), 3, "EUR");
    for p in [&shortest, &longest, &almost] {
        assert_eq!(save(store.as_ref(), p).await, SaveOutcome::New, "saving {p} must report new");
    }
    for p in [&shortest, &longest, &almost] {
        assert_eq!(
            get(store.as_ref(), &p.id).await.as_ref(),
            Some(p),
            "a {}-byte ID must round-trip",
            p.id.len()
        );
        assert_eq!(save(store.as_ref(), p).await, SaveOutcome::Duplicate, "{p} again must be a duplicate");
    }
    assert_eq!(export(store.as_ref()).await, [shortest, almost, longest]);
}

async fn ids_using_every_allowed_character_are_kept_exactly(f: &Fixture) {
    let store = f.open().await;
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-";
    let mut payments: Vec<Payment> = alphabet.chars().map(|c| payment(&c.to_string(), 1, "EUR")).collect();
    // The alphabet has 66 characters and an ID at most 64: its first 64, and its last 64 reversed.
    payments.push(payment(&alphabet[..64], 2, "EUR"));
    payments.push(payment(&alphabet[2..].chars().rev().collect::<String>(), 3, "EUR"));
    save_all_new(store.as_ref(), &payments).await;
    for p in &payments {
        assert_eq!(get(store.as_ref(), &p.id).await.as_ref(), Some(p), "ID {:?} must round-trip", p.id);
    }
    payments.sort_by_key(|p| p.id);
    assert_eq!(export(store.as_ref()).await, payments, "every allowed character must survive the export");
}

async fn ids_that_differ_only_in_case_are_different_payments(f: &Fixture) {
    let store = f.open().await;
    let lower = payment("pay-abc", 1, "EUR");
    let upper = payment("PAY-ABC", 2, "EUR");
    assert_eq!(save(store.as_ref(), &lower).await, SaveOutcome::New);
    assert_eq!(
        save(store.as_ref(), &upper).await,
        SaveOutcome::New,
        "IDs are case-sensitive: {upper} must not be taken for {lower}"
    );
    assert_eq!(get(store.as_ref(), &upper.id).await, Some(upper));
    assert_eq!(get(store.as_ref(), &lower.id).await, Some(lower));
}

async fn ids_that_share_a_prefix_are_different_payments(f: &Fixture) {
    let store = f.open().await;
    // Catches stores that pad, trim or truncate IDs (a CHAR(n) column, a fixed-size key).
    let ids = ["a", "ab", "a.", "a-", "a0", &format!("a{}", "b".repeat(63))];
    let payments: Vec<Payment> =
        ids.iter().enumerate().map(|(i, id)| payment(id, 1 + i as u64, "EUR")).collect();
    save_all_new(store.as_ref(), &payments).await;
    for p in &payments {
        assert_eq!(
            get(store.as_ref(), &p.id).await.as_ref(),
            Some(p),
            "ID {:?} must keep its own payment",
            p.id
        );
    }
    assert_eq!(count(store.as_ref()).await, ids.len() as u64);
}

async fn amounts_at_the_limits_are_kept_exactly(f: &Fixture) {
    let store = f.open().await;
    let smallest = payment("pay-min", Amount::MIN, "EUR");
    let largest = payment("pay-max", Amount::MAX, "EUR");
    let awkward = payment("pay-odd", (1 << 32) + 1, "KWD");
    for p in [&smallest, &largest, &awkward] {
        save(store.as_ref(), p).await;
        assert_eq!(get(store.as_ref(), &p.id).await.as_ref(), Some(p), "amount {} must round-trip", p.amount);
    }
    assert_conflict(
        save(store.as_ref(), &payment("pay-max", Amount::MAX - 1, "EUR")).await,
        &largest,
        &payment("pay-max", Amount::MAX - 1, "EUR"),
        "amounts one minor unit apart",
    );
}

// ---------------------------------------------------------------------------------------------
// Volume

async fn a_hundred_thousand_payments_from_many_tasks_are_counted_listed_and_found(f: &Fixture) {
    const PAYMENTS: usize = 100_000;
    const TASKS: usize = 64;
    let store = f.open().await;
    // First every payment, each also sent again by another task (every tenth): exactly one new
    // per payment, whoever comes first.
    let first = save_concurrently(&store, TASKS, |task| {
        let mut work: Vec<Payment> = (task..PAYMENTS).step_by(TASKS).map(numbered).collect();
        work.extend(
            (task..PAYMENTS)
                .step_by(TASKS)
                .filter(|i| i.is_multiple_of(10))
                .map(|i| numbered((i + 7) % PAYMENTS)),
        );
        work
    })
    .await;
    let mut new = vec![0u8; PAYMENTS];
    for (payment, outcome) in &first {
        match outcome {
            SaveOutcome::New => new[number_of(payment)] += 1,
            SaveOutcome::Duplicate => {}
            SaveOutcome::Conflict(c) => panic!("identical saves must never conflict: {c}"),
        }
    }
    let wrong = new.iter().filter(|&&n| n != 1).count();
    assert_eq!(wrong, 0, "each of {PAYMENTS} payments must be reported new exactly once; {wrong} were not");
    // Then duplicates and conflicting versions (every fiftieth), at once: nothing changes.
    let second = save_concurrently(&store, TASKS, |task| {
        (task..PAYMENTS)
            .step_by(TASKS)
            .filter(|i| i.is_multiple_of(25))
            .map(|i| if i.is_multiple_of(50) { conflicting(i) } else { numbered(i) })
            .collect()
    })
    .await;
    for (payment, outcome) in &second {
        let i = number_of(payment);
        match outcome {
            SaveOutcome::Duplicate if !i.is_multiple_of(50) => {}
            SaveOutcome::Conflict(c) if i.is_multiple_of(50) && c.stored == numbered(i) => {}
            other => panic!(
                "saving {payment} again at volume must be a duplicate or a conflict with the first version, got {other:?}"
            ),
        }
    }
    let expected: Vec<Payment> = (0..PAYMENTS).map(numbered).collect();
    let check = |store: Arc<dyn PaymentsRepository>, when: &'static str| {
        let expected = &expected;
        async move {
            assert_eq!(
                count(store.as_ref()).await,
                PAYMENTS as u64,
                "{when}: the count must be exact at volume"
            );
            for page_size in [997, PAYMENTS + 1] {
                let listed = export_paged(store.as_ref(), page_size).await;
                let first_wrong = listed.iter().zip(expected).position(|(got, want)| got != want);
                assert_eq!(
                    (listed.len(), first_wrong),
                    (PAYMENTS, None),
                    "{when}: paging in pages of {page_size} must yield every payment once, in ID order"
                );
            }
            for i in (0..PAYMENTS).step_by(997) {
                let p = numbered(i);
                assert_eq!(get(store.as_ref(), &p.id).await, Some(p), "{when}: get must find payment {i}");
            }
            store
        }
    };
    let store = check(store, "after saving").await;
    if f.capabilities.durable {
        let store = f.reopen(store).await;
        check(store, "after reopening").await;
    }
}

/// The number `numbered` made `payment` from.
fn number_of(payment: &Payment) -> usize {
    payment
        .id
        .as_str()
        .trim_start_matches("pay-")
        .parse()
        .unwrap_or_else(|_| panic!("not numbered: {payment}"))
}

/// The `i`th numbered payment in another amount.
pub(crate) fn conflicting(i: usize) -> Payment {
    let original = numbered(i);
    payment(original.id.as_str(), original.amount.minor_units() + 1, original.currency.as_str())
}

// ---------------------------------------------------------------------------------------------
// Durable

async fn a_reopened_store_keeps_every_payment(f: &Fixture) {
    let store = f.open().await;
    let payments: Vec<Payment> = (0..500).map(numbered).collect();
    save_all_new(store.as_ref(), &payments).await;
    let store = f.reopen(store).await;
    assert_eq!(count(store.as_ref()).await, 500, "a reopened store must count every payment reported new");
    assert_eq!(export(store.as_ref()).await, payments, "a reopened store must hold every payment, unchanged");
}

async fn saving_again_after_reopening_reports_duplicate(f: &Fixture) {
    let store = f.open().await;
    let payments: Vec<Payment> = (0..50).map(numbered).collect();
    save_all_new(store.as_ref(), &payments).await;
    let store = f.reopen(store).await;
    for p in &payments {
        assert_eq!(
            save(store.as_ref(), p).await,
            SaveOutcome::Duplicate,
            "after a restart, a redelivered {p} must be a duplicate (amnesia applies it twice)"
        );
    }
    assert_eq!(count(store.as_ref()).await, 50);
}

async fn a_conflicting_save_after_reopening_reports_conflict(f: &Fixture) {
    let store = f.open().await;
    let stored = payment("pay-0001", 1999, "EUR");
    save(store.as_ref(), &stored).await;
    let store = f.reopen(store).await;
    let incoming = payment("pay-0001", 1999, "SEK");
    assert_conflict(
        save(store.as_ref(), &incoming).await,
        &stored,
        &incoming,
        "a conflicting save after reopening",
    );
    let store = f.reopen(store).await;
    assert_eq!(get(store.as_ref(), &stored.id).await, Some(stored), "the conflict must not have overwritten");
}

async fn payments_saved_after_reopening_survive_the_next_reopening(f: &Fixture) {
    let mut store = f.open().await;
    let mut expected = Vec::new();
    for generation in 0..3 {
        let batch: Vec<Payment> = (generation * 100..generation * 100 + 100).map(numbered).collect();
        save_all_new(store.as_ref(), &batch).await;
        expected.extend(batch);
        store = f.reopen(store).await;
        assert_eq!(export(store.as_ref()).await, expected, "after reopening number {}", generation + 1);
    }
}

// ---------------------------------------------------------------------------------------------
// Shared

async fn instances_sharing_a_store_record_each_payment_exactly_once(f: &Fixture) {
    let (first, second) = (f.open().await, f.open().await);
    const PAYMENTS: usize = 1000;
    let payments: Arc<Vec<Payment>> = Arc::new((0..PAYMENTS).map(numbered).collect());
    // 32 tasks per instance, all racing on the same 1,000 IDs from different starting points.
    let race = |store: Arc<dyn PaymentsRepository>, offset: usize| {
        let payments = Arc::clone(&payments);
        let barrier = Arc::new(Barrier::new(32));
        (0..32).map(move |task| {
            let (store, payments, barrier) =
                (Arc::clone(&store), Arc::clone(&payments), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                let mut new = Vec::new();
                for k in 0..PAYMENTS / 8 {
                    let p = &payments[(offset + task * 31 + k) % PAYMENTS];
                    if save(store.as_ref(), p).await.is_new() {
                        new.push(p.id);
                    }
                }
                new
            })
        })
    };
    let handles: Vec<_> = race(first.clone(), 0).chain(race(second.clone(), 500)).collect();
    let mut new: Vec<PaymentId> = Vec::new();
    for joined in join_all(handles).await {
        new.extend(joined.unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic())));
    }
    let mut distinct: HashSet<PaymentId> = new.iter().copied().collect();
    assert_eq!(
        new.len(),
        distinct.len(),
        "a payment was reported new by more than one save across instances"
    );
    // Then every payment once more: those reported new must now be duplicates, the rest (if the
    // race missed any) new, once.
    for p in payments.iter() {
        let outcome = save(second.as_ref(), p).await;
        if distinct.contains(&p.id) {
            assert_eq!(
                outcome,
                SaveOutcome::Duplicate,
                "{p} was reported new before, so it must be a duplicate"
            );
        } else {
            assert_eq!(outcome, SaveOutcome::New, "{p} was never reported new, so it must be absent");
            distinct.insert(p.id);
        }
    }
    assert_eq!(count(first.as_ref()).await, PAYMENTS as u64, "both instances together must record each once");
    assert_eq!(
        export(second.as_ref()).await,
        *payments,
        "the shared export must hold each payment exactly once"
    );
}

async fn a_payment_saved_through_one_instance_is_a_duplicate_through_another(f: &Fixture) {
    let (first, second) = (f.open().await, f.open().await);
    let p = payment("pay-shared", 42, "EUR");
    assert_eq!(save(first.as_ref(), &p).await, SaveOutcome::New);
    assert_eq!(
        save(second.as_ref(), &p).await,
        SaveOutcome::Duplicate,
        "a payment recorded through one instance must be a duplicate through another"
    );
    assert_eq!(get(second.as_ref(), &p.id).await, Some(p));
}

async fn a_conflict_is_detected_across_instances(f: &Fixture) {
    let (first, second) = (f.open().await, f.open().await);
    let stored = payment("pay-shared", 42, "EUR");
    let incoming = payment("pay-shared", 43, "EUR");
    save(first.as_ref(), &stored).await;
    assert_conflict(
        save(second.as_ref(), &incoming).await,
        &stored,
        &incoming,
        "a conflict across instances",
    );
    assert_eq!(get(first.as_ref(), &stored.id).await, Some(stored), "the conflict must not overwrite");
}
