//! Gossip transports: carry gossip PDUs and remote tells between nodes,
//! per-peer ordered, bounded, and counted.
//!
//! - [`GossipTransport`]: best-effort `send` of a [`ClusterFrame`] to a
//!   peer. It refuses at once what it knows at once (unknown peer, full
//!   queue, frame over the cap) and counts every frame it refuses or loses
//!   ([`TransportStats`], [`PeerStats`], [`Drops`]); `ready` waits for
//!   room in a full queue.
//! - [`RemoteMessageSink`]: where inbound PDUs and tells go, with
//!   restarted-peer notices; [`RecordingSink`] records them for tests.
//! - [`InProcessNetwork`] / [`InProcessTransport`]: many nodes in one
//!   process, every link under the mesh's fault model.
//! - [`TcpTransport`]: loopback by default, a `Hello` + `Session` handshake
//!   (see `docs/wire-format.md`), one connection task per peer, reconnect
//!   with jittered exponential backoff, connect/handshake/write timeouts.
//!
//! Invariants: frames from one sender to one peer arrive in send order or
//! not at all; a slow or wedged peer delays only its own frames; a bad
//! peer costs only its own connection.
//!
//! ```
//! use std::time::Duration;
//! use multinode_gossip::{GossipTransport, InProcessNetwork, Inbound, RecordingSink};
//! use multinode_wire::{GossipPdu, NodeId};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let net = InProcessNetwork::new(2);
//! let (sink_a, sink_b) = (RecordingSink::new(), RecordingSink::new());
//! let a = net.register(NodeId(0), sink_a)?;
//! let _b = net.register(NodeId(1), sink_b.clone())?;
//! a.gossip(NodeId(1), GossipPdu::Opaque { schema: 1, body: "hi".into() })?;
//! assert!(sink_b.wait_for(Duration::from_secs(5), |got| got.len() == 1).await);
//! assert!(matches!(&sink_b.events()[0], Inbound::Gossip { from: NodeId(0), .. }));
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
pub use transport::{GossipTransport, Inbound, Ready, RecordingSink, RemoteMessageSink};
