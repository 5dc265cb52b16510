//! The source cases, each named after the sentence of the source contract it checks.
//!
//! Every wait is bounded: a case waits at most three redelivery timeouts (plus a margin) for what
//! must come, watches two for what must not, and takes at most a fixed number of deliveries, so a
//! source that loses a message fails, and a source that redelivers forever fails too, by name,
//! instead of hanging the run.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use payments_ports::{Delivery, DeliverySource, Payload, error_chain};

use crate::source::{SourceCapability, SourceFixture};

type CaseFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// One case of the source suite.
#[derive(Clone, Copy)]
pub struct SourceCase {
    /// The contract sentence it checks, in snake case; the test's name.
    pub name: &'static str,
    /// The capabilities it needs.
    pub needs: &'static [SourceCapability],
    pub(crate) run: for<'a> fn(&'a SourceFixture) -> CaseFuture<'a>,
}

impl std::fmt::Debug for SourceCase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceCase").field("name", &self.name).field("needs", &self.needs).finish()
    }
}

macro_rules! source_cases {
    ($($name:ident $(needs $($capability:ident),+)?);* $(;)?) => {
        /// Every case of the source suite, in the order they are reported.
        pub fn all_source_cases() -> Vec<SourceCase> {
            vec![$(SourceCase {
                name: stringify!($name),
                needs: &[$($(SourceCapability::$capability),+)?],
                run: |fixture| Box::pin($name(fixture)),
            }),*]
        }
    };
}

source_cases! {
    every_published_message_is_delivered_with_its_bytes_unchanged;
    every_byte_value_survives needs BinarySafe;
    a_message_over_the_size_limit_is_delivered_as_too_large;
    attempt_is_one_on_a_first_delivery;
    an_acknowledged_message_is_not_delivered_again;
    a_dropped_next_loses_nothing;
    many_messages_are_each_delivered;
    a_dropped_receipt_is_delivered_again_with_a_higher_attempt needs RedeliversDropped;
    attempts_grow_with_each_redelivery needs RedeliversDropped, ExactAttempts;
    a_crashed_source_loses_nothing_another_consumer_receives_what_it_held needs Groups;
    a_source_opened_again_under_the_same_identity_gets_its_unacknowledged_messages_back needs Resumes;
    sources_in_one_group_split_the_messages_with_none_lost needs Groups;
    sources_in_different_groups_each_receive_every_message needs Groups;
    deliveries_in_flight_never_exceed_the_declared_bound needs InFlightBound;
    a_renewed_lease_keeps_the_delivery_from_other_consumers needs Groups, Leases;
    a_killed_connection_is_survived_and_loses_nothing needs KillConnections;
    creating_the_group_and_the_destination_again_is_harmless needs Groups;
    an_acknowledgement_after_the_redelivery_timeout_is_harmless needs Groups, Leases;
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// How long a case waits for what must come: three redelivery timeouts, plus a margin for a slow
/// machine (five more, up to ten seconds).
fn patience(f: &SourceFixture) -> Duration {
    let timeout = f.redelivery_timeout();
    timeout * 3 + (timeout * 5).min(Duration::from_secs(10))
}

/// How long a case watches for what must not come: two redelivery timeouts.
fn vigil(f: &SourceFixture) -> Duration {
    f.redelivery_timeout() * 2
}

/// Takes up to `n` deliveries, waiting at most `within` in all; stops early when the source is
/// exhausted. An unavailable source is asked again; a failed one fails the case.
async fn take(source: &mut dyn DeliverySource, n: usize, within: Duration) -> Vec<Delivery> {
    let deadline = Instant::now() + within;
    let mut taken = Vec::new();
    while taken.len() < n {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else { break };
        match tokio::time::timeout(left, source.next()).await {
            Err(_) | Ok(Ok(None)) => break,
            Ok(Ok(Some(delivery))) => taken.push(delivery),
            // Allowed (sentence 11): the case asks again, as the consumer would.
            Ok(Err(err)) if err.is_unavailable() => tokio::time::sleep(Duration::from_millis(50)).await,
            Ok(Err(err)) => panic!("the source failed instead of delivering: {}", error_chain(&err)),
        }
    }
    taken
}

/// Takes up to `n` deliveries as [`take`] does, acknowledging each as it comes (so that a source
/// with an in-flight bound keeps delivering); returns each one's payload and attempt.
async fn take_acked(source: &mut dyn DeliverySource, n: usize, within: Duration) -> Vec<(Payload, u32)> {
    let deadline = Instant::now() + within;
    let mut taken = Vec::new();
    while taken.len() < n {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else { break };
        let Some(delivery) = take(source, 1, left).await.pop() else { break };
        taken.push((delivery.payload, delivery.attempt));
        delivery.receipt.ack();
    }
    taken
}

/// The bodies of whole payloads, counted.
fn tally_payloads<'a>(payloads: impl IntoIterator<Item = &'a (Payload, u32)>) -> BTreeMap<Bytes, usize> {
    let mut counts = BTreeMap::new();
    for (payload, _) in payloads {
        let Payload::Complete(body) = payload else {
            panic!("a message within the size limit must be delivered whole, got {payload:?}")
        };
        *counts.entry(body.clone()).or_insert(0) += 1;
    }
    counts
}

