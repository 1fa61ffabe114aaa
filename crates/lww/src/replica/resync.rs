//! Resynchronisation: a replica that is new, restored, or too far behind
//! a peer to know which deletes it missed drops what the peer provably saw
//! and pulls it back.

use std::collections::{BTreeMap, HashMap};

use multinode_wire::{NodeId, Timestamp};

use super::{NO_DIGEST, Replica};

/// A resynchronisation in progress: watermarks were dropped and are being
/// pulled back up to what the peer that triggered it knew.
#[derive(Debug)]
pub(super) struct Resync {
    pub(super) target: BTreeMap<NodeId, Timestamp>,
    /// Until our watermark for ourselves is back here, it is not taken from
    /// the clock: the peer holds writes of ours we dropped.
    pub(super) own_floor: Option<Timestamp>,
    pub(super) since_round: u64,
}

impl Replica {
    /// Starts a resynchronisation if this replica is new (or restored) or
    /// lags `theirs` on some origin by more than the tombstone grace: it may
    /// have missed deletes whose tombstones are gone, so it drops what the
    /// peer provably saw and pulls it back.
    pub(super) fn maybe_resync(&mut self, theirs: &[Timestamp]) -> bool {
        if self.resync.is_some() {
            return false;
        }
        let me = self.cfg.node;
        let limit = self.now_ms.saturating_add(self.cfg.max_drift_ms);
        let grace = self.cfg.tombstone_grace_ms;
        let behind = theirs.iter().any(|w| {
            w.node != me
                && w.physical_ms <= limit
                && self
                    .watermarks
                    .get(&w.node)
                    .is_some_and(|m| w.physical_ms > m.physical_ms.saturating_add(grace))
        });
        // A peer back from a long absence makes us look behind on its own
        // origin, but it lags us on the others: it cannot stand in for
        // what a resynchronisation drops, and pulling from it would bring
        // back what was deleted while it was away.
        if !(self.unsynced || behind && self.covers(theirs, &self.watermarks, false)) {
            return false;
        }
        tracing::info!(node = %me, unsynced = self.unsynced, "resynchronising");
        let target: BTreeMap<NodeId, Timestamp> = theirs
            .iter()
            .filter(|w| w.physical_ms <= limit)
            .map(|w| (w.node, *w))
            .collect();
        for (origin, upto) in &target {
            let Some(index) = self.by_origin.get(origin) else {
                continue;
            };
            let seen: Vec<String> = index.range(..=*upto).map(|(_, k)| k.clone()).collect();
            for key in seen {
                if let Some(e) = self.entries.remove(&key) {
                    self.unindex(&e);
                }
            }
        }
        self.watermarks.clear();
        self.era = match self.era.wrapping_add(1) {
            NO_DIGEST => 0,
            e => e,
        };
        self.unsynced = false;
        self.stats.resyncs += 1;
        let own_floor = target.get(&me).copied();
        let mut target = target;
        target.remove(&me);
        self.resync = Some(Resync {
            target,
            own_floor,
            since_round: self.round,
        });
        self.resync_progress();
        true
    }

    /// Whether a peer with watermarks `theirs` has seen, give or take the
    /// tombstone grace, all that `ours` says was seen of every origin but
    /// ourselves. Within the grace a delete it missed is still a tombstone
    /// here, which outranks anything stale it sends. An origin the peer
    /// has no watermark for counts as seen only if `new_ok` (a peer that
    /// has just started is not stale).
    pub(super) fn covers(
        &self,
        theirs: &[Timestamp],
        ours: &BTreeMap<NodeId, Timestamp>,
        new_ok: bool,
    ) -> bool {
        let me = self.cfg.node;
        let grace = self.cfg.tombstone_grace_ms;
        let theirs: HashMap<NodeId, Timestamp> = theirs.iter().map(|t| (t.node, *t)).collect();
        ours.iter().filter(|(o, _)| **o != me).all(|(o, mine)| {
            theirs.get(o).map_or(new_ok, |t| {
                t.physical_ms.saturating_add(grace) >= mine.physical_ms
            })
        })
    }

    pub(super) fn resync_progress(&mut self) {
        let me = self.cfg.node;
        let Some(r) = &mut self.resync else { return };
        if let Some(floor) = r.own_floor {
            if self.watermarks.get(&me).is_some_and(|w| *w >= floor) {
                r.own_floor = None;
            }
        }
        let caught_up = r
            .target
            .iter()
            .all(|(o, t)| self.watermarks.get(o).is_some_and(|w| w >= t));
        if caught_up && r.own_floor.is_none() {
            self.resync = None;
        }
    }
}
