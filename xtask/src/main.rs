//! `cargo xtask`: the project's automation, in Rust so that it runs wherever cargo does.
//!
//! ```text
//! cargo xtask test                        fmt, clippy, architecture, docs, alert rules, every test, conformance matrix
//! cargo xtask conformance [--adapter NAME] only the conformance suite, with its matrix
//! cargo xtask arch                        only the architecture invariants
//! cargo xtask alerts                      only the alert rules (promtool check and test)
//! cargo xtask docs                        only the docs that quote code and the usage texts
//! cargo xtask bench [--quick] [--json PATH] scenarios against their raw baselines, then micro-benchmarks
//! cargo xtask crash [--store NAME|all] [--source lines|redis|nats|rabbitmq|all] [--kills N] [--payments M]   SIGKILL torture, with its check
//! cargo xtask crash --outbox [--store file|postgres|all] [--to nats|redis|all] [--kills N] [--payments M]   the outbox pipeline under SIGKILLs
//! cargo xtask fuzz [--seconds N] [--target NAME]   every fuzz target (nightly and cargo-fuzz)
//! cargo xtask new-adapter <backend> [--kind store|source]   a new adapter crate, ready for its suite
//! ```

// A command-line tool reports on stdout and stderr by design.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod alerts;
mod arch;
mod conformance;
mod docs;
mod fuzz;
mod metadata;
mod scaffold;
mod shell;

use std::process::ExitCode;

