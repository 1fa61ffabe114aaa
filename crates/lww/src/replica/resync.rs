//! Resynchronisation: a replica that is new, restored, or too far behind
//! a peer to know which deletes it missed drops what the peer provably saw
//! and pulls it back.

use std::collections::{BTreeSet, HashMap};

use multinode_wire::{NodeId, Timestamp};

use super::origins::{Origins, side_by_side};
use super::{NO_DIGEST, Replica, TS_MIN};

/// Peers that must answer with no watermark for us, after a
/// resynchronisation against a peer that knew nothing of our writes,
/// before we believe nobody does (a new cluster) and take our own
/// watermark from the clock again.
const OWN_STRANGERS: usize = 3;

/// Rounds after which we believe it anyway.
const OWN_PATIENCE_ROUNDS: u64 = 10;

/// A replica that started over (wiped, or restored from its own writes
/// alone) and resynchronised against a peer that never saw its writes:
/// until another peer vouches for how far it had written, or enough peers
/// show they never saw it either, its own watermark is not taken from the
/// clock. Otherwise peers that hold its lost writes would never send them
/// back.
#[derive(Debug)]
pub(super) struct OwnUnknown {
    /// Peers that answered with no watermark for us.
    strangers: BTreeSet<NodeId>,
    /// The furthest any peer vouched we had written: pulled back up to
    /// here, our own watermark is ours again.
    floor: Option<Timestamp>,
    since_round: u64,
}

/// A resynchronisation in progress: watermarks were dropped and are being
/// pulled back up to what the peer that triggered it knew.
#[derive(Debug)]
pub(super) struct Resync {
    pub(super) target: Origins,
    /// Until our watermark for ourselves is back here, it is not taken from
    /// the clock: the peer holds writes of ours we dropped.
    pub(super) own_floor: Option<Timestamp>,
    pub(super) since_round: u64,
    /// The era and watermarks of each peer whose exchange with us is
    /// open, as its opener listed them: its closing sync lists only some.
    pub(super) openers: HashMap<NodeId, (u32, Vec<Timestamp>)>,
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
        let theirs = Origins::of_peer(theirs);
        // How far we have seen an origin: its watermark, or, without one
        // (a resynchronisation that never finished, a peer cut off before
        // it was heard from), the newest entry of it we hold.
        let seen = |o: NodeId| self.watermarks.get(o).or_else(|| self.newest.get(o));
        let behind = theirs.iter().any(|w| {
            w.node != me
                && w.physical_ms <= limit
                && seen(w.node).is_some_and(|m| w.physical_ms > m.physical_ms.saturating_add(grace))
        });
        // A peer back from a long absence makes us look behind on its own
        // origin, but it lags us on the others: it cannot stand in for
        // what a resynchronisation drops, and pulling from it would bring
        // back what was deleted while it was away.
        if !(self.unsynced || behind && self.covers(&theirs, &self.watermarks, false)) {
            return false;
        }
        tracing::info!(node = %me, unsynced = self.unsynced, "resynchronising");
        let started_over = self.unsynced;
        let mut target: Origins = theirs
            .iter()
            .filter(|w| w.physical_ms <= limit)
            .copied()
            .collect();
        for upto in target.as_slice() {
            let origin = upto.node;
            let seen: Vec<String> = self
                .by_origin
                .range((origin, TS_MIN)..=(origin, *upto))
                .map(|(_, k)| k.clone())
                .collect();
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
        let own_floor = target.get(me);
        if own_floor.is_none() && started_over {
            self.own_unknown = Some(OwnUnknown {
                strangers: BTreeSet::new(),
                floor: None,
                since_round: self.round,
            });
        }
        target.remove(me);
        self.resync = Some(Resync {
            target,
            own_floor,
            since_round: self.round,
            openers: HashMap::new(),
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
    pub(super) fn covers(&self, theirs: &[Timestamp], ours: &Origins, new_ok: bool) -> bool {
        let me = self.cfg.node;
        let grace = self.cfg.tombstone_grace_ms;
        let theirs = Origins::of_peer(theirs);
        let ours = ours.as_slice().iter().copied();
        side_by_side(ours, theirs.iter().copied()).all(|(o, mine, t)| match mine {
            Some(mine) if o != me => t.map_or(new_ok, |t| {
                t.physical_ms.saturating_add(grace) >= mine.physical_ms
            }),
            _ => true,
        })
    }

    /// Notes a peer's watermarks while our own history is unknown: one
    /// for us is a floor to pull our own writes back up to (like any
    /// other origin's), enough peers without one end the wait, and so do
    /// [`OWN_PATIENCE_ROUNDS`].
    pub(super) fn own_progress(&mut self, from: Option<(NodeId, &[Timestamp])>) {
        let me = self.cfg.node;
        // A peer whose clock is ahead vouches only up to the drift bound,
        // as far as `advance` would move our watermark.
        let cap = Timestamp {
            physical_ms: self.now_ms.saturating_add(self.cfg.max_drift_ms),
            logical: u32::MAX,
            node: me,
        };
        let Some(u) = &mut self.own_unknown else {
            return;
        };
        if let Some((peer, theirs)) = from {
            match theirs.iter().find(|w| w.node == me) {
                Some(w) => u.floor = u.floor.max(Some((*w).min(cap))),
                None => {
                    u.strangers.insert(peer);
                }
            }
        }
        let mine = self.watermarks.get(me);
        let vouched = u.floor.is_some_and(|f| mine.is_some_and(|m| m >= f));
        let strangers =
            u.floor.is_none() && u.strangers.len() >= OWN_STRANGERS.min(self.peers.len());
        let waited = self.round >= u.since_round + OWN_PATIENCE_ROUNDS;
        if vouched || strangers || waited {
            self.own_unknown = None;
        }
    }

    pub(super) fn resync_progress(&mut self) {
        let me = self.cfg.node;
        let Some(r) = &mut self.resync else { return };
        if let Some(floor) = r.own_floor {
            if self.watermarks.get(me).is_some_and(|w| w >= floor) {
                r.own_floor = None;
            }
        }
        let caught_up = r
            .target
            .as_slice()
            .iter()
            .all(|t| self.watermarks.get(t.node).is_some_and(|w| w >= *t));
        if caught_up && r.own_floor.is_none() {
            self.resync = None;
        }
    }
}
