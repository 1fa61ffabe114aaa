//! A deterministic simulator: N replicas in virtual time, their links
//! under the mesh's [`FaultModel`] (drop, duplicate, reorder, delay,
//! corrupt, cut, partition, heal, hold, release), crash and restart. It
//! counts rounds and the bytes the messages would take on the wire.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use multinode_gossip::corrupted;
use multinode_mesh::{Fate, FaultModel};
use multinode_wire::{ClusterFrame, FRAME_HEADER_LEN, GossipPdu, LwwEntry, LwwMessage, NodeId};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{LwwError, Replica, ReplicaConfig};

/// A message on its way: from, to, what.
type Parcel = (usize, usize, LwwMessage);

/// Totals of one round, or of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Rounds run.
    pub rounds: u64,
    /// Messages sent (delivered or not).
    pub messages: u64,
    /// Their size as TCP frames would take it (header and PDU tags included).
    pub bytes: u64,
    /// Messages lost: dropped or cut by the fault model, corrupted past
    /// decoding, or sent to a crashed replica.
    pub lost: u64,
}

impl std::ops::AddAssign for SimStats {
    fn add_assign(&mut self, o: Self) {
        self.rounds += o.rounds;
        self.messages += o.messages;
        self.bytes += o.bytes;
        self.lost += o.lost;
    }
}

/// N replicas, all peers of each other, in virtual time. Each round every
/// live replica ticks, then messages are delivered (answers included)
/// until none is left: a round is one push-pull exchange per chosen peer.
///
/// Every message passes the fault model ([`Simulator::faults`]) when it is
/// sent, replica `i` being node `NodeId(i)`: a delayed message is
/// delivered at the first delivery at or after its due time (this round's
/// retries, or a later round), later messages on its link waiting behind
/// it; a held link's messages are delivered, in order and ahead of the
/// rest, at the first delivery after its release; a corrupted message is
/// encoded, has its byte flipped, and is decoded again (lost when the
/// decoder refuses it).
#[derive(Debug)]
pub struct Simulator {
    replicas: Vec<Option<Replica>>,
    configs: Vec<ReplicaConfig>,
    durable: Vec<Vec<LwwEntry>>,
    now_ms: u64,
    round_ms: u64,
    faults: FaultModel,
    /// Delayed messages with their due time, in send order.
    delayed: Vec<(u64, Parcel)>,
    /// The latest due time given on each delaying link.
    last_due: HashMap<(usize, usize), u64>,
    held: HashMap<(usize, usize), VecDeque<LwwMessage>>,
    /// How far each replica's wall clock is from virtual time, in ms.
    skew: Vec<i64>,
    totals: SimStats,
}

