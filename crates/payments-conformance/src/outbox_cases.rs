//! The outbox cases, each named after the sentence of the `Outbox` contract it checks
//! (`payments_ports::Outbox`, sentences 1 to 8), for stores that declare the `outbox` capability.
//!
//! Every case takes a relay's handle before it saves anything, since `outbox()` is what turns a
//! store's outbox on. Where a store may give back what a dropped handle held later rather than at
//! once (a connection the server has not seen close yet), the case asks again until
//! [`RELEASE_DEADLINE`]; it never sleeps for a fixed time.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures::future::join_all;
use payments_ports::domain::{Payment, PaymentId, PaymentRecorded, RecordedAt, SaveOutcome};
use payments_ports::{Outbox, OutboxBacklog, PaymentsRepository, error_chain};
use tokio::sync::Barrier;

use crate::Fixture;
use crate::cases::{conflicting, count, numbered, payment, save, save_all_new, save_concurrently};

/// How long a store may take to give back what a dropped handle held, or to let a new relay in
/// after the last one is dropped: a server noticing a closed connection, a lock being released.
const RELEASE_DEADLINE: Duration = Duration::from_secs(30);
/// How long a waiting case waits before it asks again.
const POLL: Duration = Duration::from_millis(20);
/// How far a recorded time may lie outside the case's own clock readings: the store's clock (a
/// database server's) is not the case's, and times are kept to the millisecond.
const CLOCK_SLACK: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------------
// Helpers

