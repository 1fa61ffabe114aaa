//! Peer liveness: a φ-accrual detector per peer, fed by the heartbeats
//! gossip carries (an origin's watermark moving up). Sans-IO: times are
//! arguments.

use std::collections::VecDeque;

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

/// Inter-arrival samples kept.
const WINDOW: usize = 64;

/// A φ-accrual failure detector (Hayashibara et al.) with exponentially
/// distributed inter-arrival times, as Cassandra uses: φ = Δt / (mean · ln 10).
#[derive(Clone, Debug)]
pub(crate) struct Detector {
    last_ms: u64,
    heard: bool,
    intervals: VecDeque<u64>,
    sum: u64,
    prior_ms: u64,
}

impl Detector {
    /// A detector that starts counting at `now_ms`, assuming heartbeats
    /// every `prior_ms` until it has seen some.
    pub(crate) fn new(now_ms: u64, prior_ms: u64) -> Self {
        Self {
            last_ms: now_ms,
            heard: false,
            intervals: VecDeque::with_capacity(WINDOW),
            sum: 0,
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
        if self.intervals.len() == WINDOW {
            self.sum -= self.intervals.pop_front().unwrap_or(0);
        }
        self.intervals.push_back(gap);
        self.sum += gap;
    }

    pub(crate) fn phi(&self, now_ms: u64) -> f64 {
        // The mean never drops below the prior: a burst of heartbeats in
        // one round must not make the next ordinary gap look fatal.
        let mean = if self.intervals.is_empty() {
            self.prior_ms as f64
        } else {
            (self.sum as f64 / self.intervals.len() as f64).max(self.prior_ms as f64)
        };
        now_ms.saturating_sub(self.last_ms) as f64 / (mean * std::f64::consts::LN_10)
    }
}
