//! Clock offsets: how far each peer's wall clock is from ours, learned from
//! the send time every message carries, and how far ours is from the
//! cluster's. Sans-IO: the times come in with the calls.
//!
//! A last-write-wins cluster only converges while its clocks agree within
//! the drift bound: a replica refuses a version more than
//! [`ReplicaConfig::max_drift_ms`](crate::ReplicaConfig::max_drift_ms)
//! ahead of its own clock. So a replica measures, refuses to stamp writes
//! when its clock is off the cluster's by more than half the bound (then
//! any two replicas that stamp writes are within the bound of each other),
//! and sends no peer a version that peer would refuse.

use std::collections::{BTreeMap, BTreeSet};

use multinode_wire::NodeId;

/// Where this replica's clock stands against its peers'.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockOffset {
    /// How far our clock is ahead of the cluster's median clock (negative:
    /// behind), in ms: the median of ours and every peer's last measured
    /// offset, so a minority of wrong clocks cannot move it.
    pub ahead_ms: i64,
    /// How many peers' clocks were measured.
    pub peers: usize,
}

/// The last measured offset of each peer.
#[derive(Debug, Default)]
pub(crate) struct Offsets {
    /// Peer → how far its clock is ahead of ours, in ms.
    by_peer: BTreeMap<NodeId, i64>,
    /// Peers whose clock was last seen beyond the bound (warned once).
    warned: BTreeSet<NodeId>,
}

impl Offsets {
    /// A message from `peer` stamped `sent_ms` by its clock arrived when
    /// ours read `now_ms`. The delay in between reads as the peer being a
    /// little behind: milliseconds, far below any drift bound.
    pub(crate) fn observe(
        &mut self,
        me: NodeId,
        peer: NodeId,
        sent_ms: u64,
        now_ms: u64,
        bound_ms: u64,
    ) {
        let offset = clamp_diff(sent_ms, now_ms);
        self.by_peer.insert(peer, offset);
        let beyond = offset.unsigned_abs() > bound_ms;
        if beyond && self.warned.insert(peer) {
            tracing::warn!(
                node = %me,
                %peer,
                offset_ms = offset,
                bound_ms,
                "a peer's clock is off ours by more than the drift bound: \
                 writes between us cannot converge until the clocks agree"
            );
        } else if !beyond {
            self.warned.remove(&peer);
        }
    }

    pub(crate) fn forget(&mut self, peer: NodeId) {
        self.by_peer.remove(&peer);
        self.warned.remove(&peer);
    }

    /// How far `peer`'s clock is ahead of ours, if measured.
    pub(crate) fn of(&self, peer: NodeId) -> Option<i64> {
        self.by_peer.get(&peer).copied()
    }

    /// Every measured peer's offset.
    pub(crate) fn all(&self) -> &BTreeMap<NodeId, i64> {
        &self.by_peer
    }

    /// Whether our clock is off the cluster's by more than `limit_ms`: at
    /// least half of the `members` (us included, so a majority of the
    /// others when the count is odd) are measured beyond the limit on one
    /// side of us. A minority of wrong clocks, or a few early measurements,
    /// cannot make a replica with a good clock refuse writes; in a cluster
    /// split evenly between two clocks, both sides refuse.
    pub(crate) fn off(&self, members: usize, limit_ms: u64) -> Option<ClockOffset> {
        let need = members.div_ceil(2).max(1);
        let limit = i64::try_from(limit_ms).unwrap_or(i64::MAX);
        let behind_us = self.by_peer.values().filter(|o| **o < -limit).count();
        let ahead_of_us = self.by_peer.values().filter(|o| **o > limit).count();
        if behind_us >= need || ahead_of_us >= need {
            self.ours()
        } else {
            None
        }
    }

    /// Our clock against the cluster's median, once any peer is measured.
    pub(crate) fn ours(&self) -> Option<ClockOffset> {
        if self.by_peer.is_empty() {
            return None;
        }
        let mut clocks: Vec<i64> = self.by_peer.values().copied().collect();
        clocks.push(0);
        clocks.sort_unstable();
        let n = clocks.len();
        // The median; of an even count, the mean of the middle two.
        let median = if n % 2 == 1 {
            clocks[n / 2]
        } else {
            clocks[n / 2 - 1] / 2 + clocks[n / 2] / 2
        };
        Some(ClockOffset {
            ahead_ms: median.saturating_neg(),
            peers: n - 1,
        })
    }
}

/// `a - b` as a signed number, saturating.
fn clamp_diff(a: u64, b: u64) -> i64 {
    if a >= b {
        i64::try_from(a - b).unwrap_or(i64::MAX)
    } else {
        i64::try_from(b - a).map_or(i64::MIN, |d| -d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(peers: &[i64]) -> Offsets {
        let mut o = Offsets::default();
        let now: u64 = 1_000_000_000;
        for (i, &off) in peers.iter().enumerate() {
            let sent = now.checked_add_signed(off).unwrap();
            o.observe(NodeId(0), NodeId(i as u64 + 1), sent, now, 60_000);
        }
        o
    }

    #[test]
    fn the_median_clock_outvotes_a_minority() {
        assert_eq!(offsets(&[]).ours(), None);
        // Peers at +600 s and -600 s: we are the median.
        assert_eq!(offsets(&[600_000, -600_000]).ours().unwrap().ahead_ms, 0);
        // Both peers 600 s behind us: we are 600 s ahead.
        assert_eq!(
            offsets(&[-600_000, -1_200_000]).ours().unwrap().ahead_ms,
            600_000
        );
        // Two clocks that disagree: each is half the gap off.
        assert_eq!(offsets(&[70_000]).ours().unwrap().ahead_ms, -35_000);
        let o = offsets(&[10, -20, 5, 600_000]);
        assert_eq!(
            o.ours().unwrap(),
            ClockOffset {
                ahead_ms: -5,
                peers: 4
            }
        );
        assert_eq!(o.of(NodeId(4)), Some(600_000));
    }

    #[test]
    fn only_half_the_cluster_beyond_the_limit_makes_a_clock_off() {
        // Three members; one peer measured 600 s ahead: not enough.
        assert_eq!(offsets(&[600_000]).off(3, 30_000), None);
        // Both peers 600 s behind us: we are off.
        let o = offsets(&[-600_000, -600_000]).off(3, 30_000).unwrap();
        assert_eq!(o.ahead_ms, 600_000);
        // Two members: the one peer is half the cluster.
        assert!(offsets(&[70_000]).off(2, 30_000).is_some());
        // Within the limit, never off.
        assert_eq!(offsets(&[-20_000, -25_000]).off(3, 30_000), None);
    }

    #[test]
    fn differences_saturate() {
        assert_eq!(clamp_diff(u64::MAX, 0), i64::MAX);
        assert_eq!(clamp_diff(0, u64::MAX), i64::MIN);
        assert_eq!(clamp_diff(5, 7), -2);
    }
}
