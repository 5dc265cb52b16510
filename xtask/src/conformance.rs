//! The conformance matrix: which adapter passed, failed and skipped which case of the suite.
//!
//! Each adapter's `tests/conformance.rs` appends one JSON line per case to a report directory
//! named by [`REPORT_ENV`]; this module runs those tests and reads the lines back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::arch::AdapterKind;
use crate::metadata::{Member, Workspace};
use crate::shell;

/// The environment variable that tells a conformance test binary where to write its report.
pub(crate) const REPORT_ENV: &str = "PAYMENTS_CONFORMANCE_REPORT_DIR";

/// The name of the test target every adapter crate must have.
const TEST_TARGET: &str = "conformance";

/// A fresh directory for reports, removed when dropped.
pub(crate) struct ReportDir(PathBuf);

impl ReportDir {
    pub(crate) fn new() -> anyhow::Result<Self> {
        let dir =
            shell::root().join("target").join("xtask").join(format!("conformance-{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Self(dir))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ReportDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `cargo xtask conformance [--adapter NAME]`.
pub(crate) fn run(only: Option<&str>) -> anyhow::Result<()> {
    let workspace = Workspace::load()?;
    let adapters = selected(&workspace, only)?;
    let reports = ReportDir::new()?;
    let mut failed = Vec::new();
    for adapter in &adapters {
        let step = shell::step(
            &format!("conformance suite: {}", adapter.name),
            shell::cargo(&["test", "-p", &adapter.name, "--test", TEST_TARGET])
                .env(REPORT_ENV, reports.path()),
        );
        if step.is_err() {
            failed.push(adapter.name.clone());
        }
    }
    print_matrix(&workspace, &reports, only)?;
    if !failed.is_empty() {
        bail!("the conformance suite failed for {}", failed.join(", "));
    }
    Ok(())
}

/// The kinds of adapter that have a conformance suite.
const CERTIFIED: [AdapterKind; 2] = [AdapterKind::Store, AdapterKind::Source];

/// Every adapter with a conformance suite, stores first.
fn certified(workspace: &Workspace) -> impl Iterator<Item = &Member> {
    CERTIFIED.into_iter().flat_map(|kind| workspace.adapters(kind))
}

/// The adapters to run: all of them, or the one named (`memory` or `payments-store-memory`).
fn selected<'w>(workspace: &'w Workspace, only: Option<&str>) -> anyhow::Result<Vec<&'w Member>> {
    let adapters: Vec<&Member> = certified(workspace)
        .filter(|a| only.is_none_or(|name| a.name == name || short_name(&a.name) == name))
        .collect();
    if adapters.is_empty() {
        let known: Vec<&str> = certified(workspace).map(|a| short_name(&a.name)).collect();
        bail!("no adapter named {:?}; the adapters are: {}", only.unwrap_or(""), known.join(", "));
    }
    for adapter in &adapters {
        if !adapter.tests.iter().any(|t| t == TEST_TARGET) {
            bail!(
                "{} has no `{TEST_TARGET}` test: add tests/{TEST_TARGET}.rs with `harness = false` (see docs/adding-an-adapter.md)",
                adapter.name
            );
        }
    }
    Ok(adapters)
}

/// `payments-store-memory` → `memory`: the name an adapter's harness reports.
fn short_name(crate_name: &str) -> &str {
    AdapterKind::of(crate_name).and_then(|kind| crate_name.strip_prefix(kind.prefix())).unwrap_or(crate_name)
}

#[derive(Default)]
struct Row {
    passed: Vec<String>,
    failed: Vec<(String, String)>,
    skipped: Vec<(String, String)>,
    /// How long the volume case took, in milliseconds.
    volume_ms: Option<u64>,
}

/// The cases that measure a suite at volume: their time goes into the matrix.
const VOLUME_CASES: &[&str] = &[
    "a_hundred_thousand_payments_from_many_tasks_are_counted_listed_and_found",
    "many_messages_are_each_delivered",
];

/// Prints one line per adapter with passed / failed / skipped counts, then every skipped and failed
/// case by name. Fails when a case failed, or when an adapter reported nothing.
pub(crate) fn print_matrix(
    workspace: &Workspace,
    reports: &ReportDir,
    only: Option<&str>,
) -> anyhow::Result<()> {
    let mut rows: BTreeMap<(String, String), Row> = BTreeMap::new();
    for entry in std::fs::read_dir(reports.path()).context("cannot read the conformance reports")? {
        let path = entry?.path();
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        for line in text.lines() {
            let value: Value = serde_json::from_str(line)
                .with_context(|| format!("a broken line in {}: {line}", path.display()))?;
            let field = |name: &str| value[name].as_str().unwrap_or_default().to_owned();
            let row = rows.entry((field("kind"), field("adapter"))).or_default();
            if VOLUME_CASES.contains(&field("case").as_str()) {
                row.volume_ms = value["elapsed_ms"].as_u64();
            }
            match value["outcome"].as_str() {
                Some("passed") => row.passed.push(field("case")),
                Some("failed") => row.failed.push((field("case"), field("detail"))),
                Some("skipped") => row.skipped.push((field("case"), field("detail"))),
                other => bail!("unknown outcome {other:?} in {}", path.display()),
            }
        }
    }

    shell::section("conformance matrix");
    eprintln!(
        "{:<7} {:<12} {:>7} {:>7} {:>8} {:>10}",
        "kind", "adapter", "passed", "failed", "skipped", "volume s"
    );
    let mut problems = Vec::new();
    let selected = selected(workspace, only)?;
    let known: Vec<(&str, &str)> = selected
        .iter()
        .map(|a| (AdapterKind::of(&a.name).map_or("", AdapterKind::name), short_name(&a.name)))
        .collect();
    for (adapter, (kind, name)) in selected.iter().zip(&known) {
        match rows.get(&((*kind).to_owned(), (*name).to_owned())) {
            Some(row) => eprintln!(
                "{kind:<7} {name:<12} {:>7} {:>7} {:>8} {:>10}",
                row.passed.len(),
                row.failed.len(),
                row.skipped.len(),
                row.volume_ms.map_or_else(|| "-".to_owned(), |ms| format!("{:.1}", ms as f64 / 1000.0))
            ),
            None => {
                eprintln!("{kind:<7} {name:<12} {:>7} {:>7} {:>8} {:>10}", "-", "-", "-", "-");
                problems.push(silent_crate(&adapter.name, kind, name, &rows, &known));
            }
        }
    }
    for ((kind, adapter), row) in &rows {
        for (case, why) in &row.skipped {
            eprintln!("  SKIPPED {kind} {adapter}::{case}: {why}");
        }
        for (case, detail) in &row.failed {
            let first_line = detail.lines().next().unwrap_or_default();
            eprintln!("  FAILED  {kind} {adapter}::{case}: {first_line}");
            problems.push(format!("{adapter}::{case} failed"));
        }
    }
    if problems.is_empty() { Ok(()) } else { bail!("conformance: {}", problems.join("; ")) }
}

/// Why a crate shows no cases: its harness reports under another name (the usual slip), or its
/// test never reached the suite.
fn silent_crate(
    crate_name: &str,
    kind: &str,
    name: &str,
    rows: &BTreeMap<(String, String), Row>,
    known: &[(&str, &str)],
) -> String {
    let strays: Vec<&str> = rows
        .keys()
        .filter(|(k, n)| k == kind && !known.contains(&(k.as_str(), n.as_str())))
        .map(|(_, n)| n.as_str())
        .collect();
    match strays.as_slice() {
        [] => format!(
            "{crate_name} reported no conformance cases: does tests/{TEST_TARGET}.rs call payments_conformance::main (stores) or payments_conformance::source::main (sources)?"
        ),
        strays => format!(
            "{crate_name} reported no cases as `{name}`, but cases came from {kind} `{}`, which is no crate's name: its harness's adapter() must return `{name}`, the crate's name without `payments-{kind}-`",
            strays.join("`, `")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_harness_named_unlike_its_crate_is_reported_as_exactly_that() {
        let mut rows = BTreeMap::new();
        rows.insert(("store".to_owned(), "sqlite3".to_owned()), Row::default());
        let known = [("store", "sqlite"), ("store", "memory")];
        let text = silent_crate("payments-store-sqlite", "store", "sqlite", &rows, &known);
        assert!(
            text.contains("reported no cases as `sqlite`, but cases came from store `sqlite3`"),
            "{text}"
        );
        let text = silent_crate("payments-store-sqlite", "store", "sqlite", &BTreeMap::new(), &known);
        assert!(text.contains("does tests/conformance.rs call payments_conformance::main"), "{text}");
    }
}
