//! What a replica sent each peer that the peer's watermarks do not show
//! yet. Behind a slow link (loss, an overloaded machine) a peer's digests
//! keep naming the watermarks it had before our last sync reached it, and
//! answering each with the same delta again queues copy after copy on the
//! link that is already behind: the answer is later still, and the copies
//! take the room new entries needed. So for a while (the patience: three
//! times the smoothed answer time) a range already sent is not sent again.
//!
//! Nothing is vouched for by what was left out: a sync that leaves out an
//! origin's range names that origin in `partial` at the peer's own
//! watermark, so if the earlier sync was lost the peer's watermark stays
//! where it was, and once the patience is over the range goes again.

use std::collections::BTreeMap;

use multinode_wire::{NodeId, Timestamp};

use super::origins::Origins;

/// Peers remembered at once: beyond this, the one remembered longest is
/// forgotten (and may be sent a range twice).
const PEERS_MAX: usize = 16;

/// Origins remembered for one peer: a peer sent ranges of more origins
/// than this (a burst across a large cluster) is not remembered at all.
/// With [`PEERS_MAX`], bounds the memory this takes to about 24 KiB; a
/// large cluster's node has about as many origins as peers, and
/// remembering them all cost it more memory than it saved bytes.
const ORIGINS_MAX: usize = 64;

/// What one peer was sent and has not confirmed.
#[derive(Debug)]
pub(super) struct Unconfirmed {
    /// The peer's era the ranges were sent to.
    era: u32,
    /// When the oldest range still unconfirmed was sent.
    since_ms: u64,
    /// For each origin, the newest version of a range sent: the peer will
    /// hold everything we held of it up to there once our syncs arrive.
    pub(super) upto: Origins,
}

/// Every peer's [`Unconfirmed`].
#[derive(Debug, Default)]
pub(super) struct Sent(BTreeMap<NodeId, Unconfirmed>);

impl Sent {
    /// What `to` (in era `era`, with watermarks `theirs` sorted by origin)
    /// was sent within the last `patience_ms` and has not confirmed; taken
    /// out, to be [`put`](Self::put) back. `None` when nothing is: the
    /// patience is over (everything goes again), the peer restarted (a new
    /// era), or its watermarks show all of it.
    pub(super) fn take(
        &mut self,
        to: NodeId,
        era: u32,
        theirs: &[Timestamp],
        now_ms: u64,
        patience_ms: u64,
    ) -> Option<Unconfirmed> {
        let u = self.0.remove(&to)?;
        if u.era != era || now_ms.saturating_sub(u.since_ms) >= patience_ms {
            return None;
        }
        // A few origins against the peer's whole list: looked up, not
        // walked beside it.
        let unconfirmed = |s: &Timestamp| match theirs.binary_search_by_key(&s.node, |t| t.node) {
            Ok(i) => theirs[i] < *s,
            Err(_) => true,
        };
        let upto: Origins = u
            .upto
            .as_slice()
            .iter()
            .copied()
            .filter(unconfirmed)
            .collect();
        (!upto.as_slice().is_empty()).then_some(Unconfirmed { upto, ..u })
    }

    /// Puts back what [`take`](Self::take) returned, with the ranges just
    /// sent to `to` (in origin order, each ending at its newest version).
    pub(super) fn put(
        &mut self,
        to: NodeId,
        era: u32,
        taken: Option<Unconfirmed>,
        sent: Vec<Timestamp>,
        now_ms: u64,
    ) {
        let mut u = match taken {
            Some(u) => u,
            None if sent.is_empty() => return,
            None => Unconfirmed {
                era,
                since_ms: now_ms,
                upto: Origins::default(),
            },
        };
        u.upto.raise(sent.into_iter());
        if u.upto.as_slice().len() > ORIGINS_MAX {
            return;
        }
        if self.0.len() >= PEERS_MAX {
            let oldest = self.0.iter().min_by_key(|(_, u)| u.since_ms);
            if let Some(&id) = oldest.map(|(id, _)| id) {
                self.0.remove(&id);
            }
        }
        self.0.insert(to, u);
    }

    /// Forgets everything (the patience is none: nothing is held back).
    pub(super) fn clear(&mut self) {
        self.0.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(node: u64, ms: u64) -> Timestamp {
        Timestamp {
            physical_ms: ms,
            logical: 0,
            node: NodeId(node),
        }
    }

    #[test]
    fn a_range_is_held_back_until_confirmed_the_patience_ends_or_the_era_changes() {
        let mut s = Sent::default();
        let peer = NodeId(9);
        s.put(peer, 1, None, vec![t(1, 10), t(2, 20)], 1_000);
        // The peer shows origin 1 up to 10: only origin 2 is still held.
        let u = s
            .take(peer, 1, &[t(1, 10), t(2, 5)], 1_100, 500)
            .expect("held");
        assert_eq!(u.upto.as_slice(), &[t(2, 20)]);
        s.put(peer, 1, Some(u), vec![t(3, 7)], 1_100);
        // The oldest range was sent at 1,000: held until 1,500.
        let u = s.take(peer, 1, &[], 1_499, 500).expect("held");
        assert_eq!(u.upto.as_slice(), &[t(2, 20), t(3, 7)]);
        s.put(peer, 1, Some(u), vec![], 1_499);
        assert!(s.take(peer, 1, &[], 1_500, 500).is_none(), "patience over");
        s.put(peer, 1, None, vec![t(1, 30)], 2_000);
        assert!(s.take(peer, 2, &[], 2_001, 500).is_none(), "a new era");
        s.put(peer, 1, None, vec![t(1, 30)], 2_000);
        assert!(
            s.take(peer, 1, &[t(1, 30)], 2_001, 500).is_none(),
            "all confirmed"
        );
    }

    #[test]
    fn a_peer_sent_ranges_of_more_than_sixty_four_origins_is_not_remembered() {
        let mut s = Sent::default();
        let many: Vec<Timestamp> = (0..=ORIGINS_MAX as u64).map(|o| t(o, 10)).collect();
        s.put(NodeId(9), 1, None, many[..ORIGINS_MAX].to_vec(), 100);
        assert!(s.take(NodeId(9), 1, &[], 101, 500).is_some());
        s.put(NodeId(9), 1, None, many, 100);
        assert!(s.take(NodeId(9), 1, &[], 101, 500).is_none());
    }

    #[test]
    fn at_most_sixteen_peers_are_remembered_the_longest_remembered_forgotten_first() {
        let mut s = Sent::default();
        for p in 0..=PEERS_MAX as u64 {
            s.put(NodeId(p), 1, None, vec![t(1, 10)], 100 + p);
        }
        assert_eq!(s.0.len(), PEERS_MAX);
        assert!(s.take(NodeId(0), 1, &[], 101, 500).is_none());
        assert!(s.take(NodeId(PEERS_MAX as u64), 1, &[], 200, 500).is_some());
    }
}