impl Simulator {
    /// `n` replicas with node ids `0..n`, configured by `configure` (called
    /// on each default config), virtual time starting at 1,767,225,600,000
    /// ms and a round every `round_ms`.
    pub fn new(
        n: usize,
        seed: u64,
        round_ms: u64,
        configure: impl Fn(&mut ReplicaConfig),
    ) -> Result<Self, LwwError> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut configs = Vec::with_capacity(n);
        let mut replicas = Vec::with_capacity(n);
        for i in 0..n {
            let mut cfg = ReplicaConfig::new(NodeId(i as u64));
            cfg.round_interval_ms = round_ms;
            cfg.seed = rng.random();
            configure(&mut cfg);
            let mut r = Replica::new(cfg.clone())?;
            r.add_peers((0..n as u64).map(NodeId));
            configs.push(cfg);
            replicas.push(Some(r));
        }
        Ok(Self {
            durable: vec![Vec::new(); n],
            replicas,
            configs,
            faults: FaultModel::new(rng.random()),
            delayed: Vec::new(),
            last_due: HashMap::new(),
            held: HashMap::new(),
            now_ms: 1_767_225_600_000,
            round_ms: round_ms.max(1),
            skew: vec![0; n],
            totals: SimStats::default(),
        })
    }

    /// `node`'s index; a test's bug if outside the simulation.
    fn check(&self, node: NodeId) -> usize {
        let i = ix(node);
        assert!(
            i < self.replicas.len(),
            "node {node} outside the simulation of {}",
            self.replicas.len()
        );
        i
    }

    /// Virtual wall time.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Replicas, crashed ones included.
    pub fn len(&self) -> usize {
        self.replicas.len()
    }

    /// Whether there are no replicas.
    pub fn is_empty(&self) -> bool {
        self.replicas.is_empty()
    }

    /// Replica `node`, unless crashed (or outside the simulation).
    pub fn replica(&self, node: NodeId) -> Option<&Replica> {
        self.replicas.get(ix(node)).and_then(Option::as_ref)
    }

    /// Replica `node` to change, unless crashed (or outside the simulation).
    pub fn replica_mut(&mut self, node: NodeId) -> Option<&mut Replica> {
        self.replicas.get_mut(ix(node)).and_then(Option::as_mut)
    }

    /// The live replicas.
    pub fn live(&self) -> impl Iterator<Item = &Replica> + '_ {
        self.replicas.iter().flatten()
    }

    /// Totals since the start.
    pub fn totals(&self) -> SimStats {
        self.totals
    }

    /// Sets replica `node`'s wall clock `ms` ahead of virtual time (behind if
    /// negative), as a skewed machine clock would be.
    ///
    /// # Panics
    /// If `node` is outside the simulation.
    pub fn set_clock_offset(&mut self, node: NodeId, ms: i64) {
        let i = self.check(node);
        self.skew[i] = ms;
    }

    /// Replica `i`'s wall clock at virtual time `now`.
    fn clock(&self, i: usize, now: u64) -> u64 {
        now.saturating_add_signed(self.skew[i])
    }

    /// Writes at replica `node` (`None` if it is crashed, or it refused the
    /// write); the write is durable there, as with a persistent store.
    pub fn set(&mut self, node: NodeId, key: &str, value: &[u8]) -> Option<LwwEntry> {
        let i = self.check(node);
        let now = self.clock(i, self.now_ms);
        let e = self.replicas[i]
            .as_mut()?
            .set(key, Bytes::copy_from_slice(value), now)
            .ok()?;
        self.durable[i].push(e.clone());
        Some(e)
    }

    /// Deletes at replica `node`.
    pub fn delete(&mut self, node: NodeId, key: &str) -> Option<LwwEntry> {
        let i = self.check(node);
        let now = self.clock(i, self.now_ms);
        let e = self.replicas[i].as_mut()?.delete(key, now).ok()?;
        self.durable[i].push(e.clone());
        Some(e)
    }

    /// The fault model every message passes: its verbs set faults, its
    /// counters say what they did.
    pub fn faults(&mut self) -> &mut FaultModel {
        &mut self.faults
    }

    /// Crashes replica `node`: its memory is gone, its durable writes stay,
    /// and the messages still on their way to it (delayed or held) are
    /// lost. What it sent before the crash still arrives.
    ///
    /// # Panics
    /// If `node` is outside the simulation.
    pub fn crash(&mut self, node: NodeId) {
        let i = self.check(node);
        self.replicas[i] = None;
        let before = self.delayed.len();
        self.delayed.retain(|(_, (_, to, _))| *to != i);
        let mut lost = (before - self.delayed.len()) as u64;
        self.held.retain(|&(_, to), q| {
            if to == i {
                lost += q.len() as u64;
            }
            to != i
        });
        self.totals.lost += lost;
    }

    /// Restarts replica `node` from its durable writes (its own acknowledged
    /// ones), or empty if `wipe`.
    ///
    /// # Panics
    /// If `node` is outside the simulation.
    pub fn restart(&mut self, node: NodeId, wipe: bool) -> Result<(), LwwError> {
        let i = self.check(node);
        let mut r = Replica::new(self.configs[i].clone())?;
        r.add_peers((0..self.replicas.len() as u64).map(NodeId));
        if wipe {
            self.durable[i].clear();
        }
        r.restore(self.durable[i].iter().cloned(), self.clock(i, self.now_ms));
        self.replicas[i] = Some(r);
        Ok(())
    }

    /// Advances virtual time by `ms` without a round.
    pub fn advance(&mut self, ms: u64) {
        self.now_ms += ms;
    }

    /// Runs one round: every live replica ticks and the messages are
    /// delivered until none is left; then, as many times as the replicas'
    /// [`retries`](ReplicaConfig::retries) allow, each retries what went
    /// unanswered and those messages are delivered in turn.
    pub fn round(&mut self) -> SimStats {
        self.now_ms += self.round_ms;
        let now = self.now_ms;
        let mut stats = SimStats {
            rounds: 1,
            ..SimStats::default()
        };
        let mut queue = VecDeque::new();
        for i in 0..self.replicas.len() {
            let local = self.clock(i, now);
            if let Some(r) = self.replicas[i].as_mut() {
                let round = r.tick(local);
                for (to, m) in round.messages {
                    self.send(&mut queue, (i, to.0 as usize, m), now, &mut stats);
                }
            }
        }
        self.deliver(&mut queue, now, &mut stats);
        let passes = self.configs.iter().map(|c| c.retries).max().unwrap_or(0);
        for pass in 1..=passes {
            // Spaced through the round, as a node spaces them.
            let at = now + self.round_ms * u64::from(pass) / u64::from(passes + 1);
            let sent = stats.messages;
            for i in 0..self.replicas.len() {
                let local = self.clock(i, at);
                if let Some(r) = self.replicas[i].as_mut() {
                    for (to, m) in r.retry(local) {
                        self.send(&mut queue, (i, to.0 as usize, m), at, &mut stats);
                    }
                }
            }
            // Nobody retried (a retry the faults lost still counts: the
            // next pass may retry again) and nothing is on its way.
            if stats.messages == sent && self.delayed.is_empty() && self.held.is_empty() {
                break;
            }
            self.deliver(&mut queue, at, &mut stats);
        }
        self.totals += stats;
        stats
    }

    /// Puts a message on its link at `now`, as the fault model decides.
    fn send(&mut self, queue: &mut VecDeque<Parcel>, p: Parcel, now: u64, stats: &mut SimStats) {
        let (from, to, m) = p;
        stats.messages += 1;
        let len = m.frame_len();
        stats.bytes += len as u64;
        let link = (from, to);
        let fate = self
            .faults
            .decide_len(node(from), node(to), len - FRAME_HEADER_LEN);
        let d = match fate {
            Fate::Dropped => {
                stats.lost += 1;
                return;
            }
            Fate::Held => {
                self.held.entry(link).or_default().push_back(m);
                return;
            }
            Fate::Deliver(d) => d,
        };
        let m = match d.corrupt {
            None => m,
            Some(flip) => match corrupted(&ClusterFrame::Gossip(GossipPdu::Lww(m)), flip) {
                Some(ClusterFrame::Gossip(GossipPdu::Lww(m))) => m,
                // Refused by the decoder, or no longer an LWW message.
                _ => {
                    stats.lost += u64::from(d.copies);
                    return;
                }
            },
        };
        let after_ms = d.after.as_nanos().div_ceil(1_000_000) as u64;
        let waiting = self.last_due.get(&link).copied().filter(|&due| due > now);
        let copies = if d.copies > 1 {
            vec![m.clone(), m]
        } else {
            vec![m]
        };
        for m in copies {
            if d.overtake {
                queue.push_front((from, to, m));
            } else if after_ms > 0 || waiting.is_some() {
                // Behind what the link still delays.
                let due = (now + after_ms).max(waiting.unwrap_or(0));
                self.last_due.insert(link, due);
                self.delayed.push((due, (from, to, m)));
            } else {
                queue.push_back((from, to, m));
            }
        }
    }

    /// Delivers until nothing is left to deliver at `now`: released held
    /// messages first, then what is queued and what has come due.
    fn deliver(&mut self, queue: &mut VecDeque<Parcel>, now: u64, stats: &mut SimStats) {
        let mut released: Vec<(usize, usize)> = self
            .held
            .keys()
            .copied()
            .filter(|&(f, t)| !self.faults.is_holding(node(f), node(t)))
            .collect();
        released.sort_unstable();
        for link in released.into_iter().rev() {
            for m in self.held.remove(&link).into_iter().flatten().rev() {
                queue.push_front((link.0, link.1, m));
            }
        }
        if self.delayed.iter().any(|&(due, _)| due <= now) {
            // Stable: in due order, send order among equals.
            self.delayed.sort_by_key(|&(due, _)| due);
            let ready = self.delayed.partition_point(|&(due, _)| due <= now);
            queue.extend(self.delayed.drain(..ready).map(|(_, p)| p));
        }
        while let Some((from, to, m)) = queue.pop_front() {
            let local = self.clock(to, now);
            let Some(r) = self.replicas.get_mut(to).and_then(Option::as_mut) else {
                stats.lost += 1;
                continue;
            };
            let got = r.receive(NodeId(from as u64), m, local);
            for (next, reply) in got.replies {
                self.send(queue, (to, next.0 as usize, reply), now, stats);
            }
        }
    }

    /// Runs rounds until `done` holds (checked before each), at most
    /// `max_rounds`; returns the rounds run, or `None` if it never held.
    pub fn run_until(&mut self, max_rounds: u64, done: impl Fn(&Self) -> bool) -> Option<u64> {
        for n in 0..=max_rounds {
            if done(self) {
                return Some(n);
            }
            if n < max_rounds {
                self.round();
            }
        }
        None
    }

    /// Whether every live replica has the same live state.
    pub fn converged(&self) -> bool {
        let mut live = self.live();
        let Some(first) = live.next() else {
            return true;
        };
        let f = first.fingerprint();
        live.all(|r| r.fingerprint() == f)
    }

    /// How many live replicas hold `e` or something newer for its key.
    pub fn holders(&self, e: &LwwEntry) -> usize {
        self.live()
            .filter(|r| r.entry(&e.key).is_some_and(|h| h.version >= e.version))
            .count()
    }
}

/// A message's size as a TCP frame: header, `ClusterFrame` and PDU tags.
pub fn wire_len(m: &LwwMessage) -> u64 {
    m.frame_len() as u64
}

/// Replica `i`'s node id.
fn node(i: usize) -> NodeId {
    NodeId(i as u64)
}

/// A node id as a replica index (`usize::MAX` if it cannot be one).
fn ix(node: NodeId) -> usize {
    usize::try_from(node.0).unwrap_or(usize::MAX)
}
