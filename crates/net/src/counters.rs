//! What the lab's faults did: packets the kernel counted at each rule, and
//! the process and link faults the lab made.

use std::collections::BTreeMap;
use std::fmt;

use multinode_wire::NodeId;

use crate::NetError;
use crate::rules::{CUT, DROPPED, RECEIVED, TABLE};

/// Packets dropped on one directed link, as the receiver's kernel counted
/// them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkDrops {
    /// Dropped by a cut or a partition.
    pub cut: u64,
    /// Dropped at random by `drop`.
    pub dropped: u64,
}

/// Everything a lab's faults did so far; [`Counters::since`] gives what
/// one phase did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets hosts received from other lab hosts, counted before any
    /// rule (on hosts a network fault ever touched).
    pub received: u64,
    /// Packets dropped by cuts and partitions.
    pub cut: u64,
    /// Packets dropped at random.
    pub dropped: u64,
    /// Packets a bandwidth limit dropped (its token bucket's queue was full).
    pub shaped: u64,
    /// The same drops by directed link `(from, to)`.
    pub links: BTreeMap<(NodeId, NodeId), LinkDrops>,
    /// Processes stopped with SIGSTOP.
    pub pauses: u64,
    /// Processes continued with SIGCONT.
    pub resumes: u64,
    /// Processes killed with SIGKILL.
    pub kills: u64,
    /// Processes started on a host that had run one before.
    pub restarts: u64,
    /// Times a host's link went down and came back.
    pub flaps: u64,
}

impl Counters {
    /// What happened after `earlier` (a snapshot of the same lab).
    pub fn since(&self, earlier: &Counters) -> Counters {
        let links = self
            .links
            .iter()
            .map(|(&k, v)| {
                let e = earlier.links.get(&k).copied().unwrap_or_default();
                let d = LinkDrops {
                    cut: v.cut.saturating_sub(e.cut),
                    dropped: v.dropped.saturating_sub(e.dropped),
                };
                (k, d)
            })
            .filter(|(_, d)| *d != LinkDrops::default())
            .collect();
        Counters {
            received: self.received.saturating_sub(earlier.received),
            cut: self.cut.saturating_sub(earlier.cut),
            dropped: self.dropped.saturating_sub(earlier.dropped),
            shaped: self.shaped.saturating_sub(earlier.shaped),
            links,
            pauses: self.pauses.saturating_sub(earlier.pauses),
            resumes: self.resumes.saturating_sub(earlier.resumes),
            kills: self.kills.saturating_sub(earlier.kills),
            restarts: self.restarts.saturating_sub(earlier.restarts),
            flaps: self.flaps.saturating_sub(earlier.flaps),
        }
    }

    /// Adds one host's nft counters (`to` is the receiver).
    pub(crate) fn add_host(&mut self, to: NodeId, named: &[(String, u64)]) {
        for (name, packets) in named {
            if name == RECEIVED {
                self.received += packets;
            } else if let Some(from) = sender(name, CUT) {
                self.cut += packets;
                self.links.entry((from, to)).or_default().cut += packets;
            } else if let Some(from) = sender(name, DROPPED) {
                self.dropped += packets;
                self.links.entry((from, to)).or_default().dropped += packets;
            }
        }
    }
}

fn sender(name: &str, prefix: &str) -> Option<NodeId> {
    name.strip_prefix(prefix)?.parse().ok().map(NodeId)
}

impl fmt::Display for Counters {
    /// `received=… cut=… dropped=… shaped=… pauses=… resumes=… kills=… restarts=… flaps=…`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "received={} cut={} dropped={} shaped={} pauses={} resumes={} kills={} restarts={} flaps={}",
            self.received,
            self.cut,
            self.dropped,
            self.shaped,
            self.pauses,
            self.resumes,
            self.kills,
            self.restarts,
            self.flaps
        )
    }
}

