//! The in-process transport: many nodes in one process on one
//! [`InProcessNetwork`], whose links follow the mesh's [`FaultModel`].

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use multinode_mesh::{FaultModel, LinkCounters, LinkFaults};
use multinode_wire::{ClusterFrame, DEFAULT_MAX_FRAME, NodeId};
use parking_lot::{Mutex, RwLock};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::stats::{PeerCounters, add};
use crate::{GossipError, RemoteMessageSink};

mod delivery;
mod transport;

use delivery::deliver;
pub use transport::InProcessTransport;

/// Settings of an [`InProcessNetwork`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct InProcessConfig {
    /// Frames each node's inbox holds before `send` to it returns
    /// [`SendError::QueueFull`](crate::SendError::QueueFull) (and,
    /// separately, frames each held link keeps). Default 4,096.
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
/// `hold`/`release`, random `drop`, `delay`, `duplicate`, `reorder` and
/// `corrupt` ([`LinkFaults`]; a corrupted frame is encoded, has its byte
/// flipped and is decoded again: delivered changed, or lost and counted
/// when the decoder refuses it), and `crash` (a node's transport stops and its inbox is
/// lost; it restarts by registering again, with a new incarnation that its
/// peers see). Every fault is counted per link ([`Self::counters`]).
/// Cheap to clone: clones are one network.
#[derive(Clone)]
pub struct InProcessNetwork {
    net: Arc<Net>,
}

pub(crate) struct Net {
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
                    model: FaultModel::new(config.seed),
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
    /// [`SendError::Closed`](crate::SendError::Closed)), and what waits in
    /// its inbox is lost and counted. It restarts by registering again.
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
        self.control(|c| c.model.set_faults(from, to, faults));
    }

    /// Sets the same random faults on every link.
    pub fn set_all_faults(&self, faults: &LinkFaults) {
        self.control(|c| c.model.set_all_faults(faults));
    }

    /// Cuts `from → to` one way: frames on it are lost (and counted).
    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.control(|c| c.model.cut(from, to));
    }

    /// Cuts every link between `a` and `b`, both ways.
    pub fn partition(&self, a: &[NodeId], b: &[NodeId]) {
        self.control(|c| c.model.partition(a, b));
    }

    /// Restores every cut link.
    pub fn heal(&self) {
        self.control(|c| c.model.heal());
    }

    /// Holds `from → to`: its frames wait, in order, until [`Self::release`].
    pub fn hold(&self, from: NodeId, to: NodeId) {
        self.control(|c| c.model.hold(from, to));
    }

    /// Releases `from → to`: what it held is delivered, in send order,
    /// ahead of anything sent on it later.
    pub fn release(&self, from: NodeId, to: NodeId) {
        let (f, t) = (ix(from), ix(to));
        let held = self.control(|c| {
            c.model.release(from, to);
            c.held.remove(&(f, t)).unwrap_or_default()
        });
        let Some(slot) = self.net.slots.get(t) else {
            return;
        };
        let slot = slot.read().clone();
        for parcel in held {
            self.net.push(slot.as_ref(), t, parcel);
        }
    }

    /// What happened on `from → to`: the fault model's counts, with
    /// `sent`, `delivered` and `lost` as this network saw them.
    ///
    /// # Panics
    /// If either node is outside the network.
    pub fn counters(&self, from: NodeId, to: NodeId) -> LinkCounters {
        let (f, t) = (ix(from), ix(to));
        let size = self.net.size;
        assert!(f < size && t < size, "link {from}->{to} outside 0..{size}");
        let mut c = self.net.ctl.lock().model.counters(from, to);
        let link = f * size + t;
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
        let faulty = ctl.model.any_faulty() || !ctl.held.is_empty();
        self.net.faulty.store(faulty, Relaxed);
        r
    }
}

/// A node id as an index (`usize::MAX` if it cannot be one).
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
