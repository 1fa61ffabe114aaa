//! `multinode test-cluster`: the conductor. It starts a barrier controller
//! and N `multinode node` processes, drives the seeded [`Plan`] through
//! their control interfaces in phases separated by barriers, kills and
//! restarts nodes, checks the outcome, and reaps every process it started.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use futures_util::future::try_join_all;
use multinode_barrier::{Config, Controller, ENV_ADDR, ENV_INDEX, ENV_NODES};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::control::{DumpLine, field, parse_version};
use crate::scenario::{
    Ack, History, Op, Plan, Violation, check_digests, check_dumps, check_final, check_recovered,
};

#[derive(Args, Debug, Clone)]
pub(crate) struct ClusterArgs {
    /// Node processes to start.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(2..=64))]
    nodes: u32,
    /// Distinct keys the scenario writes.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    keys: u32,
    /// Seed of the scenario (default: from the clock; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// Nodes killed with SIGKILL in the middle of writing, then restarted.
    #[arg(long, default_value_t = 1)]
    kills: u32,
    /// Probability that a node drops each gossip frame it sends.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    loss: f64,
    /// Split the nodes in two halves during the writes, then heal.
    #[arg(long)]
    partition: bool,
    /// Keep logs and data directories even when the run passes.
    #[arg(long)]
    keep: bool,
    /// Also write the summary as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Writes per second each node is sent (0: as fast as they go), so
    /// that writing overlaps many gossip rounds.
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// Milliseconds between gossip rounds on every node.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    round_ms: u64,
    /// Seconds the nodes have to agree after the last write.
    #[arg(long, default_value_t = 20.0, value_parser = crate::positive_secs)]
    converge_timeout: f64,
    /// Where run directories go (default: the system's temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Runs node NODE with its wall clock SECS seconds ahead (negative:
    /// behind), through libfaketime (Debian package `faketime`), as
    /// `NODE=SECS`; repeatable.
    #[arg(long = "skew", value_parser = parse_skew)]
    skews: Vec<(usize, i64)>,
}

fn parse_skew(s: &str) -> Result<(usize, i64), String> {
    let (node, secs) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NODE=SECS"))?;
    let node = node
        .parse()
        .map_err(|_| format!("{node:?} is not a node index"))?;
    let secs = secs
        .trim_start_matches('+')
        .parse()
        .map_err(|_| format!("{secs:?} is not a whole number of seconds"))?;
    Ok((node, secs))
}

/// Where Debian (and most distributions) put libfaketime; `MULTINODE_LIBFAKETIME`
/// overrides.
fn libfaketime() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("MULTINODE_LIBFAKETIME") {
        return Ok(PathBuf::from(p));
    }
    let arch = std::env::consts::ARCH;
    let candidates = [
        format!("/usr/lib/{arch}-linux-gnu/faketime/libfaketime.so.1"),
        "/usr/lib/faketime/libfaketime.so.1".to_owned(),
        "/usr/local/lib/faketime/libfaketime.so.1".to_owned(),
    ];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| {
            anyhow!(
                "--skew needs libfaketime, which is not installed (looked in {}): \
                 install it (Debian: apt-get install faketime) or set MULTINODE_LIBFAKETIME",
                candidates.join(", ")
            )
        })
}

fn probability(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..1.0).contains(&p) => Ok(p),
        _ => Err(format!("{s:?} is not a probability in [0, 1)")),
    }
}

/// Writes a node may have in flight on its control pipe.
const WINDOW: usize = 8;
/// How long one control reply may take (a barrier may wait for others).
const REPLY_TIMEOUT: Duration = Duration::from_secs(40);

/// One row of the summary.
#[derive(Debug, Clone)]
struct Phase {
    name: &'static str,
    took: Duration,
    converge: Option<Duration>,
    frames: u64,
    bytes: u64,
    /// Writes acknowledged during the phase.
    writes: usize,
    result: String,
}

