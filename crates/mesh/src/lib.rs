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
//!   in-process gossip network apply, in the kit's vocabulary (`cut`,
//!   `partition`, `heal`, `hold`/`release`, `drop`, `delay`, `duplicate`,
//!   `reorder`), drawing every random choice from one seed, counting what it
//!   does ([`LinkCounters`]) and fingerprinting it
//!   ([`FaultModel::trace_hash`]).
//!
//! Invariants: one seed and one sequence of sends give one trace; with
//! every fault off, every message is delivered once, in order; nothing is
//! lost without a counter saying so; a handle from a node's earlier life
//! fails with [`ChannelError::Stale`] instead of talking into the void.
//!
//! ```
//! use std::time::Duration;
//! use multinode_mesh::{Channel, ChannelError, InMemoryGroup};
//!
//! let group = InMemoryGroup::new(3);
//! let (a, b) = (group.channel(0, 1)?, group.channel(1, 0)?);
//! a.send(b"hello")?;
//! group.crash(0);
//! assert_eq!(b.receive(Duration::from_secs(1))?, Some(b"hello".to_vec()));
//! assert!(matches!(b.receive(Duration::ZERO), Err(ChannelError::PeerCrashed(0))));
//! assert!(group.is_node_live(1) && group.is_node_live(2));
//! # Ok::<(), ChannelError>(())
//! ```

mod channel;
mod faults;
mod memory;
mod tcp;

pub use channel::{Channel, ChannelError};
pub use faults::{Fate, FaultModel, LinkCounters, LinkFaults};
pub use memory::{InMemoryChannel, InMemoryGroup, InMemoryTransport, MeshConfig};
pub use tcp::{TcpChannel, TcpChannelListener, TcpConfig};
