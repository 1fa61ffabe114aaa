//! `history.jsonl`: what a test-cluster run did, one JSON object a line,
//! and the checker that reads it back. Sans-IO: the conductor writes the
//! lines (`cluster/recorder.rs`), `multinode check` and the run itself
//! read them with [`parse`] and judge them with [`check`].
//!
//! Operations are written the way Jepsen's Elle tools read a read-write
//! register history: `{"index", "type": "invoke"|"ok"|"fail"|"info",
//! "f": "txn", "value": [["w", key, value]], "process", "time"}` (a delete
//! writes `null`), plus our own `node`, `incarnation` and, once
//! acknowledged, `version`. Faults are `"process": "nemesis"` records and
//! the conductor's phases and node states `"process": "conductor"`, which
//! register checkers skip. The format is in `docs/history.md`.

use std::collections::BTreeMap;
use std::fmt;

use multinode_wire::Timestamp;
use serde_json::{Value, json};

use crate::control::{DumpLine, decode, encode, parse_version};
use crate::reads::Reads;
use crate::scenario::{Ack, History, Op, Violation, check_dumps, check_final, check_recovered};

/// One record of a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// An operation sent to a node (`invoke`), and how it ended: `ok` with
    /// its version, `fail` (refused, so not applied), or `info` (unknown:
    /// in flight when its node was killed).
    Op {
        kind: Kind,
        /// The client lane: a node's writes and reads go out up to
        /// [`LANES`] at a time, each lane with one outstanding, so every
        /// `process` is sequential as Elle expects.
        process: u64,
        node: usize,
        incarnation: u32,
        micro: Micro,
        version: Option<Timestamp>,
        time_ns: u64,
    },
    /// A fault the run made: `kill`, `restart`, `partition`, `heal`,
    /// `drop`, `pause`, `resume`, `flap`, with what it applied to.
    Fault {
        f: String,
        value: Value,
        time_ns: u64,
    },
    /// A phase of the scenario ended (its barrier passed).
    Phase { name: String, time_ns: u64 },
    /// A node's whole state: `recovered` (read at restart, before any peer
    /// spoke) or `final` (after agreement).
    State {
        what: StateKind,
        node: usize,
        entries: Vec<DumpLine>,
        time_ns: u64,
    },
}

/// Client lanes per node (the conductor's window of operations in flight).
pub(crate) const LANES: u64 = 8;

/// What an operation does: `["w", key, value]` or `["r", key, value]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Micro {
    /// A set (`value` some) or a delete (`value` none).
    Write(Op),
    /// A read: `value` is what it returned (none: absent or deleted),
    /// known once it completes.
    Read { key: String, value: Option<String> },
}

/// An operation record's `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Invoke,
    Ok,
    Fail,
    Info,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Invoke => "invoke",
            Kind::Ok => "ok",
            Kind::Fail => "fail",
            Kind::Info => "info",
        }
    }
}

/// Which state a [`Event::State`] records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StateKind {
    Recovered,
    Final,
}

impl StateKind {
    /// The record's `f`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            StateKind::Recovered => "recovered",
            StateKind::Final => "final",
        }
    }
}

impl Event {
    /// The record as one JSON object, numbered `index`.
    pub(crate) fn to_json(&self, index: u64) -> Value {
        match self {
            Event::Op {
                kind,
                process,
                node,
                incarnation,
                micro,
                version,
                time_ns,
            } => {
                let value = match micro {
                    Micro::Write(op) => json!([["w", op.key, op.value]]),
                    Micro::Read { key, value } => json!([["r", key, value]]),
                };
                let mut v = json!({
                    "index": index,
                    "type": kind.as_str(),
                    "f": "txn",
                    "value": value,
                    "process": process,
                    "time": time_ns,
                    "node": node,
                    "incarnation": incarnation,
                });
                if let Some(version) = version {
                    v["version"] = json!(version.to_string());
                }
                v
            }
            Event::Fault { f, value, time_ns } => json!({
                "index": index, "type": "info", "process": "nemesis",
                "f": f, "value": value, "time": time_ns,
            }),
            Event::Phase { name, time_ns } => json!({
                "index": index, "type": "info", "process": "conductor",
                "f": "phase", "value": name, "time": time_ns,
            }),
            Event::State {
                what,
                node,
                entries,
                time_ns,
            } => {
                let entries: Vec<Value> = entries
                    .iter()
                    .map(|e| {
                        json!([
                            encode(e.key.as_bytes()),
                            e.version.to_string(),
                            e.value.as_deref().map(encode)
                        ])
                    })
                    .collect();
                let f = what.as_str();
                json!({
                    "index": index, "type": "info", "process": "conductor",
                    "f": f, "node": node, "value": entries, "time": time_ns,
                })
            }
        }
    }
}

