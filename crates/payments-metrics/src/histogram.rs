//! Metrics that every delivery updates, without a lock and without sharing a cache line between
//! threads: [`AtomicHistogram`] and [`ShardedCounter`].
//!
//! prometheus-client's own `Histogram` takes a mutex for every observation. Observed from every
//! worker thread for every delivery, that mutex is contended, and a contended parking_lot mutex
//! parks threads: on a 2-core machine the consumer ran 10% to 25% slower with metrics on. Plain
//! atomics fix the lock, not the sharing: eight atomic additions per delivery on cache lines that
//! both worker threads write cost the consumer 9% of its CPU, although they are 3% of its
//! instructions. So every value here is kept in [`SHARDS`] copies, each on cache lines of its own;
//! a thread always adds to the same copy, and a scrape adds the copies up.
//!
//! A scrape taken mid-observation may see a bucket counted before its sum is; each value is
//! right on its own and the next scrape agrees, which is what Prometheus's `rate()` needs.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// How many copies of each value: more than the threads that usually observe (the runtime's
/// workers), so that two of them rarely share one.
pub(crate) const SHARDS: usize = 8;

/// The most buckets a histogram may have, +Inf included.
const MAX_BUCKETS: usize = 24;

/// Which copy the current thread writes: given out in turn, the first time a thread observes.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: Cell<Option<usize>> = const { Cell::new(None) };
    }
    SHARD.with(|shard| match shard.get() {
        Some(index) => index,
        None => {
            let index = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
            shard.set(Some(index));
            index
        }
    })
}

/// One thread's copy of a histogram, on cache lines of its own.
#[derive(Debug)]
#[repr(align(128))]
struct HistogramShard {
    /// One per bound, then +Inf; only the first `bounds.len() + 1` are used.
    buckets: [AtomicU64; MAX_BUCKETS],
    /// The sum of the observations, in whole units.
    sum: AtomicU64,
}

impl Default for HistogramShard {
    fn default() -> Self {
        Self { buckets: std::array::from_fn(|_| AtomicU64::new(0)), sum: AtomicU64::new(0) }
    }
}

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
    shards: [HistogramShard; SHARDS],
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
        // The bounds are the code's own constants: more would be a mistake in this crate.
        let bounds = &bounds[..bounds.len().min(MAX_BUCKETS - 1)];
        // Bounds are small positive numbers of the code's own: the cast cannot truncate.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let unit_bounds = bounds.iter().map(|bound| (bound / unit).round() as u64).collect();
        let shards = std::array::from_fn(|_| HistogramShard::default());
        Self(Arc::new(Inner { bounds, unit_bounds, shards, unit }))
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
        let shard = &inner.shards[shard()];
        shard.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        shard.sum.fetch_add(value, Ordering::Relaxed);
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let inner = &self.0;
        let total = |read: &dyn Fn(&HistogramShard) -> u64| -> u64 {
            inner.shards.iter().map(read).fold(0, u64::wrapping_add)
        };
        let buckets: Vec<(f64, u64)> = inner
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .enumerate()
            .map(|(i, bound)| (bound, total(&|shard| shard.buckets[i].load(Ordering::Relaxed))))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        // Precise to 2^53 units (104 days of nanoseconds), then rounded: fine for a sum.
        #[allow(clippy::cast_precision_loss)]
        let sum = total(&|shard| shard.sum.load(Ordering::Relaxed)) as f64 * inner.unit;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// One thread's copy of a counter, on a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct CounterShard(AtomicU64);

/// A Prometheus counter kept in [`SHARDS`] copies, for the counters every delivery adds to.
#[derive(Clone, Debug, Default)]
pub(crate) struct ShardedCounter(Arc<[CounterShard; SHARDS]>);

impl ShardedCounter {
    /// Adds one.
    pub(crate) fn inc(&self) {
        self.0[shard()].0.fetch_add(1, Ordering::Relaxed);
    }

    /// The total.
    pub(crate) fn get(&self) -> u64 {
        self.0.iter().map(|shard| shard.0.load(Ordering::Relaxed)).fold(0, u64::wrapping_add)
    }
}

impl TypedMetric for ShardedCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for ShardedCounter {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
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
    fn observations_from_many_threads_are_all_counted() {
        static BOUNDS: [f64; 1] = [10.0];
        let histogram = AtomicHistogram::counts(&BOUNDS);
        let counter = ShardedCounter::default();
        std::thread::scope(|scope| {
            for _ in 0..SHARDS + 3 {
                scope.spawn(|| {
                    for value in 0..1_000 {
                        histogram.observe_count(value % 20);
                        counter.inc();
                    }
                });
            }
        });
        let text = encoded(&histogram);
        let threads = SHARDS + 3;
        for line in [
            format!("h_bucket{{le=\"10.0\"}} {}", threads * 550),
            format!("h_count {}", threads * 1_000),
            format!("h_sum {}", threads * 9_500),
        ] {
            assert!(text.contains(&line), "{line} missing from\n{text}");
        }
        assert_eq!(counter.get(), (threads * 1_000) as u64);
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
