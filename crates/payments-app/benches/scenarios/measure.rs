//! Timing, percentiles, and the rows of the report.

use std::time::{Duration, Instant};

use serde::Serialize;

/// How long a run may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scale {
    /// About five minutes in all.
    Quick,
    /// The figures for docs/PERFORMANCE.md.
    Full,
}

impl Scale {
    pub(crate) fn pick(self, quick: usize, full: usize) -> usize {
        match self {
            Self::Quick => quick,
            Self::Full => full,
        }
    }
}

/// One row of the report, in the JSON shape `cargo xtask bench --json` promises.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Row {
    pub(crate) scenario: String,
    pub(crate) ops_per_sec: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) baseline: String,
    pub(crate) baseline_ops_per_sec: Option<f64>,
    pub(crate) ratio: Option<f64>,
    /// What the ratio (or, without a baseline, ops/s) must reach.
    pub(crate) target: String,
    pub(crate) met: Option<bool>,
    /// Anything else worth knowing (bytes per payment, batch sizes).
    pub(crate) note: String,
}

/// How a target is judged.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Target {
    /// `ratio >= x`.
    Ratio(f64),
    /// `ops/s >= x`, for scenarios without a baseline.
    OpsPerSec(f64),
    /// Reported only.
    None,
}

/// Latencies of individual operations.
#[derive(Debug, Default)]
pub(crate) struct Latencies(Vec<Duration>);

impl Latencies {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n))
    }

    pub(crate) fn push(&mut self, latency: Duration) {
        self.0.push(latency);
    }

    pub(crate) fn extend(&mut self, other: Self) {
        self.0.extend(other.0);
    }

    /// The `q` quantile in microseconds.
    pub(crate) fn quantile_us(&mut self, q: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.sort_unstable();
        let index = ((self.0.len() - 1) as f64 * q).round() as usize;
        self.0[index].as_secs_f64() * 1e6
    }
}

/// Operations per second.
pub(crate) fn rate(ops: usize, elapsed: Duration) -> f64 {
    ops as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// The median of `values`.
pub(crate) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Times `f`.
pub(crate) fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let value = f();
    (value, start.elapsed())
}

impl Row {
    #[allow(clippy::too_many_arguments)] // One row, one call: the fields are the report's columns.
    pub(crate) fn new(
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

    pub(crate) fn header() -> String {
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

    pub(crate) fn line(&self) -> String {
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
