//! One node process as the conductor drives it: its control pipe, one
//! line per command and one reply per command, a window of writes in
//! flight, and a SIGKILL in the middle of them.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::pipe;

use super::node_child::NodeChild;
use super::recorder::Recorder;
use crate::control::{DumpLine, decode, encode, field, parse_version};
use crate::history::{Event, Kind, LANES, Micro};
use crate::scenario::{Ack, Op};

/// Writes and reads a node may have in flight on its control pipe: one per
/// client lane of the history.
pub(super) const WINDOW: usize = LANES as usize;
/// A `GET` of the key follows every this many writes.
const READ_EVERY: usize = 4;

pub(super) struct NodeProc {
    pub(super) index: usize,
    /// Which life of node `index` this process is: 0, then one more per
    /// restart.
    pub(super) incarnation: u32,
    /// Requests sent so far: the next one's client lane.
    pub(super) sent: u64,
    /// Whether the node answers `DIGEST` (unknown until asked): without
    /// it, agreement is judged by comparing `DUMP`s.
    pub(super) digest: Option<bool>,
    /// How long one control reply may take (a barrier may wait for others).
    pub(super) reply_timeout: Duration,
    pub(super) child: NodeChild,
    pub(super) stdin: pipe::Sender,
    pub(super) stdout: Lines<BufReader<pipe::Receiver>>,
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
        let next = tokio::time::timeout(self.reply_timeout, self.stdout.next_line())
            .await
            .map_err(|_| {
                anyhow!(
                    "node {}: no reply within {} s",
                    self.index,
                    self.reply_timeout.as_secs()
                )
            })?;
        next?.ok_or_else(|| {
            anyhow!(
                "node {}: exited (end of its output; its stderr is node-{}.log in the run directory)",
                self.index,
                self.index
            )
        })
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

    /// Frames and bytes the node sent, from `STATS`; (0, 0) from a node
    /// without it (the contract makes `STATS` optional).
    pub(super) async fn sent(&mut self) -> Result<(u64, u64)> {
        self.send("STATS").await?;
        let s = self.recv().await?;
        if s.starts_with("ERR") {
            return Ok((0, 0));
        }
        if !s.starts_with("STATS") {
            bail!("node {}: STATS answered {s:?}", self.index);
        }
        Ok((
            field(&s, "frames_sent").unwrap_or(0),
            field(&s, "bytes_sent").unwrap_or(0),
        ))
    }

    /// What agreement is judged by: the node's `DIGEST` (fingerprint and
    /// counts), or, from a node without `DIGEST`, a fingerprint of its
    /// `DUMP` taken here.
    pub(super) async fn agreement(&mut self) -> Result<String> {
        if self.digest != Some(false) {
            self.send("DIGEST").await?;
            let d = self.recv().await?;
            if d.starts_with("DIGEST ") {
                self.digest = Some(true);
                // The fingerprint and counts, not the transient resync flag.
                return Ok(d.split(' ').take(4).collect::<Vec<_>>().join(" "));
            }
            if !d.starts_with("ERR") || self.digest == Some(true) {
                bail!("node {}: DIGEST answered {d:?}", self.index);
            }
            self.digest = Some(false);
        }
        let dump = self.dump().await?;
        let text: String = dump.iter().map(|e| format!("{e}\n")).collect();
        let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        Ok(format!("DUMP {hash:016x} entries={}", dump.len()))
    }

