//! The embedded default store: what survives between runs, where dead letters go, one consumer
//! per journal.

use std::process::Stdio;

use crate::support::{app, example, report, run, stderr};

#[test]
fn without_store_the_journal_in_data_is_used_and_remembers_across_runs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let consume = || run(app(dir.path(), &["consume", "--input", &example(), "--report", "json"]));

    let first = report(&consume());
    assert_eq!(first["applied"], 4, "{first}");
    assert!(
        dir.path().join("data/payments.journal").is_file(),
        "the default journal is ./data/payments.journal"
    );

    // A redelivery of everything after a restart: nothing is applied twice.
    let second = report(&consume());
    assert_eq!(
        second,
        serde_json::json!({"deliveries": 12, "applied": 0, "duplicates": 7, "conflicts": 1, "invalid": 4, "retries": 0, "unsettled": 0})
    );

    let export = run(app(dir.path(), &["export"]));
    assert!(export.status.success(), "{}", stderr(&export));
    assert_eq!(
        String::from_utf8_lossy(&export.stdout),
        concat!(
            r#"{"payment_id":"pay-0001","amount":1999,"currency":"EUR"}"#,
            "\n",
            r#"{"payment_id":"pay-0002","amount":500,"currency":"USD"}"#,
            "\n",
            r#"{"payment_id":"pay-0003","amount":12000,"currency":"GBP"}"#,
            "\n",
            r#"{"payment_id":"pay-0008","amount":4200,"currency":"JPY"}"#,
            "\n",
        ),
        "the export holds each payment once, the first version of the conflicting one, in ID order"
    );

    // Dead letters went beside the journal, five per run.
    let letters =
        std::fs::read_to_string(dir.path().join("data/payments.dead-letters.jsonl")).expect("dead letters");
    assert_eq!(letters.lines().count(), 10);
}

#[test]
fn an_export_can_be_consumed_again_as_pure_duplicates() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = format!("file:{}", dir.path().join("p.journal").display());
    assert!(run(app(dir.path(), &["consume", "--store", &store, "--input", &example()])).status.success());
    let export = run(app(dir.path(), &["export", "--store", &store]));
    let exported = dir.path().join("export.jsonl");
    std::fs::write(&exported, &export.stdout).expect("write export");
    let again = report(&run(app(
        dir.path(),
        &["consume", "--store", &store, "--input", &exported.display().to_string(), "--report", "json"],
    )));
    assert_eq!(again["duplicates"], 4, "{again}");
    assert_eq!(again["applied"], 0, "{again}");
}

#[test]
fn a_second_consumer_on_the_same_journal_is_refused_clearly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let journal = dir.path().join("p.journal");
    let store = format!("file:{}", journal.display());
    // The first consumer waits on its stdin, holding the journal open.
    let mut first = app(dir.path(), &["consume", "--store", &store, "--input", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("first consumer");
    // Wait until it holds the lock (the journal exists once it has opened it).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !journal.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let second = run(app(dir.path(), &["consume", "--store", &store, "--input", &example()]));
    drop(first.stdin.take());
    assert!(first.wait().expect("first consumer ends").success());
    assert!(!second.status.success(), "the second consumer must not run");
    let message = stderr(&second);
    assert!(
        message.contains(&format!("journal {} is locked by another process", journal.display())),
        "{message}"
    );
}
