//! The kernel faults a lab wants, and the nftables script that makes them
//! on one host: sans-IO, so the scripts are unit-tested without a kernel.
//!
//! Every rule sits on the **receiver's input** hook: a packet dropped there
//! is lost on the wire as far as both ends can tell (dropped on the sender's
//! output instead, `send` would fail with EPERM). Only packets from other lab
//! hosts are touched: the switch's address (the lab owner, the conductor) is
//! never cut or dropped. Each rule counts into a named counter, which
//! outlives rule changes, so what a fault did is still readable after
//! `heal`.
//!
//! A cut `a → b` drops every packet from `a` at `b`, as Jepsen's one-way
//! partitions do: exactly one direction of packets. Over TCP the other
//! direction then starves too, since `a`'s acknowledgements are among what
//! is dropped. (A cut that let `a`'s answers to `b`'s connections through
//! was tried: a protocol that answers on the asker's connection, as LWW's
//! anti-entropy does, then still moves `a`'s data to `b`.)

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use multinode_wire::NodeId;

use crate::Subnet;

/// The table every lab host gets, in the `inet` family.
pub(crate) const TABLE: &str = "multinode";
/// The counter of every packet a host received from another lab host.
pub(crate) const RECEIVED: &str = "received";
/// The prefix of the counter of packets from host `i` dropped by a cut.
pub(crate) const CUT: &str = "cut_";
/// The prefix of the counter of packets from host `i` dropped at random.
pub(crate) const DROPPED: &str = "dropped_";

/// Resolution of a drop probability: parts per million.
const PPM: f64 = 1_000_000.0;

/// The network faults in force, by directed link between hosts.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Rules {
    cut: BTreeSet<(u32, u32)>,
    /// Per-link drop probability, as parts per million (0 is never stored).
    drop: BTreeMap<(u32, u32), u32>,
}

impl Rules {
    /// Cuts `from → to`.
    pub(crate) fn cut(&mut self, from: u32, to: u32) {
        if from != to {
            self.cut.insert((from, to));
        }
    }

    /// Restores every cut link; random drops stay.
    pub(crate) fn heal(&mut self) {
        self.cut.clear();
    }

    /// Drops packets on `from → to` with probability `p` (0 removes it).
    pub(crate) fn drop(&mut self, from: u32, to: u32, p: f64) {
        let ppm = (p.clamp(0.0, 1.0) * PPM).round() as u32;
        if from == to {
            return;
        }
        if ppm == 0 {
            self.drop.remove(&(from, to));
        } else {
            self.drop.insert((from, to), ppm);
        }
    }

    /// Whether `from → to` is cut.
    pub(crate) fn is_cut(&self, from: u32, to: u32) -> bool {
        self.cut.contains(&(from, to))
    }

    /// The nft script that installs host `to`'s rules in one transaction:
    /// the table, chain and counters are added if missing (counters keep
    /// their values), the chain is flushed and refilled. `hosts` is the
    /// lab's size.
    pub(crate) fn script(&self, subnet: &Subnet, hosts: u32, to: u32) -> String {
        let addr = |i: u32| subnet.host(NodeId(u64::from(i))).expect("host in subnet");
        let mut s = String::new();
        let t = format!("inet {TABLE}");
        let _ = writeln!(s, "add table {t}");
        let _ = writeln!(
            s,
            "add chain {t} input {{ type filter hook input priority -10 ; policy accept ; }}"
        );
        let _ = writeln!(s, "add counter {t} {RECEIVED}");
        let cut: Vec<u32> = (0..hosts).filter(|&f| self.is_cut(f, to)).collect();
        let drop: Vec<(u32, u32)> = (0..hosts)
            .filter(|&f| !self.is_cut(f, to))
            .filter_map(|f| self.drop.get(&(f, to)).map(|&p| (f, p)))
            .collect();
        for &f in &cut {
            let _ = writeln!(s, "add counter {t} {CUT}{f}");
        }
        for &(f, _) in &drop {
            let _ = writeln!(s, "add counter {t} {DROPPED}{f}");
        }
        let _ = writeln!(s, "flush chain {t} input");
        if hosts > 0 {
            let _ = writeln!(
                s,
                "add rule {t} input ip saddr {}-{} counter name {RECEIVED}",
                addr(0),
                addr(hosts - 1)
            );
        }
        for &f in &cut {
            let _ = writeln!(
                s,
                "add rule {t} input ip saddr {} counter name {CUT}{f} drop",
                addr(f)
            );
        }
        for &(f, ppm) in &drop {
            // numgen draws 0..PPM: a certain drop needs no draw (and
            // `< 1000000` would be out of its range).
            let draw = if ppm >= PPM as u32 {
                String::new()
            } else {
                format!("numgen random mod {} < {ppm} ", PPM as u32)
            };
            let _ = writeln!(
                s,
                "add rule {t} input ip saddr {} {draw}counter name {DROPPED}{f} drop",
                addr(f),
            );
        }
        s
    }

