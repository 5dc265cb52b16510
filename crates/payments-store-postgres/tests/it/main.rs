//! The PostgreSQL adapter's own tests: migrations, how failures are reported, the outbox
//! (`outbox`), and TLS (`tls`, against clusters the tests start themselves). `harness = false`, so that without a server (or
//! without the programs to start one) each test is reported as skipped by name (failed under CI).

use std::process::ExitCode;

use libtest_mimic::{Arguments, Failed};
use payments_ports::PaymentsRepository;
use payments_ports::domain::{Payment, SaveOutcome};
use payments_store_postgres::{PostgresConfig, PostgresPaymentsRepository, SCHEMA_VERSION};
use payments_test_support::Gate;
use payments_test_support::postgres::{self as pg, TestSchema};

mod outbox;
mod tls;

fn main() -> ExitCode {
    let tests = payments_test_support::tests![
        migrations_are_idempotent_and_safe_when_instances_start_together,
        a_schema_newer_than_this_build_is_refused,
        a_terminated_connection_is_unavailable_and_the_store_recovers,
        a_missing_table_is_a_failure_not_an_outage,
        an_unreachable_server_is_unavailable,
        a_save_held_up_past_the_timeout_is_unavailable_then_recorded_once,
        closing_saves_what_is_queued_then_refuses_more,
        outbox::a_version_1_schema_migrates_forward_with_its_payments_and_the_outbox_off,
        outbox::saves_record_events_once_the_switch_is_on_on_every_instance_already_connected,
        outbox::two_handles_claim_disjoint_events_and_a_new_claim_gives_the_last_back,
        outbox::a_killed_dropped_or_closed_handle_gives_its_claim_back_at_once,
        outbox::an_event_committed_after_a_later_one_was_published_is_still_claimed,
        outbox::two_relays_beside_concurrent_saves_publish_every_event_exactly_once,
        outbox::marks_survive_a_reopen_and_unmarked_claims_come_back,
        outbox::backlog_counts_claimed_and_unclaimed_events_and_gives_the_oldest,
        outbox::turning_the_outbox_on_waits_for_saves_in_flight_without_stalling_the_others,
        outbox::a_claim_held_idle_past_the_claim_timeout_is_given_back,
        outbox::a_claim_lost_with_its_connection_is_reported_by_the_next_mark_once,
        outbox::a_broken_outbox_table_is_a_failure_not_an_outage,
    ];
    let mut trials = pg::trials("postgres", tests);
    trials.extend(payments_test_support::trials(
        "postgres",
        &Gate::new(pg::cluster_available()),
        payments_test_support::tests![
            tls::verify_full_with_the_right_ca_and_host_connects_over_tls_and_saves,
            tls::verify_full_refuses_a_certificate_for_another_host,
            tls::verify_full_refuses_an_unknown_ca,
            tls::require_and_prefer_use_tls_without_checking_the_certificate,
            tls::disable_connects_in_plain_text_to_a_tls_server,
            tls::require_never_falls_back_to_plain_text,
            tls::prefer_connects_in_plain_text_to_a_server_without_tls,
        ],
    ));
    libtest_mimic::run(&Arguments::from_args(), trials).exit_code()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

fn payment(id: &str) -> Payment {
    Payment::parse(id, 100, "EUR").expect("valid")
}

/// Runs `test` against a fresh schema and drops the schema afterwards, whatever happened.
fn with_schema<F, Fut>(prefix: &str, test: F) -> Result<(), Failed>
where
    F: FnOnce(TestSchema) -> Fut,
    Fut: std::future::Future<Output = Result<(), Failed>>,
{
    let runtime = runtime();
    let schema = TestSchema::new(prefix);
    // A failed assertion panics; the schema is dropped all the same, then the panic goes on.
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.block_on(test(schema.clone()))));
    let cleanup = runtime.block_on(schema.drop_schema());
    let result = result.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    result.and(cleanup.map_err(|err| Failed::from(format!("dropping schema {}: {err}", schema.name()))))
}

async fn connect(schema: &TestSchema) -> Result<PostgresPaymentsRepository, Failed> {
    Ok(PostgresPaymentsRepository::connect(PostgresConfig::from_url(&schema.url())?).await?)
}

fn migrations_are_idempotent_and_safe_when_instances_start_together() -> Result<(), Failed> {
    with_schema("migrate", |schema| async move {
        // Four instances start at the same moment on a schema that does not exist yet.
        let configs: Vec<_> =
            (0..4).map(|_| PostgresConfig::from_url(&schema.url())).collect::<Result<_, _>>()?;
        let started =
            futures::future::join_all(configs.into_iter().map(PostgresPaymentsRepository::connect)).await;
        for store in &started {
            if let Err(err) = store {
                return Err(format!("an instance failed to start: {err}").into());
            }
        }
        let again = connect(&schema).await?;
        assert_eq!(again.save(&payment("p")).await?, SaveOutcome::New);
        let versions = query_i64(&schema, "SELECT count(*) FROM {schema}.schema_migrations").await?;
        assert_eq!(versions, i64::from(SCHEMA_VERSION), "each migration is recorded once");
        let version =
            query_i64(&schema, "SELECT max(version)::bigint FROM {schema}.schema_migrations").await?;
        assert_eq!(version, i64::from(SCHEMA_VERSION));
        Ok(())
    })
}

