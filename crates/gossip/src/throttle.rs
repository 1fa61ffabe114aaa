//! Rate-limited warnings: a hostile peer can make a transport refuse
//! thousands of connections a second, and each must not cost a log line.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// At most one line per kind of warning in this period.
const PERIOD: Duration = Duration::from_secs(10);

/// One kind of warning.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    next: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl Throttle {
    /// `Some(n)` when a line may be logged now, `n` being how many were
    /// held back since the last one; `None` while the period runs.
    pub(crate) fn allow(&self, now: Instant) -> Option<u64> {
        let mut next = self.next.lock();
        if next.is_some_and(|at| now < at) {
            self.suppressed.fetch_add(1, Relaxed);
            return None;
        }
        *next = Some(now + PERIOD);
        Some(self.suppressed.swap(0, Relaxed))
    }
}

/// The warnings an inbound listener gives.
#[derive(Debug, Default)]
pub(crate) struct Warnings {
    pub(crate) refused: Throttle,
    pub(crate) auth: Throttle,
    pub(crate) bad_connection: Throttle,
    pub(crate) over_limit: Throttle,
    pub(crate) bad_frame: Throttle,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_with_the_count_held_back() {
        let t = Throttle::default();
        let t0 = Instant::now();
        assert_eq!(t.allow(t0), Some(0));
        for i in 1..=5 {
            assert_eq!(t.allow(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(t.allow(t0 + PERIOD), Some(5));
        assert_eq!(t.allow(t0 + PERIOD), None);
    }
}
