//! The NATS adapter's own tests: the URL contract, and what the conformance suite cannot provoke
//! (connections cut again and again with acknowledgements in flight, a server out of reach for
//! long, a deleted consumer or stream, the consumer's settings, what the dead-letter sink and the
//! publisher write), and `tls://` (against TLS servers the tests start, the shared plain-text
//! server, and a fake). `harness = false`, so that without a server each test that needs one is
//! reported as skipped by name (failed under CI).

// The binary reports streams it could not remove on stderr.
#![allow(clippy::print_stderr)]

use std::process::ExitCode;

use libtest_mimic::Arguments;
use payments_test_support::{Gate, nats as test_nats};

mod config;
mod sinks;
mod source;
mod support;
mod tls;

fn main() -> ExitCode {
    // The URL's tests need no server.
    let mut trials = payments_test_support::trials(
        "nats",
        &Gate::Run,
        payments_test_support::tests![
            config::a_source_url_is_read_with_its_defaults,
            config::bad_urls_are_refused_by_name,
            config::credentials_never_show,
            config::tls_urls_are_read_like_nats_urls,
            config::ssl_ca_is_read_with_the_url_and_needs_tls,
            tls::tls_sends_nothing_in_plain_text_to_a_server_without_tls,
        ],
    );
    trials.extend(test_nats::trials(
        "nats",
        payments_test_support::tests![
            source::a_connection_cut_mid_run_loses_nothing,
            source::an_unreachable_server_is_reported_unavailable_then_recovered,
            source::a_consumer_deleted_during_a_pull_is_created_again,
            source::a_consumer_deleted_between_pulls_is_created_again,
            source::a_deleted_stream_is_created_again,
            source::the_consumer_has_the_settings_the_contract_needs,
            source::close_sends_every_acknowledgement,
            source::double_acks_are_confirmed_before_close_returns,
            source::the_backlog_probe_counts_what_waits_and_what_is_unacknowledged,
            sinks::the_dead_letter_sink_writes_a_whole_letter,
            sinks::the_publisher_round_trips_bytes_headers_and_ids,
            sinks::a_republication_with_the_same_id_is_deduplicated,
            sinks::a_subject_of_another_stream_is_refused,
            sinks::closing_a_sink_cut_off_from_its_server_ends_within_the_timeout,
            tls::tls_never_falls_back_to_plain_text,
        ],
    ));
    // TLS servers of the tests' own: they need a nats-server (in PATH or /usr/sbin).
    trials.extend(payments_test_support::trials(
        "nats",
        &Gate::new(test_nats::tls_available()),
        payments_test_support::tests![
            tls::tls_with_the_right_ca_and_host_publishes_and_consumes,
            tls::tls_refuses_a_certificate_for_another_host,
            tls::tls_refuses_an_unknown_ca,
            tls::tls_credentials_never_show_in_errors,
        ],
    ));
    let conclusion = libtest_mimic::run(&Arguments::from_args(), trials);
    if let Err(left) = test_nats::no_streams_left() {
        eprintln!("{left}");
        return ExitCode::FAILURE;
    }
    conclusion.exit_code()
}
