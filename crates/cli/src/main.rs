//! `multinode`: the kit's libraries put to work from a shell.
//!
//! - `multinode barrier serve --nodes N`: a barrier controller on loopback;
//!   prints `LISTENING <addr>` first, serves until every node has left or a
//!   signal arrives, and exits 0 only if every barrier passed.
//! - `multinode barrier pass LABEL...`: joins as the node the environment
//!   names (ours, or mpirun's, srun's or an Indexed Job's rank) and passes
//!   the barriers in order.
//! - `multinode check-node -- PROGRAM ARGS...`: the node contract, checked
//!   against a few processes of any program, as a table of requirements.
//! - `multinode check PATH`: judges a kept run's `history.jsonl` again,
//!   offline, to the verdict the run reached.
//! - `multinode run -n N -- CMD ARGS...`: like `mpirun` for cluster tests;
//!   starts a controller and N copies of CMD with `MULTINODE_BARRIER_ADDR`,
//!   `MULTINODE_NODE_INDEX` and `MULTINODE_NODES` set, prints a per-node
//!   summary, and exits 0 only if every child exited 0 and no barrier failed.
//!   With `--net`, each copy runs on its own host of a network lab; with
//!   `--faults`, copies may ask the controller for faults.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};

mod check_node;
mod cluster;
mod control;
mod control_pipe;
mod faulty;
mod history;
mod netlab;
mod node;
mod reads;
mod scenario;
mod sim_sweep;
mod spawner;
mod timeline;
use clap::{Args, Parser, Subcommand};
use multinode_barrier::{Config, Controller, LaunchReport, Launcher, OutputMode, describe};

#[derive(Parser)]
#[command(
    name = "multinode",
    version,
    about = "Build and test small clusters of real processes"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Out-of-process barriers.
    Barrier {
        #[command(subcommand)]
        cmd: BarrierCmd,
    },
    /// Launch N copies of a command that meet at barriers, and report.
    Run(RunArgs),
    /// One LWW gossip node over TCP, driven by lines on stdin.
    Node(node::NodeArgs),
    /// Start a real cluster of node processes, run a seeded scenario with
    /// kills, and check that nothing acknowledged was lost.
    TestCluster(cluster::ClusterArgs),
    /// Check that a program keeps the node contract (docs/node-contract.md):
    /// a table of requirements, exit 0 only if all pass.
    CheckNode(check_node::CheckNodeArgs),
    /// Run many seeds of the deterministic LWW simulator, each a drawn
    /// scenario of writes under faults, checked for agreement on every
    /// key's last write; stops at the first failing seed with its replay.
    SimSweep(sim_sweep::SimSweepArgs),
    /// Check a run's history again, offline: `history.jsonl`, or the run
    /// directory that holds it. Exits 0 if it passes, 1 if not.
    Check(CheckArgs),
    /// test-cluster's helper that starts node processes (stdin is its
    /// socket to the conductor).
    #[command(hide = true)]
    Spawner,
}

#[derive(Args)]
struct CheckArgs {
    /// A `history.jsonl`, or a run directory that holds one.
    path: std::path::PathBuf,
}

#[derive(Subcommand)]
enum BarrierCmd {
    /// Serve the barrier line protocol until every node has left.
    Serve(ServeArgs),
    /// Join a run as one node and pass the named barriers in order, then
    /// leave: a job script's barriers, under any launcher.
    Pass(PassArgs),
}

#[derive(Args)]
struct PassArgs {
    /// The barriers, in order.
    #[arg(required = true, num_args = 1..)]
    labels: Vec<String>,
    /// Seconds each barrier may take.
    #[arg(long, default_value_t = 30.0, value_parser = positive_secs)]
    timeout: f64,
}

#[derive(Args)]
struct ServeArgs {
    /// How many nodes every barrier waits for (node ids 0..N).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    nodes: u32,
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: SocketAddr,
    /// Seconds a barrier may stay open after its first arrival.
    #[arg(long, default_value_t = 30.0, value_parser = positive_secs)]
    timeout: f64,
}

