//! An in-process at-least-once broker: it keeps every message until it is acknowledged, brings
//! back unacknowledged ones after a visibility timeout, sometimes delivers one twice at once,
//! delivers in random order, and loses acknowledgements when the consumer "crashes".

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use payments_ports::{Delivery, DeliverySource, Payload, Receipt, SourceError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Notify;
use tokio::time::Instant;

/// How the broker misbehaves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Faults {
    /// The chance that a delivery is handed out twice at once (two receipts, one message).
    pub duplicate_rate: f64,
    /// The chance that the consumer crashes after handling a delivery, before its
    /// acknowledgement reaches the broker.
    pub crash_rate: f64,
    /// How long an unacknowledged message stays invisible before it is delivered again.
    pub visibility_timeout: Duration,
}

/// What the broker counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BrokerStats {
    /// Deliveries handed out, duplicates and redeliveries included.
    pub deliveries: u64,
    /// Deliveries of a message that had been delivered before.
    pub redeliveries: u64,
    /// Deliveries handed out twice at once.
    pub concurrent_duplicates: u64,
    /// Acknowledgements lost to a crash.
    pub crashes: u64,
}

struct Message {
    payload: Bytes,
    acked: bool,
    deliveries: u32,
}

struct State {
    messages: Vec<Message>,
    /// Messages ready to be delivered, in no particular order.
    ready: Vec<usize>,
    /// Unacknowledged messages waiting out their visibility timeout.
    invisible: VecDeque<(Instant, usize)>,
    /// A message to hand out again right away: the second half of a duplicate delivery.
    twin: Option<usize>,
    unacked: usize,
    rng: StdRng,
    stats: BrokerStats,
}

/// The broker: shared by its sources (one per consumer run) and the receipts it hands out.
#[derive(Clone)]
pub struct Broker {
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    faults: Faults,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("faults", &self.faults).finish_non_exhaustive()
    }
}

impl Broker {
    /// A broker holding `payloads`, misbehaving as `faults` say, with its randomness from `seed`.
    pub fn new(payloads: Vec<Bytes>, faults: Faults, seed: u64) -> Self {
        let count = payloads.len();
        let messages =
            payloads.into_iter().map(|payload| Message { payload, acked: false, deliveries: 0 }).collect();
        let state = State {
            messages,
            ready: (0..count).collect(),
            invisible: VecDeque::new(),
            twin: None,
            unacked: count,
            rng: StdRng::seed_from_u64(seed),
            stats: BrokerStats::default(),
        };
        Self { state: Arc::new(Mutex::new(state)), changed: Arc::new(Notify::new()), faults }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent before anything can panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A source for one consumer run. Its [`BrokerSource::crashed`] fires when a delivery it
    /// handed out simulates a crash, so that a crash of one run never tears down the next.
    pub fn source(&self) -> BrokerSource {
        BrokerSource { broker: self.clone(), crashed: Arc::new(Notify::new()) }
    }

    /// Whether every message has been acknowledged.
    pub fn all_acknowledged(&self) -> bool {
        self.state().unacked == 0
    }

    /// What happened so far.
    pub fn stats(&self) -> BrokerStats {
        self.state().stats
    }

    /// Hands out the next delivery, or `None` once every message is acknowledged.
    async fn next(&self, crashed: &Arc<Notify>) -> Option<Delivery> {
        loop {
            // Register for a wake-up before looking, so that a change in between is not missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wait_until = {
                let mut state = self.state();
                if state.unacked == 0 {
                    return None;
                }
                let now = Instant::now();
                while state.invisible.front().is_some_and(|(at, _)| *at <= now) {
                    if let Some((_, message)) = state.invisible.pop_front()
                        && !state.messages[message].acked
                    {
                        state.ready.push(message);
                    }
                }
                if let Some(message) = state.twin.take() {
                    state.stats.concurrent_duplicates += 1;
                    return Some(self.deliver(&mut state, message, crashed));
                }
                if !state.ready.is_empty() {
                    // Random order: any ready message may come next.
                    let ready = state.ready.len();
                    let pick = state.rng.random_range(0..ready);
                    let message = state.ready.swap_remove(pick);
                    if state.rng.random_bool(self.faults.duplicate_rate) {
                        state.twin = Some(message);
                    }
                    return Some(self.deliver(&mut state, message, crashed));
                }
                state.invisible.front().map(|(at, _)| *at)
            };
            match wait_until {
                Some(at) => {
                    tokio::select! {
                        () = &mut changed => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
                None => changed.await,
            }
        }
    }

    fn deliver(&self, state: &mut State, message: usize, crashed: &Arc<Notify>) -> Delivery {
        let entry = &mut state.messages[message];
        entry.deliveries += 1;
        let attempt = entry.deliveries;
        let payload = Payload::Complete(entry.payload.clone());
        state.stats.deliveries += 1;
        if attempt > 1 {
            state.stats.redeliveries += 1;
        }
        let crashes = state.rng.random_bool(self.faults.crash_rate);
        Delivery {
            payload,
            attempt,
            receipt: Box::new(BrokerReceipt {
                broker: self.clone(),
                message,
                crashes: crashes.then(|| Arc::clone(crashed)),
                settled: false,
            }),
        }
    }

    /// A receipt was dropped without an acknowledgement: the message becomes visible again later.
    fn unacknowledged(&self, message: usize) {
        let mut state = self.state();
        if !state.messages[message].acked {
            let at = Instant::now() + self.faults.visibility_timeout;
            state.invisible.push_back((at, message));
        }
        drop(state);
        self.changed.notify_waiters();
    }

    fn acknowledge(&self, message: usize) {
        let mut state = self.state();
        if !std::mem::replace(&mut state.messages[message].acked, true) {
            state.unacked -= 1;
        }
        drop(state);
        self.changed.notify_waiters();
    }
}

/// One consumer run's view of the broker.
#[derive(Debug)]
pub struct BrokerSource {
    broker: Broker,
    crashed: Arc<Notify>,
}

impl BrokerSource {
    /// Fires when a delivery of this source simulates a crash of its consumer.
    pub fn crashed(&self) -> Arc<Notify> {
        Arc::clone(&self.crashed)
    }
}

#[async_trait]
impl DeliverySource for BrokerSource {
    async fn next(&mut self) -> Result<Option<Delivery>, SourceError> {
        Ok(self.broker.next(&self.crashed).await)
    }
}

/// A delivery's receipt. Dropped unacknowledged, it makes the message come back.
struct BrokerReceipt {
    broker: Broker,
    message: usize,
    /// Whom to tell when the consumer "crashes" as it tries to acknowledge this delivery.
    crashes: Option<Arc<Notify>>,
    settled: bool,
}

impl std::fmt::Debug for BrokerReceipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerReceipt").field("message", &self.message).finish_non_exhaustive()
    }
}

