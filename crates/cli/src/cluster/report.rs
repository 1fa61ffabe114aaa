//! The run's summary: a table of phases on stdout, and the same as JSON.

use std::time::Duration;

use super::Conductor;

/// One row of the summary.
#[derive(Debug, Clone)]
pub(super) struct Phase {
    pub(super) name: &'static str,
    pub(super) took: Duration,
    pub(super) converge: Option<Duration>,
    pub(super) frames: u64,
    pub(super) bytes: u64,
    /// Writes acknowledged during the phase.
    pub(super) writes: usize,
    pub(super) result: String,
    /// What the kernel counted in the phase, on a network lab.
    pub(super) kernel: Option<multinode_net::Counters>,
}

impl Conductor {
    pub(super) fn print_summary(&self, failure: &Option<String>, alive: u32) {
        println!();
        let lab = self.lab.is_some();
        let mut head = format!(
            "{:<9} {:>9} {:>9} {:>8} {:>11}",
            "phase", "duration", "converge", "frames", "bytes"
        );
        if lab {
            head.push_str(&format!(" {:>9} {:>8} {:>8}", "packets", "cut", "dropped"));
        }
        println!("{head}  result");
        for p in &self.phases {
            let mut row = format!(
                "{:<9} {:>7.2} s {:>9} {:>8} {:>11}",
                p.name,
                p.took.as_secs_f64(),
                p.converge
                    .map_or_else(|| "-".into(), |d| format!("{:.2} s", d.as_secs_f64())),
                p.frames,
                p.bytes,
            );
            if lab {
                match &p.kernel {
                    Some(k) => {
                        row.push_str(&format!(" {:>9} {:>8} {:>8}", k.received, k.cut, k.dropped))
                    }
                    None => row.push_str(&format!(" {:>9} {:>8} {:>8}", "-", "-", "-")),
                }
            }
            println!("{row}  {}", p.result);
        }
        if lab {
            println!(
                "(packets, cut, dropped: counted by the kernel's nftables rules on each receiving host)"
            );
        }
        let total = self.t0.elapsed().as_secs_f64();
        match failure {
            None => println!(
                "PASSED in {total:.1} s: {} nodes agree on {} entries; {} acknowledged writes checked; {} processes started, {alive} alive",
                self.args.nodes,
                self.converged_entries,
                self.history.acked.len(),
                self.started
            ),
            Some(_) => println!(
                "stopped after {total:.1} s; {} processes started, {alive} alive",
                self.started
            ),
        }
    }

    pub(super) fn json(&self, failure: &Option<String>, alive: u32, replay: &str) -> String {
        let phases: Vec<serde_json::Value> = self
            .phases
            .iter()
            .map(|p| {
                serde_json::json!({
                    "phase": p.name,
                    "duration_ms": p.took.as_millis() as u64,
                    "converge_ms": p.converge.map(|d| d.as_millis() as u64),
                    "frames_sent": p.frames,
                    "bytes_sent": p.bytes,
                    "writes": p.writes,
                    "result": p.result,
                    "kernel": p.kernel.as_ref().map(|k| {
                        // Per directed link, as "from>to": what the kernel dropped.
                        let links: serde_json::Map<String, serde_json::Value> = k
                            .links
                            .iter()
                            .map(|((from, to), d)| {
                                let v = serde_json::json!({"cut": d.cut, "dropped": d.dropped});
                                (format!("{from}>{to}"), v)
                            })
                            .collect();
                        serde_json::json!({
                            "packets": k.received,
                            "cut": k.cut,
                            "dropped": k.dropped,
                            "shaped": k.shaped,
                            "pauses": k.pauses,
                            "flaps": k.flaps,
                            "links": links,
                        })
                    }),
                })
            })
            .collect();
        let report = serde_json::json!({
            "passed": failure.is_none(),
            "first_failure": failure,
            "seed": self.seed,
            "plan": format!("{:016x}", self.plan.digest()),
            "nodes": self.args.nodes,
            "round_ms": self.args.round_ms(),
            "keys": self.args.keys,
            "kills": self.args.kills,
            "drop": self.args.drop,
            "partition": self.args.partition,
            "partition_side": self.plan.side.as_ref().map(|s| s.iter().copied().collect::<Vec<_>>()),
            "net": self.args.net,
            "pause": self.args.pause,
            "flap": self.args.flap,
            "acknowledged_writes": self.history.acked.len(),
            "unsure_writes": self.history.unsure.len(),
            "entries": self.converged_entries,
            "processes_started": self.started,
            "processes_alive": alive,
            "duration_ms": self.t0.elapsed().as_millis() as u64,
            "phases": phases,
            "replay": replay,
            "run_directory": self.dir.display().to_string(),
        });
        serde_json::to_string_pretty(&report).expect("a JSON value serializes") + "\n"
    }
}
