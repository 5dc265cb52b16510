//! Running cases, for both suites: one at a time ([`run_case`], `run_source_case`) or all of them
//! as a libtest-compatible test binary ([`main`], `source::main`), with the report that
//! `cargo xtask` reads for the conformance matrix.

// This module is a test harness: it reports to the terminal by design.
#![allow(clippy::print_stderr)]

use std::any::Any;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use libtest_mimic::{Arguments, Failed, Trial};
use payments_test_support::under_ci;
use serde::Serialize;

use crate::cases::{Case, all_cases};
use crate::{BoxError, Fixture, Harness};

/// How one case ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaseOutcome {
    /// The adapter kept the contract sentence.
    Passed,
    /// The adapter broke it; the text says how.
    Failed(String),
    /// The case did not run; the text says why (a missing capability, no server).
    Skipped(String),
}

/// How long one case may take before it counts as hung (a deadlock is a failure, not a wait).
fn case_timeout() -> Duration {
    let seconds = std::env::var("PAYMENTS_CONFORMANCE_TIMEOUT_SECS").ok().and_then(|s| s.parse().ok());
    Duration::from_secs(seconds.unwrap_or(300))
}

/// Runs `case` against a fresh environment of `harness` and removes the environment afterwards.
///
/// Must be called inside a multi-threaded tokio runtime: the concurrency cases spawn tasks.
pub async fn run_case<H: Harness>(harness: Arc<H>, case: &Case) -> CaseOutcome {
    run_case_within(harness, case, case_timeout()).await
}

/// [`run_case`], failing the case if it takes longer than `timeout`.
pub async fn run_case_within<H: Harness>(harness: Arc<H>, case: &Case, timeout: Duration) -> CaseOutcome {
    let adapter = harness.adapter();
    if let Some(reason) = case.needs.and_then(|c| harness.capabilities().skip_reason(c, adapter)) {
        return CaseOutcome::Skipped(reason);
    }
    let env = match harness.setup().await {
        Ok(env) => Arc::new(env),
        Err(err) => {
            return CaseOutcome::Failed(format!("{adapter} adapter: setting up a store failed: {err}"));
        }
    };
    let fixture = Fixture::new(Arc::clone(&harness), Arc::clone(&env));
    let run = case.run;
    let outcome = isolated_within(adapter, case.name, timeout, async move { run(&fixture).await }).await;
    after_teardown(adapter, case.name, outcome, harness.teardown(&env).await)
}

/// Runs one case's body on a thread and a runtime of its own, so that a panic (a broken sentence)
/// is caught as its outcome, and the case timeout holds whatever the body does: a deadlock, or a
/// body that blocks its thread (the model-based case drives proptest synchronously), fails its
/// case by name, and the run goes on. A hung case's thread is left behind until the process ends.
pub(crate) async fn isolated(
    adapter: &'static str,
    case: &'static str,
    body: impl Future<Output = ()> + Send + 'static,
) -> CaseOutcome {
    isolated_within(adapter, case, case_timeout(), body).await
}

/// [`isolated`], with the timeout given.
pub(crate) async fn isolated_within(
    adapter: &'static str,
    case: &'static str,
    timeout: Duration,
    body: impl Future<Output = ()> + Send + 'static,
) -> CaseOutcome {
    let (done, outcome) = tokio::sync::oneshot::channel();
    let started = std::thread::Builder::new().name(format!("case {case}")).spawn(move || {
        let runtime = runtime();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.block_on(body)));
        let _ = done.send(result);
        // Tasks the case left running are the adapter's business: do not wait for them.
        runtime.shutdown_background();
    });
    if let Err(err) = started {
        return CaseOutcome::Failed(format!("{adapter} adapter: cannot start a thread for {case}: {err}"));
    }
    match tokio::time::timeout(timeout, outcome).await {
        Ok(Ok(Ok(()))) => CaseOutcome::Passed,
        Ok(Ok(Err(panic))) => {
            CaseOutcome::Failed(format!("{adapter} adapter broke {case}: {}", panic_text(panic)))
        }
        Ok(Err(_)) => {
            CaseOutcome::Failed(format!("{adapter} adapter: the thread of {case} ended without an outcome"))
        }
        Err(_) => CaseOutcome::Failed(format!(
            "{adapter} adapter broke {case}: the case did not finish within {timeout:?} (a deadlock, a lost wake-up or a loop that never ends)"
        )),
    }
}

