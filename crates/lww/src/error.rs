//! The crate's errors.

use multinode_filestore::StoreError;

/// What an LWW operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LwwError {
    /// The configuration is not usable; names the field.
    #[error("invalid configuration: {field}: {reason}")]
    Config {
        /// The field at fault.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// A key or value too large to fit one delta within the byte budget.
    #[error("entry of {len} bytes exceeds the limit of {max} (a quarter of the delta budget)")]
    TooLarge {
        /// The entry's encoded size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The persistent store failed; the write was not acknowledged.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// This replica's clock is off the cluster's by more than half the
    /// drift bound: a write stamped here could be refused by a peer and
    /// never converge, so it is refused instead.
    #[error(
        "clock {} the cluster's by {:.1} s (the median of this clock and {peers} measured \
         peer(s); writes need it within {:.1} s, half the drift bound): refusing a write that \
         could not converge",
        if *ahead_ms >= 0 { "ahead of" } else { "behind" },
        ahead_ms.unsigned_abs() as f64 / 1000.0,
        *limit_ms as f64 / 1000.0
    )]
    ClockOffset {
        /// How far this clock is ahead of the cluster's median (negative:
        /// behind), in ms.
        ahead_ms: i64,
        /// How many peers' clocks were measured.
        peers: usize,
        /// The largest offset at which writes are taken, in ms.
        limit_ms: u64,
    },
    /// The node has shut down.
    #[error("the node is shut down")]
    Closed,
}
