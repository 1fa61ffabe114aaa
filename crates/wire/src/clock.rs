use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{NodeId, WireError};

/// A hybrid logical clock timestamp: the total order of versions.
///
/// Ordered by physical milliseconds, then the logical counter, then the node
/// id, so two timestamps issued by different nodes never compare equal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp {
    /// Wall-clock milliseconds (since the Unix epoch, by convention).
    pub physical_ms: u64,
    /// Orders events within one millisecond.
    pub logical: u32,
    /// The node that issued this timestamp: the final tie-break.
    pub node: NodeId,
}

impl Timestamp {
    /// A fixed 64-bit mix of the three fields (SplitMix64's finaliser,
    /// applied field by field): what a [`Beyond`](crate::Beyond)
    /// fingerprint sums. Every build computes the same.
    pub fn fingerprint(&self) -> u64 {
        fn mix(z: u64) -> u64 {
            let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        mix(mix(mix(self.physical_ms) ^ u64::from(self.logical)) ^ self.node.0)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}@{}", self.physical_ms, self.logical, self.node)
    }
}

/// A hybrid logical clock (Kulkarni et al.), sans-IO: wall time is an argument.
///
/// Every timestamp it issues is greater than every timestamp it issued or
/// accepted before, whatever the wall clock does, so a write that causally
/// follows another always carries a higher version.
#[derive(Clone, Debug)]
pub struct HybridClock {
    node: NodeId,
    max_drift_ms: u64,
    last_ms: u64,
    logical: u32,
}

impl HybridClock {
    /// A clock for `node` that refuses remote timestamps more than
    /// `max_drift_ms` ahead of local wall time.
    pub fn new(node: NodeId, max_drift_ms: u64) -> Self {
        Self {
            node,
            max_drift_ms,
            last_ms: 0,
            logical: 0,
        }
    }

    /// The node this clock issues timestamps for.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The latest timestamp issued or absorbed (with this node's id).
    pub fn last(&self) -> Timestamp {
        self.stamp()
    }

    /// Issues a timestamp for a local event at wall time `wall_ms`.
    pub fn now(&mut self, wall_ms: u64) -> Timestamp {
        if wall_ms > self.last_ms {
            self.last_ms = wall_ms;
            self.logical = 0;
        } else {
            self.tick();
        }
        self.stamp()
    }

    /// Absorbs a remote timestamp received at wall time `wall_ms` and issues
    /// one greater than both it and everything before. A remote timestamp
    /// more than the maximum drift ahead of `wall_ms` is refused and changes
    /// nothing, so one peer's broken clock cannot drag ours into the future.
    pub fn observe(&mut self, remote: Timestamp, wall_ms: u64) -> Result<Timestamp, WireError> {
        if remote.physical_ms > wall_ms.saturating_add(self.max_drift_ms) {
            return Err(WireError::ClockDrift {
                remote_ms: remote.physical_ms,
                local_ms: wall_ms,
                max_drift_ms: self.max_drift_ms,
            });
        }
        let ms = self.last_ms.max(remote.physical_ms).max(wall_ms);
        let base = match (ms == self.last_ms, ms == remote.physical_ms) {
            (true, true) => Some(self.logical.max(remote.logical)),
            (true, false) => Some(self.logical),
            (false, true) => Some(remote.logical),
            (false, false) => None,
        };
        self.last_ms = ms;
        match base {
            Some(l) => {
                self.logical = l;
                self.tick();
            }
            None => self.logical = 0,
        }
        Ok(self.stamp())
    }

    fn tick(&mut self) {
        // On counter overflow borrow the next millisecond: still monotonic.
        match self.logical.checked_add(1) {
            Some(l) => self.logical = l,
            None => {
                self.last_ms += 1;
                self.logical = 0;
            }
        }
    }

    fn stamp(&self) -> Timestamp {
        Timestamp {
            physical_ms: self.last_ms,
            logical: self.logical,
            node: self.node,
        }
    }
}