/// A relay's handle on `store`'s outbox. A store that is still releasing the last handle may
/// answer `Unavailable` (the same call may succeed later), which is retried until
/// [`RELEASE_DEADLINE`]; any other error fails the case at once, with its message.
pub(crate) async fn relay(store: &dyn PaymentsRepository) -> Box<dyn Outbox> {
    let deadline = Instant::now() + RELEASE_DEADLINE;
    loop {
        match store.outbox().await {
            Ok(Some(handle)) => return handle,
            Ok(None) => {
                panic!("the store declares the `outbox` capability, but `outbox()` says it keeps none")
            }
            Err(err) if !err.is_unavailable() => {
                panic!("the store refused a relay's handle on its outbox: {}", error_chain(&err))
            }
            Err(err) if Instant::now() >= deadline => panic!(
                "no relay's handle on the outbox within {RELEASE_DEADLINE:?} (is the last one still held?): {}",
                error_chain(&err)
            ),
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// `claim(limit)`, which must hand out at most `limit` events (sentence 3).
pub(crate) async fn claim(handle: &mut dyn Outbox, limit: usize) -> Vec<PaymentRecorded> {
    let batch = handle
        .claim(limit)
        .await
        .unwrap_or_else(|err| panic!("claim({limit}) failed: {}", error_chain(&err)));
    assert!(
        batch.len() <= limit,
        "sentence 3: claim MUST hand out up to `limit` events; claim({limit}) handed out {}",
        batch.len()
    );
    batch
}

/// `mark_published()`.
pub(crate) async fn mark(handle: &mut dyn Outbox) {
    if let Err(err) = handle.mark_published().await {
        panic!("mark_published failed: {}", error_chain(&err));
    }
}

async fn backlog(handle: &mut dyn Outbox) -> OutboxBacklog {
    handle.backlog().await.unwrap_or_else(|err| panic!("backlog failed: {}", error_chain(&err)))
}

pub(crate) async fn close(mut handle: Box<dyn Outbox>) {
    if let Err(err) = handle.close().await {
        panic!("closing a relay's handle failed: {}", error_chain(&err));
    }
}

/// Claims batches of `limit` and marks each until a claim comes back empty; returns every event
/// handed out, in order. A store whose claims never run dry fails once more than `most` events
/// were handed out, instead of looping until the case times out.
pub(crate) async fn drain(handle: &mut dyn Outbox, limit: usize, most: usize) -> Vec<PaymentRecorded> {
    let mut handed = Vec::new();
    loop {
        let batch = claim(handle, limit).await;
        if batch.is_empty() {
            return handed;
        }
        mark(handle).await;
        handed.extend(batch);
        assert!(
            handed.len() <= most,
            "sentence 6: mark_published MUST mark every event of the last claim, so that no claim hands \
             it out again; claiming and marking handed out {} events and never came back empty, though \
             at most {most} were expected: {}",
            handed.len(),
            some(ids(&handed))
        );
    }
}

/// Claims `limit` with `handle` until `done` accepts the batch, or fails with `sentence` once
/// [`RELEASE_DEADLINE`] has passed; returns the accepted batch. Each claim gives back the last.
async fn claim_until(
    handle: &mut dyn Outbox,
    limit: usize,
    sentence: &str,
    done: impl Fn(&[PaymentRecorded]) -> bool,
) -> Vec<PaymentRecorded> {
    let deadline = Instant::now() + RELEASE_DEADLINE;
    loop {
        let batch = claim(handle, limit).await;
        if done(&batch) {
            return batch;
        }
        assert!(
            Instant::now() < deadline,
            "{sentence}: for {RELEASE_DEADLINE:?}, claims handed out only {}",
            some(ids(&batch))
        );
        tokio::time::sleep(POLL).await;
    }
}

fn ids<'a>(events: impl IntoIterator<Item = &'a PaymentRecorded>) -> Vec<PaymentId> {
    events.into_iter().map(|event| event.payment.id).collect()
}

/// The first few of `ids`, and how many there are: for messages.
fn some(ids: impl IntoIterator<Item = impl Borrow<PaymentId>>) -> String {
    let ids: Vec<PaymentId> = ids.into_iter().map(|id| *id.borrow()).collect();
    let shown: Vec<String> = ids.iter().take(6).map(ToString::to_string).collect();
    let more = if ids.len() > shown.len() { format!(", ... ({} in all)", ids.len()) } else { String::new() };
    format!("[{}{more}]", shown.join(", "))
}

/// Whether every event of `handed` is the event of one of `expected` (equal to it as saved) and
/// every one of `expected` has exactly one: fails with `sentence` and what differs.
fn assert_each_once(sentence: &str, handed: &[PaymentRecorded], expected: &[Payment]) {
    let wanted: BTreeMap<PaymentId, &Payment> = expected.iter().map(|p| (p.id, p)).collect();
    let mut seen: BTreeMap<PaymentId, usize> = BTreeMap::new();
    for event in handed {
        *seen.entry(event.payment.id).or_default() += 1;
        if let Some(&saved) = wanted.get(&event.payment.id) {
            assert_eq!(
                &event.payment, saved,
                "{sentence}: the event of {} must carry the payment as it was first saved",
                saved.id
            );
        }
    }
    let missing: Vec<PaymentId> = wanted.keys().filter(|id| !seen.contains_key(id)).copied().collect();
    let twice: Vec<PaymentId> = seen.iter().filter(|(_, n)| **n > 1).map(|(id, _)| *id).collect();
    let unexpected: Vec<PaymentId> = seen.keys().filter(|id| !wanted.contains_key(id)).copied().collect();
    assert!(
        missing.is_empty() && twice.is_empty() && unexpected.is_empty(),
        "{sentence}: of {} events expected once each, {} were never handed out {}, {} more than once {}, \
         and {} handed out are of no payment expected {}",
        expected.len(),
        missing.len(),
        some(&missing),
        twice.len(),
        some(&twice),
        unexpected.len(),
        some(&unexpected)
    );
}

/// Fails with `sentence` unless `again` holds the same events as `first`: the same payments,
/// recorded at the same times, in the same order.
fn assert_same_events(sentence: &str, first: &[PaymentRecorded], again: &[PaymentRecorded]) {
    assert!(
        first == again,
        "{sentence}: first {} were handed out, then {}{}",
        some(ids(first)),
        some(ids(again)),
        if ids(first) == ids(again) {
            " (the same payments, recorded at other times or in other versions)"
        } else {
            ""
        }
    );
}

/// Saves `payments` one after another, each as new, so that they are recorded in this order.
async fn save_in_order(store: &dyn PaymentsRepository, payments: &[Payment]) {
    for payment in payments {
        assert_eq!(
            save(store, payment).await,
            SaveOutcome::New,
            "saving the absent payment {payment} must report new"
        );
    }
}

/// A fresh store, a relay's handle on it (taken first, which turns the outbox on), and the first
/// `n` numbered payments saved through it one after another.
async fn saved_in_order(
    f: &Fixture,
    n: usize,
) -> (Arc<dyn PaymentsRepository>, Box<dyn Outbox>, Vec<Payment>) {
    let store = f.open().await;
    let relay = relay(store.as_ref()).await;
    let payments: Vec<Payment> = (0..n).map(numbered).collect();
    save_in_order(store.as_ref(), &payments).await;
    (store, relay, payments)
}

/// Waits until the clock shows another millisecond, so that the next save is recorded later than
/// the last (the store keeps times to the millisecond).
async fn next_millisecond() {
    let now = RecordedAt::from_system_time(SystemTime::now());
    while RecordedAt::from_system_time(SystemTime::now()) == now {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Whether `got` is `want` to the millisecond (one either way: a store may keep finer times and
/// round them).
fn same_millisecond(got: SystemTime, want: RecordedAt) -> bool {
    RecordedAt::from_system_time(got).unix_millis().abs_diff(want.unix_millis()) <= 1
}

// ---------------------------------------------------------------------------------------------
// Recording

pub(crate) async fn every_new_payment_appears_in_the_outbox_exactly_once(f: &Fixture) {
    let started = SystemTime::now();
    let store = f.open().await;
    let mut relay = relay(store.as_ref()).await;
    let payments: Vec<Payment> = (0..300).map(numbered).collect();
    save_all_new(store.as_ref(), &payments).await;
    let handed = drain(relay.as_mut(), 64, 2 * payments.len()).await;
    let claimed = SystemTime::now();
    assert_each_once(
        "sentence 1: every save reported new MUST put the payment's event in the outbox",
        &handed,
        &payments,
    );
    for event in &handed {
        let at = event.recorded_at.system_time();
        assert!(
            at + CLOCK_SLACK >= started && at <= claimed + CLOCK_SLACK,
            "sentence 3: claim MUST hand out each event with the time it was recorded; the event of {} says \
             {}, but it was saved between {} and {}",
            event.payment.id,
            event.recorded_at,
            RecordedAt::from_system_time(started),
            RecordedAt::from_system_time(claimed)
        );
    }
}

pub(crate) async fn a_duplicate_or_a_conflict_adds_nothing_to_the_outbox(f: &Fixture) {
    const SENTENCE: &str = "sentence 2: a save reported duplicate or conflict MUST add nothing to the outbox";
    let store = f.open().await;
    let mut relay = relay(store.as_ref()).await;
    let (first, second) = (numbered(1), numbered(2));
    save_in_order(store.as_ref(), &[first.clone(), second.clone()]).await;
    for again in [first.clone(), conflicting(1), conflicting(2), second.clone()] {
        assert!(!save(store.as_ref(), &again).await.is_new(), "{again} was saved before");
    }
    // Concurrent versions of one new payment: one is new and has an event, the others none.
    let contested = |task: usize| payment("pay-contested", 1000 + (task % 4) as u64, "EUR");
    let outcomes = save_concurrently(&store, 32, |task| vec![contested(task)]).await;
    let winners: Vec<Payment> = outcomes.into_iter().filter(|(_, o)| o.is_new()).map(|(p, _)| p).collect();
    assert_eq!(
        winners.len(),
        1,
        "concurrent saves under one ID must produce exactly one new, got {winners:?}"
    );
    let expected = [first.clone(), second, winners[0].clone()];
    let handed = drain(relay.as_mut(), 10, 10).await;
    assert_each_once(SENTENCE, &handed, &expected);
    // Once published, a duplicate or a conflict must not bring an event back either.
    for again in [first, conflicting(1), winners[0].clone(), contested(1), contested(2)] {
        save(store.as_ref(), &again).await;
    }
    let back = claim(relay.as_mut(), 10).await;
    assert!(
        back.is_empty(),
        "{SENTENCE}: once every event was published, saving them again (duplicates and conflicts) put {} \
         back in the outbox",
        some(ids(&back))
    );
}

pub(crate) async fn a_new_payment_and_its_event_are_recorded_in_the_same_atomic_step(f: &Fixture) {
    const TASKS: usize = 16;
    // Each task saves at least the first number of payments, and goes on until the reader has
    // compared the two counts the second number of times, so that the comparisons overlap saves
    // however fast the store is; the third bounds a reader that cannot keep up.
    const LEAST: usize = 100;
    const CHECKS: u64 = 1000;
    const MOST: usize = 10_000;
    const SENTENCE: &str = "sentence 1: every save reported new MUST put the payment's event in the \
                            outbox in the same atomic step as the payment";
    let store = f.open().await;
    let mut relay = relay(store.as_ref()).await;
    let saving = Arc::new(AtomicBool::new(true));
    let checks = Arc::new(AtomicU64::new(0));
    // Nothing is ever marked, so `pending` counts every event: it may never lag the payments
    // counted before it, nor run ahead of those counted after it.
    let reader = tokio::spawn({
        let (store, saving, checks) = (Arc::clone(&store), Arc::clone(&saving), Arc::clone(&checks));
        async move {
            while saving.load(Ordering::Acquire) {
                let payments = count(store.as_ref()).await;
                let pending = backlog(relay.as_mut()).await.pending;
                if pending < payments {
                    return Err(format!(
                        "while saves ran, count() said {payments} payments and then backlog() {pending} \
                         pending events (nothing was marked): payments were recorded without their events"
                    ));
                }
                let pending = backlog(relay.as_mut()).await.pending;
                let payments = count(store.as_ref()).await;
                if payments < pending {
                    return Err(format!(
                        "while saves ran, backlog() said {pending} pending events and then count() \
                         {payments} payments: events were recorded without their payments"
                    ));
                }
                checks.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
            Ok(())
        }
    });
    let barrier = Arc::new(Barrier::new(TASKS));
    let savers = (0..TASKS).map(|task| {
        let (store, checks, barrier) = (Arc::clone(&store), Arc::clone(&checks), Arc::clone(&barrier));
        tokio::spawn(async move {
            barrier.wait().await;
            for i in 0..MOST {
                if i >= LEAST && checks.load(Ordering::Relaxed) >= CHECKS {
                    break;
                }
                let payment = payment(&format!("atom-{task:02}-{i:05}"), 1 + i as u64, "EUR");
                assert_eq!(save(store.as_ref(), &payment).await, SaveOutcome::New, "{payment} is new");
            }
        })
    });
    for saved in join_all(savers).await {
        saved.unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic()));
    }
    saving.store(false, Ordering::Release);
    let checked = reader.await.unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic()));
    if let Err(what) = checked {
        panic!("{SENTENCE}: {what}");
    }
}

// ---------------------------------------------------------------------------------------------
// Relaying

pub(crate) async fn claims_hand_out_events_oldest_first(f: &Fixture) {
    let store = f.open().await;
    let mut relay = relay(store.as_ref()).await;
    // Saved one after another in an order that is not their IDs' (a fixed permutation).
    let payments: Vec<Payment> = (0..60).map(|i| numbered((i * 37) % 60)).collect();
    save_in_order(store.as_ref(), &payments).await;
    let handed = drain(relay.as_mut(), 7, 2 * payments.len()).await;
    let saved: Vec<PaymentId> = payments.iter().map(|p| p.id).collect();
    let first_out_of_order = ids(&handed).iter().zip(&saved).position(|(got, want)| got != want);
    assert!(
        ids(&handed) == saved,
        "sentence 3: claim MUST hand out events oldest first; saved one after another as {}, they were \
         handed out as {} (first out of place at position {first_out_of_order:?})",
        some(&saved),
        some(ids(&handed))
    );
}

pub(crate) async fn a_new_claim_gives_back_the_previous_unmarked_one(f: &Fixture) {
    let (_store, mut relay, payments) = saved_in_order(f, 10).await;
    let first = claim(relay.as_mut(), 4).await;
    assert!(!first.is_empty(), "sentence 3: ten events wait, and claim(4) handed out none");
    let again = claim(relay.as_mut(), 4).await;
    assert_same_events(
        "sentence 4: a new claim of the same handle MUST first give back the previous one, if it was not \
         marked (and claims go oldest first, so it hands out the same events again)",
        &first,
        &again,
    );
    mark(relay.as_mut()).await;
    let rest = drain(relay.as_mut(), 100, payments.len()).await;
    assert_each_once(
        "sentence 6: mark_published MUST mark every event of the handle's last claim, and those only",
        &rest,
        &payments[again.len()..],
    );
}

pub(crate) async fn marking_with_no_claim_held_marks_nothing(f: &Fixture) {
    const SENTENCE: &str = "mark_published with no claim held MUST do nothing";
    let store = f.open().await;
    let mut relay = relay(store.as_ref()).await;
    let payments: Vec<Payment> = (0..9).map(numbered).collect();
    save_in_order(store.as_ref(), &payments[..3]).await;
    // Before any claim.
    mark(relay.as_mut()).await;
    let all = claim(relay.as_mut(), 100).await;
    assert_each_once(&format!("{SENTENCE} (before any claim)"), &all, &payments[..3]);
    // Twice after one claim: the second mark holds no claim.
    let two = claim(relay.as_mut(), 2).await;
    mark(relay.as_mut()).await;
    save_in_order(store.as_ref(), &payments[3..6]).await;
    mark(relay.as_mut()).await;
    let rest = claim(relay.as_mut(), 100).await;
    assert_each_once(&format!("{SENTENCE} (marking twice after one claim)"), &rest, &payments[two.len()..6]);
    mark(relay.as_mut()).await;
    // After a claim that came back empty: the events saved since are not part of it.
    let none = claim(relay.as_mut(), 100).await;
    assert!(none.is_empty(), "sentence 6: everything was marked, yet claim handed out {}", some(ids(&none)));
    save_in_order(store.as_ref(), &payments[6..]).await;
    mark(relay.as_mut()).await;
    let last = claim(relay.as_mut(), 100).await;
    assert_each_once(&format!("{SENTENCE} (after an empty claim)"), &last, &payments[6..]);
}

/// What one relay saw in [`nothing_committed_is_skipped_under_concurrent_saves`] and
/// [`relays_on_two_instances_publish_every_event_exactly_once_between_them`].
#[derive(Default)]
struct Relayed {
    /// Every event handed out, with how many times.
    handed: BTreeMap<PaymentId, usize>,
    /// Every event marked published.
    marked: BTreeSet<PaymentId>,
    /// Events handed out again after they were marked.
    again: BTreeSet<PaymentId>,
    /// Events that differ from the payment saved.
    wrong: Vec<String>,
}

impl Relayed {
    /// Claims `limit` events with `handle`, notes them, and marks them.
    async fn round(
        &mut self,
        handle: &mut dyn Outbox,
        limit: usize,
        saved: &BTreeMap<PaymentId, Payment>,
    ) -> usize {
        let batch = claim(handle, limit).await;
        for event in &batch {
            let id = event.payment.id;
            *self.handed.entry(id).or_default() += 1;
            if self.marked.contains(&id) {
                self.again.insert(id);
            }
            if saved.get(&id) != Some(&event.payment) {
                self.wrong.push(format!("{} (saved as {:?})", event.payment, saved.get(&id)));
            }
        }
        if !batch.is_empty() {
            mark(handle).await;
            self.marked.extend(ids(&batch));
        }
        batch.len()
    }

    /// Runs rounds with random limits until `saving` is cleared; returns the handle.
    async fn run(
        mut self,
        mut handle: Box<dyn Outbox>,
        saving: Arc<AtomicBool>,
        saved: Arc<BTreeMap<PaymentId, Payment>>,
    ) -> (Self, Box<dyn Outbox>) {
        while saving.load(Ordering::Acquire) {
            if self.round(handle.as_mut(), fastrand::usize(1..=16), &saved).await == 0 {
                tokio::task::yield_now().await;
            }
        }
        (self, handle)
    }
}

pub(crate) async fn nothing_committed_is_skipped_under_concurrent_saves(f: &Fixture) {
    const ROUNDS: usize = 4;
    const TASKS: usize = 16;
    const PER_TASK: usize = 60;
    const SENTENCE: &str = "sentence 5: claiming and marking until a claim comes back empty MUST hand out \
                            every event committed before the first of those claims, whatever saves run \
                            at the same time";
    let store = f.open().await;
    let mut handle = relay(store.as_ref()).await;
    let mut relayed = Relayed::default();
    for round in 0..ROUNDS {
        let work = |task: usize| -> Vec<Payment> {
            (0..PER_TASK)
                .map(|i| payment(&format!("skip-{round}-{task:02}-{i:03}"), 1 + i as u64, "EUR"))
                .collect()
        };
        let saved: Arc<BTreeMap<PaymentId, Payment>> =
            Arc::new((0..TASKS).flat_map(work).map(|p| (p.id, p)).collect());
        let saving = Arc::new(AtomicBool::new(true));
        let relay = tokio::spawn(relayed.run(handle, Arc::clone(&saving), Arc::clone(&saved)));
        let outcomes = save_concurrently(&store, TASKS, work).await;
        saving.store(false, Ordering::Release);
        assert!(outcomes.iter().all(|(_, o)| o.is_new()), "every payment of the case is new");
        (relayed, handle) = relay.await.unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic()));
        // Every save has committed: claiming and marking until empty must now reach every event.
        while relayed.round(handle.as_mut(), 100, &saved).await > 0 {}
        let skipped: Vec<PaymentId> =
            saved.keys().filter(|id| !relayed.marked.contains(id)).copied().collect();
        assert!(
            skipped.is_empty(),
            "{SENTENCE}: in round {round}, {} of the {} events saved by {TASKS} concurrent tasks were never \
             handed out, while a relay claimed and marked: {}",
            skipped.len(),
            saved.len(),
            some(&skipped)
        );
        assert!(
            relayed.again.is_empty(),
            "sentence 6: once marked published, an event MUST NOT be handed out again by any claim; these \
             were: {}",
            some(&relayed.again)
        );
        assert!(
            relayed.wrong.is_empty(),
            "sentence 3: events must carry their payments: {:?}",
            relayed.wrong
        );
    }
}

