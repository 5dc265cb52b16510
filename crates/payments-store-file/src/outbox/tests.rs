//! The file store's outbox and the journal versions it relies on: events in journal order with
//! their time, the checkpoint across handles and reopens, the durable-only rule, and refusals.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use payments_ports::domain::{Payment, PaymentRecorded, RecordedAt, SaveOutcome};
use payments_ports::{Outbox, PaymentsRepository, RepositoryError};

use crate::FilePaymentsRepository;
use crate::checkpoint::{self, Checkpoint};
use crate::format::HEADER_LEN;
use crate::io::JournalIo;

fn payment(i: usize) -> Payment {
    Payment::parse(&format!("pay-{i:05}"), 100 + i as u64, ["EUR", "USD", "JPY"][i % 3]).expect("valid")
}

fn open(path: &std::path::Path) -> FilePaymentsRepository {
    FilePaymentsRepository::open(path).expect("open")
}

async fn save_all(store: &FilePaymentsRepository, payments: impl IntoIterator<Item = Payment>) {
    for p in payments {
        assert_eq!(store.save(&p).await.expect("save"), SaveOutcome::New, "{p}");
    }
}

async fn outbox(store: &FilePaymentsRepository) -> Box<dyn Outbox> {
    store.outbox().await.expect("outbox").expect("the file store keeps an outbox")
}

fn payments_of(events: &[PaymentRecorded]) -> Vec<Payment> {
    events.iter().map(|event| event.payment.clone()).collect()
}

fn now_millis() -> u64 {
    RecordedAt::from_system_time(SystemTime::now()).unix_millis()
}

/// The bytes a version-1 build wrote, by hand: a header of version 1, then kind-1 records.
fn version_1_journal(payments: &[Payment]) -> Vec<u8> {
    let mut bytes = b"PAYJOURN".to_vec();
    bytes.extend_from_slice(&1u16.to_le_bytes());
    bytes.extend_from_slice(&[0, 0]);
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    for p in payments {
        let mut record = vec![0; 4];
        record.extend_from_slice(&(12 + p.id.len() as u16).to_le_bytes());
        record.push(1);
        record.push(p.id.len() as u8);
        record.extend_from_slice(p.id.as_bytes());
        record.extend_from_slice(&p.amount.minor_units().to_le_bytes());
        record.extend_from_slice(&p.currency.to_bytes());
        let crc = crc32c::crc32c(&record[4..]);
        record[..4].copy_from_slice(&crc.to_le_bytes());
        bytes.extend_from_slice(&record);
    }
    bytes
}

#[tokio::test]
async fn a_new_journal_is_version_2_and_its_records_carry_the_time_they_were_recorded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("p.journal");
    let store = open(&path);
    assert_eq!(store.format_version(), 2);
    let before = now_millis();
    save_all(&store, (0..3).map(payment)).await;
    let after = now_millis();
    store.close().await.expect("close");

    let bytes = std::fs::read(&path).expect("read");
    assert_eq!(&bytes[8..10], &2u16.to_le_bytes(), "the header says version 2");
    assert_eq!(bytes[HEADER_LEN + 6], 2, "the first record is of kind 2");
    assert_eq!(bytes.len(), HEADER_LEN + 3 * (27 + 9), "three kind-2 records of 9-byte IDs");

    let store = open(&path);
    assert_eq!(store.format_version(), 2);
    let events = outbox(&store).await.claim(10).await.expect("claim");
    assert_eq!(payments_of(&events), (0..3).map(payment).collect::<Vec<_>>());
    for event in &events {
        let at = event.recorded_at.unix_millis();
        assert!((before..=after).contains(&at), "recorded at {at}, saved between {before} and {after}");
    }
}

#[tokio::test]
async fn a_version_1_journal_opens_stays_version_1_and_its_events_carry_its_modification_time() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("old.journal");
    let old = version_1_journal(&[payment(0), payment(1)]);
    std::fs::write(&path, &old).expect("write");
    let modified = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .expect("open")
        .set_modified(modified)
        .expect("set mtime");

    let store = open(&path);
    assert_eq!(store.format_version(), 1);
    assert_eq!(store.recovery().payments, 2);
    assert_eq!(store.get(&payment(1).id).await.expect("get"), Some(payment(1)));
    assert_eq!(store.save(&payment(1)).await.expect("save"), SaveOutcome::Duplicate);
    save_all(&store, [payment(2)]).await;
    let mut relay = outbox(&store).await;
    let events = relay.claim(10).await.expect("claim");
    assert_eq!(payments_of(&events), (0..3).map(payment).collect::<Vec<_>>());
    for event in &events {
        assert_eq!(event.recorded_at.system_time(), modified, "{}", event.payment);
    }
    relay.mark_published().await.expect("mark");
    drop(relay);
    store.close().await.expect("close");

    // Still version 1, with a kind-1 record appended: what the old build wrote, byte for byte.
    let bytes = std::fs::read(&path).expect("read");
    assert_eq!(bytes, version_1_journal(&[payment(0), payment(1), payment(2)]));
    let store = open(&path);
    assert_eq!(store.format_version(), 1);
    assert_eq!(store.count().await.expect("count"), 3);
    assert!(outbox(&store).await.claim(10).await.expect("claim").is_empty(), "all marked, across a reopen");
}

