//! A crash-safe key-value state store shared by processes.
//!
//! - [`FileStore`]: a human-readable JSON snapshot (`<file>`) and a
//!   checksummed append-only log (`<file>.log`, with room made ahead of
//!   its lines so that writing one changes no file length). Every write
//!   cycle takes a cross-process lock on a sidecar file that is never
//!   deleted, catches up with other processes' writes, merges key by key
//!   with the value's [`Merge`] rule, writes one line and fsyncs it before
//!   it acknowledges. The log is folded into a new snapshot by the durable
//!   replace (temp file, fsync, rename, fsync of the directory) once it
//!   outgrows it. Writes queued together share one cycle.
//! - [`StateStore`]: the interface. `get` and `keys` answer from memory;
//!   `put` and `delete` return a [`Pending`] to `.await` or to
//!   [`Pending::wait`] for. [`Checkpoint`] is the stock value, a sequence
//!   that never moves back.
//! - [`Storage`]: every disk operation, so [`SimStorage`] can model what a
//!   power cut keeps and a test can crash the protocol at every step;
//!   [`DiskStorage`] is the real disk.
//! - [`killfuzz`]: the kill-during-write fuzz harness, for this store or
//!   yours: writer processes, seeded `SIGKILL` waves, journals, a checker.
//!
//! Invariants: an acknowledged write survives a crash of the process or of
//! the machine; nothing is acknowledged that was not made durable; a value
//! never moves backwards by its merge rule; no handle resurrects a delete
//! or undoes a reset it had not seen; a corrupt file is an error naming it,
//! never a silent reset; `get` takes no lock and does no I/O. The protocol
//! and what the tests prove: `docs/crash-safety.md`.

mod error;
mod format;
pub mod killfuzz;
mod log;
mod pending;
mod storage;
mod store;

pub use error::StoreError;
pub use format::FORMAT_VERSION;
pub use pending::Pending;
pub use storage::{DiskStorage, FileSize, FileVersion, SimStorage, Storage};
pub use store::{
    Checkpoint, DEFAULT_LOCK_WAIT, DEFAULT_STAGE_WAIT, FileStore, Merge, PutOutcome, StateStore,
    StoreConfig,
};
