//! The multinode network model.
//!
//! - [`Channel`] and [`ChannelError`]: one end of an ordered, message-oriented
//!   link, with exact semantics for close and crash, so the same code runs
//!   over memory and over sockets.
//! - [`FaultModel`]: the sans-IO link fault model, in the kit's fault
//!   vocabulary (`cut`, `partition`, `heal`, `hold`/`release`, and link
//!   faults `drop`, `delay`, `duplicate`, `reorder`), drawing every random
//!   choice from one seed and counting everything it does
//!   ([`LinkCounters`]), with a fingerprint of its decisions
//!   ([`FaultModel::trace_hash`]) so a test can prove two runs identical.
//!
//! Invariants: one seed and one sequence of sends give one trace; with every
//! fault off, every message is delivered once, in order, at once; a cut
//! link loses everything and says so in its counters.
//!
//! Not here yet: the in-memory mesh and the TCP channel that implement
//! [`Channel`] on top of this model (they arrive with the rest of the mesh
//! issue).

mod channel;
mod faults;
mod memory;
mod tcp;

pub use channel::{Channel, ChannelError};
pub use faults::{Fate, FaultModel, LinkCounters, LinkFaults};
pub use memory::{InMemoryChannel, InMemoryGroup, InMemoryTransport, MeshConfig};
pub use tcp::{TcpChannel, TcpChannelListener, TcpConfig};
