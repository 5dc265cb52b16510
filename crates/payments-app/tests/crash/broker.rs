//! Crash torture against a real broker: the input is published to it, consumer processes read it
//! (several in one group on a store that several processes share, one at a time on the others),
//! are SIGKILLed at random moments and replaced (under new names where the broker names its
//! consumers: Redis; on NATS the group is one durable consumer, on RabbitMQ the queue itself). At
//! the end nothing may be pending on the broker, and the store and the dead letters are checked
//! against the input.
//!
//! A broker does not keep order: a payment held by a killed consumer comes back after its lease,
//! maybe after its conflicting version. So a conflict is checked as first-writer-wins on what the
//! store recorded: exactly one version recorded, the other dead-lettered with the recorded one as
//! stored.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::RandomState;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::{Input, Options, Progress, input, random, recorded};
use crate::support::app;

/// A broker the torture runs against: where to publish, how consumers read, where their dead
/// letters go, and what is left.
pub(crate) trait Broker {
    /// Its name, as `--source` says it.
    fn name(&self) -> &'static str;
    /// `publish --to`.
    fn target(&self) -> String;
    /// `consume --input` for the consumer called `consumer` (a broker whose consumers have no
    /// names of their own ignores it).
    fn input(&self, consumer: &str) -> String;
    /// `consume --dead-letter`.
    fn dead_letters(&self) -> String;
    /// Messages neither acknowledged nor delivered yet.
    fn outstanding(&self) -> Result<u64, String>;
    /// Every dead letter written: kind, payload, and for a conflict the stored and the incoming
    /// version's amounts, by payment ID.
    fn letters(&self) -> Result<Vec<Letter>, String>;
    /// Removes everything the torture made on the broker.
    fn remove(&self) -> Result<(), String>;
}

/// A dead letter, as the torture reads it back.
#[derive(Debug)]
pub(crate) struct Letter {
    pub(crate) kind: String,
    pub(crate) payload: Vec<u8>,
    /// For a conflict: (payment ID, stored amount, incoming amount).
    pub(crate) conflict: Option<(String, u64, u64)>,
}

impl Letter {
    /// A letter from its kind, its payload, and for a conflict both versions as `PaymentTaken`
    /// JSON.
    fn new(kind: String, payload: Vec<u8>, stored: Option<&[u8]>, incoming: Option<&[u8]>) -> Self {
        let version = |json: &[u8]| -> Option<(String, u64)> {
            let value: serde_json::Value = serde_json::from_slice(json).ok()?;
            Some((value["payment_id"].as_str()?.to_owned(), value["amount"].as_u64()?))
        };
        let conflict = match (stored.and_then(version), incoming.and_then(version)) {
            (Some((id, stored)), Some((_, incoming))) => Some((id, stored, incoming)),
            _ => None,
        };
        Self { kind, payload, conflict }
    }
}

/// Malformed lines mixed into the input, one every `INVALID_EVERY` lines.
const INVALID_EVERY: usize = 200;

/// Consumers running at once on a store several processes share.
const SHARED_CONSUMERS: usize = 3;

/// How long a consumer waits with nothing to do before it exits: well past the lease a killed
/// consumer's messages wait out, so that the living take them over first.
const IDLE_SECS: &str = "5";

