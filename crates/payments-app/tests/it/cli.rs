//! The command-line contract: the example's documented counts, exit statuses and error messages.

use crate::support::{app, report, root, run, run_with_stdin, stderr};

/// The counts written down in examples/README.md, read from there so that the docs cannot drift.
fn documented_counts() -> serde_json::Value {
    let readme = std::fs::read_to_string(root().join("examples/README.md")).expect("examples/README.md");
    let block = readme.split("```json\n").nth(1).and_then(|rest| rest.split("```").next());
    serde_json::from_str(block.expect("a json block in examples/README.md")).expect("the block is JSON")
}

#[test]
fn the_example_input_gives_the_documented_counts_at_any_concurrency() {
    for concurrency in ["1", "7", "64"] {
        let output = run(app(
            &root(),
            &[
                "consume",
                "--store",
                "memory",
                "--input",
                "examples/payments.jsonl",
                "--concurrency",
                concurrency,
                "--report",
                "json",
            ],
        ));
        assert_eq!(report(&output), documented_counts(), "concurrency {concurrency}");
        let stderr = stderr(&output);
        assert!(
            stderr.contains("12 deliveries: 4 applied, 3 duplicates"),
            "human summary on stderr: {stderr}"
        );
    }
}

#[test]
fn reads_stdin_when_the_input_is_a_dash() {
    let input = std::fs::read(root().join("examples/payments.jsonl")).expect("example input");
    let output = run_with_stdin(
        app(&root(), &["consume", "--store", "memory", "--input", "-", "--report", "json"]),
        &input,
    );
    assert_eq!(report(&output), documented_counts());
}

#[test]
fn dead_letters_of_the_memory_store_go_to_stderr_as_json_lines() {
    let output = run(app(&root(), &["consume", "--store", "memory", "--input", "examples/payments.jsonl"]));
    assert!(output.status.success());
    let letters: Vec<serde_json::Value> =
        stderr(&output).lines().filter_map(|line| serde_json::from_str(line).ok()).collect();
    let kinds: Vec<&str> = letters.iter().filter_map(|l| l["kind"].as_str()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "conflict").count(), 1, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "invalid").count(), 4, "{kinds:?}");
    let conflict = letters.iter().find(|l| l["kind"] == "conflict").expect("a conflict letter");
    assert_eq!(conflict["stored"]["amount"], 12000);
    assert_eq!(conflict["incoming"]["amount"], 12500);
    assert_eq!(conflict["origin"], "line 6");
}

#[test]
fn bad_arguments_fail_with_a_message_that_names_them() {
    let check = |args: &[&str], expected: &str| {
        let output = run(app(&root(), args));
        assert!(!output.status.success(), "{args:?} must fail");
        let stderr = stderr(&output);
        assert!(stderr.contains(expected), "{args:?}: expected {expected:?} in: {stderr}");
    };
    check(&["consume", "--store", "redis://localhost"], "unknown store `redis://localhost`");
    check(&["consume", "--store", "memory", "--concurrency", "0"], "--concurrency");
    check(
        &["consume", "--store", "memory", "--input", "no/such/file.jsonl"],
        "cannot open input no/such/file.jsonl",
    );
    check(
        &["consume", "--store", "memory", "--retry-limit-secs=-1"],
        "--retry-limit-secs -1 is not a duration",
    );
    check(&["consume", "--report", "xml"], "invalid value 'xml'");
    check(&["export", "--store", "file:"], "`file:` needs a path");
    check(&["simulate", "--crash-rate", "0.9"], "0.9 is above 0.5: the run might never end");
    check(&["simulate", "--duplicate-rate", "often"], "`often` is not a number");
    check(&["frobnicate"], "unrecognized subcommand");
}
