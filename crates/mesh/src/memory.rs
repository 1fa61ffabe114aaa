//! The in-memory mesh: N nodes, a bounded FIFO per directed link, node state
//! kept apart from link state, and the [`FaultModel`] applied to every link.
//!
//! Layout: a connection ([`Conn`]) joins two nodes for one life of each; it
//! owns one inbox per side. Handles ([`InMemoryChannel`]) point at one side
//! of one connection, so a handle taken before a crash keeps pointing at the
//! old connection and can tell it is stale. Everything a control verb
//! changes (node state, faults, which connection is current) sits behind one
//! mutex; the send and receive paths touch only atomics, the inbox and the
//! receiving side's own lock, unless the link has a fault set.

use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicU8, AtomicU64};
use std::sync::{Arc, Weak};

use crossbeam_channel::bounded;
use multinode_wire::NodeId;
use parking_lot::Mutex;

use crate::{ChannelError, FaultModel, LinkCounters, LinkFaults};

mod channel;
mod link;

pub use channel::InMemoryChannel;
use link::*;

/// Settings of an in-memory mesh.
///
/// ```
/// use multinode_mesh::{InMemoryGroup, MeshConfig};
/// let group = InMemoryGroup::with_config(3, MeshConfig::default().capacity(64).seed(7));
/// assert_eq!(group.size(), 3);
/// ```
#[derive(Clone, Debug)]
pub struct MeshConfig {
    capacity: usize,
    max_message: usize,
    seed: u64,
}

impl Default for MeshConfig {
    /// 1,024 messages a link, messages up to the TCP channel's default cap
    /// (16 MiB less one byte), seed 0.
    fn default() -> Self {
        Self {
            capacity: 1024,
            max_message: multinode_wire::DEFAULT_MAX_FRAME - 1,
            seed: 0,
        }
    }
}

impl MeshConfig {
    /// How many messages one directed link queues before `send` fails with
    /// [`ChannelError::QueueFull`] (at least 1). Held and delayed messages
    /// count; the one a receiver has taken off the queue to wait for its
    /// delay or release does not.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    /// The largest message a channel accepts.
    pub fn max_message(mut self, max: usize) -> Self {
        self.max_message = max;
        self
    }

    /// The seed of every random fault decision.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
}

/// The entry points of the in-memory transport, under the names of the
/// reference implementation this crate replaces.
#[derive(Debug)]
pub struct InMemoryTransport;

impl InMemoryTransport {
    /// Two connected channels: node 0's end and node 1's end of one link.
    pub fn new_pair() -> (InMemoryChannel, InMemoryChannel) {
        let group = InMemoryGroup::new(2);
        let ends = (group.channel(id(0), id(1)), group.channel(id(1), id(0)));
        match ends {
            (Ok(a), Ok(b)) => (a, b),
            // Two fresh, live, distinct nodes always connect.
            _ => unreachable!("a fresh pair connects"),
        }
    }

    /// A mesh of `n` nodes with the default [`MeshConfig`].
    pub fn new_group(n: usize) -> InMemoryGroup {
        InMemoryGroup::new(n)
    }
}

/// Node state, fault model and connections: what control verbs change.
struct Control {
    model: FaultModel,
    up: Vec<bool>,
    /// Per unordered pair (`a * n + b`, `a < b`): the current connection
    /// and every connection a handle may still point at.
    pairs: Vec<Pair>,
}

#[derive(Default)]
struct Pair {
    current: Option<Arc<Conn>>,
    all: Vec<Weak<Conn>>,
}

impl Pair {
    fn live(&mut self) -> Vec<Arc<Conn>> {
        self.all.retain(|w| w.strong_count() > 0);
        self.all.iter().filter_map(Weak::upgrade).collect()
    }
}

struct Shared {
    n: usize,
    config: MeshConfig,
    /// Each node's incarnation (a mirror of the control state, for handles).
    gens: Box<[AtomicU64]>,
    links: Box<[LinkState]>,
    control: Mutex<Control>,
}

impl Shared {
    fn link(&self, from: usize, to: usize) -> &LinkState {
        &self.links[from * self.n + to]
    }

