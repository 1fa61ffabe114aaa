//! The conductor's lines: faults a participant (or the driver) asks the
//! barrier controller to make, when the run enables them. One vocabulary
//! with the mesh's fault model and the network lab.

use std::fmt;
use std::str::FromStr;

use crate::{NodeId, WireError};

/// The most node ids one fault line names.
const MAX_IDS: usize = 1024;
/// Parts per million in a probability.
const PPM: u32 = 1_000_000;

/// A fault, as a line to the barrier controller.
///
/// ```text
/// PARTITION 0,1 2,3,4     cut every link between the groups, both ways
/// CUT 1 2                 cut 1 → 2, one way
/// HEAL                    restore every cut
/// DROP 0.2 [FROM TO]      drop packets at random, on every link or one
/// BANDWIDTH 3 1000000     limit what node 3 sends to 1,000,000 bit/s (`off` removes)
/// FLAP 3 [MS]             node 3's link down for MS milliseconds (default 1000), then up
/// PAUSE 3 | RESUME 3      SIGSTOP / SIGCONT node 3's process
/// KILL 3 | RESTART 3      SIGKILL node 3's process / start it again
/// COUNTERS                change nothing, report the counters
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// `PARTITION <ids> <ids>...`: groups of comma-separated node ids.
    Partition(Vec<Vec<NodeId>>),
    /// `CUT <from> <to>`.
    Cut {
        /// The sender whose packets are dropped.
        from: NodeId,
        /// The receiver that drops them.
        to: NodeId,
    },
    /// `HEAL`.
    Heal,
    /// `DROP <p> [<from> <to>]`.
    Drop {
        /// The probability, in parts per million.
        ppm: u32,
        /// One link, or every link.
        link: Option<(NodeId, NodeId)>,
    },
    /// `BANDWIDTH <node> <bits-per-second>|off`.
    Bandwidth {
        /// The sender limited.
        node: NodeId,
        /// The rate, or `None` to remove the limit.
        bits_per_sec: Option<u64>,
    },
    /// `FLAP <node> [<ms>]`.
    Flap {
        /// The node whose link flaps.
        node: NodeId,
        /// How long its link stays down.
        down_ms: u64,
    },
    /// `PAUSE <node>`.
    Pause(NodeId),
    /// `RESUME <node>`.
    Resume(NodeId),
    /// `KILL <node>`.
    Kill(NodeId),
    /// `RESTART <node>`.
    Restart(NodeId),
    /// `COUNTERS`.
    Counters,
}

impl Fault {
    /// The verbs a fault line starts with.
    pub const VERBS: [&'static str; 11] = [
        "PARTITION",
        "CUT",
        "HEAL",
        "DROP",
        "BANDWIDTH",
        "FLAP",
        "PAUSE",
        "RESUME",
        "KILL",
        "RESTART",
        "COUNTERS",
    ];

    /// The line's first word.
    pub fn verb(&self) -> &'static str {
        match self {
            Fault::Partition(_) => "PARTITION",
            Fault::Cut { .. } => "CUT",
            Fault::Heal => "HEAL",
            Fault::Drop { .. } => "DROP",
            Fault::Bandwidth { .. } => "BANDWIDTH",
            Fault::Flap { .. } => "FLAP",
            Fault::Pause(_) => "PAUSE",
            Fault::Resume(_) => "RESUME",
            Fault::Kill(_) => "KILL",
            Fault::Restart(_) => "RESTART",
            Fault::Counters => "COUNTERS",
        }
    }

    /// A drop probability as a fraction.
    pub fn probability(ppm: u32) -> f64 {
        f64::from(ppm) / f64::from(PPM)
    }
}

fn bad(why: impl Into<String>) -> WireError {
    WireError::malformed(why)
}

fn id(s: &str) -> Result<NodeId, WireError> {
    s.parse().map_err(|_| {
        bad(format!(
            "{:?} is not a node id",
            s.chars().take(24).collect::<String>()
        ))
    })
}