struct NodeProc {
    index: usize,
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl NodeProc {
    async fn send(&mut self, line: &str) -> Result<()> {
        let mut buf = line.as_bytes().to_vec();
        buf.push(b'\n');
        self.stdin
            .write_all(&buf)
            .await
            .with_context(|| format!("node {}: control pipe closed", self.index))
    }

    async fn recv(&mut self) -> Result<String> {
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

    async fn call(&mut self, line: &str) -> Result<String> {
        self.send(line).await?;
        let reply = self.recv().await?;
        if reply.starts_with("ERR") {
            bail!("node {}: {line:?} answered {reply:?}", self.index);
        }
        Ok(reply)
    }

    async fn dump(&mut self) -> Result<Vec<DumpLine>> {
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
    async fn stats_after_failure(&mut self) -> Option<String> {
        self.send("STATS").await.ok()?;
        for _ in 0..=WINDOW {
            let line = self.recv().await.ok()?;
            if line.starts_with("STATS ") {
                return Some(line);
            }
        }
        None
    }

    async fn sent(&mut self) -> Result<(u64, u64)> {
        let s = self.call("STATS").await?;
        Ok((
            field(&s, "frames_sent").unwrap_or(0),
            field(&s, "bytes_sent").unwrap_or(0),
        ))
    }

    /// Runs `ops[from..]`, up to [`WINDOW`] in flight; with `kill_after`,
    /// SIGKILLs the process once that many are acknowledged and more are
    /// in flight. Returns the acknowledged writes, those in flight at the
    /// kill, and where the script stopped.
    async fn run_ops(
        &mut self,
        ops: &[Op],
        from: usize,
        until: usize,
        kill_after: Option<usize>,
        rate: u32,
        history: &mut Vec<Ack>,
    ) -> Result<(Vec<Op>, usize)> {
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
                self.send(&ops[next].command()).await?;
                inflight.push_back(next);
                next += 1;
            }
            let Some(i) = inflight.pop_front() else {
                return Ok((Vec::new(), next));
            };
            let reply = self.recv().await?;
            let version = reply
                .strip_prefix("OK ")
                .and_then(parse_version)
                .ok_or_else(|| {
                    anyhow!(
                        "node {}: {:?} answered {reply:?}",
                        self.index,
                        ops[i].command()
                    )
                })?;
            history.push(Ack {
                node: self.index,
                op: ops[i].clone(),
                version,
            });
            acked += 1;
            if kill_after == Some(acked) {
                while next < until && inflight.len() < WINDOW {
                    self.send(&ops[next].command()).await?;
                    inflight.push_back(next);
                    next += 1;
                }
                self.child.start_kill()?;
                self.child.wait().await?;
                return Ok((inflight.into_iter().map(|i| ops[i].clone()).collect(), next));
            }
        }
    }
}

struct Conductor {
    args: ClusterArgs,
    seed: u64,
    plan: Plan,
    exe: PathBuf,
    dir: PathBuf,
    controller: Option<Controller>,
    nodes: Vec<NodeProc>,
    /// Every process started, for the final check that none is alive.
    started: u32,
    reaped: u32,
    history: History,
    phases: Vec<Phase>,
    t0: Instant,
    /// Each node's counters at the start of the phase.
    base: Vec<(u64, u64)>,
    converged_entries: usize,
    /// Acknowledged writes when the phase began.
    acked_base: usize,
    /// The run's cluster secret, a file every node is given.
    secret: PathBuf,
    /// libfaketime, when some node runs with a skewed clock.
    faketime: Option<PathBuf>,
}

/// A fresh random cluster secret for one run, in a file only its owner
/// reads.
fn write_secret(dir: &std::path::Path) -> Result<PathBuf> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| anyhow!("no randomness for a cluster secret: {e}"))?;
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let path = dir.join("cluster.secret");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(f, "{hex}").with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

