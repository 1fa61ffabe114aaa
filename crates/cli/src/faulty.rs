//! The mesh's fault model in a node process: every outbound gossip frame
//! of this node passes [`FaultModel`] on its link (this node → the peer),
//! switched by the control verbs (`docs/node-control.md`). A frame the
//! model loses is lost as the network would lose it: `send` succeeds and
//! the model counts it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use multinode_gossip::{
    ClusterFrame, GossipTransport, Ready, SendError, TransportStats, corrupted,
};
use multinode_mesh::{Fate, FaultModel, LinkCounters};
use multinode_wire::NodeId;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Frames one link may hold, or keep delayed, at once; more are lost and
/// counted.
const LINK_FRAMES: usize = 4096;

/// A fault verb of the control protocol: the model's words, applied to
/// this node's outbound links.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum FaultVerb {
    Drop(f64),
    Duplicate(f64),
    Reorder(f64),
    Corrupt(f64),
    /// A delay drawn from `min..=max` ms (`0 0`: none).
    Delay(u64, u64),
    Cut(Vec<NodeId>),
    Heal,
    Hold(Vec<NodeId>),
    Release(Vec<NodeId>),
}

/// A transport whose outbound frames pass the fault model.
pub(crate) struct Faulty<T> {
    inner: Arc<T>,
    me: NodeId,
    state: Mutex<State>,
    /// False while no fault is set, nothing is held and no link ever
    /// delayed: `send` then skips the model and its lock.
    active: AtomicBool,
    /// Frames offered, faults or not.
    offered: AtomicU64,
}

struct State {
    model: FaultModel,
    held: HashMap<NodeId, VecDeque<ClusterFrame>>,
    /// Per delaying link: its queue, sent in order by one task.
    delays: HashMap<NodeId, mpsc::Sender<(Instant, ClusterFrame)>>,
    last_due: HashMap<NodeId, Instant>,
    /// Corrupted past decoding, or past a link's bound.
    lost: u64,
}

impl<T> Faulty<T> {
    pub(crate) fn new(inner: T, me: NodeId, seed: u64) -> Self {
        Self {
            inner: Arc::new(inner),
            me,
            state: Mutex::new(State {
                model: FaultModel::new(seed),
                held: HashMap::new(),
                delays: HashMap::new(),
                last_due: HashMap::new(),
                lost: 0,
            }),
            active: AtomicBool::new(false),
            offered: AtomicU64::new(0),
        }
    }

    pub(crate) fn inner(&self) -> &T {
        &self.inner
    }

    /// What the faults did, on every outbound link together: the model's
    /// counts (`sent`: every frame offered, faults or not; `lost`:
    /// corrupted past decoding or over a link's bound), and the model's
    /// trace hash.
    pub(crate) fn counters(&self) -> (LinkCounters, u64) {
        let s = self.state.lock();
        let mut c = s.model.total();
        c.sent = self.offered.load(Relaxed);
        c.lost = s.lost;
        (c, s.model.trace_hash())
    }

    /// Frames the faults kept from the network: dropped, cut, or lost.
    pub(crate) fn kept_back(&self) -> u64 {
        let (c, _) = self.counters();
        c.dropped + c.cut + c.lost
    }
}

