use std::io;

use multinode_wire::{NodeId, WireError};

/// Why a frame was not queued. Each is counted in the transport's stats.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// No such peer: not added (TCP) or outside the network (in-process).
    #[error("unknown peer {0}")]
    UnknownPeer(NodeId),
    /// The peer's queue is at its bound; the frame was refused (the queue
    /// keeps what it holds: overflow refuses the newest frame).
    #[error("queue for peer {peer} is full ({frames} frames, {bytes} bytes queued)")]
    QueueFull {
        /// The peer.
        peer: NodeId,
        /// Frames queued when this one was refused.
        frames: usize,
        /// Bytes queued when this one was refused.
        bytes: usize,
    },
    /// The frame's payload is over the frame cap. Nothing was sent and the
    /// connection is kept.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// The payload's length.
        len: usize,
        /// The cap in force.
        max: usize,
    },
    /// The frame could not be encoded.
    #[error("cannot encode frame: {0}")]
    Encode(String),
    /// The transport was shut down (or, in-process, this node crashed).
    #[error("transport is closed")]
    Closed,
}

/// Why a transport could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GossipError {
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// An in-process address is taken by a live transport.
    #[error("node {0} is already registered on this network")]
    AddressInUse(NodeId),
    /// An in-process node id outside the network.
    #[error("node {node} is outside this network of {size} nodes")]
    OutsideNetwork {
        /// The id asked for.
        node: NodeId,
        /// How many nodes the network has.
        size: usize,
    },
    /// The transport was shut down.
    #[error("the transport is shut down")]
    Closed,
    /// A transport was started outside a tokio runtime.
    #[error("no tokio runtime: start the transport from inside one")]
    NoRuntime,
    /// A configuration value is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl From<WireError> for SendError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::FrameTooLarge { len, max } => SendError::FrameTooLarge {
                len: usize::try_from(len).unwrap_or(usize::MAX),
                max,
            },
            other => SendError::Encode(other.to_string()),
        }
    }
}
