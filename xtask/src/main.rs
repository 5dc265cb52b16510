//! `cargo xtask`: the project's automation, in Rust so that it runs wherever cargo does.
//!
//! ```text
//! cargo xtask test                        fmt, clippy, architecture, every test, conformance matrix
//! cargo xtask conformance [--adapter NAME] only the conformance suite, with its matrix
//! cargo xtask arch                        only the architecture invariants
//! cargo xtask bench [--quick] [--json PATH] scenarios against their raw baselines, then micro-benchmarks
//! ```

// A command-line tool reports on stdout and stderr by design.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod arch;
mod conformance;
mod docs;
mod metadata;
mod shell;

use std::process::ExitCode;

use anyhow::bail;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  test                          formatting, clippy (warnings denied), architecture invariants,
                                every test in the workspace, then the conformance matrix
  conformance [--adapter NAME]  only the conformance suite of every adapter (or of one), with the matrix
  arch                          only the architecture invariants, read from cargo metadata
  bench [--quick] [--json PATH] every benchmark scenario beside its raw baseline, measured in the same
                                run (table on stdout, rows as JSON with --json), then the criterion
                                micro-benchmarks of the domain; --quick keeps it to about five minutes
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> anyhow::Result<()> {
    let Some((command, rest)) = args.split_first() else {
        print!("{USAGE}");
        bail!("no command given");
    };
    match command.as_str() {
        "test" => {
            no_more_args(rest)?;
            test()
        }
        "conformance" => {
            let adapter = match rest {
                [] => None,
                [flag, name] if flag == "--adapter" => Some(name.as_str()),
                _ => bail!("usage: cargo xtask conformance [--adapter NAME]"),
            };
            conformance::run(adapter)
        }
        "bench" => bench(rest),
        "arch" => {
            no_more_args(rest)?;
            arch::check(&metadata::Workspace::load()?)
        }
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(())
        }
        other => {
            print!("{USAGE}");
            bail!("unknown command `{other}`")
        }
    }
}

fn no_more_args(rest: &[String]) -> anyhow::Result<()> {
    match rest {
        [] => Ok(()),
        _ => bail!("unexpected arguments: {}", rest.join(" ")),
    }
}

/// `cargo xtask bench [--quick] [--json PATH]`.
fn bench(rest: &[String]) -> anyhow::Result<()> {
    let (mut quick, mut json) = (false, None);
    let mut args = rest.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            // Relative to where xtask was started, not to the workspace root cargo runs in.
            "--json" => match args.next() {
                Some(path) => json = Some(std::env::current_dir()?.join(path)),
                None => bail!("--json needs a path"),
            },
            other => {
                bail!("unknown bench option `{other}`; usage: cargo xtask bench [--quick] [--json PATH]")
            }
        }
    }
    let mut scenarios = shell::cargo(&["bench", "-p", "payments-app", "--bench", "scenarios", "--"]);
    let mut micro = shell::cargo(&["bench", "-p", "payments-domain", "--bench", "domain", "--"]);
    if quick {
        scenarios.arg("--quick");
        micro.arg("--quick");
    }
    if let Some(path) = &json {
        scenarios.arg("--json").arg(path);
    }
    shell::step("benchmark scenarios", &mut scenarios)?;
    shell::step("micro-benchmarks (criterion)", &mut micro)
}

/// The whole gate: what CI runs, and what the README calls the test command.
fn test() -> anyhow::Result<()> {
    shell::step("formatting", &mut shell::cargo(&["fmt", "--all", "--", "--check"]))?;
    shell::step(
        "clippy",
        &mut shell::cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    let workspace = metadata::Workspace::load()?;
    shell::section("architecture invariants");
    arch::check(&workspace)?;
    shell::section("docs that quote code");
    docs::check()?;
    let reports = conformance::ReportDir::new()?;
    shell::step(
        "tests",
        shell::cargo(&["test", "--workspace"]).env(conformance::REPORT_ENV, reports.path()),
    )?;
    conformance::print_matrix(&workspace, &reports, None)
}
