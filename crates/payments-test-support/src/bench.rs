//! The rows of `cargo xtask bench`: each scenario beside the raw limit it is measured against, in
//! the same run, and the command line every benchmark binary (`benches/scenarios.rs`, `harness =
//! false`) shares:
//!
//! ```text
//! cargo bench -p <crate> --bench scenarios -- [--quick] [--json PATH] [--only PREFIX]
//! ```
//!
//! The ratio to the baseline is what is compared with a target, because absolute figures move
//! with the machine and its neighbours. `cargo xtask bench` runs every crate's `scenarios` and
//! gathers the rows.

// A benchmark harness reports on stdout and stderr by design.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde::Serialize;

/// A scenario group: its name (matched by `--only`), and what produces its rows.
pub type Scenario<'a> = (&'a str, &'a dyn Fn(Scale) -> Vec<Row>);

/// The entry point of a `scenarios` benchmark binary: parses the shared command line, runs the
/// selected scenarios, prints their rows, and with `--json PATH` writes them as a JSON array.
pub fn main(scenarios: &[Scenario<'_>]) -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut scale, mut json, mut only) = (Scale::Full, None, None);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => scale = Scale::Quick,
            "--json" => json = args.next(),
            "--only" => only = args.next(),
            // cargo bench passes --bench; libtest flags mean nothing here.
            _ => {}
        }
    }
    let mut rows: Vec<Row> = Vec::new();
    for (name, scenario) in scenarios {
        if only.as_deref().is_some_and(|prefix| !name.starts_with(prefix)) {
            continue;
        }
        eprintln!("running {name} ...");
        let produced = scenario(scale);
        for row in &produced {
            eprintln!("  {}", row.line());
        }
        rows.extend(produced);
    }
    println!("\n{}", Row::header());
    for row in &rows {
        println!("{}", row.line());
    }
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&rows).unwrap_or_else(|err| format!("\"{err}\""));
        if let Err(err) = std::fs::write(&path, text + "\n") {
            eprintln!("cannot write {path}: {err}");
            return ExitCode::FAILURE;
        }
    }
    let missed: Vec<&str> =
        rows.iter().filter(|r| r.met == Some(false)).map(|r| r.scenario.as_str()).collect();
    if !missed.is_empty() {
        eprintln!("targets missed on this run: {}", missed.join(", "));
    }
    ExitCode::SUCCESS
}

/// How long a run may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    /// About five minutes in all.
    Quick,
    /// The figures for docs/PERFORMANCE.md.
    Full,
}

impl Scale {
    /// `quick` or `full`, by scale.
    pub fn pick(self, quick: usize, full: usize) -> usize {
        match self {
            Self::Quick => quick,
            Self::Full => full,
        }
    }
}

/// One row of the report, in the JSON shape `cargo xtask bench --json` promises.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// The scenario's name, `<group>.<what>[.<concurrency>]`.
    pub scenario: String,
    /// Its throughput.
    pub ops_per_sec: f64,
    /// Median latency of one operation, in microseconds (0 when not measured per operation).
    pub p50_us: f64,
    /// 99th percentile latency, in microseconds.
    pub p99_us: f64,
    /// What it is measured against.
    pub baseline: String,
    /// The baseline's throughput, measured in the same run.
    pub baseline_ops_per_sec: Option<f64>,
    /// `ops_per_sec / baseline_ops_per_sec`.
    pub ratio: Option<f64>,
    /// What the ratio (or, without a baseline, ops/s) must reach.
    pub target: String,
    /// Whether the target was met on this run.
    pub met: Option<bool>,
    /// Anything else worth knowing (bytes per payment, batch sizes).
    pub note: String,
}

/// How a target is judged.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// `ratio >= x`.
    Ratio(f64),
    /// `ops/s >= x`, for scenarios without a baseline.
    OpsPerSec(f64),
    /// Reported only.
    None,
}

/// Latencies of individual operations.
#[derive(Debug, Default)]
pub struct Latencies(Vec<Duration>);

impl Latencies {
    /// Room for `n` latencies.
    pub fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n))
    }

    /// Adds one.
    pub fn push(&mut self, latency: Duration) {
        self.0.push(latency);
    }

    /// Adds all of `other`.
    pub fn extend(&mut self, other: Self) {
        self.0.extend(other.0);
    }

    /// The `q` quantile in microseconds.
    pub fn quantile_us(&mut self, q: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.sort_unstable();
        let index = ((self.0.len() - 1) as f64 * q).round() as usize;
        self.0[index].as_secs_f64() * 1e6
    }
}

/// Operations per second.
pub fn rate(ops: usize, elapsed: Duration) -> f64 {
    ops as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// The median of `values`.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Times `f`.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let value = f();
    (value, start.elapsed())
}

impl Row {
    #[allow(clippy::too_many_arguments)] // One row, one call: the fields are the report's columns.
    /// A row for `scenario`, judged against `target`.
    pub fn new(
        scenario: &str,
        ops_per_sec: f64,
        latencies: &mut Latencies,
        baseline: &str,
        baseline_ops_per_sec: Option<f64>,
        target: Target,
        note: String,
    ) -> Self {
        let ratio = baseline_ops_per_sec.map(|b| ops_per_sec / b);
        let (target_text, met) = match target {
            Target::Ratio(x) => (format!("ratio >= {x}"), ratio.map(|r| r >= x)),
            Target::OpsPerSec(x) => (format!(">= {x:.0}/s"), Some(ops_per_sec >= x)),
            Target::None => (String::new(), None),
        };
        Self {
            scenario: scenario.to_owned(),
            ops_per_sec,
            p50_us: latencies.quantile_us(0.5),
            p99_us: latencies.quantile_us(0.99),
            baseline: baseline.to_owned(),
            baseline_ops_per_sec,
            ratio,
            target: target_text,
            met,
            note,
        }
    }

    /// The header of the printed table.
    pub fn header() -> String {
        format!(
            "{:<26} {:>12} {:>9} {:>9}  {:<44} {:>12} {:>7}  {:<16} {:<4} {}",
            "scenario",
            "ops/s",
            "p50 µs",
            "p99 µs",
            "baseline",
            "baseline/s",
            "ratio",
            "target",
            "met",
            "note"
        )
    }

    /// The row as a line of the printed table.
    pub fn line(&self) -> String {
        let number =
            |x: Option<f64>, digits: usize| x.map_or_else(|| "-".to_owned(), |x| format!("{x:.digits$}"));
        format!(
            "{:<26} {:>12.0} {:>9.1} {:>9.1}  {:<44} {:>12} {:>7}  {:<16} {:<4} {}",
            self.scenario,
            self.ops_per_sec,
            self.p50_us,
            self.p99_us,
            self.baseline,
            number(self.baseline_ops_per_sec, 0),
            number(self.ratio, 2),
            self.target,
            match self.met {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            },
            self.note
        )
    }
}
