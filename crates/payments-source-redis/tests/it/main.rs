//! The Redis adapter's own tests: the URL contract, and what the conformance suite cannot provoke
//! (acknowledgements in flight through a killed connection, trimmed entries, a deleted stream,
//! what the dead-letter sink and the publisher write). `harness = false`, so that without a
//! server each test that needs one is reported as skipped by name (failed under CI).

use std::process::ExitCode;

use libtest_mimic::Arguments;
use payments_test_support::{Gate, redis as test_redis};

mod config;
mod sinks;
mod source;
mod support;

fn main() -> ExitCode {
    // The URL's tests need no server.
    let mut trials = payments_test_support::trials(
        "redis",
        &Gate::Run,
        payments_test_support::tests![
            config::a_source_url_is_read_with_its_defaults,
            config::bad_urls_are_refused_by_name,
            config::the_password_never_shows,
            config::rediss_is_accepted_and_needs_the_tls_feature,
        ],
    );
    trials.extend(test_redis::trials(
        "redis",
        payments_test_support::tests![
            source::a_killed_connection_with_acknowledgements_in_flight_loses_nothing,
            source::trimmed_entries_are_acknowledged_and_do_not_block,
            source::a_deleted_and_recreated_stream_is_read_again,
            source::an_entry_without_a_payload_is_unreadable,
            source::close_sends_every_acknowledgement,
            source::the_backlog_probe_counts_what_waits_and_what_is_unacknowledged,
            sinks::the_dead_letter_sink_writes_a_whole_letter,
            sinks::the_publisher_round_trips_bytes_and_ids,
        ],
    ));
    libtest_mimic::run(&Arguments::from_args(), trials).exit_code()
}
