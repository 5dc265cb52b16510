//! The outbox against the shared server: the migration that adds it, the switch that every
//! instance obeys, and the claims that several relays share without a cursor. Each test has a
//! schema of its own, dropped whatever happens.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use payments_ports::domain::{Payment, PaymentRecorded, RecordedAt, SaveOutcome};
use payments_ports::{Outbox, PaymentsRepository, error_chain};
use payments_store_postgres::{PostgresConfig, PostgresPaymentsRepository, SCHEMA_VERSION};
use payments_test_support::postgres::{self as pg, TestSchema};
use tokio_postgres::{Client, NoTls};

use super::{connect, payment, query_i64, with_schema};

/// A handle on `store`'s outbox, which the PostgreSQL store always has.
async fn outbox(store: &PostgresPaymentsRepository) -> Result<Box<dyn Outbox>, Failed> {
    store.outbox().await?.ok_or_else(|| Failed::from("the PostgreSQL store keeps an outbox"))
}

fn ids(events: &[PaymentRecorded]) -> Vec<String> {
    events.iter().map(|event| event.payment.id.to_string()).collect()
}

fn named(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:03}")).collect()
}

/// Saves each of `ids` one after the other, each new.
async fn save_all(store: &PostgresPaymentsRepository, ids: &[String]) -> Result<(), Failed> {
    for id in ids {
        assert_eq!(store.save(&payment(id)).await?, SaveOutcome::New, "{id}");
    }
    Ok(())
}

/// A session of the test's own on the server, for what no store does (a transaction held open).
struct Session {
    client: Client,
    driver: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    schema: String,
}

impl Session {
    async fn open(schema: &TestSchema) -> Result<Self, Failed> {
        let (client, connection) = tokio_postgres::connect(&pg::url(), NoTls).await?;
        Ok(Self { client, driver: tokio::spawn(connection), schema: format!("\"{}\"", schema.name()) })
    }

    /// Runs `sql`, with `{schema}` standing for the quoted schema.
    async fn run(&self, sql: &str) -> Result<(), Failed> {
        let sql = sql.replace("{schema}", &self.schema);
        self.client.batch_execute(&sql).await.map_err(|err| db(&sql, &err))
    }

    /// The rows of `sql`, with `{schema}` standing for the quoted schema.
    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, Failed> {
        let sql = sql.replace("{schema}", &self.schema);
        self.client.query(&sql, params).await.map_err(|err| db(&sql, &err))
    }

    async fn end(self) -> Result<(), Failed> {
        drop(self.client);
        self.driver.await??;
        Ok(())
    }
}

/// The driver's error with its causes (its `Display` alone says only "db error").
fn db(sql: &str, err: &tokio_postgres::Error) -> Failed {
    Failed::from(format!("{sql}: {}", error_chain(err)))
}

/// Runs `sql` on a session of its own, with `{schema}` standing for the quoted schema.
async fn execute(schema: &TestSchema, sql: &str) -> Result<(), Failed> {
    let session = Session::open(schema).await?;
    session.run(sql).await?;
    session.end().await
}

/// How many events the outbox table holds, claimed or not.
async fn queued(schema: &TestSchema) -> Result<i64, Failed> {
    query_i64(schema, "SELECT count(*) FROM {schema}.payments_outbox").await
}

pub(super) fn a_version_1_schema_migrates_forward_with_its_payments_and_the_outbox_off() -> Result<(), Failed>
{
    with_schema("outbox_migrate", |schema| async move {
        // What a build of version 1 left behind: its payments, and neither outbox table.
        let store = connect(&schema).await?;
        save_all(&store, &named("old", 3)).await?;
        store.close().await?;
        execute(
            &schema,
            "DROP TABLE {schema}.payments_outbox, {schema}.outbox_switch;
             DELETE FROM {schema}.schema_migrations WHERE version > 1",
        )
        .await?;
        assert_eq!(
            query_i64(&schema, "SELECT max(version)::bigint FROM {schema}.schema_migrations").await?,
            1
        );

        let store = connect(&schema).await?;
        let version =
            query_i64(&schema, "SELECT max(version)::bigint FROM {schema}.schema_migrations").await?;
        assert_eq!(version, i64::from(SCHEMA_VERSION), "migrated forward");
        assert_eq!(store.count().await?, 3, "the payments of version 1 are kept");
        assert_eq!(store.get(&payment("old-001").id).await?, Some(payment("old-001")));
        assert_eq!(query_i64(&schema, "SELECT count(*) FROM {schema}.outbox_switch").await?, 0, "off");
        save_all(&store, &named("before", 1)).await?;
        assert_eq!(queued(&schema).await?, 0, "the outbox is off until a relay turns it on");

        let mut relay = outbox(&store).await?;
        save_all(&store, &named("after", 2)).await?;
        assert_eq!(ids(&relay.claim(100).await?), named("after", 2), "only what was saved once it was on");
        relay.mark_published().await?;
        relay.close().await?;
        store.close().await?;
        Ok(())
    })
}