/// The body of a delivery that must be whole.
fn body(delivery: &Delivery) -> Bytes {
    match &delivery.payload {
        Payload::Complete(body) => body.clone(),
        other => panic!("a message within the size limit must be delivered whole, got {other:?}"),
    }
}

/// `count` small, distinct messages, `<prefix>-00000` and on.
fn numbered(prefix: &str, count: usize) -> Vec<Bytes> {
    (0..count).map(|i| Bytes::from(format!("{prefix}-{i:05}"))).collect()
}

/// How often each body was delivered.
fn tally<'a>(deliveries: impl IntoIterator<Item = &'a Delivery>) -> BTreeMap<Bytes, usize> {
    let mut counts = BTreeMap::new();
    for delivery in deliveries {
        *counts.entry(body(delivery)).or_insert(0) += 1;
    }
    counts
}

fn shown(bodies: impl IntoIterator<Item = Bytes>) -> Vec<String> {
    bodies.into_iter().map(|b| String::from_utf8_lossy(&b[..b.len().min(40)]).into_owned()).collect()
}

fn ack_all(deliveries: Vec<Delivery>) {
    for delivery in deliveries {
        delivery.receipt.ack();
    }
}

async fn close(mut source: Box<dyn DeliverySource>) {
    if let Err(err) = source.close().await {
        panic!("closing the source failed: {}", error_chain(&err));
    }
}

/// Takes (and acknowledges) until every one of `wanted` has been delivered, or `within` has passed,
/// taking at most `limit` deliveries; returns how often each body came.
async fn take_until_all(
    source: &mut dyn DeliverySource,
    wanted: &BTreeSet<Bytes>,
    within: Duration,
    limit: usize,
) -> BTreeMap<Bytes, usize> {
    let deadline = Instant::now() + within;
    let mut seen: BTreeMap<Bytes, usize> = BTreeMap::new();
    let mut outstanding = wanted.clone();
    let mut taken = 0;
    while taken < limit && !outstanding.is_empty() {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else { break };
        let Some(delivery) = take(source, 1, left).await.pop() else { break };
        taken += 1;
        let body = body(&delivery);
        outstanding.remove(&body);
        *seen.entry(body).or_insert(0) += 1;
        delivery.receipt.ack();
    }
    seen
}

fn missing(wanted: &BTreeSet<Bytes>, seen: &BTreeMap<Bytes, usize>) -> Vec<String> {
    shown(wanted.iter().filter(|w| !seen.contains_key(*w)).cloned())
}

// ---------------------------------------------------------------------------------------------
// Delivering

