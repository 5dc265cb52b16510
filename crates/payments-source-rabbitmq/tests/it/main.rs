//! The RabbitMQ adapter's own tests: the URL contract, and what the conformance suite cannot provoke
//! (connections closed by the broker and cut by the network with deliveries held across, a broker
//! that stays away, queues declared elsewhere, the delivery limit, what the dead-letter sink and the
//! publisher write). `harness = false`, so that without a server each test that needs one is
//! reported as skipped by name (failed under CI).

use std::process::ExitCode;

use libtest_mimic::Arguments;
use payments_test_support::{Gate, rabbitmq as test_rabbitmq};

mod config;
mod sinks;
mod source;
mod support;

fn main() -> ExitCode {
    // The URL's tests need no server.
    let mut trials = payments_test_support::trials(
        "rabbitmq",
        &Gate::Run,
        payments_test_support::tests![
            config::a_source_url_is_read_with_its_defaults,
            config::a_target_url_names_a_queue_an_exchange_or_both,
            config::bad_urls_are_refused_by_name,
            config::the_password_never_shows,
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
        ],
    ));
    libtest_mimic::run(&Arguments::from_args(), trials).exit_code()
}
