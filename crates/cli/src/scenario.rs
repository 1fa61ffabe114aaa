//! The test-cluster scenario and its checker, sans-IO: a seeded [`Plan`]
//! of writes, deletes and kills, the [`History`] of what the nodes
//! acknowledged, and the checks a final state must pass.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use multinode_wire::Timestamp;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::control::{DumpLine, encode};

/// One write a node is told to make: a set, or a delete (`value: None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Op {
    pub(crate) key: String,
    pub(crate) value: Option<String>,
}

impl Op {
    /// The control line that makes this write.
    pub(crate) fn command(&self) -> String {
        match &self.value {
            Some(v) => format!(
                "SET {} {}",
                encode(self.key.as_bytes()),
                encode(v.as_bytes())
            ),
            None => format!("DEL {}", encode(self.key.as_bytes())),
        }
    }
}

/// A node that is killed in the middle of writing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Victim {
    pub(crate) node: usize,
    /// Killed once this many of its writes are acknowledged, with more in
    /// flight.
    pub(crate) after: usize,
}

/// Everything the scenario does, decided by the seed alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Per node: the write phase (sets, many keys shared across nodes).
    pub(crate) writes: Vec<Vec<Op>>,
    /// Per node: the delete phase (mostly deletes, some overwrites).
    pub(crate) deletes: Vec<Vec<Op>>,
    pub(crate) victims: Vec<Victim>,
    /// The partition during the write phase: one side's node indexes.
    pub(crate) side: Option<BTreeSet<usize>>,
}

impl Plan {
    pub(crate) fn new(seed: u64, nodes: usize, keys: usize, kills: usize, partition: bool) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let keys = keys.max(1);
        let hot = (keys / 10).max(1);
        let key = |i: usize| format!("k{i:05}");
        let per_node = (2 * keys / nodes).max(8);
        let writes = (0..nodes)
            .map(|n| {
                (0..per_node)
                    .map(|i| {
                        // A third of the writes go to a few hot keys, so
                        // different nodes write the same keys at once.
                        let k = if rng.random_bool(0.3) {
                            rng.random_range(0..hot)
                        } else {
                            rng.random_range(0..keys)
                        };
                        Op {
                            key: key(k),
                            value: Some(format!("n{n}w{i}")),
                        }
                    })
                    .collect()
            })
            .collect();
        let per_node = (keys / (4 * nodes)).max(2);
        let deletes = (0..nodes)
            .map(|n| {
                (0..per_node)
                    .map(|i| Op {
                        key: key(rng.random_range(0..keys)),
                        value: rng.random_bool(0.25).then(|| format!("n{n}d{i}")),
                    })
                    .collect()
            })
            .collect();
        let mut order: Vec<usize> = (0..nodes).collect();
        for i in 0..order.len() {
            let j = rng.random_range(i..order.len());
            order.swap(i, j);
        }
        let writes_len = (2 * keys / nodes).max(8);
        let victims = order[..kills.min(nodes - 1)]
            .iter()
            .map(|&node| Victim {
                node,
                after: rng.random_range(writes_len / 4..=writes_len / 2),
            })
            .collect();
        let side = partition.then(|| order[..nodes / 2].iter().copied().collect());
        Self {
            writes,
            deletes,
            victims,
            side,
        }
    }

    /// A digest of the plan: equal runs print equal digests.
    pub(crate) fn digest(&self) -> u64 {
        // FNV-1a over the plan's debug text: stable across processes.
        let text = format!("{self:?}");
        text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    }
}

/// A write a node acknowledged, with the version it was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Ack {
    pub(crate) node: usize,
    pub(crate) op: Op,
    pub(crate) version: Timestamp,
}

/// What happened: acknowledged writes, and writes in flight at a kill
/// (which may or may not have taken effect).
#[derive(Clone, Debug, Default)]
pub(crate) struct History {
    pub(crate) acked: Vec<Ack>,
    pub(crate) unsure: Vec<(usize, Op)>,
}