    fn pair_index(&self, a: usize, b: usize) -> usize {
        a.min(b) * self.n + a.max(b)
    }

    /// `node`'s index, or `None` outside the group.
    fn index(&self, node: NodeId) -> Option<usize> {
        usize::try_from(node.0).ok().filter(|&i| i < self.n)
    }

    fn check_node(&self, node: NodeId) -> usize {
        self.index(node)
            .unwrap_or_else(|| panic!("node {node} outside the group of {}", self.n))
    }

    /// Refreshes the fast-path flag of every link from the model.
    fn sync_faulty(&self, ctl: &Control) {
        for from in 0..self.n {
            for to in 0..self.n {
                self.link(from, to)
                    .tx
                    .0
                    .faulty
                    .store(ctl.model.is_faulty(id(from), id(to)), Release);
            }
        }
    }

    fn crash_locked(&self, ctl: &mut Control, node: usize) {
        if !std::mem::replace(&mut ctl.up[node], false) {
            return;
        }
        for peer in (0..self.n).filter(|&p| p != node) {
            let idx = self.pair_index(node, peer);
            for conn in ctl.pairs[idx].live() {
                let side = conn.side_of(node);
                conn.mark(CRASHED[side]);
                let lost = conn.ends[side].discard();
                self.link(peer, node).rx.0.lost.fetch_add(lost, Relaxed);
            }
        }
    }
}

/// An in-memory mesh of N nodes.
///
/// Every ordered pair of distinct nodes has a link; [`InMemoryGroup::channel`]
/// hands out one end of it. Each directed link is a FIFO of at most
/// `capacity` messages (see [`MeshConfig`]); when it is full, `send` fails
/// with [`ChannelError::QueueFull`] and queues nothing: the mesh never
/// blocks a sender and never grows without bound.
///
/// Node state (up or crashed) is kept apart from link state (faults, cuts,
/// holds): crashing a node touches only that node's connections, and a link
/// comes back only when both of its nodes are up. Each restart raises the
/// node's incarnation; a handle from an earlier life fails with
/// [`ChannelError::Stale`], so it can never silently talk into the void.
///
/// Faults use the kit's vocabulary and one seeded [`FaultModel`]:
/// - a **drop**, **cut** or **partition** loses the message silently, as a
///   network would (the sender's `send` succeeds); the counters say so;
/// - a **delay** makes a message visible later, without reordering: later
///   messages on the link wait behind it;
/// - a **reorder** sends a message ahead of everything queued on its link;
/// - a **duplicate** queues it twice (a second copy that finds the queue
///   full is lost, and counted in `lost`);
/// - a **corrupt** flips one byte of the message ([`Flip`](crate::Flip));
/// - a **hold** keeps a link's messages, in order, until **release**; held
///   messages take room in the queue like any other.
///
/// The model is consulted only on links that have a fault, cut or hold
/// set, so its counters and trace cover those links; a fault-free link
/// costs no lock and leaves the trace alone.
///
/// Cloning the group gives another handle to the same mesh.
#[derive(Clone)]
pub struct InMemoryGroup {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for InMemoryGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ctl = self.shared.control.lock();
        f.debug_struct("InMemoryGroup")
            .field("size", &self.shared.n)
            .field("up", &ctl.up)
            .field("config", &self.shared.config)
            .finish()
    }
}

impl InMemoryGroup {
    /// A mesh of `n` nodes, all up, every link fault-free.
    pub fn new(n: usize) -> Self {
        Self::with_config(n, MeshConfig::default())
    }

    /// A mesh of `n` nodes with `config`.
    pub fn with_config(n: usize, config: MeshConfig) -> Self {
        let control = Control {
            model: FaultModel::new(config.seed),
            up: vec![true; n],
            pairs: (0..n * n).map(|_| Pair::default()).collect(),
        };
        Self {
            shared: Arc::new(Shared {
                n,
                gens: (0..n).map(|_| AtomicU64::new(0)).collect(),
                links: (0..n * n).map(|_| LinkState::default()).collect(),
                config,
                control: Mutex::new(control),
            }),
        }
    }

    /// How many nodes the mesh has.
    pub fn size(&self) -> usize {
        self.shared.n
    }

