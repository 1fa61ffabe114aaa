//! The in-process transport: many nodes in one process on one
//! [`InProcessNetwork`], whose links follow the mesh's [`FaultModel`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use multinode_mesh::{Fate, FaultModel, LinkCounters, LinkFaults};
use multinode_wire::{ClusterFrame, DEFAULT_MAX_FRAME, FRAME_HEADER_LEN, NodeId};
use parking_lot::{Mutex, RwLock};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::stats::{PeerCounters, add};
use crate::transport::dispatch;
use crate::{GossipError, GossipTransport, Ready, RemoteMessageSink, SendError, TransportStats};

/// Settings of an [`InProcessNetwork`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct InProcessConfig {
    /// Frames each node's inbox holds before `send` to it returns
    /// [`SendError::QueueFull`] (and, separately, frames each held link
    /// keeps). Default 4,096.
    pub queue_frames: usize,
    /// The frame cap, as on TCP: a larger frame is refused by `send`.
    pub max_frame: usize,
    /// The fault model's seed.
    pub seed: u64,
}

impl Default for InProcessConfig {
    fn default() -> Self {
        Self {
            queue_frames: 4096,
            max_frame: DEFAULT_MAX_FRAME,
            seed: 0,
        }
    }
}

/// Many nodes in one process: node ids `0..size`, each registered at most
/// once at a time, every directed link under the mesh's fault model.
///
/// The fault verbs are the mesh's: `cut`, `partition`, `heal`,
/// `hold`/`release`, random `drop`, `delay`, `duplicate` and `reorder`
/// ([`LinkFaults`]), and `crash` (a node's transport stops and its inbox is
/// lost; it restarts by registering again, with a new incarnation that its
/// peers see). Every fault is counted per link ([`Self::counters`]).
/// Cheap to clone: clones are one network.
#[derive(Clone)]
pub struct InProcessNetwork {
    net: Arc<Net>,
}

struct Net {
    size: usize,
    config: InProcessConfig,
    ctl: Mutex<Control>,
    /// Whether any link may do anything but deliver at once: when false,
    /// `send` skips the fault model and its lock.
    faulty: AtomicBool,
    slots: Vec<RwLock<Option<Slot>>>,
    next_incarnation: AtomicU64,
    /// Per link (`from * size + to`): offered, handed to a sink, lost.
    sent: Vec<AtomicU64>,
    delivered: Vec<AtomicU64>,
    lost: Vec<AtomicU64>,
}

struct Control {
    model: FaultModel,
    held: HashMap<(usize, usize), VecDeque<Parcel>>,
    /// The latest due time given on each delayed link, so that a link's
    /// messages stay in order while it delays them.
    last_due: HashMap<(usize, usize), Instant>,
}

#[derive(Clone)]
struct Slot {
    incarnation: u64,
    tx: mpsc::Sender<Parcel>,
    cancel: CancellationToken,
}

struct Parcel {
    from: usize,
    incarnation: u64,
    frame: ClusterFrame,
    len: usize,
    /// When it may be handed over; `None` is now.
    due: Option<Instant>,
    /// Goes ahead of everything waiting at the receiver.
    overtake: bool,
}

impl fmt::Debug for InProcessNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InProcessNetwork")
            .field("size", &self.net.size)
            .finish_non_exhaustive()
    }
}

impl InProcessNetwork {
    /// A network of `size` nodes with default settings and every fault off.
    pub fn new(size: usize) -> Self {
        Self::with_config(size, InProcessConfig::default())
    }

    /// A network of `size` nodes.
    pub fn with_config(size: usize, mut config: InProcessConfig) -> Self {
        config.queue_frames = config.queue_frames.max(1);
        let links = || (0..size * size).map(|_| AtomicU64::new(0)).collect();
        Self {
            net: Arc::new(Net {
                size,
                ctl: Mutex::new(Control {
                    model: FaultModel::new(size, config.seed),
                    held: HashMap::new(),
                    last_due: HashMap::new(),
                }),
                config,
                faulty: AtomicBool::new(false),
                slots: (0..size).map(|_| RwLock::new(None)).collect(),
                next_incarnation: AtomicU64::new(1),
                sent: links(),
                delivered: links(),
                lost: links(),
            }),
        }
    }