#[derive(Args)]
struct RunArgs {
    /// How many copies to launch.
    #[arg(short = 'n', long = "nodes", value_parser = clap::value_parser!(u32).range(1..=1024))]
    nodes: u32,
    /// Seconds a barrier may stay open after its first arrival.
    #[arg(long, default_value_t = 30.0, value_parser = positive_secs)]
    timeout: f64,
    /// Puts each copy on its own host of a network lab (a network
    /// namespace with an address in 198.18.0.0/15), its address in
    /// `MULTINODE_HOST_ADDR`; needs root, or unprivileged user namespaces.
    #[arg(long)]
    net: bool,
    /// Accepts conductor lines from the copies: PAUSE, RESUME, KILL and
    /// RESTART always; PARTITION, CUT, HEAL, DROP, BANDWIDTH and FLAP with
    /// --net (see docs/barrier-protocol.md).
    #[arg(long)]
    faults: bool,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true, num_args = 1..)]
    command: Vec<String>,
}

pub(crate) fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 86_400.0 => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds in (0, 86400]")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.cmd, Cmd::Spawner) {
        // Threads, no runtime: it blocks on its socket and on its children.
        return spawner::serve().unwrap_or_else(|e| {
            eprintln!("multinode spawner: {}", error_line(&e));
            ExitCode::from(2)
        });
    }
    if matches!(&cli.cmd, Cmd::Run(RunArgs { net: true, .. }))
        || matches!(&cli.cmd, Cmd::TestCluster(a) if a.net)
    {
        netlab::reexec_in_user_namespace();
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("multinode: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = rt.block_on(async {
        match cli.cmd {
            Cmd::Barrier {
                cmd: BarrierCmd::Serve(args),
            } => serve(args).await,
            Cmd::Barrier {
                cmd: BarrierCmd::Pass(args),
            } => pass(args),
            Cmd::Run(args) => run(args).await,
            Cmd::TestCluster(args) => cluster::run(args).await,
            Cmd::Check(args) => check(args),
            Cmd::SimSweep(args) => sim_sweep::run(args),
            Cmd::CheckNode(args) => check_node::run(args).await,
            Cmd::Node(args) => {
                init_logging();
                node::run(args).await
            }
            Cmd::Spawner => unreachable!("served before the runtime starts"),
        }
    });
    // A stdin that is not a pipe (a terminal, a file) is read by a blocking
    // thread that cannot be cancelled: waiting for it would hang a node
    // stopped by a signal until input arrived.
    rt.shutdown_background();
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("multinode: {}", error_line(&e));
            ExitCode::from(2)
        }
    }
}

/// An error and its causes on one line, each cause said once: a cause whose
/// text its outer error already printed (thiserror's `"store: {0}"` over a
/// `#[from]` source, say) is not repeated.
pub(crate) fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace(['\n', '\r'], " ")
}

/// Logs to stderr at the level in `MULTINODE_LOG` (default `info`).
fn init_logging() {
    let level = std::env::var("MULTINODE_LOG")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(tracing::Level::INFO);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

/// Resolves on Ctrl-C or (on unix) SIGTERM.
pub(crate) async fn interrupted() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return "interrupted",
                _ = term.recv() => return "terminated",
            }
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    "interrupted"
}

