//! The scenario's phases: join, write (with kills), write again, delete
//! (healing any partition), converge and check, each between barriers.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::future::try_join_all;
use multinode_barrier::{Config, Controller};

use super::{Conductor, NodeProc};
use crate::control::field;
use crate::history::{self, Event, StateKind};
use crate::scenario::{Ack, Op, check_digests, check_recovered};

/// Nodes asked for their digest at once while polling for agreement.
const POLL_CHUNK: usize = 32;

impl Conductor {
    /// The digests of the nodes at `range`, by index.
    async fn digests(&mut self, range: std::ops::Range<usize>) -> Result<Vec<(usize, String)>> {
        try_join_all(
            self.nodes[range]
                .iter_mut()
                .map(|n| async move { Ok::<_, anyhow::Error>((n.index, n.agreement().await?)) }),
        )
        .await
    }

    /// Every node's digest if all are equal. The node that disagreed last
    /// time is asked first, then the rest a chunk at a time, stopping at
    /// the first disagreement (remembered in `laggard`): a poll of a
    /// thousand nodes far from agreement costs a few answers, not a
    /// thousand, and leaves the machine to the nodes.
    async fn agreed(&mut self, laggard: &mut usize) -> Result<Option<Vec<(usize, String)>>> {
        let n = self.nodes.len();
        let first = self.digests(*laggard..*laggard + 1).await?;
        let mut all = Vec::with_capacity(n);
        let mut at = 0;
        while at < n {
            let chunk = self.digests(at..(at + POLL_CHUNK).min(n)).await?;
            if let Some(pos) = chunk.iter().position(|(_, d)| *d != first[0].1) {
                *laggard = at + pos;
                return Ok(None);
            }
            all.extend(chunk);
            at += POLL_CHUNK;
        }
        Ok(Some(all))
    }

    pub(super) async fn scenario(&mut self) -> Result<()> {
        let n = self.args.nodes as usize;
        let mut config = Config::new(self.args.nodes);
        config.timeout = self.args.barrier_timeout();
        let listener = match &self.lab {
            // On a lab the controller listens on the switch, which every
            // host reaches and no fault touches.
            Some(lab) => {
                let switch = lab.switch_addr();
                let l = lab
                    .within_switch(move || std::net::TcpListener::bind((switch, 0)))?
                    .context("cannot listen on the lab's switch")?;
                l.set_nonblocking(true)?;
                tokio::net::TcpListener::from_std(l)?
            }
            None => tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
                .await
                .context("cannot start the barrier controller")?,
        };
        self.controller = Some(
            Controller::start(listener, config).context("cannot start the barrier controller")?,
        );

        // join: every node exchanges its address at the barrier `join`.
        let began = Instant::now();
        for i in 0..n {
            let node = self.spawn(i, false).await?;
            self.nodes.push(node);
        }
        self.say(
            "join",
            &format!(
                "{n} node processes started in {:.2} s; they exchange addresses",
                began.elapsed().as_secs_f64()
            ),
        );
        let ready = try_join_all(self.nodes.iter_mut().map(|n| async move {
            let line = n.recv().await?;
            if !line.starts_with("READY ") {
                bail!("node {}: started with {line:?}", n.index);
            }
            Ok(())
        }))
        .await?;
        self.faults(None).await?;
        self.base = vec![(0, 0); n];
        let pids: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|p| p.child.id())
            .map(|p| p.to_string())
            .collect();
        self.say("join", &format!("node processes: pids {}", pids.join(" ")));
        self.end(
            "join",
            began,
            None,
            format!("{} nodes up, addresses exchanged", ready.len()),
        )
        .await?;

        // write: concurrent sets, some victims killed mid-stream.
        let began = self.begin().await?;
        let plan = self.plan.clone();
        let mut resume = vec![0; n];
        let mut unsure = Vec::new();
        let mut acks = Vec::new();
        let rate = self.args.rate;
        let rec = std::sync::Arc::clone(&self.recorder);
        let rec = &*rec;
        let outs = try_join_all(self.nodes.iter_mut().map(|node| {
            let i = node.index;
            let victim = plan.victims.iter().find(|v| v.node == i);
            let ops = &plan.writes[i];
            let until = if victim.is_some() {
                ops.len()
            } else {
                ops.len() / 2
            };
            let kill = victim.map(|v| v.after);
            async move {
                let (acked, lost, next) = node.run_ops(ops, 0, until, kill, rate, rec).await?;
                Ok::<_, anyhow::Error>((i, acked, lost, next))
            }
        }))
        .await?;
        for (i, acked, lost, next) in outs {
            resume[i] = next;
            unsure.extend(lost.into_iter().map(|op| (i, op)));
            acks.extend(acked);
        }
        let killed: Vec<usize> = plan.victims.iter().map(|v| v.node).collect();
        self.reaped += killed.len() as u32;
        self.history.acked.extend(acks);
        let in_flight = unsure.len();
        self.history.unsure.extend(unsure);
        let began_write = began;
        self.say(
            "write",
            &format!(
                "{} writes acknowledged; SIGKILL to node(s) {killed:?} with {in_flight} in flight",
                self.history.acked.len()
            ),
        );

