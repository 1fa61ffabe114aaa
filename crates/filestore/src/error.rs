use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Everything a store operation can fail with. Each names the file it is
/// about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A disk operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The snapshot or its log does not parse, or the log is damaged
    /// before its last line. The file is left exactly as it is.
    #[error("{} is corrupt: {reason}", path.display())]
    Corrupt {
        /// The store file.
        path: PathBuf,
        /// What the parser objected to.
        reason: String,
    },
    /// A file of the store changed underneath it in a way no writer of the
    /// store makes (deleted, truncated or replaced by hand, say): what it
    /// acknowledged may be gone. The handle is poisoned, and opening the
    /// store refuses to start over it; the files are left as they are.
    #[error("{} was changed underneath the store: {reason}", path.display())]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What was found, against what the store knows it wrote.
        reason: String,
    },
    /// Another process held the store's lock for longer than the lock wait
    /// (see [`crate::FileStore::open_configured`]).
    #[error(
        "{} is held by {} for more than {waited:?}",
        path.display(),
        holder.map_or_else(|| "another process".to_owned(), |p| format!("process {p}"))
    )]
    LockTimeout {
        /// The lock file.
        path: PathBuf,
        /// How long this handle waited.
        waited: std::time::Duration,
        /// The process holding it, where the system tells (Linux).
        holder: Option<u32>,
    },
    /// The store file was written by a newer format version.
    #[error("{} has format version {found}; this build reads up to {supported}", path.display())]
    NewerFormat {
        /// The store file.
        path: PathBuf,
        /// The file's version.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// A value could not be encoded.
    #[error("cannot encode the state: {reason}")]
    Encode {
        /// The encoder's complaint.
        reason: String,
    },
    /// An earlier write failed part-way (an fsync error, say): this handle
    /// refuses further writes rather than acknowledge on an unknown disk
    /// state. Open a new handle.
    #[error("store handle is poisoned by an earlier failed write")]
    Poisoned,
    /// A [`crate::Pending`] was asked for its outcome after giving it.
    #[error("the outcome was already taken")]
    Polled,
    /// The write cycle carrying this operation (and others queued with it)
    /// failed.
    #[error("write cycle failed: {0}")]
    Batch(Arc<StoreError>),
}

impl StoreError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// The underlying error, through a failed batch.
    pub fn root(&self) -> &StoreError {
        match self {
            StoreError::Batch(e) => e.root(),
            e => e,
        }
    }
}
