//! Gossip transports: carry gossip PDUs and remote tells between nodes,
//! per-peer ordered, bounded, and counted.
//!
//! - [`GossipTransport`]: best-effort `send` of a [`ClusterFrame`] to a
//!   peer. It refuses at once what it knows at once (unknown peer, full
//!   queue, frame over the cap) and counts every frame it refuses or loses
//!   ([`TransportStats`], [`PeerStats`], [`Drops`]); `ready` waits for
//!   room in a full queue.
//! - [`RemoteMessageSink`]: where inbound PDUs and tells go, with
//!   restarted-peer notices.
//! - [`InProcessNetwork`] / [`InProcessTransport`]: many nodes in one
//!   process, every link under the mesh's fault model.
//! - [`TcpTransport`]: loopback by default, a `Hello` + `Session` handshake
//!   (see `docs/wire-format.md`), a connection task per peer while frames
//!   wait for it or its connection is open: it dials when a frame waits,
//!   closes after a quiet spell (`linger`) and then ends,
//!   reconnect with jittered exponential backoff, connect/handshake/write
//!   timeouts.
//!
//! Invariants: frames from one sender to one peer arrive in send order or
//! not at all; a slow or wedged peer delays only its own frames; a bad
//! peer costs only its own connection.
//!
//! ```
//! use std::sync::Arc;
//! use multinode_gossip::{GossipTransport, InProcessNetwork, RemoteMessageSink};
//! use multinode_wire::{GossipPdu, NodeId, RemoteTell};
//! use tokio::sync::mpsc;
//!
//! /// Hands every gossip PDU to a channel.
//! struct ToChannel(mpsc::UnboundedSender<(NodeId, GossipPdu)>);
//!
//! impl RemoteMessageSink for ToChannel {
//!     fn on_gossip(&self, from: NodeId, pdu: GossipPdu) {
//!         let _ = self.0.send((from, pdu));
//!     }
//!     fn on_tell(&self, _from: NodeId, _tell: RemoteTell) {}
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let net = InProcessNetwork::new(2);
//! let (tx, mut got) = mpsc::unbounded_channel();
//! let a = net.register(NodeId(0), Arc::new(ToChannel(tx.clone())))?;
//! let _b = net.register(NodeId(1), Arc::new(ToChannel(tx)))?;
//! a.gossip(NodeId(1), GossipPdu::Opaque { schema: 1, body: "hi".into() })?;
//! let (from, pdu) = got.recv().await.expect("delivered");
//! assert_eq!(from, NodeId(0));
//! assert!(matches!(pdu, GossipPdu::Opaque { schema: 1, .. }));
//! # Ok(())
//! # }
//! ```

mod backoff;
mod corrupt;
mod error;
mod handshake;
mod inproc;
mod outbox;
mod stats;
mod tcp;
mod throttle;
mod transport;

pub use corrupt::corrupted;
pub use error::{GossipError, SendError};
pub use inproc::{InProcessConfig, InProcessNetwork, InProcessTransport};
pub use multinode_wire::ClusterFrame;
pub use stats::{Drops, PeerStats, TransportStats};
pub use tcp::{TcpTransport, TcpTransportConfig};
pub use transport::{GossipTransport, Ready, RemoteMessageSink};