impl Receipt for BrokerReceipt {
    fn origin(&self) -> String {
        format!("message {}", self.message)
    }

    fn ack(mut self: Box<Self>) {
        if let Some(crashed) = &self.crashes {
            // The effect is done, and the consumer dies before the acknowledgement leaves: the
            // message stays unacknowledged (Drop brings it back) and the run is torn down.
            self.broker.state().stats.crashes += 1;
            crashed.notify_one();
            return;
        }
        self.settled = true;
        self.broker.acknowledge(self.message);
    }
}

impl Drop for BrokerReceipt {
    fn drop(&mut self) {
        if !self.settled {
            self.broker.unacknowledged(self.message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal() -> Arc<Notify> {
        Arc::new(Notify::new())
    }

    fn broker(messages: usize, faults: Faults) -> Broker {
        let payloads = (0..messages).map(|i| Bytes::from(format!("m{i}"))).collect();
        Broker::new(payloads, faults, 7)
    }

    const CALM: Faults = Faults { duplicate_rate: 0.0, crash_rate: 0.0, visibility_timeout: Duration::ZERO };

    #[tokio::test]
    async fn keeps_a_message_until_it_is_acknowledged() {
        let broker = broker(1, CALM);
        let signal = signal();
        let first = broker.next(&signal).await.expect("one message");
        assert_eq!(first.attempt, 1);
        drop(first); // not acknowledged
        let again = broker.next(&signal).await.expect("delivered again");
        assert_eq!(again.attempt, 2);
        assert!(!broker.all_acknowledged());
        again.receipt.ack();
        assert!(broker.all_acknowledged());
        assert!(broker.next(&signal).await.is_none(), "exhausted once everything is acknowledged");
        assert_eq!(broker.stats().redeliveries, 1);
    }

    #[tokio::test]
    async fn delivers_everything_in_a_random_order() {
        let broker = broker(50, CALM);
        let signal = signal();
        let mut seen = Vec::new();
        while let Some(delivery) = broker.next(&signal).await {
            let Payload::Complete(body) = &delivery.payload else { panic!("complete payloads only") };
            seen.push(String::from_utf8_lossy(body).into_owned());
            delivery.receipt.ack();
        }
        let in_order: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
        assert_ne!(seen, in_order, "the order is shuffled");
        seen.sort();
        let mut sorted = in_order;
        sorted.sort();
        assert_eq!(seen, sorted, "every message exactly once when nothing fails");
    }

    #[tokio::test]
    async fn a_duplicate_delivery_hands_out_the_same_message_twice_at_once() {
        let broker = broker(20, Faults { duplicate_rate: 1.0, ..CALM });
        let signal = signal();
        let first = broker.next(&signal).await.expect("a delivery");
        let twin = broker.next(&signal).await.expect("its twin");
        assert_eq!(first.payload, twin.payload);
        first.receipt.ack();
        drop(twin); // unacknowledged, but its message is acknowledged already: it does not come back
        assert_eq!(broker.stats().concurrent_duplicates, 1);
    }

    #[tokio::test]
    async fn a_crash_loses_the_acknowledgement_and_the_message_comes_back() {
        let broker = broker(1, Faults { crash_rate: 1.0, ..CALM });
        let signal = signal();
        let delivery = broker.next(&signal).await.expect("a delivery");
        delivery.receipt.ack();
        assert_eq!(broker.stats().crashes, 1);
        assert!(!broker.all_acknowledged());
        assert_eq!(broker.next(&signal).await.expect("back again").attempt, 2);
    }
}
