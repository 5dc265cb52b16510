//! Running it in production: the metrics and health endpoints of a real run, configuration from
//! the environment, JSON logs, and passwords that never show.

use std::process::Output;
use std::time::Duration;

use payments_test_support::scrape::Samples;

use crate::support::{Serving, app, example, report, run, stderr};

fn good(id: &str, amount: u64) -> String {
    format!(r#"{{"payment_id": "{id}", "amount": {amount}, "currency": "EUR"}}"#)
}

/// `n` payments, a third of them sent twice, every tenth in a conflicting version too, and an
/// invalid line every fiftieth: every outcome a run can count.
fn mixed_input(n: u64) -> Vec<String> {
    let mut lines = Vec::new();
    for i in 0..n {
        let id = format!("pay-{i:05}");
        lines.push(good(&id, 100 + i));
        if i % 3 == 0 {
            lines.push(good(&id, 100 + i));
        }
        if i % 10 == 0 {
            lines.push(good(&id, 1));
        }
        if i % 50 == 0 {
            lines.push(format!(r#"{{"payment_id": "{id}", "amount": -1, "currency": "EUR"}}"#));
        }
    }
    lines
}

/// The sum of a counter's series, whatever their labels.
fn total(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> u64 {
    samples.sum(name, labels) as u64
}

fn settled(samples: &Samples) -> u64 {
    total(samples, "payments_deliveries_total", &[])
}

#[test]
fn the_metrics_scraped_during_and_after_a_run_equal_its_json_report() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = format!("file:{}", dir.path().join("p.journal").display());
    let mut running = Serving::start(app(
        dir.path(),
        &["consume", "--store", &store, "--input", "-", "--metrics-addr", "127.0.0.1:0", "--report", "json"],
    ));
    // 503 while starting (the store and the source are being opened), then 200.
    let ready = running.wait_for_status("/readyz", 200, Duration::from_secs(60));
    assert!(ready.body.contains("[+]store ok") && ready.body.contains("[+]source ok"), "{}", ready.body);

    let input = mixed_input(3000);
    let (first, second) = input.split_at(input.len() / 2);
    running.feed(first);
    // During the run: what is settled never exceeds what was consumed, and grows.
    let during = running
        .wait_for("half the input settled", Duration::from_secs(60), |s| settled(s) == first.len() as u64);
    let consumed =
        total(&during, "messaging_client_consumed_messages_total", &[("messaging_system", "file")]);
    assert_eq!(consumed, first.len() as u64, "every line read was a delivery to the consumer");
    assert_eq!(running.get("/livez").status, 200);

    running.feed(second);
    // The time of the last delivery is stamped by the next heartbeat (once a second).
    let after =
        running.wait_for("all the input settled, and its time stamped", Duration::from_secs(60), |s| {
            settled(s) == input.len() as u64
                && s.value("payments_last_delivery_timestamp_seconds", &[]).is_some_and(|t| t > 1.7e9)
        });
    let output = running.finish();
    let counts = report(&output);

    let outcome = |name| total(&after, "payments_deliveries_total", &[("outcome", name)]);
    assert_eq!(counts["deliveries"], total(&after, "messaging_client_consumed_messages_total", &[]));
    assert_eq!(counts["applied"], outcome("applied"));
    assert_eq!(counts["duplicates"], outcome("duplicate"));
    assert_eq!(counts["conflicts"], outcome("conflict"));
    assert_eq!(counts["invalid"], outcome("invalid") + outcome("too_large") + outcome("too_many_attempts"));
    assert_eq!(counts["unsettled"], outcome("unsettled"));
    assert_eq!(counts["retries"], total(&after, "payments_retries_total", &[]));
    assert_eq!(
        (counts["applied"].as_u64(), counts["conflicts"].as_u64()),
        (Some(3000), Some(300)),
        "{counts}"
    );
    // Every settlement has a processing time; the failed ones carry their error type.
    assert_eq!(total(&after, "messaging_process_duration_seconds_count", &[]), input.len() as u64);
    assert_eq!(
        total(&after, "messaging_process_duration_seconds_count", &[("error_type", "conflict")]),
        outcome("conflict")
    );
    assert_eq!(
        total(&after, "payments_dead_letters_total", &[]),
        outcome("conflict") + outcome("invalid"),
        "one letter per rejected delivery"
    );
    // The store saw one save per valid delivery (the invalid ones never reach it).
    let saves = total(
        &after,
        "payments_store_operation_duration_seconds_count",
        &[("store", "file"), ("operation", "save")],
    );
    assert_eq!(saves, outcome("applied") + outcome("duplicate") + outcome("conflict"));
    assert_eq!(after.value("payments_store_up", &[("store", "file")]), Some(1.0));
    // No payment ID, nor any message's origin, as a label value: the series are bounded.
    for sample in &after.0 {
        for (label, value) in &sample.labels {
            assert!(
                !value.contains("pay-") && !value.starts_with("line "),
                "{} has {label}={value}",
                sample.name
            );
        }
    }
}

/// Every flag can come from its `PAYMENTS_` variable, and a flag wins over its variable.
#[test]
fn flags_come_from_the_environment_and_a_flag_wins() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut command = app(dir.path(), &["consume"]);
    command
        .env("PAYMENTS_STORE", "memory")
        .env("PAYMENTS_INPUT", example())
        .env("PAYMENTS_REPORT", "json")
        .env("PAYMENTS_CONCURRENCY", "3");
    let counts = report(&run(command));
    assert_eq!((counts["applied"].as_u64(), counts["duplicates"].as_u64()), (Some(4), Some(3)), "{counts}");

    // The same with a flag for the store: the journal it names is written, not the memory store.
    let journal = dir.path().join("flag.journal");
    let mut command = app(dir.path(), &["consume", "--store", &format!("file:{}", journal.display())]);
    command.env("PAYMENTS_STORE", "memory").env("PAYMENTS_INPUT", example()).env("PAYMENTS_REPORT", "json");
    let counts = report(&run(command));
    assert_eq!(counts["applied"].as_u64(), Some(4), "{counts}");
    assert!(journal.exists(), "the flag's store was used");

    // A bad value from a variable is refused like a bad flag.
    let mut command = app(dir.path(), &["consume"]);
    command.env("PAYMENTS_CONCURRENCY", "0");
    let output = run(command);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("--concurrency"), "{}", stderr(&output));
}

/// `--log-format json`: stderr is one JSON object per line, and a dead letter's log line carries
/// its payment ID, origin, attempt and outcome as fields.
#[test]
fn json_logs_are_one_object_per_line_with_the_fields_of_each_event() {
    let dir = tempfile::tempdir().expect("temp dir");
    let letters = dir.path().join("dead.jsonl");
    let mut command = app(
        dir.path(),
        &[
            "consume",
            "--store",
            "memory",
            "--input",
            &example(),
            "--dead-letter",
            &letters.display().to_string(),
            "--log-format",
            "json",
        ],
    );
    command.env("RUST_LOG", "info");
    let output = run(command);
    assert!(output.status.success(), "{}", stderr(&output));
    let events: Vec<serde_json::Value> = stderr(&output)
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|err| panic!("not one JSON object ({err}): {line}"))
        })
        .collect();
    for event in &events {
        assert!(
            event["timestamp"].is_string() && event["level"].is_string() && event["message"].is_string(),
            "{event}"
        );
    }
    let conflict = events
        .iter()
        .find(|e| e["message"] == "dead-lettering" && e["outcome"] == "conflict")
        .unwrap_or_else(|| panic!("no dead-letter event for the conflict: {events:?}"));
    assert_eq!(conflict["payment_id"], "pay-0003", "{conflict}");
    assert_eq!(conflict["origin"], "line 6", "{conflict}");
    assert_eq!(conflict["attempt"], 1, "{conflict}");
    let summary = events
        .iter()
        .find(|e| e["message"].as_str().is_some_and(|m| m.starts_with("consumed 12 deliveries")));
    assert!(summary.is_some(), "the summary is an event too: {events:?}");
}