        // restart: the victims come back from their data directories.
        let keep: Vec<NodeProc> = std::mem::take(&mut self.nodes)
            .into_iter()
            .filter(|p| !killed.contains(&p.index))
            .collect();
        self.nodes = keep;
        let mut back = Vec::new();
        for &i in &killed {
            // Held by the conductor at once, so every exit path reaps it.
            let node = self.spawn(i, true).await?;
            self.nodes.push(node);
            let node = self.nodes.last_mut().expect("just pushed");
            let line = node.recv().await?;
            if !line.starts_with("READY ") {
                bail!("node {i}: restarted with {line:?}");
            }
            // Read before any peer can reach it: only its disk speaks.
            let state = node.dump().await?;
            self.recorder.record(&Event::Fault {
                f: "restart".into(),
                value: serde_json::json!([i]),
                time_ns: self.recorder.now(),
            });
            self.recorder.record(&Event::State {
                what: StateKind::Recovered,
                node: i,
                entries: state.clone(),
                time_ns: self.recorder.now(),
            });
            let bad = check_recovered(i, &self.history.acked, &state);
            if let Some(v) = bad.first() {
                bail!("{v}");
            }
            let own = self.history.acked.iter().filter(|a| a.node == i).count();
            back.push(format!(
                "node {i} (pid {}): {own} acknowledged writes recovered",
                node.child.id().unwrap_or(0)
            ));
        }
        self.nodes.sort_by_key(|p| p.index);
        self.faults(Some(&killed)).await?;
        self.all("JOIN rejoin").await?;
        self.end(
            "write",
            began_write,
            None,
            format!(
                "{} acknowledged, {} kill(s); {}",
                self.history.acked.len(),
                killed.len(),
                if back.is_empty() {
                    "no restarts".into()
                } else {
                    back.join("; ")
                }
            ),
        )
        .await?;

        // write: the rest of the writes.
        let began = self.begin().await?;
        let before = self.history.acked.len();
        let acks = self.run_phase(&plan.writes, &resume, &|_| true).await?;
        self.history.acked.extend(acks);
        self.end(
            "write-2",
            began,
            None,
            format!("{} writes acknowledged", self.history.acked.len() - before),
        )
        .await?;

        // delete: mostly deletes, some racing overwrites; paused nodes wait
        // and then catch up, and a link may flap meanwhile.
        let began = self.begin().await?;
        let before = self.history.acked.len();
        let paused: Vec<usize> = (0..n).rev().take(self.args.pause as usize).collect();
        let mut notes = String::new();
        self.pause(&paused)?;
        let flapping = (0..n).find(|i| !paused.contains(i));
        let flap = match (self.args.flap, flapping) {
            (true, Some(i)) => Some((i, self.flap(i)?)),
            _ => None,
        };
        let paused_at = Instant::now();
        let acks = self
            .run_phase(&plan.deletes, &vec![0; n], &|i| !paused.contains(&i))
            .await?;
        self.history.acked.extend(acks);
        if let Some((i, flap)) = flap {
            let down = flap.await.context("the flap panicked")??;
            let _ = write!(
                notes,
                "; node {i}'s link flapped ({:.1} s down)",
                down.as_secs_f64()
            );
        }
        if !paused.is_empty() {
            let others = self.history.acked.len() - before;
            self.resume(&paused)?;
            let acks = self
                .run_phase(&plan.deletes, &vec![0; n], &|i| paused.contains(&i))
                .await?;
            self.history.acked.extend(acks);
            let _ = write!(
                notes,
                "; node(s) {paused:?} paused (SIGSTOP) {:.1} s while the others acknowledged {others}, then resumed",
                paused_at.elapsed().as_secs_f64()
            );
        }
        let mut healed = notes;
        if plan.side.is_some() {
            self.nemesis("heal", serde_json::Value::Null);
        }
        // Every node reads back the keys of its last deletes and overwrites:
        // its own writes, whatever the partition and the pauses did.
        let rec = std::sync::Arc::clone(&self.recorder);
        try_join_all(self.nodes.iter_mut().map(|node| {
            let keys: Vec<String> = plan.deletes[node.index]
                .iter()
                .rev()
                .take(8)
                .map(|op| op.key.clone())
                .collect();
            let rec = &*rec;
            async move { node.read_keys(&keys, rec).await }
        }))
        .await?;
        if plan.side.is_some() && self.lab.is_some() {
            let cut = self.lab_heal().await?;
            let _ = write!(
                healed,
                "; partition healed ({cut} packets cut by the kernel)"
            );
        } else if plan.side.is_some() {
            // What the cuts did, from each node's fault counters.
            let faults = try_join_all(self.nodes.iter_mut().map(|n| n.call("FAULTS")))
                .await
                .context(super::IN_NODE_FAULTS)?;
            let cut: u64 = faults.iter().filter_map(|f| field(f, "cut")).sum();
            self.all("HEAL").await?;
            let _ = write!(healed, "; partition healed ({cut} frames cut)");
        }
        self.end(
            "delete",
            began,
            None,
            format!(
                "{} deletes and overwrites acknowledged{healed}",
                self.history.acked.len() - before,
            ),
        )
        .await?;