/// A case's outcome once its environment is removed: a removal that failed fails a passed case.
pub(crate) fn after_teardown(
    adapter: &str,
    case: &str,
    outcome: CaseOutcome,
    teardown: Result<(), BoxError>,
) -> CaseOutcome {
    match teardown {
        Ok(()) => outcome,
        Err(err) if outcome == CaseOutcome::Passed => CaseOutcome::Failed(format!(
            "{adapter} adapter: removing the environment of {case} failed: {err}"
        )),
        Err(_) => outcome,
    }
}

fn panic_text(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(text) => *text,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(text) => (*text).to_owned(),
            Err(_) => "the case panicked with a non-text payload".to_owned(),
        },
    }
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap_or_else(|err| panic!("cannot start a tokio runtime for the conformance suite: {err}"))
}

/// The entry point of a store's conformance test binary (`harness = false`): runs every case as
/// a named test, with libtest's command line (filters, `--list`, `--ignored`, ...).
///
/// Cases that need a capability the adapter lacks are reported as ignored, with the capability.
/// When [`Harness::available`] fails, every case is ignored with the reason and a loud `SKIPPED`
/// line, except under `CI=true`, where every case fails instead.
///
/// When `PAYMENTS_CONFORMANCE_REPORT_DIR` is set, each outcome is also appended to
/// `<dir>/<adapter>-<pid>.jsonl`, from which `cargo xtask` prints the conformance matrix.
pub fn main<H: Harness>(harness: H) -> ExitCode {
    if let Some(code) = crate::kill::child_if_asked(&harness) {
        return code;
    }
    let harness = Arc::new(harness);
    let adapter = harness.adapter();
    let availability = runtime().block_on(harness.available());
    let entries = all_cases()
        .into_iter()
        .map(|case| {
            let lacking = case.needs.and_then(|needs| {
                let reason = harness.capabilities().skip_reason(needs, adapter)?;
                Some(Lacking { capability: needs.to_string(), reason })
            });
            let harness = Arc::clone(&harness);
            Entry {
                name: case.name,
                lacking,
                run: Box::new(move || runtime().block_on(run_case(harness, &case))),
            }
        })
        .collect();
    run_entries("store", adapter, availability, entries)
}

/// One case, ready to become a trial.
pub(crate) struct Entry {
    /// The case's name: the contract sentence it checks.
    pub(crate) name: &'static str,
    /// The capability it needs and the adapter lacks, if any.
    pub(crate) lacking: Option<Lacking>,
    /// Runs it.
    pub(crate) run: Box<dyn FnOnce() -> CaseOutcome + Send>,
}

/// A capability a case needs and the adapter lacks.
pub(crate) struct Lacking {
    /// Its name, for the trial's kind: `needs <capability>`.
    pub(crate) capability: String,
    /// Why the case is skipped, for the report: the capability and what the adapter does not
    /// declare of it.
    pub(crate) reason: String,
}