#[tokio::test]
async fn claims_hand_out_events_in_journal_order_and_again_until_marked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(&dir.path().join("p.journal"));
    // Not in ID order, so journal order shows.
    let order: Vec<Payment> = [7, 3, 9, 1, 5, 0, 8, 2, 6, 4].into_iter().map(payment).collect();
    save_all(&store, order.clone()).await;
    // A duplicate and a conflict add nothing.
    assert_eq!(store.save(&payment(3)).await.expect("save"), SaveOutcome::Duplicate);
    let conflicting = Payment::parse("pay-00003", 1, "EUR").expect("valid");
    assert!(matches!(store.save(&conflicting).await.expect("save"), SaveOutcome::Conflict(_)));

    let mut relay = outbox(&store).await;
    let backlog = relay.backlog().await.expect("backlog");
    assert_eq!(backlog.pending, 10);
    let first = relay.claim(3).await.expect("claim");
    assert_eq!(payments_of(&first), order[..3]);
    assert_eq!(backlog.oldest, Some(first[0].recorded_at.system_time()));
    let again = relay.claim(3).await.expect("claim");
    assert_eq!(again, first, "an unmarked claim is handed out again, with the same times");
    relay.mark_published().await.expect("mark");
    let backlog = relay.backlog().await.expect("backlog");
    assert_eq!(backlog.pending, 7);
    let rest = relay.claim(100).await.expect("claim");
    assert_eq!(payments_of(&rest), order[3..]);
    assert_eq!(backlog.oldest, Some(rest[0].recorded_at.system_time()));
    assert!(
        first
            .iter()
            .chain(&rest)
            .zip(first.iter().chain(&rest).skip(1))
            .all(|(a, b)| a.recorded_at <= b.recorded_at),
        "saved one after another, recorded in that order"
    );
    relay.mark_published().await.expect("mark");
    assert!(relay.claim(100).await.expect("claim").is_empty());
    relay.mark_published().await.expect("marking with no claim held does nothing");
    assert_eq!(relay.backlog().await.expect("backlog"), payments_ports::OutboxBacklog::default());
    assert_eq!(relay.claim(0).await.expect("claim"), []);
}

#[tokio::test]
async fn what_is_marked_stays_published_and_what_is_not_is_handed_out_again_after_a_drop_and_a_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("p.journal");
    let store = open(&path);
    save_all(&store, (0..10).map(payment)).await;
    let mut relay = outbox(&store).await;
    assert_eq!(payments_of(&relay.claim(4).await.expect("claim")), (0..4).map(payment).collect::<Vec<_>>());
    relay.mark_published().await.expect("mark");
    let unmarked = relay.claim(3).await.expect("claim");
    drop(relay);

    let mut relay = outbox(&store).await;
    assert_eq!(relay.claim(3).await.expect("claim"), unmarked, "given back when its holder was dropped");
    relay.close().await.expect("close the handle");
    let err = relay.claim(3).await.expect_err("a closed handle");
    assert!(matches!(err, RepositoryError::Failed { .. }) && err.to_string().contains("is closed"), "{err}");
    let mut relay = outbox(&store).await;
    assert_eq!(relay.claim(3).await.expect("claim"), unmarked, "given back when its holder was closed");
    drop(relay);
    store.close().await.expect("close");

    let store = open(&path);
    let mut relay = outbox(&store).await;
    assert_eq!(relay.backlog().await.expect("backlog").pending, 6);
    let after_reopen = relay.claim(100).await.expect("claim");
    assert_eq!(after_reopen[..3], unmarked, "handed out again after a reopen, with the same times");
    assert_eq!(payments_of(&after_reopen[3..]), (7..10).map(payment).collect::<Vec<_>>());
    relay.mark_published().await.expect("mark");
    drop(relay);
    store.close().await.expect("close");
    let store = open(&path);
    assert!(outbox(&store).await.claim(100).await.expect("claim").is_empty());
}

