//! test-cluster on a network lab (`--net`): the kernel makes the partition
//! and the drops, processes are paused with signals, a link flaps, and each
//! phase reports what the kernel counted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use multinode_net::{Counters, Lab};
use multinode_wire::NodeId;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::Conductor;

/// How long `--flap` keeps a link down.
const FLAP_DOWN: Duration = Duration::from_secs(1);

fn id(i: usize) -> NodeId {
    NodeId(i as u64)
}

impl Conductor {
    fn the_lab(&self) -> Result<Arc<Lab>> {
        self.lab.clone().context("no network lab in this run")
    }

    /// The lab's counters now (zero without a lab).
    pub(super) async fn kernel(&self) -> Result<Counters> {
        let Some(lab) = self.lab.clone() else {
            return Ok(Counters::default());
        };
        Ok(tokio::task::spawn_blocking(move || lab.counters()).await??)
    }

    /// The run's drop and partition, as kernel rules on every host.
    pub(super) async fn lab_faults(&mut self) -> Result<()> {
        let lab = self.the_lab()?;
        let drop = self.args.drop;
        let side = self.plan.side.clone();
        let n = self.nodes.len();
        tokio::task::spawn_blocking(move || {
            if drop > 0.0 {
                lab.drop_all(drop)?;
            }
            if let Some(side) = side {
                let (a, b): (Vec<usize>, Vec<usize>) = (0..n).partition(|i| side.contains(i));
                lab.partition(&[
                    a.into_iter().map(id).collect(),
                    b.into_iter().map(id).collect(),
                ])?;
            }
            Ok::<_, multinode_net::NetError>(())
        })
        .await??;
        Ok(())
    }

    /// Heals the kernel's partition; returns the packets it dropped.
    pub(super) async fn lab_heal(&mut self) -> Result<u64> {
        let lab = self.the_lab()?;
        let c = tokio::task::spawn_blocking(move || {
            lab.heal()?;
            lab.counters()
        })
        .await??;
        Ok(c.cut)
    }

    /// Stops `nodes` with SIGSTOP (through the lab when there is one).
    pub(super) fn pause(&mut self, nodes: &[usize]) -> Result<()> {
        self.stop_or_continue(nodes, true)
    }

    /// Continues `nodes` with SIGCONT.
    pub(super) fn resume(&mut self, nodes: &[usize]) -> Result<()> {
        self.stop_or_continue(nodes, false)
    }

    fn stop_or_continue(&mut self, nodes: &[usize], stop: bool) -> Result<()> {
        if !nodes.is_empty() {
            self.nemesis(
                if stop { "pause" } else { "resume" },
                serde_json::json!(nodes),
            );
        }
        for &i in nodes {
            match (&self.lab, stop) {
                (Some(lab), true) => lab.pause(id(i))?,
                (Some(lab), false) => lab.resume(id(i))?,
                (None, true) => signal(self.pid(i)?, Signal::SIGSTOP)?,
                (None, false) => signal(self.pid(i)?, Signal::SIGCONT)?,
            }
        }
        Ok(())
    }

    fn pid(&self, i: usize) -> Result<u32> {
        self.nodes
            .iter()
            .find(|n| n.index == i)
            .and_then(|n| n.child.id())
            .with_context(|| format!("node {i} is not running"))
    }

    /// Takes node `i`'s link down for [`FLAP_DOWN`], then up, off the
    /// runtime; resolves when the link is back up.
    pub(super) fn flap(&self, i: usize) -> Result<tokio::task::JoinHandle<Result<Duration>>> {
        let lab = self.the_lab()?;
        self.nemesis(
            "flap",
            serde_json::json!({"node": i, "down_ms": FLAP_DOWN.as_millis() as u64}),
        );
        Ok(tokio::task::spawn_blocking(move || {
            let began = Instant::now();
            lab.flap(id(i), FLAP_DOWN)?;
            Ok(began.elapsed())
        }))
    }
}

/// Signals a node process, ours, by the pid we started it with (the
/// conductor still holds its unreaped child, so the pid is not reused).
fn signal(pid: u32, sig: Signal) -> Result<()> {
    let pid = i32::try_from(pid).context("a pid out of range")?;
    nix::sys::signal::kill(Pid::from_raw(pid), sig)
        .with_context(|| format!("cannot send {sig} to pid {pid}"))
}