pub(crate) async fn what_is_marked_published_is_not_handed_out_by_a_second_handle(f: &Fixture) {
    let (store, mut first, payments) = saved_in_order(f, 20).await;
    let marked = claim(first.as_mut(), 10).await;
    mark(first.as_mut()).await;
    close(first).await;
    let mut second = relay(store.as_ref()).await;
    let handed = drain(second.as_mut(), 100, payments.len()).await;
    assert_each_once(
        "sentence 6: mark_published MUST mark every event of the handle's last claim, so that no claim of \
         any handle hands it out again",
        &handed,
        &payments[marked.len()..],
    );
}

pub(crate) async fn what_is_not_yet_marked_is_handed_out_again_once_its_holder_is_closed_or_dropped(
    f: &Fixture,
) {
    let (store, mut first, payments) = saved_in_order(f, 12).await;
    let held = claim(first.as_mut(), 4).await;
    assert!(!held.is_empty(), "sentence 3: twelve events wait, and claim(4) handed out none");
    close(first).await;
    let mut second = relay(store.as_ref()).await;
    let again = claim(second.as_mut(), 4).await;
    assert_same_events(
        "sentence 7: an event claimed and not marked MUST be handed out again to the next claim once its \
         holder is closed",
        &held,
        &again,
    );
    drop(second);
    let mut third = relay(store.as_ref()).await;
    let sentence = format!(
        "sentence 7: an event claimed and not marked MUST be handed out again to the next claim once its \
         holder is dropped; {} were held by the dropped handle",
        some(ids(&again))
    );
    let back = claim_until(third.as_mut(), 4, &sentence, |batch| ids(batch) == ids(&again)).await;
    assert_same_events(&sentence, &again, &back);
    mark(third.as_mut()).await;
    let rest = drain(third.as_mut(), 100, payments.len()).await;
    assert_each_once(
        "sentence 5: claiming and marking until empty MUST hand out every event",
        &rest,
        &payments[back.len()..],
    );
}

