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

use std::collections::VecDeque;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, SendTimeoutError, Sender, TrySendError, bounded};
use parking_lot::Mutex;

use crate::{Channel, ChannelError, Fate, FaultModel, LinkCounters, LinkFaults};

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
        let ends = (group.channel(0, 1), group.channel(1, 0));
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

const CLOSED: [u8; 2] = [1, 2];
const CRASHED: [u8; 2] = [4, 8];

/// A message in an inbox. Plain messages are the fast path; the rest carry
/// what the fault model decided.
enum Item {
    Plain(Vec<u8>),
    Tagged(Box<Tagged>),
}

struct Tagged {
    msg: Vec<u8>,
    /// Not visible before this instant.
    due: Option<Instant>,
    /// Held until the link's release count passes this value.
    hold: Option<u64>,
}

/// Keeps the sender's and the receiver's counters off each other's cache
/// line.
#[repr(align(128))]
#[derive(Default)]
struct Padded<T>(T);

/// Per directed link: what the send and receive paths read without a lock.
#[derive(Default)]
struct LinkState {
    tx: Padded<TxState>,
    rx: Padded<RxState>,
}

#[derive(Default)]
struct TxState {
    /// A mirror of `FaultModel::is_faulty`: when false, sends skip the model.
    faulty: AtomicBool,
    /// Messages sent on the fast path (the model counts the rest).
    sent: AtomicU64,
}

#[derive(Default)]
struct RxState {
    /// How many holds of this link have been released.
    released: AtomicU64,
    delivered: AtomicU64,
    lost: AtomicU64,
}

/// One side's inbox on one connection.
struct End {
    tx: Sender<Item>,
    rx: Receiver<Item>,
    /// Messages taken off the queue that may not be delivered yet (delayed
    /// or held), in queue order.
    staged: Mutex<VecDeque<Box<Tagged>>>,
    /// Messages that overtake the queue.
    urgent: Mutex<VecDeque<Tagged>>,
    urgent_len: AtomicUsize,
    /// Whether anything is staged or urgent: while false, a receiver may
    /// take a plain message straight off the queue without a lock.
    slow: AtomicBool,
    /// A nudge for a blocked receiver: a release, an overtaking message.
    wake_tx: Sender<()>,
    wake_rx: Receiver<()>,
}

impl End {
    fn new(capacity: usize) -> Self {
        let (tx, rx) = bounded(capacity);
        let (wake_tx, wake_rx) = bounded(1);
        Self {
            tx,
            rx,
            staged: Mutex::new(VecDeque::new()),
            urgent: Mutex::new(VecDeque::new()),
            urgent_len: AtomicUsize::new(0),
            slow: AtomicBool::new(false),
            wake_tx,
            wake_rx,
        }
    }

    fn queued(&self) -> usize {
        self.rx.len() + self.urgent_len.load(Acquire)
    }

    fn push_urgent(&self, t: Tagged) {
        self.urgent.lock().push_back(t);
        self.urgent_len.fetch_add(1, SeqCst);
        self.slow.store(true, SeqCst);
        self.wake();
    }

    /// Clears `slow` if nothing is staged or urgent; `staged` is the locked
    /// staging queue.
    fn settle(&self, staged: &VecDeque<Box<Tagged>>) {
        if staged.is_empty() && self.urgent_len.load(SeqCst) == 0 {
            self.slow.store(false, SeqCst);
            // An overtaking message may have come in between: keep it seen.
            if self.urgent_len.load(SeqCst) > 0 {
                self.slow.store(true, SeqCst);
            }
        } else {
            self.slow.store(true, SeqCst);
        }
    }

    fn wake(&self) {
        let _ = self.wake_tx.try_send(());
    }

    /// Throws away everything queued here; returns how much.
    fn discard(&self) -> u64 {
        let mut staged = self.staged.lock();
        let mut n = staged.len() as u64;
        staged.clear();
        let mut urgent = self.urgent.lock();
        n += urgent.len() as u64;
        urgent.clear();
        self.urgent_len.store(0, SeqCst);
        self.slow.store(false, SeqCst);
        drop(urgent);
        n += self.rx.try_iter().count() as u64;
        n
    }
}

/// A connection between two nodes, for one life of each.
struct Conn {
    /// The two nodes, lower index first; side `i` belongs to `nodes[i]`.
    nodes: [usize; 2],
    /// Each node's generation when the connection opened.
    gens: [u64; 2],
    /// `CLOSED` and `CRASHED` bits per side.
    state: AtomicU8,
    ends: [End; 2],
    /// Dropped at the first close or crash, which wakes every receiver.
    terminal_tx: Mutex<Option<Sender<()>>>,
    terminal_rx: Receiver<()>,
}