#[tokio::test]
async fn claims_read_across_chunks_of_a_large_journal() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("p.journal");
    // Written directly, as the writer would: ~380 KB, more than one read chunk.
    let payments: Vec<Payment> = (0..10_000).map(payment).collect();
    let mut bytes = crate::format::header(crate::format::Version::V2).to_vec();
    for (i, p) in payments.iter().enumerate() {
        crate::format::encode(
            crate::format::Version::V2,
            p,
            RecordedAt::from_unix_millis(i as u64),
            &mut bytes,
        );
    }
    assert!(bytes.len() > super::READ_CHUNK);
    std::fs::write(&path, &bytes).expect("write");
    let store = open(&path);
    let mut relay = outbox(&store).await;
    let mut seen = Vec::new();
    for limit in [1, 7_000, 100_000] {
        let events = relay.claim(limit).await.expect("claim");
        relay.mark_published().await.expect("mark");
        seen.extend(events);
    }
    assert_eq!(payments_of(&seen), payments);
    assert!(seen.iter().enumerate().all(|(i, event)| event.recorded_at.unix_millis() == i as u64));
    assert_eq!(relay.backlog().await.expect("backlog").pending, 0);
}

/// A journal I/O whose syncs wait for the test to open a gate: records are in the file (and the
/// page cache) but not durable until then.
struct Gated {
    file: std::fs::File,
    appended: Arc<AtomicU64>,
    gate: Arc<(Mutex<bool>, Condvar)>,
}

impl JournalIo for Gated {
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        std::io::Write::write_all(&mut self.file, bytes)?;
        self.appended.fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    fn sync(&mut self) -> std::io::Result<()> {
        let (open, opened) = &*self.gate;
        let _open = opened.wait_while(open.lock().expect("gate"), |open| !*open).expect("gate");
        self.file.sync_data()
    }

    fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)
    }
}

/// Opens the gate when dropped: a failing assertion must not leave the writer waiting for ever
/// (the store's drop joins it).
struct OpensOnDrop(Arc<(Mutex<bool>, Condvar)>);

impl OpensOnDrop {
    fn open(&self) {
        let (open, opened) = &*self.0;
        *open.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        opened.notify_all();
    }
}

impl Drop for OpensOnDrop {
    fn drop(&mut self) {
        self.open();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_event_is_handed_out_before_its_record_is_synced() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("p.journal");
    let appended = Arc::new(AtomicU64::new(0));
    let gate = Arc::new((Mutex::new(true), Condvar::new()));
    let store = {
        let (appended, gate) = (Arc::clone(&appended), Arc::clone(&gate));
        FilePaymentsRepository::open_with(&path, move |file| Box::new(Gated { file, appended, gate }))
            .expect("open")
    };
    let store = Arc::new(store);
    save_all(&store, [payment(0)]).await;
    let mut relay = outbox(&store).await;

    *gate.0.lock().expect("gate") = false;
    let gate = OpensOnDrop(gate);
    let before = appended.load(std::sync::atomic::Ordering::SeqCst);
    let saving = tokio::spawn({
        let store = Arc::clone(&store);
        async move { store.save(&payment(1)).await }
    });
    while appended.load(std::sync::atomic::Ordering::SeqCst) == before {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // The record is in the file, readable by anyone, but the writer has not synced it.
    let file_len = std::fs::metadata(&path).expect("metadata").len();
    assert_eq!(file_len, (HEADER_LEN + 2 * 36) as u64, "both records are in the file");
    let events = relay.claim(10).await.expect("claim");
    assert_eq!(payments_of(&events), [payment(0)], "only the synced record is an event");
    assert_eq!(relay.backlog().await.expect("backlog").pending, 1);
    relay.mark_published().await.expect("mark");
    assert!(relay.claim(10).await.expect("claim").is_empty(), "the unsynced record is not handed out");
    assert!(!saving.is_finished(), "the save waits for its sync");

    gate.open();
    assert_eq!(saving.await.expect("task").expect("save"), SaveOutcome::New);
    assert_eq!(payments_of(&relay.claim(10).await.expect("claim")), [payment(1)], "synced now");
}

#[tokio::test]
async fn a_second_handle_is_refused_while_the_first_lives() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(&dir.path().join("p.journal"));
    let first = outbox(&store).await;
    let err = store.outbox().await.map(drop).expect_err("a second relay");
    assert!(matches!(err, RepositoryError::Failed { .. }), "{err}");
    assert!(err.to_string().contains("one relay at a time"), "{err}");
    drop(first);
    outbox(&store).await;
}

#[tokio::test]
async fn a_closed_store_fails_its_handles_calls_and_refuses_new_ones() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(&dir.path().join("p.journal"));
    save_all(&store, [payment(0)]).await;
    let mut relay = outbox(&store).await;
    relay.claim(1).await.expect("claim");
    store.close().await.expect("close");
    for err in [
        relay.claim(1).await.map(drop).expect_err("claim"),
        relay.mark_published().await.expect_err("mark"),
        relay.backlog().await.map(drop).expect_err("backlog"),
        store.outbox().await.map(drop).expect_err("outbox"),
    ] {
        assert!(
            matches!(err, RepositoryError::Failed { .. }) && err.to_string().contains("is closed"),
            "{err}"
        );
    }
}

