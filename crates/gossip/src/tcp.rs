//! The TCP transport: a listener, an outbound connection task per peer
//! while it has frames or a connection (so a peer's frames keep their
//! order and a wedged peer holds up only its own; a peer nobody sends to
//! costs no task), and one reader task per inbound connection.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use multinode_wire::{ClusterFrame, ClusterId, DEFAULT_MAX_FRAME, Hello, NodeId, Secret};
use parking_lot::{Mutex, RwLock};
use tokio::net::{TcpListener, TcpStream};

/// The accept queue the transport asks for (the kernel caps it at
/// `net.core.somaxconn`).
const ACCEPT_BACKLOG: i32 = 4096;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod inbound;
mod outbound;

use inbound::accept_loop;
use outbound::{run_peer, write_direct};

use crate::handshake::{Local, Shaken};
use crate::outbox::{Outbox, Refused};
use crate::stats::{PeerCounters, add};
use crate::throttle::Warnings;
use crate::{GossipError, GossipTransport, Ready, RemoteMessageSink, SendError, TransportStats};

/// Settings of a [`TcpTransport`]. Start from [`TcpTransportConfig::new`]
/// and change the fields you need.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TcpTransportConfig {
    /// The cluster: peers of another cluster are refused at the handshake.
    pub cluster_id: ClusterId,
    /// This node.
    pub node_id: NodeId,
    /// Where to listen. Default `127.0.0.1:0` (loopback, any free port).
    pub bind: SocketAddr,
    /// This process's incarnation; default: chosen at bind from the clock
    /// and the process id, so it differs across restarts.
    pub incarnation: Option<u64>,
    /// The frame cap, on send and on receive. Default 16 MiB.
    pub max_frame: usize,
    /// Frames each peer's queue holds. Default 4,096.
    pub queue_frames: usize,
    /// Bytes each peer's queue holds. Default 64 MiB.
    pub queue_bytes: usize,
    /// How long a connection attempt may take. Default 2 s.
    pub connect_timeout: Duration,
    /// How long the handshake may take, either side. Default 2 s.
    pub handshake_timeout: Duration,
    /// How long one write may block before the connection is given up.
    /// Default 5 s.
    pub write_timeout: Duration,
    /// The first reconnect delay. Default 20 ms.
    pub backoff_min: Duration,
    /// The largest reconnect delay. Default 2 s.
    pub backoff_max: Duration,
    /// Inbound connections served at once; more are closed at once.
    /// Default 256.
    pub max_inbound: usize,
    /// Distinct node ids this transport keeps stats for. Peers added with
    /// `add_peer` always count; an inbound connection claiming a new id
    /// beyond this is closed (and counted as `over_limit`), so peers that
    /// invent ids cannot grow memory without bound. Default 4,096.
    pub max_tracked_peers: usize,
    /// Seeds the reconnect jitter; default: the node id and incarnation.
    pub seed: Option<u64>,
    /// The cluster secret every handshake must prove, both ways (see
    /// `docs/wire-format.md`). Required when `bind` is not a loopback
    /// address. Default: none.
    pub secret: Option<Secret>,
    /// An inbound connection that carries no frame for this long is closed
    /// (gossip is periodic: silence means the peer is gone, or has nothing
    /// for us; its connection task dials again). Default 60 s.
    pub idle_timeout: Duration,
    /// An outbound connection with nothing to write for this long is
    /// closed; the peer is dialled again when a frame is queued for it.
    /// Keeps the descriptors a node holds to the peers it talks to often,
    /// not to every peer it ever talked to (a large cluster's gossip picks
    /// a few peers a round out of many). Must stay below the peers'
    /// `idle_timeout`. Default 10 s.
    pub linger: Duration,
}

impl TcpTransportConfig {
    /// Defaults for `node_id` in `cluster_id`, listening on loopback.
    pub fn new(cluster_id: ClusterId, node_id: NodeId) -> Self {
        Self {
            cluster_id,
            node_id,
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            incarnation: None,
            max_frame: DEFAULT_MAX_FRAME,
            queue_frames: 4096,
            queue_bytes: 64 << 20,
            connect_timeout: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(2),
            write_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_secs(2),
            max_inbound: 256,
            max_tracked_peers: 4096,
            seed: None,
            secret: None,
            idle_timeout: Duration::from_secs(60),
            linger: Duration::from_secs(10),
        }
    }
}

