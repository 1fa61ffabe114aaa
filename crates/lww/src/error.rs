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
    /// The node has shut down.
    #[error("the node is shut down")]
    Closed,
}
