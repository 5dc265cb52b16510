//! White-box tests through the I/O seam: injected write and sync failures, group commit, and
//! duplicates answered without disk I/O.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use payments_ports::domain::{Payment, SaveOutcome};
use payments_ports::{PaymentsRepository, export_all};

use super::*;
use crate::io::faults::{Faulty, Log, Mode, Op};

fn payment(i: usize) -> Payment {
    Payment::parse(&format!("pay-{i:05}"), 100 + i as u64, "EUR").expect("valid")
}

/// A journal I/O that counts calls and can make each sync slow, as a real disk does.
struct Counting {
    file: File,
    sync_delay: Duration,
    counts: Arc<Mutex<(u32, u32)>>,
}

impl JournalIo for Counting {
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.counts.lock().expect("counts").0 += 1;
        std::io::Write::write_all(&mut self.file, bytes)
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.counts.lock().expect("counts").1 += 1;
        std::thread::sleep(self.sync_delay);
        self.file.sync_data()
    }

    fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)
    }
}

fn counting(path: &Path, sync_delay: Duration) -> (FilePaymentsRepository, Arc<Mutex<(u32, u32)>>) {
    let counts = Arc::new(Mutex::new((0, 0)));
    let shared = Arc::clone(&counts);
    let store = FilePaymentsRepository::open_with(path, move |file| {
        Box::new(Counting { file, sync_delay, counts: shared })
    })
    .expect("open");
    (store, counts)
}

async fn exported(store: &dyn PaymentsRepository) -> Vec<Payment> {
    let mut all = Vec::new();
    export_all(store, 500, |p| {
        all.push(p);
        Ok::<_, RepositoryError>(())
    })
    .await
    .expect("export");
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_savers_share_writes_and_syncs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (store, counts) = counting(&dir.path().join("j"), Duration::from_millis(2));
    let store = Arc::new(store);
    let tasks: Vec<_> = (0..64)
        .map(|task| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for k in 0..50 {
                    let outcome = store.save(&payment(task * 50 + k)).await.expect("save");
                    assert_eq!(outcome, SaveOutcome::New);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    let (appends, syncs) = *counts.lock().expect("counts");
    assert_eq!(appends, syncs, "one sync per write");
    // 3,200 saves; with a 2 ms sync, 64 savers queue behind each one.
    assert!(syncs <= 3200 / 8, "group commit must batch: {syncs} syncs for 3,200 saves from 64 savers");
    assert_eq!(store.count().await.expect("count"), 3200);
}

#[tokio::test]
async fn duplicates_and_conflicts_touch_no_disk() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (store, counts) = counting(&dir.path().join("j"), Duration::ZERO);
    for i in 0..100 {
        store.save(&payment(i)).await.expect("save");
    }
    let before = *counts.lock().expect("counts");
    for i in 0..100 {
        assert_eq!(store.save(&payment(i)).await.expect("save"), SaveOutcome::Duplicate);
        let conflicting = Payment::parse(&format!("pay-{i:05}"), 1, "USD").expect("valid");
        assert!(matches!(store.save(&conflicting).await.expect("save"), SaveOutcome::Conflict(_)));
    }
    assert_eq!(*counts.lock().expect("counts"), before, "no write and no sync for duplicates or conflicts");
}

/// What a run under an injected fault saw.
struct FaultRun {
    reported_new: BTreeSet<String>,
    attempted: BTreeSet<String>,
    log: Arc<Mutex<Log>>,
}

/// Saves 120 payments (some twice) from 6 concurrent tasks through an I/O that fails the `nth`
/// call of `op`, checking that nothing succeeds after the first failure.
async fn run_with_fault(path: &Path, op: Op, nth: u32, mode: Mode) -> FaultRun {
    let log = Arc::new(Mutex::new(Log::default()));
    let shared_log = Arc::clone(&log);
    let store = FilePaymentsRepository::open_with(path, move |file| {
        Box::new(Faulty { file, op, nth, mode, calls: 0, log: shared_log })
    })
    .expect("open");
    let store = Arc::new(store);
    let first_failure = Arc::new(Mutex::new(None::<std::time::Instant>));
    let tasks: Vec<_> = (0..6)
        .map(|task| {
            let (store, first_failure) = (Arc::clone(&store), Arc::clone(&first_failure));
            tokio::spawn(async move {
                let mut new = Vec::new();
                for k in 0..25 {
                    // Tasks overlap by five payments, so some saves are duplicates of queued ones.
                    let p = payment(task * 20 + k);
                    let started = std::time::Instant::now();
                    match store.save(&p).await {
                        Ok(outcome) => {
                            let failed_before =
                                first_failure.lock().expect("lock").is_some_and(|t| t < started);
                            assert!(!failed_before, "a save that started after a failure succeeded: {p}");
                            if outcome.is_new() {
                                new.push(p.id.to_string());
                            }
                        }
                        Err(err) => {
                            assert!(err.to_string().contains("poisoned"), "the error says why: {err}");
                            first_failure.lock().expect("lock").get_or_insert(std::time::Instant::now());
                        }
                    }
                }
                new
            })
        })
        .collect();
    let mut reported_new = BTreeSet::new();
    for task in tasks {
        reported_new.extend(task.await.expect("task"));
    }
    let attempted = (0..125).map(|i| payment(i).id.to_string()).collect();
    drop(store);
    FaultRun { reported_new, attempted, log }
}

/// Opens `path` again with real I/O and returns the IDs it holds.
async fn recovered(path: &Path) -> BTreeSet<String> {
    let store =
        FilePaymentsRepository::open(path).expect("a journal left by a failed write or sync must open");
    exported(&store).await.into_iter().map(|p| p.id.to_string()).collect()
}

/// SQLite's I/O error loop: fail the 1st, 2nd, ... call of each operation, once or forever after,
/// until a run no longer reaches the failure. After each run:
/// - no save succeeded after the first failure (checked in the run);
/// - the journal reopens, and holds every payment reported new, and nothing never attempted;
/// - what a crash at that moment keeps (the bytes synced before the failure) also opens, and
///   still holds every payment reported new.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_payment_is_reported_new_unless_its_bytes_were_synced() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut runs = 0;
    for op in [Op::Append, Op::Sync] {
        for mode in [Mode::Once, Mode::Forever] {
            for nth in 1.. {
                runs += 1;
                let path = dir.path().join(format!("{op:?}-{mode:?}-{nth}.journal"));
                let run = run_with_fault(&path, op, nth, mode).await;
                let (failures, durable, truncated_to) = {
                    let log = run.log.lock().expect("log");
                    (log.failures, log.durable, log.truncated_to)
                };

                let after_reopen = recovered(&path).await;
                let missing: Vec<_> = run.reported_new.difference(&after_reopen).collect();
                assert!(missing.is_empty(), "{op:?} {mode:?} #{nth}: reported new but lost: {missing:?}");
                assert!(
                    after_reopen.is_subset(&run.attempted),
                    "{op:?} {mode:?} #{nth}: unexpected payments"
                );

                // The crash image: only what was synced before the failure survives a power loss.
                let image = dir.path().join(format!("{op:?}-{mode:?}-{nth}.image"));
                let bytes = std::fs::read(&path).expect("read journal");
                let keep = (format::HEADER_LEN as u64 + durable).min(bytes.len() as u64) as usize;
                std::fs::write(&image, &bytes[..keep]).expect("write image");
                let in_image = recovered(&image).await;
                let missing: Vec<_> = run.reported_new.difference(&in_image).collect();
                assert!(
                    missing.is_empty(),
                    "{op:?} {mode:?} #{nth}: reported new but not synced: {missing:?}"
                );

                // And the store itself cut the file back to those bytes: nothing of the failed
                // batch is left to be read back as if it were durable.
                if failures > 0 {
                    let synced_end = format::HEADER_LEN as u64 + durable;
                    assert_eq!(
                        truncated_to,
                        Some(synced_end),
                        "{op:?} {mode:?} #{nth}: cut back after the failure"
                    );
                    assert_eq!(
                        after_reopen, in_image,
                        "{op:?} {mode:?} #{nth}: the reopened journal is the synced one"
                    );
                }

                if failures == 0 {
                    assert_eq!(after_reopen, run.attempted, "a run without failures records everything");
                    break;
                }
            }
        }
    }
    assert!(runs > 8, "the loop must reach failures at several positions, ran {runs}");
    // Shown with --nocapture; docs/RELIABILITY.md quotes it.
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "fault injection: {runs} runs (append and fdatasync, once and forever, failing the 1st, 2nd, ... call)"
        );
    }
}

