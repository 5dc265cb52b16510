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
    check(&["export", "--store", "file:"], "`file:` needs more: write file:<path>");
    check(&["simulate", "--crash-rate", "0.9"], "0.9 is above 0.5: the run might never end");
    check(&["simulate", "--duplicate-rate", "often"], "`often` is not a number");
    check(&["frobnicate"], "unrecognized subcommand");
    check(
        &["relay", "--store", "memory", "--to", "redis://127.0.0.1:1?stream=events"],
        "the memory store lives in the process that consumes into it: relay it from there, with consume --publish-to",
    );
    check(
        &["relay", "--to", "file:events"],
        "invalid value for --to: `file:events` is not something this option takes",
    );
    check(&["consume", "--store", "memory", "--publish-to", "ftp://x"], "--publish-to");
}

#[test]
fn max_message_bytes_applies_to_lines_and_wins_over_its_older_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("input.jsonl");
    let long =
        format!(r#"{{"payment_id": "long", "amount": 1, "currency": "EUR", "pad": "{}"}}"#, "x".repeat(200));
    std::fs::write(
        &path,
        format!("{long}\n{{\"payment_id\": \"short\", \"amount\": 1, \"currency\": \"EUR\"}}\n"),
    )
    .expect("write input");
    let input = path.display().to_string();
    let consume = |limits: &[&str]| {
        let mut args = vec!["consume", "--store", "memory", "--input", &input, "--report", "json"];
        args.extend_from_slice(limits);
        report(&run(app(&root(), &args)))
    };
    assert_eq!(consume(&["--max-message-bytes", "100"])["invalid"], 1, "the long line is too large");
    assert_eq!(consume(&["--max-line-bytes", "100"])["invalid"], 1, "the older name does the same");
    assert_eq!(consume(&["--max-line-bytes", "100", "--max-message-bytes", "1000"])["invalid"], 0);
    assert_eq!(consume(&[])["applied"], 2, "64 KiB by default");
}

#[test]
fn stop_when_idle_ends_a_run_whose_input_stays_open() {
    let mut child = app(
        &root(),
        &["consume", "--store", "memory", "--input", "-", "--stop-when-idle", "0.5", "--report", "json"],
    )
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("payments-app starts");
    let mut stdin = child.stdin.take().expect("piped stdin");
    std::io::Write::write_all(
        &mut stdin,
        &std::fs::read(root().join("examples/payments.jsonl")).expect("example"),
    )
    .expect("write");
    // stdin stays open: only the idle time can end the run.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let exited = child.try_wait().expect("wait").is_some();
    if !exited {
        child.kill().expect("kill");
    }
    drop(stdin);
    let output = child.wait_with_output().expect("output");
    assert!(exited, "--stop-when-idle must end the run while its input is still open");
    assert_eq!(report(&output), documented_counts());
}