pub(crate) async fn the_backlog_counts_pending_events_and_gives_the_oldest_time(f: &Fixture) {
    const SENTENCE: &str = "sentence 8: backlog MUST count the events not yet marked (claimed or not) and \
                            give the time the oldest of them was recorded";
    let store = f.open().await;
    let mut relay = relay(store.as_ref()).await;
    let empty = backlog(relay.as_mut()).await;
    assert_eq!(empty, OutboxBacklog { pending: 0, oldest: None }, "{SENTENCE}: an empty outbox");
    let payments: Vec<Payment> = (0..5).map(numbered).collect();
    for payment in &payments {
        next_millisecond().await;
        save_in_order(store.as_ref(), std::slice::from_ref(payment)).await;
    }
    let events = claim(relay.as_mut(), 5).await;
    assert_eq!(ids(&events), payments.iter().map(|p| p.id).collect::<Vec<_>>(), "sentence 3: oldest first");
    let check = |backlog: OutboxBacklog, pending: &[PaymentRecorded], when: &str| {
        let oldest = pending.first().map(|e| e.recorded_at);
        let matches = match (backlog.oldest, oldest) {
            (Some(got), Some(want)) => same_millisecond(got, want),
            (None, None) => true,
            _ => false,
        };
        assert!(
            backlog.pending == pending.len() as u64 && matches,
            "{SENTENCE}: {when}, {} events wait, the oldest recorded at {}, but backlog says {} pending, the \
             oldest at {}",
            pending.len(),
            oldest.map_or_else(|| "-".to_owned(), |at| at.to_string()),
            backlog.pending,
            backlog.oldest.map_or_else(|| "-".to_owned(), |at| RecordedAt::from_system_time(at).to_string())
        );
    };
    check(backlog(relay.as_mut()).await, &events, "with all five claimed and none marked");
    claim(relay.as_mut(), 2).await;
    mark(relay.as_mut()).await;
    check(backlog(relay.as_mut()).await, &events[2..], "with the two oldest marked");
    drain(relay.as_mut(), 100, payments.len()).await;
    check(backlog(relay.as_mut()).await, &[], "with every event marked");
}

