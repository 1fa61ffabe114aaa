//! The async node: a [`Replica`] driven over any [`GossipTransport`], with
//! an optional persistent store. The loop is thin: a timer opens rounds,
//! inbound PDUs are handed to the replica, its answers are sent.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use multinode_filestore::{FileStore, Merge, StateStore};
use multinode_gossip::{GossipTransport, RemoteMessageSink};
use multinode_wire::{GossipPdu, LwwEntry, LwwMessage, NodeId, RemoteTell, Timestamp};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{LwwError, PeerStatus, Replica, ReplicaConfig, ReplicaStats};

/// An [`LwwNode`]'s configuration.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The replica's settings; `round_interval_ms` paces the rounds.
    pub replica: ReplicaConfig,
    /// Where to keep acknowledged writes (`<dir>/lww.json` and its log);
    /// `None` keeps state in memory only.
    pub data_dir: Option<PathBuf>,
}

/// The node's counters: the replica's and the transport side's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// The replica's counters (rounds, bytes and entries both ways).
    pub replica: ReplicaStats,
    /// Messages the transport refused (full queue, unknown peer, closed).
    pub send_failed: u64,
    /// Inbound messages dropped because the node's inbox was full (by
    /// count or by bytes).
    pub inbox_full: u64,
    /// Inbound PDUs that were not LWW messages.
    pub foreign: u64,
}

#[derive(Default)]
struct Counters {
    send_failed: AtomicU64,
    inbox_full: AtomicU64,
    foreign: AtomicU64,
}

/// Where a transport delivers inbound PDUs for an [`LwwNode`]: make one,
/// hand [`Inbox::sink`] to the transport, then the inbox to
/// [`LwwNode::start`].
pub struct Inbox {
    rx: mpsc::Receiver<(NodeId, LwwMessage, usize)>,
    sink: Arc<InboxSink>,
}

impl Inbox {
    /// The bytes of messages (as encoded) an inbox holds by default.
    pub const DEFAULT_MAX_BYTES: usize = 32 << 20;

    /// An inbox holding up to `capacity` messages and
    /// [`Self::DEFAULT_MAX_BYTES`] of them; past either, new ones are
    /// dropped and counted (gossip repairs the loss next round).
    pub fn new(capacity: usize) -> Self {
        Self::with_max_bytes(capacity, Self::DEFAULT_MAX_BYTES)
    }

    /// An inbox holding up to `capacity` messages and `max_bytes` of them,
    /// counted as encoded: each message is bounded by the frame cap, but
    /// without this, thousands of them are not. One message larger than
    /// `max_bytes` is still taken when the inbox is empty.
    pub fn with_max_bytes(capacity: usize, max_bytes: usize) -> Self {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        Self {
            rx,
            sink: Arc::new(InboxSink {
                tx,
                held: AtomicUsize::new(0),
                max_bytes,
                counters: Arc::default(),
            }),
        }
    }

    /// The sink to give the transport.
    pub fn sink(&self) -> Arc<dyn RemoteMessageSink> {
        self.sink.clone()
    }

    /// The next message, once one comes; `None` when every sink is gone.
    async fn recv(&mut self) -> Option<(NodeId, LwwMessage)> {
        let (from, m, len) = self.rx.recv().await?;
        self.sink.held.fetch_sub(len, Relaxed);
        Some((from, m))
    }
}

struct InboxSink {
    tx: mpsc::Sender<(NodeId, LwwMessage, usize)>,
    /// Bytes (as encoded) of the messages queued.
    held: AtomicUsize,
    max_bytes: usize,
    counters: Arc<Counters>,
}

impl InboxSink {
    /// Queues `m` if it fits both bounds.
    fn offer(&self, from: NodeId, m: LwwMessage) -> bool {
        let len = m.encoded_len();
        let max = self.max_bytes;
        let fits = self.held.fetch_update(Relaxed, Relaxed, |held| {
            (held == 0 || held.saturating_add(len) <= max).then_some(held + len)
        });
        if fits.is_err() {
            return false;
        }
        if self.tx.try_send((from, m, len)).is_err() {
            self.held.fetch_sub(len, Relaxed);
            return false;
        }
        true
    }
}