/// Why a history could not be read.
#[derive(Debug, thiserror::Error)]
#[error("history line {line}: {why}")]
pub(crate) struct HistoryError {
    line: usize,
    why: String,
}

/// The most records a history may hold (a run writes a few per write).
const MAX_RECORDS: usize = 10_000_000;

/// Reads a history: one JSON object a line (blank lines skipped).
pub(crate) fn parse(text: &str) -> Result<Vec<Event>, HistoryError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if out.len() >= MAX_RECORDS {
            return Err(HistoryError {
                line: i + 1,
                why: format!("more than {MAX_RECORDS} records"),
            });
        }
        let err = |why: String| HistoryError { line: i + 1, why };
        let v: Value = serde_json::from_str(line).map_err(|e| err(e.to_string()))?;
        out.push(event(&v).map_err(err)?);
    }
    Ok(out)
}

fn event(v: &Value) -> Result<Event, String> {
    let str_of = |k: &str| v.get(k).and_then(Value::as_str);
    let u64_of = |k: &str| v.get(k).and_then(Value::as_u64);
    let time_ns = u64_of("time").ok_or("no \"time\"")?;
    let node = || -> Result<usize, String> {
        u64_of("node")
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| "no \"node\"".to_owned())
    };
    match (str_of("process"), str_of("f")) {
        (Some("nemesis"), Some(f)) => Ok(Event::Fault {
            f: f.to_owned(),
            value: v.get("value").cloned().unwrap_or(Value::Null),
            time_ns,
        }),
        (Some("conductor"), Some("phase")) => Ok(Event::Phase {
            name: str_of("value").ok_or("a phase without a name")?.to_owned(),
            time_ns,
        }),
        (Some("conductor"), Some(f @ ("recovered" | "final"))) => {
            let what = if f == "final" {
                StateKind::Final
            } else {
                StateKind::Recovered
            };
            let entries = v
                .get("value")
                .and_then(Value::as_array)
                .ok_or("a state without entries")?
                .iter()
                .map(entry)
                .collect::<Result<_, _>>()?;
            Ok(Event::State {
                what,
                node: node()?,
                entries,
                time_ns,
            })
        }
        (_, Some("txn")) => {
            let kind = match str_of("type") {
                Some("invoke") => Kind::Invoke,
                Some("ok") => Kind::Ok,
                Some("fail") => Kind::Fail,
                Some("info") => Kind::Info,
                other => return Err(format!("an operation of type {other:?}")),
            };
            let m = v
                .get("value")
                .and_then(Value::as_array)
                .and_then(|m| (m.len() == 1).then(|| m[0].as_array()).flatten())
                .filter(|m| m.len() == 3 && (m[0] == "w" || m[0] == "r"))
                .ok_or("a txn that is not one [\"w\"|\"r\", key, value]")?;
            let key = m[1]
                .as_str()
                .ok_or("an operation without a key")?
                .to_owned();
            let value = match &m[2] {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                _ => return Err("an operation whose value is not a string or null".into()),
            };
            let micro = if m[0] == "w" {
                Micro::Write(Op { key, value })
            } else {
                Micro::Read { key, value }
            };
            let version = match str_of("version") {
                Some(s) => Some(parse_version(s).ok_or(format!("bad version {s:?}"))?),
                None => None,
            };
            if kind == Kind::Ok && version.is_none() && matches!(micro, Micro::Write(_)) {
                return Err("an ok write without its version".into());
            }
            Ok(Event::Op {
                kind,
                process: u64_of("process").ok_or("no client \"process\"")?,
                node: node()?,
                incarnation: u64_of("incarnation")
                    .and_then(|i| u32::try_from(i).ok())
                    .ok_or("no \"incarnation\"")?,
                micro,
                version,
                time_ns,
            })
        }
        (p, f) => Err(format!("an unknown record (process {p:?}, f {f:?})")),
    }
}

fn entry(e: &Value) -> Result<DumpLine, String> {
    let a = e
        .as_array()
        .filter(|a| a.len() == 3)
        .ok_or("an entry that is not [key, version, value]")?;
    let key = decode(a[0].as_str().ok_or("an entry without a key")?)?;
    let version = a[1]
        .as_str()
        .and_then(parse_version)
        .ok_or("an entry without a version")?;
    let value = match &a[2] {
        Value::Null => None,
        Value::String(s) => Some(decode(s)?),
        _ => return Err("an entry value that is not a string or null".into()),
    };
    Ok(DumpLine {
        key: String::from_utf8(key).map_err(|_| "a key that is not UTF-8")?,
        version,
        value,
    })
}