fn a_schema_newer_than_this_build_is_refused() -> Result<(), Failed> {
    with_schema("newer", |schema| async move {
        drop(connect(&schema).await?);
        schema
            .execute(&format!("INSERT INTO \"{}\".schema_migrations (version) VALUES (999)", schema.name()))
            .await?;
        let config = PostgresConfig::from_url(&schema.url())?;
        let err =
            PostgresPaymentsRepository::connect(config).await.expect_err("a newer schema must be refused");
        assert!(err.to_string().contains("is at version 999, newer than this build knows"), "{err}");
        Ok(())
    })
}

fn a_terminated_connection_is_unavailable_and_the_store_recovers() -> Result<(), Failed> {
    with_schema("terminate", |schema| async move {
        let application = format!("payments-test-{}", schema.name());
        let config = PostgresConfig::from_url(&schema.url())?.with_application_name(&application);
        let store = std::sync::Arc::new(PostgresPaymentsRepository::connect(config).await?);
        assert_eq!(store.save(&payment("before")).await?, SaveOutcome::New);

        // Hold the table locked from another session, so that the next save is mid-statement
        // (waiting on the lock) when its connection is terminated.
        let lock = schema.lock_payments().await?;
        let blocked = tokio::spawn({
            let store = std::sync::Arc::clone(&store);
            async move { store.save(&payment("after")).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        schema
            .execute(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{application}'"
            ))
            .await?;
        let interrupted = blocked.await?;
        lock.release().await?;
        match interrupted {
            Err(err) => assert!(err.is_unavailable(), "a terminated connection is an outage to retry: {err}"),
            Ok(outcome) => {
                return Err(format!("the save survived its connection being killed: {outcome:?}").into());
            }
        }

        // The store recovers by itself: the retry records the payment, once.
        let mut outcome = None;
        for _ in 0..50 {
            match store.save(&payment("after")).await {
                Ok(saved) => {
                    outcome = Some(saved);
                    break;
                }
                Err(err) if err.is_unavailable() => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await
                }
                Err(err) => return Err(format!("after a terminated connection: {err}").into()),
            }
        }
        assert_eq!(outcome, Some(SaveOutcome::New), "the interrupted insert never committed");
        assert_eq!(store.count().await?, 2, "both payments recorded once");
        Ok(())
    })
}

fn a_save_held_up_past_the_timeout_is_unavailable_then_recorded_once() -> Result<(), Failed> {
    with_schema("held", |schema| async move {
        let config =
            PostgresConfig::from_url(&schema.url())?.with_timeout(std::time::Duration::from_millis(300));
        let store = PostgresPaymentsRepository::connect(config).await?;
        let lock = schema.lock_payments().await?;
        let err = store.save(&payment("held")).await.expect_err("the table is locked past the timeout");
        assert!(err.is_unavailable(), "a save that hangs is an outage to retry: {err}");
        assert!(err.to_string().contains("took longer than"), "{err}");
        lock.release().await?;
        // The timed-out insert may or may not have gone through once the lock was released;
        // either way the retry records the payment exactly once.
        let retried = store.save(&payment("held")).await?;
        assert!(matches!(retried, SaveOutcome::New | SaveOutcome::Duplicate), "{retried:?}");
        assert_eq!(store.count().await?, 1);
        Ok(())
    })
}

fn a_missing_table_is_a_failure_not_an_outage() -> Result<(), Failed> {
    with_schema("missing", |schema| async move {
        let store = connect(&schema).await?;
        schema.execute(&format!("DROP TABLE \"{}\".payments", schema.name())).await?;
        let err = store.save(&payment("p")).await.expect_err("no table");
        assert!(!err.is_unavailable(), "a broken schema is not an outage to wait out: {err}");
        Ok(())
    })
}

fn an_unreachable_server_is_unavailable() -> Result<(), Failed> {
    runtime().block_on(async {
        let config = PostgresConfig::from_url("postgres://postgres@127.0.0.1:1/test")?
            .with_wait_timeout(std::time::Duration::from_secs(2));
        let err = PostgresPaymentsRepository::connect(config).await.expect_err("nothing listens on port 1");
        assert!(err.is_unavailable(), "connection refused must be retried, not dead-lettered: {err}");
        Ok(())
    })
}

async fn query_i64(schema: &TestSchema, sql: &str) -> Result<i64, Failed> {
    let (client, connection) = tokio_postgres::connect(&pg::url(), tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    let sql = sql.replace("{schema}", &format!("\"{}\"", schema.name()));
    let value: i64 = client.query_one(&sql, &[]).await?.get(0);
    drop(client);
    let _ = driver.await;
    Ok(value)
}

fn closing_saves_what_is_queued_then_refuses_more() -> Result<(), Failed> {
    with_schema("close", |schema| async move {
        let store = std::sync::Arc::new(connect(&schema).await?);
        // Saves queue behind a locked table; closing must let them finish, not drop them.
        let lock = schema.lock_payments().await?;
        let saves: Vec<_> = (0..50)
            .map(|i| {
                let store = std::sync::Arc::clone(&store);
                tokio::spawn(async move { store.save(&payment(&format!("queued-{i:02}"))).await })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let closing = {
            let store = std::sync::Arc::clone(&store);
            tokio::spawn(async move { store.close().await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!closing.is_finished(), "close waits for the saves in flight");
        lock.release().await?;
        closing.await??;
        for save in saves {
            assert_eq!(save.await??, SaveOutcome::New, "a save accepted before close is finished by it");
        }
        let err = store.save(&payment("late")).await.expect_err("a save after close");
        assert!(!err.is_unavailable() && err.to_string().contains("is closed"), "{err}");
        let check = connect(&schema).await?;
        assert_eq!(check.count().await?, 50);
        check.close().await?;
        Ok(())
    })
}
