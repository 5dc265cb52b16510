//! sled's crash test: a child process saves payments from 16 tasks and prints each ID once it is
//! reported new; the parent SIGKILLs it at a random moment, reopens the journal, and checks that
//! every reported ID is there exactly once. Then again, on the same journal.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use libtest_mimic::Failed;
use payments_store_file::FilePaymentsRepository;
use rand::Rng;

use crate::support::{child, contents, payment};

/// How many kills; `PAYMENTS_KILL_TEST_KILLS` raises it for a longer run.
fn kills() -> usize {
    std::env::var("PAYMENTS_KILL_TEST_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(24)
}

pub(crate) fn every_payment_reported_new_survives_sigkill() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("p.journal");
    let mut rng = rand::rng();
    let mut reported: BTreeSet<String> = BTreeSet::new();
    let (mut mid_work, mut torn_tails) = (0, 0);
    let kills = kills();
    for round in 0..kills {
        // Each round saves everything the earlier rounds saved (duplicates now) and more, more than
        // it can finish before most kills.
        let count = 40_000 * (round + 1);
        let mut process = child::command(&format!("save:{count}:{}", path.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = process.stdout.take().expect("piped");
        let (lines, received) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(line) => {
                        let _ = lines.send(line);
                    }
                    Err(_) => break,
                }
            }
        });
        // Wait until this round has reported its first new payment, then kill at a random moment
        // of the work that follows: so the kill lands mid-work, not before it starts.
        let mut seen = Vec::new();
        while let Ok(line) = received.recv_timeout(Duration::from_secs(60)) {
            let first_new = line.starts_with("new ");
            seen.push(line);
            if first_new {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..250)));
        process.kill()?; // SIGKILL
        process.wait()?;
        reader.join().expect("reader thread");
        seen.extend(received.try_iter());
        let lines = seen;
        let reported_this_round = lines.iter().any(|l| l.starts_with("new "));
        if reported_this_round && !lines.iter().any(|l| l == "done") {
            // Killed while it was saving: after some payments were reported, before the last.
            mid_work += 1;
        }
        reported.extend(lines.iter().filter_map(|l| l.strip_prefix("new ")).map(str::to_owned));

        let store =
            FilePaymentsRepository::open(&path).map_err(|err| format!("reopen after kill {round}: {err}"))?;
        if store.recovery().dropped_bytes > 0 {
            torn_tails += 1;
        }
        let recorded: Vec<String> = contents(&store).into_iter().map(|p| p.id.to_string()).collect();
        let distinct: BTreeSet<&String> = recorded.iter().collect();
        let duplicated = recorded.len() - distinct.len();
        let lost: Vec<&String> = reported.iter().filter(|id| !distinct.contains(id)).collect();
        let sent: BTreeSet<String> = (0..count).map(|i| payment(i).id.to_string()).collect();
        let never_sent = recorded.iter().filter(|id| !sent.contains(*id)).count();
        assert_eq!(never_sent, 0, "after kill {round}: a payment that was never saved is recorded");
        assert!(
            lost.is_empty(),
            "after kill {round}: reported new but lost: {:?}",
            &lost[..lost.len().min(5)]
        );
        assert_eq!(duplicated, 0, "after kill {round}: a payment is recorded twice");
    }
    eprintln!(
        "kill test: {kills} SIGKILLs, {} payments reported new, lost 0, duplicated 0; \
         {mid_work} kills landed mid-work, {torn_tails} left a torn tail",
        reported.len()
    );
    assert!(mid_work * 10 >= kills * 9, "only {mid_work} of {kills} kills landed while the child was saving");
    Ok(())
}