    /// Hosts whose rules differ between `self` and `other`.
    pub(crate) fn changed(&self, other: &Rules, hosts: u32) -> Vec<u32> {
        (0..hosts)
            .filter(|&to| {
                (0..hosts).any(|f| {
                    self.is_cut(f, to) != other.is_cut(f, to)
                        || self.drop.get(&(f, to)) != other.drop.get(&(f, to))
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_drops_on_the_receiver_and_counts_by_sender() {
        let mut r = Rules::default();
        r.cut(1, 2);
        let s = r.script(&Subnet::slot(0), 3, 2);
        assert!(s.contains("add counter inet multinode cut_1\n"), "{s}");
        assert!(
            s.contains("add rule inet multinode input ip saddr 198.18.0.3 counter name cut_1 drop"),
            "{s}"
        );
        // The sender's own script has no rule: the cut is one way.
        let s1 = r.script(&Subnet::slot(0), 3, 1);
        assert!(!s1.contains("drop"), "{s1}");
        // Only lab hosts are counted: the switch (.1) is outside the range.
        assert!(s.contains("ip saddr 198.18.0.2-198.18.0.4 counter name received"));
    }

    #[test]
    fn a_drop_is_a_numgen_rule_in_parts_per_million_and_a_cut_overrides_it() {
        let mut r = Rules::default();
        r.drop(0, 1, 0.3);
        let s = r.script(&Subnet::slot(0), 2, 1);
        assert!(
            s.contains(
                "ip saddr 198.18.0.2 numgen random mod 1000000 < 300000 counter name dropped_0 drop"
            ),
            "{s}"
        );
        r.cut(0, 1);
        let s = r.script(&Subnet::slot(0), 2, 1);
        assert!(!s.contains("numgen"), "{s}");
        r.heal();
        assert!(r.script(&Subnet::slot(0), 2, 1).contains("numgen"));
        r.drop(0, 1, 0.0);
        assert!(!r.script(&Subnet::slot(0), 2, 1).contains("numgen"));
        // Certain: every packet, no draw.
        r.drop(0, 1, 1.0);
        let s = r.script(&Subnet::slot(0), 2, 1);
        assert!(
            s.contains(
                "add rule inet multinode input ip saddr 198.18.0.2 counter name dropped_0 drop"
            ),
            "{s}"
        );
    }

    #[test]
    fn changed_names_only_the_receivers_whose_rules_moved() {
        let before = Rules::default();
        let mut after = before.clone();
        after.cut(0, 2);
        after.drop(3, 1, 0.5);
        assert_eq!(after.changed(&before, 4), vec![1, 2]);
        assert!(after.changed(&after.clone(), 4).is_empty());
    }

    #[test]
    fn a_host_never_cuts_itself() {
        let mut r = Rules::default();
        r.cut(1, 1);
        r.drop(1, 1, 1.0);
        assert_eq!(r, Rules::default());
    }
}