impl Conn {
    fn side_of(&self, node: usize) -> usize {
        usize::from(self.nodes[1] == node)
    }

    /// Sets a state bit; wakes every receiver on both sides.
    fn mark(&self, bit: u8) -> bool {
        let old = self.state.fetch_or(bit, AcqRel);
        self.terminal_tx.lock().take();
        for end in &self.ends {
            end.wake();
        }
        old & bit == 0
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
    /// Each node's generation (a mirror of the control state, for handles).
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

    fn check_node(&self, node: usize) {
        assert!(node < self.n, "node {node} outside the group of {}", self.n);
    }

    /// Refreshes the fast-path flag of every link from the model.
    fn sync_faulty(&self, ctl: &Control) {
        for from in 0..self.n {
            for to in 0..self.n {
                self.link(from, to)
                    .tx
                    .0
                    .faulty
                    .store(ctl.model.is_faulty(from, to), Release);
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
/// node's generation; a handle from an earlier life fails with
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
            model: FaultModel::new(n, config.seed),
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
    pub fn channel(&self, from: usize, to: usize) -> Result<InMemoryChannel, ChannelError> {
        let shared = &self.shared;
        if from >= shared.n || to >= shared.n || from == to {
            return Err(ChannelError::NoSuchLink {
                from,
                to,
                size: shared.n,
            });
        }
        let mut ctl = shared.control.lock();
        if !ctl.up[from] {
            return Err(ChannelError::Crashed(from));
        }
        if !ctl.up[to] {
            return Err(ChannelError::PeerCrashed(to));
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
    pub fn is_node_live(&self, node: usize) -> bool {
        self.shared.check_node(node);
        self.shared.control.lock().up[node]
    }

    /// How many times `node` has restarted.
    ///
    /// # Panics
    /// If `node` is outside the group.
    pub fn generation(&self, node: usize) -> u64 {
        self.shared.check_node(node);
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
    pub fn crash(&self, node: usize) {
        self.shared.check_node(node);
        let mut ctl = self.shared.control.lock();
        self.shared.crash_locked(&mut ctl, node);
    }

    /// Brings `node` back (crashing it first if it is up) with its
    /// generation raised by one. Handles from its earlier life, and its
    /// peers' handles to that life, fail with [`ChannelError::Stale`] once
    /// they have nothing left to deliver; new handles come from
    /// [`InMemoryGroup::channel`]. A link to a node that is still crashed
    /// stays down.
    ///
    /// # Panics
    /// If `node` is outside the group.
    pub fn restart(&self, node: usize) {
        let shared = &self.shared;
        shared.check_node(node);
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
    pub fn set_faults(&self, from: usize, to: usize, faults: LinkFaults) {
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
    pub fn cut(&self, from: usize, to: usize) {
        self.control(|ctl| ctl.model.cut(from, to));
    }

    /// Cuts every link between the sets `a` and `b`, both ways.
    ///
    /// # Panics
    /// If a node is outside the group.
    pub fn partition(&self, a: &[usize], b: &[usize]) {
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
    pub fn hold(&self, from: usize, to: usize) {
        self.control(|ctl| ctl.model.hold(from, to));
    }

    /// Releases `from → to`: what it held becomes deliverable, in send
    /// order, ahead of anything sent later.
    ///
    /// # Panics
    /// If either node is outside the group.
    pub fn release(&self, from: usize, to: usize) {
        let shared = &self.shared;
        self.control(|ctl| {
            ctl.model.release(from, to);
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
    pub fn counters(&self, from: usize, to: usize) -> LinkCounters {
        let shared = &self.shared;
        shared.check_node(from);
        shared.check_node(to);
        let mut c = shared.control.lock().model.counters(from, to);
        let link = shared.link(from, to);
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

    fn control<R>(&self, f: impl FnOnce(&mut Control) -> R) -> R {
        let mut ctl = self.shared.control.lock();
        let r = f(&mut ctl);
        self.shared.sync_faulty(&ctl);
        r
    }
}

/// One node's end of a link in an [`InMemoryGroup`].
///
/// Cloning gives another handle to the same end; closing any of them closes
/// the end. Dropping a handle does nothing.
///
/// Several threads may send and receive on one end at once. Which receiving
/// thread gets which message is unspecified; each thread sees the messages
/// it gets in link order. With a delay or hold on the link and several
/// receiving threads, a message queued behind a delayed one can reach
/// another thread first.
#[derive(Clone)]
pub struct InMemoryChannel {
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    side: usize,
    /// Index of the link this end sends on, and of the one it receives on.
    tx_link: usize,
    rx_link: usize,
}

impl std::fmt::Debug for InMemoryChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryChannel")
            .field("local", &self.local())
            .field("peer", &self.peer())
            .field("generation", &self.generation())
            .field("open", &self.is_open())
            .finish()
    }
}

/// Whether a tagged message may be delivered now; if not, until when to
/// wait (`None`: until a release).
fn ready(t: &Tagged, released: u64, now: &mut Option<Instant>) -> Result<(), Option<Instant>> {
    if t.hold.is_some_and(|epoch| epoch >= released) {
        return Err(None);
    }
    match t.due {
        Some(due) if due > *now.get_or_insert_with(Instant::now) => Err(Some(due)),
        _ => Ok(()),
    }
}

impl InMemoryChannel {
    /// The node this end belongs to.
    pub fn local(&self) -> usize {
        self.conn.nodes[self.side]
    }

    /// The node at the other end.
    pub fn peer(&self) -> usize {
        self.conn.nodes[1 - self.side]
    }

    /// The generation of the local node this handle was taken in.
    pub fn generation(&self) -> u64 {
        self.conn.gens[self.side]
    }

    fn error_for(&self, side: usize, state: u8, peer: bool) -> Option<ChannelError> {
        if state & CLOSED[side] != 0 {
            return Some(if peer {
                ChannelError::PeerClosed
            } else {
                ChannelError::Closed
            });
        }
        if state & CRASHED[side] != 0 {
            let node = self.conn.nodes[side];
            let (held, current) = (self.conn.gens[side], self.shared.gens[node].load(Acquire));
            return Some(if held != current {
                ChannelError::Stale { held, current }
            } else if peer {
                ChannelError::PeerCrashed(node)
            } else {
                ChannelError::Crashed(node)
            });
        }
        None
    }

    fn own_error(&self, state: u8) -> Option<ChannelError> {
        self.error_for(self.side, state, false)
    }

    fn peer_error(&self, state: u8) -> Option<ChannelError> {
        self.error_for(1 - self.side, state, true)
    }

    fn delivered(&self, msg: Vec<u8>) -> Result<Option<Vec<u8>>, ChannelError> {
        self.shared.links[self.rx_link]
            .rx
            .0
            .delivered
            .fetch_add(1, Relaxed);
        Ok(Some(msg))
    }

    fn queue_full(&self) -> ChannelError {
        ChannelError::QueueFull {
            capacity: self.shared.config.capacity,
        }
    }

    /// The rest of `receive`: staged and overtaking messages, delays and
    /// holds, and waiting.
    #[inline(never)]
    fn receive_waiting(&self, timeout: Duration) -> Result<Option<Vec<u8>>, ChannelError> {
        let end = &self.conn.ends[self.side];
        let mut deadline: Option<Option<Instant>> = None;
        loop {
            let state = self.conn.state.load(Acquire);
            if state != 0 {
                if let Some(e) = self.own_error(state) {
                    return Err(e);
                }
            }
            let (until, watch_queue) = match self.take(state) {
                Ok(Some(msg)) => return self.delivered(msg),
                Ok(None) => {
                    return Err(self.peer_error(state).unwrap_or(ChannelError::PeerClosed));
                }
                Err(wait) => wait,
            };
            let now = Instant::now();
            let deadline = *deadline.get_or_insert_with(|| now.checked_add(timeout));
            if deadline.is_some_and(|d| now >= d) {
                return Ok(None);
            }
            let until = match (until, deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let mut select = Select::new();
            let wake = select.recv(&end.wake_rx);
            if watch_queue {
                select.recv(&end.rx);
            }
            if state == 0 {
                select.recv(&self.conn.terminal_rx);
            }
            let ready = match until {
                Some(until) => select.ready_deadline(until).ok(),
                None => Some(select.ready()),
            };
            if ready == Some(wake) {
                let _ = end.wake_rx.try_recv();
            }
        }
    }

    /// Sends `msg`, waiting up to `timeout` for room if the link's queue is
    /// full, where [`Channel::send`] fails at once with
    /// [`ChannelError::QueueFull`]: backpressure without a retry loop.
    pub fn send_timeout(&self, msg: &[u8], timeout: Duration) -> Result<(), ChannelError> {
        self.send_inner(msg, Some(timeout))
    }

    fn send_inner(&self, msg: &[u8], wait: Option<Duration>) -> Result<(), ChannelError> {
        let max = self.shared.config.max_message;
        if msg.len() > max {
            return Err(ChannelError::TooLarge {
                len: msg.len(),
                max,
            });
        }
        let state = self.conn.state.load(Acquire);
        if state != 0 {
            if let Some(e) = self.own_error(state).or_else(|| self.peer_error(state)) {
                return Err(e);
            }
        }
        let link = &self.shared.links[self.tx_link];
        if link.tx.0.faulty.load(Acquire) {
            return self.send_faulty_waiting(msg, wait);
        }
        let inbox = &self.conn.ends[1 - self.side];
        let item = Item::Plain(msg.to_vec());
        let sent = &link.tx.0.sent;
        sent.fetch_add(1, Relaxed);
        let waited = match (inbox.tx.try_send(item), wait) {
            (Ok(()), _) => false,
            (Err(TrySendError::Full(mut item)), Some(timeout)) => {
                // Back off before reading the clock and parking: room
                // usually comes within a few spins.
                for step in 0..SPIN_STEPS {
                    backoff(step);
                    match inbox.tx.try_send(item) {
                        Ok(()) => return self.after_waiting(),
                        Err(TrySendError::Full(back)) => item = back,
                        Err(TrySendError::Disconnected(_)) => {
                            sent.fetch_sub(1, Relaxed);
                            return Err(ChannelError::PeerClosed);
                        }
                    }
                }
                match inbox.tx.send_timeout(item, timeout) {
                    Ok(()) => true,
                    Err(e) => {
                        sent.fetch_sub(1, Relaxed);
                        return Err(match e {
                            SendTimeoutError::Timeout(_) => self.queue_full(),
                            SendTimeoutError::Disconnected(_) => ChannelError::PeerClosed,
                        });
                    }
                }
            }
            (Err(e), _) => {
                sent.fetch_sub(1, Relaxed);
                return Err(match e {
                    TrySendError::Full(_) => self.queue_full(),
                    // The connection owns both halves of its queues.
                    TrySendError::Disconnected(_) => ChannelError::PeerClosed,
                });
            }
        };
        if waited {
            self.after_waiting()?;
        }
        Ok(())
    }

    /// A send that waited may have found room only because the peer's end
    /// closed or crashed and its queue was thrown away: then the message is
    /// lost, counted, and the error reported.
    fn after_waiting(&self) -> Result<(), ChannelError> {
        let state = self.conn.state.load(Acquire);
        match self.peer_error(state).or_else(|| self.own_error(state)) {
            None => Ok(()),
            Some(e) => {
                let _ctl = self.shared.control.lock();
                let lost = self.conn.ends[1 - self.side].discard();
                self.shared
                    .link(self.local(), self.peer())
                    .rx
                    .0
                    .lost
                    .fetch_add(lost, Relaxed);
                Err(e)
            }
        }
    }

    /// The slow path, waiting for room: retried in short naps, since room
    /// on a faulty link may come from a release as well as a receive.
    fn send_faulty_waiting(&self, msg: &[u8], wait: Option<Duration>) -> Result<(), ChannelError> {
        let deadline = wait.and_then(|w| Instant::now().checked_add(w));
        loop {
            match self.send_faulty(msg) {
                Err(ChannelError::QueueFull { .. })
                    if wait.is_some() && deadline.is_none_or(|d| Instant::now() < d) =>
                {
                    std::thread::sleep(Duration::from_micros(200));
                }
                other => return other,
            }
        }
    }

    /// The slow path: the link has a fault, cut or hold set.
    fn send_faulty(&self, msg: &[u8]) -> Result<(), ChannelError> {
        let (me, peer) = (self.local(), self.peer());
        let mut ctl = self.shared.control.lock();
        // Close and crash happen under this lock: decide on a settled state.
        let state = self.conn.state.load(Acquire);
        if let Some(e) = self.own_error(state).or_else(|| self.peer_error(state)) {
            return Err(e);
        }
        let inbox = &self.conn.ends[1 - self.side];
        let capacity = self.shared.config.capacity;
        if inbox.queued() >= capacity {
            return Err(self.queue_full());
        }
        let link = self.shared.link(me, peer);
        let (due, copies, overtake, hold) = match ctl.model.decide(me, peer, msg) {
            Fate::Dropped => return Ok(()),
            Fate::Held => (None, 1, false, Some(link.rx.0.released.load(Acquire))),
            Fate::Deliver {
                after,
                copies,
                overtake,
            } => {
                let due = (!after.is_zero()).then(|| Instant::now() + after);
                (due, copies, overtake, None)
            }
        };
        drop(ctl);
        for copy in 0..copies {
            if copy > 0 && inbox.queued() >= capacity {
                link.rx.0.lost.fetch_add(1, Relaxed);
                break;
            }
            let tagged = Tagged {
                msg: msg.to_vec(),
                due,
                hold,
            };
            if overtake {
                inbox.push_urgent(tagged);
                continue;
            }
            let item = if due.is_none() && hold.is_none() {
                Item::Plain(tagged.msg)
            } else {
                Item::Tagged(Box::new(tagged))
            };
            match inbox.tx.try_send(item) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) if copy > 0 => {
                    link.rx.0.lost.fetch_add(1, Relaxed);
                }
                Err(_) => return Err(self.queue_full()),
            }
        }
        Ok(())
    }

    /// One attempt to take a deliverable message. `Err(until)` when nothing
    /// is deliverable yet: wait for a signal, and until `until` if given;
    /// the flag says whether the queue itself is worth watching.
    fn take(&self, state: u8) -> Result<Option<Vec<u8>>, (Option<Instant>, bool)> {
        let end = &self.conn.ends[self.side];
        let mut staged = end.staged.lock();
        let result = self.take_locked(end, &mut staged, state);
        end.settle(&staged);
        result
    }

    fn take_locked(
        &self,
        end: &End,
        staged: &mut VecDeque<Box<Tagged>>,
        state: u8,
    ) -> Result<Option<Vec<u8>>, (Option<Instant>, bool)> {
        let mut now = None;
        let mut until: Option<Instant> = None;
        if end.urgent_len.load(SeqCst) > 0 {
            let mut urgent = end.urgent.lock();
            if let Some(t) = urgent.front() {
                match ready(t, 0, &mut now) {
                    Ok(()) => {
                        let t = urgent.pop_front().map(|t| t.msg);
                        end.urgent_len.fetch_sub(1, SeqCst);
                        return Ok(t);
                    }
                    Err(due) => until = due,
                }
            }
        }
        if staged.is_empty() {
            match end.rx.try_recv() {
                Ok(Item::Plain(msg)) => return Ok(Some(msg)),
                Ok(Item::Tagged(t)) => staged.push_back(t),
                Err(_) => {}
            }
        }
        let Some(t) = staged.front() else {
            // Nothing queued. Once the connection is over, nothing will be.
            if until.is_none() && state != 0 {
                return Ok(None);
            }
            return Err((until, true));
        };
        let released = self
            .shared
            .link(self.peer(), self.local())
            .rx
            .0
            .released
            .load(Acquire);
        match ready(t, released, &mut now) {
            Ok(()) => Ok(staged.pop_front().map(|t| t.msg)),
            Err(due) => {
                let until = match (until, due) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                Err((until, false))
            }
        }
    }
}

/// How many backoff steps a receive takes on an empty queue before it
/// parks: 6 growing spins, then 4 yields.
const SPIN_STEPS: u32 = 10;

fn backoff(step: u32) {
    if step < 6 {
        for _ in 0..1u32 << step {
            std::hint::spin_loop();
        }
    } else {
        std::thread::yield_now();
    }
}

impl Channel for InMemoryChannel {
    fn send(&self, msg: &[u8]) -> Result<(), ChannelError> {
        self.send_inner(msg, None)
    }

    fn receive(&self, timeout: Duration) -> Result<Option<Vec<u8>>, ChannelError> {
        // The fast path, kept small enough to inline: an open connection,
        // nothing staged, a plain message at the front of the queue.
        // While the queue is empty it spins, then yields, a few times, as
        // crossbeam's own blocking receive does before it parks: a message
        // about to arrive is taken without registering a waiter.
        let end = &self.conn.ends[self.side];
        let spins = if timeout.is_zero() { 0 } else { SPIN_STEPS };
        let mut step = 0;
        while self.conn.state.load(Acquire) == 0 && !end.slow.load(SeqCst) {
            match end.rx.try_recv() {
                Ok(Item::Plain(msg)) => return self.delivered(msg),
                Ok(Item::Tagged(t)) => {
                    let mut staged = end.staged.lock();
                    staged.push_back(t);
                    end.settle(&staged);
                }
                Err(_) if step < spins => {
                    backoff(step);
                    step += 1;
                }
                Err(_) => break,
            }
        }
        self.receive_waiting(timeout)
    }

    fn close(&self) {
        let _ctl = self.shared.control.lock();
        if self.conn.mark(CLOSED[self.side]) {
            let lost = self.conn.ends[self.side].discard();
            self.shared
                .link(self.peer(), self.local())
                .rx
                .0
                .lost
                .fetch_add(lost, Relaxed);
        }
    }

    fn is_open(&self) -> bool {
        self.conn.state.load(Acquire) == 0
    }
}