pub(super) fn saves_record_events_once_the_switch_is_on_on_every_instance_already_connected()
-> Result<(), Failed> {
    with_schema("outbox_switch", |schema| async move {
        // Both connected while the outbox is off; `early` never calls `outbox()` itself.
        let early = Arc::new(connect(&schema).await?);
        let relay_store = connect(&schema).await?;
        save_all(&early, &named("off", 2)).await?;
        assert_eq!(queued(&schema).await?, 0, "no events while the switch is off");

        let mut relay = outbox(&relay_store).await?;
        assert_eq!(query_i64(&schema, "SELECT count(*) FROM {schema}.outbox_switch").await?, 1);
        // A second handle finds it on and leaves it so.
        outbox(&relay_store).await?.close().await?;
        assert_eq!(query_i64(&schema, "SELECT count(*) FROM {schema}.outbox_switch").await?, 1);

        // One at a time (single-row statements), then 64 at once (batches).
        save_all(&early, &named("one", 3)).await?;
        let batched = named("many", 64);
        let saves: Vec<_> = batched
            .iter()
            .map(|id| {
                let (early, id) = (Arc::clone(&early), id.clone());
                tokio::spawn(async move { early.save(&payment(&id)).await })
            })
            .collect();
        for save in saves {
            assert_eq!(save.await??, SaveOutcome::New);
        }
        // Duplicates and conflicts, alone and in batches with new payments, add nothing.
        let again: Vec<_> = ["one-000", "many-001", "many-002", "dup-new"]
            .into_iter()
            .map(|id| {
                let early = Arc::clone(&early);
                let conflicting = id == "many-002";
                tokio::spawn(async move {
                    let p =
                        if conflicting { Payment::parse(id, 7, "USD").expect("valid") } else { payment(id) };
                    early.save(&p).await
                })
            })
            .collect();
        for save in again {
            save.await??;
        }
        assert_eq!(early.save(&payment("one-001")).await?, SaveOutcome::Duplicate);

        let expected: BTreeSet<String> =
            named("one", 3).into_iter().chain(batched).chain(["dup-new".to_owned()]).collect();
        assert_eq!(queued(&schema).await?, expected.len() as i64, "one event per new payment, no more");
        let events = relay.claim(1000).await?;
        let claimed: BTreeSet<String> = ids(&events).into_iter().collect();
        assert_eq!(claimed, expected);

        // Each event is its payment as recorded, at the time the payments table says.
        let session = Session::open(&schema).await?;
        let recorded: HashMap<String, i64> = session
            .query("SELECT payment_id, floor(extract(epoch FROM recorded_at) * 1000)::bigint FROM {schema}.payments", &[])
            .await?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        session.end().await?;
        for event in &events {
            assert_eq!(event.payment, early.get(&event.payment.id).await?.expect("recorded"));
            let millis = u64::try_from(recorded[event.payment.id.as_str()])?;
            assert_eq!(event.recorded_at, RecordedAt::from_unix_millis(millis), "{}", event.payment.id);
        }
        relay.mark_published().await?;
        assert!(relay.claim(10).await?.is_empty());
        relay.close().await?;
        Ok(())
    })
}