/// Gossip over TCP. See the crate docs for the connection model.
///
/// [`Self::shutdown`] stops every task and waits for them; dropping the
/// transport cancels them without waiting. Frames still queued then are
/// counted as [`Drops::shutdown`](crate::Drops::shutdown).
pub struct TcpTransport {
    shared: Arc<Shared>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    runtime: tokio::runtime::Handle,
    local_addr: SocketAddr,
}

struct Shared {
    config: TcpTransportConfig,
    incarnation: u64,
    sink: Arc<dyn RemoteMessageSink>,
    peers: RwLock<BTreeMap<NodeId, Known>>,
    counters: RwLock<HashMap<NodeId, Arc<PeerCounters>>>,
    closed: AtomicBool,
    unknown_peer: AtomicU64,
    refused_handshakes: AtomicU64,
    bad_connections: AtomicU64,
    over_limit: AtomicU64,
    auth_failures: AtomicU64,
    idle_closed: AtomicU64,
    /// The live inbound connection of each node id (its number and how to
    /// close it): a newer connection from the same node replaces it.
    inbound: Mutex<HashMap<NodeId, (u64, CancellationToken)>>,
    next_inbound: AtomicU64,
    warnings: Warnings,
}

/// Puts `node` at `addr` in the peer table: a move drops what was queued
/// for the old address (its connection task sees the cancellation).
fn place(peers: &mut BTreeMap<NodeId, Known>, node: NodeId, addr: SocketAddr) {
    if peers.get(&node).is_some_and(|k| k.addr == addr) {
        return;
    }
    let known = Known { addr, live: None };
    if let Some(old) = peers.insert(node, known).and_then(|k| k.live) {
        old.cancel.cancel();
    }
}

/// A peer added: its address and, from the first frame sent to it, its
/// queue and connection state. A node of a large cluster adds every member
/// and sends to the few its gossip picks: the others cost an address.
struct Known {
    addr: SocketAddr,
    live: Option<Arc<Peer>>,
}

/// One peer we send to.
struct Peer {
    id: NodeId,
    addr: SocketAddr,
    /// The queue: frames already encoded, back to back, in send order.
    outbox: Mutex<Outbox>,
    /// Tells the connection task the outbox has frames.
    wake: Notify,
    /// Tells waiting senders the outbox has room again (or closed).
    room: Notify,
    /// The live connection and its number, for senders that write a whole
    /// chunk themselves.
    stream: Mutex<Option<(u64, Arc<TcpStream>)>>,
    /// Connections made so far (their numbers), and connection tasks
    /// started: both outlive any one task.
    conns: AtomicU64,
    tasks: AtomicU64,
    /// Reconnect attempts that failed in a row, carried from one connection
    /// task to the next, so a peer that is down is dialled less and less
    /// often even while its tasks come and go.
    failures: AtomicU32,
    counters: Arc<PeerCounters>,
    cancel: CancellationToken,
}

