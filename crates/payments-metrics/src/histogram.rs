//! A histogram without a lock: [`AtomicHistogram`].
//!
//! prometheus-client's own `Histogram` takes a mutex for every observation. Observed from every
//! worker thread for every delivery (three histograms per delivery), that mutex is contended,
//! and a contended parking_lot mutex parks threads: on a 2-core machine the consumer ran 10% to
//! 25% slower with metrics on, with a quarter more context switches. Here an observation is two
//! relaxed atomic additions (its bucket, and the sum in whole units); the count is the buckets'
//! total, read when scraped.
//!
//! A scrape taken mid-observation may see a bucket counted before its sum is; each value is
//! right on its own and the next scrape agrees, which is what Prometheus's `rate()` needs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// A Prometheus histogram of values kept in whole units (nanoseconds for durations, ones for
/// counts), with fixed bucket bounds.
#[derive(Clone, Debug)]
pub(crate) struct AtomicHistogram(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    /// The upper bounds, as exported (seconds, or counts).
    bounds: &'static [f64],
    /// The upper bounds in whole units, for the comparison on each observation.
    unit_bounds: Box<[u64]>,
    /// One per bound, and the last for +Inf.
    buckets: Box<[AtomicU64]>,
    /// The sum of the observations, in whole units.
    sum: AtomicU64,
    /// What one unit is worth when exported: 1e-9 for nanoseconds exported as seconds.
    unit: f64,
}

impl AtomicHistogram {
    /// A histogram of durations, exported in seconds, with `bounds` in seconds.
    pub(crate) fn seconds(bounds: &'static [f64]) -> Self {
        Self::new(bounds, 1e-9)
    }

    /// A histogram of counts (whole numbers), with `bounds` in the same.
    pub(crate) fn counts(bounds: &'static [f64]) -> Self {
        Self::new(bounds, 1.0)
    }

    fn new(bounds: &'static [f64], unit: f64) -> Self {
        // Bounds are small positive numbers of the code's own: the cast cannot truncate.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let unit_bounds = bounds.iter().map(|bound| (bound / unit).round() as u64).collect();
        let buckets = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Self(Arc::new(Inner { bounds, unit_bounds, buckets, sum: AtomicU64::new(0), unit }))
    }

    /// Observes a duration (for a histogram made with [`seconds`](Self::seconds)).
    pub(crate) fn observe_duration(&self, took: Duration) {
        self.observe_units(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Observes a count (for a histogram made with [`counts`](Self::counts)).
    pub(crate) fn observe_count(&self, value: u64) {
        self.observe_units(value);
    }

    fn observe_units(&self, value: u64) {
        let inner = &self.0;
        let bucket = inner.unit_bounds.iter().position(|bound| value <= *bound).unwrap_or(inner.bounds.len());
        inner.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        inner.sum.fetch_add(value, Ordering::Relaxed);
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let inner = &self.0;
        let buckets: Vec<(f64, u64)> = inner
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(inner.buckets.iter().map(|bucket| bucket.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        // Precise to 2^53 units (104 days of nanoseconds), then rounded: fine for a sum.
        #[allow(clippy::cast_precision_loss)]
        let sum = inner.sum.load(Ordering::Relaxed) as f64 * inner.unit;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(histogram: &AtomicHistogram) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("h", "A histogram", histogram.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        text
    }

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them_cumulatively_exported() {
        static BOUNDS: [f64; 3] = [0.005, 0.1, 1.0];
        let histogram = AtomicHistogram::seconds(&BOUNDS);
        for millis in [1, 5, 6, 100, 2_000] {
            histogram.observe_duration(Duration::from_millis(millis));
        }
        let text = encoded(&histogram);
        for line in [
            "h_bucket{le=\"0.005\"} 2",
            "h_bucket{le=\"0.1\"} 4",
            "h_bucket{le=\"1.0\"} 4",
            "h_bucket{le=\"+Inf\"} 5",
            "h_count 5",
            "h_sum 2.112",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn counts_are_whole_numbers() {
        static BOUNDS: [f64; 2] = [1.0, 3.0];
        let histogram = AtomicHistogram::counts(&BOUNDS);
        for attempt in [1, 1, 2, 7] {
            histogram.observe_count(attempt);
        }
        let text = encoded(&histogram);
        for line in
            ["h_bucket{le=\"1.0\"} 2", "h_bucket{le=\"3.0\"} 3", "h_bucket{le=\"+Inf\"} 4", "h_sum 11.0"]
        {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
