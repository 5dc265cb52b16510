//! `payments-app` against every store of its table that lives on a server (PostgreSQL, MySQL):
//! several instances on one store, an export, and connections killed mid-run. `harness = false`:
//! without a server each test is reported as skipped by name, and under `CI=true` it fails instead.

// A test harness reports on stderr by design.
#![allow(clippy::print_stderr)]

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use libtest_mimic::{Arguments, Failed, Trial};
use payments_app::adapters::{STORES, TestEnv};
use payments_test_support::mysql;
use payments_test_support::proxy::TcpProxy;
use payments_test_support::servers::{self, Place};
use support::{Serving, app};

/// A test run against one server store, on a fresh place of its own.
type ServerTest = fn(&str, &Place, &Path) -> Result<(), Failed>;

fn main() -> std::process::ExitCode {
    let runtime = runtime();
    let mut trials = Vec::new();
    for entry in STORES {
        let TestEnv::Server(server) = entry.test_env else { continue };
        // Every server store: what the command line promises for all of them.
        let mut tests: Vec<(String, ServerTest)> = vec![
            (
                "two_consumers_on_overlapping_inputs_record_each_payment_once".to_owned(),
                two_consumers_on_overlapping_inputs_record_each_payment_once,
            ),
            ("export_reads_the_store".to_owned(), export_reads_the_store),
            (
                "an_outage_turns_readyz_503_and_back_while_livez_stays_200_and_nothing_is_lost".to_owned(),
                an_outage_turns_readyz_503_and_back_while_livez_stays_200_and_nothing_is_lost,
            ),
        ];
        // How to kill a server's connections is the server's own business.
        match server {
            "postgres" => tests.push((
                "a_connection_killed_mid_run_is_retried_and_nothing_is_lost_or_doubled".to_owned(),
                postgres_connections_killed_mid_run,
            )),
            "mysql" => tests.push((
                "a_connection_killed_mid_run_is_retried_and_nothing_is_lost_or_doubled".to_owned(),
                mysql_connections_killed_mid_run,
            )),
            _ => {}
        }
        let gate = runtime.block_on(servers::gate(server));
        for (name, test) in tests {
            let name = format!("{}::{name}", entry.name);
            trials.push(match &gate {
                payments_test_support::Gate::Run => Trial::test(name, move || on_fresh_place(server, test)),
                payments_test_support::Gate::Skip(reason) => {
                    eprintln!("SKIPPED payments-app::{name}: {reason}");
                    Trial::test(name, || Ok(())).with_kind("unavailable").with_ignored_flag(true)
                }
                payments_test_support::Gate::Fail(reason) => {
                    let reason = reason.clone();
                    Trial::test(name, move || Err(reason.into()))
                }
            });
        }
    }
    libtest_mimic::run(&Arguments::from_args(), trials).exit_code()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// Runs `test` on a fresh place of `server`, removed afterwards whatever happened.
fn on_fresh_place(server: &str, test: ServerTest) -> Result<(), Failed> {
    let runtime = runtime();
    let place = runtime.block_on(Place::fresh(server, "e2e")).map_err(|err| Failed::from(err.to_string()))?;
    let dir = tempfile::tempdir()?;
    // A failed assertion panics; the place is removed all the same, then the panic goes on.
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| test(&place.url(), &place, dir.path())));
    let cleanup = runtime.block_on(place.remove());
    let result = result.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    result.and(cleanup.map_err(|err| Failed::from(format!("removing {}: {err}", place.url()))))
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
fn two_consumers_on_overlapping_inputs_record_each_payment_once(
    store: &str,
    _: &Place,
    dir: &Path,
) -> Result<(), Failed> {
    {
        let first = write_input(dir, "first.jsonl", (0..6000).chain((0..6000).rev()));
        let second = write_input(dir, "second.jsonl", (4000..10_000).chain(4000..10_000));
        let spawn = |input: &str| {
            app(dir, &["consume", "--store", store, "--input", input, "--report", "json"])
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
        assert_eq!(export(dir, store)?, expected_export(0..10_000), "each payment exactly once");
        Ok(())
    }
}

/// While an instance consumes, its connections are terminated (`pg_terminate_backend`), again and
/// again: it retries, finishes, and the store holds each payment once.
fn postgres_connections_killed_mid_run(url: &str, place: &Place, dir: &Path) -> Result<(), Failed> {
    let Place::Postgres(schema) = place else { return Err("a PostgreSQL test on another server".into()) };
    {
        let application = format!("e2e_{}", schema.name());
        let store = format!("{url}&application_name={application}");
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
        assert_eq!(export(dir, url)?, expected_export(0..20_000), "nothing lost, nothing doubled");
        eprintln!(
            "connection-kill test: {kills} rounds of pg_terminate_backend mid-save, {} retries",
            counts["retries"]
        );
        Ok(())
    }
}

/// While an instance consumes, its connections are killed (`KILL CONNECTION`), again and again:
/// it retries, finishes, and the store holds each payment once.
fn mysql_connections_killed_mid_run(url: &str, place: &Place, dir: &Path) -> Result<(), Failed> {
    let Place::Mysql(database) = place else { return Err("a MySQL test on another server".into()) };
    let input = write_input(dir, "input.jsonl", (0..20_000).chain(0..20_000));
    let child =
        app(dir, &["consume", "--store", url, "--input", &input, "--concurrency", "16", "--report", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
    let runtime = runtime();
    let mut kills = 0;
    while kills < 3 && !child_exited(&child) {
        std::thread::sleep(Duration::from_millis(200));
        runtime
            .block_on(async {
                // The table exists once the instance has connected; until then, just wait.
                if let Ok(lock) = database.lock_payments().await {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    // Every session on the database but the one holding the lock: the consumer's.
                    let killed = database.kill_sessions_except(lock.connection_id()).await?;
                    lock.release().await?;
                    kills += usize::from(killed > 0);
                }
                Ok::<_, mysql::BoxError>(())
            })
            .map_err(|err| Failed::from(err.to_string()))?;
    }
    let output = child.wait_with_output()?;
    let counts = report(&output)?;
    assert!(counts["retries"].as_u64().is_some_and(|r| r > 0), "the kills must have hit saves: {counts}");
    assert_eq!(counts["applied"], 20_000, "{counts}");
    assert_eq!(counts["unsettled"], 0, "{counts}");
    assert_eq!(export(dir, url)?, expected_export(0..20_000), "nothing lost, nothing doubled");
    eprintln!(
        "connection-kill test: {kills} rounds of KILL CONNECTION mid-save, {} retries",
        counts["retries"]
    );
    Ok(())
}

/// `host:port` of a server URL (`scheme://user@host:port/db?…`).
fn host_and_port(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    Some(authority.rsplit_once('@').map_or(authority, |(_, host)| host))
}

/// The store is cut off (a TCP proxy in the test drops every connection and refuses new ones)
/// while a consumer with metrics runs: `/readyz` turns 503 and `payments_store_up` 0, `/livez`
/// stays 200 throughout (an outage is no reason to restart), and once the store is back both
/// return, the consumer catches up, and every payment is recorded exactly once.
fn an_outage_turns_readyz_503_and_back_while_livez_stays_200_and_nothing_is_lost(
    url: &str,
    _: &Place,
    dir: &Path,
) -> Result<(), Failed> {
    // The proxy's tasks run on this runtime's threads while the test blocks on the process.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let upstream = host_and_port(url).ok_or("the store URL has no host:port")?;
    let proxy = runtime.block_on(TcpProxy::start(upstream))?;
    let mut proxied = proxy.replace_in(url);
    if proxied.starts_with("mysql://") {
        // mysql_async moves to the server's Unix socket when it finds the server on this host,
        // which would go round the proxy.
        proxied.push(if proxied.contains('?') { '&' } else { '?' });
        proxied.push_str("prefer_socket=false");
    }
    let mut running = Serving::start(app(
        dir,
        &[
            "consume",
            "--store",
            &proxied,
            "--input",
            "-",
            "--metrics-addr",
            "127.0.0.1:0",
            "--report",
            "json",
            "--concurrency",
            "8",
            "--retry-limit-secs",
            "300",
        ],
    ));
    let store =
        STORES.iter().find(|entry| url.starts_with(entry.prefixes[0])).map_or("?", |entry| entry.name);
    let up = [("store", store)];
    let patience = Duration::from_secs(60);
    running.wait_for_status("/readyz", 200, patience);
    let applied = |samples: &payments_test_support::scrape::Samples| {
        samples.sum("payments_deliveries_total", &[("outcome", "applied")]) as u64
    };

    let first: Vec<String> = (0..500).map(line).collect();
    running.feed(&first);
    running.wait_for("the first 500 recorded", patience, |s| applied(s) == 500);

    proxy.set_down(true);
    let cut = proxy.cut();
    let second: Vec<String> = (500..1000).map(line).collect();
    running.feed(&second);
    let down = running.wait_for_status("/readyz", 503, patience);
    assert!(down.body.contains("[-]store unreachable"), "{}", down.body);
    running.wait_for("store_up 0, and saves retried", patience, |s| {
        s.value("payments_store_up", &up) == Some(0.0)
            && s.sum("payments_retries_total", &[("cause", "store")]) > 0.0
    });
    // Liveness never looks at the store: 200 all through the outage.
    for _ in 0..20 {
        let live = running.get("/livez");
        assert_eq!(live.status, 200, "an outage must not look like death: {}", live.body);
        std::thread::sleep(Duration::from_millis(100));
    }

    proxy.set_down(false);
    running.wait_for_status("/readyz", 200, patience);
    running.wait_for("store_up 1 and all 1000 recorded", patience, |s| {
        s.value("payments_store_up", &up) == Some(1.0) && applied(s) == 1000
    });
    let output = running.finish();
    let counts = report(&output)?;
    assert_eq!((counts["applied"].as_u64(), counts["unsettled"].as_u64()), (Some(1000), Some(0)), "{counts}");
    assert!(counts["retries"].as_u64().is_some_and(|r| r > 0), "{counts}");
    assert_eq!(export(dir, url)?, expected_export(0..1000), "nothing lost, nothing doubled");
    eprintln!(
        "outage test ({store}): {cut} connections cut, {} retries, readyz 503 then 200",
        counts["retries"]
    );
    drop(proxy);
    Ok(())
}

fn child_exited(child: &std::process::Child) -> bool {
    // A process that has exited but not been waited for is a zombie: its /proc status says so.
    std::fs::read_to_string(format!("/proc/{}/stat", child.id()))
        .map_or(true, |stat| stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
}

fn export_reads_the_store(store: &str, _: &Place, dir: &Path) -> Result<(), Failed> {
    {
        let input = write_input(dir, "input.jsonl", [3, 1, 2, 1].into_iter());
        let counts = report(
            &app(dir, &["consume", "--store", store, "--input", &input, "--report", "json"]).output()?,
        )?;
        assert_eq!(
            (counts["applied"].as_u64(), counts["duplicates"].as_u64()),
            (Some(3), Some(1)),
            "{counts}"
        );
        assert_eq!(export(dir, store)?, expected_export(1..=3));
        Ok(())
    }
}