async fn every_published_message_is_delivered_with_its_bytes_unchanged(f: &SourceFixture) {
    let mut messages = numbered("m", 100);
    messages.push(Bytes::new());
    messages.push(Bytes::from_static(b"\xff\xfe\x00 not UTF-8 \x80\xc3"));
    // Every byte value but the newline, which a line-framed source cannot carry.
    messages.push((0u8..=255).filter(|&b| b != b'\n').collect::<Vec<u8>>().into());
    messages.push(Bytes::from(vec![b'x'; 1 << 20]));
    f.publish(messages.clone()).await;
    let mut source = f.open("group", "consumer").await;
    let got = take_acked(&mut *source, messages.len(), patience(f)).await;
    let extra = take(&mut *source, 1, vigil(f)).await;
    let expected = tally_bytes(&messages);
    let delivered = tally_payloads(&got);
    let lost: Vec<Bytes> = expected.keys().filter(|m| !delivered.contains_key(*m)).cloned().collect();
    assert!(
        lost.is_empty(),
        "every published message must be delivered; {} never came: {:?}",
        lost.len(),
        shown(lost)
    );
    let altered: Vec<Bytes> = delivered.keys().filter(|m| !expected.contains_key(*m)).cloned().collect();
    assert!(
        altered.is_empty(),
        "bytes must arrive unchanged; delivered but never published: {:?}",
        shown(altered)
    );
    assert!(extra.is_empty(), "each message must be delivered once in a calm run, yet one came again");
    close(source).await;
}

fn tally_bytes(messages: &[Bytes]) -> BTreeMap<Bytes, usize> {
    let mut counts = BTreeMap::new();
    for message in messages {
        *counts.entry(message.clone()).or_insert(0) += 1;
    }
    counts
}

async fn every_byte_value_survives(f: &SourceFixture) {
    let messages: Vec<Bytes> = vec![
        (0u8..=255).collect::<Vec<u8>>().into(),
        Bytes::from_static(b"\n"),
        Bytes::from_static(b"a\r\nb\n"),
    ];
    f.publish(messages.clone()).await;
    let mut source = f.open("group", "consumer").await;
    let got = take_acked(&mut *source, messages.len(), patience(f)).await;
    assert_eq!(
        tally_payloads(&got),
        tally_bytes(&messages),
        "every byte value, newlines included, must arrive unchanged"
    );
    close(source).await;
}

async fn a_message_over_the_size_limit_is_delivered_as_too_large(f: &SourceFixture) {
    let big = Bytes::from(vec![b'y'; 5000]);
    f.publish(vec![big.clone(), Bytes::from_static(b"small")]).await;
    let mut source = f.open_limited("group", "consumer", 1000).await;
    let got = take(&mut *source, 2, patience(f)).await;
    assert_eq!(got.len(), 2, "a message over the limit must still be delivered, never dropped");
    let mut sizes = Vec::new();
    for delivery in &got {
        match &delivery.payload {
            Payload::TooLarge { len, limit, head } => {
                assert_eq!(
                    (*len, *limit),
                    (5000, 1000),
                    "a message over the limit must say its length and the limit"
                );
                assert!(
                    !head.is_empty() && head.len() <= 1024,
                    "the head must be a few bytes, got {}",
                    head.len()
                );
                assert!(big.starts_with(head), "the head must be the message's first bytes");
                sizes.push("too large");
            }
            Payload::Complete(body) => {
                assert_eq!(&body[..], b"small", "a message within the limit must be whole");
                sizes.push("whole");
            }
            other => panic!("expected a whole message and a too large one, got {other:?}"),
        }
    }
    sizes.sort_unstable();
    assert_eq!(sizes, ["too large", "whole"]);
    ack_all(got);
    close(source).await;
}

