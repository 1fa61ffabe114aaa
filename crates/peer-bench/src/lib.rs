//! Benchmarks beside the projects a user would pick instead of ours, each
//! measured in the same run as ours and reported as a ratio:
//!
//! - `benches/chitchat.rs`: the LWW replica's gossip beside chitchat's
//!   scuttlebutt, on the same simulated network (fanout 3, the same loss):
//!   rounds for a write to reach every node, and bytes a round.
//! - `benches/redb.rs`: the file store's durable writes beside redb's
//!   `Durability::Immediate` commits.
//!
//! The peers' crates are dependencies of these benchmarks only; this
//! library is empty.
