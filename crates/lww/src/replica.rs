//! The sans-IO replica: state, merge, anti-entropy, tombstones, liveness.
//! No clock reads, no sockets, no OS randomness: every call takes the wall
//! time, and the only randomness is a generator seeded by the config.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::ops::Bound;

use bytes::Bytes;
use multinode_wire::{HybridClock, LwwEntry, LwwMessage, NodeId, Timestamp};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::liveness::{Detector, PeerStatus};
use crate::offsets::Offsets;
use crate::{ClockOffset, LwwError, ReplicaConfig};

/// The `answers` of a sync that answers no digest: a round opener that
/// pushes recent writes. No epoch takes this value.
pub const NO_DIGEST: u32 = u32::MAX;

/// Rounds a changed key is pushed to the peers a round opens with.
const HOT_ROUNDS: u64 = 3;

/// Changed keys remembered for pushing.
const HOT_MAX: usize = 4096;

/// Messages to send: `(to, message)`.
pub type Outgoing = Vec<(NodeId, LwwMessage)>;

/// What a [`Replica::tick`] asks the caller to do.
#[derive(Debug, Default)]
pub struct Round {
    /// Digests that open this round, one per chosen peer.
    pub messages: Outgoing,
    /// Keys whose tombstones were collected (a persistent store drops them).
    pub collected: Vec<String>,
}

/// What a [`Replica::receive`] produced.
#[derive(Debug, Default)]
pub struct Received {
    /// Answers to send.
    pub replies: Outgoing,
    /// Entries that won their merge and changed this replica's state.
    pub changes: Vec<LwwEntry>,
}

/// A replica's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaStats {
    /// Rounds opened.
    pub rounds: u64,
    /// Messages produced (digests and syncs).
    pub messages_sent: u64,
    /// Their encoded size (without the frame and PDU headers).
    pub bytes_sent: u64,
    /// Entries carried by the syncs sent.
    pub entries_sent: u64,
    /// Messages taken in.
    pub messages_received: u64,
    /// Their encoded size.
    pub bytes_received: u64,
    /// Entries received.
    pub entries_received: u64,
    /// Received entries that won their merge.
    pub entries_applied: u64,
    /// Received entries or watermarks refused: for a version too far
    /// ahead, or (while resynchronising) from a peer lagging the target.
    pub rejected: u64,
    /// Resynchronisations started.
    pub resyncs: u64,
    /// Exchanges opened again with another peer because the first went
    /// unanswered.
    pub retries: u64,
    /// Tombstones collected.
    pub collected: u64,
}

/// A resynchronisation in progress: watermarks were dropped and are being
/// pulled back up to what the peer that triggered it knew.
#[derive(Debug)]
struct Resync {
    target: BTreeMap<NodeId, Timestamp>,
    /// Until our watermark for ourselves is back here, it is not taken from
    /// the clock: the peer holds writes of ours we dropped.
    own_floor: Option<Timestamp>,
    since_round: u64,
}

/// One last-write-wins replica. See the crate docs for the protocol.
#[derive(Debug)]
pub struct Replica {
    cfg: ReplicaConfig,
    clock: HybridClock,
    now_ms: u64,
    round: u64,
    rng: ChaCha8Rng,
    entries: HashMap<String, LwwEntry>,
    by_origin: BTreeMap<NodeId, BTreeMap<Timestamp, String>>,
    tombstones: BTreeMap<Timestamp, String>,
    watermarks: BTreeMap<NodeId, Timestamp>,
    epoch: u32,
    peers: BTreeMap<NodeId, Detector>,
    inflight: BTreeSet<Timestamp>,
    hot: VecDeque<(u64, Timestamp, String)>,
    /// The peers this round opened an exchange with, and whether each is
    /// still waiting for its answer.
    opened: BTreeMap<NodeId, bool>,
    retry_passes: u32,
    resync: Option<Resync>,
    unsynced: bool,
    live: usize,
    fingerprint: u64,
    offsets: Offsets,
    stats: ReplicaStats,
}