/// What a check found wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Violation {
    /// The nodes' state digests differ.
    Diverged { digests: Vec<(usize, String)> },
    /// The nodes' dumps differ although their digests agree.
    DumpsDiffer { node: usize, first_key: String },
    /// An acknowledged write is gone and nothing newer replaced it.
    Lost {
        node: usize,
        key: String,
        version: Timestamp,
        found: Option<Timestamp>,
    },
    /// A key deleted (acknowledged) is live with an older version.
    Resurrected {
        key: String,
        deleted: Timestamp,
        found: Timestamp,
    },
    /// A live value nobody wrote.
    Phantom { key: String, value: String },
    /// A node read a key older than a write it had acknowledged.
    StaleRead {
        node: usize,
        key: String,
        read: Option<Timestamp>,
        wrote: Timestamp,
    },
    /// A node read a key older than it had read it before.
    NonMonotonicRead {
        node: usize,
        key: String,
        before: Timestamp,
        after: Option<Timestamp>,
    },
    /// A read returned a value no write carried.
    PhantomRead {
        node: usize,
        key: String,
        value: String,
    },
    /// A restarted node lacks a write it acknowledged before the kill.
    NotRecovered {
        node: usize,
        key: String,
        version: Timestamp,
        found: Option<Timestamp>,
    },
}

fn opt(t: &Option<Timestamp>) -> String {
    t.map_or_else(|| "nothing".into(), |t| t.to_string())
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Diverged { digests } => {
                write!(f, "digests diverged:")?;
                for (n, d) in digests {
                    write!(f, " node {n}={d}")?;
                }
                Ok(())
            }
            Self::DumpsDiffer { node, first_key } => write!(
                f,
                "node {node}'s state differs from node 0's, first at key {first_key:?}"
            ),
            Self::Lost {
                node,
                key,
                version,
                found,
            } => write!(
                f,
                "lost write: node {node} acknowledged {key:?} at {version}, the cluster holds {}",
                opt(found)
            ),
            Self::Resurrected {
                key,
                deleted,
                found,
            } => write!(
                f,
                "resurrected delete: {key:?} was deleted at {deleted} but is live at {found}"
            ),
            Self::Phantom { key, value } => {
                write!(
                    f,
                    "phantom value: {key:?} = {value:?}, which no node was told to write"
                )
            }
            Self::StaleRead {
                node,
                key,
                read,
                wrote,
            } => write!(
                f,
                "stale read: node {node} read {key:?} as {} after acknowledging its own write at {wrote}",
                opt(read)
            ),
            Self::NonMonotonicRead {
                node,
                key,
                before,
                after,
            } => write!(
                f,
                "non-monotonic read: node {node} read {key:?} as {} after reading it at {before}",
                opt(after)
            ),
            Self::PhantomRead { node, key, value } => write!(
                f,
                "phantom read: node {node} read {key:?} = {value:?}, which no write carried"
            ),
            Self::NotRecovered {
                node,
                key,
                version,
                found,
            } => write!(
                f,
                "node {node} restarted without its acknowledged write {key:?} at {version}; it holds {}",
                opt(found)
            ),
        }
    }
}

/// Every node reports the same digest.
pub(crate) fn check_digests(digests: &[(usize, String)]) -> Option<Violation> {
    let first = &digests.first()?.1;
    digests
        .iter()
        .any(|(_, d)| d != first)
        .then(|| Violation::Diverged {
            digests: digests.to_vec(),
        })
}

/// Every node's dump equals node 0's.
pub(crate) fn check_dumps(dumps: &[Vec<DumpLine>]) -> Option<Violation> {
    let first = dumps.first()?;
    dumps.iter().enumerate().skip(1).find_map(|(node, d)| {
        if d == first {
            return None;
        }
        let at = first
            .iter()
            .zip(d)
            .find(|(a, b)| a != b)
            .map(|(a, _)| a.key.clone())
            .or_else(|| {
                first
                    .get(d.len())
                    .or(d.get(first.len()))
                    .map(|e| e.key.clone())
            })
            .unwrap_or_default();
        Some(Violation::DumpsDiffer {
            node,
            first_key: at,
        })
    })
}

fn by_key(state: &[DumpLine]) -> BTreeMap<&str, &DumpLine> {
    state.iter().map(|e| (e.key.as_str(), e)).collect()
}