        // converge: poll digests until every node agrees.
        let began = self.begin().await?;
        let deadline = began + Duration::from_secs_f64(self.args.converge_timeout());
        let mut laggard = 0;
        let digests = loop {
            if Instant::now() >= deadline {
                break self.digests(0..n).await?;
            }
            if let Some(all) = self.agreed(&mut laggard).await? {
                break all;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if let Some(v) = check_digests(&digests) {
            bail!(
                "no agreement within {} s: {v}",
                self.args.converge_timeout()
            );
        }
        let converge = began.elapsed();
        let entries = digests[0]
            .1
            .split(' ')
            .find_map(|w| w.strip_prefix("entries="))
            .unwrap_or("?")
            .to_string();
        self.end(
            "converge",
            began,
            Some(converge),
            format!(
                "all {n} digests equal: {} ({entries} entries)",
                digests[0].1.split(' ').nth(1).unwrap_or("?")
            ),
        )
        .await?;

        // check: every node's full state goes into the history, and the
        // checker judges the history file, as `multinode check` would.
        let began = self.begin().await?;
        let dumps = try_join_all(self.nodes.iter_mut().map(NodeProc::dump)).await?;
        for (node, entries) in self.nodes.iter().map(|n| n.index).zip(dumps.iter()) {
            self.recorder.record(&Event::State {
                what: StateKind::Final,
                node,
                entries: entries.clone(),
                time_ns: self.recorder.now(),
            });
        }
        self.recorder.flush()?;
        let path = self.recorder.path();
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let verdict = history::check(&history::parse(&text)?);
        if !verdict.passed() {
            bail!("{verdict}");
        }
        self.converged_entries = dumps[0].len();
        let deletes = self
            .history
            .acked
            .iter()
            .filter(|a| a.op.value.is_none())
            .count();
        self.end(
            "check",
            began,
            None,
            format!(
                "{} acknowledged writes ({deletes} deletes) hold; {} in-flight writes unsure; {} reads consistent",
                self.history.acked.len(),
                self.history.unsure.len(),
                verdict.reads
            ),
        )
        .await?;
        Ok(())
    }

    /// Every node `which` picks runs its script from `from[i]` to the end,
    /// concurrently.
    async fn run_phase(
        &mut self,
        scripts: &[Vec<Op>],
        from: &[usize],
        which: &dyn Fn(usize) -> bool,
    ) -> Result<Vec<Ack>> {
        let rate = self.args.rate;
        let rec = std::sync::Arc::clone(&self.recorder);
        let rec = &*rec;
        let outs = try_join_all(
            self.nodes
                .iter_mut()
                .filter(|n| which(n.index))
                .map(|node| {
                    let i = node.index;
                    let ops = &scripts[i];
                    async move {
                        let (acked, _, _) = node
                            .run_ops(ops, from[i], ops.len(), None, rate, rec)
                            .await?;
                        Ok::<_, anyhow::Error>(acked)
                    }
                }),
        )
        .await?;
        Ok(outs.into_iter().flatten().collect())
    }
}
