//! Peer liveness: a φ-accrual detector per peer, fed by the heartbeats
//! gossip carries (an origin's watermark moving up). Sans-IO: times are
//! arguments.

/// What the detector believes about a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PeerStatus {
    /// Heartbeats arrive about as often as they have.
    Alive,
    /// Overdue: φ is past the suspect threshold.
    Suspect,
    /// Long overdue: φ is past the dead threshold.
    Dead,
}

/// The mean inter-arrival time is that of the first `WINDOW` intervals,
/// then a moving mean that gives each new interval a weight of
/// 1 / `WINDOW`: about the mean of the last `WINDOW`, without keeping them
/// (a node of a large cluster has a detector for each of its peers).
const WINDOW: u64 = 64;

/// A φ-accrual failure detector (Hayashibara et al.) with exponentially
/// distributed inter-arrival times, as Cassandra uses: φ = Δt / (mean · ln 10).
#[derive(Clone, Debug)]
pub(crate) struct Detector {
    last_ms: u64,
    heard: bool,
    /// Intervals seen, up to `WINDOW`.
    seen: u64,
    /// The mean interval so far, in ms.
    mean_ms: f64,
    prior_ms: u64,
}

impl Detector {
    /// A detector that starts counting at `now_ms`, assuming heartbeats
    /// every `prior_ms` until it has seen some.
    pub(crate) fn new(now_ms: u64, prior_ms: u64) -> Self {
        Self {
            last_ms: now_ms,
            heard: false,
            seen: 0,
            mean_ms: 0.0,
            prior_ms: prior_ms.max(1),
        }
    }

    /// Starts the clock of a detector made before the time was known.
    pub(crate) fn start(&mut self, now_ms: u64) {
        if !self.heard && self.last_ms == 0 {
            self.last_ms = now_ms;
        }
    }

    pub(crate) fn heartbeat(&mut self, now_ms: u64) {
        let gap = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        if !std::mem::replace(&mut self.heard, true) {
            // The wait for the first heartbeat is not an interval.
            return;
        }
        self.seen = (self.seen + 1).min(WINDOW);
        self.mean_ms += (gap as f64 - self.mean_ms) / self.seen as f64;
    }

    pub(crate) fn phi(&self, now_ms: u64) -> f64 {
        // The mean never drops below the prior: a burst of heartbeats in
        // one round must not make the next ordinary gap look fatal.
        let mean = self.mean_ms.max(self.prior_ms as f64);
        now_ms.saturating_sub(self.last_ms) as f64 / (mean * std::f64::consts::LN_10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phi_after(d: &Detector, gap: u64) -> f64 {
        d.phi(d.last_ms + gap)
    }

    #[test]
    fn phi_follows_the_mean_interval_and_forgets_old_ones() {
        let ln10 = std::f64::consts::LN_10;
        let mut d = Detector::new(0, 10);
        assert!(
            (phi_after(&d, 100) - 100.0 / (10.0 * ln10)).abs() < 1e-9,
            "prior"
        );
        // The first heartbeat ends the wait; the next ten are 1 s apart.
        d.heartbeat(5_000);
        for i in 1..=10 {
            d.heartbeat(5_000 + i * 1_000);
        }
        let want = 2_000.0 / (1_000.0 * ln10);
        assert!((phi_after(&d, 2_000) - want).abs() < 1e-9, "the exact mean");
        // Heartbeats speed up to 100 ms: after a few windows the old
        // intervals no longer count.
        let mut at = d.last_ms;
        for _ in 0..(WINDOW * 8) {
            at += 100;
            d.heartbeat(at);
        }
        let want = 1_000.0 / (100.0 * ln10);
        let got = phi_after(&d, 1_000);
        assert!(
            (got - want).abs() / want < 0.01,
            "phi {got}, want about {want}"
        );
        // Never below the prior, however fast heartbeats come.
        for _ in 0..(WINDOW * 8) {
            d.heartbeat(at);
        }
        assert!((phi_after(&d, 100) - 100.0 / (10.0 * ln10)).abs() < 1e-9);
    }
}