/// The final state against the history: every acknowledged write is there
/// or superseded by a higher version, no acknowledged delete is undone by
/// an older value, and every live value is one some node was told to write.
pub(crate) fn check_final(history: &History, state: &[DumpLine]) -> Vec<Violation> {
    let map = by_key(state);
    let mut out = Vec::new();
    for a in &history.acked {
        let found = map.get(a.op.key.as_str());
        let held = found.map(|e| e.version);
        let same_value =
            found.is_some_and(|e| e.value.as_deref() == a.op.value.as_deref().map(str::as_bytes));
        match found {
            // A tombstone may have been collected after its grace period.
            None if a.op.value.is_none() => {}
            Some(e) if e.version > a.version || (e.version == a.version && same_value) => {}
            Some(e) if a.op.value.is_none() && e.value.is_some() && e.version < a.version => {
                out.push(Violation::Resurrected {
                    key: a.op.key.clone(),
                    deleted: a.version,
                    found: e.version,
                });
            }
            _ => out.push(Violation::Lost {
                node: a.node,
                key: a.op.key.clone(),
                version: a.version,
                found: held,
            }),
        }
    }
    let written: BTreeSet<&str> = history
        .acked
        .iter()
        .map(|a| &a.op)
        .chain(history.unsure.iter().map(|(_, op)| op))
        .filter_map(|op| op.value.as_deref())
        .collect();
    for e in state {
        if let Some(v) = &e.value {
            let v = String::from_utf8_lossy(v);
            if !written.contains(v.as_ref()) {
                out.push(Violation::Phantom {
                    key: e.key.clone(),
                    value: v.into_owned(),
                });
            }
        }
    }
    out
}