async fn attempt_is_one_on_a_first_delivery(f: &SourceFixture) {
    f.publish(numbered("a", 10)).await;
    let mut source = f.open("group", "consumer").await;
    let got = take_acked(&mut *source, 10, patience(f)).await;
    assert_eq!(got.len(), 10, "every message must be delivered");
    let attempts: Vec<u32> = got.iter().map(|(_, attempt)| *attempt).collect();
    assert!(attempts.iter().all(|&a| a == 1), "a first delivery must say attempt 1: {attempts:?}");
    close(source).await;
}

async fn an_acknowledged_message_is_not_delivered_again(f: &SourceFixture) {
    f.publish(numbered("k", 20)).await;
    let mut source = f.open("group", "first").await;
    let got = take_acked(&mut *source, 20, patience(f)).await;
    assert_eq!(got.len(), 20, "every message must be delivered");
    let again = take(&mut *source, 1, vigil(f)).await;
    assert!(
        again.is_empty(),
        "an acknowledged message must not come again: {:?}",
        shown(again.iter().map(body))
    );
    close(source).await;
    let capabilities = f.capabilities();
    // Closing sends every acknowledgement: no source of the group sees them again.
    let mut others = Vec::new();
    if capabilities.groups {
        others.push(f.open("group", "second").await);
    }
    if capabilities.resumes {
        others.push(f.open("group", "first").await);
    }
    for mut other in others {
        let again = take(&mut *other, 1, vigil(f)).await;
        assert!(
            again.is_empty(),
            "acknowledged before close, so never delivered again, yet came: {:?}",
            shown(again.iter().map(body))
        );
        close(other).await;
    }
}

async fn a_dropped_next_loses_nothing(f: &SourceFixture) {
    let messages = numbered("n", 30);
    let wanted: BTreeSet<Bytes> = messages.iter().cloned().collect();
    f.publish(messages).await;
    let mut source = f.open("group", "consumer").await;
    let mut seen: BTreeMap<Bytes, usize> = BTreeMap::new();
    // Reads cut short again and again: whatever they had taken must still come.
    for _ in 0..30 {
        if let Ok(Ok(Some(delivery))) = tokio::time::timeout(Duration::from_micros(200), source.next()).await
        {
            *seen.entry(body(&delivery)).or_insert(0) += 1;
            delivery.receipt.ack();
        }
    }
    let rest = take_until_all(&mut *source, &wanted, patience(f), 200).await;
    for (body, count) in rest {
        *seen.entry(body).or_insert(0) += count;
    }
    let lost = missing(&wanted, &seen);
    assert!(lost.is_empty(), "reads dropped half-way must lose nothing; never came: {lost:?}");
    close(source).await;
}

