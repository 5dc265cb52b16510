//! The Redis adapter's own tests: the URL contract, and what the conformance suite cannot provoke
//! (acknowledgements in flight through a killed connection, trimmed entries, a deleted stream,
//! what the dead-letter sink and the publisher write), and `rediss://` (`tls`, against TLS servers
//! the tests start). `harness = false`, so that without a server each test that needs one is
//! reported as skipped by name (failed under CI).

use std::process::ExitCode;

use libtest_mimic::Arguments;
use payments_test_support::{Gate, redis as test_redis};

mod config;
mod sinks;
mod source;
mod support;
mod tls;

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
            config::ssl_ca_is_read_with_the_url_and_needs_rediss,
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
            tls::rediss_never_falls_back_to_plain_text,
        ],
    ));
    // TLS servers of the tests' own: they need the `tls` feature, and a redis-server built with
    // TLS (Debian's is).
    let tls = if cfg!(feature = "tls") {
        Gate::new(test_redis::tls_available())
    } else {
        Gate::new(Err(
            "built without the `tls` feature: cargo test -p payments-source-redis --features tls".into()
        ))
    };
    trials.extend(payments_test_support::trials(
        "redis",
        &tls,
        payments_test_support::tests![
            tls::rediss_with_the_right_ca_and_host_publishes_and_consumes,
            tls::rediss_refuses_a_certificate_for_another_host,
            tls::rediss_refuses_an_unknown_ca,
        ],
    ));
    libtest_mimic::run(&Arguments::from_args(), trials).exit_code()
}
