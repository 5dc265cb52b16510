//! Crash torture against a real broker: the input is published to it, consumer processes read it
//! (several in one group on a store that several processes share, one at a time on the others),
//! are SIGKILLed at random moments and replaced under new names. At the end nothing may be pending
//! on the broker, and the store and the dead letters are checked against the input.
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
    /// `consume --input` for the consumer called `consumer`.
    fn input(&self, consumer: &str) -> String;
    /// `consume --dead-letter`.
    fn dead_letters(&self) -> String;
    /// Messages neither acknowledged nor delivered yet.
    fn outstanding(&self) -> Result<u64, String>;
    /// Every dead letter written: kind, payload, and for a conflict the stored and the incoming
    /// version's amounts, by payment ID.
    fn letters(&self) -> Result<Vec<Letter>, String>;
}

/// A dead letter, as the torture reads it back.
#[derive(Debug)]
pub(crate) struct Letter {
    pub(crate) kind: String,
    pub(crate) payload: Vec<u8>,
    /// For a conflict: (payment ID, stored amount, incoming amount).
    pub(crate) conflict: Option<(String, u64, u64)>,
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
    // Kill at random moments, spread over the work: the window adapts to how fast it goes.
    let mut window = Duration::from_millis(100);
    let (mut kills, mut mid_work) = (0, 0);
    let mut before = progress.now();
    while kills < options.kills {
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
        before = now;
        running.push(spawn(&mut names)?);
        if std::env::var_os("PAYMENTS_CRASH_VERBOSE").is_some() {
            eprintln!("kill {kills}: after {delay:?}, running {still_running}, progress {now}");
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

/// Redis Streams: a stream of the torture's own, a consumer group, a dead-letter stream.
pub(crate) struct Redis {
    keys: payments_test_support::redis::TestKeys,
    runtime: tokio::runtime::Runtime,
}

impl Redis {
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

    /// Removes the torture's keys.
    pub(crate) fn remove(&self) -> Result<(), String> {
        self.runtime.block_on(self.keys.remove()).map(drop).map_err(|e| e.to_string())
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
        let amount_of = |json: &[u8]| -> Option<(String, u64)> {
            let value: serde_json::Value = serde_json::from_slice(json).ok()?;
            Some((value["payment_id"].as_str()?.to_owned(), value["amount"].as_u64()?))
        };
        Ok(reply
            .ids
            .iter()
            .map(|entry| {
                let conflict = match (
                    amount_of(&text(&entry.map, "stored")),
                    amount_of(&text(&entry.map, "incoming")),
                ) {
                    (Some((id, stored)), Some((_, incoming))) => Some((id, stored, incoming)),
                    _ => None,
                };
                Letter {
                    kind: String::from_utf8_lossy(&text(&entry.map, "kind")).into_owned(),
                    payload: text(&entry.map, "payload"),
                    conflict,
                }
            })
            .collect())
    }
}
