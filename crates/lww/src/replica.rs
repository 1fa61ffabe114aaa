//! The sans-IO replica: its state, the merge rule, local writes, rounds and
//! tombstone collection. Anti-entropy is in `replica/exchange.rs`,
//! resynchronisation in `replica/resync.rs`.
//! No clock reads, no sockets, no OS randomness: every call takes the wall
//! time, and the only randomness is a generator seeded by the config.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};

use bytes::Bytes;
use multinode_wire::{Beyond, HybridClock, LwwEntry, LwwMessage, NodeId, Timestamp};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

mod beyond;
mod exchange;
mod origins;
mod resync;
mod unconfirmed;

use origins::Origins;
use resync::{OwnUnknown, Resync};
use unconfirmed::Sent;

use crate::liveness::{Detector, PeerStatus};
use crate::offsets::Offsets;
use crate::{ClockOffset, LwwError, ReplicaConfig};

/// The `answers` of a sync that answers no digest: a round opener that
/// pushes recent writes. No era takes this value.
pub const NO_DIGEST: u32 = u32::MAX;

/// Rounds a changed key is pushed to the peers a round opens with.
const HOT_ROUNDS: u64 = 1;

/// Changed keys remembered for pushing.
const HOT_MAX: usize = 4096;

/// Changed keys pushed to each peer a round opens with, newest first. A
/// few new writes travel as a rumour, ahead of the digests; pushed blindly
/// (the opener does not know what the peer holds), a burst would reach
/// each replica from every peer that opens a round with it, so the rest
/// of a burst travels by sync, where each peer is sent what it lacks.
const HOT_PUSH_MAX: usize = 128;

/// An exchange is expected to wait up to this many times the smoothed
/// answer time; it is retried, and stops holding a place in the fanout,
/// only after.
const RETRY_PATIENCE: u64 = 3;

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

/// One last-write-wins replica. See the crate docs for the protocol.
#[derive(Debug)]
pub struct Replica {
    cfg: ReplicaConfig,
    clock: HybridClock,
    now_ms: u64,
    round: u64,
    rng: ChaCha8Rng,
    entries: HashMap<String, LwwEntry>,
    /// Every entry's key, by its origin, then its version: one tree, not
    /// one per origin (a large cluster has as many origins as nodes).
    by_origin: BTreeMap<(NodeId, Timestamp), String>,
    /// The newest version held of each origin: the last of its stretch
    /// of `by_origin`, walked beside a peer's watermarks.
    newest: Origins,
    tombstones: BTreeMap<Timestamp, String>,
    watermarks: Origins,
    /// Our `beyond` list while no entry and no watermark changed.
    beyond: Option<Vec<Beyond>>,
    era: u32,
    peers: BTreeMap<NodeId, Detector>,
    inflight: BTreeSet<Timestamp>,
    hot: VecDeque<(u64, Timestamp, String)>,
    /// The peers this round opened an exchange with, and for each still
    /// waiting for its answer, when it was opened.
    opened: BTreeMap<NodeId, Option<u64>>,
    /// How long answers take, smoothed (an eighth of each new one).
    answer_ms: Option<u64>,
    /// What each peer was sent and has not confirmed yet.
    sent: Sent,
    retry_passes: u32,
    resync: Option<Resync>,
    own_unknown: Option<OwnUnknown>,
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
            newest: Origins::default(),
            tombstones: BTreeMap::new(),
            watermarks: Origins::default(),
            beyond: None,
            era: 0,
            peers: BTreeMap::new(),
            inflight: BTreeSet::new(),
            hot: VecDeque::new(),
            opened: BTreeMap::new(),
            answer_ms: None,
            sent: Sent::default(),
            retry_passes: 0,
            resync: None,
            own_unknown: None,
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

