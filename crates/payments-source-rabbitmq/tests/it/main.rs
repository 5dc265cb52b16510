//! The RabbitMQ adapter's own tests: the URL contract, and what the conformance suite cannot provoke
//! (connections closed by the broker and cut by the network with deliveries held across, a broker
//! that stays away, queues declared elsewhere, the delivery limit, what the dead-letter sink and the
//! publisher write), and `amqps://` (against TLS nodes the tests start, the shared plain-text
//! server, and a fake). `harness = false`, so that without a server each test that needs one is
//! reported as skipped by name (failed under CI).

use std::process::ExitCode;

use libtest_mimic::Arguments;
use payments_test_support::{Gate, rabbitmq as test_rabbitmq};

mod config;
mod sinks;
mod source;
mod support;
mod tls;

fn main() -> ExitCode {
    // This binary run again by `tls::tls_ssl_ca_replaces_the_system_roots`, with other roots.
    if let Ok(spec) = std::env::var(tls::CHILD_ENV) {
        return tls::only_ssl_ca_child(&spec);
    }
    // The URL's tests need no server.
    let mut trials = payments_test_support::trials(
        "rabbitmq",
        &Gate::Run,
        payments_test_support::tests![
            config::a_source_url_is_read_with_its_defaults,
            config::a_target_url_names_a_queue_an_exchange_or_both,
            config::bad_urls_are_refused_by_name,
            config::the_password_never_shows,
            config::ssl_ca_is_read_with_the_url_and_needs_tls,
            tls::tls_sends_nothing_in_plain_text_to_a_server_without_tls,
        ],
    );
    trials.extend(test_rabbitmq::trials(
        "rabbitmq",
        payments_test_support::tests![
            config::refused_credentials_fail_for_good_and_amqps_speaks_tls,
            source::a_connection_closed_by_the_broker_is_recovered_with_nothing_lost_or_doubled,
            source::a_connection_cut_by_the_network_is_recovered_with_nothing_lost_or_doubled,
            source::a_broker_that_stays_away_is_reported_unavailable_not_waited_for,
            source::declaring_again_is_harmless_and_a_queue_declared_otherwise_is_used_as_it_is,
            source::a_deleted_queue_is_declared_again,
            source::a_message_past_the_delivery_limit_is_parked_not_dropped,
            source::close_sends_every_acknowledgement,
            source::consumers_of_one_queue_split_it_and_take_over_from_a_crashed_one,
            source::a_body_over_the_limit_is_delivered_as_too_large,
            source::the_backlog_probe_counts_the_ready_messages,
            sinks::the_dead_letter_sink_confirms_a_whole_letter,
            sinks::a_letter_through_an_exchange_arrives_or_is_refused,
            sinks::the_publisher_confirms_and_round_trips_bytes_and_ids,
            tls::tls_never_falls_back_to_plain_text,
        ],
    ));
    // TLS nodes of the tests' own: they need rabbitmq-server (Debian's script, or in PATH).
    trials.extend(payments_test_support::trials(
        "rabbitmq",
        &Gate::new(test_rabbitmq::tls_available()),
        payments_test_support::tests![
            tls::tls_with_the_right_ca_and_host_publishes_consumes_and_dead_letters,
            tls::tls_refuses_a_certificate_for_another_host,
            tls::tls_refuses_an_unknown_ca,
            tls::tls_ssl_ca_replaces_the_system_roots,
            tls::tls_credentials_never_show_in_errors,
        ],
    ));
    libtest_mimic::run(&Arguments::from_args(), trials).exit_code()
}
