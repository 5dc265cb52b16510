//! The file adapter's own tests: recovery from every cut and every flipped bit, locking across
//! processes, and SIGKILL at random moments. `harness = false`, because two of them run this
//! binary again as a child process.

// A test harness and its child processes report on stdout and stderr by design.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod kill;
mod lock;
mod recovery;
mod support;

use std::process::ExitCode;

use libtest_mimic::{Arguments, Trial};

fn main() -> ExitCode {
    // A child started by one of the tests below does its part and exits.
    if let Some(code) = support::child::run_if_child() {
        return code;
    }
    let args = Arguments::from_args();
    let trials = payments_test_support::tests![
        recovery::every_cut_opens_to_the_longest_complete_prefix,
        recovery::every_bit_flip_in_a_record_is_detected,
        recovery::garbage_after_the_last_record_is_cut_off,
        recovery::a_file_that_is_not_a_journal_fails_clearly,
        recovery::an_unknown_version_fails_clearly,
        recovery::a_payment_recorded_twice_is_corruption,
        recovery::the_journal_is_private_to_its_owner,
        lock::a_second_store_in_this_process_is_refused,
        lock::a_second_process_gets_a_clear_error,
        kill::every_payment_reported_new_survives_sigkill,
    ]
    .into_iter()
    .map(|(name, test)| Trial::test(name, test))
    .collect();
    libtest_mimic::run(&args, trials).exit_code()
}