    /// Adds peers as [`Self::add_peer`] adds one; into an empty table, in
    /// one pass (a replica joining a cluster of a thousand adds them all).
    pub fn add_peers(&mut self, peers: impl IntoIterator<Item = NodeId>) {
        let (me, now, prior) = (self.cfg.node, self.now_ms, self.cfg.round_interval_ms);
        let peers = peers.into_iter().filter(|p| *p != me);
        if self.peers.is_empty() {
            self.peers = peers.map(|p| (p, Detector::new(now, prior))).collect();
        } else {
            for p in peers {
                self.peers
                    .entry(p)
                    .or_insert_with(|| Detector::new(now, prior));
            }
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

    /// Whether a resynchronisation is pulling state back (or this replica
    /// is still learning how far it had written before it started over).
    pub fn is_resyncing(&self) -> bool {
        self.resync.is_some() || self.unsynced || self.own_unknown.is_some()
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
        self.watermarks.get(origin)
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
    ///
    /// It also starts a new watermark era, from the time: a sync on its
    /// way to the previous process, answering one of its digests, must not
    /// pass for an answer to this one's (it would move watermarks over
    /// entries this process no longer holds, for good).
    pub fn restore(&mut self, entries: impl IntoIterator<Item = LwwEntry>, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        // Never NO_DIGEST (u32::MAX): the remainder stays below it.
        self.era = (now_ms % u64::from(NO_DIGEST)) as u32;
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
                // What it dropped did not all come back, and with its
                // watermarks gone it cannot tell that it lags: it starts
                // over at the next digest.
                self.unsynced = true;
            }
        }
        self.own_progress(None);
        // Exchanges still expected to be answered (not given up on, and
        // open for less than the patience, at most two round intervals)
        // take their place in this round's fanout: a machine too busy to
        // answer within a round is given fewer new exchanges, not more.
        let limit = self
            .patience()
            .min(self.cfg.round_interval_ms.saturating_mul(2));
        self.opened
            .retain(|_, w| w.is_some_and(|at| now_ms.saturating_sub(at) < limit));
        let k = self.cfg.fanout.of(self.peers.len());
        let k = k.saturating_sub(self.opened.len());
        let ids = self.unopened();
        let chosen = sample(&mut self.rng, ids, k);
        self.retry_passes = 0;
        round.messages = self.open(chosen);
        round
    }

    /// Retries this round's unanswered exchanges, each with a peer the
    /// round has not contacted; at most [`ReplicaConfig::retries`] times a
    /// round. An exchange is answered when the peer's reply arrives (the
    /// rest of it may still be lost), so without loss nothing is retried.
    /// Nor is an exchange open for less than three times the
    /// smoothed answer time: on a machine too busy to answer quickly, a
    /// retry would only add an exchange to the backlog that delays them.
    pub fn retry(&mut self, now_ms: u64) -> Outgoing {
        self.now_ms = self.now_ms.max(now_ms);
        if self.retry_passes >= self.cfg.retries {
            return Outgoing::new();
        }
        self.retry_passes += 1;
        let patience = self.patience();
        let mut unanswered = 0;
        for waiting in self.opened.values_mut() {
            if waiting.is_some_and(|at| now_ms.saturating_sub(at) >= patience) {
                // Given up on: a late answer is still taken in.
                *waiting = None;
                unanswered += 1;
            }
        }
        let fresh = self.unopened();
        let chosen = sample(&mut self.rng, fresh, unanswered);
        self.stats.retries += chosen.len() as u64;
        self.open(chosen)
    }

    /// The peers no exchange of this round (or one still expected from the
    /// last) is open with, in id order.
    fn unopened(&self) -> Vec<NodeId> {
        (self.peers.keys())
            .filter(|p| !self.opened.contains_key(p))
            .copied()
            .collect()
    }

    /// How long an exchange is expected to wait for its answer: three times
    /// the smoothed answer time (none measured yet: no time at all).
    fn patience(&self) -> u64 {
        self.answer_ms.unwrap_or(0).saturating_mul(RETRY_PATIENCE)
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
            .insert((e.version.node, e.version), e.key.clone());
        self.beyond = None;
        if self
            .newest
            .get(e.version.node)
            .is_none_or(|n| e.version > n)
        {
            self.newest.set(e.version);
        }
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
        let origin = e.version.node;
        self.by_origin.remove(&(origin, e.version));
        self.beyond = None;
        if self.newest.get(origin) == Some(e.version) {
            match origin_range(&self.by_origin, origin, None).next_back() {
                Some((&(_, t), _)) => self.newest.set(t),
                None => self.newest.remove(origin),
            }
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

/// The least and the greatest timestamps: the bounds of an origin's
/// stretch of the index.
const TS_MIN: Timestamp = Timestamp {
    physical_ms: 0,
    logical: 0,
    node: NodeId(0),
};
const TS_MAX: Timestamp = Timestamp {
    physical_ms: u64::MAX,
    logical: u32::MAX,
    node: NodeId(u64::MAX),
};

/// The index entries of `origin` above `from` (all of them without it).
fn origin_range(
    index: &BTreeMap<(NodeId, Timestamp), String>,
    origin: NodeId,
    from: Option<Timestamp>,
) -> std::collections::btree_map::Range<'_, (NodeId, Timestamp), String> {
    use std::ops::Bound::{Excluded, Included};
    let lo = match from {
        Some(t) => Excluded((origin, t)),
        None => Included((origin, TS_MIN)),
    };
    index.range((lo, Included((origin, TS_MAX))))
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
