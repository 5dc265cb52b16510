//! `consume` end to end: exact counts, a corpus of malformed lines, and shutdown on SIGTERM.

use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine;

use crate::support::{app, report, run, stderr};

fn good(id: &str, amount: u64) -> String {
    format!(r#"{{"payment_id": "{id}", "amount": {amount}, "currency": "EUR"}}"#)
}

fn export(dir: &std::path::Path, store: &str) -> String {
    let output = run(app(dir, &["export", "--store", store]));
    assert!(output.status.success(), "{}", stderr(&output));
    String::from_utf8(output.stdout).expect("the export is UTF-8")
}

#[test]
fn duplicates_and_conflicts_are_counted_exactly_and_the_export_equals_one_clean_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    // 2,000 payments: each sent once, twice or three times, in a scrambled order; then 50
    // conflicting versions, far enough behind every original that the originals win.
    let mut lines = Vec::new();
    let mut sends = 0;
    for i in 0..2000u64 {
        for _ in 0..=(i % 3) {
            lines.push(((i * 7919 + sends * 104_729) % 1_000_003, good(&format!("pay-{i:05}"), 100 + i)));
            sends += 1;
        }
    }
    lines.sort();
    let mut input: Vec<String> = lines.into_iter().map(|(_, line)| line).collect();
    input.extend((0..50u64).map(|i| good(&format!("pay-{:05}", i * 40), 1)));
    let path = dir.path().join("input.jsonl");
    std::fs::write(&path, input.join("\n") + "\n").expect("write input");

    let store = format!("file:{}", dir.path().join("p.journal").display());
    let counts = report(&run(app(
        dir.path(),
        &["consume", "--store", &store, "--input", &path.display().to_string(), "--report", "json"],
    )));
    assert_eq!(
        counts,
        serde_json::json!({
            "deliveries": 4049, "applied": 2000, "duplicates": 1999, "conflicts": 50,
            "invalid": 0, "retries": 0, "unsettled": 0
        })
    );

    // One clean run: each payment once, in order, at concurrency 1.
    let clean_input = dir.path().join("clean.jsonl");
    let clean: Vec<String> = (0..2000u64).map(|i| good(&format!("pay-{i:05}"), 100 + i)).collect();
    std::fs::write(&clean_input, clean.join("\n") + "\n").expect("write clean input");
    let clean_store = format!("file:{}", dir.path().join("clean.journal").display());
    let clean_run = run(app(
        dir.path(),
        &[
            "consume",
            "--store",
            &clean_store,
            "--input",
            &clean_input.display().to_string(),
            "--concurrency",
            "1",
        ],
    ));
    assert!(clean_run.status.success());
    assert_eq!(export(dir.path(), &store), export(dir.path(), &clean_store));
}

/// A malformed line, and what its dead letter must say.
struct Bad {
    line: Vec<u8>,
    kind: &'static str,
    reason: &'static str,
}

fn bad(line: impl Into<Vec<u8>>, reason: &'static str) -> Bad {
    Bad { line: line.into(), kind: "invalid", reason }
}