// ---------------------------------------------------------------------------------------------
// Durable

pub(crate) async fn what_is_marked_published_stays_published_after_a_reopen(f: &Fixture) {
    const SENTENCE: &str = "sentence 6: what mark_published marked MUST never be handed out again, after a \
                            reopen too";
    let (store, mut first, payments) = saved_in_order(f, 20).await;
    let marked = claim(first.as_mut(), 10).await;
    mark(first.as_mut()).await;
    close(first).await;
    let store = f.reopen(store).await;
    let mut second = relay(store.as_ref()).await;
    let handed = drain(second.as_mut(), 100, payments.len()).await;
    assert_each_once(&format!("{SENTENCE} (after the first reopen)"), &handed, &payments[marked.len()..]);
    close(second).await;
    let store = f.reopen(store).await;
    let mut third = relay(store.as_ref()).await;
    let left = claim(third.as_mut(), 100).await;
    assert!(
        left.is_empty(),
        "{SENTENCE}: everything was marked, and after a second reopen claim handed out {}",
        some(ids(&left))
    );
}

pub(crate) async fn what_is_not_yet_marked_is_handed_out_again_after_a_reopen(f: &Fixture) {
    let (store, mut first, payments) = saved_in_order(f, 20).await;
    let held = claim(first.as_mut(), 10).await;
    // Dropped, not closed, as a crashed relay leaves it.
    drop(first);
    let store = f.reopen(store).await;
    let mut second = relay(store.as_ref()).await;
    let sentence = format!(
        "sentence 7: an event claimed and not marked MUST be handed out again after a reopen, and so must \
         those never claimed; {} were claimed before it",
        some(ids(&held))
    );
    let all =
        claim_until(second.as_mut(), payments.len(), &sentence, |batch| batch.len() == payments.len()).await;
    assert_same_events(
        "sentence 3: claim MUST hand out each event with the time it was recorded, the same on every handing out",
        &held,
        &all[..held.len()],
    );
    assert_each_once(&sentence, &all, &payments);
}