fn ids(w: &[&str], verb: &str, n: usize) -> Result<Vec<NodeId>, WireError> {
    if w.len() != n {
        return Err(bad(format!(
            "{verb} takes {n} node id(s), got {} words",
            w.len()
        )));
    }
    w.iter().map(|s| id(s)).collect()
}

impl FromStr for Fault {
    type Err = WireError;

    /// Parses one line (words separated by single spaces; the line codec
    /// has already bounded its length).
    fn from_str(line: &str) -> Result<Self, WireError> {
        let w: Vec<&str> = line.split(' ').collect();
        let args = &w[1..];
        match w[0] {
            "PARTITION" => {
                if args.len() < 2 {
                    return Err(bad("PARTITION takes two or more groups of node ids"));
                }
                let mut total = 0;
                let mut groups = Vec::with_capacity(args.len());
                for g in args {
                    let members: Vec<NodeId> = g.split(',').map(id).collect::<Result<_, _>>()?;
                    total += members.len();
                    if total > MAX_IDS {
                        return Err(bad(format!("PARTITION names more than {MAX_IDS} node ids")));
                    }
                    groups.push(members);
                }
                Ok(Fault::Partition(groups))
            }
            "CUT" => {
                let v = ids(args, "CUT", 2)?;
                Ok(Fault::Cut {
                    from: v[0],
                    to: v[1],
                })
            }
            "HEAL" => ids(args, "HEAL", 0).map(|_| Fault::Heal),
            "COUNTERS" => ids(args, "COUNTERS", 0).map(|_| Fault::Counters),
            "DROP" => {
                let (p, link) = match args {
                    [p] => (p, None),
                    [p, from, to] => (p, Some((id(from)?, id(to)?))),
                    _ => return Err(bad("DROP takes a probability and optionally FROM TO")),
                };
                let ppm = match p.parse::<f64>() {
                    Ok(v) if (0.0..=1.0).contains(&v) => (v * f64::from(PPM)).round() as u32,
                    _ => return Err(bad(format!("{p:?} is not a probability in [0, 1]"))),
                };
                Ok(Fault::Drop { ppm, link })
            }
            "BANDWIDTH" => match args {
                [node, rate] => {
                    let bits_per_sec = match *rate {
                        "off" => None,
                        r => match r.parse::<u64>() {
                            Ok(v) if v > 0 => Some(v),
                            _ => {
                                return Err(bad(format!(
                                    "{r:?} is not a rate in bit/s or \"off\""
                                )));
                            }
                        },
                    };
                    Ok(Fault::Bandwidth {
                        node: id(node)?,
                        bits_per_sec,
                    })
                }
                _ => Err(bad(
                    "BANDWIDTH takes a node id and a rate in bit/s (or \"off\")",
                )),
            },
            "FLAP" => match args {
                [node] => Ok(Fault::Flap {
                    node: id(node)?,
                    down_ms: 1000,
                }),
                [node, ms] => match ms.parse::<u64>() {
                    Ok(v) if (1..=600_000).contains(&v) => Ok(Fault::Flap {
                        node: id(node)?,
                        down_ms: v,
                    }),
                    _ => Err(bad(format!(
                        "{ms:?} is not a number of milliseconds in [1, 600000]"
                    ))),
                },
                _ => Err(bad("FLAP takes a node id and optionally milliseconds")),
            },
            "PAUSE" => Ok(Fault::Pause(ids(args, "PAUSE", 1)?[0])),
            "RESUME" => Ok(Fault::Resume(ids(args, "RESUME", 1)?[0])),
            "KILL" => Ok(Fault::Kill(ids(args, "KILL", 1)?[0])),
            "RESTART" => Ok(Fault::Restart(ids(args, "RESTART", 1)?[0])),
            other => Err(bad(format!(
                "unknown fault {:?}",
                other.chars().take(32).collect::<String>()
            ))),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.verb())?;
        match self {
            Fault::Partition(groups) => {
                for g in groups {
                    f.write_str(" ")?;
                    for (i, n) in g.iter().enumerate() {
                        if i > 0 {
                            f.write_str(",")?;
                        }
                        write!(f, "{n}")?;
                    }
                }
                Ok(())
            }
            Fault::Cut { from, to } => write!(f, " {from} {to}"),
            Fault::Drop { ppm, link } => {
                write!(f, " {}", Fault::probability(*ppm))?;
                match link {
                    Some((a, b)) => write!(f, " {a} {b}"),
                    None => Ok(()),
                }
            }
            Fault::Bandwidth { node, bits_per_sec } => match bits_per_sec {
                Some(r) => write!(f, " {node} {r}"),
                None => write!(f, " {node} off"),
            },
            Fault::Flap { node, down_ms } => write!(f, " {node} {down_ms}"),
            Fault::Pause(n) | Fault::Resume(n) | Fault::Kill(n) | Fault::Restart(n) => {
                write!(f, " {n}")
            }
            Fault::Heal | Fault::Counters => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fault_reads_back_as_written() {
        let n = NodeId;
        for (line, fault) in [
            (
                "PARTITION 0,1 2,3,4",
                Fault::Partition(vec![vec![n(0), n(1)], vec![n(2), n(3), n(4)]]),
            ),
            (
                "CUT 1 2",
                Fault::Cut {
                    from: n(1),
                    to: n(2),
                },
            ),
            ("HEAL", Fault::Heal),
            (
                "DROP 0.2",
                Fault::Drop {
                    ppm: 200_000,
                    link: None,
                },
            ),
            (
                "DROP 1 3 4",
                Fault::Drop {
                    ppm: 1_000_000,
                    link: Some((n(3), n(4))),
                },
            ),
            (
                "BANDWIDTH 3 1000000",
                Fault::Bandwidth {
                    node: n(3),
                    bits_per_sec: Some(1_000_000),
                },
            ),
            (
                "BANDWIDTH 3 off",
                Fault::Bandwidth {
                    node: n(3),
                    bits_per_sec: None,
                },
            ),
            (
                "FLAP 2 250",
                Fault::Flap {
                    node: n(2),
                    down_ms: 250,
                },
            ),
            ("PAUSE 3", Fault::Pause(n(3))),
            ("RESUME 3", Fault::Resume(n(3))),
            ("KILL 3", Fault::Kill(n(3))),
            ("RESTART 3", Fault::Restart(n(3))),
            ("COUNTERS", Fault::Counters),
        ] {
            assert_eq!(line.parse::<Fault>().unwrap(), fault, "{line}");
            assert_eq!(fault.to_string(), line);
        }
        assert_eq!(
            "FLAP 2".parse::<Fault>().unwrap().to_string(),
            "FLAP 2 1000"
        );
    }

    #[test]
    fn bad_fault_lines_are_typed_errors_that_say_why() {
        for (line, why) in [
            ("PARTITION 0,1", "two or more groups"),
            ("PARTITION 0,x 1", "\"x\" is not a node id"),
            ("CUT 1", "2 node id(s), got 1"),
            ("HEAL now", "0 node id(s)"),
            ("DROP 1.5", "not a probability"),
            ("DROP NaN", "not a probability"),
            ("DROP 0.1 2", "optionally FROM TO"),
            ("BANDWIDTH 1 0", "not a rate"),
            ("FLAP 1 0", "milliseconds"),
            ("PAUSE", "1 node id(s)"),
            ("SHRUG", "unknown fault"),
        ] {
            let e = line.parse::<Fault>().unwrap_err().to_string();
            assert!(e.contains(why), "{line}: {e}");
        }
        let many = format!("PARTITION {} 1", vec!["0"; 1100].join(","));
        assert!(
            many.parse::<Fault>()
                .unwrap_err()
                .to_string()
                .contains("more than 1024")
        );
    }
}
