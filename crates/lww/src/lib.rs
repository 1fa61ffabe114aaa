//! A last-write-wins replicated key-value store that converges by gossip.
//!
//! - [`Replica`]: the sans-IO protocol (time and a seed are passed in).
//!   Byte-string values under string keys; `set`, `get`, `delete`.
//!   Versions are hybrid-logical-clock [`Timestamp`]s with the node id as
//!   the final tie-break: two writes never compare equal, every replica
//!   picks the same winner, and a write made after seeing another wins
//!   over it. Deletes are tombstones, collected after a grace period.
//! - Anti-entropy by digest then delta: a round sends each chosen peer a
//!   digest of per-origin *watermarks*; the answer carries what the digest
//!   lacks, at most [`ReplicaConfig::delta_budget`] bytes, origins taking
//!   turns; the opener answers in kind (push-pull). An exchange left
//!   unanswered is retried with another peer within the round
//!   ([`Replica::retry`]). Replicas that agree exchange only digests. A
//!   replica lagging a peer by more than the tombstone grace (or restored
//!   from disk) resynchronises: it drops what that peer provably saw and
//!   pulls it back, so a delete it missed cannot come back through it.
//! - [`Fanout`] (fixed, √n, log n, all) with a seeded peer choice; a
//!   φ-accrual [`PeerStatus`] per peer from the heartbeats digests carry.
//! - [`Simulator`]: many replicas in virtual time with loss, partitions,
//!   crash and restart, counting rounds and bytes.
//! - [`LwwNode`]: the replica over any `GossipTransport`, with a round
//!   timer, a change feed, stats, and optional durability through
//!   `multinode-filestore`.
//!
//! The protocol and its guarantees: `docs/lww.md`.

mod config;
mod error;
mod liveness;
mod node;
mod offsets;
mod replica;
mod sim;

pub use config::{Fanout, ReplicaConfig};
pub use error::LwwError;
pub use liveness::PeerStatus;
pub use multinode_wire::{LwwEntry, Timestamp};
pub use node::{Inbox, LwwNode, NodeConfig, NodeStats};
pub use offsets::ClockOffset;
pub use replica::{NO_DIGEST, Outgoing, Received, Replica, ReplicaStats, Round};
pub use sim::{SimStats, Simulator, wire_len};