impl fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpTransport")
            .field("node", &self.shared.config.node_id)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl TcpTransport {
    /// Listens on `config.bind` and starts accepting peers, delivering what
    /// arrives to `sink`. Must be called inside a tokio runtime, whose
    /// tasks the transport then uses.
    pub async fn bind(
        config: TcpTransportConfig,
        sink: Arc<dyn RemoteMessageSink>,
    ) -> Result<Self, GossipError> {
        if config.queue_frames == 0 || config.max_inbound == 0 {
            return Err(GossipError::Config(
                "queue_frames and max_inbound must be at least 1".into(),
            ));
        }
        if !config.bind.ip().is_loopback() && config.secret.is_none() {
            return Err(GossipError::Config(format!(
                "binding {} (not loopback) needs a cluster secret: anyone who can reach it \
                 could otherwise join as a member",
                config.bind
            )));
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| GossipError::NoRuntime)?;
        let listener =
            TcpListener::bind(config.bind)
                .await
                .map_err(|source| GossipError::Bind {
                    addr: config.bind,
                    source,
                })?;
        // Peers dial on demand, many at once after a join: room for them
        // in the accept queue (the usual 128 drops SYNs past it, and a
        // dropped dial waits a second to retry).
        socket2::SockRef::from(&listener)
            .listen(ACCEPT_BACKLOG)
            .map_err(|source| GossipError::Bind {
                addr: config.bind,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| GossipError::Bind {
            addr: config.bind,
            source,
        })?;
        let incarnation = config.incarnation.unwrap_or_else(default_incarnation);
        let shared = Arc::new(Shared {
            incarnation,
            sink,
            peers: RwLock::default(),
            counters: RwLock::default(),
            closed: AtomicBool::new(false),
            unknown_peer: AtomicU64::new(0),
            refused_handshakes: AtomicU64::new(0),
            bad_connections: AtomicU64::new(0),
            over_limit: AtomicU64::new(0),
            auth_failures: AtomicU64::new(0),
            idle_closed: AtomicU64::new(0),
            inbound: Mutex::default(),
            next_inbound: AtomicU64::new(0),
            warnings: Warnings::default(),
            config,
        });
        let (tracker, cancel) = (TaskTracker::new(), CancellationToken::new());
        tracker.spawn_on(
            accept_loop(
                Arc::clone(&shared),
                listener,
                tracker.clone(),
                cancel.clone(),
            ),
            &runtime,
        );
        Ok(Self {
            shared,
            tracker,
            cancel,
            runtime,
            local_addr,
        })
    }

    /// The address the transport listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// This process's incarnation, as peers see it.
    pub fn incarnation(&self) -> u64 {
        self.shared.incarnation
    }

    /// Adds `node` at `addr` (or moves it there). The first frame queued
    /// for the peer starts its connection task, which dials, redials with
    /// backoff while frames wait, closes the connection after
    /// [`TcpTransportConfig::linger`] with nothing to write, and ends
    /// there until the next frame: a peer nobody sends to costs no task,
    /// no connection and no buffer.
    /// Moving a peer drops what was queued for its old address (counted).
    pub fn add_peer(&self, node: NodeId, addr: SocketAddr) -> Result<(), GossipError> {
        if self.shared.closed.load(Relaxed) {
            return Err(GossipError::Closed);
        }
        if node == self.shared.config.node_id {
            return Err(GossipError::Config(format!(
                "node {node} is this transport's own id"
            )));
        }
        place(&mut self.shared.peers.write(), node, addr);
        Ok(())
    }

    /// Adds many peers as [`Self::add_peer`] adds one, under one lock; into
    /// an empty table, in one pass. A node joining a cluster of a thousand
    /// adds every member at once: a million peers across the cluster.
    /// Adds none if one of them is this transport's own id.
    pub fn add_peers(&self, peers: &[(NodeId, SocketAddr)]) -> Result<(), GossipError> {
        if self.shared.closed.load(Relaxed) {
            return Err(GossipError::Closed);
        }
        let me = self.shared.config.node_id;
        if peers.iter().any(|(node, _)| *node == me) {
            return Err(GossipError::Config(format!(
                "node {me} is this transport's own id"
            )));
        }
        let mut table = self.shared.peers.write();
        if table.is_empty() {
            // A repeated id keeps its last address, as one call each would.
            *table = peers
                .iter()
                .map(|&(node, addr)| (node, Known { addr, live: None }))
                .collect();
        } else {
            for &(node, addr) in peers {
                place(&mut table, node, addr);
            }
        }
        Ok(())
    }

    /// Removes `node`: its connection closes and what was queued for it is
    /// dropped (counted). Returns whether it was a peer.
    pub fn remove_peer(&self, node: NodeId) -> bool {
        let removed = self.shared.peers.write().remove(&node);
        removed
            .inspect(|k| k.live.iter().for_each(|p| p.cancel.cancel()))
            .is_some()
    }

    /// The peers added, with their addresses.
    pub fn peers(&self) -> Vec<(NodeId, SocketAddr)> {
        let mut v: Vec<_> = self
            .shared
            .peers
            .read()
            .iter()
            .map(|(id, k)| (*id, k.addr))
            .collect();
        v.sort();
        v
    }

    /// Stops accepting, closes every connection, and waits until every
    /// task of the transport has ended. Sends fail with
    /// [`SendError::Closed`] from the moment it is called.
    pub async fn shutdown(&self) {
        self.shared.closed.store(true, Relaxed);
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        self.shared.closed.store(true, Relaxed);
        self.cancel.cancel();
        self.tracker.close();
    }
}

fn default_incarnation() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 40)
}

