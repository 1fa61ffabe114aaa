//! `multinode test-cluster`: the conductor. It starts a barrier controller
//! and N `multinode node` processes, drives the seeded [`Plan`] through
//! their control interfaces in phases separated by barriers, kills and
//! restarts nodes, checks the outcome, and reaps every process it started.
//! This file: the arguments, the run and the conductor's mechanics
//! (starting, stopping, phase bookkeeping, the clock check);
//! `cluster/node_proc.rs`: one node's control pipe; `cluster/phases.rs`:
//! the scenario; `cluster/report.rs`: the summary.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use futures_util::future::try_join_all;
use multinode_barrier::{Controller, ENV_ADDR, ENV_INDEX, ENV_NODES};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::unix::pipe;

mod lab;
mod node_child;
mod node_proc;
mod phases;
mod recorder;
mod report;

use node_child::NodeChild;
use node_proc::NodeProc;
use report::Phase;

use crate::control::field;
use crate::scenario::{History, Plan};

#[derive(Args, Debug, Clone)]
pub(crate) struct ClusterArgs {
    /// Node processes to start.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(2..=4096))]
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
    /// Probability that a node drops each gossip frame it sends (the
    /// fault model's `drop`; `--loss` is an older name for it).
    #[arg(long = "drop", alias = "loss", default_value_t = 0.0, value_parser = probability)]
    drop: f64,
    /// Split the nodes in two halves during the writes, then heal.
    #[arg(long)]
    partition: bool,
    /// Runs each node on its own host of a network lab, bound to the
    /// host's address: the partition and the drops are then the kernel's
    /// (nftables on each receiver), and the summary shows its counters.
    /// Needs root, or unprivileged user namespaces.
    #[arg(long)]
    pub(crate) net: bool,
    /// Nodes stopped with SIGSTOP while the others run the delete phase,
    /// then continued: they must catch up.
    #[arg(long, default_value_t = 0)]
    pause: u32,
    /// Takes one node's link down for a second during the delete phase,
    /// then up again (needs --net).
    #[arg(long)]
    flap: bool,
    /// Tests this program instead of `multinode node`: words separated by
    /// spaces (no quoting), started as the node contract says
    /// (docs/node-contract.md): its arguments, then `--data-dir DIR`, and
    /// the contract's environment.
    #[arg(long, value_name = "PROGRAM ARGS...")]
    node_cmd: Option<String>,
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
    /// Milliseconds between gossip rounds on every node (default: N × (N +
    /// 400) / (70 × cores) for N nodes, at least 100 and at most 60,000:
    /// each node sends about nine frames a round, each frame lists all N
    /// nodes and costs a fixed part besides (a connection, a wakeup) worth
    /// about 400 of them, so an idle cluster keeps a fifth of the machine
    /// busy or so whatever its size; on two cores 212 ms at 64 nodes, 1.2 s
    /// at 256 and 10 s at 1,000).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    round_ms: Option<u64>,
    /// Seconds the nodes have to agree after the last write (default: 20,
    /// or 40 rounds when longer; with --net and --drop at least 60: TCP
    /// retransmits a packet the kernel dropped on a timeout that doubles
    /// with each loss in a row, so a lossy link stalls for seconds now and
    /// then).
    #[arg(long, value_parser = crate::positive_secs)]
    converge_timeout: Option<f64>,
    /// Where run directories go (default: the system's temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Runs this many seeds back to back, from --seed on (default: one
    /// from the clock), each a small scenario whose node count (3 to 7),
    /// kills, partition, drops, pause and keys are drawn from the seed
    /// (with --net, a flap too); stops at the first failure and prints
    /// its replay command; reports seeds per minute.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000),
          conflicts_with_all = ["nodes", "keys", "kills", "drop", "partition", "pause", "flap", "skews", "keep", "json"])]
    sweep: Option<u32>,
    /// One line per run instead of the phases and the summary (a sweep's
    /// runs).
    #[arg(skip)]
    quiet: bool,
    /// Runs node NODE with its wall clock SECS seconds ahead (negative:
    /// behind), through libfaketime (Debian package `faketime`), as
    /// `NODE=SECS`; repeatable.
    #[arg(long = "skew", value_parser = parse_skew)]
    skews: Vec<(usize, i64)>,
}

