//! The MySQL store's own tests: migrations, what the server answers to the store's statements,
//! strict mode, how failures are reported, and TLS (`tls`, against MariaDB servers the tests
//! start themselves). `harness = false`, so that without a server (or the programs to start one)
//! each test is reported as skipped by name (failed under CI).

use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, Value};
use payments_ports::domain::{Payment, SaveOutcome};
use payments_ports::{PaymentsRepository, RepositoryError, error_chain};
use payments_store_mysql::testing::{insert_statement, store_session};
use payments_store_mysql::{MysqlConfig, MysqlPaymentsRepository, SCHEMA_VERSION};
use payments_test_support::mysql::{self as server, TestDatabase};
use payments_test_support::{Gate, tests};

mod tls;

fn main() -> ExitCode {
    let tests = tests![
        migrations_are_idempotent_and_safe_when_instances_start_together,
        a_schema_newer_than_this_build_is_refused,
        affected_rows_count_inserted_rows_and_not_present_ones,
        a_mixed_batch_tells_its_own_rows_from_those_already_present,
        a_value_the_schema_cannot_hold_is_an_error_not_a_truncation,
        a_lock_wait_timeout_is_unavailable_and_the_retry_records_the_payment,
        a_deadlock_is_unavailable_and_the_retries_record_each_payment_once,
        killed_connections_make_saves_unavailable_and_the_retries_record_each_once,
        a_save_held_up_past_the_call_timeout_is_unavailable_then_recorded_once,
        an_unreachable_server_is_unavailable,
        a_missing_table_is_a_failure_not_an_outage,
        a_missing_database_is_a_failure_that_says_so,
        refused_credentials_are_a_failure_and_the_password_never_shows,
        close_finishes_the_queued_saves_then_refuses_calls,
    ];
    let mut trials = server::trials("mysql", tests);
    trials.extend(payments_test_support::trials(
        "mysql",
        &Gate::new(server::server_available()),
        tests![
            tls::verify_identity_with_the_right_ca_and_host_connects_over_tls_and_saves,
            tls::verify_identity_refuses_a_certificate_for_another_host,
            tls::verify_identity_refuses_an_unknown_ca,
            tls::required_and_preferred_use_tls_without_checking_the_certificate,
            tls::disabled_connects_in_plain_text_to_a_tls_server,
            tls::required_never_falls_back_to_plain_text,
            tls::preferred_connects_in_plain_text_to_a_server_without_tls,
            tls::verify_ca_stays_refused_while_the_driver_checks_names_regardless,
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

/// How long a test waits for something it polls for before it fails.
const DEADLINE: Duration = Duration::from_secs(20);

/// Runs `test` against a fresh database and drops the database afterwards, whatever happened.
fn with_database<F, Fut>(prefix: &str, test: F) -> Result<(), Failed>
where
    F: FnOnce(TestDatabase) -> Fut,
    Fut: Future<Output = Result<(), Failed>>,
{
    let runtime = runtime();
    let database = runtime.block_on(TestDatabase::create(prefix))?;
    // A failed assertion panics; the database is dropped all the same, then the panic goes on.
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.block_on(test(database.clone()))));
    let cleanup = runtime.block_on(database.drop_database());
    let result = result.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    result.and(cleanup.map_err(|err| Failed::from(format!("dropping database {}: {err}", database.name()))))
}

/// The store's configuration for a test database, with the defaults.
fn config(database: &TestDatabase) -> Result<MysqlConfig, Failed> {
    Ok(MysqlConfig::from_url(&database.url())?)
}

async fn connect(config: MysqlConfig) -> Result<MysqlPaymentsRepository, Failed> {
    Ok(MysqlPaymentsRepository::connect(config).await?)
}

/// How often [`eventually`] asks.
const POLL: Duration = Duration::from_millis(20);

/// How often to ask `information_schema.INNODB_TRX`: InnoDB refreshes that table's snapshot only
/// when it was last read more than 0.1 s ago, so asking faster would see the same stale rows for
/// ever.
const POLL_INNODB_TRX: Duration = Duration::from_millis(150);

/// Polls `check` every `every` until it answers true; fails after [`DEADLINE`], saying what it
/// waited for.
async fn eventually(
    what: &str,
    every: Duration,
    mut check: impl AsyncFnMut() -> Result<bool, Failed>,
) -> Result<(), Failed> {
    let started = Instant::now();
    while !check().await? {
        if started.elapsed() > DEADLINE {
            return Err(format!("waited {DEADLINE:?} for {what}").into());
        }
        tokio::time::sleep(every).await;
    }
    Ok(())
}

/// One integer from the first row of `sql`.
async fn query_u64(conn: &mut Conn, sql: &str) -> Result<u64, Failed> {
    Ok(conn.query_first::<u64, _>(sql).await?.ok_or("no row")?)
}

/// How many of the store's statements are running (waiting on a lock, say), from sessions other
/// than `except`.
async fn statements_running(conn: &mut Conn, except: &[u32]) -> Result<u64, Failed> {
    // The store's statements are prepared: they run as `Execute`.
    let sessions = server_sessions(conn, except, "AND COMMAND IN ('Query', 'Execute')").await?;
    Ok(u64::try_from(sessions.len())?)
}

/// The IDs of the sessions on this connection's database, other than this one and `except`:
/// the store's connections, since every test has a database of its own.
async fn server_sessions(conn: &mut Conn, except: &[u32], filter: &str) -> Result<Vec<u64>, Failed> {
    let sql = format!(
        "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = DATABASE() AND ID <> CONNECTION_ID() {filter}"
    );
    let ids: Vec<u64> = conn.query(sql).await?;
    Ok(ids.into_iter().filter(|id| !except.iter().any(|e| u64::from(*e) == *id)).collect())
}

/// The transactions of sessions on this connection's database that wait for a row lock now,
/// as the number of rows each has modified (what tells one wait from another, since the snapshot
/// may still show an earlier one). Poll it every [`POLL_INNODB_TRX`].
async fn lock_waits(conn: &mut Conn) -> Result<Vec<u64>, Failed> {
    let sql = "SELECT t.trx_rows_modified FROM information_schema.INNODB_TRX t \
               JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id \
               WHERE t.trx_state = 'LOCK WAIT' AND p.DB = DATABASE()";
    Ok(conn.query(sql).await?)
}

/// Saves `payment` until it is not unavailable, within [`DEADLINE`]; returns the outcome.
async fn save_until_available(
    store: &MysqlPaymentsRepository,
    payment: &Payment,
) -> Result<SaveOutcome, Failed> {
    let started = Instant::now();
    loop {
        match store.save(payment).await {
            Ok(outcome) => return Ok(outcome),
            Err(err) if err.is_unavailable() && started.elapsed() < DEADLINE => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(err) => return Err(format!("saving {} again: {}", payment.id, error_chain(&err)).into()),
        }
    }
}

/// The parameters of the store's insert for `(id, amount, currency)` rows, all with `token`.
fn insert_params(rows: &[(&str, u64, &str)], token: u8) -> Vec<Value> {
    rows.iter()
        .flat_map(|(id, amount, currency)| {
            [
                Value::from(id.as_bytes()),
                Value::from(*amount),
                Value::from(currency.as_bytes()),
                Value::from(vec![token; 16]),
            ]
        })
        .collect()
}

fn migrations_are_idempotent_and_safe_when_instances_start_together() -> Result<(), Failed> {
    with_database("migrate", |database| async move {
        // Four instances, each with its own pool, start at the same moment on an empty database.
        let configs: Vec<_> = (0..4).map(|_| config(&database)).collect::<Result<_, _>>()?;
        let started =
            futures::future::join_all(configs.into_iter().map(MysqlPaymentsRepository::connect)).await;
        for store in &started {
            if let Err(err) = store {
                return Err(format!("an instance failed to start: {}", error_chain(err)).into());
            }
        }
        let again = connect(config(&database)?).await?;
        assert_eq!(again.save(&payment("p")).await?, SaveOutcome::New);
        let mut session = database.session().await?;
        assert_eq!(
            query_u64(&mut session, "SELECT COUNT(*) FROM schema_migrations").await?,
            1,
            "recorded once"
        );
        assert_eq!(
            query_u64(&mut session, "SELECT MAX(version) FROM schema_migrations").await?,
            u64::from(SCHEMA_VERSION)
        );
        let free = "SELECT IS_FREE_LOCK(CONCAT('payments-migrations:', MD5(DATABASE())))";
        assert_eq!(query_u64(&mut session, free).await?, 1, "the migration lock was released");
        session.disconnect().await?;
        for store in started.into_iter().flatten() {
            store.close().await;
        }
        again.close().await;
        Ok(())
    })
}

fn a_schema_newer_than_this_build_is_refused() -> Result<(), Failed> {
    with_database("newer", |database| async move {
        connect(config(&database)?).await?.close().await;
        database.execute("INSERT INTO schema_migrations (version) VALUES (999)").await?;
        let err = MysqlPaymentsRepository::connect(config(&database)?).await.expect_err("a newer schema");
        assert!(!err.is_unavailable(), "waiting will not make this build newer: {err}");
        let expected =
            format!("database {} is at schema version 999, newer than this build knows (1)", database.name());
        assert!(err.to_string().contains(&expected), "{err}");
        Ok(())
    })
}

fn affected_rows_count_inserted_rows_and_not_present_ones() -> Result<(), Failed> {
    with_database("affected", |database| async move {
        connect(config(&database)?).await?.close().await;
        let mut conn = store_session(&config(&database)?, database.name()).await?;
        let one = insert_statement(1);

        conn.exec_drop(&one, insert_params(&[("a", 100, "EUR")], 1)).await?;
        assert_eq!(conn.affected_rows(), 1, "an absent ID is inserted");
        conn.exec_drop(&one, insert_params(&[("a", 100, "EUR")], 2)).await?;
        assert_eq!(conn.affected_rows(), 0, "a present ID, identical, is left as it is");
        conn.exec_drop(&one, insert_params(&[("a", 999, "USD")], 3)).await?;
        assert_eq!(conn.affected_rows(), 0, "a present ID, different, is left as it is");
        let stored: Option<(u64, String, Vec<u8>)> = conn
            .query_first("SELECT amount, currency, inserted_by FROM payments WHERE payment_id = 'a'")
            .await?;
        assert_eq!(stored, Some((100, "EUR".to_owned(), vec![1; 16])), "the first version, never updated");

        // Several rows: the total counts only those inserted; a row repeated (batch padding)
        // counts once.
        let rows = [("a", 100, "EUR"), ("b", 100, "EUR"), ("c", 100, "EUR"), ("c", 100, "EUR")];
        conn.exec_drop(insert_statement(4), insert_params(&rows, 4)).await?;
        assert_eq!(conn.affected_rows(), 2, "b and c inserted, a present, c's repeat a duplicate");
        conn.disconnect().await?;

        // Why the store refuses CLIENT_FOUND_ROWS: with it, a present row counts like an inserted one.
        let opts = OptsBuilder::from_opts(Opts::from_url(&database.url())?).client_found_rows(true);
        let mut found_rows = Conn::new(opts).await?;
        found_rows.exec_drop(&one, insert_params(&[("a", 100, "EUR")], 5)).await?;
        assert_eq!(found_rows.affected_rows(), 1, "CLIENT_FOUND_ROWS counts the present row");
        found_rows.disconnect().await?;
        Ok(())
    })
}

fn a_mixed_batch_tells_its_own_rows_from_those_already_present() -> Result<(), Failed> {
    with_database("mixed", |database| async move {
        let store = connect(config(&database)?.with_batches_in_flight(1)).await?;
        assert_eq!(store.save(&payment("first")).await?, SaveOutcome::New);
        // Another instance has recorded b, identical to what this batch will carry, and c with
        // another amount: only the token can tell that this batch did not insert b.
        let mut other = store_session(&config(&database)?, database.name()).await?;
        let present = [("b", 100, "EUR"), ("c", 555, "EUR")];
        other.exec_drop(insert_statement(2), insert_params(&present, 9)).await?;
        other.disconnect().await?;

        // Hold the only slot with a save stuck behind a table lock, queue a, b, c, d behind it,
        // then let it go: the four go out as one batch.
        let lock = database.lock_payments().await?;
        let store = Arc::new(store);
        let blocker = tokio::spawn({
            let store = Arc::clone(&store);
            async move { store.save(&payment("blocker")).await }
        });
        let mut watcher = database.session().await?;
        let lock_id = lock.connection_id();
        eventually("the blocking save to wait on the table lock", POLL, async || {
            Ok(statements_running(&mut watcher, &[lock_id]).await? == 1)
        })
        .await?;
        let queued: Vec<Payment> = ["a", "b", "c", "d"].map(payment).into();
        let mut saves: Vec<_> = queued.iter().map(|p| Box::pin(store.save(p))).collect();
        for save in &mut saves {
            // One poll puts the save in the batcher's queue; its answer comes later.
            assert!(futures::poll!(save.as_mut()).is_pending(), "a save answered while the slot was held");
        }
        lock.release().await?;
        assert_eq!(blocker.await??, SaveOutcome::New);
        let outcomes: Vec<SaveOutcome> =
            futures::future::join_all(saves).await.into_iter().collect::<Result<_, RepositoryError>>()?;
        assert_eq!(outcomes[0], SaveOutcome::New, "a was this batch's");
        assert_eq!(outcomes[1], SaveOutcome::Duplicate, "b was there already, identical");
        assert_eq!(
            outcomes[2],
            SaveOutcome::conflict(Payment::parse("c", 555, "EUR")?, payment("c")),
            "c was there already, different"
        );
        assert_eq!(outcomes[3], SaveOutcome::New, "d was this batch's");
        assert_eq!(store.count().await?, 6);
        watcher.disconnect().await?;
        store.close().await;
        Ok(())
    })
}

fn a_value_the_schema_cannot_hold_is_an_error_not_a_truncation() -> Result<(), Failed> {
    with_database("strict", |database| async move {
        let store = connect(config(&database)?).await?;
        let mut conn = store_session(&config(&database)?, database.name()).await?;
        let mode: String = conn.query_first("SELECT @@SESSION.sql_mode").await?.ok_or("no sql_mode")?;
        assert!(mode.contains("STRICT_ALL_TABLES"), "the store's sessions are strict: {mode}");
        let insert = insert_statement(1);
        for (row, why) in [
            (("x".repeat(65), 100, "EUR"), "an ID longer than 64"),
            (("euro".to_owned(), 100, "EURO"), "a four-letter currency"),
        ] {
            let (id, amount, currency) = row;
            let err =
                conn.exec_drop(&insert, insert_params(&[(&id, amount, currency)], 1)).await.expect_err(why);
            assert!(err.to_string().contains("1406"), "{why}: data too long, not truncated: {err}");
        }
        conn.disconnect().await?;

        // Through the store itself: a column narrowed behind its back (CHECK dropped, so that
        // only strict mode stands between the value and a truncation).
        database
            .execute(
                "ALTER TABLE payments DROP CONSTRAINT currency_format, \
                 MODIFY currency CHAR(2) CHARACTER SET ascii COLLATE ascii_bin NOT NULL",
            )
            .await?;
        let err = store.save(&payment("narrowed")).await.expect_err("EUR does not fit in CHAR(2)");
        assert!(!err.is_unavailable(), "a broken schema is not an outage: {err}");
        assert!(error_chain(&err).contains("Data too long"), "{}", error_chain(&err));
        assert_eq!(store.count().await?, 0, "nothing was stored, truncated or not");

        // What strict mode prevents: a lax session stores the truncated value with a warning.
        let mut lax = database.session().await?;
        lax.query_drop("SET SESSION sql_mode = ''").await?;
        lax.exec_drop(&insert, insert_params(&[("lax", 100, "EUR")], 2)).await?;
        let stored: Option<String> =
            lax.query_first("SELECT currency FROM payments WHERE payment_id = 'lax'").await?;
        assert_eq!(stored.as_deref(), Some("EU"), "without strict mode the currency is cut");
        lax.disconnect().await?;
        store.close().await;
        Ok(())
    })
}

fn a_lock_wait_timeout_is_unavailable_and_the_retry_records_the_payment() -> Result<(), Failed> {
    with_database("lockwait", |database| async move {
        let store = connect(config(&database)?.with_lock_wait_timeout(Duration::from_secs(1))).await?;
        // Another session inserts the same ID and does not commit: the store's insert waits for
        // its row lock, and the server gives up after one second.
        let mut holder = database.session().await?;
        holder.query_drop("BEGIN").await?;
        holder.exec_drop(insert_statement(1), insert_params(&[("held", 100, "EUR")], 7)).await?;
        let err =
            store.save(&payment("held")).await.expect_err("the row is locked past the lock wait timeout");
        assert!(err.is_unavailable(), "a lock wait timeout is worth retrying: {}", error_chain(&err));
        assert!(err.to_string().contains("lock wait timeout"), "{err}");
        assert!(
            error_chain(&err).contains("1205"),
            "the server's error is the source: {}",
            error_chain(&err)
        );
        holder.query_drop("ROLLBACK").await?;
        holder.disconnect().await?;
        assert_eq!(save_until_available(&store, &payment("held")).await?, SaveOutcome::New);
        assert_eq!(store.count().await?, 1);
        store.close().await;
        Ok(())
    })
}

fn a_deadlock_is_unavailable_and_the_retries_record_each_payment_once() -> Result<(), Failed> {
    with_database("deadlock", |database| async move {
        let store = Arc::new(connect(config(&database)?.with_batches_in_flight(1)).await?);
        let mut watcher = database.session().await?;

        // The only slot is held by a save of v, which waits for u's uncommitted insert of v.
        let mut u = database.session().await?;
        u.query_drop("BEGIN").await?;
        u.exec_drop(insert_statement(1), insert_params(&[("v", 100, "EUR")], 1)).await?;
        let blocker = tokio::spawn({
            let store = Arc::clone(&store);
            async move { store.save(&payment("v")).await }
        });
        eventually("the save of v to wait for its row lock", POLL_INNODB_TRX, async || {
            Ok(lock_waits(&mut watcher).await? == [0])
        })
        .await?;
        // w and x queue behind it, to go out together as the batch [w, x].
        let (pw, px) = (payment("w"), payment("x"));
        let (mut save_w, mut save_x) = (Box::pin(store.save(&pw)), Box::pin(store.save(&px)));
        assert!(futures::poll!(save_w.as_mut()).is_pending());
        assert!(futures::poll!(save_x.as_mut()).is_pending());

        // t, heavier (fifty rows inserted, so that InnoDB picks the store as the victim), holds x.
        let mut t = database.session().await?;
        t.query_drop("BEGIN").await?;
        let heavy: Vec<(String, u64, &str)> = (0..50).map(|i| (format!("t{i:02}"), 100, "EUR")).collect();
        let heavy: Vec<(&str, u64, &str)> = heavy.iter().map(|(id, a, c)| (id.as_str(), *a, *c)).collect();
        t.exec_drop(insert_statement(heavy.len()), insert_params(&heavy, 2)).await?;
        t.exec_drop(insert_statement(1), insert_params(&[("x", 100, "EUR")], 2)).await?;

        // u lets go: v is saved, and the batch [w, x] inserts w, then waits for t's x.
        u.query_drop("ROLLBACK").await?;
        assert_eq!(blocker.await??, SaveOutcome::New);
        // Having inserted w (one row modified): the wait of v, which modified none, may still show.
        eventually("the batch [w, x] to wait for x, holding w", POLL_INNODB_TRX, async || {
            Ok(lock_waits(&mut watcher).await? == [1])
        })
        .await?;
        // t now wants w, which the batch holds: a cycle, and the lighter transaction, the store's,
        // is rolled back.
        let t_read: Vec<String> =
            t.query("SELECT payment_id FROM payments WHERE payment_id = 'w' FOR UPDATE").await?;
        assert!(t_read.is_empty(), "the store's insert of w was rolled back: {t_read:?}");
        for (save, id) in [(save_w, "w"), (save_x, "x")] {
            let err = save.await.expect_err("the batch was the deadlock's victim");
            assert!(err.is_unavailable(), "{id}: a deadlock is worth retrying: {}", error_chain(&err));
            assert!(error_chain(&err).contains("1213"), "{id}: {}", error_chain(&err));
        }
        t.query_drop("ROLLBACK").await?;
        t.disconnect().await?;
        u.disconnect().await?;
        watcher.disconnect().await?;

        assert_eq!(save_until_available(&store, &pw).await?, SaveOutcome::New, "w was rolled back");
        assert_eq!(save_until_available(&store, &px).await?, SaveOutcome::New, "x was never inserted");
        assert_eq!(store.count().await?, 3, "v, w and x, once each");
        store.close().await;
        Ok(())
    })
}

fn killed_connections_make_saves_unavailable_and_the_retries_record_each_once() -> Result<(), Failed> {
    with_database("killed", |database| async move {
        let store = Arc::new(connect(config(&database)?).await?);
        assert_eq!(store.save(&payment("before")).await?, SaveOutcome::New);

        // Saves in flight, held mid-statement by a table lock, when their connections are killed.
        let lock = database.lock_payments().await?;
        let lock_id = lock.connection_id();
        let payments: Vec<Payment> = (0..20).map(|i| payment(&format!("p{i:02}"))).collect();
        let saves: Vec<_> = payments
            .iter()
            .map(|p| {
                let (store, p) = (Arc::clone(&store), p.clone());
                tokio::spawn(async move { store.save(&p).await })
            })
            .collect();
        let mut killer = database.session().await?;
        eventually("the saves to wait on the table lock", POLL, async || {
            Ok(statements_running(&mut killer, &[lock_id]).await? >= 1)
        })
        .await?;
        let killed = server_sessions(&mut killer, &[lock_id], "").await?;
        for id in &killed {
            // A session may end on its own meanwhile; the kill of a gone session is no failure.
            let _ = killer.query_drop(format!("KILL CONNECTION {id}")).await;
        }
        // The saves whose statements were killed fail now; the others queue, and wait on the
        // lock again on new connections, until it is released.
        lock.release().await?;
        killer.disconnect().await?;

        let mut news = std::collections::HashMap::new();
        let mut unavailable = 0;
        for (save, p) in saves.into_iter().zip(&payments) {
            let outcome = match save.await? {
                Ok(outcome) => outcome,
                Err(err) if err.is_unavailable() => {
                    unavailable += 1;
                    save_until_available(&store, p).await?
                }
                Err(err) => {
                    return Err(
                        format!("{}: a killed connection is an outage: {}", p.id, error_chain(&err)).into()
                    );
                }
            };
            assert!(matches!(outcome, SaveOutcome::New | SaveOutcome::Duplicate), "{}: {outcome:?}", p.id);
            *news.entry(p.id).or_insert(0) += usize::from(outcome == SaveOutcome::New);
        }
        assert!(unavailable >= 1, "no save saw its connection killed (killed sessions {killed:?})");
        // A killed statement was waiting on the lock, so it never ran: its retry is the one New.
        assert!(news.values().all(|&n| n == 1), "exactly one New per payment: {news:?}");
        assert_eq!(store.count().await?, 21, "every payment recorded once");
        for p in &payments {
            assert_eq!(store.get(&p.id).await?.as_ref(), Some(p));
        }
        store.close().await;
        Ok(())
    })
}

fn a_save_held_up_past_the_call_timeout_is_unavailable_then_recorded_once() -> Result<(), Failed> {
    with_database("held", |database| async move {
        let store = connect(config(&database)?.with_call_timeout(Duration::from_millis(300))).await?;
        let lock = database.lock_payments().await?;
        let err = store.save(&payment("held")).await.expect_err("the table is locked past the timeout");
        assert!(err.is_unavailable(), "a save that hangs is an outage to retry: {err}");
        assert!(err.to_string().contains("took longer than"), "{err}");
        lock.release().await?;
        // The timed-out insert may or may not have gone through once the lock was released;
        // either way the retry records the payment exactly once.
        let retried = save_until_available(&store, &payment("held")).await?;
        assert!(matches!(retried, SaveOutcome::New | SaveOutcome::Duplicate), "{retried:?}");
        assert_eq!(store.count().await?, 1);
        store.close().await;
        Ok(())
    })
}

fn an_unreachable_server_is_unavailable() -> Result<(), Failed> {
    runtime().block_on(async {
        // Nothing listens on port 1.
        let config = MysqlConfig::from_url("mysql://root@127.0.0.1:1/test?connect_timeout=2")?;
        let err = MysqlPaymentsRepository::connect(config).await.expect_err("connection refused");
        assert!(
            err.is_unavailable(),
            "connection refused must be retried, not dead-lettered: {}",
            error_chain(&err)
        );
        Ok(())
    })
}

fn a_missing_table_is_a_failure_not_an_outage() -> Result<(), Failed> {
    with_database("missing", |database| async move {
        let store = connect(config(&database)?).await?;
        database.execute("DROP TABLE payments").await?;
        let err = store.save(&payment("p")).await.expect_err("no table");
        assert!(!err.is_unavailable(), "a broken schema is not an outage to wait out: {err}");
        assert!(error_chain(&err).contains("1146"), "{}", error_chain(&err));
        let err = store.get(&payment("p").id).await.expect_err("no table");
        assert!(!err.is_unavailable(), "{err}");
        store.close().await;
        Ok(())
    })
}

fn a_missing_database_is_a_failure_that_says_so() -> Result<(), Failed> {
    runtime().block_on(async {
        let name = format!("absent_{}", std::process::id());
        let mut url = url::Url::parse(&server::url())?;
        url.set_path(&name);
        let err = MysqlPaymentsRepository::connect(MysqlConfig::from_url(url.as_str())?)
            .await
            .expect_err("the database does not exist");
        assert!(!err.is_unavailable(), "{err}");
        assert!(err.to_string().contains("does not exist; create it first"), "{err}");
        Ok(())
    })
}

fn refused_credentials_are_a_failure_and_the_password_never_shows() -> Result<(), Failed> {
    runtime().block_on(async {
        let mut url = url::Url::parse(&server::url())?;
        url.set_username(&format!("nobody_{}", std::process::id())).map_err(|()| "cannot set the user")?;
        url.set_password(Some("hunter2-secret")).map_err(|()| "cannot set the password")?;
        let config = MysqlConfig::from_url(url.as_str())?.with_connect_timeout(Duration::from_secs(5));
        assert!(!format!("{config} {config:?}").contains("hunter2"), "{config:?}");
        let err = MysqlPaymentsRepository::connect(config).await.expect_err("no such user");
        let shown = format!("{} {err:?}", error_chain(&err));
        assert!(!err.is_unavailable(), "refused credentials will not work on retry: {shown}");
        assert!(shown.contains("Access denied"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        Ok(())
    })
}

fn close_finishes_the_queued_saves_then_refuses_calls() -> Result<(), Failed> {
    with_database("close", |database| async move {
        let store = Arc::new(connect(config(&database)?.with_batches_in_flight(1)).await?);
        // Saves queued behind a table lock when close is called.
        let lock = database.lock_payments().await?;
        let lock_id = lock.connection_id();
        let payments: Vec<Payment> = (0..10).map(|i| payment(&format!("q{i}"))).collect();
        let mut saves: Vec<_> = payments.iter().map(|p| Box::pin(store.save(p))).collect();
        for save in &mut saves {
            assert!(futures::poll!(save.as_mut()).is_pending());
        }
        let mut watcher = database.session().await?;
        eventually("a batch to wait on the table lock", POLL, async || {
            Ok(statements_running(&mut watcher, &[lock_id]).await? == 1)
        })
        .await?;
        let closing = tokio::spawn({
            let store = Arc::clone(&store);
            async move { store.close().await }
        });
        lock.release().await?;
        for (save, p) in futures::future::join_all(saves).await.into_iter().zip(&payments) {
            assert_eq!(
                save.map_err(|err| error_chain(&err))?,
                SaveOutcome::New,
                "{} was queued before close",
                p.id
            );
        }
        closing.await?;

        let err = store.save(&payment("late")).await.expect_err("closed");
        assert!(!err.is_unavailable() && err.to_string().contains("closed"), "{err}");
        let err = store.count().await.expect_err("closed");
        assert!(!err.is_unavailable() && err.to_string().contains("closed"), "{err}");
        store.close().await; // again: nothing left to do
        eventually("the store's sessions to end", POLL, async || {
            Ok(server_sessions(&mut watcher, &[], "").await?.is_empty())
        })
        .await?;
        assert_eq!(query_u64(&mut watcher, "SELECT COUNT(*) FROM payments").await?, 10);
        watcher.disconnect().await?;
        Ok(())
    })
}