/// Turns a suite's entries into trials, runs them with libtest's command line, and reports each
/// outcome for the matrix.
pub(crate) fn run_entries(
    kind: &'static str,
    adapter: &'static str,
    availability: Result<(), String>,
    entries: Vec<Entry>,
) -> ExitCode {
    let args = Arguments::from_args();
    let report = if args.list { Report::disabled() } else { Report::from_env(kind, adapter) };
    let trials = entries
        .into_iter()
        .map(|Entry { name: case, lacking, run }| {
            let name = format!("{adapter}::{case}");
            if let Some(Lacking { capability, reason }) = lacking {
                report.record(case, "skipped", &reason);
                return Trial::test(name, move || Err(Failed::from(format!("skipped: {reason}"))))
                    .with_kind(format!("needs {capability}"))
                    .with_ignored_flag(true);
            }
            if let Err(reason) = &availability {
                if under_ci() {
                    let reason =
                        format!("{adapter} {kind} cannot run, and CI=true forbids skipping: {reason}");
                    let report = report.clone();
                    return Trial::test(name, move || {
                        report.record(case, "failed", &reason);
                        Err(Failed::from(reason))
                    });
                }
                eprintln!("SKIPPED {name}: {reason}");
                report.record(case, "skipped", reason);
                let reason = reason.clone();
                return Trial::test(name, move || Err(Failed::from(format!("skipped: {reason}"))))
                    .with_kind("unavailable")
                    .with_ignored_flag(true);
            }
            let report = report.clone();
            Trial::test(name, move || {
                let started = std::time::Instant::now();
                let outcome = run();
                let report = report.timed(started.elapsed());
                match outcome {
                    CaseOutcome::Passed => {
                        report.record(case, "passed", "");
                        Ok(())
                    }
                    CaseOutcome::Failed(text) => {
                        report.record(case, "failed", &text);
                        Err(Failed::from(text))
                    }
                    CaseOutcome::Skipped(text) => {
                        report.record(case, "skipped", &text);
                        Err(Failed::from(format!("skipped unexpectedly: {text}")))
                    }
                }
            })
        })
        .collect();

    libtest_mimic::run(&args, trials).exit_code()
}

/// Where outcomes go for the conformance matrix: one JSON line per case.
#[derive(Clone)]
struct Report {
    kind: &'static str,
    adapter: &'static str,
    file: Option<Arc<Mutex<File>>>,
    /// How long the case took, for the lines it records.
    elapsed: Option<Duration>,
}

#[derive(Serialize)]
struct Line<'a> {
    kind: &'a str,
    adapter: &'a str,
    case: &'a str,
    outcome: &'a str,
    detail: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    elapsed_ms: Option<u128>,
}

impl Report {
    const fn disabled() -> Self {
        Self { kind: "", adapter: "", file: None, elapsed: None }
    }

    fn from_env(kind: &'static str, adapter: &'static str) -> Self {
        let Some(dir) = std::env::var_os("PAYMENTS_CONFORMANCE_REPORT_DIR").map(PathBuf::from) else {
            return Self::disabled();
        };
        let path = dir.join(format!("{kind}-{adapter}-{}.jsonl", std::process::id()));
        let file = std::fs::create_dir_all(&dir)
            .and_then(|()| OpenOptions::new().create(true).append(true).open(&path))
            .unwrap_or_else(|err| panic!("cannot write the conformance report {}: {err}", path.display()));
        Self { kind, adapter, file: Some(Arc::new(Mutex::new(file))), elapsed: None }
    }

    /// The same report, for a case that took `elapsed`.
    fn timed(&self, elapsed: Duration) -> Self {
        Self { elapsed: Some(elapsed), ..self.clone() }
    }

    fn record(&self, case: &str, outcome: &str, detail: &str) {
        let Some(file) = &self.file else { return };
        let elapsed_ms = self.elapsed.map(|elapsed| elapsed.as_millis());
        let line = Line { kind: self.kind, adapter: self.adapter, case, outcome, detail, elapsed_ms };
        let mut line = serde_json::to_vec(&line)
            .unwrap_or_else(|err| panic!("cannot encode a conformance report line: {err}"));
        line.push(b'\n');
        let mut file = file.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(err) = file.write_all(&line) {
            panic!("cannot append to the conformance report: {err}");
        }
    }
}
