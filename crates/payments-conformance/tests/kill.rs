//! The kill cases must be able to fail. Against a store that reports a payment new before it has
//! written it (it writes a moment later, in the background), a SIGKILL loses reported payments and
//! the durability case must say so. Against a store that writes a payment's event after the
//! payment, in a write of its own, a SIGKILL between the two leaves a payment without its event,
//! and the outbox case must say so. The same store writing both in one write before it answers is
//! the control: it passes both.

// A test program reports on stderr by design.
#![allow(clippy::print_stderr)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use payments_conformance::{
    BoxError, Capabilities, CaseOutcome, Harness, all_cases, child_if_asked, run_case,
};
use payments_ports::domain::{Payment, PaymentId, PaymentRecorded, RecordedAt, SaveOutcome, decide, event};
use payments_ports::{Outbox, OutboxBacklog, PaymentsRepository, RepositoryError};

/// How a [`LineFileStore`] writes what it records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// The payment and its event in one write, before the answer: the control.
    Writing,
    /// Both a moment later, in the background: answered new, then lost by a crash.
    Lazy,
    /// The payment, then (after a yield) its event, in two writes: a crash between them leaves
    /// the payment without its event.
    EventAfter,
}

impl Mode {
    const fn name(self) -> &'static str {
        match self {
            Self::Writing => "writing",
            Self::Lazy => "lazy",
            Self::EventAfter => "event-after",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        [Self::Writing, Self::Lazy, Self::EventAfter].into_iter().find(|mode| mode.name() == name)
    }
}

/// What a [`LineFileStore`] holds in memory: its payments, their events in order, and which
/// events are published.
#[derive(Default)]
struct State {
    payments: BTreeMap<PaymentId, Payment>,
    events: Vec<PaymentRecorded>,
    published: BTreeSet<PaymentId>,
}

/// Payments and their events in memory, written to a file of lines: a payment is its JSON line, an
/// event `E <payment ID> <unix millis>`, a mark `M <payment ID>`.
struct LineFileStore {
    state: Arc<Mutex<State>>,
    file: Arc<Mutex<std::fs::File>>,
    /// Lines answered new but not written yet (the lazy store's only).
    unwritten: Arc<Mutex<Vec<u8>>>,
    mode: Mode,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LineFileStore {
    fn open(path: &Path, mode: Mode) -> Result<Self, BoxError> {
        let mut state = State::default();
        if let Ok(text) = std::fs::read(path) {
            let mut lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
            // Only whole lines count: a kill can cut the last one short.
            lines.pop();
            for line in lines {
                state.replay(line);
            }
        }
        let file = Arc::new(Mutex::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?));
        let unwritten: Arc<Mutex<Vec<u8>>> = Arc::default();
        if mode == Mode::Lazy {
            // Writes what was answered new a moment later: a crash in between loses it.
            let (file, unwritten) = (Arc::clone(&file), Arc::clone(&unwritten));
            std::thread::spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_millis(200));
                    let bytes = std::mem::take(&mut *lock(&unwritten));
                    let _ = lock(&file).write_all(&bytes);
                }
            });
        }
        Ok(Self { state: Arc::new(Mutex::new(state)), file, unwritten, mode })
    }

    fn write(&self, bytes: &[u8]) -> Result<(), RepositoryError> {
        // One write of the whole buffer, to the page cache (which a SIGKILL keeps).
        lock(&self.file).write_all(bytes).map_err(|err| RepositoryError::failed_because("write", err))
    }
}

impl State {
    fn replay(&mut self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        if let Some(rest) = text.strip_prefix("E ") {
            let Some((id, millis)) = rest.split_once(' ') else { return };
            let payment = PaymentId::new(id).ok().and_then(|id| self.payments.get(&id).cloned());
            if let (Some(payment), Ok(millis)) = (payment, millis.parse()) {
                self.events.push(PaymentRecorded::new(payment, RecordedAt::from_unix_millis(millis)));
            }
        } else if let Some(id) = text.strip_prefix("M ") {
            if let Ok(id) = PaymentId::new(id) {
                self.published.insert(id);
            }
        } else if let Ok(payment) = event::decode(line) {
            self.payments.insert(payment.id, payment);
        }
    }
}

#[async_trait]
impl PaymentsRepository for LineFileStore {
    async fn save(&self, payment: &Payment) -> Result<SaveOutcome, RepositoryError> {
        let event = PaymentRecorded::new(payment.clone(), RecordedAt::from_system_time(SystemTime::now()));
        let event_line = format!("E {} {}\n", payment.id, event.recorded_at.unix_millis());
        {
            let mut state = lock(&self.state);
            let outcome = decide(state.payments.get(&payment.id), payment);
            if !outcome.is_new() {
                return Ok(outcome);
            }
            let mut lines = Vec::new();
            event::encode(payment, &mut lines);
            lines.push(b'\n');
            match self.mode {
                Mode::Lazy => {
                    lines.extend_from_slice(event_line.as_bytes());
                    lock(&self.unwritten).extend(lines);
                }
                Mode::Writing => {
                    lines.extend_from_slice(event_line.as_bytes());
                    self.write(&lines)?;
                }
                Mode::EventAfter => self.write(&lines)?,
            }
            state.payments.insert(payment.id, payment.clone());
            if self.mode != Mode::EventAfter {
                state.events.push(event);
                return Ok(SaveOutcome::New);
            }
        }
        // The window: the payment is written, its event not yet.
        tokio::task::yield_now().await;
        let mut state = lock(&self.state);
        self.write(event_line.as_bytes())?;
        state.events.push(event);
        Ok(SaveOutcome::New)
    }

