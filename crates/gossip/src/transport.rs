//! What every transport offers: the [`GossipTransport`] trait, the
//! [`RemoteMessageSink`] it delivers to, and a [`RecordingSink`] for tests.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use multinode_wire::{ClusterFrame, GossipPdu, NodeId, RemoteTell};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::{SendError, TransportStats};

/// A best-effort, per-peer ordered transport of cluster frames.
///
/// `send` never waits for the network: it checks what can be known at once
/// (the peer, the frame cap, the room in the peer's queue) and queues the
/// frame. Every frame it refuses is counted, and so is every frame lost
/// later (see [`crate::Drops`]). Frames from one sender to one peer arrive in
/// the order they were sent, or not at all; the receiving transport hands
/// them to its [`RemoteMessageSink`].
pub trait GossipTransport: Send + Sync {
    /// This node's id.
    fn local_node(&self) -> NodeId;

    /// Queues `frame` for `to`. An error means the frame was not queued:
    /// [`SendError::UnknownPeer`], [`SendError::QueueFull`],
    /// [`SendError::FrameTooLarge`] or [`SendError::Closed`]. Taken by
    /// reference, so one PDU fans out to many peers without a copy per
    /// peer (TCP encodes it into each peer's queue; in-process shares it).
    fn send(&self, to: NodeId, frame: &ClusterFrame) -> Result<(), SendError>;

    /// Resolves once `to`'s queue has room again, so a sender refused with
    /// [`SendError::QueueFull`] can wait instead of spinning or dropping.
    /// TCP waits until the queue is at most half full (by frames and by
    /// bytes), so a bulk sender wakes once per half queue, not per frame.
    /// It resolves at once for an unknown peer or a closed transport (the
    /// next `send` says which). A hint, not a reservation: with several
    /// senders, `send` may still refuse.
    fn ready(&self, to: NodeId) -> Ready<'_>;

    /// A snapshot of this transport's counters.
    fn stats(&self) -> TransportStats;

    /// Queues a gossip PDU for `to`.
    fn gossip(&self, to: NodeId, pdu: GossipPdu) -> Result<(), SendError> {
        self.send(to, &ClusterFrame::Gossip(pdu))
    }

    /// Queues a remote tell for `to`.
    fn tell(&self, to: NodeId, tell: RemoteTell) -> Result<(), SendError> {
        self.send(to, &ClusterFrame::Tell(tell))
    }
}

/// What [`GossipTransport::ready`] returns (boxed, so the trait stays
/// usable as `dyn GossipTransport`).
pub type Ready<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Where a transport hands what arrives.
///
/// Called from the transport's own tasks (one per inbound connection, or one
/// per in-process node), in arrival order for each sender. Keep the calls
/// short: a slow sink holds up that sender's frames (never another
/// sender's), so hand heavy work to a channel. A sink may call
/// [`GossipTransport::send`] from inside a call.
pub trait RemoteMessageSink: Send + Sync + 'static {
    /// A gossip PDU from `from`.
    fn on_gossip(&self, from: NodeId, pdu: GossipPdu);

    /// A remote tell from `from`.
    fn on_tell(&self, from: NodeId, tell: RemoteTell);

    /// `peer` came back with a new incarnation: it restarted, and lost what
    /// it held only in memory. Called once per new incarnation seen.
    fn on_peer_restarted(&self, peer: NodeId, incarnation: u64) {
        let _ = (peer, incarnation);
    }
}

/// One thing a [`RecordingSink`] was handed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inbound {
    /// A gossip PDU.
    Gossip {
        /// The sender.
        from: NodeId,
        /// The PDU.
        pdu: GossipPdu,
    },
    /// A remote tell.
    Tell {
        /// The sender.
        from: NodeId,
        /// The tell.
        tell: RemoteTell,
    },
    /// A peer restarted.
    Restarted {
        /// The peer.
        peer: NodeId,
        /// Its new incarnation.
        incarnation: u64,
    },
}

impl Inbound {
    /// The node this came from.
    pub fn from(&self) -> NodeId {
        match self {
            Inbound::Gossip { from, .. } | Inbound::Tell { from, .. } => *from,
            Inbound::Restarted { peer, .. } => *peer,
        }
    }
}

/// A sink that records everything in arrival order, for assertions.
#[derive(Debug, Default)]
pub struct RecordingSink {
    events: Mutex<Vec<Inbound>>,
    changed: Notify,
}

impl RecordingSink {
    /// A new, empty sink, shared.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Everything recorded so far.
    pub fn events(&self) -> Vec<Inbound> {
        self.events.lock().clone()
    }

    /// How many things were recorded.
    pub fn len(&self) -> usize {
        self.events.lock().len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until `done` holds for the recorded events, or `timeout`
    /// passes; returns whether it held.
    pub async fn wait_for(&self, timeout: Duration, done: impl Fn(&[Inbound]) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done(&self.events.lock()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return done(&self.events.lock());
            }
        }
    }

    fn push(&self, event: Inbound) {
        self.events.lock().push(event);
        self.changed.notify_waiters();
    }
}

impl RemoteMessageSink for RecordingSink {
    fn on_gossip(&self, from: NodeId, pdu: GossipPdu) {
        self.push(Inbound::Gossip { from, pdu });
    }

    fn on_tell(&self, from: NodeId, tell: RemoteTell) {
        self.push(Inbound::Tell { from, tell });
    }

    fn on_peer_restarted(&self, peer: NodeId, incarnation: u64) {
        self.push(Inbound::Restarted { peer, incarnation });
    }
}

/// Hands `frame` to the sink's method for its kind.
pub(crate) fn dispatch(sink: &dyn RemoteMessageSink, from: NodeId, frame: ClusterFrame) {
    match frame {
        ClusterFrame::Gossip(pdu) => sink.on_gossip(from, pdu),
        ClusterFrame::Tell(tell) => sink.on_tell(from, tell),
        other => {
            tracing::debug!(%from, ?other, "cluster frame of a kind this build does not handle")
        }
    }
}
