//! `payments-app` against PostgreSQL: several instances on one store, and a connection killed
//! mid-run. `harness = false`: without a server each test is reported as skipped by name, and
//! under `CI=true` it fails instead.

// A test harness reports on stderr by design.
#![allow(clippy::print_stderr)]

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use libtest_mimic::{Arguments, Failed};
use payments_test_support::postgres::{self as pg, TestSchema};
use support::app;

fn main() -> std::process::ExitCode {
    let tests = payments_test_support::tests![
        two_consumers_on_overlapping_inputs_record_each_payment_once,
        a_connection_killed_mid_run_is_retried_and_nothing_is_lost_or_doubled,
        export_reads_a_postgres_store,
    ];
    libtest_mimic::run(&Arguments::from_args(), pg::trials("payments-app::postgres", tests)).exit_code()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// Runs `test` with a schema of its own, dropped afterwards whatever happened.
fn with_schema(
    prefix: &str,
    test: impl FnOnce(&TestSchema, &Path) -> Result<(), Failed>,
) -> Result<(), Failed> {
    let schema = TestSchema::new(prefix);
    let dir = tempfile::tempdir()?;
    // A failed assertion panics; the schema is dropped all the same, then the panic goes on.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| test(&schema, dir.path())));
    let cleanup = runtime().block_on(schema.drop_schema());
    let result = result.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    result.and(cleanup.map_err(|err| Failed::from(format!("dropping schema {}: {err}", schema.name()))))
}

fn line(i: u64) -> String {
    format!(r#"{{"payment_id": "pay-{i:06}", "amount": {}, "currency": "EUR"}}"#, 100 + i)
}

fn write_input(dir: &Path, name: &str, ids: impl Iterator<Item = u64>) -> String {
    let path = dir.join(name);
    let text: String = ids.map(|i| line(i) + "\n").collect();
    std::fs::write(&path, text).expect("write input");
    path.display().to_string()
}

fn report(output: &Output) -> Result<serde_json::Value, Failed> {
    if !output.status.success() {
        return Err(format!("payments-app failed: {}", String::from_utf8_lossy(&output.stderr)).into());
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

fn export(dir: &Path, store: &str) -> Result<Vec<String>, Failed> {
    let output = app(dir, &["export", "--store", store]).output()?;
    if !output.status.success() {
        return Err(format!("export failed: {}", String::from_utf8_lossy(&output.stderr)).into());
    }
    Ok(String::from_utf8(output.stdout)?.lines().map(str::to_owned).collect())
}

fn expected_export(ids: impl Iterator<Item = u64>) -> Vec<String> {
    let ids: BTreeSet<u64> = ids.collect();
    ids.into_iter()
        .map(|i| format!(r#"{{"payment_id":"pay-{i:06}","amount":{},"currency":"EUR"}}"#, 100 + i))
        .collect()
}

/// Two instances consume overlapping inputs (0..6000 and 4000..10000, each twice over) into one
/// schema at the same time: each payment is recorded once, and their applied counts add up.
fn two_consumers_on_overlapping_inputs_record_each_payment_once() -> Result<(), Failed> {
    with_schema("two_consumers", |schema, dir| {
        let store = schema.url();
        let first = write_input(dir, "first.jsonl", (0..6000).chain((0..6000).rev()));
        let second = write_input(dir, "second.jsonl", (4000..10_000).chain(4000..10_000));
        let spawn = |input: &str| {
            app(dir, &["consume", "--store", &store, "--input", input, "--report", "json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
        };
        let (a, b) = (spawn(&first)?, spawn(&second)?);
        let (a, b) = (report(&a.wait_with_output()?)?, report(&b.wait_with_output()?)?);
        let applied = a["applied"].as_u64().unwrap_or(0) + b["applied"].as_u64().unwrap_or(0);
        assert_eq!(
            applied, 10_000,
            "the applied counts of both instances add up to the distinct payments: {a} {b}"
        );
        let duplicates = a["duplicates"].as_u64().unwrap_or(0) + b["duplicates"].as_u64().unwrap_or(0);
        assert_eq!(duplicates, 24_000 - 10_000, "every other delivery is a duplicate: {a} {b}");
        assert_eq!(export(dir, &store)?, expected_export(0..10_000), "each payment exactly once");
        Ok(())
    })
}

/// While an instance consumes, its connections are terminated (`pg_terminate_backend`), again and
/// again: it retries, finishes, and the store holds each payment once.
fn a_connection_killed_mid_run_is_retried_and_nothing_is_lost_or_doubled() -> Result<(), Failed> {
    with_schema("killed", |schema, dir| {
        let application = format!("e2e_{}", schema.name());
        let store = format!("{}&application_name={application}", schema.url());
        let input = write_input(dir, "input.jsonl", (0..20_000).chain(0..20_000));
        let child = app(
            dir,
            &["consume", "--store", &store, "--input", &input, "--concurrency", "16", "--report", "json"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
        let runtime = runtime();
        let terminate = format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '{application}'"
        );
        // Three rounds: hold the table locked so that saves are in flight, terminate the
        // instance's connections under them, release the lock. Then let it finish.
        let mut kills = 0;
        while kills < 3 && !child_exited(&child) {
            std::thread::sleep(Duration::from_millis(200));
            runtime.block_on(async {
                // The table exists once the instance has connected; until then, just wait.
                if let Ok(lock) = schema.lock_payments().await {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    schema.execute(&terminate).await?;
                    lock.release().await?;
                    kills += 1;
                }
                Ok::<_, tokio_postgres::Error>(())
            })?;
        }
        let output = child.wait_with_output()?;
        let counts = report(&output)?;
        assert!(counts["retries"].as_u64().is_some_and(|r| r > 0), "the kills must have hit saves: {counts}");
        assert_eq!(counts["applied"], 20_000, "{counts}");
        assert_eq!(counts["unsettled"], 0, "{counts}");
        assert_eq!(export(dir, &schema.url())?, expected_export(0..20_000), "nothing lost, nothing doubled");
        eprintln!(
            "connection-kill test: {kills} rounds of pg_terminate_backend mid-save, {} retries",
            counts["retries"]
        );
        Ok(())
    })
}

fn child_exited(child: &std::process::Child) -> bool {
    // A process that has exited but not been waited for is a zombie: its /proc status says so.
    std::fs::read_to_string(format!("/proc/{}/stat", child.id()))
        .map_or(true, |stat| stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
}

fn export_reads_a_postgres_store() -> Result<(), Failed> {
    with_schema("export", |schema, dir| {
        let store = schema.url();
        let input = write_input(dir, "input.jsonl", [3, 1, 2, 1].into_iter());
        let counts = report(
            &app(dir, &["consume", "--store", &store, "--input", &input, "--report", "json"]).output()?,
        )?;
        assert_eq!(
            (counts["applied"].as_u64(), counts["duplicates"].as_u64()),
            (Some(3), Some(1)),
            "{counts}"
        );
        assert_eq!(export(dir, &store)?, expected_export(1..=3));
        Ok(())
    })
}
