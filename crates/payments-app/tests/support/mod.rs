//! Running the binary and reading what it prints: shared by every test binary of the app
//! (`tests/it`, `tests/crash.rs`, `tests/postgres.rs`), each of which uses part of it.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The workspace root, where `examples/` lives.
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A `payments-app` command run from `dir`, where its default store goes, reading nothing from
/// stdin unless told otherwise.
pub(crate) fn app(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_payments-app"));
    command.args(args).current_dir(dir).stdin(Stdio::null());
    command
}

/// The example input's absolute path.
pub(crate) fn example() -> String {
    root().join("examples/payments.jsonl").display().to_string()
}

/// Runs `command` with `stdin` as its input and waits for it.
pub(crate) fn run_with_stdin(mut command: Command, stdin: &[u8]) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("payments-app starts");
    let mut input = child.stdin.take().expect("piped stdin");
    input.write_all(stdin).expect("payments-app reads its input");
    drop(input);
    child.wait_with_output().expect("payments-app finishes")
}

/// Runs `command` to the end.
pub(crate) fn run(mut command: Command) -> Output {
    command.output().expect("payments-app runs")
}

/// The JSON report a `--report json` run printed on stdout.
pub(crate) fn report(output: &Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "payments-app failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!("stdout is not one JSON report ({err}): {}", String::from_utf8_lossy(&output.stdout))
    })
}

/// What the process printed on stderr.
pub(crate) fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