impl Replica {
    /// A replica with no state; the config is checked first.
    pub fn new(cfg: ReplicaConfig) -> Result<Self, LwwError> {
        cfg.validate()?;
        Ok(Self {
            clock: HybridClock::new(cfg.node, cfg.max_drift_ms),
            now_ms: 0,
            round: 0,
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            entries: HashMap::new(),
            by_origin: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            watermarks: BTreeMap::new(),
            epoch: 0,
            peers: BTreeMap::new(),
            inflight: BTreeSet::new(),
            hot: VecDeque::new(),
            opened: BTreeMap::new(),
            retry_passes: 0,
            resync: None,
            // A new replica cannot tell a fresh start from a restart that
            // lost its state: it learns its own history from its first peer.
            unsynced: true,
            live: 0,
            fingerprint: 0,
            offsets: Offsets::default(),
            stats: ReplicaStats::default(),
            cfg,
        })
    }

    /// This replica's node id.
    pub fn node(&self) -> NodeId {
        self.cfg.node
    }

    /// The configuration.
    pub fn config(&self) -> &ReplicaConfig {
        &self.cfg
    }

    /// Adds a peer to gossip with (its liveness is tracked from now on).
    pub fn add_peer(&mut self, peer: NodeId) {
        if peer != self.cfg.node {
            let (now, prior) = (self.now_ms, self.cfg.round_interval_ms);
            self.peers
                .entry(peer)
                .or_insert_with(|| Detector::new(now, prior));
        }
    }

    /// Stops gossiping with a peer. Its writes stay.
    pub fn remove_peer(&mut self, peer: NodeId) {
        self.peers.remove(&peer);
        self.offsets.forget(peer);
    }

    /// This replica's clock against the cluster's median, once a peer's
    /// clock is measured (every message carries its send time).
    pub fn clock_offset(&self) -> Option<ClockOffset> {
        self.offsets.ours()
    }

    /// Whether this replica refuses writes for its clock: at least half of
    /// its cluster is measured more than [`Self::clock_limit_ms`] away, on
    /// one side.
    pub fn clock_is_off(&self) -> Option<ClockOffset> {
        self.offsets
            .off(self.peers.len() + 1, self.clock_limit_ms())
    }

    /// The largest offset from the cluster's clock at which this replica
    /// stamps writes: half the drift bound, so any two replicas that stamp
    /// writes are within the bound of each other.
    pub fn clock_limit_ms(&self) -> u64 {
        self.cfg.max_drift_ms / 2
    }

    /// How far each measured peer's clock is ahead of ours, in ms.
    pub fn peer_clock_offsets(&self) -> &BTreeMap<NodeId, i64> {
        self.offsets.all()
    }

