//! How long to wait before retrying something that is unavailable: exponential, capped, with
//! equal jitter.

use std::time::Duration;

/// How the consumer retries a delivery while the store (or the dead-letter sink) is unavailable,
/// and how the source is asked again while it is unavailable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first wait.
    pub first_delay: Duration,
    /// The longest wait; each wait doubles until it reaches this.
    pub max_delay: Duration,
    /// How long one delivery may keep failing before the consumer stops.
    pub give_up_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            first_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(5),
            give_up_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1-based): the step doubles from `first_delay` up to
    /// `max_delay`, and the wait is drawn uniformly from the upper half of the step ("equal
    /// jitter"). Deliveries that failed together come back spread out, and never sooner than half
    /// a step, so that a store that is down is not hammered.
    pub fn delay(&self, retry: u32) -> Duration {
        let step = self.first_delay.saturating_mul(1 << retry.saturating_sub(1).min(20)).min(self.max_delay);
        let half = step / 2;
        half + (step - half).mul_f64(fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_grows_exponentially_is_capped_and_is_drawn_from_the_upper_half_of_the_step() {
        let policy = RetryPolicy {
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            give_up_after: Duration::from_secs(60),
        };
        for (retry, step) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000), (30, 1000)] {
            let step = Duration::from_millis(step);
            for _ in 0..50 {
                let delay = policy.delay(retry);
                assert!(
                    delay >= step / 2 && delay <= step,
                    "retry {retry}: {delay:?} outside [{:?}, {step:?}]",
                    step / 2
                );
            }
        }
        let spread: std::collections::HashSet<Duration> = (0..20).map(|_| policy.delay(3)).collect();
        assert!(spread.len() > 1, "jitter spreads retries");
    }
}
