//! Running cases: one at a time ([`run_case`]) or all of them as a libtest-compatible test binary ([`main`]).

// This module is a test harness: it reports to the terminal by design.
#![allow(clippy::print_stderr)]

use std::any::Any;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use libtest_mimic::{Arguments, Failed, Trial};
use payments_test_support::under_ci;
use serde::Serialize;

use crate::cases::{Case, all_cases};
use crate::{Fixture, Harness};

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
    let adapter = harness.adapter();
    if let Some(capability) = case.needs.filter(|&c| !harness.capabilities().has(c)) {
        return CaseOutcome::Skipped(format!(
            "the {adapter} adapter does not declare the `{capability}` capability"
        ));
    }
    let env = match harness.setup().await {
        Ok(env) => Arc::new(env),
        Err(err) => {
            return CaseOutcome::Failed(format!("{adapter} adapter: setting up a store failed: {err}"));
        }
    };
    let fixture = Fixture::new(Arc::clone(&harness), Arc::clone(&env));
    let run = case.run;
    let timeout = case_timeout();
    // The case runs in its own task, so that a panic (a broken sentence) is caught as its outcome.
    let joined = tokio::spawn(async move {
        let fixture = fixture;
        tokio::time::timeout(timeout, run(&fixture)).await
    })
    .await;
    let outcome = match joined {
        Ok(Ok(())) => CaseOutcome::Passed,
        Ok(Err(_)) => CaseOutcome::Failed(format!(
            "{adapter} adapter broke {}: the case did not finish within {timeout:?} (a deadlock or a lost wake-up)",
            case.name
        )),
        Err(err) if err.is_panic() => CaseOutcome::Failed(format!(
            "{adapter} adapter broke {}: {}",
            case.name,
            panic_text(err.into_panic())
        )),
        Err(err) => {
            CaseOutcome::Failed(format!("{adapter} adapter: case {} was cancelled: {err}", case.name))
        }
    };
    match harness.teardown(&env).await {
        Ok(()) => outcome,
        Err(err) if outcome == CaseOutcome::Passed => CaseOutcome::Failed(format!(
            "{adapter} adapter: removing the store of {} failed: {err}",
            case.name
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

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap_or_else(|err| panic!("cannot start a tokio runtime for the conformance suite: {err}"))
}

/// The entry point of an adapter's conformance test binary (`harness = false`): runs every case as
/// a named test, with libtest's command line (filters, `--list`, `--ignored`, ...).
///
/// Cases that need a capability the adapter lacks are reported as ignored, with the capability.
/// When [`Harness::available`] fails, every case is ignored with the reason and a loud `SKIPPED`
/// line, except under `CI=true`, where every case fails instead.
///
/// When `PAYMENTS_CONFORMANCE_REPORT_DIR` is set, each outcome is also appended to
/// `<dir>/<adapter>-<pid>.jsonl`, from which `cargo xtask` prints the conformance matrix.
pub fn main<H: Harness>(harness: H) -> ExitCode {
    let args = Arguments::from_args();
    let harness = Arc::new(harness);
    let adapter = harness.adapter();
    let availability = runtime().block_on(harness.available());
    let report = if args.list { Report::disabled() } else { Report::from_env(adapter) };

    let trials = all_cases()
        .into_iter()
        .map(|case| {
            let name = format!("{adapter}::{}", case.name);
            if let Some(capability) = case.needs.filter(|&c| !harness.capabilities().has(c)) {
                let reason = format!(
                    "needs the `{capability}` capability, which the {adapter} adapter does not declare"
                );
                report.record(case.name, "skipped", &reason);
                return Trial::test(name, move || Err(Failed::from(format!("skipped: {reason}"))))
                    .with_kind(format!("needs {capability}"))
                    .with_ignored_flag(true);
            }
            if let Err(reason) = &availability {
                if under_ci() {
                    let reason =
                        format!("{adapter} adapter cannot run, and CI=true forbids skipping: {reason}");
                    let report = report.clone();
                    return Trial::test(name, move || {
                        report.record(case.name, "failed", &reason);
                        Err(Failed::from(reason))
                    });
                }
                eprintln!("SKIPPED {name}: {reason}");
                report.record(case.name, "skipped", reason);
                let reason = reason.clone();
                return Trial::test(name, move || Err(Failed::from(format!("skipped: {reason}"))))
                    .with_kind("unavailable")
                    .with_ignored_flag(true);
            }
            let (harness, report) = (Arc::clone(&harness), report.clone());
            Trial::test(name, move || match runtime().block_on(run_case(harness, &case)) {
                CaseOutcome::Passed => {
                    report.record(case.name, "passed", "");
                    Ok(())
                }
                CaseOutcome::Failed(text) => {
                    report.record(case.name, "failed", &text);
                    Err(Failed::from(text))
                }
                CaseOutcome::Skipped(text) => {
                    report.record(case.name, "skipped", &text);
                    Err(Failed::from(format!("skipped unexpectedly: {text}")))
                }
            })
        })
        .collect();

    libtest_mimic::run(&args, trials).exit_code()
}

/// Where outcomes go for the conformance matrix: one JSON line per case.
#[derive(Clone)]
struct Report {
    adapter: &'static str,
    file: Option<Arc<Mutex<File>>>,
}

#[derive(Serialize)]
struct Line<'a> {
    adapter: &'a str,
    case: &'a str,
    outcome: &'a str,
    detail: &'a str,
}

impl Report {
    const fn disabled() -> Self {
        Self { adapter: "", file: None }
    }

    fn from_env(adapter: &'static str) -> Self {
        let Some(dir) = std::env::var_os("PAYMENTS_CONFORMANCE_REPORT_DIR").map(PathBuf::from) else {
            return Self::disabled();
        };
        let path = dir.join(format!("{adapter}-{}.jsonl", std::process::id()));
        let file = std::fs::create_dir_all(&dir)
            .and_then(|()| OpenOptions::new().create(true).append(true).open(&path))
            .unwrap_or_else(|err| panic!("cannot write the conformance report {}: {err}", path.display()));
        Self { adapter, file: Some(Arc::new(Mutex::new(file))) }
    }

    fn record(&self, case: &str, outcome: &str, detail: &str) {
        let Some(file) = &self.file else { return };
        let mut line = serde_json::to_vec(&Line { adapter: self.adapter, case, outcome, detail })
            .unwrap_or_else(|err| panic!("cannot encode a conformance report line: {err}"));
        line.push(b'\n');
        let mut file = file.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(err) = file.write_all(&line) {
            panic!("cannot append to the conformance report: {err}");
        }
    }
}