impl RemoteMessageSink for InboxSink {
    fn on_gossip(&self, from: NodeId, pdu: GossipPdu) {
        match pdu {
            GossipPdu::Lww(m) => {
                if !self.offer(from, m) {
                    self.counters.inbox_full.fetch_add(1, Relaxed);
                }
            }
            _ => {
                self.counters.foreign.fetch_add(1, Relaxed);
            }
        }
    }

    fn on_tell(&self, _from: NodeId, _tell: RemoteTell) {
        self.counters.foreign.fetch_add(1, Relaxed);
    }
}

/// What the store keeps per key: the winning write.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Stored {
    version: Timestamp,
    value: Option<Bytes>,
}

impl Merge for Stored {
    fn supersedes(&self, current: &Self) -> bool {
        self.version > current.version
    }
}

struct Shared<T> {
    replica: Mutex<Replica>,
    transport: T,
    store: Option<FileStore<Stored>>,
    changes: broadcast::Sender<LwwEntry>,
    counters: Arc<Counters>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

/// A last-write-wins node: a replica, a transport, a round timer.
pub struct LwwNode<T: GossipTransport + 'static> {
    shared: Arc<Shared<T>>,
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A write prepared in the replica and not yet committed: abandoned if it
/// is dropped first (its store put failed, or its future was dropped,
/// polled or not), so the replica does not wait for it for ever.
struct Prepared<T> {
    entry: Option<LwwEntry>,
    shared: Arc<Shared<T>>,
}

impl<T> Prepared<T> {
    /// Applies the write to the replica, and tells the change listeners.
    fn commit(mut self) -> LwwEntry {
        let e = self.entry.take().expect("committed once");
        if self.shared.replica.lock().commit(&e) {
            let _ = self.shared.changes.send(e.clone());
        }
        e
    }
}

impl<T> Drop for Prepared<T> {
    fn drop(&mut self) {
        if let Some(e) = &self.entry {
            self.shared.replica.lock().abandon(e);
        }
    }
}

impl<T: GossipTransport + 'static> LwwNode<T> {
    /// Starts a node on `transport`, whose sink must be `inbox`'s. With a
    /// data directory, the state kept there is loaded first and the node
    /// resynchronises with its first peer. Needs a tokio runtime.
    pub async fn start(config: NodeConfig, transport: T, inbox: Inbox) -> Result<Self, LwwError> {
        let mut replica = Replica::new(config.replica.clone())?;
        let store = match &config.data_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| LwwError::Config {
                    field: "data_dir",
                    reason: format!("{}: {e}", dir.display()),
                })?;
                let path = dir.join("lww.json");
                let store = tokio::task::spawn_blocking(move || FileStore::<Stored>::open(path))
                    .await
                    .map_err(|_| LwwError::Closed)??;
                let entries: Vec<LwwEntry> = store
                    .keys()
                    .into_iter()
                    .filter_map(|key| {
                        let s = store.get(&key)?;
                        Some(LwwEntry {
                            key,
                            value: s.value,
                            version: s.version,
                        })
                    })
                    .collect();
                replica.restore(entries, wall_ms());
                Some(store)
            }
            None => {
                // Nothing to load, but a new era all the same: this may be
                // a restart.
                replica.restore(Vec::new(), wall_ms());
                None
            }
        };
        let interval = Duration::from_millis(config.replica.round_interval_ms);
        let shared = Arc::new(Shared {
            replica: Mutex::new(replica),
            transport,
            store,
            changes: broadcast::channel(1024).0,
            counters: inbox.sink.counters.clone(),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        let s = shared.clone();
        shared.tasks.spawn(run(s, inbox, interval));
        shared.tasks.close();
        Ok(Self { shared })
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.shared.transport.local_node()
    }

    /// The transport (to add peers' addresses to a TCP one, say).
    pub fn transport(&self) -> &T {
        &self.shared.transport
    }

    /// Gossips with `peer` from the next round on.
    pub fn add_peer(&self, peer: NodeId) {
        self.shared.replica.lock().add_peer(peer);
    }

    /// Gossips with all of `peers` from the next round on (one lock).
    pub fn add_peers(&self, peers: impl IntoIterator<Item = NodeId>) {
        self.shared.replica.lock().add_peers(peers);
    }

    /// Stops gossiping with `peer`.
    pub fn remove_peer(&self, peer: NodeId) {
        self.shared.replica.lock().remove_peer(peer);
    }

    /// Writes `value` under `key`. The future is done once the write is
    /// applied, and, with a data directory, durable: then it survives a
    /// crash.
    ///
    /// The write takes its version, and its place in the store's queue,
    /// when `set` is called, not when the future is first polled: writes
    /// called one after another are ordered as called, even when their
    /// futures are awaited together (a pipelined client's writes then share
    /// the store's fsyncs). Dropping the future before it is done leaves
    /// the write unacknowledged: it may or may not be kept.
    pub fn set(
        &self,
        key: &str,
        value: impl Into<Bytes>,
    ) -> impl Future<Output = Result<Timestamp, LwwError>> + Send + 'static {
        self.write(key, Some(value.into()))
    }

    /// Deletes `key` (a tombstone, durable like a set, and ordered like
    /// one).
    pub fn delete(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Timestamp, LwwError>> + Send + 'static {
        self.write(key, None)
    }

    fn write(
        &self,
        key: &str,
        value: Option<Bytes>,
    ) -> impl Future<Output = Result<Timestamp, LwwError>> + Send + 'static {
        let s = Arc::clone(&self.shared);
        let prepared = if s.cancel.is_cancelled() {
            Err(LwwError::Closed)
        } else {
            s.replica.lock().prepare(key, value, wall_ms())
        };
        let put = match (&prepared, &s.store) {
            (Ok(e), Some(store)) => Some(store.put(
                key,
                Stored {
                    version: e.version,
                    value: e.value.clone(),
                },
            )),
            _ => None,
        };
        let prepared = prepared.map(|e| Prepared {
            entry: Some(e),
            shared: s,
        });
        async move {
            let prepared = prepared?;
            if let Some(put) = put
                && let Err(err) = put.await
            {
                return Err(err.into());
            }
            let e = prepared.commit();
            Ok(e.version)
        }
    }

    /// The live value of `key`.
    pub fn get(&self, key: &str) -> Option<Bytes> {
        self.shared.replica.lock().get(key).cloned()
    }

    /// Live keys.
    pub fn len(&self) -> usize {
        self.shared.replica.lock().len()
    }

    /// Whether no key is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every change applied from now on, local or remote (a `None` value
    /// is a delete). A subscriber that falls 1,024 behind skips ahead.
    pub fn subscribe(&self) -> broadcast::Receiver<LwwEntry> {
        self.shared.changes.subscribe()
    }

    /// The state's fingerprint, tombstones included: equal on nodes that
    /// hold the same state.
    pub fn fingerprint(&self) -> u64 {
        self.shared.replica.lock().fingerprint()
    }

    /// Each peer's liveness now.
    pub fn liveness(&self) -> BTreeMap<NodeId, PeerStatus> {
        self.shared.replica.lock().liveness(wall_ms())
    }

    /// Whether the node is pulling state back after a restart or a long
    /// absence.
    pub fn is_resyncing(&self) -> bool {
        self.shared.replica.lock().is_resyncing()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> NodeStats {
        let c = &self.shared.counters;
        NodeStats {
            replica: self.shared.replica.lock().stats().clone(),
            send_failed: c.send_failed.load(Relaxed),
            inbox_full: c.inbox_full.load(Relaxed),
            foreign: c.foreign.load(Relaxed),
        }
    }

    /// Runs `f` on the replica (for checks and snapshots).
    pub fn with_replica<R>(&self, f: impl FnOnce(&Replica) -> R) -> R {
        f(&self.shared.replica.lock())
    }

    /// Stops the round timer and waits for the node's task to end. The
    /// transport is left to its owner.
    pub async fn shutdown(self) {
        self.shared.cancel.cancel();
        self.shared.tasks.wait().await;
    }
}