    /// How many nodes the network has.
    pub fn size(&self) -> usize {
        self.net.size
    }

    /// Registers `node`, delivering what arrives for it to `sink` from a
    /// task on the current tokio runtime.
    ///
    /// Fails if `node` is outside the network, if a live transport holds
    /// it ([`GossipError::AddressInUse`]: never an overwrite), or outside a
    /// runtime.
    pub fn register(
        &self,
        node: NodeId,
        sink: Arc<dyn RemoteMessageSink>,
    ) -> Result<InProcessTransport, GossipError> {
        let net = &self.net;
        let index = usize::try_from(node.0)
            .ok()
            .filter(|&i| i < net.size)
            .ok_or(GossipError::OutsideNetwork {
                node,
                size: net.size,
            })?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| GossipError::NoRuntime)?;
        let mut slot = net.slots[index].write();
        if slot.as_ref().is_some_and(|s| !s.cancel.is_cancelled()) {
            return Err(GossipError::AddressInUse(node));
        }
        let incarnation = net.next_incarnation.fetch_add(1, Relaxed);
        let (tx, rx) = mpsc::channel(net.config.queue_frames);
        let cancel = CancellationToken::new();
        let counters: Arc<[OnceLock<PeerCounters>]> =
            (0..net.size).map(|_| OnceLock::new()).collect();
        let task = runtime.spawn(deliver(
            Arc::clone(net),
            index,
            rx,
            sink,
            Arc::clone(&counters),
            cancel.clone(),
        ));
        *slot = Some(Slot {
            incarnation,
            tx,
            cancel: cancel.clone(),
        });
        Ok(InProcessTransport {
            net: Arc::clone(net),
            index,
            incarnation,
            counters,
            cancel,
            unknown_peer: AtomicU64::new(0),
            task: Mutex::new(Some(task)),
        })
    }

    /// Whether a live transport holds `node`.
    pub fn is_registered(&self, node: NodeId) -> bool {
        usize::try_from(node.0)
            .ok()
            .and_then(|i| self.net.slots.get(i))
            .is_some_and(|s| s.read().as_ref().is_some_and(|s| !s.cancel.is_cancelled()))
    }

    /// Crashes `node`: its transport stops (its sends fail with
    /// [`SendError::Closed`]), and what waits in its inbox is lost and
    /// counted. It restarts by registering again.
    pub fn crash(&self, node: NodeId) {
        let Some(slot) = usize::try_from(node.0)
            .ok()
            .and_then(|i| self.net.slots.get(i))
        else {
            return;
        };
        if let Some(s) = slot.write().take() {
            s.cancel.cancel();
        }
    }

    /// Sets the random faults of the link `from → to`.
    pub fn set_faults(&self, from: NodeId, to: NodeId, faults: LinkFaults) {
        self.control(|c| c.model.set_faults(ix(from), ix(to), faults));
    }

    /// Sets the same random faults on every link.
    pub fn set_all_faults(&self, faults: &LinkFaults) {
        self.control(|c| c.model.set_all_faults(faults));
    }

    /// Cuts `from → to` one way: frames on it are lost (and counted).
    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.control(|c| c.model.cut(ix(from), ix(to)));
    }

    /// Cuts every link between `a` and `b`, both ways.
    pub fn partition(&self, a: &[NodeId], b: &[NodeId]) {
        let (a, b): (Vec<_>, Vec<_>) = (
            a.iter().map(|&n| ix(n)).collect(),
            b.iter().map(|&n| ix(n)).collect(),
        );
        self.control(|c| c.model.partition(&a, &b));
    }

    /// Restores every cut link.
    pub fn heal(&self) {
        self.control(|c| c.model.heal());
    }

    /// Holds `from → to`: its frames wait, in order, until [`Self::release`].
    pub fn hold(&self, from: NodeId, to: NodeId) {
        self.control(|c| c.model.hold(ix(from), ix(to)));
    }

    /// Releases `from → to`: what it held is delivered, in send order,
    /// ahead of anything sent on it later.
    pub fn release(&self, from: NodeId, to: NodeId) {
        let (f, t) = (ix(from), ix(to));
        let held = self.control(|c| {
            c.model.release(f, t);
            c.held.remove(&(f, t)).unwrap_or_default()
        });
        let slot = self.net.slots[t].read().clone();
        for parcel in held {
            self.net.push(slot.as_ref(), t, parcel);
        }
    }

    /// What happened on `from → to`: the fault model's counts, with
    /// `sent`, `delivered` and `lost` as this network saw them.
    pub fn counters(&self, from: NodeId, to: NodeId) -> LinkCounters {
        let (f, t) = (ix(from), ix(to));
        let mut c = self.net.ctl.lock().model.counters(f, t);
        let link = f * self.net.size + t;
        c.sent = self.net.sent[link].load(Relaxed);
        c.delivered = self.net.delivered[link].load(Relaxed);
        c.lost = self.net.lost[link].load(Relaxed);
        c
    }

    /// A fingerprint of every fault decision so far (see
    /// [`FaultModel::trace_hash`]).
    pub fn trace_hash(&self) -> u64 {
        self.net.ctl.lock().model.trace_hash()
    }

    fn control<R>(&self, f: impl FnOnce(&mut Control) -> R) -> R {
        let mut ctl = self.net.ctl.lock();
        let r = f(&mut ctl);
        let n = self.net.size;
        let faulty = (0..n).any(|a| (0..n).any(|b| ctl.model.is_faulty(a, b)));
        self.net
            .faulty
            .store(faulty || !ctl.held.is_empty(), Relaxed);
        r
    }
}

