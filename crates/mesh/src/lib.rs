//! The multinode network model: code written against [`Channel`] runs
//! unchanged over an in-memory mesh (fast, deterministic, faults on demand)
//! and over real TCP sockets.
//!
//! - [`Channel`] and [`ChannelError`]: one end of an ordered,
//!   message-oriented link, with exact semantics for close and crash.
//! - [`InMemoryGroup`] (and [`InMemoryTransport`]'s `new_pair`/`new_group`):
//!   N nodes, a bounded FIFO per link, node state kept apart from link
//!   state, `crash`/`restart` with incarnations, and seeded faults.
//! - [`TcpChannel`] and [`TcpChannelListener`]: the same trait over
//!   `multinode-wire` channel frames after a `Hello` handshake.
//! - [`FaultModel`]: the sans-IO fault model both the mesh and the
//!   in-process gossip network, the LWW simulator and `multinode node`
//!   apply, in the kit's vocabulary (`cut`, `partition`, `heal`,
//!   `hold`/`release`, `drop`, `delay`, `duplicate`, `reorder`, `corrupt`),
//!   drawing every random choice from one seed, counting what it does
//!   ([`LinkCounters`]) and fingerprinting it ([`FaultModel::trace_hash`]).
//!
//! Nodes are [`NodeId`](multinode_wire::NodeId)s everywhere; in an
//! in-memory group of N they are `0..N`.
//!
//! Invariants: one seed and one sequence of sends give one trace; with
//! every fault off, every message is delivered once, in order; nothing is
//! lost without a counter saying so; a handle from a node's earlier life
//! fails with [`ChannelError::Stale`] instead of talking into the void.
//!
//! ```
//! use std::time::Duration;
//! use multinode_mesh::{Channel, ChannelError, InMemoryGroup};
//! use multinode_wire::NodeId;
//!
//! let group = InMemoryGroup::new(3);
//! let (a, b) = (group.channel(NodeId(0), NodeId(1))?, group.channel(NodeId(1), NodeId(0))?);
//! a.send(b"hello")?;
//! group.crash(NodeId(0));
//! assert_eq!(b.receive(Duration::from_secs(1))?, Some(b"hello".to_vec()));
//! assert!(matches!(b.receive(Duration::ZERO), Err(ChannelError::PeerCrashed(NodeId(0)))));
//! assert!(group.is_node_live(NodeId(1)) && group.is_node_live(NodeId(2)));
//! # Ok::<(), ChannelError>(())
//! ```

mod channel;
mod faults;
mod memory;
mod tcp;

pub use channel::{Channel, ChannelError};
pub use faults::{Delivery, Fate, FaultModel, Flip, LinkCounters, LinkFaults};
pub use memory::{InMemoryChannel, InMemoryGroup, InMemoryTransport, MeshConfig};
pub use tcp::{TcpChannel, TcpChannelListener, TcpConfig};
