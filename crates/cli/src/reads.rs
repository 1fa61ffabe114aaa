//! Reads, checked: what each node's `GET`s returned, against the writes in
//! the history. Sans-IO. A node serves its control lines one at a time and
//! answers in order, so the order of its completions is the order it ran
//! them in: a session.

use std::collections::{BTreeSet, HashMap};

use multinode_wire::Timestamp;

use crate::scenario::Violation;

/// A version a node acknowledged or returned, and whether it was a delete.
#[derive(Clone, Copy)]
struct Seen {
    version: Timestamp,
    deleted: bool,
}

/// The read checks, fed a history's completions in order.
#[derive(Default)]
pub(crate) struct Reads {
    /// The highest version each node acknowledged for each key.
    wrote: HashMap<(usize, String), Seen>,
    /// The highest version each node read for each key.
    read: HashMap<(usize, String), Seen>,
    /// Every value some write carried (ok, failed or unknown).
    written: BTreeSet<String>,
    /// Reads whose values must be among `written`, checked at the end.
    returned: Vec<(usize, String, String)>,
    violations: Vec<Violation>,
    /// Reads that completed.
    pub(crate) count: usize,
}

impl Reads {
    /// A write some node was asked to make (whatever its outcome).
    pub(crate) fn invoked(&mut self, value: Option<&str>) {
        if let Some(v) = value {
            self.written.insert(v.to_owned());
        }
    }

    /// A write `node` acknowledged at `version`.
    pub(crate) fn wrote(&mut self, node: usize, key: &str, version: Timestamp, deleted: bool) {
        let seen = self
            .wrote
            .entry((node, key.to_owned()))
            .or_insert(Seen { version, deleted });
        if version > seen.version {
            *seen = Seen { version, deleted };
        }
    }

    /// A read on `node` that returned `value` at `version` (none: the key
    /// is absent; a version without a value: a tombstone).
    pub(crate) fn read(
        &mut self,
        node: usize,
        key: &str,
        value: Option<&str>,
        version: Option<Timestamp>,
    ) {
        self.count += 1;
        let k = (node, key.to_owned());
        if let Some(v) = value {
            self.returned.push((node, key.to_owned(), v.to_owned()));
        }
        // Read-your-writes: never older than what this node acknowledged
        // (a collected tombstone may read as absent).
        if let Some(w) = self.wrote.get(&k).copied() {
            let ok = match version {
                Some(r) => r >= w.version,
                None => w.deleted,
            };
            if !ok {
                self.violations.push(Violation::StaleRead {
                    node,
                    key: key.to_owned(),
                    read: version,
                    wrote: w.version,
                });
            }
        }
        // Monotonic reads: never older than what this node read before.
        if let Some(before) = self.read.get(&k).copied() {
            let ok = match version {
                Some(r) => r >= before.version,
                None => before.deleted,
            };
            if !ok {
                self.violations.push(Violation::NonMonotonicRead {
                    node,
                    key: key.to_owned(),
                    before: before.version,
                    after: version,
                });
            }
        }
        if let Some(version) = version {
            let newer = self.read.get(&k).is_none_or(|b| version > b.version);
            if newer {
                let deleted = value.is_none();
                self.read.insert(k, Seen { version, deleted });
            }
        }
    }

    /// Every violation, the reads of values nobody wrote included.
    pub(crate) fn finish(mut self) -> Vec<Violation> {
        for (node, key, value) in std::mem::take(&mut self.returned) {
            if !self.written.contains(&value) {
                self.violations
                    .push(Violation::PhantomRead { node, key, value });
            }
        }
        self.violations
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use multinode_wire::NodeId;

    fn ts(ms: u64) -> Timestamp {
        Timestamp {
            physical_ms: ms,
            logical: 0,
            node: NodeId(0),
        }
    }

    #[test]
    fn a_node_reads_its_own_writes_and_never_goes_back() {
        let mut r = Reads::default();
        r.invoked(Some("x"));
        r.wrote(0, "k", ts(10), false);
        r.read(0, "k", Some("x"), Some(ts(10)));
        r.read(1, "k", None, None); // another node may not have it yet
        r.read(1, "k", Some("x"), Some(ts(10)));
        assert!(r.finish().is_empty());
    }

    #[test]
    fn each_read_anomaly_is_named() {
        let mut r = Reads::default();
        r.invoked(Some("x"));
        r.wrote(0, "k", ts(10), false);
        r.read(0, "k", None, None);
        r.read(1, "k", Some("x"), Some(ts(10)));
        r.read(1, "k", Some("x"), Some(ts(5)));
        r.read(2, "k", Some("never"), Some(ts(11)));
        let v: Vec<String> = r.finish().iter().map(ToString::to_string).collect();
        assert_eq!(v.len(), 3, "{v:?}");
        assert!(
            v[0].starts_with("stale read: node 0 read \"k\" as nothing"),
            "{v:?}"
        );
        assert!(v[1].starts_with("non-monotonic read: node 1"), "{v:?}");
        assert!(
            v[2].starts_with("phantom read: node 2 read \"k\" = \"never\""),
            "{v:?}"
        );
    }

    #[test]
    fn a_collected_tombstone_may_read_as_absent() {
        let mut r = Reads::default();
        r.wrote(0, "k", ts(10), true);
        r.read(0, "k", None, Some(ts(10)));
        r.read(0, "k", None, None);
        assert!(r.finish().is_empty());
    }
}