    /// Node `from`'s end of its link to node `to`.
    ///
    /// Both calls of a pair, `channel(a, b)` and `channel(b, a)`, return the
    /// two ends of one connection. While that connection is open, further
    /// calls return handles to the same ends; once either end is closed, the
    /// next call opens a new connection.
    ///
    /// Fails with [`ChannelError::NoSuchLink`] for an index outside the group
    /// or `from == to`, [`ChannelError::Crashed`] if `from` is crashed and
    /// [`ChannelError::PeerCrashed`] if `to` is.
    pub fn channel(&self, from: NodeId, to: NodeId) -> Result<InMemoryChannel, ChannelError> {
        let shared = &self.shared;
        let no_link = || ChannelError::NoSuchLink {
            from,
            to,
            size: shared.n,
        };
        let (Some(from_ix), Some(to_ix)) = (shared.index(from), shared.index(to)) else {
            return Err(no_link());
        };
        if from == to {
            return Err(no_link());
        }
        let (from, to) = (from_ix, to_ix);
        let mut ctl = shared.control.lock();
        if !ctl.up[from] {
            return Err(ChannelError::Crashed(id(from)));
        }
        if !ctl.up[to] {
            return Err(ChannelError::PeerCrashed(id(to)));
        }
        let pair = &mut ctl.pairs[shared.pair_index(from, to)];
        let conn = match &pair.current {
            Some(conn) if conn.state.load(Acquire) == 0 => Arc::clone(conn),
            _ => {
                let nodes = [from.min(to), from.max(to)];
                let (terminal_tx, terminal_rx) = bounded(0);
                let conn = Arc::new(Conn {
                    nodes,
                    gens: nodes.map(|i| shared.gens[i].load(Acquire)),
                    state: AtomicU8::new(0),
                    ends: [0, 1].map(|_| End::new(shared.config.capacity)),
                    terminal_tx: Mutex::new(Some(terminal_tx)),
                    terminal_rx,
                });
                pair.live();
                pair.all.push(Arc::downgrade(&conn));
                pair.current = Some(Arc::clone(&conn));
                conn
            }
        };
        Ok(InMemoryChannel {
            side: conn.side_of(from),
            conn,
            shared: Arc::clone(shared),
            tx_link: from * shared.n + to,
            rx_link: to * shared.n + from,
        })
    }

    /// Whether `node` is up.
    ///
    /// # Panics
    /// If `node` is outside the group.
    pub fn is_node_live(&self, node: NodeId) -> bool {
        let node = self.shared.check_node(node);
        self.shared.control.lock().up[node]
    }

    /// How many times `node` has restarted.
    ///
    /// # Panics
    /// If `node` is outside the group.
    pub fn incarnation(&self, node: NodeId) -> u64 {
        let node = self.shared.check_node(node);
        self.shared.gens[node].load(Acquire)
    }

    /// Crashes `node`: its handles fail with [`ChannelError::Crashed`], what
    /// was queued for it is lost (counted in `lost`), and its peers still
    /// receive what it sent before the crash, then
    /// [`ChannelError::PeerCrashed`]. Other nodes and links are untouched.
    /// Crashing a crashed node does nothing.
    ///
    /// # Panics
    /// If `node` is outside the group.
    pub fn crash(&self, node: NodeId) {
        let node = self.shared.check_node(node);
        let mut ctl = self.shared.control.lock();
        self.shared.crash_locked(&mut ctl, node);
    }

    /// Brings `node` back (crashing it first if it is up) with its
    /// incarnation raised by one. Handles from its earlier life, and its
    /// peers' handles to that life, fail with [`ChannelError::Stale`] once
    /// they have nothing left to deliver; new handles come from
    /// [`InMemoryGroup::channel`]. A link to a node that is still crashed
    /// stays down.
    ///
    /// # Panics
    /// If `node` is outside the group.
    pub fn restart(&self, node: NodeId) {
        let shared = &self.shared;
        let node = shared.check_node(node);
        let mut ctl = shared.control.lock();
        shared.crash_locked(&mut ctl, node);
        shared.gens[node].fetch_add(1, AcqRel);
        ctl.up[node] = true;
        for peer in (0..shared.n).filter(|&p| p != node) {
            let pair = &mut ctl.pairs[shared.pair_index(node, peer)];
            pair.current = None;
            // A send that raced the crash may have slipped into the dead
            // inbox: count it as lost too.
            for conn in pair.live() {
                let lost = conn.ends[conn.side_of(node)].discard();
                shared.link(peer, node).rx.0.lost.fetch_add(lost, Relaxed);
            }
        }
    }