// ---------------------------------------------------------------------------------------------
// Shared

pub(crate) async fn relays_on_two_instances_never_hold_the_same_event_at_once(f: &Fixture) {
    const SENTENCE: &str = "sentence 4: while a handle holds a claim, no other handle MUST be handed any of its \
                            events";
    let (one, two) = (f.open().await, f.open().await);
    let (mut a, mut b) = (relay(one.as_ref()).await, relay(two.as_ref()).await);
    let payments: Vec<Payment> = (0..30).map(numbered).collect();
    for (i, payment) in payments.iter().enumerate() {
        let store = if i % 2 == 0 { &one } else { &two };
        save_in_order(store.as_ref(), std::slice::from_ref(payment)).await;
    }
    let mut handed = Vec::new();
    for (limit_a, limit_b) in [(10, 100), (5, 5), (100, 100)] {
        let held_a = claim(a.as_mut(), limit_a).await;
        let held_b = claim(b.as_mut(), limit_b).await;
        let both: BTreeSet<PaymentId> =
            ids(&held_a).into_iter().filter(|id| ids(&held_b).contains(id)).collect();
        assert!(
            both.is_empty(),
            "{SENTENCE}: relays on two instances were handed {} at the same time",
            some(&both)
        );
        mark(a.as_mut()).await;
        mark(b.as_mut()).await;
        handed.extend(held_a);
        handed.extend(held_b);
    }
    handed.extend(drain(a.as_mut(), 100, payments.len()).await);
    assert_each_once(
        "sentence 5: claiming and marking until empty MUST hand out every event",
        &handed,
        &payments,
    );
}

