//! `cargo xtask <cmd>`: the workspace's automation, in Rust so it runs
//! wherever cargo does.

mod bench;
mod planted;
mod sans_io;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "multinode workspace automation")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Exactly what CI checks: the sans-IO rule, fmt, clippy -D warnings,
    /// tests, docs -D warnings, a short test-cluster.
    Ci,
    /// The workspace's tests alone (`cargo test --workspace --locked`), with
    /// one closing line of totals: what a CI matrix runs on each platform.
    Test,
    /// Run every crate's benchmarks and print the figures against their baselines.
    Bench(bench::Args),
    /// A long kill-during-write campaign on multinode-filestore: each cycle
    /// starts 4 writer processes on one store, SIGKILLs each at a seeded
    /// random instant, and checks the store. MULTINODE_SEED replays one.
    KillFuzz {
        /// Cycles (waves) to run; each kills 4 writers.
        #[arg(long, default_value_t = 250)]
        cycles: usize,
    },
    /// Build `multinode`, then run `multinode test-cluster` with these
    /// arguments: a real cluster of node processes, a seeded scenario with
    /// kills, and a check that nothing acknowledged was lost. Logs go to
    /// `target/test-cluster/`. See `multinode test-cluster --help`.
    TestCluster {
        /// Passed on, e.g. `--nodes 16 --loss 0.2 --seed 7`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build `multinode`, then run `multinode sim-sweep --count N`: N seeds
    /// of the deterministic LWW simulator with faults, each checked; the
    /// first failing seed is printed with its trace hash and replay.
    SimSweep {
        /// Seeds to run.
        count: u64,
        /// Passed on, e.g. `--seed 7 --replicas 50`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Prove the checker: run test-cluster against each planted bug of the
    /// Python example node until it is caught, and report seeds needed.
    Planted,
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Ci => ci(),
        Cmd::Test => {
            let (passed, failed) = cargo_test(&["test", "--workspace", "--locked"])?;
            println!("tests: {passed} passed, {failed} failed");
            Ok(())
        }
        Cmd::Bench(args) => bench::run(&args),
        Cmd::TestCluster { args } => test_cluster(&args),
        Cmd::SimSweep { count, args } => sim_sweep(count, &args),
        Cmd::Planted => planted::planted(),
        Cmd::KillFuzz { cycles } => {
            let cycles = cycles.to_string();
            cargo(
                "kill-fuzz",
                &[
                    "test",
                    "--locked",
                    "-p",
                    "multinode-filestore",
                    "--test",
                    "processes",
                    "--",
                    "--cycles",
                    &cycles,
                ],
                &[],
            )
        }
    }
}

/// The workspace root (xtask lives one level below it).
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
        .to_path_buf()
}

/// Runs `cargo <args>` at the workspace root with extra environment,
/// failing with the step's name if it fails.
pub(crate) fn cargo(step: &str, args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("==> {step}: cargo {}", args.join(" "));
    let started = std::time::Instant::now();
    let status = Command::new(cargo)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(root())
        .status()
        .with_context(|| format!("cannot start cargo for {step}"))?;
    if !status.success() {
        bail!("{step} failed ({status})");
    }
    eprintln!("==> {step}: ok in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Where cargo puts build output.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map_or_else(|| root().join("target"), |t| root().join(t))
}

/// Builds `multinode` (release: a cluster of hundreds of node processes
/// on two cores needs optimised nodes) and returns the `multinode
/// test-cluster` command.
fn test_cluster_command(args: &[&str]) -> Result<Command> {
    let exe = multinode_release()?;
    let target = target_dir();
    let mut cmd = Command::new(&exe);
    cmd.arg("test-cluster")
        .arg("--dir")
        .arg(target.join("test-cluster"))
        .args(args)
        .env("MULTINODE_REPLAY", "cargo xtask test-cluster");
    Ok(cmd)
}

/// Builds `multinode` (release) and returns the path of the binary.
fn multinode_release() -> Result<PathBuf> {
    cargo(
        "build",
        &["build", "--locked", "--release", "-p", "multinode"],
        &[],
    )?;
    Ok(target_dir()
        .join("release")
        .join(format!("multinode{}", std::env::consts::EXE_SUFFIX)))
}

fn sim_sweep(count: u64, args: &[String]) -> Result<()> {
    let exe = multinode_release()?;
    let status = Command::new(&exe)
        .arg("sim-sweep")
        .args(["--count", &count.to_string()])
        .args(args)
        .status()
        .with_context(|| format!("cannot run {}", exe.display()))?;
    if !status.success() {
        bail!("sim-sweep failed ({status})");
    }
    Ok(())
}

fn test_cluster(args: &[String]) -> Result<()> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = test_cluster_command(&args)?;
    let exe = PathBuf::from(cmd.get_program());
    #[cfg(unix)]
    {
        // Become the conductor, so Ctrl-C reaches it and nothing waits
        // in between.
        use std::os::unix::process::CommandExt;
        let err = cmd.exec();
        bail!("cannot run {}: {err}", exe.display());
    }
    #[cfg(not(unix))]
    {
        let status = cmd
            .status()
            .with_context(|| format!("cannot run {}", exe.display()))?;
        if !status.success() {
            bail!("test-cluster failed ({status})");
        }
        Ok(())
    }
}

