//! The kill cases: durability and atomicity the suite can check for any store, with no code of the
//! store's own.
//!
//! The conformance binary runs itself again as a child process that opens a store on the case's
//! environment (through [`Harness::open_at`]), saves payments from many tasks and prints each one
//! the store reports new. The case SIGKILLs it at a random moment, opens the environment again,
//! and checks that every payment reported new is there, with its amount; the outbox case checks
//! instead that the payments recorded and the events in the outbox are the same set, so that no
//! kill fell between a payment and its event. What this cannot see: a SIGKILL keeps the page
//! cache, so a store that never syncs passes it too. A store's own fault tests (failed syncs, power
//! cuts) remain its author's job.

// The child reports on stdout, for its parent; errors go to stderr.
#![allow(clippy::print_stderr)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read as _, Write};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use payments_ports::domain::{Payment, PaymentId, SaveOutcome};
use payments_ports::{RepositoryError, error_chain, export_all};

use crate::outbox_cases::{close, drain, relay};
use crate::runner::runtime;
use crate::{Fixture, Harness};

/// Set in the child's environment: the locator of the store it opens.
const CHILD_ENV: &str = "PAYMENTS_CONFORMANCE_KILL_CHILD";
/// Set in the child's environment: which round it plays, so that its payments are new.
const ROUND_ENV: &str = "PAYMENTS_CONFORMANCE_KILL_ROUND";

/// Tasks saving at once in the child.
const TASKS: usize = 16;
/// The most payments one child task saves, so that a child nobody kills still ends.
const PER_TASK: usize = 20_000;
/// Children killed per case.
const ROUNDS: usize = 5;
/// How long the store may take after a kill to agree with itself: a commit the child had sent
/// before it died may still land.
const SETTLE: Duration = Duration::from_secs(5);

/// The `i`th payment of `task` in `round`.
fn payment(round: usize, task: usize, i: usize) -> Payment {
    Payment::parse(&format!("kill-{round}-{task:02}-{i:05}"), 100 + i as u64, "EUR")
        .unwrap_or_else(|err| panic!("the kill case built an invalid payment: {err}"))
}

/// In a child started by the kill case, plays the child and returns its exit code; otherwise `None`.
///
/// [`crate::main`] calls it first thing; a test binary that runs cases itself (with
/// [`crate::run_case`]) must do the same, since the child is the same binary started again.
pub fn child_if_asked<H: Harness>(harness: &H) -> Option<ExitCode> {
    let locator = std::env::var(CHILD_ENV).ok()?;
    let round = std::env::var(ROUND_ENV).ok().and_then(|r| r.parse().ok()).unwrap_or(0);
    Some(runtime().block_on(async {
        let store = match harness.open_at(&locator).await {
            Ok(store) => store,
            Err(err) => {
                eprintln!("kill child: cannot open the store at {locator}: {err}");
                return ExitCode::FAILURE;
            }
        };
        let tasks = (0..TASKS).map(|task| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for i in 0..PER_TASK {
                    let payment = payment(round, task, i);
                    match store.save(&payment).await {
                        Ok(SaveOutcome::New) => {
                            // One whole line per report; the parent counts only whole lines.
                            let mut out = std::io::stdout().lock();
                            if writeln!(out, "{}", payment.id).and_then(|()| out.flush()).is_err() {
                                return;
                            }
                        }
                        Ok(other) => {
                            eprintln!("kill child: a new payment {payment} was answered {other:?}");
                            return;
                        }
                        Err(err) => {
                            eprintln!("kill child: saving {payment} failed: {}", error_chain(&err));
                            return;
                        }
                    }
                }
            })
        });
        futures::future::join_all(tasks).await;
        ExitCode::SUCCESS
    }))
}

/// One child's run: the IDs it reported new, and whether it was still at work when killed.
struct Round {
    reported: Vec<String>,
    mid_work: bool,
}

/// Starts a child on `locator`, waits for its first report, kills it a random moment later, and
/// collects what it reported.
fn kill_one(locator: &str, round: usize) -> Round {
    let exe = std::env::current_exe().unwrap_or_else(|err| panic!("cannot find the test binary: {err}"));
    let mut child = Command::new(exe)
        .env(CHILD_ENV, locator)
        .env(ROUND_ENV, round.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start the kill case's child: {err}"));
    let stdout = child.stdout.take().unwrap_or_else(|| panic!("the child's stdout is piped"));
    let stderr = child.stderr.take().unwrap_or_else(|| panic!("the child's stderr is piped"));
    // What the child says on stderr, to explain a child that could not do its part.
    let complaints = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr).take(64 * 1024), &mut text);
        text
    });
    let (first, first_seen) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        let mut reader = BufReader::new(stdout);
        let mut line = Vec::new();
        // Only whole lines count: a kill can cut the last one short.
        while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            if line.last() == Some(&b'\n') {
                lines.push(String::from_utf8_lossy(&line[..line.len() - 1]).into_owned());
                if lines.len() == 1 {
                    let _ = first.send(());
                }
            }
            line.clear();
        }
        lines
    });
    let started = Instant::now();
    let reporting = first_seen.recv_timeout(Duration::from_secs(60)).is_ok();
    if reporting {
        std::thread::sleep(Duration::from_millis(fastrand::u64(5..150)));
    }
    let mid_work = matches!(child.try_wait(), Ok(None));
    let _ = child.kill(); // SIGKILL
    let status = child.wait().unwrap_or_else(|err| panic!("cannot wait for the kill case's child: {err}"));
    let reported = reader.join().unwrap_or_default();
    let complaints = complaints.join().unwrap_or_default();
    assert!(
        reporting,
        "the kill case's child reported no payment new ({status}, after {:?}); it said: {}",
        started.elapsed(),
        complaints.trim()
    );
    Round { reported, mid_work }
}