    /// The peers, in id order.
    pub fn peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.peers.keys().copied()
    }

    /// Each peer's liveness at `now_ms`.
    pub fn liveness(&self, now_ms: u64) -> BTreeMap<NodeId, PeerStatus> {
        self.peers
            .iter()
            .map(|(id, d)| {
                let phi = d.phi(now_ms);
                let status = if phi >= self.cfg.phi_dead {
                    PeerStatus::Dead
                } else if phi >= self.cfg.phi_suspect {
                    PeerStatus::Suspect
                } else {
                    PeerStatus::Alive
                };
                (*id, status)
            })
            .collect()
    }

    /// The live value of `key`.
    pub fn get(&self, key: &str) -> Option<&Bytes> {
        self.entries.get(key).and_then(|e| e.value.as_ref())
    }

    /// The latest entry of `key`, tombstone included.
    pub fn entry(&self, key: &str) -> Option<&LwwEntry> {
        self.entries.get(key)
    }

    /// Live keys.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no key is live.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Every entry held, tombstones included, in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = &LwwEntry> + '_ {
        self.entries.values()
    }

    /// An order-independent hash of every entry (keys, versions, and values
    /// or tombstones): equal on two replicas that hold the same state. Two
    /// replicas that agree on every live value but hold different deletes
    /// of a key differ here, until the newer delete reaches both.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Whether a resynchronisation is pulling state back.
    pub fn is_resyncing(&self) -> bool {
        self.resync.is_some() || self.unsynced
    }

    /// The counters.
    pub fn stats(&self) -> &ReplicaStats {
        &self.stats
    }

    /// This replica's watermark for `origin`.
    pub fn watermark(&self, origin: NodeId) -> Option<Timestamp> {
        if origin == self.cfg.node {
            return self.own_watermark();
        }
        self.watermarks.get(&origin).copied()
    }

    /// Writes `value` under `key` at wall time `now_ms`; returns the entry.
    pub fn set(&mut self, key: &str, value: Bytes, now_ms: u64) -> Result<LwwEntry, LwwError> {
        let e = self.prepare(key, Some(value), now_ms)?;
        self.commit(&e);
        Ok(e)
    }

    /// Deletes `key` at wall time `now_ms` by writing a tombstone.
    pub fn delete(&mut self, key: &str, now_ms: u64) -> Result<LwwEntry, LwwError> {
        let e = self.prepare(key, None, now_ms)?;
        self.commit(&e);
        Ok(e)
    }

    /// Stamps a write (`None` deletes) without applying it, so a caller can
    /// make it durable first; then [`commit`](Self::commit) or
    /// [`abandon`](Self::abandon) it. Until then the replica's watermark
    /// for itself stays below it, so no peer is told it has been sent.
    pub fn prepare(
        &mut self,
        key: &str,
        value: Option<Bytes>,
        now_ms: u64,
    ) -> Result<LwwEntry, LwwError> {
        self.now_ms = self.now_ms.max(now_ms);
        let limit_ms = self.clock_limit_ms();
        if let Some(o) = self.offsets.off(self.peers.len() + 1, limit_ms) {
            return Err(LwwError::ClockOffset {
                ahead_ms: o.ahead_ms,
                peers: o.peers,
                limit_ms,
            });
        }
        let e = LwwEntry {
            key: key.to_owned(),
            value,
            version: self.clock.now(now_ms),
        };
        let len = e.encoded_len();
        if len > self.cfg.max_entry() {
            return Err(LwwError::TooLarge {
                len,
                max: self.cfg.max_entry(),
            });
        }
        self.inflight.insert(e.version);
        Ok(e)
    }

    /// Applies a prepared write; `false` if a newer write already won.
    pub fn commit(&mut self, e: &LwwEntry) -> bool {
        self.inflight.remove(&e.version);
        self.merge(e.clone())
    }

    /// Forgets a prepared write that could not be made durable.
    pub fn abandon(&mut self, e: &LwwEntry) {
        self.inflight.remove(&e.version);
    }

    /// Loads entries a persistent store kept. Like every new replica, it
    /// resynchronises with the first peer it hears from: it cannot know
    /// which deletes it missed while it was down, nor which of its own
    /// writes it lost.
    pub fn restore(&mut self, entries: impl IntoIterator<Item = LwwEntry>, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        for e in entries {
            let at = now_ms.max(e.version.physical_ms);
            // Within the drift bound by construction: never refused.
            let _ = self.clock.observe(e.version, at);
            self.merge(e);
        }
    }

    /// Opens a round at wall time `now_ms`: collects old tombstones and
    /// sends a digest to the peers the fanout picks.
    pub fn tick(&mut self, now_ms: u64) -> Round {
        self.now_ms = self.now_ms.max(now_ms);
        self.round += 1;
        self.stats.rounds += 1;
        self.clock.now(now_ms);
        for d in self.peers.values_mut() {
            d.start(now_ms);
        }
        let mut round = Round::default();
        self.collect(&mut round.collected);
        if let Some(r) = &self.resync {
            if self.round - r.since_round > self.cfg.resync_rounds {
                tracing::warn!(node = %self.cfg.node, "resynchronisation incomplete: giving up on it");
                self.resync = None;
            }
        }
        let ids: Vec<NodeId> = self.peers.keys().copied().collect();
        let k = self.cfg.fanout.of(ids.len());
        let chosen = sample(&mut self.rng, ids, k);
        self.opened.clear();
        self.retry_passes = 0;
        round.messages = self.open(chosen);
        round
    }

    /// Retries this round's unanswered exchanges, each with a peer the
    /// round has not contacted; at most [`ReplicaConfig::retries`] times a
    /// round. An exchange is answered when the peer's reply arrives (the
    /// rest of it may still be lost), so without loss nothing is retried.
    pub fn retry(&mut self, now_ms: u64) -> Outgoing {
        self.now_ms = self.now_ms.max(now_ms);
        if self.retry_passes >= self.cfg.retries {
            return Outgoing::new();
        }
        self.retry_passes += 1;
        let mut unanswered = 0;
        for waiting in self.opened.values_mut() {
            if *waiting {
                // Given up on: a late answer is still taken in.
                *waiting = false;
                unanswered += 1;
            }
        }
        let fresh: Vec<NodeId> = self
            .peers
            .keys()
            .filter(|p| !self.opened.contains_key(p))
            .copied()
            .collect();
        let chosen = sample(&mut self.rng, fresh, unanswered);
        self.stats.retries += chosen.len() as u64;
        self.open(chosen)
    }

    /// Opens an exchange with each of `peers`: a digest, or a sync when
    /// recent changes ride along with it (rumour mongering over
    /// anti-entropy: one lost message then delays them less).
    fn open(&mut self, peers: Vec<NodeId>) -> Outgoing {
        if peers.is_empty() {
            return Outgoing::new();
        }
        let watermarks = self.digest();
        let hot = self.hot(&watermarks);
        let mut out = Outgoing::with_capacity(peers.len());
        for to in peers {
            let hot: Vec<LwwEntry> = match self.refused_above(to) {
                Some(limit) => hot
                    .iter()
                    .filter(|e| e.version.physical_ms <= limit)
                    .cloned()
                    .collect(),
                None => hot.clone(),
            };
            let m = if hot.is_empty() {
                LwwMessage::Digest {
                    epoch: self.epoch,
                    watermarks: watermarks.clone(),
                    sent_ms: self.now_ms,
                }
            } else {
                LwwMessage::Sync {
                    reply: true,
                    epoch: self.epoch,
                    answers: NO_DIGEST,
                    watermarks: watermarks.clone(),
                    entries: hot,
                    partial: Vec::new(),
                    sent_ms: self.now_ms,
                }
            };
            self.count_sent(&m);
            self.opened.insert(to, true);
            out.push((to, m));
        }
        out
    }

    /// Takes in a message from `from` at wall time `now_ms`.
    pub fn receive(&mut self, from: NodeId, msg: LwwMessage, now_ms: u64) -> Received {
        self.now_ms = self.now_ms.max(now_ms);
        self.stats.messages_received += 1;
        self.stats.bytes_received += msg.encoded_len() as u64;
        if let Some(d) = self.peers.get_mut(&from) {
            d.heartbeat(now_ms);
            let sent_ms = match &msg {
                LwwMessage::Digest { sent_ms, .. } | LwwMessage::Sync { sent_ms, .. } => *sent_ms,
            };
            let (me, bound) = (self.cfg.node, self.cfg.max_drift_ms);
            self.offsets.observe(me, from, sent_ms, now_ms, bound);
        }
        let mut out = Received::default();
        match msg {
            LwwMessage::Digest {
                epoch, watermarks, ..
            } => {
                self.maybe_resync(&watermarks);
                let reply = self.sync(from, true, epoch, &watermarks);
                out.replies.push((from, reply));
            }
            LwwMessage::Sync {
                reply,
                epoch,
                answers,
                watermarks,
                entries,
                partial,
                ..
            } => {
                if reply && answers != NO_DIGEST {
                    if let Some(waiting) = self.opened.get_mut(&from) {
                        *waiting = false;
                    }
                }
                let reset = self.maybe_resync(&watermarks);
                // Resynchronising, from a peer that has not seen what the
                // dropped entries were: what it holds may have been deleted
                // since. Its entries (and watermarks) wait until it has
                // caught up; the exchange goes on.
                let stale = self
                    .resync
                    .as_ref()
                    .is_some_and(|r| !self.covers(&watermarks, &r.target, true));
                let rejected = if stale {
                    self.stats.rejected += entries.len() as u64;
                    BTreeSet::new()
                } else {
                    self.apply(entries, &mut out.changes)
                };
                if answers == NO_DIGEST {
                    // A round opener: answer it as a digest.
                    let m = self.sync(from, true, epoch, &watermarks);
                    out.replies.push((from, m));
                    return out;
                }
                if !reset && !stale && answers == self.epoch {
                    self.advance(&watermarks, &partial, &rejected);
                }
                if reply {
                    let m = self.sync(from, false, epoch, &watermarks);
                    out.replies.push((from, m));
                }
            }
        }
        out
    }

    /// Our watermark for ourselves: the clock, held below any write still
    /// being made durable, or (while resynchronising) what was pulled back.
    fn own_watermark(&self) -> Option<Timestamp> {
        let me = self.cfg.node;
        if self.resync.as_ref().is_some_and(|r| r.own_floor.is_some()) {
            return self.watermarks.get(&me).copied();
        }
        Some(match self.inflight.first() {
            Some(t) => before(*t),
            None => self.clock.last(),
        })
    }

    fn digest(&mut self) -> Vec<Timestamp> {
        let me = self.cfg.node;
        match self.own_watermark() {
            Some(w) => {
                self.watermarks.insert(me, w);
            }
            None => {
                self.watermarks.remove(&me);
            }
        }
        self.watermarks.values().copied().collect()
    }

    /// The entries changed in the last few rounds, newest first, within an
    /// eighth of the delta budget.
    fn hot(&mut self, watermarks: &[Timestamp]) -> Vec<LwwEntry> {
        let oldest = self.round.saturating_sub(HOT_ROUNDS);
        while self.hot.front().is_some_and(|(r, _, _)| *r < oldest) {
            self.hot.pop_front();
        }
        // An eighth of the budget: pushes duplicate what most peers have.
        let fixed = 2 + 5 + 5 + stamps_len(watermarks) + 9 + 9 + 9;
        let mut left = (self.cfg.delta_budget / 8).min(self.cfg.delta_budget.saturating_sub(fixed));
        let mut out = Vec::new();
        for (_, version, key) in self.hot.iter().rev() {
            let Some(e) = self.entries.get(key).filter(|e| e.version == *version) else {
                continue;
            };
            let len = e.encoded_len();
            if len > left {
                break;
            }
            left -= len;
            out.push(e.clone());
        }
        out
    }

    /// The physical time above which `peer` refuses a version (its clock
    /// plus the drift bound, by its last measured offset), if known.
    fn refused_above(&self, peer: NodeId) -> Option<u64> {
        let offset = self.offsets.of(peer)?;
        let theirs = self.now_ms.saturating_add_signed(offset);
        Some(theirs.saturating_add(self.cfg.max_drift_ms))
    }

    /// A sync for `to`, whose watermarks (of epoch `answers`) are `theirs`.
    fn sync(&mut self, to: NodeId, reply: bool, answers: u32, theirs: &[Timestamp]) -> LwwMessage {
        let watermarks = self.digest();
        let fixed = 2 + 5 + 5 + stamps_len(&watermarks) * 2 + 9 + 9 + 9;
        let room = self.cfg.delta_budget.saturating_sub(fixed);
        let refused_above = self.refused_above(to);
        let (entries, partial) = self.delta(theirs, room, refused_above);
        let m = LwwMessage::Sync {
            reply,
            epoch: self.epoch,
            answers,
            watermarks,
            entries,
            partial,
            sent_ms: self.now_ms,
        };
        self.count_sent(&m);
        m
    }

    /// The entries a peer with watermarks `theirs` lacks, within `room`
    /// bytes: origins take turns, one entry each, from a seeded starting
    /// origin, so a large backlog of one origin never starves the others.
    /// An origin stops short (as at the budget) at its first version past
    /// `refused_above`: the peer would refuse it, and sending it again each
    /// round would cost bytes and change nothing.
    fn delta(
        &mut self,
        theirs: &[Timestamp],
        room: usize,
        refused_above: Option<u64>,
    ) -> (Vec<LwwEntry>, Vec<Timestamp>) {
        let theirs: HashMap<NodeId, Timestamp> = theirs.iter().map(|t| (t.node, *t)).collect();
        let mut cursors = Vec::new();
        // Everything held above their watermark: up to ours it completes a
        // range; past ours (writes pushed to us ahead of our watermark) it
        // rides along, vouched for by nothing.
        for (origin, index) in &self.by_origin {
            let from = theirs.get(origin).copied();
            let lo = from.map_or(Bound::Unbounded, Bound::Excluded);
            let mut range = index.range((lo, Bound::Unbounded)).peekable();
            if range.peek().is_some() {
                cursors.push((*origin, from, range, None::<Timestamp>));
            }
        }
        let mut entries = Vec::new();
        let mut partial = Vec::new();
        if cursors.is_empty() {
            return (entries, partial);
        }
        let mut left = room;
        let mut turn = self.rng.random_range(0..cursors.len());
        let mut open = cursors.len();
        let mut done = vec![false; cursors.len()];
        while open > 0 {
            let i = turn % cursors.len();
            turn += 1;
            if done[i] {
                continue;
            }
            let (_, _, range, last) = &mut cursors[i];
            let Some((version, key)) = range.next() else {
                done[i] = true;
                open -= 1;
                continue;
            };
            let e = &self.entries[key];
            let len = e.encoded_len();
            let refused = refused_above.is_some_and(|limit| version.physical_ms > limit);
            if len > left || refused {
                done[i] = true;
                open -= 1;
                // Cut short: this origin's range ends at the last entry
                // sent, and never past our own watermark.
                let (origin, from, _, last) = &cursors[i];
                if let Some(mine) = self.watermarks.get(origin) {
                    let reached = last.or(*from).unwrap_or(Timestamp {
                        physical_ms: 0,
                        logical: 0,
                        node: *origin,
                    });
                    partial.push(reached.min(*mine));
                }
                continue;
            }
            left -= len;
            *last = Some(*version);
            entries.push(e.clone());
        }
        (entries, partial)
    }

    fn count_sent(&mut self, m: &LwwMessage) {
        self.stats.messages_sent += 1;
        self.stats.bytes_sent += m.encoded_len() as u64;
        if let LwwMessage::Sync { entries, .. } = m {
            self.stats.entries_sent += entries.len() as u64;
        }
    }

    /// Merges received entries; returns the origins some of whose entries
    /// were refused, whose watermarks must then not move.
    fn apply(&mut self, entries: Vec<LwwEntry>, changes: &mut Vec<LwwEntry>) -> BTreeSet<NodeId> {
        let limit = self.now_ms.saturating_add(self.cfg.max_drift_ms);
        let mut rejected = BTreeSet::new();
        let mut newest: Option<Timestamp> = None;
        for e in entries {
            self.stats.entries_received += 1;
            if e.version.physical_ms > limit {
                self.stats.rejected += 1;
                rejected.insert(e.version.node);
                continue;
            }
            newest = newest.max(Some(e.version));
            if self.merge(e.clone()) {
                self.stats.entries_applied += 1;
                changes.push(e);
            }
        }
        if let Some(v) = newest {
            // Checked against the drift bound above: never refused.
            let _ = self.clock.observe(v, self.now_ms);
        }
        rejected
    }

    /// Moves watermarks up to a sync's (or its `partial` ones).
    fn advance(
        &mut self,
        theirs: &[Timestamp],
        partial: &[Timestamp],
        rejected: &BTreeSet<NodeId>,
    ) {
        let me = self.cfg.node;
        // Both lists come from the peer: look up, never scan, per watermark.
        let partial: HashMap<NodeId, Timestamp> = partial.iter().map(|p| (p.node, *p)).collect();
        let limit = self.now_ms.saturating_add(self.cfg.max_drift_ms);
        let own_pull = self.resync.as_ref().is_some_and(|r| r.own_floor.is_some());
        for w in theirs {
            let o = w.node;
            if rejected.contains(&o) || (o == me && !own_pull) {
                continue;
            }
            // A watermark past our clock plus the drift bound (a peer whose
            // clock is ahead) vouches for what we hold only up to that
            // bound: nothing of its origin past it was sent to us (the
            // sender stops there) or would have been taken. Moving that
            // far, not refusing the watermark outright, keeps the sender
            // from sending again each round what we already hold.
            let cap = Timestamp {
                physical_ms: limit,
                logical: u32::MAX,
                node: o,
            };
            let to = partial.get(&o).copied().unwrap_or(*w).min(cap);
            let cur = self.watermarks.get(&o).copied();
            if cur.is_none_or(|c| to > c) {
                self.watermarks.insert(o, to);
                if let Some(d) = self.peers.get_mut(&o) {
                    d.heartbeat(self.now_ms);
                }
            }
        }
        self.resync_progress();
    }

    /// Starts a resynchronisation if this replica is new (or restored) or
    /// lags `theirs` on some origin by more than the tombstone grace: it may
    /// have missed deletes whose tombstones are gone, so it drops what the
    /// peer provably saw and pulls it back.
    fn maybe_resync(&mut self, theirs: &[Timestamp]) -> bool {
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
        self.epoch = match self.epoch.wrapping_add(1) {
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
    fn covers(
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

    fn resync_progress(&mut self) {
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

    /// Drops tombstones older than 1.5× the grace period.
    fn collect(&mut self, collected: &mut Vec<String>) {
        let keep = self.cfg.tombstone_grace_ms.saturating_mul(3) / 2;
        let cutoff = self.now_ms.saturating_sub(keep);
        while let Some((v, _)) = self.tombstones.first_key_value() {
            if v.physical_ms >= cutoff {
                break;
            }
            let Some((_, key)) = self.tombstones.pop_first() else {
                break;
            };
            if let Some(e) = self.entries.remove(&key) {
                self.unindex(&e);
            }
            self.stats.collected += 1;
            collected.push(key);
        }
    }

    /// The merge rule: the higher version wins; equal versions are the same
    /// write. Returns whether the state changed.
    fn merge(&mut self, e: LwwEntry) -> bool {
        if let Some(cur) = self.entries.get(&e.key) {
            if cur.version >= e.version {
                return false;
            }
            let cur = cur.clone();
            self.unindex(&cur);
        }
        self.by_origin
            .entry(e.version.node)
            .or_default()
            .insert(e.version, e.key.clone());
        self.fingerprint = self.fingerprint.wrapping_add(entry_hash(&e));
        match &e.value {
            Some(_) => self.live += 1,
            None => {
                self.tombstones.insert(e.version, e.key.clone());
            }
        }
        if self.hot.len() == HOT_MAX {
            self.hot.pop_front();
        }
        self.hot.push_back((self.round, e.version, e.key.clone()));
        self.entries.insert(e.key.clone(), e);
        true
    }

    /// Removes `e`'s index entries and its share of the fingerprint (the
    /// caller removes or replaces the entry itself).
    fn unindex(&mut self, e: &LwwEntry) {
        if let Some(index) = self.by_origin.get_mut(&e.version.node) {
            index.remove(&e.version);
        }
        self.fingerprint = self.fingerprint.wrapping_sub(entry_hash(e));
        match &e.value {
            Some(_) => self.live -= 1,
            None => {
                self.tombstones.remove(&e.version);
            }
        }
    }
}

/// The greatest timestamp of the same node below `t`.
fn before(t: Timestamp) -> Timestamp {
    match t.logical.checked_sub(1) {
        Some(logical) => Timestamp { logical, ..t },
        None => Timestamp {
            physical_ms: t.physical_ms.saturating_sub(1),
            logical: u32::MAX,
            node: t.node,
        },
    }
}

fn stamps_len(v: &[Timestamp]) -> usize {
    9 + v.iter().map(|t| t.encoded_len()).sum::<usize>()
}

fn entry_hash(e: &LwwEntry) -> u64 {
    let mut h = DefaultHasher::new();
    e.key.hash(&mut h);
    e.version.hash(&mut h);
    e.value.as_deref().hash(&mut h);
    h.finish()
}

/// `k` distinct items of `items`, uniformly, by a partial Fisher–Yates.
fn sample(rng: &mut ChaCha8Rng, mut items: Vec<NodeId>, k: usize) -> Vec<NodeId> {
    let k = k.min(items.len());
    for i in 0..k {
        let j = rng.random_range(i..items.len());
        items.swap(i, j);
    }
    items.truncate(k);
    items
}