/// The named counters (name, packets) of the lab's table in the output of
/// `nft -j list counters table inet multinode`.
pub(crate) fn parse(json: &str) -> Result<Vec<(String, u64)>, NetError> {
    let bad = |why: &str| NetError::Output {
        tool: "nft",
        why: why.to_owned(),
    };
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| bad(&e.to_string()))?;
    let items = v
        .get("nftables")
        .and_then(|n| n.as_array())
        .ok_or_else(|| bad("no \"nftables\" array"))?;
    let mut out = Vec::new();
    for c in items.iter().filter_map(|i| i.get("counter")) {
        if c.get("table").and_then(|t| t.as_str()) != Some(TABLE) {
            continue;
        }
        let name = c.get("name").and_then(|n| n.as_str());
        let packets = c.get("packets").and_then(|p| p.as_u64());
        match (name, packets) {
            (Some(n), Some(p)) => out.push((n.to_owned(), p)),
            _ => return Err(bad("a counter without a name or a packet count")),
        }
    }
    Ok(out)
}

/// The packets a root `tbf` qdisc dropped, in the output of
/// `tc -s -j qdisc show dev eth0` (0 when there is none).
pub(crate) fn parse_tbf_drops(json: &str) -> Result<u64, NetError> {
    let bad = |why: &str| NetError::Output {
        tool: "tc",
        why: why.to_owned(),
    };
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| bad(&e.to_string()))?;
    let qdiscs = v.as_array().ok_or_else(|| bad("not a list of qdiscs"))?;
    let mut drops = 0;
    for q in qdiscs
        .iter()
        .filter(|q| q.get("kind").and_then(|k| k.as_str()) == Some("tbf"))
    {
        drops += q
            .get("drops")
            .and_then(|d| d.as_u64())
            .ok_or_else(|| bad("a tbf qdisc without a drop count"))?;
    }
    Ok(drops)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Printed by nftables 1.0.6 (`nft -j list counters table inet multinode`).
    const SAMPLE: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"counter": {"family": "inet", "name": "received", "table": "multinode", "handle": 2, "packets": 40, "bytes": 3000}}, {"counter": {"family": "inet", "name": "cut_1", "table": "multinode", "handle": 3, "packets": 7, "bytes": 500}}, {"counter": {"family": "inet", "name": "dropped_4", "table": "multinode", "handle": 4, "packets": 2, "bytes": 100}}]}"#;

    #[test]
    fn counters_are_read_by_name_and_filed_by_link() {
        let named = parse(SAMPLE).unwrap();
        assert_eq!(named.len(), 3);
        let mut c = Counters::default();
        c.add_host(NodeId(2), &named);
        assert_eq!((c.received, c.cut, c.dropped), (40, 7, 2));
        assert_eq!(c.links[&(NodeId(1), NodeId(2))].cut, 7);
        assert_eq!(c.links[&(NodeId(4), NodeId(2))].dropped, 2);
        let earlier = c.clone();
        c.add_host(NodeId(2), &[("cut_1".into(), 3)]);
        let d = c.since(&earlier);
        assert_eq!((d.received, d.cut, d.dropped), (0, 3, 0));
        assert_eq!(d.links.len(), 1, "{d:?}");
    }

    #[test]
    fn tbf_drops_are_read_from_tc_json() {
        // Printed by iproute2 6.1 (`tc -s -j qdisc show dev va`).
        let one = r#"[{"kind":"tbf","handle":"8010:","root":true,"refcnt":3,"options":{"rate":125000,"burst":1600,"lat":49999},"bytes":0,"packets":0,"drops":17,"overlimits":40,"requeues":0,"backlog":0,"qlen":0}]"#;
        assert_eq!(parse_tbf_drops(one).unwrap(), 17);
        assert_eq!(
            parse_tbf_drops(r#"[{"kind":"noqueue","drops":3}]"#).unwrap(),
            0
        );
        assert!(parse_tbf_drops("{}").is_err());
        assert!(parse_tbf_drops(r#"[{"kind":"tbf"}]"#).is_err());
    }

    #[test]
    fn bad_output_is_a_typed_error() {
        for bad in [
            "",
            "{}",
            "[1]",
            r#"{"nftables":[{"counter":{"table":"multinode"}}]}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
