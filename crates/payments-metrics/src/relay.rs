//! The outbox relay's metrics: what waits in the outbox, since when, what was published, and what
//! the broker refused.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::metrics::{FloatGauge, Named};

/// The series of one relay, registered once.
#[derive(Debug)]
pub(crate) struct RelayMeter {
    pub(crate) pending: Gauge,
    pub(crate) oldest_age: FloatGauge,
    pub(crate) published: Counter,
    unavailable: Counter,
    failed: Counter,
}

impl RelayMeter {
    /// Registers the relay's series in `registry`, every one at 0.
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let pending = Gauge::default();
        registry.register(
            "payments_outbox_pending_events",
            "PaymentRecorded events in the outbox not yet marked published (claimed by a relay or not)",
            pending.clone(),
        );
        let oldest_age = FloatGauge::default();
        registry.register_with_unit(
            "payments_outbox_oldest_pending_age",
            "How long ago the oldest event not yet published was recorded; 0 when none waits",
            Unit::Seconds,
            oldest_age.clone(),
        );
        let published = Counter::default();
        registry.register(
            "payments_outbox_published_events",
            "Events the broker confirmed, published by this relay (a republication after a crash counts again)",
            published.clone(),
        );
        let errors = Family::<Named, Counter>::default();
        registry.register(
            "payments_outbox_publish_errors",
            "Batches the broker did not confirm, by error_type: unavailable (retried) or failed (the relay stops)",
            errors.clone(),
        );
        let unavailable = errors.get_or_create_owned(&Named { key: "error_type", value: "unavailable" });
        let failed = errors.get_or_create_owned(&Named { key: "error_type", value: "failed" });
        Self { pending, oldest_age, published, unavailable, failed }
    }

    /// A batch was not confirmed.
    pub(crate) fn publish_failed(&self, unavailable: bool) {
        if unavailable {
            self.unavailable.inc()
        } else {
            self.failed.inc()
        };
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use payments_ports::RelayObserver;

    use crate::{Destination, Metrics};

    fn line<'a>(text: &'a str, name: &str) -> Option<&'a str> {
        text.lines().find(|line| line.starts_with(name))
    }

    #[test]
    fn a_relay_alone_serves_the_outbox_and_the_store_but_no_consumer_series() {
        let metrics = Metrics::relay_only("postgres");
        metrics.published(3);
        metrics.published(2);
        metrics.publish_failed(true);
        metrics.outbox_backlog(7, Some(Duration::from_millis(1500)));
        let text = metrics.encode_prometheus();
        assert_eq!(
            line(&text, "payments_outbox_published_events_total"),
            Some("payments_outbox_published_events_total 5")
        );
        assert_eq!(line(&text, "payments_outbox_pending_events"), Some("payments_outbox_pending_events 7"));
        assert_eq!(
            line(&text, "payments_outbox_oldest_pending_age_seconds"),
            Some("payments_outbox_oldest_pending_age_seconds 1.5")
        );
        assert!(
            text.contains("payments_outbox_publish_errors_total{error_type=\"unavailable\"} 1"),
            "{text}"
        );
        assert!(text.contains("payments_outbox_publish_errors_total{error_type=\"failed\"} 0"), "{text}");
        assert!(text.contains("payments_store_up"), "the store is watched: {text}");
        assert!(!text.contains("payments_deliveries"), "no consumer series: {text}");
        assert!(metrics.health().liveness().ok, "the relay's reports keep it alive");
    }

    #[test]
    fn a_consumer_shows_the_outbox_only_when_it_relays() {
        let destination = || Destination { system: "redis".into(), name: "payments".into(), group: None };
        let plain = Metrics::new(destination(), "file");
        plain.published(1);
        assert!(!plain.encode_prometheus().contains("payments_outbox"));
        let relaying = Metrics::new(destination(), "file").with_relay();
        relaying.published(1);
        let text = relaying.encode_prometheus();
        assert!(text.contains("payments_outbox_published_events_total 1"), "{text}");
        assert!(text.contains("payments_deliveries"), "{text}");
    }
}