use anyhow::{Context as _, bail};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  test                          formatting, clippy (warnings denied), architecture invariants,
                                docs that quote code, the alert rules (promtool), every test in
                                the workspace, the conformance matrix, then a
                                scaffolded store and source, whose suites must fail every case
  conformance [--adapter NAME]  only the conformance suite of every adapter (or of one), with the matrix
  arch                          only the architecture invariants, read from cargo metadata
  alerts                        only the alert rules: promtool check rules and test rules
  docs                          only the docs that quote code, and the usage texts against --help
  bench [--quick] [--json PATH] every benchmark scenario beside its raw baseline, measured in the same
                                run (table on stdout, rows as JSON with --json), then the criterion
                                micro-benchmarks of the domain; --quick keeps it to about five minutes
  crash [--store NAME|all] [--source lines|redis|nats|rabbitmq|all] [--kills N] [--payments M]
  crash --outbox [--store file|postgres|all] [--to nats|redis|all] [--kills N] [--payments M]
                                SIGKILLs payments-app consume at random moments, restarts it, and checks
                                the store against the input (default: every store of the app's table
                                that outlives its process, 100 kills, 100,000 payments; cargo xtask
                                test runs a reduced form)
  new-adapter <backend> [--kind store|source]
                                a new adapter crate, crates/payments-<kind>-<backend>, whose conformance
                                suite runs at once and fails every case by name: the to-do list
  scaffold-check                only the last step of test: scaffolds into a copy of the workspace
  fuzz [--seconds N] [--target NAME]
                                runs each cargo-fuzz target for N seconds (default 60) from its seed
                                corpus; needs the nightly toolchain and cargo-fuzz, and says so
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
        "new-adapter" => scaffold::run(rest),
        "scaffold-check" => {
            no_more_args(rest)?;
            scaffold::check()
        }
        "crash" => crash(rest),
        "fuzz" => fuzz::run(rest),
        "arch" => {
            no_more_args(rest)?;
            arch::check(&metadata::Workspace::load()?)
        }
        "alerts" => {
            no_more_args(rest)?;
            alerts::check()
        }
        "docs" => {
            no_more_args(rest)?;
            docs::check()
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

/// `cargo xtask bench [--quick] [--json PATH]`: every crate's `scenarios` benchmark (stores and
/// sources first, the app's end-to-end ones last), each writing its rows, then the criterion
/// micro-benchmarks of the domain.
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
    let workspace = metadata::Workspace::load()?;
    let mut crates: Vec<&metadata::Member> =
        workspace.members.values().filter(|m| m.benches.iter().any(|b| b == "scenarios")).collect();
    crates.sort_by_key(|m| (arch::AdapterKind::of(&m.name).map_or(3, |kind| kind as u8), m.name.clone()));
    let rows_dir = conformance::ReportDir::new()?;
    let mut rows = Vec::new();
    for member in crates {
        let path = rows_dir.path().join(format!("{}.json", member.name));
        let mut command = shell::cargo(&["bench", "-p", &member.name, "--bench", "scenarios", "--"]);
        if quick {
            command.arg("--quick");
        }
        command.arg("--json").arg(&path);
        shell::step(&format!("benchmark scenarios: {}", member.name), &mut command)?;
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{} wrote no rows to {}", member.name, path.display()))?;
        let produced: Vec<serde_json::Value> = serde_json::from_str(&text)
            .with_context(|| format!("the rows of {} are not JSON", member.name))?;
        rows.extend(produced);
    }
    shell::section("benchmark rows");
    for row in &rows {
        let number = |key: &str, digits: usize| {
            row[key].as_f64().map_or_else(|| "-".to_owned(), |x| format!("{x:.digits$}"))
        };
        let met = match row["met"].as_bool() {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        eprintln!(
            "{:<30} {:>12} ops/s  ratio {:>6}  {:<18} {met}",
            row["scenario"].as_str().unwrap_or_default(),
            number("ops_per_sec", 0),
            number("ratio", 2),
            row["target"].as_str().unwrap_or_default(),
        );
    }
    if let Some(path) = &json {
        let text = serde_json::to_string_pretty(&rows)?;
        std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    let mut micro = shell::cargo(&["bench", "-p", "payments-domain", "--bench", "domain", "--"]);
    if quick {
        micro.arg("--quick");
    }
    shell::step("micro-benchmarks (criterion)", &mut micro)
}

/// `cargo xtask crash [--store NAME|all] [--source lines|redis|nats|rabbitmq|all] [--kills N] [--payments M]`: the crash test, sized
/// for the documented figures unless told otherwise, on a release build.
fn crash(rest: &[String]) -> anyhow::Result<()> {
    let mut args: Vec<String> = vec![
        "--store".into(),
        "all".into(),
        "--source".into(),
        "all".into(),
        "--kills".into(),
        "100".into(),
        "--payments".into(),
        "100000".into(),
    ];
    // `--outbox`: the outbox pipeline's torture instead, which takes --store, --kills, --payments.
    if rest.iter().any(|flag| flag == "--outbox") {
        return crash_outbox(rest);
    }
    let mut given = rest.iter();
    while let Some(flag) = given.next() {
        let Some(slot) =
            ["--store", "--source", "--kills", "--payments"].iter().position(|known| known == flag)
        else {
            bail!(
                "unknown crash option `{flag}`; usage: cargo xtask crash [--store NAME|all] [--source lines|redis|nats|rabbitmq|all] [--kills N] [--payments M]"
            );
        };
        let Some(value) = given.next() else { bail!("{flag} needs a value") };
        args[slot * 2 + 1] = value.clone();
    }
    let mut command = shell::cargo(&["test", "--release", "-p", "payments-app", "--test", "crash", "--"]);
    command.args(&args);
    shell::step("crash test", &mut command)
}

/// `cargo xtask crash --outbox [--store file|postgres|all] [--to nats|redis|all] [--kills N] [--payments M]`: the outbox
/// pipeline (consumer, relays and a downstream consumer) under SIGKILLs, sized for the documented
/// figures unless told otherwise, on a release build.
fn crash_outbox(rest: &[String]) -> anyhow::Result<()> {
    let mut args: Vec<String> = ["--store", "all", "--to", "all", "--kills", "100", "--payments", "50000"]
        .iter()
        .map(|a| (*a).to_owned())
        .collect();
    let mut given = rest.iter().filter(|flag| *flag != "--outbox");
    while let Some(flag) = given.next() {
        let Some(slot) = ["--store", "--to", "--kills", "--payments"].iter().position(|known| known == flag)
        else {
            bail!(
                "unknown crash --outbox option `{flag}`; usage: cargo xtask crash --outbox [--store file|postgres|all] [--to nats|redis|all] [--kills N] [--payments M]"
            );
        };
        let Some(value) = given.next() else { bail!("{flag} needs a value") };
        args[slot * 2 + 1] = value.clone();
    }
    let mut command = shell::cargo(&["test", "--release", "-p", "payments-app", "--test", "outbox", "--"]);
    command.args(&args);
    shell::step("outbox crash test", &mut command)
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
    alerts::check()?;
    let reports = conformance::ReportDir::new()?;
    shell::step(
        "tests",
        shell::cargo(&["test", "--workspace"]).env(conformance::REPORT_ENV, reports.path()),
    )?;
    conformance::print_matrix(&workspace, &reports, None)?;
    shell::section("a scaffolded adapter fails every case by name");
    scaffold::check()
}
