//! Docs that quote code must quote it as it is, and usage text must list the flags the binary has.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::shell;

/// Files that a doc quotes whole, in a fenced block: (doc, quoted file).
const QUOTED: &[(&str, &str)] =
    &[("docs/adding-an-adapter.md", "crates/payments-store-file/tests/conformance.rs")];

/// Files whose usage block (`payments-app <command> [--flag …]` lines) must name exactly the flags
/// that `payments-app <command> --help` shows, for every command it has.
const USAGES: &[&str] = &["README.md", "crates/payments-app/src/main.rs"];

/// Fails when a doc's quote of a file differs from the file, or a usage block from `--help`.
pub(crate) fn check() -> anyhow::Result<()> {
    let root = shell::root();
    for (doc, quoted) in QUOTED {
        let text = std::fs::read_to_string(root.join(doc)).with_context(|| format!("cannot read {doc}"))?;
        let code =
            std::fs::read_to_string(root.join(quoted)).with_context(|| format!("cannot read {quoted}"))?;
        if !text.contains(&format!("```rust\n{code}```")) {
            bail!("{doc} no longer quotes {quoted} as it is: copy the file into its ```rust block");
        }
    }
    let help = Help::of_the_binary()?;
    let mut problems = Vec::new();
    for doc in USAGES {
        let text = std::fs::read_to_string(root.join(doc)).with_context(|| format!("cannot read {doc}"))?;
        problems.extend(help.compare(doc, &usage_block(&text)));
    }
    if !problems.is_empty() {
        for problem in &problems {
            eprintln!("usage out of date: {problem}");
        }
        bail!("{} usage text(s) differ from `payments-app --help`", problems.len());
    }
    eprintln!("docs quote {} file(s) as they are; {} usage text(s) match --help", QUOTED.len(), USAGES.len());
    Ok(())
}

/// Every `--flag` in `text`.
fn flags(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("--") {
        let after = &rest[at + 2..];
        let len = after
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
            .unwrap_or(after.len());
        if len > 0 && after.starts_with(|c: char| c.is_ascii_lowercase()) {
            found.insert(format!("--{}", &after[..len]));
        }
        rest = &after[len..];
    }
    found
}

/// The usage block of a doc: command → the flags its lines name. A command's lines start with
/// `payments-app <command>`; indented lines after it continue it. In Rust sources, the `//! `
/// prefix of doc comments is ignored.
fn usage_block(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut usage: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let line = line.strip_prefix("//!").map_or(line, |rest| rest.strip_prefix(' ').unwrap_or(rest));
        if let Some(rest) = line.strip_prefix("payments-app ") {
            let command = rest.split_whitespace().next().unwrap_or_default().to_owned();
            usage.entry(command.clone()).or_default().extend(flags(rest));
            current = Some(command);
        } else if let (Some(command), true) = (&current, line.starts_with(' ')) {
            usage.entry(command.clone()).or_default().extend(flags(line));
        } else {
            current = None;
        }
    }
    usage
}

/// What `payments-app --help` says: its commands, and each command's flags.
struct Help {
    commands: BTreeMap<String, BTreeSet<String>>,
}

impl Help {
    /// Builds the binary and asks it.
    fn of_the_binary() -> anyhow::Result<Self> {
        let status = shell::cargo(&["build", "--quiet", "-p", "payments-app"]).status()?;
        if !status.success() {
            bail!("cannot build payments-app to read its --help");
        }
        let target =
            std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| shell::root().join("target"), PathBuf::from);
        let binary = target.join("debug").join("payments-app");
        let help = |args: &[&str]| -> anyhow::Result<String> {
            let output = Command::new(&binary)
                .args(args)
                .output()
                .with_context(|| format!("cannot run {}", binary.display()))?;
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        };
        let top = help(&["--help"])?;
        // The commands are the indented lines of the "Commands:" section, `help` aside.
        let commands: Vec<String> = top
            .lines()
            .skip_while(|line| !line.starts_with("Commands:"))
            .skip(1)
            .take_while(|line| line.starts_with(' '))
            .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
            .filter(|command| command != "help")
            .collect();
        let mut known = BTreeMap::new();
        for command in commands {
            let text = help(&[&command, "--help"])?;
            // Option lines start with a flag; descriptions may mention other flags, which are not its own.
            let own: BTreeSet<String> = text
                .lines()
                .map(str::trim_start)
                .filter(|line| line.starts_with('-'))
                .filter_map(|line| flags(line.split("  ").next().unwrap_or(line)).into_iter().next())
                .filter(|flag| flag != "--help" && flag != "--version")
                .collect();
            known.insert(command, own);
        }
        Ok(Self { commands: known })
    }

    /// What `doc`'s usage gets wrong.
    fn compare(&self, doc: &str, usage: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
        let mut problems = Vec::new();
        for (command, flags) in &self.commands {
            let Some(documented) = usage.get(command) else {
                problems.push(format!("{doc} has no usage line for `payments-app {command}`"));
                continue;
            };
            let missing: Vec<&String> = flags.difference(documented).collect();
            let unknown: Vec<&String> = documented.difference(flags).collect();
            if !missing.is_empty() {
                problems.push(format!("{doc}: `payments-app {command}` does not list {missing:?}"));
            }
            if !unknown.is_empty() {
                problems.push(format!(
                    "{doc}: `payments-app {command}` lists {unknown:?}, which --help does not have"
                ));
            }
        }
        for command in usage.keys().filter(|command| !self.commands.contains_key(*command)) {
            problems.push(format!("{doc} documents `payments-app {command}`, which does not exist"));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usage_block_is_read_line_by_line_with_its_continuations() {
        let text = "//! ```text\n//! payments-app consume [--store STORE] [--input PATH|-]\n//!                       [--report json]\n//! payments-app export [--store STORE]\n//! ```\n";
        let usage = usage_block(text);
        assert_eq!(usage["consume"], ["--input", "--report", "--store"].map(String::from).into());
        assert_eq!(usage["export"], ["--store"].map(String::from).into());
    }

    #[test]
    fn a_usage_that_drifted_from_help_is_named() {
        let help = Help {
            commands: BTreeMap::from([
                ("consume".to_owned(), ["--store", "--input"].map(String::from).into()),
                ("export".to_owned(), ["--store"].map(String::from).into()),
            ]),
        };
        let usage = usage_block("payments-app consume [--store S] [--inptu P]\npayments-app simulate\n");
        let problems = help.compare("README.md", &usage);
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("does not list [\"--input\"]")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("lists [\"--inptu\"]")), "{problems:?}");
        assert!(
            problems.iter().any(|p| p.contains("no usage line for `payments-app export`")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("`payments-app simulate`, which does not exist")),
            "{problems:?}"
        );
    }
}