/// A node id as an index; a test's bug if outside the network (the fault
/// model panics with the link named).
fn ix(node: NodeId) -> usize {
    usize::try_from(node.0).unwrap_or(usize::MAX)
}

impl Net {
    /// Puts a parcel in `to`'s inbox; false (and counted lost) if there is
    /// no live receiver or no room.
    fn push(&self, slot: Option<&Slot>, to: usize, parcel: Parcel) -> bool {
        let link = parcel.from * self.size + to;
        match offer(slot, parcel) {
            Offer::Queued => true,
            Offer::Full | Offer::Gone => {
                add(&self.lost[link], 1);
                false
            }
        }
    }
}

/// What became of a parcel offered to an inbox.
enum Offer {
    Queued,
    Full,
    /// No live receiver.
    Gone,
}

fn offer(slot: Option<&Slot>, parcel: Parcel) -> Offer {
    let Some(slot) = slot else {
        return Offer::Gone;
    };
    match slot.tx.try_send(parcel) {
        Ok(()) => Offer::Queued,
        Err(mpsc::error::TrySendError::Full(_)) => Offer::Full,
        Err(mpsc::error::TrySendError::Closed(_)) => Offer::Gone,
    }
}

/// One node's transport on an [`InProcessNetwork`].
///
/// Dropping it unregisters the node (only if it still holds the node: a
/// newer registration of the same id is left alone) and stops its
/// delivery task; [`Self::shutdown`] also waits for that task.
pub struct InProcessTransport {
    net: Arc<Net>,
    index: usize,
    incarnation: u64,
    counters: Arc<[OnceLock<PeerCounters>]>,
    cancel: CancellationToken,
    unknown_peer: AtomicU64,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for InProcessTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InProcessTransport")
            .field("node", &self.index)
            .field("incarnation", &self.incarnation)
            .finish_non_exhaustive()
    }
}

impl InProcessTransport {
    /// This registration's incarnation (new at every registration).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Unregisters the node and waits until its delivery task has stopped.
    pub async fn shutdown(&self) {
        self.unregister();
        let task = self.task.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    fn unregister(&self) {
        self.cancel.cancel();
        let mut slot = self.net.slots[self.index].write();
        if slot
            .as_ref()
            .is_some_and(|s| s.incarnation == self.incarnation)
        {
            *slot = None;
        }
    }

    fn peer(&self, index: usize) -> &PeerCounters {
        self.counters[index].get_or_init(PeerCounters::default)
    }
}

impl Drop for InProcessTransport {
    fn drop(&mut self) {
        self.unregister();
    }
}

impl GossipTransport for InProcessTransport {
    fn local_node(&self) -> NodeId {
        NodeId(self.index as u64)
    }