impl<T: GossipTransport + 'static> Drop for LwwNode<T> {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

async fn run<T: GossipTransport + 'static>(s: Arc<Shared<T>>, mut inbox: Inbox, every: Duration) {
    let mut timer = tokio::time::interval(every);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Retries are spaced evenly through the round, from its tick.
    let passes = s.replica.lock().config().retries;
    let slice = every / (passes + 1);
    let mut retries_left = 0;
    let retry = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(retry);
    let mut poison_reported = false;
    loop {
        // Queued store writes are not awaited; a store that failed says so
        // here once (local writes then fail with the error themselves).
        if !poison_reported && s.store.as_ref().is_some_and(|st| st.is_poisoned()) {
            poison_reported = true;
            tracing::error!(node = %s.transport.local_node(), "the data directory's store failed: remote writes are no longer persisted");
        }
        tokio::select! {
            biased;
            () = s.cancel.cancelled() => return,
            _ = timer.tick() => {
                let round = s.replica.lock().tick(wall_ms());
                if let Some(store) = &s.store {
                    for key in &round.collected {
                        // Queued, not awaited: the tombstone is gone from
                        // memory either way.
                        drop(store.delete(key));
                    }
                }
                send(&s, round.messages);
                retries_left = passes;
                retry.as_mut().reset(tokio::time::Instant::now() + slice);
            }
            Some((from, m)) = inbox.recv() => {
                let got = s.replica.lock().receive(from, m, wall_ms());
                for e in got.changes {
                    if let Some(store) = &s.store {
                        let stored = Stored { version: e.version, value: e.value.clone() };
                        // Remote writes are durable at their origin; this
                        // copy is staged, not awaited: it rides on the
                        // next local write's cycle instead of making that
                        // write wait behind a cycle of its own.
                        drop(store.stage(&e.key, stored));
                    }
                    let _ = s.changes.send(e);
                }
                send(&s, got.replies);
            }
            // After the inbox: an answer already here is not retried.
            () = &mut retry, if retries_left > 0 => {
                retries_left -= 1;
                let out = s.replica.lock().retry(wall_ms());
                send(&s, out);
                retry.as_mut().reset(tokio::time::Instant::now() + slice);
            }
        }
    }
}