/// The gossip round interval for `nodes` node processes on `cores` cores,
/// chosen so an idle cluster keeps a fifth of the machine busy or so.
///
/// A round is about nine frames a node (three exchanges of three), and a
/// frame costs a part that grows with the watermark list it carries (one
/// per node) and a fixed part: a new connection and its handshake (a
/// random peer of a thousand is seldom one still connected), wakeups.
/// Measured on two cores at rounds of N²/200 ms, the rule before: idle
/// clusters kept 23–39% of the machine busy at 64 nodes, 79% at 256 and
/// 46% at 1,000 (about 0.23 ms of CPU a frame at 256, 0.52 at 1,000: the
/// fixed part is worth about 400 list entries). At 1,000 nodes that left
/// a burst of writes half the machine: its gossip saturated both cores for
/// 35–70 s and agreement came up to 2.3 times later than the rounds
/// predict. With this rule: 17%, 28% and 15% idle, and at rounds of 9.4
/// and 10 s the same burst agreed in 32–44 s (the simulator predicts four
/// rounds) with 40% of the CPU time the whole run took before.
fn default_round_ms(nodes: u64, cores: u64) -> u64 {
    (nodes * (nodes + 400) / (70 * cores.max(1))).clamp(100, 60_000)
}

impl ClusterArgs {
    /// The gossip round interval in force.
    pub(crate) fn round_ms(&self) -> u64 {
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        self.round_ms
            .unwrap_or_else(|| default_round_ms(u64::from(self.nodes), cores as u64))
    }

    /// Seconds the nodes have to agree, in force.
    pub(crate) fn converge_timeout(&self) -> f64 {
        match self.converge_timeout {
            Some(secs) => secs,
            None => {
                let lossy_tcp = self.net && self.drop > 0.0;
                let floor = if lossy_tcp { 60.0 } else { 20.0 };
                ((40 * self.round_ms()) as f64 / 1000.0).max(floor)
            }
        }
    }

    /// How long a barrier waits for every node: starting and joining take
    /// longer the more nodes there are.
    pub(crate) fn barrier_timeout(&self) -> Duration {
        Duration::from_secs(30) + Duration::from_millis(60) * self.nodes
    }
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

/// Raises this process's descriptor limit (the soft one, up to the hard
/// one) to what `nodes` node processes need here: two pipes, a barrier
/// connection and (in a lab, where the conductor starts them itself) a
/// pidfd each, and some room. Says what to do when the hard
/// limit is too low.
fn descriptors(nodes: usize) -> Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let need = 4 * nodes as u64 + 256;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)
        .map_err(|e| anyhow!("cannot read the descriptor limit: {e}"))?;
    if soft >= need {
        return Ok(());
    }
    if hard < need {
        bail!(
            "{nodes} nodes need about {need} file descriptors here, and the hard limit is {hard}: raise it (as root, \
             `ulimit -Hn {need}`, or LimitNOFILE= in a systemd unit) or start fewer nodes"
        );
    }
    setrlimit(Resource::RLIMIT_NOFILE, need, hard)
        .map_err(|e| anyhow!("cannot raise the descriptor limit to {need}: {e}"))?;
    println!("descriptor limit raised from {soft} to {need} (hard limit {hard})");
    Ok(())
}

/// libfaketime, or an error that says where it was looked for and how to
/// get it.
fn libfaketime() -> Result<PathBuf> {
    multinode_net::libfaketime().ok_or_else(|| {
        let looked: Vec<String> = multinode_net::libfaketime_candidates()
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        anyhow!(
            "--skew needs libfaketime, which is not installed (looked in {}): \
             install it (Debian: apt-get install faketime) or set MULTINODE_LIBFAKETIME",
            looked.join(", ")
        )
    })
}

fn probability(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..1.0).contains(&p) => Ok(p),
        _ => Err(format!("{s:?} is not a probability in [0, 1)")),
    }
}

