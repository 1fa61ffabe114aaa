use std::time::Duration;

use multinode_wire::{NodeId, WireError};

/// Why a channel operation failed. A receive that times out is not an
/// error: it is `Ok(None)`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// This end was closed with [`Channel::close`].
    #[error("channel closed")]
    Closed,
    /// The other end was closed; nothing more will arrive, and sends fail.
    #[error("peer closed the channel")]
    PeerClosed,
    /// This end's node is crashed.
    #[error("node {0} is crashed")]
    Crashed(NodeId),
    /// The other end's node is crashed.
    #[error("peer node {0} is crashed")]
    PeerCrashed(NodeId),
    /// The handle belongs to an earlier life of its node or link (before a
    /// crash and restart): take a new one.
    #[error("stale channel handle: incarnation {held}, current {current}")]
    Stale {
        /// The incarnation the handle was taken in.
        held: u64,
        /// The node's incarnation now.
        current: u64,
    },
    /// The link's queue is at capacity; the message was not sent.
    #[error("queue full ({capacity} messages)")]
    QueueFull {
        /// The queue's capacity.
        capacity: usize,
    },
    /// The message is larger than the channel carries.
    #[error("message of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// The message's length.
        len: usize,
        /// The channel's maximum.
        max: usize,
    },
    /// There is no such link: a node outside the group, or a node and
    /// itself.
    #[error("no link from node {from} to node {to} in a group of {size}")]
    NoSuchLink {
        /// The local node asked for.
        from: NodeId,
        /// The peer asked for.
        to: NodeId,
        /// The group's size.
        size: usize,
    },
    /// The underlying connection failed (TCP channels).
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// One end of a bidirectional, ordered, message-oriented link between two
/// nodes.
///
/// Semantics every implementation keeps (the conformance suite checks them):
/// - `send` either queues the whole message for the peer and returns
///   `Ok(())`, or fails and queues nothing.
/// - Messages on one channel arrive in the order they were sent, each once,
///   unless a fault model says otherwise.
/// - `receive(timeout)` returns the next message, `Ok(None)` if none came
///   within `timeout`, or an error once nothing more can ever come.
/// - `close` on one end (idempotent): that end's `send` and `receive` fail
///   with [`ChannelError::Closed`] at once, and a `receive` blocked on it
///   wakes. The other end still receives everything sent before the close,
///   then its `receive` fails with [`ChannelError::PeerClosed`] (a blocked
///   one wakes), and from then on so does its `send`. The in-memory channel
///   refuses the other end's `send` at once; over TCP the close travels with
///   the stream, so the other end learns of it when its `receive` reaches
///   it. `is_open` is false on an end once it knows.
/// - A crash of either node: the crashed node's handles fail with
///   [`ChannelError::Crashed`]; the survivor still receives what was sent
///   before the crash, then fails with [`ChannelError::PeerCrashed`]
///   (over TCP: the connection ended without the close's goodbye).
/// - A `receive` blocked on one end never blocks a `send` on it.
pub trait Channel: Send + Sync {
    /// Sends one message.
    fn send(&self, msg: &[u8]) -> Result<(), ChannelError>;

    /// Receives the next message, waiting at most `timeout`.
    fn receive(&self, timeout: Duration) -> Result<Option<Vec<u8>>, ChannelError>;

    /// Closes this end. Idempotent.
    fn close(&self);

    /// Whether both ends are open and both nodes up.
    fn is_open(&self) -> bool;
}
