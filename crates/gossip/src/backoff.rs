//! Reconnect delays: exponential, capped, jittered. Sans-IO: the caller
//! sleeps; the generator is seeded.

use std::time::Duration;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The delay before each reconnect attempt: `min × 2^failures`, capped at
/// `max`, then drawn uniformly from its upper half so that peers that lost
/// a node together do not redial it in step.
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
    rng: ChaCha8Rng,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration, seed: u64) -> Self {
        Self {
            min: min.max(Duration::from_millis(1)),
            max: max.max(min),
            failures: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// The delay before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .min
            .saturating_mul(1u32 << self.failures.min(20))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        let hi = ceiling.as_nanos() as u64;
        Duration::from_nanos(self.rng.random_range(hi / 2..=hi))
    }

    /// A connection succeeded: the next failure starts from `min` again.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failed attempts in a row so far.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// Carries on after `failures` failed attempts in a row.
    pub(crate) fn resume(&mut self, failures: u32) {
        self.failures = failures;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_jitters_and_resets() {
        let (min, max) = (Duration::from_millis(10), Duration::from_millis(300));
        let mut b = Backoff::new(min, max, 7);
        let delays: Vec<_> = (0..8).map(|_| b.next_delay()).collect();
        for (i, d) in delays.iter().enumerate() {
            let ceiling = (min * (1 << i)).min(max);
            assert!(
                *d >= ceiling / 2 && *d <= ceiling,
                "attempt {i}: {d:?} outside [{:?}, {ceiling:?}]",
                ceiling / 2
            );
        }
        assert!(delays[7] > delays[0] * 4, "no growth: {delays:?}");
        let mut other = Backoff::new(min, max, 8);
        let theirs: Vec<_> = (0..8).map(|_| other.next_delay()).collect();
        assert_ne!(delays, theirs, "two seeds gave the same jitter");
        b.reset();
        assert!(b.next_delay() <= min);
        // A new task for the same peer goes on where the last one stopped.
        let mut next = Backoff::new(min, max, 9);
        next.resume(b.failures() + 3);
        assert_eq!(next.failures(), 4);
        let d = next.next_delay();
        assert!(d >= min * 8 && d <= min * 16, "resumed at {d:?}");
    }
}