    /// Runs `ops[from..]`, up to [`WINDOW`] in flight, with a `GET` of
    /// the key after every [`READ_EVERY`]th write, recording each in the
    /// history; with `kill_after`, SIGKILLs the process once that many
    /// writes are acknowledged and more are in flight. Returns the
    /// acknowledged writes, those in flight at the kill, and where the
    /// script stopped.
    #[allow(
        clippy::too_many_arguments,
        reason = "the phase's script, its span, its kill and its pace"
    )]
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
        let mut next = from;
        let mut inflight: VecDeque<(u64, Pending)> = VecDeque::new();
        let mut acked = 0;
        let mut pace = (rate > 0).then(|| {
            let mut t = tokio::time::interval(Duration::from_secs(1) / rate);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        loop {
            loop {
                let read = next % READ_EVERY == READ_EVERY - 1;
                if next >= until || inflight.len() + 1 + usize::from(read) > WINDOW {
                    break;
                }
                // The writes just before a kill go unpaced, as a burst: what
                // the node wrote last is then its own writes, which a store
                // that loses the tail of its log on restart loses.
                let burst = kill_after.is_some_and(|k| acked + 2 * WINDOW >= k);
                if let (Some(t), false) = (&mut pace, burst) {
                    t.tick().await;
                }
                self.start(Pending::Write(next), &ops[next], rec, &mut inflight)
                    .await?;
                if read {
                    let key = ops[next].key.clone();
                    self.start(Pending::Read(key), &ops[next], rec, &mut inflight)
                        .await?;
                }
                next += 1;
            }
            let Some((process, pending)) = inflight.pop_front() else {
                return Ok((history, Vec::new(), next));
            };
            let reply = self.recv().await?;
            let i = match pending {
                Pending::Read(key) => {
                    self.finish_read(process, &key, &reply, rec)?;
                    continue;
                }
                Pending::Write(i) => i,
            };
            let Some(version) = reply.strip_prefix("OK ").and_then(parse_version) else {
                // Refused, so not applied (the contract's `ERR`); anything
                // else is a broken reply, whose effect is unknown.
                let kind = if reply.starts_with("ERR") {
                    Kind::Fail
                } else {
                    Kind::Info
                };
                let w = Micro::Write(ops[i].clone());
                rec.record(&self.event(kind, process, w, None, rec));
                bail!(
                    "node {}: {:?} answered {reply:?}",
                    self.index,
                    ops[i].command()
                );
            };
            let w = Micro::Write(ops[i].clone());
            rec.record(&self.event(Kind::Ok, process, w, Some(version), rec));
            history.push(Ack {
                node: self.index,
                op: ops[i].clone(),
                version,
            });
            acked += 1;
            if kill_after == Some(acked) {
                while next < until && inflight.len() < WINDOW {
                    self.start(Pending::Write(next), &ops[next], rec, &mut inflight)
                        .await?;
                    next += 1;
                }
                self.child.start_kill()?;
                self.child.wait().await?;
                let mut lost = Vec::new();
                for (process, pending) in inflight {
                    match pending {
                        Pending::Write(j) => {
                            let w = Micro::Write(ops[j].clone());
                            rec.record(&self.event(Kind::Info, process, w, None, rec));
                            lost.push(ops[j].clone());
                        }
                        Pending::Read(key) => {
                            // Its outcome is unknown too: recorded, so no
                            // invocation is left open.
                            let r = Micro::Read { key, value: None };
                            rec.record(&self.event(Kind::Info, process, r, None, rec));
                        }
                    }
                }
                rec.record(&Event::Fault {
                    f: "kill".into(),
                    value: serde_json::json!([self.index]),
                    time_ns: rec.now(),
                });
                return Ok((history, lost, next));
            }
        }
    }

    /// Reads `keys`, up to [`WINDOW`] in flight, recording each read.
    pub(super) async fn read_keys(&mut self, keys: &[String], rec: &Recorder) -> Result<()> {
        let mut inflight = VecDeque::new();
        let mut next = 0;
        while next < keys.len() || !inflight.is_empty() {
            while next < keys.len() && inflight.len() < WINDOW {
                let op = Op {
                    key: keys[next].clone(),
                    value: None,
                };
                let key = op.key.clone();
                self.start(Pending::Read(key), &op, rec, &mut inflight)
                    .await?;
                next += 1;
            }
            if let Some((process, pending)) = inflight.pop_front() {
                let reply = self.recv().await?;
                if let Pending::Read(key) = pending {
                    self.finish_read(process, &key, &reply, rec)?;
                }
            }
        }
        Ok(())
    }

    /// Sends a write of `op`, or a read of its key, on the next client lane.
    async fn start(
        &mut self,
        what: Pending,
        op: &Op,
        rec: &Recorder,
        inflight: &mut VecDeque<(u64, Pending)>,
    ) -> Result<()> {
        let process = self.index as u64 * LANES + self.sent % LANES;
        self.sent += 1;
        match &what {
            Pending::Write(_) => {
                let w = Micro::Write(op.clone());
                rec.record(&self.event(Kind::Invoke, process, w, None, rec));
                self.send(&op.command()).await?;
            }
            Pending::Read(key) => {
                let r = Micro::Read {
                    key: key.clone(),
                    value: None,
                };
                rec.record(&self.event(Kind::Invoke, process, r, None, rec));
                self.send(&format!("GET {}", encode(key.as_bytes())))
                    .await?;
            }
        }
        inflight.push_back((process, what));
        Ok(())
    }

    /// Records a `GET`'s reply: `VALUE <version> <value>`, `GONE <version>`
    /// or `NONE`.
    fn finish_read(&mut self, process: u64, key: &str, reply: &str, rec: &Recorder) -> Result<()> {
        let w: Vec<&str> = reply.split(' ').collect();
        let (value, version) = match w.as_slice() {
            ["VALUE", v, x] => {
                let x = decode(x).map_err(|e| anyhow!("node {}: {reply:?}: {e}", self.index))?;
                (
                    Some(String::from_utf8_lossy(&x).into_owned()),
                    parse_version(v),
                )
            }
            ["GONE", v] => (None, parse_version(v)),
            ["NONE"] => (None, None),
            _ => {
                let r = Micro::Read {
                    key: key.to_owned(),
                    value: None,
                };
                rec.record(&self.event(Kind::Fail, process, r, None, rec));
                bail!("node {}: GET {key:?} answered {reply:?}", self.index);
            }
        };
        if w[0] != "NONE" && version.is_none() {
            bail!(
                "node {}: GET {key:?} answered {reply:?}: no version",
                self.index
            );
        }
        let r = Micro::Read {
            key: key.to_owned(),
            value,
        };
        rec.record(&self.event(Kind::Ok, process, r, version, rec));
        Ok(())
    }

    /// A history record of this process's request on client lane
    /// `process`.
    fn event(
        &self,
        kind: Kind,
        process: u64,
        micro: Micro,
        version: Option<multinode_wire::Timestamp>,
        rec: &Recorder,
    ) -> Event {
        Event::Op {
            kind,
            process,
            node: self.index,
            incarnation: self.incarnation,
            micro,
            version,
            time_ns: rec.now(),
        }
    }
}

/// What a request in flight was.
enum Pending {
    /// The write at this index of the script.
    Write(usize),
    /// A `GET` of this key.
    Read(String),
}
