//! Out-of-process barriers: N real processes, in any language, meet at named
//! points before any goes on.
//!
//! - [`Controller`]: serves the barrier line protocol on loopback TCP for a
//!   cluster of N members (node ids `0..N`).
//! - [`BarrierNode`] (async) and [`BlockingBarrierNode`] (`std::net`): clients.
//! - [`Launcher`]: spawns N copies of a command with the controller's address
//!   in their environment and reaps every one of them, like `mpirun`.
//!
//! A child in any language joins with one line of ASCII per command:
//! `BARRIER <label>` is answered `OK <label>`, `TIMEOUT <label>` or
//! `FAILED <label> <cause>` (see `docs/barrier-protocol.md`).
//!
//! A controller started with a [`Conductor`] also takes fault lines
//! (`PARTITION 0,1 2,3`, `CUT 1 2`, `HEAL`, `DROP 0.2`, `PAUSE 3`, `KILL 3`,
//! `RESTART 3`, ...) and answers `OK <VERB> <counters>` or `ERR <reason>`;
//! without one, those lines are refused.
//!
//! Invariants: a barrier completes only when every member (every node that
//! has not left) has arrived; its deadline runs from its first arrival; a
//! label that timed out or failed stays failed, and labels are single-use;
//! a member that disconnects or exits while a barrier is pending fails it for
//! everyone at once, naming the node; a client call that was abandoned never
//! desynchronises the next. The protocol logic is a sans-IO state machine;
//! the controller's tasks only carry bytes to and from it.
//!
//! Not done here: no authentication (bind loopback), no persistence of
//! barrier state across controller restarts.

mod client;
mod conductor;
mod config;
mod controller;
mod core;
mod error;
mod identity;
mod launcher;
mod line_reader;
mod process_faults;
mod summary;

pub use client::{BarrierNode, BlockingBarrierNode, Gathered};
pub use conductor::Conductor;
pub use config::Config;
pub use controller::Controller;
pub use error::BarrierError;
pub use identity::{
    ENV_ADDR, ENV_INDEX, ENV_NODES, INDEX_VARS, NODES_VARS, env_identity, env_index, env_nodes,
};
pub use launcher::{
    LaunchReport, Launcher, MAX_CAPTURE, NodeReport, OutputMode, Spawner, describe,
};
pub use summary::{NodeRecord, Summary};