/// Why an in-node fault verb failed, for a `--node-cmd` program without it.
pub(super) const IN_NODE_FAULTS: &str = "--drop and --partition without --net are made by the nodes \
     (their DROP, CUT, HEAL and FAULTS lines, docs/node-control.md); with --net the kernel makes them";

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
    /// Node processes started under libfaketime (outside a lab), by pid:
    /// libfaketime leaves two files in `/dev/shm` for each one killed.
    under_faketime: Vec<u32>,
    /// The run's `history.jsonl`.
    recorder: std::sync::Arc<recorder::Recorder>,
    /// Each node's next incarnation (0, then one more per restart).
    incarnations: Vec<u32>,
    /// The network lab the nodes run on, with `--net`.
    lab: Option<std::sync::Arc<multinode_net::Lab>>,
    /// What starts the node processes outside a lab, from the first start.
    spawner: Option<crate::spawner::Spawner>,
    /// The lab's counters at the start of the phase.
    kernel_base: multinode_net::Counters,
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

/// A seed from the clock, when none is given (printed either way).
pub(crate) fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64 % 1_000_000)
}

/// Whether `dir` is in `/dev/shm` (through a symbolic link too, where it
/// exists): a lab host sees a `/dev/shm` of the lab's own there.
fn under_dev_shm(dir: &std::path::Path) -> bool {
    let real = std::fs::canonicalize(dir)
        .or_else(|_| std::path::absolute(dir))
        .unwrap_or_else(|_| dir.to_owned());
    real.starts_with("/dev/shm")
}

/// `--sweep N`: N seeds back to back, each its own drawn scenario; stops
/// at the first failure.
async fn sweep(args: ClusterArgs, count: u32) -> Result<ExitCode> {
    let first = args.seed.unwrap_or_else(clock_seed);
    println!(
        "sweep: {count} seeds from {first}, each a drawn scenario{}",
        if args.net { " on a network lab" } else { "" }
    );
    let began = Instant::now();
    for i in 0..u64::from(count) {
        let seed = first.wrapping_add(i);
        let a = drawn(&args, seed);
        let t = Instant::now();
        let what = scenario_words(&a);
        let replay = replay_command(&a, seed);
        let code = Box::pin(run(a)).await?;
        if code == ExitCode::from(130) {
            println!("sweep: interrupted at seed {seed} after {i} passed");
            return Ok(code);
        }
        if code != ExitCode::SUCCESS {
            println!("sweep: seed {seed} FAILED ({what}) after {i} passed; its replay is above");
            return Ok(code);
        }
        let done = i + 1;
        let rate = done as f64 * 60.0 / began.elapsed().as_secs_f64();
        println!(
            "seed {seed}: {what}: passed in {:.1} s ({done}/{count}, {rate:.1} seeds/min); \
             replay: {replay}",
            t.elapsed().as_secs_f64()
        );
    }
    let secs = began.elapsed().as_secs_f64();
    println!(
        "sweep: {count} seeds passed in {secs:.1} s: {:.1} seeds per minute",
        f64::from(count) * 60.0 / secs
    );
    Ok(ExitCode::SUCCESS)
}

/// The scenario seed `seed` draws for a sweep: small, every fault mixed in
/// sometimes.
fn drawn(base: &ClusterArgs, seed: u64) -> ClusterArgs {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5157_eeb0_5eed);
    let mut a = base.clone();
    a.sweep = None;
    a.quiet = true;
    a.seed = Some(seed);
    a.nodes = rng.random_range(3..=7);
    a.keys = rng.random_range(100..=400);
    a.kills = rng.random_range(0..=2);
    a.partition = rng.random_bool(0.5);
    a.drop = [0.0, 0.0, 0.1, 0.2][rng.random_range(0..4)];
    a.pause = u32::from(rng.random_bool(0.3));
    a.flap = base.net && rng.random_bool(0.3);
    a
}

fn scenario_words(a: &ClusterArgs) -> String {
    let mut s = format!("{} nodes, {} keys, {} kill(s)", a.nodes, a.keys, a.kills);
    if a.partition {
        s.push_str(", partition");
    }
    if a.drop > 0.0 {
        let _ = write!(s, ", drop {}", a.drop);
    }
    if a.pause > 0 {
        let _ = write!(s, ", {} paused", a.pause);
    }
    if a.flap {
        s.push_str(", flap");
    }
    s
}