/// The cargo-deny release CI installs (`.ci/run`, the workflow).
const CARGO_DENY: &str = "0.20.2";

fn ci() -> Result<()> {
    sans_io::check(&root())?;
    deny()?;
    cargo("fmt", &["fmt", "--all", "--check"], &[])?;
    cargo(
        "clippy",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    let (passed, failed) = cargo_test(&["test", "--workspace", "--locked"])?;
    cargo(
        "doc",
        &["doc", "--workspace", "--no-deps", "--locked"],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;
    // A short real cluster: 5 node processes, a kill, a partition that
    // heals, 10% of frames dropped, a fresh seed each run
    // (printed, with the command that replays it, if it fails).
    let status = test_cluster_command(&[
        "--nodes",
        "5",
        "--keys",
        "400",
        "--rate",
        "200",
        "--partition",
        "--drop",
        "0.1",
    ])?
    .status()
    .context("cannot run multinode test-cluster")?;
    if !status.success() {
        bail!("test-cluster failed ({status})");
    }
    // The same on a network lab at 16 nodes: the kernel's partition and
    // 20% packet loss (nftables), a SIGKILL and a restart.
    let status = test_cluster_command(&[
        "--net",
        "--nodes",
        "16",
        "--keys",
        "400",
        "--partition",
        "--loss",
        "0.2",
        "--kills",
        "1",
    ])?
    .status()
    .context("cannot run multinode test-cluster --net")?;
    if !status.success() {
        bail!("test-cluster --net failed ({status})");
    }
    // Short seed sweeps: drawn real-process scenarios, and the simulator
    // with faults at 100 replicas (a fresh first seed each run, printed).
    let status = test_cluster_command(&["--sweep", "4"])?
        .status()
        .context("cannot run multinode test-cluster --sweep")?;
    if !status.success() {
        bail!("test-cluster --sweep failed ({status})");
    }
    sim_sweep(40, &[])?;
    eprintln!("==> ci: all checks passed");
    // One plain closing line with the totals of every test binary.
    println!("tests: {passed} passed, {failed} failed");
    Ok(())
}

/// `cargo deny check` of licenses, duplicate versions and sources (deny.toml
/// says why each exception stands). Advisories need the RustSec database
/// from GitHub, which only the workflow's `deny` job reaches.
fn deny() -> Result<()> {
    let bin = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let found = Command::new(&bin)
        .args(["deny", "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        bail!(
            "cargo-deny is not installed: cargo install cargo-deny --version {CARGO_DENY} --locked \
             (.ci/run does this on a fresh machine)"
        );
    }
    cargo(
        "deny",
        &["deny", "--locked", "check", "licenses", "bans", "sources"],
        &[],
    )
}

/// Runs `cargo test`, echoing its output, and returns the totals summed
/// over every `test result:` line it printed.
fn cargo_test(args: &[&str]) -> Result<(u64, u64)> {
    use std::io::{BufRead, BufReader, Write};
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("==> test: cargo {}", args.join(" "));
    let started = std::time::Instant::now();
    let mut child = Command::new(cargo)
        .args(args)
        .current_dir(root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("cannot start cargo test")?;
    let (mut passed, mut failed) = (0, 0);
    let stdout = child.stdout.take().context("cargo test stdout")?;
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        writeln!(out, "{line}")?;
        if let Some(rest) = line.strip_prefix("test result: ") {
            passed += count(rest, " passed");
            failed += count(rest, " failed");
        }
    }
    drop(out);
    let status = child.wait()?;
    if !status.success() {
        bail!("test failed ({status}): {passed} passed, {failed} failed");
    }
    eprintln!("==> test: ok in {:.1}s", started.elapsed().as_secs_f64());
    Ok((passed, failed))
}

/// The number before `what` in a `test result:` line (`ok. 5 passed; ...`).
fn count(line: &str, what: &str) -> u64 {
    line.split(';')
        .find_map(|part| {
            part.trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ")
                .strip_suffix(what.trim_start())
                .map(str::trim)
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
