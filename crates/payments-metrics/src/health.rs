//! Liveness and readiness, as an orchestrator probes them.
//!
//! - **Live** means the consume loop is alive: its heartbeat (at least once a second) is recent.
//!   It never looks at the store or the broker, so that an outage of either does not turn into a
//!   restart storm: the consumer rides an outage out by itself, backing off.
//! - **Ready** means start-up is done and both the store and the source answered last time they
//!   were asked. It is a signal for dashboards and load balancers, not a switch: an unready consumer
//!   keeps consuming (and backing off) as before.
//!
//! Reports list every check, one per line, in the style of Kubernetes' own `/readyz?verbose`;
//! they never carry an error's text, which may name a host or a user.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long the consume loop may go without a heartbeat before it is reported dead: ten beats.
pub const HEARTBEAT_LIMIT: Duration = Duration::from_secs(10);

/// Milliseconds since the epoch of a [`Health`], or never.
const NEVER: u64 = u64::MAX;

/// One dependency's state: up or down, and since when.
#[derive(Debug)]
pub(crate) struct Check {
    up: AtomicBool,
    since_ms: AtomicU64,
}

impl Check {
    const fn new() -> Self {
        Self { up: AtomicBool::new(true), since_ms: AtomicU64::new(0) }
    }

    fn up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }
}

/// The health of one consumer: fed by its metrics, read by the endpoints.
#[derive(Debug)]
pub struct Health {
    epoch: Instant,
    started: AtomicBool,
    stopping: AtomicBool,
    last_beat_ms: AtomicU64,
    pub(crate) store: Check,
    pub(crate) source: Check,
}

/// The answer to a probe: whether it passed, and a body that lists each check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Whether every check passed.
    pub ok: bool,
    /// One line per check (`[+]store ok`, `[-]source failing for 3s`), then a verdict line.
    pub body: String,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// Not started, store and source presumed up until they are seen failing.
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            started: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            last_beat_ms: AtomicU64::new(NEVER),
            store: Check::new(),
            source: Check::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(NEVER - 1)
    }

    /// Start-up is done: the store and the source are open, and the consumer runs.
    pub fn mark_started(&self) {
        self.started.store(true, Ordering::Relaxed);
    }

    /// Shutdown began: no longer ready, and no longer expected to beat (the loop drains, then ends).
    pub fn mark_stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// The consume loop is alive now.
    pub fn beat(&self) {
        self.last_beat_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Records whether the store answered.
    pub fn set_store_up(&self, up: bool) {
        self.set(&self.store, up);
    }

    /// Records whether the source answered.
    pub fn set_source_up(&self, up: bool) {
        self.set(&self.source, up);
    }

    fn set(&self, check: &Check, up: bool) {
        if check.up() != up && check.up.swap(up, Ordering::Relaxed) != up {
            check.since_ms.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// Whether the consume loop is alive: its last heartbeat is within [`HEARTBEAT_LIMIT`]. Before
    /// the first beat (start-up) and while stopping, it is.
    pub fn liveness(&self) -> Report {
        let mut body = String::new();
        let ok = match self.last_beat_ms.load(Ordering::Relaxed) {
            _ if self.stopping.load(Ordering::Relaxed) => {
                body.push_str("[+]consume loop stopping\n");
                true
            }
            NEVER => {
                body.push_str("[+]consume loop starting\n");
                true
            }
            beat => {
                let since = Duration::from_millis(self.now_ms().saturating_sub(beat));
                let ok = since <= HEARTBEAT_LIMIT;
                let sign = if ok { '+' } else { '-' };
                let _ =
                    writeln!(body, "[{sign}]consume loop: last heartbeat {:.1}s ago", since.as_secs_f64());
                ok
            }
        };
        finish(body, "livez", ok)
    }

    /// Whether start-up is done, shutdown has not begun, and the store and the source answer.
    pub fn readiness(&self) -> Report {
        let mut body = String::new();
        let started = self.started.load(Ordering::Relaxed);
        body.push_str(if started { "[+]started ok\n" } else { "[-]started: still starting\n" });
        let stopping = self.stopping.load(Ordering::Relaxed);
        if stopping {
            body.push_str("[-]shutting down\n");
        }
        let now = self.now_ms();
        for (name, check) in [("store", &self.store), ("source", &self.source)] {
            if check.up() {
                let _ = writeln!(body, "[+]{name} ok");
            } else {
                let since = Duration::from_millis(now.saturating_sub(check.since_ms.load(Ordering::Relaxed)));
                let _ = writeln!(body, "[-]{name} unreachable for {:.1}s", since.as_secs_f64());
            }
        }
        let ok = started && !stopping && self.store.up() && self.source.up();
        finish(body, "readyz", ok)
    }
}

fn finish(mut body: String, what: &str, ok: bool) -> Report {
    let _ = writeln!(body, "{what} check {}", if ok { "passed" } else { "failed" });
    Report { ok, body }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_ready_until_started_nor_while_a_dependency_is_down_nor_once_stopping() {
        let health = Health::new();
        let report = health.readiness();
        assert!(!report.ok);
        assert!(report.body.contains("[-]started: still starting"), "{}", report.body);

        health.mark_started();
        assert!(health.readiness().ok, "{}", health.readiness().body);

        health.set_store_up(false);
        let report = health.readiness();
        assert!(!report.ok);
        assert!(report.body.contains("[-]store unreachable for"), "{}", report.body);
        assert!(report.body.contains("[+]source ok"), "{}", report.body);
        assert!(report.body.ends_with("readyz check failed\n"), "{}", report.body);

        health.set_store_up(true);
        health.set_source_up(false);
        assert!(!health.readiness().ok);
        health.set_source_up(true);
        assert!(health.readiness().ok);

        health.mark_stopping();
        let report = health.readiness();
        assert!(!report.ok);
        assert!(report.body.contains("[-]shutting down"), "{}", report.body);
    }

    #[test]
    fn live_while_starting_and_while_the_heartbeat_is_recent_whatever_the_store_does() {
        let health = Health::new();
        assert!(health.liveness().ok, "starting");
        health.beat();
        health.set_store_up(false);
        health.set_source_up(false);
        let report = health.liveness();
        assert!(report.ok, "an outage is not death: {}", report.body);
        assert!(report.body.contains("last heartbeat 0.0s ago"), "{}", report.body);
    }

    #[test]
    fn dead_when_the_heartbeat_is_older_than_the_limit_unless_stopping() {
        let limit_ms = u64::try_from(HEARTBEAT_LIMIT.as_millis()).expect("small");
        let health = Health { epoch: Instant::now() - HEARTBEAT_LIMIT * 2, ..Health::new() };
        health.last_beat_ms.store(0, Ordering::Relaxed);
        let report = health.liveness();
        assert!(!report.ok, "{}", report.body);
        assert!(report.body.starts_with("[-]consume loop: last heartbeat"), "{}", report.body);
        assert!(health.now_ms() >= 2 * limit_ms);

        health.mark_stopping();
        assert!(health.liveness().ok, "a draining loop is not beating, and not dead");
    }
}