pub(crate) async fn run(args: ClusterArgs) -> Result<ExitCode> {
    if let Some(count) = args.sweep {
        return sweep(args, count).await;
    }
    let seed = args.seed.unwrap_or_else(clock_seed);
    let (n, keys) = (args.nodes as usize, args.keys as usize);
    if args.kills >= args.nodes {
        bail!(
            "--kills {} must leave a node alive (--nodes {})",
            args.kills,
            args.nodes
        );
    }
    if args.pause >= args.nodes {
        bail!(
            "--pause {} must leave a node running (--nodes {})",
            args.pause,
            args.nodes
        );
    }
    if args
        .node_cmd
        .as_deref()
        .is_some_and(|c| c.split_whitespace().next().is_none())
    {
        bail!("--node-cmd is empty: give the program and its arguments");
    }
    if args.flap && !args.net {
        bail!("--flap takes a host's link down: it needs --net");
    }
    if let Some((node, _)) = args.skews.iter().find(|(node, _)| *node >= n) {
        bail!("--skew {node}=…: there is no node {node} among {n}");
    }
    descriptors(n)?;
    let faketime = match args.skews.is_empty() {
        true => None,
        false => Some(libfaketime()?),
    };
    let plan = Plan::new(seed, n, keys, args.kills as usize, args.partition);
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    if args.net && under_dev_shm(&parent) {
        bail!(
            "--net: the lab's hosts have a /dev/shm of their own, so its nodes would not see \
             their directories in {}: give --dir (or TMPDIR) a place outside /dev/shm",
            parent.display()
        );
    }
    std::fs::create_dir_all(&parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let dir = tempfile::Builder::new()
        .prefix(&format!("test-cluster-{seed}-"))
        .tempdir_in(&parent)
        .with_context(|| format!("cannot create a run directory in {}", parent.display()))?;
    let replay = replay_command(&args, seed);
    let lab = match args.net {
        true => Some(crate::netlab::lab(args.nodes).await?),
        false => None,
    };
    if let Some(lab) = &lab {
        for (node, secs) in &args.skews {
            lab.clock_offset(multinode_wire::NodeId(*node as u64), *secs)?;
        }
    }
    let quiet = args.quiet;
    let say = |line: &str| {
        if !quiet {
            println!("{line}");
        }
    };
    say(&format!(
        "test-cluster: {n} nodes, {keys} keys, {} kill(s), drop {}{}{}, seed {seed} (plan {:016x})",
        args.kills,
        args.drop,
        if args.partition { ", partition" } else { "" },
        match &lab {
            Some(l) => format!(
                ", on a network lab ({}/{})",
                l.subnet().network(),
                l.subnet().prefix_len()
            ),
            None => String::new(),
        },
        plan.digest()
    ));
    say(&format!("run directory: {}", dir.path().display()));
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
        under_faketime: Vec::new(),
        lab,
        spawner: None,
        kernel_base: multinode_net::Counters::default(),
        recorder: std::sync::Arc::new(recorder::Recorder::create(dir.path())?),
        incarnations: vec![0; n],
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
    if let Some(spawner) = c.spawner.take() {
        spawner.close().await;
    }
    // Every node process is dead now (or stuck, and then it keeps what it
    // has mapped): libfaketime's files of those it killed go.
    for pid in c.under_faketime.drain(..) {
        if let Err(e) = multinode_net::remove_faketime_names(pid) {
            eprintln!("multinode: libfaketime's files of node process {pid} stay: {e}");
        }
    }
    if alive > 0 && failure.is_none() {
        failure = Some(format!(
            "{alive} node process(es) still alive after the run"
        ));
    }
    if !quiet || failure.is_some() {
        c.print_summary(&failure, alive);
    }
    if let Some(path) = &args.json {
        std::fs::write(path, c.json(&failure, alive, &replay))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    // A sweep's passing seed leaves nothing: its line names its replay,
    // and a sweep of a thousand seeds would otherwise leave a thousand
    // directories nobody was told of.
    if quiet && failure.is_none() && !args.keep {
        let at = dir.path().to_owned();
        if let Err(e) = dir.close() {
            println!("cannot remove the run directory {}: {e}", at.display());
        }
        return Ok(ExitCode::SUCCESS);
    }
    // The timeline, from the history as written, failed runs included.
    let report = c.write_report(seed);
    let kept = dir.keep();
    let code = match &failure {
        None => {
            if args.keep {
                println!("kept: {}", kept.display());
            } else {
                // A passing run keeps only its history and its timeline.
                forget_data(&kept);
            }
            ExitCode::SUCCESS
        }
        Some(cause) => {
            println!("FAILED: {cause}");
            println!("seed: {seed}");
            println!("replay: {replay}");
            println!("logs and data kept in {}", kept.display());
            ExitCode::from(if interrupted { 130 } else { 1 })
        }
    };
    println!(
        "history: {} (multinode check re-judges it)",
        kept.join("history.jsonl").display()
    );
    match report {
        Ok(path) => println!("report: {}", path.display()),
        Err(e) => println!("report: not written: {}", crate::error_line(&e)),
    }
    Ok(code)
}

/// Removes a passing run's node data directories, logs and secret.
fn forget_data(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if name.starts_with("node-") && path.is_dir() {
            let _ = std::fs::remove_dir_all(&path);
        } else if name.ends_with(".log") || name == "cluster.secret" {
            let _ = std::fs::remove_file(&path);
        }
    }
}

impl Conductor {
    /// Draws the history as `report.html` beside it.
    fn write_report(&self, seed: u64) -> Result<PathBuf> {
        self.recorder.flush()?;
        let history = self.recorder.path();
        let text = std::fs::read_to_string(history)
            .with_context(|| format!("cannot read {}", history.display()))?;
        let events = crate::history::parse(&text)?;
        let title = format!(
            "test-cluster, {} nodes, seed {seed}: {}",
            self.args.nodes,
            replay_command(&self.args, seed)
        );
        let page = crate::timeline::render(&title, &events);
        let path = self.dir.join("report.html");
        std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }
}

fn replay_command(a: &ClusterArgs, seed: u64) -> String {
    let prefix =
        std::env::var("MULTINODE_REPLAY").unwrap_or_else(|_| "multinode test-cluster".into());
    let mut s = format!(
        "{prefix} --nodes {} --keys {} --seed {seed} --kills {}",
        a.nodes, a.keys, a.kills
    );
    if a.drop > 0.0 {
        let _ = write!(s, " --drop {}", a.drop);
    }
    if a.partition {
        s.push_str(" --partition");
    }
    if a.net {
        s.push_str(" --net");
    }
    if a.pause > 0 {
        let _ = write!(s, " --pause {}", a.pause);
    }
    if a.flap {
        s.push_str(" --flap");
    }
    if let Some(cmd) = &a.node_cmd {
        let _ = write!(s, " --node-cmd {cmd:?}");
    }
    if a.rate != 100 {
        let _ = write!(s, " --rate {}", a.rate);
    }
    if let Some(ms) = a.round_ms {
        let _ = write!(s, " --round-ms {ms}");
    }
    for (node, secs) in &a.skews {
        let _ = write!(s, " --skew {node}={secs}");
    }
    if let Some(secs) = a.converge_timeout {
        let _ = write!(s, " --converge-timeout {secs}");
    }
    s
}

impl Conductor {
    async fn spawn(&mut self, index: usize, no_join: bool) -> Result<NodeProc> {
        let ctl = self.controller.as_ref().expect("started").local_addr();
        if let Some(words) = self.args.node_cmd.clone() {
            return self.spawn_program(index, no_join, &words).await;
        }
        let mut cmd = match &self.lab {
            Some(lab) => {
                let host = multinode_wire::NodeId(index as u64);
                let mut cmd = lab.command(host, &self.exe)?;
                cmd.arg("node")
                    .arg("--bind")
                    .arg(format!("{}:0", lab.addr(host)?));
                cmd
            }
            None => {
                let mut cmd = tokio::process::Command::new(&self.exe);
                cmd.arg("node");
                cmd
            }
        };
        cmd.arg("--data-dir")
            .arg(self.dir.join(format!("node-{index}")))
            .args(["--round-ms", &self.args.round_ms().to_string()])
            .args(["--seed", &(self.seed ^ (index as u64) << 32).to_string()])
            .env(ENV_ADDR, ctl.to_string())
            .env(ENV_INDEX, index.to_string())
            .env(ENV_NODES, self.args.nodes.to_string())
            .arg("--secret-file")
            .arg(&self.secret)
            .kill_on_drop(true);
        if no_join {
            cmd.arg("--no-join");
        }
        // Three threads a node (the runtime, stdin's reader, the store's
        // writer), run by the thousand: glibc's malloc gives each thread
        // that allocates an arena of its own; one arena for all of them
        // measured 0.1–0.2 MiB less resident memory a node at 1,000 nodes.
        // The caller's own setting wins.
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            cmd.env("MALLOC_ARENA_MAX", "1");
        }
        let skew = self.args.skews.iter().find(|(n, _)| *n == index);
        // On a lab, the lab's clock offset does this.
        let mut skewed = false;
        if let (Some((_, secs)), Some(lib), None) = (skew, &self.faketime, &self.lab) {
            skewed = true;
            // Only the wall clock: timers and timeouts keep real time.
            cmd.env("LD_PRELOAD", lib)
                .env("FAKETIME", format!("{secs:+}s"))
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
                .env("FAKETIME_NO_CACHE", "1");
        }
        let host = multinode_wire::NodeId(index as u64);
        let node = self
            .start(index, host, cmd)
            .await
            .with_context(|| format!("cannot start {}", self.exe.display()))?;
        if let Some(pid) = node.child.id().filter(|_| skewed) {
            self.under_faketime.push(pid);
        }
        Ok(node)
    }

    /// Starts node `index` from `cmd` (stdin and stdout piped, stderr
    /// appended to its log, its own process group): inside its lab host, or
    /// by the spawner.
    async fn start(
        &mut self,
        index: usize,
        host: multinode_wire::NodeId,
        mut cmd: tokio::process::Command,
    ) -> Result<NodeProc> {
        let (child, stdin, stdout) = match &self.lab {
            Some(lab) => {
                cmd.stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(self.log_file(index)?)
                    .process_group(0);
                let mut child = lab.spawn(host, &mut cmd)?;
                let stdin = child.stdin.take().expect("piped").into_owned_fd()?;
                let stdout = child.stdout.take().expect("piped").into_owned_fd()?;
                (NodeChild::Direct(child), stdin, stdout)
            }
            None => {
                if self.spawner.is_none() {
                    self.spawner = Some(crate::spawner::Spawner::start(&self.exe)?);
                }
                let spawner = self.spawner.as_ref().expect("started above");
                let log = self.dir.join(format!("node-{index}.log"));
                let s = spawner.spawn(cmd.as_std(), &log).await?;
                (NodeChild::Spawned(s.handle), s.stdin, s.stdout)
            }
        };
        let stdin = pipe::Sender::from_owned_fd(stdin)?;
        let stdout = pipe::Receiver::from_owned_fd(stdout)?;
        Ok(self.track(index, child, stdin, stdout))
    }

    /// Node `index`'s log file (its stderr), appended to across restarts.
    fn log_file(&self, index: usize) -> Result<std::fs::File> {
        let path = self.dir.join(format!("node-{index}.log"));
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))
    }

    /// Counts a started node process and holds its control pipe, as the
    /// next incarnation of node `index`.
    fn track(
        &mut self,
        index: usize,
        child: NodeChild,
        stdin: pipe::Sender,
        stdout: pipe::Receiver,
    ) -> NodeProc {
        self.started += 1;
        let stdout = BufReader::new(stdout).lines();
        let incarnation = self.incarnations[index];
        self.incarnations[index] += 1;
        NodeProc {
            index,
            incarnation,
            sent: 0,
            digest: None,
            // Past the barrier's own deadline: a JOIN waits for everyone.
            reply_timeout: self.args.barrier_timeout() + Duration::from_secs(10),
            child,
            stdin,
            stdout,
        }
    }

    /// Starts a `--node-cmd` program as node `index`, as the node contract
    /// says: its arguments, `--data-dir`, and the environment.
    async fn spawn_program(
        &mut self,
        index: usize,
        no_join: bool,
        words: &str,
    ) -> Result<NodeProc> {
        let ctl = self.controller.as_ref().expect("started").local_addr();
        let mut words = words.split_whitespace();
        let program = words.next().context("--node-cmd is empty")?;
        let host = multinode_wire::NodeId(index as u64);
        let mut cmd = match &self.lab {
            Some(lab) => {
                let mut cmd = lab.command(host, program)?;
                cmd.env(crate::netlab::ENV_HOST_ADDR, lab.addr(host)?.to_string());
                cmd
            }
            None => tokio::process::Command::new(program),
        };
        cmd.args(words)
            .arg("--data-dir")
            .arg(self.dir.join(format!("node-{index}")))
            .env(ENV_ADDR, ctl.to_string())
            .env(ENV_INDEX, index.to_string())
            .env(ENV_NODES, self.args.nodes.to_string())
            .env("MULTINODE_SECRET_FILE", &self.secret)
            .kill_on_drop(true);
        if no_join {
            cmd.env("MULTINODE_NO_JOIN", "1");
        } else {
            cmd.env_remove("MULTINODE_NO_JOIN");
        }
        self.start(index, host, cmd)
            .await
            .with_context(|| format!("cannot start --node-cmd program {program:?}"))
    }

    /// The first node whose clock is off the cluster's by more than it
    /// takes writes at, or that sees a peer's clock beyond the drift bound
    /// (from each live node's `STATS`), in words.
    async fn clock_cause(&mut self) -> Option<String> {
        // Every node at once, each within 2 s: a wedged node costs 2 s, not
        // 2 s apiece.
        let asked = futures_util::future::join_all(self.nodes.iter_mut().map(|n| async {
            let index = n.index;
            let stats = tokio::time::timeout(Duration::from_secs(2), n.stats_after_failure());
            (index, stats.await.ok().flatten())
        }))
        .await;
        let mut seen = None;
        for (index, stats) in asked {
            let Some(stats) = stats else {
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
                    index,
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
                    index,
                    secs(worst),
                    side(worst),
                    limit.saturating_mul(2) as f64 / 1000.0
                ));
            }
        }
        seen
    }

    fn say(&self, phase: &str, what: &str) {
        if self.args.quiet {
            return;
        }
        println!(
            "[{:>6.2}s] {phase:<9} {what}",
            self.t0.elapsed().as_secs_f64()
        );
    }

    /// Records a fault in the history.
    fn nemesis(&self, f: &str, value: serde_json::Value) {
        self.recorder.record(&crate::history::Event::Fault {
            f: f.into(),
            value,
            time_ns: self.recorder.now(),
        });
    }

    async fn begin(&mut self) -> Result<Instant> {
        self.base = try_join_all(self.nodes.iter_mut().map(NodeProc::sent)).await?;
        self.kernel_base = self.kernel().await?;
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
        self.recorder.record(&crate::history::Event::Phase {
            name: name.into(),
            time_ns: self.recorder.now(),
        });
        let kernel = match self.lab {
            Some(_) => Some(self.kernel().await?.since(&self.kernel_base)),
            None => None,
        };
        self.say(name, &format!("{result} ({:.2} s)", took.as_secs_f64()));
        self.phases.push(Phase {
            name,
            took,
            converge,
            frames,
            bytes,
            writes: self.history.acked.len() - self.acked_base,
            result,
            kernel,
        });
        Ok(())
    }

    async fn all(&mut self, line: &str) -> Result<()> {
        try_join_all(self.nodes.iter_mut().map(|n| n.call(line))).await?;
        Ok(())
    }

    /// Applies the drop and partition settings to `nodes`: a partition is
    /// each side cutting its links to the other. On a lab the kernel's rules
    /// hold for every host, restarted or not: they are made once.
    async fn faults(&mut self, only: Option<&[usize]>) -> Result<()> {
        if only.is_none() {
            let by = if self.lab.is_some() { "kernel" } else { "node" };
            if self.args.drop > 0.0 {
                self.nemesis("drop", serde_json::json!({"p": self.args.drop, "by": by}));
            }
            if let Some(side) = &self.plan.side {
                let n = self.args.nodes as usize;
                let (a, b): (Vec<usize>, Vec<usize>) = (0..n).partition(|i| side.contains(i));
                self.nemesis("partition", serde_json::json!({"groups": [a, b], "by": by}));
            }
        }
        if self.lab.is_some() {
            return match only {
                None => self.lab_faults().await,
                Some(_) => Ok(()),
            };
        }
        let side = self.plan.side.clone();
        let n = self.nodes.len();
        for node in &mut self.nodes {
            if only.is_some_and(|o| !o.contains(&node.index)) {
                continue;
            }
            if self.args.drop > 0.0 {
                node.call(&format!("DROP {}", self.args.drop))
                    .await
                    .context(IN_NODE_FAULTS)?;
            }
            if let Some(side) = &side {
                let mine = side.contains(&node.index);
                let others: Vec<String> = (0..n)
                    .filter(|i| side.contains(i) != mine)
                    .map(|i| i.to_string())
                    .collect();
                node.call(&format!("CUT {}", others.join(" ")))
                    .await
                    .context(IN_NODE_FAULTS)?;
            }
        }
        Ok(())
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
                Ok(Some(_)) => {
                    self.reaped += 1;
                    // Its pid may be anyone's now: the lab, going away,
                    // signals only the processes it still holds.
                    if let Some(lab) = &self.lab {
                        lab.reaped(multinode_wire::NodeId(n.index as u64));
                    }
                }
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
                kernel: None,
            });
            self.say("stop", &self.phases.last().expect("pushed").result.clone());
        }
        alive
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::default_round_ms;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: super::ClusterArgs,
    }

    fn converge_timeout(argv: &[&str]) -> f64 {
        let argv = std::iter::once("test-cluster").chain(argv.iter().copied());
        Cli::try_parse_from(argv)
            .expect("parses")
            .args
            .converge_timeout()
    }

    #[test]
    fn the_converge_deadline_is_longer_where_the_kernel_drops_packets() {
        assert_eq!(converge_timeout(&[]), 20.0);
        // Frames the sender drops: TCP itself loses nothing.
        assert_eq!(converge_timeout(&["--drop", "0.3"]), 20.0);
        assert_eq!(converge_timeout(&["--net", "--drop", "0.3"]), 60.0);
        assert_eq!(converge_timeout(&["--net"]), 20.0);
        let given = ["--net", "--drop", "0.3", "--converge-timeout", "5"];
        assert_eq!(converge_timeout(&given), 5.0);
        // 1,000 nodes at rounds of 5 s: 40 of them.
        assert_eq!(
            converge_timeout(&["--nodes", "1000", "--round-ms", "5000"]),
            200.0
        );
    }

    #[test]
    fn the_default_round_keeps_an_idle_clusters_load_flat_and_scales_with_cores() {
        // What an idle cluster costs a second: N nodes' frames, each worth
        // N + 400 list entries, per round.
        let load = |n: u64, cores: u64| (n * (n + 400)) as f64 / default_round_ms(n, cores) as f64;
        let at_1000 = load(1000, 2);
        for n in [128, 256, 512, 2000] {
            let l = load(n, 2);
            assert!(
                (l / at_1000 - 1.0).abs() < 0.01,
                "{n} nodes: {l} against {at_1000}"
            );
        }
        assert_eq!(default_round_ms(1000, 2), 10_000);
        // Twice the cores, rounds twice as often.
        assert_eq!(default_round_ms(1000, 4), 5_000);
        // Small clusters at the floor, huge ones at the ceiling.
        assert_eq!(default_round_ms(7, 2), 100);
        assert_eq!(default_round_ms(5, 64), 100);
        assert_eq!(default_round_ms(4096, 2), 60_000);
        assert_eq!(default_round_ms(1000, 0), default_round_ms(1000, 1));
    }
}