pub(super) fn two_handles_claim_disjoint_events_and_a_new_claim_gives_the_last_back() -> Result<(), Failed> {
    with_schema("outbox_disjoint", |schema| async move {
        let store = connect(&schema).await?;
        let other = connect(&schema).await?;
        let (mut first, mut second) = (outbox(&store).await?, outbox(&other).await?);
        let all = named("e", 10);
        save_all(&store, &all).await?;

        assert_eq!(ids(&first.claim(4).await?), all[..4], "oldest first");
        assert_eq!(ids(&second.claim(100).await?), all[4..], "none of the first handle's");
        let mut third = outbox(&store).await?;
        assert!(third.claim(100).await?.is_empty(), "everything is held");
        assert_eq!(third.backlog().await?.pending, 10, "held events are pending all the same");

        first.mark_published().await?;
        first.mark_published().await?; // nothing held: nothing to do
        // A new claim gives back the second's unmarked one first, and takes it again.
        assert_eq!(ids(&second.claim(3).await?), all[4..7]);
        assert_eq!(ids(&third.claim(100).await?), all[7..], "given back by the second's new claim");
        second.mark_published().await?;
        third.mark_published().await?;
        assert_eq!(first.backlog().await?.pending, 0);
        for mut handle in [first, second, third] {
            handle.close().await?;
        }
        Ok(())
    })
}

