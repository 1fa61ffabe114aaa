//! One node process as the conductor drives it: its control pipe, one
//! line per command and one reply per command, a window of writes in
//! flight, and a SIGKILL in the middle of them.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use super::recorder::Recorder;
use crate::control::{DumpLine, field, parse_version};
use crate::history::{Event, Kind};
use crate::scenario::{Ack, Op};

/// Writes a node may have in flight on its control pipe.
pub(super) const WINDOW: usize = 8;
/// How long one control reply may take (a barrier may wait for others).
const REPLY_TIMEOUT: Duration = Duration::from_secs(40);

pub(super) struct NodeProc {
    pub(super) index: usize,
    /// Which life of node `index` this process is: 0, then one more per
    /// restart.
    pub(super) incarnation: u32,
    pub(super) child: Child,
    pub(super) stdin: ChildStdin,
    pub(super) stdout: Lines<BufReader<ChildStdout>>,
}

impl NodeProc {
    pub(super) async fn send(&mut self, line: &str) -> Result<()> {
        let mut buf = line.as_bytes().to_vec();
        buf.push(b'\n');
        self.stdin
            .write_all(&buf)
            .await
            .with_context(|| format!("node {}: control pipe closed", self.index))
    }

    pub(super) async fn recv(&mut self) -> Result<String> {
        let next = tokio::time::timeout(REPLY_TIMEOUT, self.stdout.next_line())
            .await
            .map_err(|_| {
                anyhow!(
                    "node {}: no reply within {} s",
                    self.index,
                    REPLY_TIMEOUT.as_secs()
                )
            })?;
        next?.ok_or_else(|| anyhow!("node {}: exited (end of its output)", self.index))
    }

    pub(super) async fn call(&mut self, line: &str) -> Result<String> {
        self.send(line).await?;
        let reply = self.recv().await?;
        if reply.starts_with("ERR") {
            bail!("node {}: {line:?} answered {reply:?}", self.index);
        }
        Ok(reply)
    }

    pub(super) async fn dump(&mut self) -> Result<Vec<DumpLine>> {
        self.send("DUMP").await?;
        let mut out = Vec::new();
        loop {
            let line = self.recv().await?;
            if let Some(n) = line.strip_prefix("END ") {
                if n.parse() != Ok(out.len()) {
                    bail!(
                        "node {}: DUMP ended {line:?} after {} entries",
                        self.index,
                        out.len()
                    );
                }
                return Ok(out);
            }
            out.push(
                DumpLine::parse(&line)
                    .ok_or_else(|| anyhow!("node {}: bad DUMP line {line:?}", self.index))?,
            );
        }
    }

    /// A `STATS` line, skipping replies to commands still in flight when a
    /// phase failed (at most a window of them).
    pub(super) async fn stats_after_failure(&mut self) -> Option<String> {
        self.send("STATS").await.ok()?;
        for _ in 0..=WINDOW {
            let line = self.recv().await.ok()?;
            if line.starts_with("STATS ") {
                return Some(line);
            }
        }
        None
    }

    pub(super) async fn sent(&mut self) -> Result<(u64, u64)> {
        let s = self.call("STATS").await?;
        Ok((
            field(&s, "frames_sent").unwrap_or(0),
            field(&s, "bytes_sent").unwrap_or(0),
        ))
    }

    /// Runs `ops[from..]`, up to [`WINDOW`] in flight, recording each in
    /// the history; with `kill_after`, SIGKILLs the process once that many
    /// are acknowledged and more are in flight. Returns the acknowledged
    /// writes, those in flight at the kill, and where the script stopped.
    pub(super) async fn run_ops(
        &mut self,
        ops: &[Op],
        from: usize,
        until: usize,
        kill_after: Option<usize>,
        rate: u32,
        rec: &Recorder,
    ) -> Result<(Vec<Ack>, Vec<Op>, usize)> {
        let mut history = Vec::new();
        let (node, incarnation) = (self.index, self.incarnation);
        let event = |kind, op: &Op, version| Event::Op {
            kind,
            node,
            incarnation,
            op: op.clone(),
            version,
            time_ns: rec.now(),
        };
        let mut next = from;
        let mut inflight = VecDeque::new();
        let mut acked = 0;
        let mut pace = (rate > 0).then(|| {
            let mut t = tokio::time::interval(Duration::from_secs(1) / rate);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        loop {
            while next < until && inflight.len() < WINDOW {
                if let Some(t) = &mut pace {
                    t.tick().await;
                }
                rec.record(&event(Kind::Invoke, &ops[next], None));
                self.send(&ops[next].command()).await?;
                inflight.push_back(next);
                next += 1;
            }
            let Some(i) = inflight.pop_front() else {
                return Ok((history, Vec::new(), next));
            };
            let reply = self.recv().await?;
            let Some(version) = reply.strip_prefix("OK ").and_then(parse_version) else {
                // Refused, so not applied (the contract's `ERR`); anything
                // else is a broken reply, whose effect is unknown.
                let kind = if reply.starts_with("ERR") {
                    Kind::Fail
                } else {
                    Kind::Info
                };
                rec.record(&event(kind, &ops[i], None));
                bail!(
                    "node {}: {:?} answered {reply:?}",
                    self.index,
                    ops[i].command()
                );
            };
            rec.record(&event(Kind::Ok, &ops[i], Some(version)));
            history.push(Ack {
                node: self.index,
                op: ops[i].clone(),
                version,
            });
            acked += 1;
            if kill_after == Some(acked) {
                while next < until && inflight.len() < WINDOW {
                    rec.record(&event(Kind::Invoke, &ops[next], None));
                    self.send(&ops[next].command()).await?;
                    inflight.push_back(next);
                    next += 1;
                }
                self.child.start_kill()?;
                self.child.wait().await?;
                for &j in &inflight {
                    rec.record(&event(Kind::Info, &ops[j], None));
                }
                rec.record(&Event::Fault {
                    f: "kill".into(),
                    value: serde_json::json!([self.index]),
                    time_ns: rec.now(),
                });
                let lost = inflight.into_iter().map(|i| ops[i].clone()).collect();
                return Ok((history, lost, next));
            }
        }
    }
}
