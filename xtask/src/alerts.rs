//! The alert rules operators load (docs/alerts/payments.rules.yml) must be valid, and must fire on
//! the series their unit tests give them: `promtool check rules` and `promtool test rules`.
//!
//! promtool comes from PATH, from `PAYMENTS_PROMTOOL`, or from `target/tools/promtool`, which this
//! step fills on a Debian or Ubuntu machine by extracting it from the `prometheus` package
//! (`apt-get download`, nothing installed, no service started). Without it the step is reported as
//! skipped by name; under `CI=true` it fails instead.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::shell;

/// The rules file, and its unit tests, relative to the workspace root.
const RULES: &str = "docs/alerts/payments.rules.yml";
const RULE_TESTS: &str = "docs/alerts/payments.rules.test.yml";

/// Checks the rules and runs their unit tests.
pub(crate) fn check() -> anyhow::Result<()> {
    let root = shell::root();
    let promtool = match promtool(&root) {
        Ok(promtool) => promtool,
        Err(reason) if std::env::var("CI").is_ok_and(|ci| ci == "true") => {
            bail!("alert rules: promtool is needed under CI=true: {reason:#}")
        }
        Err(reason) => {
            eprintln!("SKIPPED: alert rules (promtool not found: {reason:#})");
            return Ok(());
        }
    };
    shell::step(
        "alert rules: promtool check rules",
        Command::new(&promtool).args(["check", "rules", RULES]).current_dir(&root),
    )?;
    shell::step(
        "alert rules: promtool test rules",
        Command::new(&promtool).args(["test", "rules", RULE_TESTS]).current_dir(&root),
    )
}

/// Where promtool is, fetched into `target/tools` if it is nowhere else.
fn promtool(root: &Path) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("PAYMENTS_PROMTOOL") {
        return Ok(PathBuf::from(path));
    }
    if runs(Path::new("promtool")) {
        return Ok(PathBuf::from("promtool"));
    }
    let tools = root.join("target").join("tools");
    let cached = tools.join("promtool");
    if runs(&cached) {
        return Ok(cached);
    }
    fetch(&tools).context("cannot extract promtool from Debian's `prometheus` package")?;
    if !runs(&cached) {
        bail!("{} does not run after extraction", cached.display());
    }
    Ok(cached)
}

/// Whether `promtool --version` runs.
fn runs(promtool: &Path) -> bool {
    Command::new(promtool).arg("--version").output().is_ok_and(|output| output.status.success())
}

/// Downloads the `prometheus` package with apt (updating the package lists once if it is not
/// found) and extracts its promtool into `tools`. Everything happens in folders of this process's
/// own and the binary is renamed into place, so that two runs at once do not trip on each other.
fn fetch(tools: &Path) -> anyhow::Result<()> {
    let own = std::process::id();
    let download = tools.join(format!("download-{own}"));
    std::fs::create_dir_all(&download).with_context(|| format!("cannot create {}", download.display()))?;
    eprintln!("fetching promtool: apt-get download prometheus (into {})", download.display());
    let fetched = |download: &Path| {
        Command::new("apt-get")
            .args(["download", "prometheus"])
            .current_dir(download)
            .status()
            .is_ok_and(|status| status.success())
    };
    if !fetched(&download) {
        eprintln!("apt-get download failed; updating the package lists once (apt-get update)");
        let updated = Command::new("apt-get").arg("update").status().is_ok_and(|s| s.success());
        if !updated || !fetched(&download) {
            bail!("apt-get could not download the `prometheus` package");
        }
    }
    let package = std::fs::read_dir(&download)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .context("apt-get download left no .deb file")?;
    let unpacked = tools.join(format!("unpacked-{own}"));
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&package)
        .arg(&unpacked)
        .status()
        .context("cannot run dpkg-deb")?;
    if !status.success() {
        bail!("dpkg-deb -x {} failed ({status})", package.display());
    }
    let staged = tools.join(format!("promtool-{own}"));
    std::fs::copy(unpacked.join("usr/bin/promtool"), &staged)
        .context("the package holds no usr/bin/promtool")?;
    std::fs::rename(&staged, tools.join("promtool")).context("cannot move promtool into place")?;
    std::fs::remove_dir_all(&unpacked)?;
    std::fs::remove_dir_all(&download)?;
    Ok(())
}
