//! The store's files as they are on disk: the snapshot, the log's header
//! and records, the lock file's record, and the entry they all hold. The
//! byte-level layout is in docs/crash-safety.md, "The files".

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The newest snapshot and log format this build reads, and the one it
/// writes.
pub const FORMAT_VERSION: u32 = 1;

/// One key: its epoch (raised by every delete and reset) and its value, or
/// a tombstone.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Entry<V> {
    pub(crate) epoch: u64,
    #[serde(default = "Option::default", skip_serializing_if = "Option::is_none")]
    pub(crate) value: Option<V>,
}

pub(crate) type Entries<V> = BTreeMap<String, Entry<V>>;

/// The snapshot file: every entry, as of one generation.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Snapshot<E> {
    pub(crate) format: u32,
    #[serde(default)]
    pub(crate) generation: u64,
    pub(crate) entries: E,
}

/// The log's first line: which snapshot generation its records follow.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogHeader {
    pub(crate) log: u32,
    pub(crate) generation: u64,
}

/// One log line after the header: the entries one write cycle changed.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogRecord<E> {
    pub(crate) set: E,
}

/// Only the format version of a snapshot or log header, read before the
/// rest so a newer format is named as such rather than as corruption.
#[derive(Deserialize)]
pub(crate) struct FormatOnly {
    #[serde(alias = "log")]
    pub(crate) format: u32,
}

/// The record the lock file keeps (it is never deleted by the store): the
/// newest generation whose log this store has started. A store whose
/// snapshot is older than that, or whose log of that generation is gone,
/// lost files it had written.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Marker {
    pub(crate) log_generation: u64,
}