#[tokio::test]
async fn a_poisoned_store_fails_reads_too_and_a_reopen_recovers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("j");
    let log = Arc::new(Mutex::new(Log::default()));
    let store = FilePaymentsRepository::open_with(&path, |file| {
        Box::new(Faulty { file, op: Op::Sync, nth: 2, mode: Mode::Once, calls: 0, log })
    })
    .expect("open");
    assert_eq!(store.save(&payment(1)).await.expect("first sync works"), SaveOutcome::New);
    let err = store.save(&payment(2)).await.expect_err("second sync fails");
    assert!(err.to_string().contains("fdatasync failed: injected fsync failure"), "{err}");
    assert!(!err.is_unavailable(), "a poisoned journal is not worth retrying on the same instance");
    // Once mode: the fsync would succeed now, but a retried fsync can lie; the store stays poisoned.
    assert!(store.save(&payment(3)).await.is_err());
    assert!(store.save(&payment(1)).await.is_err(), "even a duplicate is refused");
    assert!(store.count().await.is_err());
    drop(store);
    let reopened = FilePaymentsRepository::open(&path).expect("reopen");
    assert_eq!(reopened.get(&payment(1).id).await.expect("get"), Some(payment(1)));
    assert_eq!(reopened.save(&payment(3)).await.expect("save"), SaveOutcome::New);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_flushes_what_is_queued_releases_the_lock_and_refuses_later_calls() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("p.journal");
    // Slow syncs, so that saves are still queued when close begins.
    let (store, _) = counting(&path, Duration::from_millis(20));
    let store = Arc::new(store);
    let saves: Vec<_> = (0..40)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.save(&payment(i)).await })
        })
        .collect();
    tokio::task::yield_now().await;
    store.close().await.expect("close");
    let mut new = 0;
    for save in saves {
        match save.await.expect("save task") {
            Ok(SaveOutcome::New) => new += 1,
            Ok(other) => panic!("only new payments were saved, got {other:?}"),
            // A save that came after the close began is refused, and was never reported new.
            Err(err) => assert!(err.to_string().contains("is closed"), "{err}"),
        }
    }
    let err = store.save(&payment(99)).await.expect_err("a save after close");
    assert!(!err.is_unavailable() && err.to_string().contains("is closed"), "{err}");
    // The lock is released by close, although this instance is still alive.
    let reopened = FilePaymentsRepository::open(&path).expect("reopened while the closed one lives");
    assert_eq!(reopened.recovery().payments, new, "every save reported new was flushed by close");
    reopened.close().await.expect("close");
    assert!(store.close().await.is_ok(), "closing twice is harmless");
}