/// Claims with `handle` until it gets `expected`, for up to `within`; returns how long it took.
async fn claim_until(
    handle: &mut Box<dyn Outbox>,
    expected: &[String],
    within: Duration,
) -> Result<Duration, Failed> {
    let started = Instant::now();
    loop {
        let got = ids(&handle.claim(100).await?);
        if got == expected {
            return Ok(started.elapsed());
        }
        if started.elapsed() > within {
            return Err(format!("after {within:?} the claim holds {got:?}, not {expected:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub(super) fn a_killed_dropped_or_closed_handle_gives_its_claim_back_at_once() -> Result<(), Failed> {
    with_schema("outbox_kill", |schema| async move {
        let application = format!("outbox-kill-{}", schema.name());
        let config = PostgresConfig::from_url(&schema.url())?.with_application_name(&application);
        let killed_store = PostgresPaymentsRepository::connect(config).await?;
        let store = connect(&schema).await?;
        let mut killed = outbox(&killed_store).await?;
        let all = named("k", 5);
        save_all(&store, &all).await?;

        // Killed: the server ends the session, rolls its transaction back, and the rows are free
        // as soon as the backend is gone (pg_terminate_backend waits for that).
        assert_eq!(ids(&killed.claim(100).await?), all);
        let session = Session::open(&schema).await?;
        // In the select list, so that it runs for the rows the filter keeps and no others.
        let terminated = session
            .query(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity \
                 WHERE application_name = $1 AND state = 'idle in transaction'",
                &[&application],
            )
            .await?;
        session.end().await?;
        let terminated: Vec<bool> = terminated.iter().map(|row| row.get(0)).collect();
        assert_eq!(terminated, [true], "the handle's session, holding its claim");
        let mut next = outbox(&store).await?;
        assert_eq!(ids(&next.claim(100).await?), all, "free at once");
        // The killed handle connects again: at its next call, or the one after an outage error.
        match killed.claim(100).await {
            Ok(events) => assert!(events.is_empty(), "held by the next handle"),
            Err(err) => {
                assert!(err.is_unavailable(), "a lost connection is an outage: {err}");
                assert!(killed.claim(100).await?.is_empty(), "reconnected; held by the next handle");
            }
        }

        // Dropped: the driver ends the session as soon as it runs, without a call.
        drop(next);
        let mut after_drop = outbox(&store).await?;
        let took = claim_until(&mut after_drop, &all, Duration::from_secs(5)).await?;
        assert!(took < Duration::from_secs(1), "a dropped handle's claim took {took:?} to come back");

        // Closed: given back before close returns.
        after_drop.close().await?;
        let mut after_close = outbox(&store).await?;
        assert_eq!(ids(&after_close.claim(100).await?), all, "free when close returns");
        let err = after_drop.claim(1).await.expect_err("a closed handle");
        assert!(!err.is_unavailable() && err.to_string().contains("is closed"), "{err}");
        after_close.mark_published().await?;
        killed.close().await?;
        after_close.close().await?;
        Ok(())
    })
}

pub(super) fn an_event_committed_after_a_later_one_was_published_is_still_claimed() -> Result<(), Failed> {
    with_schema("outbox_order", |schema| async move {
        let store = connect(&schema).await?;
        let mut relay = outbox(&store).await?;
        // A save that took its sequence number first and commits last (held open by hand).
        let late = Session::open(&schema).await?;
        late.run(
            "BEGIN;
             WITH inserted AS (INSERT INTO {schema}.payments (payment_id, amount, currency)
                               VALUES ('late', 100, 'EUR') RETURNING payment_id, amount, currency, recorded_at)
             INSERT INTO {schema}.payments_outbox (payment_id, amount, currency, recorded_at)
             SELECT payment_id, amount, currency, recorded_at FROM inserted",
        )
        .await?;
        let late_seq: i64 =
            late.query("SELECT seq FROM {schema}.payments_outbox WHERE payment_id = 'late'", &[]).await?[0]
                .get(0);

        save_all(&store, &["early".to_owned()]).await?;
        assert_eq!(ids(&relay.claim(100).await?), ["early"], "the uncommitted one is invisible");
        let early_seq =
            query_i64(&schema, "SELECT seq FROM {schema}.payments_outbox WHERE payment_id = 'early'").await?;
        assert!(late_seq < early_seq, "sequence {late_seq} commits after {early_seq}: out of order");
        relay.mark_published().await?;
        assert!(relay.claim(100).await?.is_empty());

        late.run("COMMIT").await?;
        late.end().await?;
        // A relay reading after the last sequence it published would never see it.
        assert_eq!(ids(&relay.claim(100).await?), ["late"], "claimed although its sequence is lower");
        relay.mark_published().await?;
        assert_eq!(relay.backlog().await?.pending, 0);
        relay.close().await?;
        Ok(())
    })
}

pub(super) fn two_relays_beside_concurrent_saves_publish_every_event_exactly_once() -> Result<(), Failed> {
    with_schema("outbox_relays", |schema| async move {
        let saver = Arc::new(connect(&schema).await?);
        let relay_store = Arc::new(connect(&schema).await?);
        outbox(&relay_store).await?.close().await?; // on before the first save
        let saving = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let relays: Vec<_> = (0..2)
            .map(|_| {
                let (relay_store, saving) = (Arc::clone(&relay_store), Arc::clone(&saving));
                tokio::spawn(async move {
                    let mut relay = relay_store.outbox().await?.expect("an outbox");
                    let mut published = Vec::new();
                    loop {
                        let done = !saving.load(std::sync::atomic::Ordering::SeqCst);
                        let events = relay.claim(50).await?;
                        if events.is_empty() && done {
                            break;
                        }
                        published.extend(ids(&events));
                        relay.mark_published().await?;
                    }
                    relay.close().await?;
                    Ok::<_, payments_ports::RepositoryError>(published)
                })
            })
            .collect();
        let saves: Vec<_> = (0..8)
            .map(|task| {
                let saver = Arc::clone(&saver);
                tokio::spawn(async move {
                    for i in 0..150 {
                        let outcome = saver.save(&payment(&format!("c-{task}-{i:03}"))).await?;
                        assert_eq!(outcome, SaveOutcome::New);
                    }
                    Ok::<_, payments_ports::RepositoryError>(())
                })
            })
            .collect();
        for save in saves {
            save.await??;
        }
        saving.store(false, std::sync::atomic::Ordering::SeqCst);
        let mut published = Vec::new();
        for relay in relays {
            published.extend(relay.await??);
        }
        let distinct: BTreeSet<&String> = published.iter().collect();
        assert_eq!(distinct.len(), published.len(), "no event went to both relays");
        assert_eq!(published.len(), 8 * 150, "every event was published");
        assert_eq!(queued(&schema).await?, 0);
        Ok(())
    })
}

pub(super) fn marks_survive_a_reopen_and_unmarked_claims_come_back() -> Result<(), Failed> {
    with_schema("outbox_reopen", |schema| async move {
        let store = connect(&schema).await?;
        let mut relay = outbox(&store).await?;
        let all = named("r", 6);
        save_all(&store, &all).await?;
        assert_eq!(ids(&relay.claim(3).await?), all[..3]);
        relay.mark_published().await?;
        assert_eq!(ids(&relay.claim(2).await?), all[3..5]);
        // Gone without marking, store and all.
        drop(relay);
        store.close().await?;
        drop(store);

        let store = connect(&schema).await?;
        let mut relay = outbox(&store).await?;
        let took = claim_until(&mut relay, &all[3..], Duration::from_secs(5)).await?;
        assert!(took < Duration::from_secs(1), "{took:?}");
        relay.mark_published().await?;
        relay.close().await?;
        let mut relay = outbox(&connect(&schema).await?).await?;
        assert!(relay.claim(100).await?.is_empty(), "marked stays marked");
        relay.close().await?;
        Ok(())
    })
}

pub(super) fn backlog_counts_claimed_and_unclaimed_events_and_gives_the_oldest() -> Result<(), Failed> {
    with_schema("outbox_backlog", |schema| async move {
        let store = connect(&schema).await?;
        let (mut relay, mut other) = (outbox(&store).await?, outbox(&store).await?);
        let empty = relay.backlog().await?;
        assert_eq!((empty.pending, empty.oldest), (0, None));
        let all = named("b", 3);
        save_all(&store, &all).await?;
        let claimed = other.claim(2).await?;
        let backlog = relay.backlog().await?;
        assert_eq!(backlog.pending, 3, "claimed by another handle, still pending");
        let oldest = backlog.oldest.ok_or("an oldest event")?;
        assert_eq!(
            oldest,
            claimed[0].recorded_at.system_time(),
            "the oldest event's time, to the millisecond"
        );
        other.mark_published().await?;
        let backlog = relay.backlog().await?;
        assert_eq!(backlog.pending, 1);
        assert!(backlog.oldest >= Some(oldest));
        // Backlog inside a claim of its own.
        relay.claim(1).await?;
        assert_eq!(relay.backlog().await?.pending, 1);
        relay.mark_published().await?;
        assert_eq!(relay.backlog().await?, payments_ports::OutboxBacklog { pending: 0, oldest: None });
        relay.close().await?;
        other.close().await?;
        Ok(())
    })
}

pub(super) fn turning_the_outbox_on_waits_for_saves_in_flight_without_stalling_the_others()
-> Result<(), Failed> {
    with_schema("outbox_turn_on", |schema| async move {
        let store = Arc::new(connect(&schema).await?);
        // A transaction inserting `held` stays open: a save of `held` waits for it, mid-statement.
        let blocker = Session::open(&schema).await?;
        blocker
            .run("BEGIN; INSERT INTO {schema}.payments (payment_id, amount, currency) VALUES ('held', 100, 'EUR')")
            .await?;
        let in_flight = tokio::spawn({
            let store = Arc::clone(&store);
            async move { store.save(&payment("held")).await }
        });
        let turning_on = tokio::spawn({
            let store = Arc::clone(&store);
            async move { store.outbox().await.map(|handle| handle.is_some()) }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Other saves go through between the attempts to take the lock.
        let started = Instant::now();
        save_all(&store, &named("meanwhile", 3)).await?;
        assert!(started.elapsed() < Duration::from_secs(3), "saves stalled for {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(!turning_on.is_finished(), "the switch waits for the save in flight");
        assert!(!in_flight.is_finished());

        blocker.run("ROLLBACK").await?;
        blocker.end().await?;
        assert!(turning_on.await??);
        let without_event = "SELECT count(*) FROM {schema}.payments p \
             WHERE NOT EXISTS (SELECT FROM {schema}.payments_outbox o WHERE o.payment_id = p.payment_id)";
        let before = query_i64(&schema, without_event).await?;
        assert_eq!(in_flight.await??, SaveOutcome::New);
        save_all(&store, &named("on", 2)).await?;
        // The save in flight committed before the switch, without its event; once `outbox()` has
        // returned, no payment commits without one.
        assert_eq!(
            query_i64(&schema, without_event).await?,
            before,
            "a payment committed after the switch has no event"
        );
        assert_eq!(before, 4, "`held` and those saved meanwhile, before the switch");
        let since = "SELECT count(*) FROM {schema}.payments p \
             WHERE p.recorded_at >= (SELECT on_since FROM {schema}.outbox_switch) \
             AND NOT EXISTS (SELECT FROM {schema}.payments_outbox o WHERE o.payment_id = p.payment_id)";
        assert_eq!(
            query_i64(&schema, since).await?,
            0,
            "every payment recorded since `on_since` has its event"
        );
        assert_eq!(queued(&schema).await?, 2);
        Ok(())
    })
}

pub(super) fn a_claim_held_idle_past_the_claim_timeout_is_given_back() -> Result<(), Failed> {
    with_schema("outbox_idle", |schema| async move {
        let config = PostgresConfig::from_url(&schema.url())?.with_claim_timeout(Duration::from_millis(500));
        let hung_store = PostgresPaymentsRepository::connect(config).await?;
        let store = connect(&schema).await?;
        let mut hung = outbox(&hung_store).await?;
        let all = named("i", 3);
        save_all(&store, &all).await?;
        assert_eq!(ids(&hung.claim(100).await?), all);
        // The relay hangs while holding its claim; the server ends its session.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let mut other = outbox(&store).await?;
        assert_eq!(ids(&other.claim(100).await?), all, "given back by the server");
        let err = hung.mark_published().await.expect_err("its claim is gone");
        assert!(err.is_unavailable(), "{err}");
        // Then it carries on: a new session, and a new claim.
        let mut reclaimed = hung.claim(100).await;
        if matches!(&reclaimed, Err(err) if err.is_unavailable()) {
            reclaimed = hung.claim(100).await;
        }
        assert!(reclaimed?.is_empty(), "held by the other handle");
        other.mark_published().await?;
        hung.close().await?;
        other.close().await?;
        Ok(())
    })
}

pub(super) fn a_claim_lost_with_its_connection_is_reported_by_the_next_mark_once() -> Result<(), Failed> {
    with_schema("outbox_lost", |schema| async move {
        let application = format!("outbox-lost-{}", schema.name());
        let config = PostgresConfig::from_url(&schema.url())?.with_application_name(&application);
        let store = PostgresPaymentsRepository::connect(config).await?;
        let mut relay = outbox(&store).await?;
        save_all(&store, &named("l", 2)).await?;
        relay.claim(100).await?;
        execute(
            &schema,
            &format!(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity \
                 WHERE application_name = '{application}' AND state = 'idle in transaction'"
            ),
        )
        .await?;
        // The backlog reconnects, or fails with the connection: either way the claim is gone,
        // and marking must not pretend otherwise.
        if let Err(err) = relay.backlog().await {
            assert!(err.is_unavailable(), "{err}");
        }
        let err = relay.mark_published().await.expect_err("the claim went with its session");
        assert!(err.is_unavailable() && err.to_string().contains("claim again"), "{err}");
        relay.mark_published().await?; // reported once; nothing held now
        assert_eq!(relay.claim(100).await?.len(), 2, "nothing was marked");
        relay.close().await?;
        Ok(())
    })
}

pub(super) fn a_broken_outbox_table_is_a_failure_not_an_outage() -> Result<(), Failed> {
    with_schema("outbox_broken", |schema| async move {
        let store = connect(&schema).await?;
        let mut relay = outbox(&store).await?;
        save_all(&store, &named("x", 2)).await?;
        execute(&schema, "ALTER TABLE {schema}.payments_outbox RENAME TO moved").await?;
        let err = relay.claim(100).await.expect_err("no table");
        assert!(!err.is_unavailable(), "a broken schema is not an outage to wait out: {err}");
        let err = relay.backlog().await.expect_err("no table");
        assert!(!err.is_unavailable(), "{err}");
        let err = store.save(&payment("x-new")).await.expect_err("saves need the table too");
        assert!(!err.is_unavailable(), "{err}");
        execute(&schema, "ALTER TABLE {schema}.moved RENAME TO payments_outbox").await?;
        assert_eq!(relay.claim(100).await?.len(), 2, "the handle connects again once repaired");
        relay.close().await?;
        Ok(())
    })
}