async fn serve(args: ServeArgs) -> Result<ExitCode> {
    let mut config = Config::new(args.nodes);
    config.timeout = Duration::from_secs_f64(args.timeout);
    let controller = Controller::bind(args.bind, config)
        .await
        .with_context(|| format!("cannot listen on {}", args.bind))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "LISTENING {}", controller.local_addr())?;
    out.flush()?;
    drop(out);
    let why = tokio::select! {
        _ = controller.all_left() => "every node left",
        why = interrupted() => why,
    };
    let summary = controller.shutdown().await;
    eprintln!(
        "multinode barrier serve: {why}; {} barrier(s) passed, {} failed",
        summary.passed, summary.failed
    );
    for (i, rec) in summary.nodes.iter().enumerate() {
        if let Some((label, cause)) = &rec.first_failure {
            eprintln!("  node {i}: first failure at {label}: {cause}");
        }
    }
    Ok(if summary.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The largest history `check` reads.
const MAX_HISTORY: u64 = 4 << 30;

/// `check`: the same verdict as the run's, from its history file alone.
fn check(args: CheckArgs) -> Result<ExitCode> {
    let path = match args.path.is_dir() {
        true => args.path.join("history.jsonl"),
        false => args.path,
    };
    let len = std::fs::metadata(&path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    if len > MAX_HISTORY {
        bail!(
            "{}: {len} bytes is more than the {MAX_HISTORY} a history may hold",
            path.display()
        );
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let events = history::parse(&text).with_context(|| format!("{}", path.display()))?;
    let verdict = history::check(&events);
    println!(
        "{}: {} record(s); {}",
        path.display(),
        events.len(),
        if verdict.passed() { "PASSED" } else { "FAILED" }
    );
    println!("{verdict}");
    Ok(if verdict.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `barrier pass`: the identity comes from the environment, ours or an
/// existing launcher's (see `multinode_barrier::INDEX_VARS`).
fn pass(args: PassArgs) -> Result<ExitCode> {
    let (addr, id) = multinode_barrier::env_identity()?;
    let mut node = multinode_barrier::BlockingBarrierNode::connect(addr, Some(id))
        .with_context(|| format!("cannot join the controller at {addr} as node {id}"))?;
    let timeout = Duration::from_secs_f64(args.timeout);
    for label in &args.labels {
        node.barrier(label, Some(timeout))?;
        println!("node {} of {} passed {label}", node.node(), node.nodes());
    }
    node.leave()?;
    Ok(ExitCode::SUCCESS)
}

async fn run(args: RunArgs) -> Result<ExitCode> {
    let Some((program, rest)) = args.command.split_first() else {
        bail!("no command given after --");
    };
    let mut launcher = Launcher::new(program, args.nodes)
        .args(rest)
        .timeout(Duration::from_secs_f64(args.timeout))
        .output(OutputMode::Prefixed);
    // Held until the launch is over: dropping it tears the lab down.
    let lab = match args.net {
        true => Some(netlab::lab(args.nodes).await?),
        false => None,
    };
    if let Some(lab) = &lab {
        launcher = netlab::on_lab(launcher, lab)?;
    }
    if args.faults {
        let network = lab
            .clone()
            .map(|l| Arc::new(netlab::LabConductor(l)) as Arc<dyn multinode_barrier::Conductor>);
        launcher = launcher.faults(network);
    }
    let launch = launcher.run();
    let report = tokio::select! {
        report = launch => report.with_context(|| format!("cannot launch {program:?}"))?,
        why = interrupted() => {
            // Dropping the launch above killed and reaped every child.
            eprintln!("multinode run: {why}; every node was stopped");
            return Ok(ExitCode::from(130));
        }
    };
    print_report(&report);
    Ok(if report.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_report(report: &LaunchReport) {
    println!("node  exit                   barriers  first failure");
    for n in &report.nodes {
        let failure = match &n.first_failure {
            Some((label, cause)) => format!("{label}: {cause}"),
            None => "-".into(),
        };
        println!(
            "{:<5} {:<22} {:<9} {failure}",
            n.node.to_string(),
            describe(n.status),
            n.passed
        );
    }
    let ok = report.nodes.iter().filter(|n| n.status.success()).count();
    println!(
        "{} of {} nodes exited 0; {} barrier(s) passed, {} failed: {}",
        ok,
        report.nodes.len(),
        report.barriers_passed,
        report.barriers_failed,
        if report.success() { "OK" } else { "FAILED" }
    );
}