pub(crate) fn torture(
    store: &str,
    shared: bool,
    dir: &Path,
    options: &Options,
    progress: &Progress<'_>,
    broker: &dyn Broker,
) -> Result<String, String> {
    let Input { mut lines, first, conflicting, .. } = input(options.payments);
    let mut invalid = BTreeSet::new();
    for (k, at) in (INVALID_EVERY / 2..lines.len()).step_by(INVALID_EVERY).enumerate() {
        let bad = format!(r#"{{"payment_id": "bad-{k}", "amount": -1, "currency": "EUR"}}"#);
        invalid.insert(bad.clone().into_bytes());
        lines.insert(at, bad);
    }
    let published = dir.join("published.jsonl");
    std::fs::write(&published, lines.join("\n") + "\n").map_err(|e| e.to_string())?;
    let output =
        app(dir, &["publish", "--to", &broker.target(), "--input", &published.display().to_string()])
            .output()
            .map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(format!("publish failed: {}", String::from_utf8_lossy(&output.stderr)));
    }

    let started = Instant::now();
    let state = RandomState::new();
    let mut counter = 0;
    let mut names = 0;
    let spawn = |names: &mut usize| -> Result<Child, String> {
        *names += 1;
        let input = broker.input(&format!("consumer-{names}"));
        app(
            dir,
            &[
                "consume",
                "--store",
                store,
                "--input",
                &input,
                "--dead-letter",
                &broker.dead_letters(),
                "--stop-when-idle",
                IDLE_SECS,
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())
    };
    let width = if shared { SHARED_CONSUMERS } else { 1 };
    let mut running: Vec<Child> = Vec::new();
    for _ in 0..width {
        running.push(spawn(&mut names)?);
    }
    // Kill at random moments, spread over the work: the window adapts to how fast it goes. Each
    // kill first waits until the consumers are at work again (the store grows): a consumer's
    // start-up (connecting, declaring its queue or consumer) and, on JetStream, the lease that
    // its predecessor's deliveries wait out can take longer than the window, and a kill then
    // would land on no work at all.
    let mut window = Duration::from_millis(100);
    let (mut kills, mut mid_work) = (0, 0);
    let mut last = 0;
    while kills < options.kills {
        let waited = at_work(progress, last, &mut running)?;
        let before = progress.now();
        let delay = window.mul_f64((random(&state, &mut counter) % 1000) as f64 / 1000.0);
        std::thread::sleep(delay);
        // The consumer that has run longest: it is past its start-up, so the kill lands mid-work.
        let mut child = running.remove(0);
        let still_running = child.try_wait().map_err(|e| e.to_string())?.is_none();
        let _ = child.kill(); // SIGKILL
        child.wait().map_err(|e| e.to_string())?;
        kills += 1;
        let now = progress.now();
        if still_running && now > before {
            mid_work += 1;
        }
        if now == before {
            window = (window * 2).min(Duration::from_secs(2));
        } else {
            window = (window * 3 / 4).max(Duration::from_millis(20));
        }
        last = now;
        running.push(spawn(&mut names)?);
        if std::env::var_os("PAYMENTS_CRASH_VERBOSE").is_some() {
            eprintln!(
                "kill {kills}: at work after {waited:?}, killed {delay:?} later, running {still_running}, \
                 progress {before} -> {now}"
            );
        }
    }
    // The last consumers run until the broker is drained and they have been idle a while.
    let deadline = Instant::now() + Duration::from_secs(300);
    for mut child in running {
        loop {
            if child.try_wait().map_err(|e| e.to_string())?.is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err("the last consumers did not finish within five minutes".to_owned());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    let outstanding = broker.outstanding()?;
    let recorded = recorded(dir, store)?;
    let mut lost = 0;
    let mut duplicated = 0;
    let mut unexpected = 0;
    // The version each conflicting payment kept, to check its dead letter against.
    let mut kept: HashMap<&String, u64> = HashMap::new();
    for (id, amount) in &first {
        match recorded.get(id).map(Vec::as_slice) {
            None => lost += 1,
            Some([one]) if *one == *amount || (conflicting.contains(id) && *one == amount + 1) => {
                if conflicting.contains(id) {
                    kept.insert(id, *one);
                }
            }
            Some([_]) => unexpected += 1,
            Some(many) => duplicated += many.len() - 1,
        }
    }
    unexpected += recorded.keys().filter(|id| !first.contains_key(*id)).count();
    let letters = broker.letters()?;
    let conflict_letters: BTreeMap<&str, (u64, u64)> = letters
        .iter()
        .filter(|l| l.kind == "conflict")
        .filter_map(|l| l.conflict.as_ref().map(|(id, stored, incoming)| (id.as_str(), (*stored, *incoming))))
        .collect();
    let wrong_conflicts = conflicting
        .iter()
        .filter(|id| match (kept.get(id), conflict_letters.get(id.as_str())) {
            (Some(kept), Some((stored, incoming))) => stored != kept || incoming == kept,
            _ => true,
        })
        .count();
    let invalid_letters: BTreeSet<&[u8]> =
        letters.iter().filter(|l| l.kind == "invalid").map(|l| l.payload.as_slice()).collect();
    let undead = invalid.iter().filter(|line| !invalid_letters.contains(line.as_slice())).count();
    let report = format!(
        "{kills} SIGKILLs ({mid_work} mid-work) of {names} consumer processes ({width} at a time) reading {} \
         over {} messages ({} payments, {} conflicting, {} invalid) in {:.1} s: lost {lost}, duplicated effects \
         {duplicated}, unexpected {unexpected}, left on the broker {outstanding}; conflicts first-writer-wins and \
         dead-lettered {}/{}, invalid dead-lettered {}/{}",
        broker.name(),
        lines.len(),
        first.len(),
        conflicting.len(),
        invalid.len(),
        started.elapsed().as_secs_f64(),
        conflicting.len() - wrong_conflicts,
        conflicting.len(),
        invalid.len() - undead,
        invalid.len(),
    );
    if lost + duplicated + unexpected + wrong_conflicts + undead > 0 || outstanding > 0 {
        return Err(report);
    }
    if mid_work * 2 < kills {
        return Err(format!("{report}; fewer than half the kills landed mid-work, so the run proved little"));
    }
    Ok(report)
}

/// How long a kill waits for the consumers to be at work before it goes ahead all the same.
const AT_WORK_PATIENCE: Duration = Duration::from_secs(10);

/// Waits until the store has grown past `last`, or every consumer in `running` has exited, or
/// [`AT_WORK_PATIENCE`] has passed; returns how long it waited.
fn at_work(progress: &Progress<'_>, last: u64, running: &mut [Child]) -> Result<Duration, String> {
    let started = Instant::now();
    while progress.now() <= last && started.elapsed() < AT_WORK_PATIENCE {
        let mut exited = 0;
        for child in running.iter_mut() {
            if child.try_wait().map_err(|e| e.to_string())?.is_some() {
                exited += 1;
            }
        }
        if exited == running.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(started.elapsed())
}

/// Redis Streams: a stream of the torture's own, a consumer group, a dead-letter stream.
pub(crate) struct Redis {
    keys: payments_test_support::redis::TestKeys,
    runtime: tokio::runtime::Runtime,
}

impl Redis {
    /// Key names of the torture's own (nothing is made on the server yet).
    pub(crate) fn new() -> Result<Self, String> {
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        Ok(Self { keys: payments_test_support::redis::TestKeys::new("crash"), runtime })
    }

    fn stream(&self) -> String {
        self.keys.key("payments")
    }

    fn url(&self, query: &str) -> String {
        format!("{}?{query}", payments_test_support::redis::url())
    }

    fn query<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> Result<T, String> {
        self.runtime.block_on(async {
            let mut connection = payments_test_support::redis::connect().await.map_err(|e| e.to_string())?;
            command.query_async(&mut connection).await.map_err(|e| e.to_string())
        })
    }
}

impl Broker for Redis {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn target(&self) -> String {
        self.url(&format!("stream={}", self.stream()))
    }

    fn input(&self, consumer: &str) -> String {
        // A short lease, so that a killed consumer's messages are taken over quickly.
        self.url(&format!("stream={}&group=torture&consumer={consumer}&claim-idle-ms=1000", self.stream()))
    }

    fn dead_letters(&self) -> String {
        self.url(&format!("stream={}", self.keys.key("dead-letters")))
    }

    fn outstanding(&self) -> Result<u64, String> {
        // XPENDING's summary: [count, first, last, per-consumer].
        let pending: redis::Value = self.query(redis::cmd("XPENDING").arg(self.stream()).arg("torture"))?;
        let count = match pending {
            redis::Value::Array(items) => match items.first() {
                Some(redis::Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
                _ => 0,
            },
            _ => 0,
        };
        let groups: redis::streams::StreamInfoGroupsReply =
            self.query(redis::cmd("XINFO").arg("GROUPS").arg(self.stream()))?;
        let lag = groups.groups.iter().find(|g| g.name == "torture").and_then(|g| g.lag).unwrap_or(0);
        Ok(count + lag as u64)
    }

    fn letters(&self) -> Result<Vec<Letter>, String> {
        let reply: redis::streams::StreamRangeReply =
            self.query(redis::cmd("XRANGE").arg(self.keys.key("dead-letters")).arg("-").arg("+"))?;
        let text = |map: &HashMap<String, redis::Value>, field: &str| -> Vec<u8> {
            match map.get(field) {
                Some(redis::Value::BulkString(bytes)) => bytes.clone(),
                _ => Vec::new(),
            }
        };
        Ok(reply
            .ids
            .iter()
            .map(|entry| {
                Letter::new(
                    String::from_utf8_lossy(&text(&entry.map, "kind")).into_owned(),
                    text(&entry.map, "payload"),
                    Some(&text(&entry.map, "stored")),
                    Some(&text(&entry.map, "incoming")),
                )
            })
            .collect())
    }

    fn remove(&self) -> Result<(), String> {
        self.runtime.block_on(self.keys.remove()).map(drop).map_err(|e| e.to_string())
    }
}

/// The durable consumer every NATS consumer process reads as: JetStream's group.
const NATS_CONSUMER: &str = "torture";

/// NATS JetStream: a stream of the torture's own, one durable pull consumer that every process
/// reads as, and a dead-letter stream.
pub(crate) struct Nats {
    streams: payments_test_support::nats::TestStreams,
    runtime: tokio::runtime::Runtime,
}

impl Nats {
    /// Stream and subject names of the torture's own (nothing is made on the server yet: the
    /// publisher and the consumers make their streams).
    pub(crate) fn new() -> Result<Self, String> {
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        Ok(Self { streams: payments_test_support::nats::TestStreams::new("crash"), runtime })
    }

    /// `stream=…&subject=…` of the stream called `name`.
    fn place(&self, name: &str) -> String {
        format!("stream={}&subject={}", self.streams.stream(name), self.streams.subject(name))
    }

    fn url(&self, query: &str) -> String {
        format!("{}?{query}", payments_test_support::nats::url())
    }

    /// The stream called `name`, from a new client of the test server.
    fn stream(&self, name: &str) -> Result<async_nats::jetstream::stream::Stream, String> {
        self.runtime.block_on(async {
            let context = payments_test_support::nats::jetstream().await.map_err(|e| e.to_string())?;
            context.get_stream(self.streams.stream(name)).await.map_err(|e| e.to_string())
        })
    }
}

impl Broker for Nats {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn target(&self) -> String {
        self.url(&self.place("payments"))
    }

    fn input(&self, _consumer: &str) -> String {
        // One durable consumer for every process: the group. A short lease, so that a killed
        // consumer's messages come again quickly.
        self.url(&format!("{}&consumer={NATS_CONSUMER}&ack-wait-ms=1000", self.place("payments")))
    }

    fn dead_letters(&self) -> String {
        self.url(&self.place("dead-letters"))
    }

    fn outstanding(&self) -> Result<u64, String> {
        let stream = self.stream("payments")?;
        let info = self.runtime.block_on(stream.consumer_info(NATS_CONSUMER)).map_err(|e| e.to_string())?;
        Ok(info.num_pending + info.num_ack_pending as u64)
    }

    fn letters(&self) -> Result<Vec<Letter>, String> {
        let mut stream = self.stream("dead-letters")?;
        self.runtime.block_on(async {
            let last = stream.info().await.map_err(|e| e.to_string())?.state.last_sequence;
            let mut letters = Vec::new();
            // Each letter is a JSON object: see payments-source-nats' `NatsDeadLetters`.
            for sequence in 1..=last {
                let message = stream.get_raw_message(sequence).await.map_err(|e| e.to_string())?;
                let body: serde_json::Value = serde_json::from_slice(&message.payload)
                    .map_err(|e| format!("dead letter {sequence}: {e}"))?;
                let payload = base64::Engine::decode(
                    &base64::engine::general_purpose::STANDARD,
                    body["payload_base64"].as_str().unwrap_or_default(),
                )
                .map_err(|e| format!("dead letter {sequence}: payload_base64: {e}"))?;
                let version = |name: &str| body.get(name).map(|v| v.to_string().into_bytes());
                letters.push(Letter::new(
                    body["kind"].as_str().unwrap_or_default().to_owned(),
                    payload,
                    version("stored").as_deref(),
                    version("incoming").as_deref(),
                ));
            }
            Ok(letters)
        })
    }

    fn remove(&self) -> Result<(), String> {
        self.runtime.block_on(self.streams.remove()).map(drop).map_err(|e| e.to_string())
    }
}

/// RabbitMQ: a queue of the torture's own that every process consumes, a dead-letter queue, and
/// the parking queue the source declares beside each.
pub(crate) struct Rabbit {
    queues: payments_test_support::rabbitmq::TestQueues,
    /// The queue the input is published to and consumed from.
    payments: String,
    /// The dead-letter queue.
    dead_letters: String,
    runtime: tokio::runtime::Runtime,
}

impl Rabbit {
    /// Queue names of the torture's own, their parking queues included (nothing is made on the
    /// server yet: the publisher and the consumers declare their queues).
    pub(crate) fn new() -> Result<Self, String> {
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        let queues = payments_test_support::rabbitmq::TestQueues::new("crash");
        let (payments, dead_letters) = (queues.queue("payments"), queues.queue("dead-letters"));
        for queue in [&payments, &dead_letters] {
            queues.track(&payments_source_rabbitmq::parked_queue(queue));
        }
        Ok(Self { queues, payments, dead_letters, runtime })
    }

    fn url(&self, query: &str) -> String {
        format!("{}?{query}", payments_test_support::rabbitmq::url())
    }

    /// How many messages are ready in `queue` (none when it is missing).
    fn ready(&self, queue: &str) -> Result<u64, String> {
        let ready = self.runtime.block_on(payments_test_support::rabbitmq::ready_messages(queue));
        Ok(u64::from(ready.map_err(|e| e.to_string())?.unwrap_or(0)))
    }
}

impl Broker for Rabbit {
    fn name(&self) -> &'static str {
        "rabbitmq"
    }

    fn target(&self) -> String {
        self.url(&format!("queue={}", self.payments))
    }

    fn input(&self, _consumer: &str) -> String {
        // The queue is the group: every process consumes it, and RabbitMQ gives a killed
        // consumer's unacknowledged messages back as soon as its connection is gone.
        self.url(&format!("queue={}", self.payments))
    }

    fn dead_letters(&self) -> String {
        self.url(&format!("queue={}", self.dead_letters))
    }

    fn outstanding(&self) -> Result<u64, String> {
        // Every consumer has exited, so nothing is unacknowledged: what is left is ready, in the
        // queue or parked past the delivery limit.
        Ok(self.ready(&self.payments)?
            + self.ready(&payments_source_rabbitmq::parked_queue(&self.payments))?)
    }

    fn letters(&self) -> Result<Vec<Letter>, String> {
        use lapin::options::BasicGetOptions;
        use lapin::types::AMQPValue;

        self.runtime.block_on(async {
            let connection = payments_test_support::rabbitmq::connect().await.map_err(|e| e.to_string())?;
            let channel = connection.create_channel().await.map_err(|e| e.to_string())?;
            let mut letters = Vec::new();
            // Each letter is the dead message's body, with the rest in headers: see
            // payments-source-rabbitmq's `RabbitDeadLetters`.
            while let Some(message) = channel
                .basic_get(self.dead_letters.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .map_err(|e| e.to_string())?
            {
                let properties = &message.delivery.properties;
                let header = |name: &str| -> Option<Vec<u8>> {
                    let headers = properties.headers().as_ref()?;
                    match headers.inner().iter().find(|(key, _)| key.as_str() == name)?.1 {
                        AMQPValue::LongString(text) => Some(text.as_bytes().to_vec()),
                        AMQPValue::ShortString(text) => Some(text.as_str().as_bytes().to_vec()),
                        _ => None,
                    }
                };
                letters.push(Letter::new(
                    String::from_utf8_lossy(&header("kind").unwrap_or_default()).into_owned(),
                    message.delivery.data.clone(),
                    header("stored").as_deref(),
                    header("incoming").as_deref(),
                ));
            }
            let _ = connection.close(200, "read".into()).await;
            Ok(letters)
        })
    }

    fn remove(&self) -> Result<(), String> {
        self.runtime.block_on(self.queues.remove()).map(drop).map_err(|e| e.to_string())
    }
}