fn send<T: GossipTransport>(s: &Shared<T>, messages: Vec<(NodeId, LwwMessage)>) {
    for (to, m) in messages {
        if s.transport.gossip(to, GossipPdu::Lww(m)).is_err() {
            s.counters.send_failed.fetch_add(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A digest of `n` watermarks: about 4 bytes each, packed.
    fn digest(n: u64) -> LwwMessage {
        LwwMessage::Digest {
            era: 1,
            watermarks: (0..n)
                .map(|i| Timestamp {
                    physical_ms: 1_767_225_600_000 + i,
                    logical: 0,
                    node: NodeId(i),
                })
                .collect(),
            sent_ms: 1,
            beyond: Vec::new(),
        }
    }

    #[test]
    fn the_inbox_is_bounded_by_bytes_and_takes_one_large_message_when_empty() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let m = digest(100);
        let len = m.encoded_len();
        let mut inbox = Inbox::with_max_bytes(100, 3 * len);
        let sink = inbox.sink();
        let counters = inbox.sink.counters.clone();
        let full = || counters.inbox_full.load(Relaxed);
        for _ in 0..3 {
            sink.on_gossip(NodeId(1), GossipPdu::Lww(m.clone()));
        }
        assert_eq!(full(), 0);
        sink.on_gossip(NodeId(1), GossipPdu::Lww(m.clone()));
        assert_eq!(full(), 1, "a fourth message is over the byte bound");
        assert_eq!(inbox.sink.held.load(Relaxed), 3 * len);
        rt.block_on(async {
            for _ in 0..3 {
                inbox.recv().await.expect("queued");
            }
        });
        assert_eq!(
            inbox.sink.held.load(Relaxed),
            0,
            "taken messages free their bytes"
        );
        // Larger than the bound: taken when nothing else is queued, so any
        // frame under the cap can get through...
        let big = digest(1000);
        assert!(big.encoded_len() > 3 * len);
        sink.on_gossip(NodeId(1), GossipPdu::Lww(big.clone()));
        assert_eq!(full(), 1);
        // ...and nothing beside it.
        sink.on_gossip(NodeId(1), GossipPdu::Lww(m));
        assert_eq!(full(), 2);
        let (from, got) = rt.block_on(inbox.recv()).expect("queued");
        assert_eq!((from, got), (NodeId(1), big));
    }
}