/// Runs the child of `round` on `locator` off the runtime, and kills it.
async fn kill_round(locator: &str, round: usize) -> Round {
    let locator = locator.to_owned();
    tokio::task::spawn_blocking(move || kill_one(&locator, round))
        .await
        .unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic()))
}

/// The case: SIGKILLs five children mid-save; every payment any of them reported new must be
/// there, once, with its amount.
pub(crate) async fn every_payment_reported_new_survives_a_sigkill(f: &Fixture) {
    let locator =
        f.locator().unwrap_or_else(|| panic!("a killable harness must locate its environment")).to_owned();
    let mut reported: Vec<String> = Vec::new();
    let mut mid_work = 0;
    for round in 0..ROUNDS {
        let run = kill_round(&locator, round).await;
        mid_work += usize::from(run.mid_work);
        reported.extend(run.reported);
        let store = f.open().await;
        let mut lost = Vec::new();
        for id in &reported {
            let expected = expected(id);
            match store.get(&expected.id).await {
                Ok(Some(found)) if found == expected => {}
                Ok(found) => lost.push(format!("{id} (found {found:?})")),
                Err(err) => panic!("get {id} failed after the kill: {}", error_chain(&err)),
            }
        }
        assert!(
            lost.is_empty(),
            "after SIGKILL number {}, {} of the {} payments reported new are not there as saved: {:?}",
            round + 1,
            lost.len(),
            reported.len(),
            &lost[..lost.len().min(5)]
        );
        let count = store.count().await.unwrap_or_else(|err| panic!("count failed: {}", error_chain(&err)));
        assert!(
            count >= reported.len() as u64,
            "count {count} is below the {} payments reported new",
            reported.len()
        );
        if let Err(err) = store.close().await {
            panic!("closing the store after kill {} failed: {}", round + 1, error_chain(&err));
        }
    }
    assert!(mid_work * 2 >= ROUNDS, "only {mid_work} of {ROUNDS} kills landed while the child was saving");
}

/// The payment a reported ID stands for.
fn expected(id: &str) -> Payment {
    let mut parts = id.trim_start_matches("kill-").split('-');
    let (round, task, i) = (parts.next(), parts.next(), parts.next());
    let number = |part: Option<&str>| {
        part.and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the child reported `{id}`, which it never saves"))
    };
    payment(number(round), number(task), number(i))
}

/// The outbox case: SIGKILLs five children mid-save; after each kill, the payments recorded and the
/// events in the outbox (claimed and marked as the case goes, so that each round sees only the
/// new ones) must be the same payments, for sentence 1 of the `Outbox` contract: no crash, at any
/// instant, leaves the payment without its event or the event without its payment.
pub(crate) async fn no_sigkill_leaves_a_payment_without_its_event_or_an_event_without_its_payment(
    f: &Fixture,
) {
    const SENTENCE: &str = "sentence 1: every save reported new MUST put the payment's event in the outbox \
                            in the same atomic step as the payment: no crash, at any instant, leaves the \
                            payment without its event or the event without its payment";
    let locator =
        f.locator().unwrap_or_else(|| panic!("a killable harness must locate its environment")).to_owned();
    // Turned on for good, for every process, before any child saves: the children keep no relay.
    let store = f.open().await;
    close(relay(store.as_ref()).await).await;
    if let Err(err) = store.close().await {
        panic!("closing the store after turning its outbox on failed: {}", error_chain(&err));
    }
    drop(store);
    let mut events: BTreeMap<PaymentId, Payment> = BTreeMap::new();
    let mut mid_work = 0;
    for round in 0..ROUNDS {
        let run = kill_round(&locator, round).await;
        mid_work += usize::from(run.mid_work);
        let store = f.open().await;
        let mut outbox = relay(store.as_ref()).await;
        let settle = Instant::now() + SETTLE;
        loop {
            for event in drain(outbox.as_mut(), 1000, usize::MAX).await {
                events.insert(event.payment.id, event.payment);
            }
            let mut payments = BTreeMap::new();
            export_all(store.as_ref(), 1000, |payment| {
                payments.insert(payment.id, payment);
                Ok::<_, RepositoryError>(())
            })
            .await
            .unwrap_or_else(|err| panic!("exporting after kill {} failed: {}", round + 1, error_chain(&err)));
            if payments == events {
                break;
            }
            let alone = |these: &BTreeMap<PaymentId, Payment>, those: &BTreeMap<PaymentId, Payment>| {
                these
                    .iter()
                    .filter(|(id, p)| those.get(id) != Some(p))
                    .map(|(id, _)| id.to_string())
                    .collect::<Vec<_>>()
            };
            let (no_event, no_payment) = (alone(&payments, &events), alone(&events, &payments));
            assert!(
                Instant::now() < settle,
                "{SENTENCE}: after SIGKILL number {}, of {} payments recorded and {} events in the outbox, \
                 {} payments have no event of theirs {:?}, and {} events no payment {:?}",
                round + 1,
                payments.len(),
                events.len(),
                no_event.len(),
                &no_event[..no_event.len().min(5)],
                no_payment.len(),
                &no_payment[..no_payment.len().min(5)]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        close(outbox).await;
        if let Err(err) = store.close().await {
            panic!("closing the store after kill {} failed: {}", round + 1, error_chain(&err));
        }
    }
    assert!(mid_work * 2 >= ROUNDS, "only {mid_work} of {ROUNDS} kills landed while the child was saving");
}