/// What a history says of a run.
#[derive(Debug, Default)]
pub(crate) struct Verdict {
    /// Writes acknowledged.
    pub(crate) acked: usize,
    /// Writes whose outcome is unknown (in flight at a kill).
    pub(crate) unsure: usize,
    /// Reads checked.
    pub(crate) reads: usize,
    /// Every violation found, first the recoveries, then the final state.
    pub(crate) violations: Vec<Violation>,
    /// Whether the history holds a final state to judge.
    pub(crate) complete: bool,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.violations.first(), self.complete) {
            (Some(v), _) => write!(
                f,
                "{v} ({} violation(s) in all; {} acknowledged writes, {} unsure)",
                self.violations.len(),
                self.acked,
                self.unsure
            ),
            (None, false) => write!(
                f,
                "no final state: the run stopped before its check ({} acknowledged writes so far)",
                self.acked
            ),
            (None, true) => write!(
                f,
                "{} acknowledged writes hold ({} unsure); {} reads consistent",
                self.acked, self.unsure, self.reads
            ),
        }
    }
}

impl Verdict {
    /// Whether the run passes: a final state, and nothing wrong.
    pub(crate) fn passed(&self) -> bool {
        self.complete && self.violations.is_empty()
    }
}

/// Judges a history: each node's reads (its own writes, never going back,
/// no value nobody wrote), each restarted node's recovered state against
/// what it acknowledged before it was killed, then the final states
/// against each other and against every acknowledged write.
pub(crate) fn check(events: &[Event]) -> Verdict {
    let mut history = History::default();
    let mut finals: BTreeMap<usize, Vec<DumpLine>> = BTreeMap::new();
    let mut reads = Reads::default();
    let mut v = Verdict::default();
    for e in events {
        match e {
            Event::Op {
                kind,
                node,
                micro: Micro::Write(op),
                version,
                ..
            } => match (kind, version) {
                (Kind::Invoke, _) => reads.invoked(op.value.as_deref()),
                (Kind::Ok, Some(version)) => {
                    reads.wrote(*node, &op.key, *version, op.value.is_none());
                    history.acked.push(Ack {
                        node: *node,
                        op: op.clone(),
                        version: *version,
                    });
                }
                (Kind::Info, _) => history.unsure.push((*node, op.clone())),
                _ => {}
            },
            Event::Op {
                kind: Kind::Ok,
                node,
                micro: Micro::Read { key, value },
                version,
                ..
            } => reads.read(*node, key, value.as_deref(), *version),
            Event::State {
                what: StateKind::Recovered,
                node,
                entries,
                ..
            } => {
                // Only what was acknowledged before this point counts.
                v.violations
                    .extend(check_recovered(*node, &history.acked, entries));
            }
            Event::State {
                what: StateKind::Final,
                node,
                entries,
                ..
            } => {
                finals.insert(*node, entries.clone());
            }
            _ => {}
        }
    }
    v.acked = history.acked.len();
    v.unsure = history.unsure.len();
    v.reads = reads.count;
    v.violations.extend(reads.finish());
    if let Some(first) = finals.values().next() {
        v.complete = true;
        let dumps: Vec<Vec<DumpLine>> = finals.values().cloned().collect();
        v.violations.extend(check_dumps(&dumps));
        v.violations.extend(check_final(&history, first));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use multinode_wire::NodeId;

    fn ts(ms: u64, node: u64) -> Timestamp {
        Timestamp {
            physical_ms: ms,
            logical: 0,
            node: NodeId(node),
        }
    }

    /// A run written by hand: node 0 writes a=1 and deletes b, node 1
    /// writes b=2 before node 0's delete, node 1 is killed with c=3 in
    /// flight, recovers b=2 and reads a=1; both end holding the same state.
    const GOOD: &str = r#"
{"index":0,"type":"invoke","f":"txn","value":[["w","a","1"]],"process":0,"time":10,"node":0,"incarnation":0}
{"index":1,"type":"ok","f":"txn","value":[["w","a","1"]],"process":0,"time":20,"node":0,"incarnation":0,"version":"1000.0@0"}
{"index":2,"type":"invoke","f":"txn","value":[["w","b","2"]],"process":1,"time":30,"node":1,"incarnation":0}
{"index":3,"type":"ok","f":"txn","value":[["w","b","2"]],"process":1,"time":40,"node":1,"incarnation":0,"version":"1001.0@1"}
{"index":4,"type":"invoke","f":"txn","value":[["w","c","3"]],"process":9,"time":50,"node":1,"incarnation":0}
{"index":5,"type":"info","f":"txn","value":[["w","c","3"]],"process":9,"time":60,"node":1,"incarnation":0}
{"index":6,"type":"info","process":"nemesis","f":"kill","value":[1],"time":60}
{"index":7,"type":"info","process":"nemesis","f":"restart","value":[1],"time":70}
{"index":8,"type":"info","process":"conductor","f":"recovered","node":1,"value":[["b","1001.0@1","2"]],"time":80}
{"index":9,"type":"invoke","f":"txn","value":[["w","b",null]],"process":0,"time":90,"node":0,"incarnation":0}
{"index":10,"type":"ok","f":"txn","value":[["w","b",null]],"process":0,"time":95,"node":0,"incarnation":0,"version":"1002.0@0"}
{"index":11,"type":"invoke","f":"txn","value":[["r","a",null]],"process":8,"time":96,"node":1,"incarnation":1}
{"index":12,"type":"ok","f":"txn","value":[["r","a","1"]],"process":8,"time":97,"node":1,"incarnation":1,"version":"1000.0@0"}
{"index":13,"type":"info","process":"conductor","f":"phase","value":"converge","time":100}
{"index":14,"type":"info","process":"conductor","f":"final","node":0,"value":[["a","1000.0@0","1"],["b","1002.0@0",null]],"time":110}
{"index":15,"type":"info","process":"conductor","f":"final","node":1,"value":[["a","1000.0@0","1"],["b","1002.0@0",null]],"time":111}
"#;

    #[test]
    fn a_hand_written_history_reads_and_passes() {
        let events = parse(GOOD).unwrap();
        assert_eq!(events.len(), 16);
        assert_eq!(
            events[1],
            Event::Op {
                kind: Kind::Ok,
                process: 0,
                node: 0,
                incarnation: 0,
                micro: Micro::Write(Op {
                    key: "a".into(),
                    value: Some("1".into())
                }),
                version: Some(ts(1000, 0)),
                time_ns: 20
            }
        );
        let v = check(&events);
        assert!(v.passed(), "{v}");
        assert_eq!((v.acked, v.unsure, v.reads), (3, 1, 1));
    }

    #[test]
    fn every_record_writes_back_as_it_reads() {
        let events = parse(GOOD).unwrap();
        let text: String = events
            .iter()
            .enumerate()
            .map(|(i, e)| e.to_json(i as u64).to_string() + "\n")
            .collect();
        assert_eq!(parse(&text).unwrap(), events);
        for (line, e) in GOOD.trim().lines().zip(&events) {
            let want: Value = serde_json::from_str(line).unwrap();
            let index = want["index"].as_u64().unwrap();
            assert_eq!(e.to_json(index), want, "{line}");
        }
    }

    #[test]
    fn a_history_that_loses_an_acknowledged_write_is_flagged() {
        // The final states no longer hold a=1.
        let lost = GOOD.replace(r#"["a","1000.0@0","1"],"#, "");
        let v = check(&parse(&lost).unwrap());
        assert!(!v.passed());
        assert!(
            v.to_string()
                .starts_with("lost write: node 0 acknowledged \"a\""),
            "{v}"
        );
        // A restarted node that forgot its acknowledged write.
        let forgot = GOOD.replace(r#"[["b","1001.0@1","2"]]"#, "[]");
        let v = check(&parse(&forgot).unwrap());
        assert!(v.to_string().starts_with("node 1 restarted without"), "{v}");
        // A value nobody wrote.
        let phantom = GOOD.replace(r#"["a","1000.0@0","1"]"#, r#"["a","1000.0@0","9"]"#);
        let v = check(&parse(&phantom).unwrap());
        assert!(!v.passed(), "{v}");
        // A read of a value nobody wrote.
        let phantom_read = GOOD.replace(r#"[["r","a","1"]]"#, r#"[["r","a","7"]]"#);
        let v = check(&parse(&phantom_read).unwrap());
        assert!(v.to_string().starts_with("phantom read: node 1"), "{v}");
        // Two nodes that disagree.
        let split = GOOD.replace(
            r#""node":1,"value":[["a","1000.0@0","1"],"#,
            r#""node":1,"value":[["a","1003.0@1","1"],"#,
        );
        let v = check(&parse(&split).unwrap());
        assert!(v.to_string().contains("differs from node 0's"), "{v}");
    }

    #[test]
    fn a_history_without_a_final_state_does_not_pass() {
        let cut: String = GOOD.lines().take(8).collect::<Vec<_>>().join("\n");
        let v = check(&parse(&cut).unwrap());
        assert!(!v.passed());
        assert!(v.to_string().starts_with("no final state"), "{v}");
    }

    #[test]
    fn bad_lines_name_their_line_and_what_is_wrong() {
        for (text, why) in [
            ("{", "line 1"),
            (
                r#"{"type":"ok","f":"txn","time":1}"#,
                "not one [\"w\"|\"r\"",
            ),
            (
                r#"{"type":"ok","f":"txn","value":[["w","a","1"]],"process":0,"node":0,"incarnation":0,"time":1}"#,
                "without its version",
            ),
            (r#"{"process":"x","f":"y","time":1}"#, "unknown record"),
            (
                r#"{"process":"conductor","f":"final","time":1,"node":0,"value":[["a"]]}"#,
                "[key, version, value]",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(why), "{text}: {e}");
        }
    }
}