impl Shared {
    fn counters(&self, node: NodeId) -> Arc<PeerCounters> {
        if let Some(c) = self.counters.read().get(&node) {
            return Arc::clone(c);
        }
        Arc::clone(self.counters.write().entry(node).or_default())
    }

    /// `node`'s queue and connection state, made on the first frame sent
    /// to it; `None` once it is no longer a peer.
    fn live(&self, node: NodeId, cancel: &CancellationToken) -> Option<Arc<Peer>> {
        let mut peers = self.peers.write();
        let known = peers.get_mut(&node)?;
        let addr = known.addr;
        let peer = known.live.get_or_insert_with(|| {
            Arc::new(Peer {
                id: node,
                addr,
                outbox: Mutex::new(Outbox::new(
                    self.config.max_frame,
                    self.config.queue_frames,
                    self.config.queue_bytes,
                )),
                wake: Notify::new(),
                room: Notify::new(),
                stream: Mutex::new(None),
                conns: AtomicU64::new(0),
                tasks: AtomicU64::new(0),
                failures: AtomicU32::new(0),
                counters: self.counters(node),
                cancel: cancel.child_token(),
            })
        });
        Some(Arc::clone(peer))
    }

    /// The counters of an inbound peer: existing ones, or new ones while
    /// fewer than `max_tracked_peers` node ids are tracked.
    fn tracked_counters(&self, node: NodeId) -> Option<Arc<PeerCounters>> {
        if let Some(c) = self.counters.read().get(&node) {
            return Some(Arc::clone(c));
        }
        let mut all = self.counters.write();
        if !all.contains_key(&node) && all.len() >= self.config.max_tracked_peers {
            return None;
        }
        Some(Arc::clone(all.entry(node).or_default()))
    }

    /// Records `peer`'s incarnation and clock offset from its handshake,
    /// and tells the sink if it restarted.
    fn observe(&self, peer: NodeId, counters: &PeerCounters, shaken: &Shaken) {
        counters.observe_clock(shaken.clock_offset_ms);
        let incarnation = shaken.session.incarnation;
        if counters.observe(incarnation) {
            tracing::info!(%peer, incarnation, "peer restarted");
            self.sink.on_peer_restarted(peer, incarnation);
        }
    }

    /// What this transport brings to a handshake.
    fn local(&self) -> Local<'_> {
        Local {
            hello: Hello::new(self.config.cluster_id, self.config.node_id),
            incarnation: self.incarnation,
            secret: self.config.secret.as_ref(),
            max_frame: self.config.max_frame,
        }
    }
}

impl TcpTransport {
    /// Queues `frame` for `peer`, starting or waking its connection task.
    /// `Ok(true)`: a whole chunk waits and the caller holds the write turn
    /// for it ([`Outbox::claim_sealed`]), to write it ([`write_sealed`])
    /// once it has let go of the peer map. Only a flag comes back: this
    /// runs once per frame, and a chunk handed back by value cost every
    /// frame a copy of it through memory.
    #[inline(always)]
    fn enqueue(&self, peer: &Arc<Peer>, frame: &ClusterFrame) -> Result<bool, SendError> {
        let mut ob = peer.outbox.lock();
        if ob.closed {
            return Err(SendError::Closed);
        }
        if let Err(refused) = ob.push(frame) {
            drop(ob);
            return Err(refusal(peer, refused));
        }
        let sealed = ob.claim_sealed();
        let wake = std::mem::take(&mut ob.idle);
        let start = !std::mem::replace(&mut ob.task, true);
        drop(ob);
        if start {
            self.tracker.spawn_on(
                run_peer(Arc::clone(&self.shared), Arc::clone(peer)),
                &self.runtime,
            );
        } else if wake {
            peer.wake.notify_one();
        }
        Ok(sealed)
    }
}