pub(crate) async fn run(args: ClusterArgs) -> Result<ExitCode> {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 % 1_000_000)
    });
    let (n, keys) = (args.nodes as usize, args.keys as usize);
    if args.kills >= args.nodes {
        bail!(
            "--kills {} must leave a node alive (--nodes {})",
            args.kills,
            args.nodes
        );
    }
    if let Some((node, _)) = args.skews.iter().find(|(node, _)| *node >= n) {
        bail!("--skew {node}=…: there is no node {node} among {n}");
    }
    let faketime = match args.skews.is_empty() {
        true => None,
        false => Some(libfaketime()?),
    };
    let plan = Plan::new(seed, n, keys, args.kills as usize, args.partition);
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let dir = tempfile::Builder::new()
        .prefix(&format!("test-cluster-{seed}-"))
        .tempdir_in(&parent)
        .with_context(|| format!("cannot create a run directory in {}", parent.display()))?;
    let replay = replay_command(&args, seed);
    println!(
        "test-cluster: {n} nodes, {keys} keys, {} kill(s), loss {}{}, seed {seed} (plan {:016x})",
        args.kills,
        args.loss,
        if args.partition { ", partition" } else { "" },
        plan.digest()
    );
    println!("run directory: {}", dir.path().display());
    let secret = write_secret(dir.path())?;
    let mut c = Conductor {
        args: args.clone(),
        seed,
        plan,
        exe: std::env::current_exe().context("cannot find the multinode binary")?,
        dir: dir.path().to_path_buf(),
        controller: None,
        nodes: Vec::new(),
        started: 0,
        reaped: 0,
        history: History::default(),
        phases: Vec::new(),
        t0: Instant::now(),
        base: Vec::new(),
        converged_entries: 0,
        acked_base: 0,
        secret,
        faketime,
    };
    let mut interrupted = false;
    let outcome = tokio::select! {
        r = c.scenario() => r,
        why = crate::interrupted() => {
            interrupted = true;
            Err(anyhow!("{why}"))
        }
    };
    let mut failure = outcome.err().map(|e| crate::error_line(&e));
    if let Some(f) = &mut failure {
        // A clock off the cluster's makes everything after it fail: say so
        // first, whatever the symptom was.
        if let Some(clock) = c.clock_cause().await {
            *f = format!("{clock}; then: {f}");
        }
    }
    let alive = c.stop_all(failure.is_none()).await;
    if alive > 0 && failure.is_none() {
        failure = Some(format!(
            "{alive} node process(es) still alive after the run"
        ));
    }
    c.print_summary(&failure, alive);
    if let Some(path) = &args.json {
        std::fs::write(path, c.json(&failure, alive, &replay))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    match failure {
        None => {
            if args.keep {
                println!("kept: {}", dir.keep().display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(cause) => {
            println!("FAILED: {cause}");
            println!("seed: {seed}");
            println!("replay: {replay}");
            println!("logs and data kept in {}", dir.keep().display());
            Ok(ExitCode::from(if interrupted { 130 } else { 1 }))
        }
    }
}

fn replay_command(a: &ClusterArgs, seed: u64) -> String {
    let prefix =
        std::env::var("MULTINODE_REPLAY").unwrap_or_else(|_| "multinode test-cluster".into());
    let mut s = format!(
        "{prefix} --nodes {} --keys {} --seed {seed} --kills {}",
        a.nodes, a.keys, a.kills
    );
    if a.loss > 0.0 {
        let _ = write!(s, " --loss {}", a.loss);
    }
    if a.partition {
        s.push_str(" --partition");
    }
    if a.rate != 100 {
        let _ = write!(s, " --rate {}", a.rate);
    }
    if a.round_ms != 100 {
        let _ = write!(s, " --round-ms {}", a.round_ms);
    }
    for (node, secs) in &a.skews {
        let _ = write!(s, " --skew {node}={secs}");
    }
    if a.converge_timeout != 20.0 {
        let _ = write!(s, " --converge-timeout {}", a.converge_timeout);
    }
    s
}

impl Conductor {
    fn spawn(&mut self, index: usize, no_join: bool) -> Result<NodeProc> {
        let ctl = self.controller.as_ref().expect("started").local_addr();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("node-{index}.log")))?;
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.arg("node")
            .arg("--data-dir")
            .arg(self.dir.join(format!("node-{index}")))
            .args(["--round-ms", &self.args.round_ms.to_string()])
            .args(["--seed", &(self.seed ^ (index as u64) << 32).to_string()])
            .env(ENV_ADDR, ctl.to_string())
            .env(ENV_INDEX, index.to_string())
            .env(ENV_NODES, self.args.nodes.to_string())
            .arg("--secret-file")
            .arg(&self.secret)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true);
        if no_join {
            cmd.arg("--no-join");
        }
        let skew = self.args.skews.iter().find(|(n, _)| *n == index);
        if let (Some((_, secs)), Some(lib)) = (skew, &self.faketime) {
            // Only the wall clock: timers and timeouts keep real time.
            cmd.env("LD_PRELOAD", lib)
                .env("FAKETIME", format!("{secs:+}s"))
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
                .env("FAKETIME_NO_CACHE", "1");
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", self.exe.display()))?;
        self.started += 1;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
        Ok(NodeProc {
            index,
            child,
            stdin,
            stdout,
        })
    }

    /// The first node whose clock is off the cluster's by more than it
    /// takes writes at, or that sees a peer's clock beyond the drift bound
    /// (from each live node's `STATS`), in words.
    async fn clock_cause(&mut self) -> Option<String> {
        let mut seen = None;
        for n in &mut self.nodes {
            let asked = tokio::time::timeout(Duration::from_secs(2), n.stats_after_failure());
            let Ok(Some(stats)) = asked.await else {
                continue;
            };
            let signed = |name: &str| -> Option<i64> {
                let key = format!("{name}=");
                stats
                    .split(' ')
                    .find_map(|w| w.strip_prefix(key.as_str()))
                    .and_then(|v| v.parse().ok())
            };
            let limit = field(&stats, "clock_limit_ms").unwrap_or(u64::MAX);
            let peers = field(&stats, "clock_peers").unwrap_or(0);
            let secs = |ms: i64| ms.unsigned_abs() as f64 / 1000.0;
            let side = |ms: i64| if ms > 0 { "ahead of" } else { "behind" };
            if field(&stats, "clock_off") == Some(1) {
                let ahead = signed("clock_ahead_ms").unwrap_or(0);
                return Some(format!(
                    "clock offset: node {}'s clock is {:.1} s {} the cluster's (the median of \
                     its clock and {peers} measured peer(s); writes need it within {:.1} s)",
                    n.index,
                    secs(ahead),
                    side(ahead),
                    limit as f64 / 1000.0
                ));
            }
            let worst = signed("peer_clock_max_ms").unwrap_or(0);
            if seen.is_none() && worst.unsigned_abs() > limit.saturating_mul(2) {
                seen = Some(format!(
                    "clock offset: node {} sees a peer's clock {:.1} s {} its own \
                     (beyond the {:.1} s drift bound)",
                    n.index,
                    secs(worst),
                    side(worst),
                    limit.saturating_mul(2) as f64 / 1000.0
                ));
            }
        }
        seen
    }

    fn say(&self, phase: &str, what: &str) {
        println!(
            "[{:>6.2}s] {phase:<9} {what}",
            self.t0.elapsed().as_secs_f64()
        );
    }

    async fn begin(&mut self) -> Result<Instant> {
        self.base = try_join_all(self.nodes.iter_mut().map(NodeProc::sent)).await?;
        self.acked_base = self.history.acked.len();
        Ok(Instant::now())
    }

    /// Ends a phase: every node meets at the barrier `<name>-done`, and the
    /// row records what the nodes sent meanwhile.
    async fn end(
        &mut self,
        name: &'static str,
        began: Instant,
        converge: Option<Duration>,
        result: String,
    ) -> Result<()> {
        self.all(&format!("BARRIER {name}-done")).await?;
        let now = try_join_all(self.nodes.iter_mut().map(NodeProc::sent)).await?;
        let (mut frames, mut bytes) = (0, 0);
        for (i, (f, b)) in now.iter().enumerate() {
            // A restarted node's counters start again from zero.
            let (f0, b0) = self.base.get(i).copied().unwrap_or((0, 0));
            frames += if *f >= f0 { f - f0 } else { *f };
            bytes += if *b >= b0 { b - b0 } else { *b };
        }
        let took = began.elapsed();
        self.say(name, &format!("{result} ({:.2} s)", took.as_secs_f64()));
        self.phases.push(Phase {
            name,
            took,
            converge,
            frames,
            bytes,
            writes: self.history.acked.len() - self.acked_base,
            result,
        });
        Ok(())
    }

    async fn all(&mut self, line: &str) -> Result<()> {
        try_join_all(self.nodes.iter_mut().map(|n| n.call(line))).await?;
        Ok(())
    }

    /// Applies the loss and partition settings to `nodes`.
    async fn faults(&mut self, only: Option<&[usize]>) -> Result<()> {
        let side = self.plan.side.clone();
        let n = self.nodes.len();
        for node in &mut self.nodes {
            if only.is_some_and(|o| !o.contains(&node.index)) {
                continue;
            }
            if self.args.loss > 0.0 {
                node.call(&format!("LOSS {}", self.args.loss)).await?;
            }
            if let Some(side) = &side {
                let mine = side.contains(&node.index);
                let others: Vec<String> = (0..n)
                    .filter(|i| side.contains(i) != mine)
                    .map(|i| i.to_string())
                    .collect();
                node.call(&format!("BLOCK {}", others.join(" "))).await?;
            }
        }
        Ok(())
    }

    async fn scenario(&mut self) -> Result<()> {
        let n = self.args.nodes as usize;
        let mut config = Config::new(self.args.nodes);
        config.timeout = Duration::from_secs(30);
        self.controller = Some(
            Controller::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), config)
                .await
                .context("cannot start the barrier controller")?,
        );

        // join: every node exchanges its address at the barrier `join`.
        let began = Instant::now();
        for i in 0..n {
            let node = self.spawn(i, false)?;
            self.nodes.push(node);
        }
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
                let mut acked = Vec::new();
                let (lost, next) = node.run_ops(ops, 0, until, kill, rate, &mut acked).await?;
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
            let node = self.spawn(i, true)?;
            self.nodes.push(node);
            let node = self.nodes.last_mut().expect("just pushed");
            let line = node.recv().await?;
            if !line.starts_with("READY ") {
                bail!("node {i}: restarted with {line:?}");
            }
            // Read before any peer can reach it: only its disk speaks.
            let state = node.dump().await?;
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
        let acks = self.run_phase(&plan.writes, &resume).await?;
        self.history.acked.extend(acks);
        self.end(
            "write-2",
            began,
            None,
            format!("{} writes acknowledged", self.history.acked.len() - before),
        )
        .await?;

        // delete: mostly deletes, some racing overwrites.
        let began = self.begin().await?;
        let before = self.history.acked.len();
        let acks = self.run_phase(&plan.deletes, &vec![0; n]).await?;
        self.history.acked.extend(acks);
        if plan.side.is_some() {
            self.all("UNBLOCK").await?;
        }
        self.end(
            "delete",
            began,
            None,
            format!(
                "{} deletes and overwrites acknowledged{}",
                self.history.acked.len() - before,
                if plan.side.is_some() {
                    "; partition healed"
                } else {
                    ""
                }
            ),
        )
        .await?;

        // converge: poll digests until every node agrees.
        let began = self.begin().await?;
        let deadline = began + Duration::from_secs_f64(self.args.converge_timeout);
        let digests = loop {
            let digests: Vec<(usize, String)> =
                try_join_all(self.nodes.iter_mut().map(|n| async move {
                    let d = n.call("DIGEST").await?;
                    // Compare the fingerprint and counts, not the
                    // transient resync flag.
                    let d = d.split(' ').take(4).collect::<Vec<_>>().join(" ");
                    Ok::<_, anyhow::Error>((n.index, d))
                }))
                .await?;
            if check_digests(&digests).is_none() || Instant::now() >= deadline {
                break digests;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if let Some(v) = check_digests(&digests) {
            bail!("no agreement within {} s: {v}", self.args.converge_timeout);
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

        // check: every node's full state, against the history.
        let began = self.begin().await?;
        let dumps = try_join_all(self.nodes.iter_mut().map(NodeProc::dump)).await?;
        if let Some(v) = check_dumps(&dumps) {
            bail!("{v}");
        }
        let bad: Vec<Violation> = check_final(&self.history, &dumps[0]);
        if let Some(v) = bad.first() {
            bail!("{v} ({} violation(s) in all)", bad.len());
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
                "{} acknowledged writes ({deletes} deletes) hold; {} in-flight writes unsure",
                self.history.acked.len(),
                self.history.unsure.len()
            ),
        )
        .await?;
        Ok(())
    }

    /// Every node runs its script from `from[i]` to the end, concurrently.
    async fn run_phase(&mut self, scripts: &[Vec<Op>], from: &[usize]) -> Result<Vec<Ack>> {
        let rate = self.args.rate;
        let outs = try_join_all(self.nodes.iter_mut().map(|node| {
            let i = node.index;
            let ops = &scripts[i];
            async move {
                let mut acked = Vec::new();
                node.run_ops(ops, from[i], ops.len(), None, rate, &mut acked)
                    .await?;
                Ok::<_, anyhow::Error>(acked)
            }
        }))
        .await?;
        Ok(outs.into_iter().flatten().collect())
    }

    /// Stops every node: `QUIT` when the run went well, SIGKILL otherwise
    /// or after a grace period. Returns how many are still alive (none,
    /// unless the OS refused to kill one).
    async fn stop_all(&mut self, gently: bool) -> u32 {
        let began = Instant::now();
        let mut nodes = std::mem::take(&mut self.nodes);
        if gently {
            for n in &mut nodes {
                let _ = n.send("QUIT").await;
            }
        }
        let grace = if gently {
            Duration::from_secs(5)
        } else {
            Duration::ZERO
        };
        let mut alive = 0;
        for mut n in nodes {
            let exited = tokio::time::timeout(grace, n.child.wait()).await;
            if !matches!(exited, Ok(Ok(_))) {
                let _ = n.child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(5), n.child.wait()).await;
            }
            match n.child.try_wait() {
                Ok(Some(_)) => self.reaped += 1,
                _ => alive += 1,
            }
        }
        if let Some(c) = self.controller.take() {
            c.shutdown().await;
        }
        if gently {
            self.phases.push(Phase {
                name: "stop",
                took: began.elapsed(),
                converge: None,
                frames: 0,
                bytes: 0,
                writes: 0,
                result: format!(
                    "{} processes started, {} reaped, {alive} alive",
                    self.started, self.reaped
                ),
            });
            self.say("stop", &self.phases.last().expect("pushed").result.clone());
        }
        alive
    }

    fn print_summary(&self, failure: &Option<String>, alive: u32) {
        println!();
        println!(
            "{:<9} {:>9} {:>9} {:>8} {:>11}  result",
            "phase", "duration", "converge", "frames", "bytes"
        );
        for p in &self.phases {
            println!(
                "{:<9} {:>7.2} s {:>9} {:>8} {:>11}  {}",
                p.name,
                p.took.as_secs_f64(),
                p.converge
                    .map_or_else(|| "-".into(), |d| format!("{:.2} s", d.as_secs_f64())),
                p.frames,
                p.bytes,
                p.result
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

    fn json(&self, failure: &Option<String>, alive: u32, replay: &str) -> String {
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
                })
            })
            .collect();
        let report = serde_json::json!({
            "passed": failure.is_none(),
            "first_failure": failure,
            "seed": self.seed,
            "plan": format!("{:016x}", self.plan.digest()),
            "nodes": self.args.nodes,
            "keys": self.args.keys,
            "kills": self.args.kills,
            "loss": self.args.loss,
            "partition": self.args.partition,
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