    fn send(&self, to: NodeId, frame: &ClusterFrame) -> Result<(), SendError> {
        if self.cancel.is_cancelled() {
            return Err(SendError::Closed);
        }
        let net = &*self.net;
        let Some(t) = usize::try_from(to.0).ok().filter(|&t| t < net.size) else {
            add(&self.unknown_peer, 1);
            return Err(SendError::UnknownPeer(to));
        };
        let peer = self.peer(t);
        let len = frame.payload_len();
        if len > net.config.max_frame {
            add(&peer.too_large, 1);
            return Err(SendError::FrameTooLarge {
                len,
                max: net.config.max_frame,
            });
        }
        let link = self.index * net.size + t;
        let parcel = Parcel {
            from: self.index,
            incarnation: self.incarnation,
            frame: frame.clone(),
            len,
            due: None,
            overtake: false,
        };
        let slot = net.slots[t].read();
        let result = if net.faulty.load(Relaxed) {
            self.send_faulty(slot.as_ref(), t, parcel)
        } else {
            match offer(slot.as_ref(), parcel) {
                Offer::Queued => Ok(()),
                Offer::Full => Err(()),
                // No live receiver: handed to the network, which loses it.
                Offer::Gone => {
                    add(&net.lost[link], 1);
                    Ok(())
                }
            }
        };
        drop(slot);
        match result {
            Ok(()) => {
                add(&net.sent[link], 1);
                add(&peer.frames_sent, 1);
                add(&peer.bytes_sent, (len + FRAME_HEADER_LEN) as u64);
                Ok(())
            }
            Err(()) => {
                add(&peer.queue_full, 1);
                Err(SendError::QueueFull {
                    peer: to,
                    frames: net.config.queue_frames,
                    bytes: 0,
                })
            }
        }
    }

    fn ready(&self, to: NodeId) -> Ready<'_> {
        Box::pin(async move {
            let net = &*self.net;
            let Some(t) = usize::try_from(to.0).ok().filter(|&t| t < net.size) else {
                return;
            };
            let tx = net.slots[t].read().as_ref().map(|s| s.tx.clone());
            let Some(tx) = tx else { return };
            if net.faulty.load(Relaxed) {
                // A held link refuses by the fault model's count, which no
                // channel permit tracks: let the caller try again.
                tokio::task::yield_now().await;
                return;
            }
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => {}
                // A permit that is dropped at once: room, not a reservation.
                _ = tx.reserve() => {}
            }
        })
    }

    fn stats(&self) -> TransportStats {
        TransportStats {
            node: self.local_node(),
            incarnation: self.incarnation,
            peers: self
                .counters
                .iter()
                .enumerate()
                .filter_map(|(i, c)| Some((NodeId(i as u64), c.get()?)))
                .filter(|(_, c)| !c.is_idle())
                .map(|(id, c)| (id, c.snapshot()))
                .collect(),
            unknown_peer: self.unknown_peer.load(Relaxed),
            refused_handshakes: 0,
            bad_connections: 0,
            over_limit: 0,
            auth_failures: 0,
            idle_closed: 0,
        }
    }
}