/// A restarted node's state, read before it heard from any peer, against
/// the writes it acknowledged before it was killed.
pub(crate) fn check_recovered(node: usize, acked: &[Ack], state: &[DumpLine]) -> Vec<Violation> {
    let map = by_key(state);
    acked
        .iter()
        .filter(|a| a.node == node)
        .filter_map(|a| {
            let found = map.get(a.op.key.as_str()).map(|e| e.version);
            (found < Some(a.version)).then(|| Violation::NotRecovered {
                node,
                key: a.op.key.clone(),
                version: a.version,
                found,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use multinode_wire::NodeId;

    use super::*;

    fn ts(ms: u64, node: u64) -> Timestamp {
        Timestamp {
            physical_ms: ms,
            logical: 0,
            node: NodeId(node),
        }
    }

    fn set(key: &str, v: &str) -> Op {
        Op {
            key: key.into(),
            value: Some(v.into()),
        }
    }

    fn del(key: &str) -> Op {
        Op {
            key: key.into(),
            value: None,
        }
    }

    fn line(key: &str, version: Timestamp, value: Option<&str>) -> DumpLine {
        DumpLine {
            key: key.into(),
            version,
            value: value.map(|v| v.as_bytes().to_vec()),
        }
    }

    fn ack(node: usize, op: Op, version: Timestamp) -> Ack {
        Ack { node, op, version }
    }

    /// Two nodes wrote `a`, one deleted `b` after writing it; the final
    /// state holds the later write of `a` and the tombstone of `b`.
    fn history() -> (History, Vec<DumpLine>) {
        let h = History {
            acked: vec![
                ack(0, set("a", "n0w0"), ts(10, 0)),
                ack(1, set("a", "n1w0"), ts(11, 1)),
                ack(0, set("b", "n0w1"), ts(12, 0)),
                ack(1, del("b"), ts(13, 1)),
            ],
            unsure: vec![(2, set("c", "n2w0"))],
        };
        let state = vec![
            line("a", ts(11, 1), Some("n1w0")),
            line("b", ts(13, 1), None),
            line("c", ts(14, 2), Some("n2w0")),
        ];
        (h, state)
    }

    #[test]
    fn a_correct_history_passes() {
        let (h, state) = history();
        assert_eq!(check_final(&h, &state), vec![]);
        assert_eq!(check_recovered(0, &h.acked, &state), vec![]);
        assert_eq!(check_dumps(&[state.clone(), state]), None);
    }

    #[test]
    fn a_lost_acknowledged_write_is_flagged() {
        let (h, mut state) = history();
        // `a` rolled back to the superseded write.
        state[0] = line("a", ts(10, 0), Some("n0w0"));
        let v = check_final(&h, &state);
        assert_eq!(
            v,
            vec![Violation::Lost {
                node: 1,
                key: "a".into(),
                version: ts(11, 1),
                found: Some(ts(10, 0)),
            }]
        );
        assert!(
            v[0].to_string()
                .starts_with("lost write: node 1 acknowledged \"a\"")
        );
        // A key missing altogether is lost too.
        let v = check_final(&h, &state[1..]);
        assert!(
            v.iter()
                .any(|v| matches!(v, Violation::Lost { key, found: None, .. } if key == "a"))
        );
        // The same value under another version is not the acknowledged write.
        state[0] = line("a", ts(11, 1), Some("n0w0"));
        assert_eq!(check_final(&h, &state).len(), 1);
    }

    #[test]
    fn a_resurrected_delete_is_flagged() {
        let (h, mut state) = history();
        state[1] = line("b", ts(12, 0), Some("n0w1"));
        let v = check_final(&h, &state);
        assert_eq!(
            v,
            vec![Violation::Resurrected {
                key: "b".into(),
                deleted: ts(13, 1),
                found: ts(12, 0),
            }]
        );
        // A newer write after the delete is not a resurrection.
        state[1] = line("b", ts(20, 2), Some("n0w1"));
        assert_eq!(check_final(&h, &state), vec![]);
    }

    #[test]
    fn diverged_digests_and_dumps_are_flagged() {
        let same = [(0, "aa".to_string()), (1, "aa".to_string())];
        assert_eq!(check_digests(&same), None);
        let differ = [(0, "aa".to_string()), (1, "aa".into()), (2, "ab".into())];
        let v = check_digests(&differ).expect("flagged");
        assert_eq!(
            v.to_string(),
            "digests diverged: node 0=aa node 1=aa node 2=ab"
        );
        let (_, state) = history();
        let mut other = state.clone();
        other[2] = line("c", ts(15, 2), Some("n2w0"));
        assert_eq!(
            check_dumps(&[state.clone(), state.clone(), other]),
            Some(Violation::DumpsDiffer {
                node: 2,
                first_key: "c".into()
            })
        );
        assert_eq!(
            check_dumps(&[state.clone(), state[..2].to_vec()]),
            Some(Violation::DumpsDiffer {
                node: 1,
                first_key: "c".into()
            })
        );
    }

    #[test]
    fn phantoms_and_unrecovered_writes_are_flagged() {
        let (h, mut state) = history();
        state.push(line("d", ts(30, 3), Some("made-up")));
        assert_eq!(
            check_final(&h, &state),
            vec![Violation::Phantom {
                key: "d".into(),
                value: "made-up".into()
            }]
        );
        // Node 0 came back without `b`'s write.
        let restarted = vec![line("a", ts(10, 0), Some("n0w0"))];
        assert_eq!(
            check_recovered(0, &h.acked, &restarted),
            vec![Violation::NotRecovered {
                node: 0,
                key: "b".into(),
                version: ts(12, 0),
                found: None
            }]
        );
    }

    #[test]
    fn the_plan_depends_on_the_seed_alone() {
        let a = Plan::new(7, 5, 200, 1, true);
        assert_eq!(a, Plan::new(7, 5, 200, 1, true));
        assert_eq!(a.digest(), Plan::new(7, 5, 200, 1, true).digest());
        assert_ne!(a.digest(), Plan::new(8, 5, 200, 1, true).digest());
        assert_eq!(a.writes.len(), 5);
        assert_eq!(a.victims.len(), 1);
        assert_eq!(a.side.as_ref().map(BTreeSet::len), Some(2));
        // Different nodes write some of the same keys.
        let keys =
            |n: usize| -> BTreeSet<&str> { a.writes[n].iter().map(|o| o.key.as_str()).collect() };
        assert!(keys(0).intersection(&keys(1)).count() > 0);
        // Never more victims than leaves a survivor.
        assert_eq!(Plan::new(7, 3, 50, 9, false).victims.len(), 2);
    }
}