    async fn get(&self, id: &PaymentId) -> Result<Option<Payment>, RepositoryError> {
        Ok(lock(&self.state).payments.get(id).cloned())
    }

    async fn count(&self) -> Result<u64, RepositoryError> {
        Ok(lock(&self.state).payments.len() as u64)
    }

    async fn list(&self, after: Option<PaymentId>, limit: usize) -> Result<Vec<Payment>, RepositoryError> {
        let state = lock(&self.state);
        let from = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        Ok(state
            .payments
            .range((from, std::ops::Bound::Unbounded))
            .take(limit)
            .map(|(_, p)| p.clone())
            .collect())
    }

    async fn outbox(&self) -> Result<Option<Box<dyn Outbox>>, RepositoryError> {
        Ok(Some(Box::new(LineFileOutbox {
            state: Arc::clone(&self.state),
            file: Arc::clone(&self.file),
            claimed: Vec::new(),
        })))
    }
}

/// The one relay of a [`LineFileStore`] (the kill case keeps one at a time): claims the oldest
/// events not published, and marks them with lines of their own.
struct LineFileOutbox {
    state: Arc<Mutex<State>>,
    file: Arc<Mutex<std::fs::File>>,
    claimed: Vec<PaymentId>,
}

#[async_trait]
impl Outbox for LineFileOutbox {
    async fn claim(&mut self, limit: usize) -> Result<Vec<PaymentRecorded>, RepositoryError> {
        let state = lock(&self.state);
        let batch: Vec<PaymentRecorded> = state
            .events
            .iter()
            .filter(|event| !state.published.contains(&event.payment.id))
            .take(limit)
            .cloned()
            .collect();
        self.claimed = batch.iter().map(|event| event.payment.id).collect();
        Ok(batch)
    }

    async fn mark_published(&mut self) -> Result<(), RepositoryError> {
        let mut state = lock(&self.state);
        let lines: String = self.claimed.iter().map(|id| format!("M {id}\n")).collect();
        lock(&self.file)
            .write_all(lines.as_bytes())
            .map_err(|err| RepositoryError::failed_because("write", err))?;
        state.published.extend(self.claimed.drain(..));
        Ok(())
    }

    async fn backlog(&mut self) -> Result<OutboxBacklog, RepositoryError> {
        let state = lock(&self.state);
        let pending: Vec<&PaymentRecorded> =
            state.events.iter().filter(|event| !state.published.contains(&event.payment.id)).collect();
        Ok(OutboxBacklog {
            pending: pending.len() as u64,
            oldest: pending.first().map(|event| event.recorded_at.system_time()),
        })
    }
}

struct LineFileHarness {
    mode: Mode,
}

#[async_trait]
impl Harness for LineFileHarness {
    type Env = tempfile::TempDir;

    fn adapter(&self) -> &'static str {
        self.mode.name()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { durable: true, shared: false, killable: true, outbox: true }
    }

    async fn setup(&self) -> Result<tempfile::TempDir, BoxError> {
        Ok(tempfile::tempdir()?)
    }

    async fn open(&self, dir: &tempfile::TempDir) -> Result<Arc<dyn PaymentsRepository>, BoxError> {
        Ok(Arc::new(LineFileStore::open(&dir.path().join("payments.jsonl"), self.mode)?))
    }

    /// The directory, and (for the child, which is this binary again) how the store writes.
    fn locate(&self, dir: &tempfile::TempDir) -> Option<String> {
        Some(format!("{}:{}", self.mode.name(), dir.path().display()))
    }

    async fn open_at(&self, locator: &str) -> Result<Arc<dyn PaymentsRepository>, BoxError> {
        let (mode, dir) = locator.split_once(':').ok_or("a locator is mode:dir")?;
        let mode = Mode::parse(mode).ok_or("no such mode")?;
        Ok(Arc::new(LineFileStore::open(&PathBuf::from(dir).join("payments.jsonl"), mode)?))
    }
}

/// The broken stores make their cases panic on the case's thread; the message is in the outcome,
/// which is printed below. Keep those panics out of the output, and every other one as usual.
fn quiet_case_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !std::thread::current().name().is_some_and(|name| name.starts_with("case ")) {
            default(info);
        }
    }));
}

fn main() -> ExitCode {
    // The child of a case is this binary again; its locator says which store it opens.
    if let Some(code) = child_if_asked(&LineFileHarness { mode: Mode::Writing }) {
        return code;
    }
    quiet_case_panics();
    let case = |name: &str| {
        all_cases().into_iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no case {name}"))
    };
    let durable = case("every_payment_reported_new_survives_a_sigkill");
    let atomic = case("no_sigkill_leaves_a_payment_without_its_event_or_an_event_without_its_payment");
    // Each case, each store, and the text its failure must hold (none: it must pass).
    let checks = [
        (&durable, Mode::Writing, None),
        (&durable, Mode::Lazy, Some("payments reported new are not there")),
        (&atomic, Mode::Writing, None),
        (&atomic, Mode::EventAfter, Some("have no event of theirs")),
    ];
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mut failed = false;
    for (case, mode, must_fail_with) in checks {
        let outcome = runtime.block_on(run_case(Arc::new(LineFileHarness { mode }), case));
        let ok = match (&outcome, must_fail_with) {
            (CaseOutcome::Passed, None) => true,
            (CaseOutcome::Failed(text), Some(expected)) => text.contains(expected),
            _ => false,
        };
        eprintln!(
            "{} against the {} store: {outcome:?} ({})",
            case.name,
            mode.name(),
            if ok { "as it must" } else { "WRONG" }
        );
        failed |= !ok;
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