fn corpus() -> Vec<Bad> {
    let mut corpus = vec![
        bad(r#"{"payment_id": "m1", "amount": 100, "currency": "EUR""#, "EOF while parsing an object"),
        bad(r#"{"payment_id": "m2", "amount": 100, "currency": "EUR"}}"#, "trailing characters"),
        bad(
            r#"{"payment_id": 123, "amount": 100, "currency": "EUR"}"#,
            "invalid payment_id 123: must be a string",
        ),
        bad(r#"{"payment_id": "m4", "amount": "100", "currency": "EUR"}"#, r#"invalid amount "100""#),
        bad(
            r#"{"payment_id": "m5", "amount": 100, "currency": 978}"#,
            "invalid currency 978: must be a string",
        ),
        bad(r#"{"amount": 100, "currency": "EUR"}"#, "invalid payment_id: is missing"),
        bad(r#"{"payment_id": "m7", "currency": "EUR"}"#, "invalid amount: is missing"),
        bad(r#"{"payment_id": "m8", "amount": 100}"#, "invalid currency: is missing"),
        bad(
            r#"{"payment_id": "m9", "amount": -100, "currency": "EUR"}"#,
            "invalid amount -100: is out of range",
        ),
        bad(r#"{"payment_id": "m10", "amount": 0, "currency": "EUR"}"#, "invalid amount 0: is out of range"),
        bad(r#"{"payment_id": "m11", "amount": 1000000000001, "currency": "EUR"}"#, "is out of range"),
        bad(
            r#"{"payment_id": "m12", "amount": 99999999999999999999999, "currency": "EUR"}"#,
            "is out of range",
        ),
        bad(r#"{"payment_id": "m13", "amount": 10.5, "currency": "EUR"}"#, "without fraction or exponent"),
        bad(r#"{"payment_id": "m14", "amount": 1e3, "currency": "EUR"}"#, "without fraction or exponent"),
        bad(r#"{"payment_id": "m15", "amount": 100, "currency": "eur"}"#, r#"invalid currency "eur""#),
        bad(r#"{"payment_id": "m16", "amount": 100, "currency": "EURO"}"#, r#"invalid currency "EURO""#),
        bad(r#"{"payment_id": "m17", "amount": 100, "currency": "EU"}"#, r#"invalid currency "EU""#),
        bad(r#"{"payment_id": "", "amount": 100, "currency": "EUR"}"#, r#"invalid payment_id "": is empty"#),
        bad(
            format!(r#"{{"payment_id": "{}", "amount": 100, "currency": "EUR"}}"#, "x".repeat(65)),
            "is 65 bytes long",
        ),
        bad(r#"{"payment_id": "pay-é", "amount": 100, "currency": "EUR"}"#, "contains 'é' at byte 4"),
        bad(r#"{"payment_id": "pay 21", "amount": 100, "currency": "EUR"}"#, "contains ' ' at byte 3"),
        bad(r#"{"payment_id": "\t", "amount": 100, "currency": "EUR"}"#, r#"contains '\t' at byte 0"#),
        bad(
            r#"{"payment_id": {"a": [1, {"b": null}]}, "amount": 100, "currency": "EUR"}"#,
            "must be a string",
        ),
        bad("[1, 2, 3]", "expected a JSON object"),
        bad("null", "expected a JSON object"),
        bad(r#""just a string""#, "expected a JSON object"),
        bad(&b"{\"payment_id\": \"m27\0\", \"amount\": 100, \"currency\": \"EUR\"}"[..], "control character"),
        bad(
            &b"{\"payment_id\": \"m28\xff\xfe\", \"amount\": 100, \"currency\": \"EUR\"}"[..],
            "invalid unicode",
        ),
        bad("", "EOF while parsing a value"),
        bad("   ", "EOF while parsing a value"),
        bad(r#"{"payment_id": "m31", "amount": true, "currency": "EUR"}"#, "invalid amount true"),
        bad(
            r#"{"payment_id": "m32", "amount": 100, "currency": "EUR", "amount": 200}"#,
            "duplicate field `amount`",
        ),
        bad(r#"{"payment_id": null, "amount": 100, "currency": "EUR"}"#, "invalid payment_id: is missing"),
        bad(r#"{"payment_id": "m34", "amount": -0, "currency": "EUR"}"#, "is out of range"),
        bad(r#"{"payment_id": "m35", "amount": 0x10, "currency": "EUR"}"#, "not a PaymentTaken JSON object"),
    ];
    corpus.push(Bad {
        line: format!(r#"{{"payment_id": "big", "pad": "{}"}}"#, "y".repeat(1 << 20)).into_bytes(),
        kind: "too_large",
        reason: "over the limit of 65536 bytes",
    });
    corpus
}

#[test]
fn every_malformed_line_is_dead_lettered_with_its_reason_and_the_good_lines_around_it_are_applied() {
    let dir = tempfile::tempdir().expect("temp dir");
    let corpus = corpus();
    assert!(corpus.len() >= 30);
    // good, bad, good, bad, ..., good: line 2k+2 is the kth malformed line.
    let mut input = Vec::new();
    for (k, bad) in corpus.iter().enumerate() {
        input.extend_from_slice(good(&format!("good-{k}"), 1 + k as u64).as_bytes());
        input.push(b'\n');
        input.extend_from_slice(&bad.line);
        input.push(b'\n');
    }
    input.extend_from_slice(good("good-last", 7).as_bytes());
    let path = dir.path().join("input.jsonl");
    std::fs::write(&path, &input).expect("write input");
    let letters = dir.path().join("dead.jsonl");
    let store = format!("file:{}", dir.path().join("p.journal").display());

    let counts = report(&run(app(
        dir.path(),
        &[
            "consume",
            "--store",
            &store,
            "--input",
            &path.display().to_string(),
            "--dead-letter",
            &letters.display().to_string(),
            "--report",
            "json",
        ],
    )));
    assert_eq!(counts["applied"], corpus.len() + 1, "{counts}");
    assert_eq!(counts["invalid"], corpus.len(), "{counts}");
    assert_eq!(counts["deliveries"], 2 * corpus.len() + 1, "{counts}");

    let text = std::fs::read_to_string(&letters).expect("dead letters");
    let mut by_line = std::collections::HashMap::new();
    for letter in text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON letter")) {
        let origin = letter["origin"].as_str().expect("origin").to_owned();
        by_line.insert(origin, letter);
    }
    assert_eq!(by_line.len(), corpus.len(), "one dead letter per malformed line");
    let base64 = base64::engine::general_purpose::STANDARD;
    for (k, bad) in corpus.iter().enumerate() {
        let origin = format!("line {}", 2 * k + 2);
        let letter = by_line.get(&origin).unwrap_or_else(|| panic!("no dead letter for {origin}"));
        let reason = letter["reason"].as_str().expect("reason");
        assert_eq!(letter["kind"], bad.kind, "{origin}: {reason}");
        assert!(reason.contains(bad.reason), "{origin}: expected {:?} in {reason:?}", bad.reason);
        let payload =
            base64.decode(letter["payload_base64"].as_str().expect("base64")).expect("valid base64");
        if bad.kind == "too_large" {
            assert_eq!(letter["payload_len"], bad.line.len(), "{origin}");
            assert!(bad.line.starts_with(&payload), "{origin}: the head of the line is kept");
        } else {
            assert_eq!(payload, bad.line, "{origin}: the raw payload is kept byte for byte");
        }
    }
}

#[test]
fn sigterm_mid_run_exits_zero_and_running_again_gives_the_export_of_one_clean_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let lines: Vec<String> =
        (0..300_000u64).map(|i| good(&format!("pay-{:07}", (i * 7919) % 150_000), 1 + i % 150_000)).collect();
    let path = dir.path().join("input.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").expect("write input");
    let journal = dir.path().join("p.journal");
    let store = format!("file:{}", journal.display());
    let input = path.display().to_string();

    let child = app(dir.path(), &["consume", "--store", &store, "--input", &input, "--report", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("consume starts");
    // Wait until it is recording, then ask it to stop.
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(&journal).map_or(0, |m| m.len()) < 100_000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    assert!(status.expect("kill runs").success());
    let output = child.wait_with_output().expect("consume ends");
    let message = stderr(&output);
    assert!(output.status.success(), "SIGTERM must exit 0: {message}");
    assert!(message.contains("shutting down: finishing deliveries in flight"), "{message}");
    assert!(message.contains("shut down after"), "{message}");
    let first = report(&output);
    let delivered = first["deliveries"].as_u64().expect("deliveries");
    assert!(delivered > 0 && delivered < 300_000, "the signal must land mid-run: {first}");
    assert_eq!(first["unsettled"], 0, "in-flight deliveries are finished, not dropped: {first}");

    // Run again to the end: the same final state as one clean run.
    let again = run(app(dir.path(), &["consume", "--store", &store, "--input", &input]));
    assert!(again.status.success(), "{}", stderr(&again));
    let clean_store = format!("file:{}", dir.path().join("clean.journal").display());
    let clean = run(app(dir.path(), &["consume", "--store", &clean_store, "--input", &input]));
    assert!(clean.status.success());
    let (resumed, once) = (export(dir.path(), &store), export(dir.path(), &clean_store));
    assert_eq!(resumed.lines().count(), 150_000);
    assert!(resumed == once, "the export after a SIGTERM and a rerun differs from one clean run");
}