    /// Sets the random faults of the link `from → to`.
    ///
    /// # Panics
    /// If either node is outside the group.
    pub fn set_faults(&self, from: NodeId, to: NodeId, faults: LinkFaults) {
        self.check_link(from, to);
        self.control(|ctl| ctl.model.set_faults(from, to, faults));
    }

    /// Sets the same random faults on every link.
    pub fn set_all_faults(&self, faults: &LinkFaults) {
        self.control(|ctl| ctl.model.set_all_faults(faults));
    }

    /// Cuts `from → to` one way: messages sent on it are lost.
    ///
    /// # Panics
    /// If either node is outside the group.
    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.check_link(from, to);
        self.control(|ctl| ctl.model.cut(from, to));
    }

    /// Cuts every link between the sets `a` and `b`, both ways.
    ///
    /// # Panics
    /// If a node is outside the group.
    pub fn partition(&self, a: &[NodeId], b: &[NodeId]) {
        for &node in a.iter().chain(b) {
            self.shared.check_node(node);
        }
        self.control(|ctl| ctl.model.partition(a, b));
    }

    /// Restores every cut link. Random faults and holds stay.
    pub fn heal(&self) {
        self.control(|ctl| ctl.model.heal());
    }

    /// Holds `from → to`: messages sent on it wait, in order, until
    /// [`InMemoryGroup::release`].
    ///
    /// # Panics
    /// If either node is outside the group.
    pub fn hold(&self, from: NodeId, to: NodeId) {
        self.check_link(from, to);
        self.control(|ctl| ctl.model.hold(from, to));
    }

    /// Releases `from → to`: what it held becomes deliverable, in send
    /// order, ahead of anything sent later.
    ///
    /// # Panics
    /// If either node is outside the group.
    pub fn release(&self, from: NodeId, to: NodeId) {
        let shared = &self.shared;
        self.check_link(from, to);
        self.control(|ctl| {
            ctl.model.release(from, to);
            let (from, to) = (ix(from), ix(to));
            shared.link(from, to).rx.0.released.fetch_add(1, AcqRel);
            if from != to {
                for conn in ctl.pairs[shared.pair_index(from, to)].live() {
                    conn.ends[conn.side_of(to)].wake();
                }
            }
        });
    }

    /// What happened on `from → to` so far.
    ///
    /// # Panics
    /// If either node is outside the group.
    pub fn counters(&self, from: NodeId, to: NodeId) -> LinkCounters {
        let shared = &self.shared;
        self.check_link(from, to);
        let mut c = shared.control.lock().model.counters(from, to);
        let link = shared.link(ix(from), ix(to));
        c.sent += link.tx.0.sent.load(Acquire);
        c.delivered = link.rx.0.delivered.load(Acquire);
        c.lost = link.rx.0.lost.load(Acquire);
        c
    }

    /// A fingerprint of every fault decision so far (see
    /// [`FaultModel::trace_hash`]): two runs with one seed and one sequence
    /// of sends and faults have equal hashes.
    pub fn trace_hash(&self) -> u64 {
        self.shared.control.lock().model.trace_hash()
    }

    fn check_link(&self, from: NodeId, to: NodeId) {
        self.shared.check_node(from);
        self.shared.check_node(to);
    }

    fn control<R>(&self, f: impl FnOnce(&mut Control) -> R) -> R {
        let mut ctl = self.shared.control.lock();
        let r = f(&mut ctl);
        self.shared.sync_faulty(&ctl);
        r
    }
}

/// Node `i` of a group.
pub(super) fn id(i: usize) -> NodeId {
    NodeId(i as u64)
}

/// A node's index, for a node already checked to be in its group.
pub(super) fn ix(node: NodeId) -> usize {
    node.0 as usize
}