/// Counts a refused frame and says why.
#[cold]
fn refusal(peer: &Peer, refused: Refused) -> SendError {
    match refused {
        Refused::Full { frames, bytes } => {
            add(&peer.counters.queue_full, 1);
            SendError::QueueFull {
                peer: peer.id,
                frames,
                bytes,
            }
        }
        Refused::Encode(e) => {
            add(&peer.counters.too_large, 1);
            e.into()
        }
    }
}

/// Writes the whole chunk the sender claimed, from the sender's thread:
/// once per chunk, not per frame. If the connection ended meanwhile, the
/// turn goes back (and to the connection task, if it asked for it).
#[cold]
#[inline(never)]
fn write_sealed(peer: &Peer) {
    let mut ob = peer.outbox.lock();
    if let Some((chunk, frames, conn)) = ob.take_claimed() {
        drop(ob);
        write_direct(peer, chunk, frames, conn);
        return;
    }
    let wake = std::mem::take(&mut ob.want_turn);
    drop(ob);
    if wake {
        peer.wake.notify_one();
    }
}

impl GossipTransport for TcpTransport {
    fn local_node(&self) -> NodeId {
        self.shared.config.node_id
    }

    fn send(&self, to: NodeId, frame: &ClusterFrame) -> Result<(), SendError> {
        let shared = &*self.shared;
        if shared.closed.load(Relaxed) {
            return Err(SendError::Closed);
        }
        let peers = shared.peers.read();
        let peer = match peers.get(&to) {
            Some(Known {
                live: Some(peer), ..
            }) => {
                if !self.enqueue(peer, frame)? {
                    return Ok(());
                }
                let peer = Arc::clone(peer);
                drop(peers);
                peer
            }
            Some(_) => {
                drop(peers);
                let Some(peer) = shared.live(to, &self.cancel) else {
                    add(&shared.unknown_peer, 1);
                    return Err(SendError::UnknownPeer(to));
                };
                if !self.enqueue(&peer, frame)? {
                    return Ok(());
                }
                peer
            }
            None => {
                add(&shared.unknown_peer, 1);
                return Err(SendError::UnknownPeer(to));
            }
        };
        // Once per chunk, with the peer map no longer held.
        write_sealed(&peer);
        Ok(())
    }

    fn ready(&self, to: NodeId) -> Ready<'_> {
        Box::pin(async move {
            // A peer never sent to has an empty queue: room.
            let live = self
                .shared
                .peers
                .read()
                .get(&to)
                .and_then(|k| k.live.clone());
            let Some(peer) = live else {
                return;
            };
            loop {
                let notified = peer.room.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                {
                    let mut ob = peer.outbox.lock();
                    if ob.closed || ob.has_room() {
                        return;
                    }
                    ob.want_room = true;
                }
                tokio::select! {
                    biased;
                    () = peer.cancel.cancelled() => return,
                    () = notified => {}
                }
            }
        })
    }

    fn stats(&self) -> TransportStats {
        let s = &*self.shared;
        TransportStats {
            node: s.config.node_id,
            incarnation: s.incarnation,
            peers: {
                let mut peers: BTreeMap<_, _> = s
                    .counters
                    .read()
                    .iter()
                    .map(|(id, c)| (*id, c.snapshot()))
                    .collect();
                for (id, k) in s.peers.read().iter() {
                    if let (Some(stats), Some(p)) = (peers.get_mut(id), &k.live) {
                        stats.queued = p.outbox.lock().frames() as u64;
                    }
                }
                peers
            },
            unknown_peer: s.unknown_peer.load(Relaxed),
            refused_handshakes: s.refused_handshakes.load(Relaxed),
            bad_connections: s.bad_connections.load(Relaxed),
            over_limit: s.over_limit.load(Relaxed),
            auth_failures: s.auth_failures.load(Relaxed),
            idle_closed: s.idle_closed.load(Relaxed),
        }
    }
}