async fn many_messages_are_each_delivered(f: &SourceFixture) {
    const MESSAGES: usize = 20_000;
    let messages = numbered("v", MESSAGES);
    for chunk in messages.chunks(2000) {
        f.publish(chunk.to_vec()).await;
    }
    let wanted: BTreeSet<Bytes> = messages.into_iter().collect();
    let mut source = f.open("group", "consumer").await;
    let started = Instant::now();
    let seen =
        take_until_all(&mut *source, &wanted, patience(f) + Duration::from_secs(60), MESSAGES * 2).await;
    let lost = missing(&wanted, &seen);
    assert!(
        lost.is_empty(),
        "{} of {MESSAGES} messages never came, such as {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    let twice = seen.values().filter(|&&n| n > 1).count();
    assert_eq!(twice, 0, "in a calm run of {MESSAGES} acknowledged messages, none may come twice");
    assert!(started.elapsed() < patience(f) + Duration::from_secs(60));
    close(source).await;
}

// ---------------------------------------------------------------------------------------------
// Redelivering

async fn a_dropped_receipt_is_delivered_again_with_a_higher_attempt(f: &SourceFixture) {
    f.publish(numbered("d", 4)).await;
    let mut source = f.open("group", "consumer").await;
    let mut got = take(&mut *source, 4, patience(f)).await;
    assert_eq!(got.len(), 4, "every message must be delivered");
    let dropped: Vec<Delivery> = got.split_off(2);
    let first_attempts: BTreeMap<Bytes, u32> = dropped.iter().map(|d| (body(d), d.attempt)).collect();
    ack_all(got);
    drop(dropped);
    let wanted: BTreeSet<Bytes> = first_attempts.keys().cloned().collect();
    let again = take(&mut *source, 2, patience(f)).await;
    let bodies: BTreeSet<Bytes> = again.iter().map(body).collect();
    assert_eq!(bodies, wanted, "the messages of dropped receipts must come back within {:?}", patience(f));
    for delivery in &again {
        let before = first_attempts[&body(delivery)];
        assert!(
            delivery.attempt > before,
            "a redelivery must say a higher attempt: {before} then {}",
            delivery.attempt
        );
    }
    ack_all(again);
    let more = take(&mut *source, 1, vigil(f)).await;
    assert!(more.is_empty(), "nothing acknowledged may come again: {:?}", shown(more.iter().map(body)));
    close(source).await;
}

async fn attempts_grow_with_each_redelivery(f: &SourceFixture) {
    f.publish(vec![Bytes::from_static(b"again and again")]).await;
    let mut source = f.open("group", "consumer").await;
    for expected in 1..=3 {
        let got = take(&mut *source, 1, patience(f)).await;
        assert_eq!(got.len(), 1, "delivery number {expected} must come");
        assert_eq!(got[0].attempt, expected, "delivery number {expected} must say attempt {expected}");
        drop(got);
    }
    let last = take(&mut *source, 1, patience(f)).await;
    assert_eq!(last.iter().map(|d| d.attempt).collect::<Vec<_>>(), [4]);
    ack_all(last);
    close(source).await;
}

async fn a_crashed_source_loses_nothing_another_consumer_receives_what_it_held(f: &SourceFixture) {
    let messages = numbered("c", 20);
    f.publish(messages.clone()).await;
    let mut crashing = f.open("group", "crashing").await;
    let mut held = take(&mut *crashing, 5, patience(f)).await;
    assert!(!held.is_empty(), "the first source must get messages");
    let acknowledged = held.len().min(2);
    let acked: BTreeSet<Bytes> = held
        .drain(..acknowledged)
        .map(|d| {
            let body = body(&d);
            d.receipt.ack();
            body
        })
        .collect();
    // The crash: the source goes first, then what it held, and nothing is closed or flushed.
    drop(crashing);
    drop(held);
    let wanted: BTreeSet<Bytes> = messages.into_iter().filter(|m| !acked.contains(m)).collect();
    let mut survivor = f.open("group", "survivor").await;
    let seen = take_until_all(&mut *survivor, &wanted, patience(f), 100).await;
    let lost = missing(&wanted, &seen);
    assert!(
        lost.is_empty(),
        "a crashed source must lose nothing: another consumer must receive what it held or never took within {:?}; lost: {lost:?}",
        patience(f)
    );
    close(survivor).await;
}

async fn a_source_opened_again_under_the_same_identity_gets_its_unacknowledged_messages_back(
    f: &SourceFixture,
) {
    f.publish(numbered("r", 5)).await;
    let mut source = f.open("group", "same").await;
    let mut got = take(&mut *source, 5, patience(f)).await;
    assert_eq!(got.len(), 5, "every message must be delivered");
    let unacked: Vec<Delivery> = got.split_off(2);
    let wanted: BTreeSet<Bytes> = unacked.iter().map(body).collect();
    ack_all(got);
    drop(unacked);
    close(source).await;
    let mut again = f.open("group", "same").await;
    let seen = take_until_all(&mut *again, &wanted, patience(f), 50).await;
    let lost = missing(&wanted, &seen);
    assert!(
        lost.is_empty(),
        "the same identity must get its unacknowledged messages back; never came: {lost:?}"
    );
    let extra: Vec<Bytes> = seen.keys().filter(|b| !wanted.contains(*b)).cloned().collect();
    assert!(extra.is_empty(), "acknowledged before close, yet came again: {:?}", shown(extra));
    close(again).await;
}

// ---------------------------------------------------------------------------------------------
// Sharing

async fn sources_in_one_group_split_the_messages_with_none_lost(f: &SourceFixture) {
    let messages = numbered("s", 100);
    let wanted: BTreeSet<Bytes> = messages.iter().cloned().collect();
    f.publish(messages).await;
    let seen: Arc<Mutex<Vec<(usize, Bytes)>>> = Arc::default();
    let deadline = Instant::now() + patience(f);
    let readers = (0..2).map(|reader| {
        let (seen, wanted) = (Arc::clone(&seen), wanted.clone());
        let opening = f.open("group", if reader == 0 { "left" } else { "right" });
        async move {
            let mut source = opening.await;
            loop {
                let done = {
                    let seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
                    seen.iter().map(|(_, b)| b).collect::<BTreeSet<_>>().len() == wanted.len()
                };
                let Some(left) = deadline.checked_duration_since(Instant::now()) else { break };
                if done {
                    break;
                }
                let batch = take_acked(&mut *source, 1, left.min(Duration::from_millis(500))).await;
                let bodies = tally_payloads(&batch).into_keys().map(|body| (reader, body));
                seen.lock().unwrap_or_else(PoisonError::into_inner).extend(bodies);
            }
            close(source).await;
        }
    });
    futures::future::join_all(readers).await;
    let seen = seen.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let mut counts: BTreeMap<Bytes, usize> = BTreeMap::new();
    for (_, body) in &seen {
        *counts.entry(body.clone()).or_insert(0) += 1;
    }
    let lost = missing(&wanted, &counts);
    assert!(lost.is_empty(), "sources in one group must lose nothing between them; never came: {lost:?}");
    let both: Vec<Bytes> = counts.iter().filter(|(_, n)| **n > 1).map(|(b, _)| b.clone()).collect();
    assert!(
        both.is_empty(),
        "sources in one group split the messages: none may go to both, yet {:?} did",
        shown(both)
    );
}

async fn sources_in_different_groups_each_receive_every_message(f: &SourceFixture) {
    let messages = numbered("g", 30);
    let wanted: BTreeSet<Bytes> = messages.iter().cloned().collect();
    f.publish(messages).await;
    for group in ["one", "two"] {
        let mut source = f.open(group, "consumer").await;
        let seen = take_until_all(&mut *source, &wanted, patience(f), 100).await;
        let lost = missing(&wanted, &seen);
        assert!(lost.is_empty(), "group {group} must receive every message; never came: {lost:?}");
        close(source).await;
    }
}

async fn deliveries_in_flight_never_exceed_the_declared_bound(f: &SourceFixture) {
    let Some(bound) = f.capabilities().in_flight_bound else { panic!("needs an in-flight bound") };
    f.publish(numbered("b", bound + 5)).await;
    let mut source = f.open("group", "consumer").await;
    let held = take(&mut *source, bound + 5, f.redelivery_timeout().min(Duration::from_secs(3))).await;
    assert!(!held.is_empty(), "messages must be delivered");
    assert!(
        held.len() <= bound,
        "{} deliveries in flight at once, over the declared bound of {bound}",
        held.len()
    );
    let mut held = held;
    held.remove(0).receipt.ack();
    let next = take(&mut *source, 1, patience(f)).await;
    assert_eq!(next.len(), 1, "settling one delivery must let the next one come");
    ack_all(held);
    ack_all(next);
    close(source).await;
}

async fn a_renewed_lease_keeps_the_delivery_from_other_consumers(f: &SourceFixture) {
    f.publish(vec![Bytes::from_static(b"leased")]).await;
    let mut holder = f.open("group", "holder").await;
    let got = take(&mut *holder, 1, patience(f)).await;
    assert_eq!(got.len(), 1, "the message must be delivered");
    let lease =
        got[0].receipt.lease().unwrap_or_else(|| panic!("a source with leases must give its receipts one"));
    let mut other = f.open("group", "other").await;
    let hold_for = (lease * 5 / 2).max(vigil(f));
    let started = Instant::now();
    while started.elapsed() < hold_for {
        got[0].receipt.renew();
        let stolen = take(&mut *other, 1, (lease / 4).max(Duration::from_millis(10))).await;
        assert!(
            stolen.is_empty(),
            "a delivery whose lease is renewed must not go to another consumer, yet it did after {:?}",
            started.elapsed()
        );
    }
    ack_all(got);
    close(holder).await;
    let late = take(&mut *other, 1, vigil(f)).await;
    assert!(late.is_empty(), "acknowledged, so never delivered again");
    close(other).await;
}

// ---------------------------------------------------------------------------------------------
// Failing

async fn a_killed_connection_is_survived_and_loses_nothing(f: &SourceFixture) {
    let messages = numbered("x", 40);
    let wanted: BTreeSet<Bytes> = messages.iter().cloned().collect();
    f.publish(messages).await;
    let mut source = f.open("group", "consumer").await;
    let mut first = take(&mut *source, 4, patience(f)).await;
    assert!(!first.is_empty(), "messages must be delivered before the kill");
    let mut seen: BTreeMap<Bytes, usize> = tally(&first);
    let before: Vec<Delivery> = first.split_off(first.len() / 2);
    ack_all(first);
    f.kill_connections().await;
    // Acknowledged on the old connection: harmless, at worst lost (the message then comes again).
    ack_all(before);
    let rest = take_until_all(&mut *source, &wanted, patience(f), 200).await;
    for (body, count) in rest {
        *seen.entry(body).or_insert(0) += count;
    }
    let lost = missing(&wanted, &seen);
    assert!(lost.is_empty(), "a killed connection must lose nothing; never came: {lost:?}");
    close(source).await;
}

async fn creating_the_group_and_the_destination_again_is_harmless(f: &SourceFixture) {
    f.publish(numbered("first", 10)).await;
    let mut source = f.open("group", "consumer").await;
    let got = take_acked(&mut *source, 10, patience(f)).await;
    assert_eq!(got.len(), 10, "every message must be delivered");
    close(source).await;
    // Opening creates the group (and the destination) if missing; doing it again must not reset
    // what the group has acknowledged, nor fail.
    let mut again = f.open("group", "consumer").await;
    let replayed = take(&mut *again, 1, vigil(f)).await;
    assert!(
        replayed.is_empty(),
        "opening again must not deliver acknowledged messages again: {:?}",
        shown(replayed.iter().map(body))
    );
    let later = numbered("later", 5);
    f.publish(later.clone()).await;
    let got = take_acked(&mut *again, 5, patience(f)).await;
    assert_eq!(
        tally_payloads(&got),
        tally_bytes(&later),
        "after opening again, new messages must come, and only those"
    );
    close(again).await;
}

async fn an_acknowledgement_after_the_redelivery_timeout_is_harmless(f: &SourceFixture) {
    f.publish(vec![Bytes::from_static(b"slow")]).await;
    let mut slow = f.open("group", "slow").await;
    let held = take(&mut *slow, 1, patience(f)).await;
    assert_eq!(held.len(), 1, "the message must be delivered");
    // Held silently past its lease: another consumer gets it.
    let mut other = f.open("group", "other").await;
    let taken_over = take(&mut *other, 1, patience(f)).await;
    assert_eq!(taken_over.len(), 1, "a delivery held silently past its lease must go to another consumer");
    assert_eq!(body(&taken_over[0]), body(&held[0]));
    // The late acknowledgement is harmless: nothing fails, and nothing is lost.
    ack_all(held);
    ack_all(taken_over);
    close(slow).await;
    close(other).await;
    let mut after = f.open("group", "after").await;
    let again = take(&mut *after, 1, vigil(f)).await;
    assert!(again.is_empty(), "acknowledged twice, so never delivered again");
    close(after).await;
}