impl InProcessTransport {
    /// The slow path: the fault model decides. `Err(())` is a full queue.
    fn send_faulty(&self, slot: Option<&Slot>, t: usize, mut parcel: Parcel) -> Result<(), ()> {
        let net = &*self.net;
        let me = self.index;
        let mut ctl = net.ctl.lock();
        let held = ctl.held.get(&(me, t)).map_or(0, VecDeque::len);
        if ctl.model.is_holding(me, t) && held >= net.config.queue_frames {
            return Err(());
        }
        match ctl.model.decide_len(me, t, parcel.len) {
            Fate::Dropped => Ok(()),
            Fate::Held => {
                ctl.held.entry((me, t)).or_default().push_back(parcel);
                Ok(())
            }
            Fate::Deliver {
                after,
                copies,
                overtake,
            } => {
                if overtake {
                    parcel.overtake = true;
                } else if let Some(&last) = ctl.last_due.get(&(me, t)) {
                    // Keep the link in order behind what it still delays.
                    let due = (Instant::now() + after).max(last);
                    if due > Instant::now() {
                        parcel.due = Some(due);
                    }
                } else if !after.is_zero() {
                    parcel.due = Some(Instant::now() + after);
                }
                if let Some(due) = parcel.due {
                    ctl.last_due.insert((me, t), due);
                }
                drop(ctl);
                if copies > 1 {
                    let copy = Parcel {
                        frame: parcel.frame.clone(),
                        ..parcel
                    };
                    match offer(slot, copy) {
                        Offer::Queued => {}
                        Offer::Full => return Err(()),
                        Offer::Gone => add(&net.lost[me * net.size + t], 1),
                    }
                }
                match offer(slot, parcel) {
                    Offer::Queued => Ok(()),
                    Offer::Full => Err(()),
                    Offer::Gone => {
                        add(&net.lost[me * net.size + t], 1);
                        Ok(())
                    }
                }
            }
        }
    }
}

/// A parcel waiting at its receiver, ordered by due time (`None` first),
/// then arrival.
struct Waiting {
    key: (Option<Instant>, u64),
    parcel: Parcel,
}

impl PartialEq for Waiting {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}
impl Eq for Waiting {}
impl PartialOrd for Waiting {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Waiting {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key.cmp(&other.key)
    }
}

/// A node's delivery task: hands parcels to the sink when they are due.
async fn deliver(
    net: Arc<Net>,
    me: usize,
    mut rx: mpsc::Receiver<Parcel>,
    sink: Arc<dyn RemoteMessageSink>,
    counters: Arc<[OnceLock<PeerCounters>]>,
    cancel: CancellationToken,
) {
    let lost = |from: usize| add(&net.lost[from * net.size + me], 1);
    let hand = |p: Parcel| {
        if cancel.is_cancelled() {
            // Crashed while this batch was being handed over.
            return lost(p.from);
        }
        let peer = counters[p.from].get_or_init(PeerCounters::default);
        let from = NodeId(p.from as u64);
        if peer.observe(p.incarnation) {
            sink.on_peer_restarted(from, p.incarnation);
        }
        add(&peer.frames_received, 1);
        add(&peer.bytes_received, (p.len + FRAME_HEADER_LEN) as u64);
        add(&net.delivered[p.from * net.size + me], 1);
        dispatch(&*sink, from, p.frame);
    };
    let mut waiting: BinaryHeap<Reverse<Waiting>> = BinaryHeap::new();
    let mut arrivals = 1u64;
    let mut batch = Vec::with_capacity(64);
    loop {
        let next_due = waiting.peek().and_then(|w| w.0.key.0);
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            n = rx.recv_many(&mut batch, 64) => {
                if n == 0 {
                    break;
                }
                let now = Instant::now();
                for p in batch.drain(..) {
                    if waiting.is_empty() && !p.overtake && p.due.is_none_or(|d| d <= now) {
                        hand(p);
                    } else {
                        let rank = if p.overtake { 0 } else { arrivals };
                        let due = if p.overtake { None } else { p.due };
                        arrivals += 1;
                        waiting.push(Reverse(Waiting { key: (due, rank), parcel: p }));
                    }
                }
            }
            () = tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now)), if next_due.is_some() => {}
        }
        let now = Instant::now();
        while waiting
            .peek()
            .is_some_and(|w| w.0.key.0.is_none_or(|d| d <= now))
        {
            if let Some(Reverse(w)) = waiting.pop() {
                hand(w.parcel);
            }
        }
    }
    // Crashed or unregistered: what is left is lost, and counted.
    rx.close();
    for Reverse(w) in waiting {
        lost(w.parcel.from);
    }
    while let Ok(p) = rx.try_recv() {
        lost(p.from);
    }
}