impl<T: GossipTransport + 'static> Faulty<T> {
    /// Applies a fault verb.
    pub(crate) fn apply(&self, verb: FaultVerb) {
        let mut s = self.state.lock();
        let me = self.me;
        let mut release = Vec::new();
        let mut faults = s.model.all_faults().clone();
        match verb {
            FaultVerb::Drop(p) => faults.drop = p,
            FaultVerb::Duplicate(p) => faults.duplicate = p,
            FaultVerb::Reorder(p) => faults.reorder = p,
            FaultVerb::Corrupt(p) => faults.corrupt = p,
            FaultVerb::Delay(lo, hi) => {
                faults.delay =
                    (hi > 0).then(|| (Duration::from_millis(lo), Duration::from_millis(hi)));
            }
            FaultVerb::Cut(peers) => peers.iter().for_each(|&p| s.model.cut(me, p)),
            FaultVerb::Heal => s.model.heal(),
            FaultVerb::Hold(peers) => peers.iter().for_each(|&p| s.model.hold(me, p)),
            FaultVerb::Release(peers) => {
                for p in peers {
                    s.model.release(me, p);
                    release.push((p, s.held.remove(&p).unwrap_or_default()));
                }
            }
        }
        if &faults != s.model.all_faults() {
            s.model.set_all_faults(&faults);
        }
        let active = s.model.any_faulty() || !s.held.is_empty() || !s.delays.is_empty();
        self.active.store(active, Relaxed);
        // Released frames go first, ahead of any sent later: the lock is
        // still held.
        for (peer, frames) in release {
            for frame in frames {
                // A refusal is counted by the transport, as for any send.
                let _ = self.inner.send(peer, &frame);
            }
        }
    }

    fn send_faulty(&self, to: NodeId, frame: &ClusterFrame) -> Result<(), SendError> {
        let mut s = self.state.lock();
        let fate = s.model.decide_len(self.me, to, frame.payload_len());
        let d = match fate {
            Fate::Dropped => return Ok(()),
            Fate::Held => {
                let q = s.held.entry(to).or_default();
                if q.len() < LINK_FRAMES {
                    q.push_back(frame.clone());
                } else {
                    s.lost += 1;
                }
                return Ok(());
            }
            Fate::Deliver(d) => d,
        };
        let damaged;
        let frame = match d.corrupt {
            None => frame,
            Some(flip) => match corrupted(frame, flip) {
                Some(f) => {
                    damaged = f;
                    &damaged
                }
                None => {
                    // The peer's decoder would refuse it.
                    s.lost += u64::from(d.copies);
                    return Ok(());
                }
            },
        };
        let now = Instant::now();
        let waiting = s.last_due.get(&to).copied().filter(|&due| due > now);
        if d.overtake || (d.after.is_zero() && waiting.is_none()) {
            drop(s);
            for _ in 0..d.copies {
                self.inner.send(to, frame)?;
            }
            return Ok(());
        }
        // Delayed, or behind what the link still delays: one task per link
        // sends them in order, each at its due time.
        let due = (now + d.after).max(waiting.unwrap_or(now));
        s.last_due.insert(to, due);
        if !s.delays.contains_key(&to) {
            let Some(tx) = self.pump(to) else {
                s.lost += u64::from(d.copies);
                return Ok(());
            };
            s.delays.insert(to, tx);
            self.active.store(true, Relaxed);
        }
        for _ in 0..d.copies {
            let queued = s
                .delays
                .get(&to)
                .is_some_and(|tx| tx.try_send((due, frame.clone())).is_ok());
            if !queued {
                s.lost += 1;
            }
        }
        Ok(())
    }

    /// Starts the task that sends `to`'s delayed frames; `None` outside a
    /// runtime.
    fn pump(&self, to: NodeId) -> Option<mpsc::Sender<(Instant, ClusterFrame)>> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (tx, mut rx) = mpsc::channel::<(Instant, ClusterFrame)>(LINK_FRAMES);
        let inner = Arc::clone(&self.inner);
        // Ends when this transport is dropped (and with it the sender).
        runtime.spawn(async move {
            while let Some((due, frame)) = rx.recv().await {
                tokio::time::sleep_until(due).await;
                // A refusal is counted by the transport, as for any send.
                let _ = inner.send(to, &frame);
            }
        });
        Some(tx)
    }
}

impl<T: GossipTransport + 'static> GossipTransport for Faulty<T> {
    fn local_node(&self) -> NodeId {
        self.inner.local_node()
    }

    fn send(&self, to: NodeId, frame: &ClusterFrame) -> Result<(), SendError> {
        self.offered.fetch_add(1, Relaxed);
        if !self.active.load(Relaxed) {
            return self.inner.send(to, frame);
        }
        self.send_faulty(to, frame)
    }

    fn ready(&self, to: NodeId) -> Ready<'_> {
        self.inner.ready(to)
    }

    fn stats(&self) -> TransportStats {
        self.inner.stats()
    }
}