/// A password in a store, source, dead-letter or publish URL appears nowhere in the output of a
/// run that fails because of it, in either log format, even with every log level on.
#[test]
fn a_password_in_a_url_appears_nowhere_in_the_output_of_a_failing_run() {
    const SECRET: &str = "s3cr3t-pw";
    let dir = tempfile::tempdir().expect("temp dir");
    let input = example();
    let nobody = "127.0.0.1:1";
    let runs: Vec<Vec<String>> = vec![
        vec![
            "consume".into(),
            "--store".into(),
            format!("postgres://app:{SECRET}@{nobody}/payments"),
            "--input".into(),
            input.clone(),
        ],
        vec![
            "consume".into(),
            "--store".into(),
            format!("mysql://app:{SECRET}@{nobody}/payments"),
            "--input".into(),
            input.clone(),
        ],
        vec![
            "consume".into(),
            "--store".into(),
            "memory".into(),
            "--input".into(),
            format!("redis://app:{SECRET}@{nobody}?stream=s&group=g"),
        ],
        vec![
            "consume".into(),
            "--store".into(),
            "memory".into(),
            "--input".into(),
            format!("nats://app:{SECRET}@{nobody}?stream=s&subject=s.a&consumer=c"),
        ],
        vec![
            "consume".into(),
            "--store".into(),
            "memory".into(),
            "--input".into(),
            format!("amqp://app:{SECRET}@{nobody}/%2f?queue=q"),
        ],
        vec![
            "consume".into(),
            "--store".into(),
            "memory".into(),
            "--input".into(),
            input.clone(),
            "--dead-letter".into(),
            format!("amqp://app:{SECRET}@{nobody}/%2f?queue=dead"),
        ],
        vec![
            "publish".into(),
            "--to".into(),
            format!("redis://app:{SECRET}@{nobody}?stream=s"),
            "--input".into(),
            input.clone(),
        ],
        // Refused before it connects: a parameter it does not take.
        vec![
            "consume".into(),
            "--input".into(),
            format!("amqp://app:{SECRET}@{nobody}/%2f?queue=q&nonsense=1"),
        ],
        vec![
            "consume".into(),
            "--store".into(),
            format!("postgres://app:{SECRET}@{nobody}/payments?sslmode=bogus"),
        ],
    ];
    for args in runs {
        for format in ["text", "json"] {
            let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
            args.extend(["--log-format", format]);
            let mut command = app(dir.path(), &args);
            command.env("RUST_LOG", "trace");
            let output: Output = run(command);
            let (out, err) = (String::from_utf8_lossy(&output.stdout), stderr(&output));
            assert!(!output.status.success(), "{args:?} must fail: {err}");
            assert!(
                !out.contains(SECRET) && !err.contains(SECRET),
                "{args:?} showed the password:\n{out}\n{err}"
            );
            assert!(err.contains("***") || err.contains("invalid"), "{args:?} names what failed: {err}");
        }
    }
}
