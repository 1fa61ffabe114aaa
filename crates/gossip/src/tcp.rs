//! The TCP transport: a listener, one outbound connection task per peer
//! (so a peer's frames keep their order and a wedged peer holds up only
//! its own), and one reader task per inbound connection.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use multinode_wire::{
    ClusterFrame, ClusterId, DEFAULT_MAX_FRAME, Hello, NodeId, Secret, WireError,
};
use parking_lot::{Mutex, RwLock};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::Backoff;
use crate::handshake::{DialError, Local, Shaken, handshake};
use crate::outbox::{Outbox, Partial, Refused};
use crate::stats::{PeerCounters, add};
use crate::throttle::Warnings;
use crate::transport::dispatch;
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
    peers: RwLock<BTreeMap<NodeId, Arc<Peer>>>,
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

    /// Adds `node` at `addr` (or moves it there) and starts its connection
    /// task, which dials at once and keeps redialling with backoff.
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
        let mut peers = self.shared.peers.write();
        if peers.get(&node).is_some_and(|p| p.addr == addr) {
            return Ok(());
        }
        let peer = Arc::new(Peer {
            id: node,
            addr,
            outbox: Mutex::new(Outbox::new(
                self.shared.config.max_frame,
                self.shared.config.queue_frames,
                self.shared.config.queue_bytes,
            )),
            wake: Notify::new(),
            room: Notify::new(),
            stream: Mutex::new(None),
            counters: self.shared.counters(node),
            cancel: self.cancel.child_token(),
        });
        if let Some(old) = peers.insert(node, Arc::clone(&peer)) {
            old.cancel.cancel();
        }
        drop(peers);
        self.tracker
            .spawn_on(run_peer(Arc::clone(&self.shared), peer), &self.runtime);
        Ok(())
    }

    /// Removes `node`: its connection closes and what was queued for it is
    /// dropped (counted). Returns whether it was a peer.
    pub fn remove_peer(&self, node: NodeId) -> bool {
        let removed = self.shared.peers.write().remove(&node);
        removed.inspect(|p| p.cancel.cancel()).is_some()
    }

    /// The peers added, with their addresses.
    pub fn peers(&self) -> Vec<(NodeId, SocketAddr)> {
        let mut v: Vec<_> = self
            .shared
            .peers
            .read()
            .values()
            .map(|p| (p.id, p.addr))
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
        let Some(peer) = peers.get(&to) else {
            add(&shared.unknown_peer, 1);
            return Err(SendError::UnknownPeer(to));
        };
        let mut ob = peer.outbox.lock();
        if ob.closed {
            return Err(SendError::Closed);
        }
        match ob.push(frame) {
            Ok(()) => {}
            Err(Refused::Full { frames, bytes }) => {
                drop(ob);
                add(&peer.counters.queue_full, 1);
                return Err(SendError::QueueFull {
                    peer: to,
                    frames,
                    bytes,
                });
            }
            Err(Refused::Encode(e)) => {
                drop(ob);
                add(&peer.counters.too_large, 1);
                return Err(e.into());
            }
        }
        let direct = ob.take_sealed();
        let wake = std::mem::take(&mut ob.idle);
        drop(ob);
        if wake {
            peer.wake.notify_one();
        }
        if let Some((chunk, frames, conn)) = direct {
            // Once per chunk: the peer map is not held across the write.
            let peer = Arc::clone(peer);
            drop(peers);
            write_direct(&peer, chunk, frames, conn);
        }
        Ok(())
    }

    fn ready(&self, to: NodeId) -> Ready<'_> {
        Box::pin(async move {
            let Some(peer) = self.shared.peers.read().get(&to).cloned() else {
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
                for (id, p) in s.peers.read().iter() {
                    if let Some(stats) = peers.get_mut(id) {
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

/// Frames decoded (and counted) at a time before they go to the sink. Each
/// holds a body allocated at decode and usually freed by the sink; glibc's
/// per-thread cache keeps 7 blocks of a size, so a batch of 7 is served
/// from it (8 sent one body in 8 through the slow path: about 70 more
/// instructions per 1 KiB frame).
const BATCH: usize = 7;

/// What a connection reads at a time while its peer is quiet...
const READ_BUF: usize = 64 << 10;
/// ...and at most, while its peer streams.
const READ_BUF_MAX: usize = 256 << 10;

/// How much a connection's reader offers the socket: [`READ_BUF`], doubling
/// up to [`READ_BUF_MAX`] while reads fill all they are offered (the peer
/// streams, and fewer, larger reads cost less), back to [`READ_BUF`] once a
/// read comes back less than half full. A quiet connection keeps a small
/// buffer; only a streaming one holds a large one.
#[derive(Debug)]
struct ReadSize(usize);

impl ReadSize {
    fn new() -> Self {
        Self(READ_BUF)
    }

    fn get(&self) -> usize {
        self.0
    }

    /// Learns from a read that was offered `offered` bytes and got `got`.
    fn after(&mut self, offered: usize, got: usize) {
        if got >= offered {
            self.0 = (self.0 * 2).min(READ_BUF_MAX);
        } else if got < offered / 2 {
            self.0 = READ_BUF;
        }
    }
}

/// Dials a peer and shakes hands, within the configured timeouts.
async fn dial(shared: &Shared, peer: &Peer) -> Result<(Shaken, TcpStream), DialError> {
    let cfg = &shared.config;
    let stream = tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(peer.addr))
        .await
        .map_err(|_| DialError::ConnectTimeout(cfg.connect_timeout))??;
    let local = shared.local();
    let (shaken, conn) = tokio::time::timeout(
        cfg.handshake_timeout,
        handshake(&local, stream, Some(peer.id)),
    )
    .await
    .map_err(|_| DialError::HandshakeTimeout(cfg.handshake_timeout))??;
    let parts = conn.into_parts();
    if !parts.read_buf.is_empty() {
        return Err(DialError::Wire(WireError::Decode {
            reason: "the peer sent frames on a connection it accepted".into(),
        }));
    }
    Ok((shaken, parts.io))
}

/// How a connection's pump ended.
enum Ended {
    /// The transport or the peer entry was cancelled.
    Cancelled,
    /// The connection failed; reconnect.
    Failed(String),
}

/// The connection task of one peer: dial, handshake, then write what its
/// queue holds, in order; on any failure, back off and dial again.
async fn run_peer(shared: Arc<Shared>, peer: Arc<Peer>) {
    let cfg = &shared.config;
    let seed = cfg
        .seed
        .unwrap_or(shared.incarnation ^ cfg.node_id.0.rotate_left(32))
        ^ peer.id.0;
    let mut backoff = Backoff::new(cfg.backoff_min, cfg.backoff_max, seed);
    let c = &*peer.counters;
    let mut conns = 0u64;
    loop {
        let dialled = tokio::select! {
            biased;
            () = peer.cancel.cancelled() => break,
            r = dial(&shared, &peer) => r,
        };
        let ended = match dialled {
            Ok((shaken, stream)) => {
                add(&c.connects, 1);
                shared.observe(peer.id, c, &shaken);
                tracing::debug!(peer = %peer.id, addr = %peer.addr, "connected");
                conns += 1;
                let since = Instant::now();
                let ended = pump(&shared, &peer, stream, conns).await;
                // Only a connection that lasted starts the delays afresh: a
                // peer that accepts and at once closes (it does not list us
                // as a peer yet, say) is dialled less and less often.
                if since.elapsed() >= cfg.backoff_max {
                    backoff.reset();
                }
                ended
            }
            Err(e) => {
                if e.is_auth() {
                    add(&shared.auth_failures, 1);
                    add(&c.refused, 1);
                    if let Some(skipped) = shared.warnings.auth.allow(Instant::now()) {
                        tracing::warn!(peer = %peer.id, addr = %peer.addr, skipped, "{e}");
                    }
                } else if e.is_refusal() {
                    add(&c.refused, 1);
                    if let Some(skipped) = shared.warnings.refused.allow(Instant::now()) {
                        tracing::warn!(peer = %peer.id, addr = %peer.addr, skipped, "peer refused: {e}");
                    }
                } else {
                    add(&c.connect_failures, 1);
                    tracing::debug!(peer = %peer.id, addr = %peer.addr, "cannot connect: {e}");
                }
                Ended::Failed(e.to_string())
            }
        };
        match ended {
            Ended::Cancelled => break,
            Ended::Failed(why) => {
                let delay = backoff.next_delay();
                tracing::debug!(peer = %peer.id, ?delay, "reconnecting after: {why}");
                tokio::select! {
                    biased;
                    () = peer.cancel.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    // Shut down or removed: what is still queued is dropped, and counted.
    let dropped = peer.outbox.lock().close();
    peer.room.notify_waiters();
    add(&c.shutdown, dropped as u64);
}

/// A sender that closed a chunk while nobody was writing writes it itself,
/// as far as the socket takes it without blocking: a streaming sender then
/// costs no wake-up of the connection task. What does not fit is left to
/// the connection task, which writes it before anything else.
fn write_direct(peer: &Peer, chunk: BytesMut, frames: usize, conn: u64) {
    let stream = peer
        .stream
        .lock()
        .as_ref()
        .filter(|(n, _)| *n == conn)
        .map(|(_, s)| Arc::clone(s));
    let mut at = 0;
    if let Some(s) = stream {
        while at < chunk.len() {
            match s.try_write(&chunk[at..]) {
                Ok(n) => at += n,
                // Would block, or failed: the connection task finds out.
                Err(_) => break,
            }
        }
    }
    let c = &*peer.counters;
    let mut ob = peer.outbox.lock();
    ob.writing = false;
    if at == chunk.len() {
        add(&c.frames_sent, frames as u64);
        add(&c.bytes_sent, chunk.len() as u64);
        ob.recycle(chunk);
    } else if ob.closed {
        add(&c.shutdown, frames as u64);
    } else {
        ob.partial = Some(Partial {
            chunk,
            at,
            frames,
            conn,
        });
        ob.want_turn = true;
    }
    let wake = std::mem::take(&mut ob.want_turn);
    drop(ob);
    if wake {
        peer.wake.notify_one();
    }
}

/// Writes the peer's outbox to `stream`, in order, until the connection
/// fails or the task is cancelled, sharing the socket with senders that
/// write whole chunks themselves (one writer at a time: the outbox's
/// `writing` turn).
async fn pump(shared: &Shared, peer: &Peer, stream: TcpStream, conn: u64) -> Ended {
    let stream = Arc::new(stream);
    *peer.stream.lock() = Some((conn, Arc::clone(&stream)));
    peer.outbox.lock().conn = Some(conn);
    let ended = pump_on(shared, peer, &stream, conn).await;
    peer.outbox.lock().conn = None;
    *peer.stream.lock() = None;
    ended
}

async fn pump_on(shared: &Shared, peer: &Peer, stream: &TcpStream, conn: u64) -> Ended {
    let c = &*peer.counters;
    loop {
        let job = {
            let mut ob = peer.outbox.lock();
            let job = if ob.writing {
                ob.want_turn = true;
                None
            } else {
                match ob.next_write(conn) {
                    Ok(job) => job,
                    // Begun on a connection that is gone: its frames are torn.
                    Err(frames) => {
                        add(&c.write_failed, frames as u64);
                        continue;
                    }
                }
            };
            ob.idle = job.is_none() && !ob.want_turn;
            if ob.idle {
                ob.trim();
            }
            if ob.want_room && ob.has_room() {
                ob.want_room = false;
                peer.room.notify_waiters();
            }
            job
        };
        let Some(Partial {
            chunk,
            mut at,
            frames,
            ..
        }) = job
        else {
            tokio::select! {
                biased;
                () = peer.cancel.cancelled() => return Ended::Cancelled,
                () = peer.wake.notified() => continue,
                why = closed(stream) => return Ended::Failed(why),
            }
        };
        let written = tokio::select! {
            biased;
            () = peer.cancel.cancelled() => None,
            r = tokio::time::timeout(shared.config.write_timeout, write_rest(stream, &chunk, &mut at)) => Some(r),
        };
        let mut ob = peer.outbox.lock();
        ob.writing = false;
        match written {
            None => {
                add(&c.shutdown, frames as u64);
                return Ended::Cancelled;
            }
            Some(Ok(Ok(()))) => {
                add(&c.frames_sent, frames as u64);
                add(&c.bytes_sent, chunk.len() as u64);
                ob.recycle(chunk);
            }
            Some(Ok(Err(e))) => {
                add(&c.write_failed, frames as u64);
                return Ended::Failed(format!("write failed: {e}"));
            }
            Some(Err(_)) => {
                add(&c.write_failed, frames as u64);
                tracing::warn!(
                    peer = %peer.id,
                    timeout = ?shared.config.write_timeout,
                    "write timed out: the peer is not reading"
                );
                return Ended::Failed("write timed out".into());
            }
        }
    }
}

/// Writes `chunk` from `at` on, waiting for room in the socket.
async fn write_rest(stream: &TcpStream, chunk: &[u8], at: &mut usize) -> std::io::Result<()> {
    while *at < chunk.len() {
        stream.writable().await?;
        match stream.try_write(&chunk[*at..]) {
            Ok(n) => *at += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Resolves once the peer closes `stream` or sends on it: it never sends
/// after the handshake, so either means the connection is done.
async fn closed(stream: &TcpStream) -> String {
    let mut probe = [0u8; 64];
    loop {
        if let Err(e) = stream.readable().await {
            return format!("read failed: {e}");
        }
        match stream.try_read(&mut probe) {
            Ok(0) => return "peer closed the connection".into(),
            Ok(_) => return "peer sent bytes on a connection it accepted".into(),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return format!("read failed: {e}"),
        }
    }
}

/// Accepts connections until cancelled; each gets a reader task, up to
/// `max_inbound` at once.
async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(shared.config.max_inbound));
    loop {
        let accepted = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, from) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: pause instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(50)) => continue,
                }
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            add(&shared.over_limit, 1);
            if let Some(skipped) = shared.warnings.over_limit.allow(Instant::now()) {
                tracing::warn!(%from, skipped, "inbound connection limit reached: closing");
            }
            continue;
        };
        let (shared, cancel) = (Arc::clone(&shared), cancel.clone());
        tracker.spawn(async move {
            tokio::select! {
                biased;
                () = cancel.cancelled() => {}
                () = serve(&shared, stream, from) => {}
            }
            drop(permit);
        });
    }
    // The listener drops here: the port is closed once this task ends.
}

/// One inbound connection: handshake, then frames to the sink until the
/// peer closes, sends something invalid, goes quiet past the idle timeout,
/// or connects again (the newer connection replaces this one).
async fn serve(shared: &Shared, stream: TcpStream, from: SocketAddr) {
    let timeout = shared.config.handshake_timeout;
    let local = shared.local();
    let shook = tokio::time::timeout(timeout, handshake(&local, stream, None)).await;
    let now = Instant::now;
    let w = &shared.warnings;
    let (shaken, conn) = match shook {
        Ok(Ok(h)) => h,
        Ok(Err(e)) if e.is_auth() => {
            add(&shared.auth_failures, 1);
            if let Some(skipped) = w.auth.allow(now()) {
                tracing::warn!(%from, skipped, "refused a connection: {e}");
            }
            return;
        }
        Ok(Err(e)) if e.is_refusal() => {
            add(&shared.refused_handshakes, 1);
            if let Some(skipped) = w.refused.allow(now()) {
                tracing::warn!(%from, skipped, "refused a connection: {e}");
            }
            return;
        }
        Ok(Err(e)) => {
            add(&shared.bad_connections, 1);
            if let Some(skipped) = w.bad_connection.allow(now()) {
                tracing::warn!(%from, skipped, "bad connection: {e}");
            }
            return;
        }
        Err(_) => {
            add(&shared.bad_connections, 1);
            if let Some(skipped) = w.bad_connection.allow(now()) {
                tracing::warn!(%from, ?timeout, skipped, "no handshake in time: closing");
            }
            return;
        }
    };
    let node = shaken.hello.node_id;
    {
        let peers = shared.peers.read();
        if !peers.is_empty() && !peers.contains_key(&node) {
            drop(peers);
            add(&shared.refused_handshakes, 1);
            if let Some(skipped) = w.refused.allow(now()) {
                tracing::warn!(%from, peer = %node, skipped, "refused a node that is not a peer");
            }
            return;
        }
    }
    let Some(c) = shared.tracked_counters(node) else {
        add(&shared.over_limit, 1);
        if let Some(skipped) = w.over_limit.allow(now()) {
            tracing::warn!(%from, peer = %node, skipped, "too many distinct peers: closing");
        }
        return;
    };
    shared.observe(node, &c, &shaken);
    // One live inbound connection per node: this one replaces any older.
    let number = shared.next_inbound.fetch_add(1, Relaxed);
    let replaced = CancellationToken::new();
    if let Some((_, old)) = shared
        .inbound
        .lock()
        .insert(node, (number, replaced.clone()))
    {
        old.cancel();
    }
    tokio::select! {
        biased;
        () = replaced.cancelled() => {
            add(&shared.idle_closed, 1);
            tracing::debug!(peer = %node, %from, "replaced by a newer connection");
        }
        () = read_frames(shared, conn, node, &c, from) => {}
    }
    let mut inbound = shared.inbound.lock();
    if inbound.get(&node).is_some_and(|(n, _)| *n == number) {
        inbound.remove(&node);
    }
}

/// Hands the frames of one handshaken inbound connection to the sink.
async fn read_frames(
    shared: &Shared,
    conn: crate::handshake::Conn,
    node: NodeId,
    c: &PeerCounters,
    from: SocketAddr,
) {
    let parts = conn.into_parts();
    let (mut io, mut codec, mut buf) = (parts.io, parts.codec, parts.read_buf);
    let mut batch = Vec::new();
    let mut size = ReadSize::new();
    loop {
        // Up to BATCH complete frames are decoded and counted first, then
        // handed over: a sink that sees a frame sees it counted, and the
        // counters cost two atomic adds per batch, not per frame.
        let (before, mut after) = (buf.len(), buf.len());
        let bad = loop {
            if batch.len() == BATCH {
                break None;
            }
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    batch.push(frame);
                    after = buf.len();
                }
                Ok(None) => break None,
                // Over the cap or undecodable.
                Err(e) => break Some(e),
            }
        };
        let more = batch.len() == BATCH;
        add(&c.frames_received, batch.len() as u64);
        // What the batch's frames took from the buffer, headers included.
        add(&c.bytes_received, (before - after) as u64);
        for frame in batch.drain(..) {
            dispatch(&*shared.sink, node, frame);
        }
        if let Some(e) = bad {
            add(&c.bad_frames, 1);
            if let Some(skipped) = shared.warnings.bad_frame.allow(Instant::now()) {
                tracing::warn!(peer = %node, %from, skipped, "closing the connection: {e}");
            }
            return;
        }
        if more {
            continue;
        }
        let want = size.get();
        if buf.is_empty() && buf.capacity() > 2 * want {
            // A stream ended: give back the large buffer.
            buf = BytesMut::with_capacity(want);
        } else if buf.capacity() - buf.len() < want / 4 {
            buf.reserve(want);
        }
        let offered = buf.capacity() - buf.len();
        let idle = shared.config.idle_timeout;
        let Ok(read) = tokio::time::timeout(idle, io.read_buf(&mut buf)).await else {
            add(&shared.idle_closed, 1);
            tracing::debug!(peer = %node, %from, ?idle, "closing an idle connection");
            return;
        };
        match read {
            Ok(0) if buf.is_empty() => return,
            Ok(0) => {
                add(&c.bad_frames, 1);
                if let Some(skipped) = shared.warnings.bad_frame.allow(Instant::now()) {
                    tracing::warn!(peer = %node, %from, skipped, "connection closed mid-frame");
                }
                return;
            }
            Ok(n) => size.after(offered, n),
            Err(e) => {
                tracing::debug!(peer = %node, "connection lost: {e}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_size_grows_while_reads_come_back_full_and_falls_back_when_not() {
        let mut size = ReadSize::new();
        assert_eq!(size.get(), READ_BUF);
        for _ in 0..10 {
            let offered = size.get();
            size.after(offered, offered);
        }
        assert_eq!(size.get(), READ_BUF_MAX, "capped");
        // Three quarters full: a stream still, of about this size.
        size.after(READ_BUF_MAX, READ_BUF_MAX * 3 / 4);
        assert_eq!(size.get(), READ_BUF_MAX);
        // A small read: the stream is over.
        size.after(READ_BUF_MAX, 100);
        assert_eq!(size.get(), READ_BUF);
    }
}
