//! What every transport offers: the [`GossipTransport`] trait, the
//! [`RemoteMessageSink`] it delivers to.

use std::future::Future;
use std::pin::Pin;

use multinode_wire::{ClusterFrame, GossipPdu, NodeId, RemoteTell};

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
