//! `cargo xtask fuzz`: runs every libFuzzer target in `fuzz/` for a while. Kept out of `cargo xtask
//! test` because it needs the nightly toolchain.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::shell;

/// The targets in fuzz/fuzz_targets, in the order they run.
const TARGETS: &[&str] = &["decode_event", "journal"];

pub(crate) fn run(rest: &[String]) -> anyhow::Result<()> {
    let (mut seconds, mut only) = (60u64, None);
    let mut args = rest.iter();
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--seconds", Some(value)) => {
                seconds = value.parse().with_context(|| format!("--seconds {value}"))?
            }
            ("--target", Some(value)) => only = Some(value.clone()),
            _ => bail!("usage: cargo xtask fuzz [--seconds N] [--target NAME]"),
        }
    }
    let targets: Vec<&str> =
        TARGETS.iter().copied().filter(|t| only.as_deref().is_none_or(|o| o == *t)).collect();
    if targets.is_empty() {
        bail!("no fuzz target named {:?}; the targets are: {}", only.unwrap_or_default(), TARGETS.join(", "));
    }
    check_tools()?;
    for target in targets {
        let mut command = Command::new("cargo");
        command
            .args(["+nightly", "fuzz", "run", target, "--", &format!("-max_total_time={seconds}")])
            .current_dir(shell::root().join("fuzz"));
        shell::step(&format!("fuzz {target} for {seconds} s"), &mut command)?;
    }
    Ok(())
}

/// Says what is missing, and how to get it, before anything is built.
fn check_tools() -> anyhow::Result<()> {
    let works = |args: &[&str]| Command::new("cargo").args(args).output().is_ok_and(|o| o.status.success());
    if !works(&["+nightly", "--version"]) {
        bail!(
            "fuzzing needs the nightly toolchain, which is not installed: rustup toolchain install nightly"
        );
    }
    if !works(&["+nightly", "fuzz", "--version"]) {
        bail!("fuzzing needs cargo-fuzz, which is not installed: cargo install cargo-fuzz");
    }
    Ok(())
}