pub(crate) async fn relays_on_two_instances_publish_every_event_exactly_once_between_them(f: &Fixture) {
    const TASKS: usize = 8;
    const PER_TASK: usize = 100;
    let (one, two) = (f.open().await, f.open().await);
    let (a, b) = (relay(one.as_ref()).await, relay(two.as_ref()).await);
    let work = |task: usize| -> Vec<Payment> {
        (0..PER_TASK).map(|i| payment(&format!("two-{task:02}-{i:03}"), 1 + i as u64, "EUR")).collect()
    };
    let saved: Arc<BTreeMap<PaymentId, Payment>> =
        Arc::new((0..2 * TASKS).flat_map(work).map(|p| (p.id, p)).collect());
    let saving = Arc::new(AtomicBool::new(true));
    let relays = [a, b]
        .map(|handle| tokio::spawn(Relayed::default().run(handle, Arc::clone(&saving), Arc::clone(&saved))));
    let barrier = Arc::new(Barrier::new(2));
    let saves = [(&one, 0), (&two, TASKS)].map(|(store, first)| {
        let (store, barrier) = (Arc::clone(store), Arc::clone(&barrier));
        async move {
            barrier.wait().await;
            save_concurrently(&store, TASKS, |task| work(first + task)).await
        }
    });
    let outcomes: Vec<_> = join_all(saves).await.into_iter().flatten().collect();
    saving.store(false, Ordering::Release);
    assert!(outcomes.iter().all(|(_, o)| o.is_new()), "every payment of the case is new");
    let mut done = Vec::new();
    for relay in relays {
        done.push(relay.await.unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic())));
    }
    // Both drain, taking turns, until neither is handed anything.
    loop {
        let mut any = 0;
        for (relayed, handle) in &mut done {
            any += relayed.round(handle.as_mut(), 50, &saved).await;
        }
        if any == 0 {
            break;
        }
    }
    let mut times: BTreeMap<PaymentId, usize> = BTreeMap::new();
    for (relayed, _) in &done {
        assert!(
            relayed.wrong.is_empty(),
            "sentence 3: events must carry their payments: {:?}",
            relayed.wrong
        );
        for (id, n) in &relayed.handed {
            *times.entry(*id).or_default() += n;
        }
    }
    let never: Vec<PaymentId> = saved.keys().filter(|id| !times.contains_key(id)).copied().collect();
    let twice: Vec<PaymentId> = times.iter().filter(|(_, n)| **n > 1).map(|(id, _)| *id).collect();
    assert!(
        never.is_empty() && twice.is_empty(),
        "sentences 4 to 6: two relays on two instances that each mark what they claim MUST publish every \
         event exactly once between them; of {} events, {} were never handed out {}, {} more than once {}",
        saved.len(),
        never.len(),
        some(&never),
        twice.len(),
        some(&twice)
    );
}

pub(crate) async fn a_relay_dropped_mid_claim_leaves_its_events_to_the_other_relay(f: &Fixture) {
    let (one, two) = (f.open().await, f.open().await);
    let (mut a, mut b) = (relay(one.as_ref()).await, relay(two.as_ref()).await);
    let payments: Vec<Payment> = (0..20).map(numbered).collect();
    save_in_order(one.as_ref(), &payments).await;
    let held = claim(a.as_mut(), 10).await;
    let mut handed = drain(b.as_mut(), 100, payments.len()).await;
    drop(a);
    let sentence = format!(
        "sentence 7: an event claimed and not marked MUST be handed out again to the next claim once its \
         holder is dropped, by any handle; {} were held by the relay dropped on the other instance",
        some(ids(&held))
    );
    let back =
        claim_until(b.as_mut(), 100, &sentence, |batch| ids(&held).iter().all(|id| ids(batch).contains(id)))
            .await;
    assert_same_events(&sentence, &held, &back);
    mark(b.as_mut()).await;
    handed.extend(back);
    handed.extend(drain(b.as_mut(), 100, payments.len()).await);
    assert_each_once(&sentence, &handed, &payments);
}