/// Saves payments `0..saved` into a new journal at `path`, marks the first `published` of them
/// published, and closes it.
async fn journal_with_published(path: &std::path::Path, saved: usize, published: usize) {
    let store = open(path);
    save_all(&store, (0..saved).map(payment)).await;
    let mut relay = outbox(&store).await;
    assert_eq!(relay.claim(published).await.expect("claim").len(), published);
    relay.mark_published().await.expect("mark");
    drop(relay);
    store.close().await.expect("close");
}

/// Opens a store on `path` with `bytes` as its checkpoint, and returns why the outbox is refused.
async fn refused_with_checkpoint(path: &std::path::Path, bytes: &[u8]) -> String {
    let checkpoint = checkpoint::path_of(path);
    std::fs::write(&checkpoint, bytes).expect("write checkpoint");
    let store = open(path);
    let err = store.outbox().await.map(drop).expect_err("a checkpoint that cannot be trusted");
    assert!(matches!(err, RepositoryError::Failed { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains(&checkpoint.display().to_string()), "names the checkpoint: {text}");
    assert!(text.contains("remove the checkpoint"), "says what to do: {text}");
    // Refusing frees the relay's place (the second refusal is for the same reason), and changes
    // nothing on disk.
    let again = store.outbox().await.map(drop).expect_err("still untrusted");
    assert_eq!(again.to_string(), text);
    assert_eq!(std::fs::read(&checkpoint).expect("read"), bytes);
    text
}

#[tokio::test]
async fn a_checkpoint_that_cannot_be_trusted_is_a_clear_error_never_a_fresh_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("p.journal");
    journal_with_published(&path, 5, 2).await;
    let good = std::fs::read(checkpoint::path_of(&path)).expect("the mark wrote a checkpoint");
    let good_checkpoint = Checkpoint::decode(&good).expect("valid");
    assert_eq!(good_checkpoint.records, 2);

    let text = refused_with_checkpoint(&path, b"not a checkpoint").await;
    assert!(text.contains("is corrupt"), "{text}");
    let mut flipped = good.clone();
    flipped[14] ^= 1;
    let text = refused_with_checkpoint(&path, &flipped).await;
    assert!(text.contains("checksum does not match"), "{text}");

    let past = Checkpoint { offset: 1 << 20, records: 7, ..good_checkpoint };
    let text = refused_with_checkpoint(&path, &past.encode()).await;
    assert!(text.contains("points past the journal's durable end"), "{text}");

    // A checkpoint of another journal, at a record boundary of this one: same IDs' lengths, other
    // records.
    let other = Checkpoint { last_crc: good_checkpoint.last_crc ^ 1, ..good_checkpoint };
    let text = refused_with_checkpoint(&path, &other.encode()).await;
    assert!(text.contains("does not match the journal"), "{text}");
    let inside = Checkpoint { offset: good_checkpoint.offset - 1, ..good_checkpoint };
    let text = refused_with_checkpoint(&path, &inside.encode()).await;
    assert!(text.contains("does not match the journal") || text.contains("inconsistent"), "{text}");

    // Put back, it works again from where it was.
    std::fs::write(checkpoint::path_of(&path), &good).expect("restore");
    let store = open(&path);
    let events = outbox(&store).await.claim(10).await.expect("claim");
    assert_eq!(payments_of(&events), (2..5).map(payment).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_checkpoint_left_beside_a_replaced_journal_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("p.journal");
    journal_with_published(&path, 3, 3).await;

    // The journal is replaced by another one with as many records of the same sizes.
    std::fs::remove_file(&path).expect("remove journal");
    let store = open(&path);
    save_all(&store, (10..14).map(payment)).await;
    let err = store.outbox().await.map(drop).expect_err("the checkpoint belongs to the old journal");
    assert!(err.to_string().contains("does not match the journal"), "{err}");
}
