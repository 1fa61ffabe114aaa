//! `cargo xtask <cmd>`: the workspace's automation, in Rust so it runs
//! wherever cargo does.

mod bench;

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
    /// Exactly what CI checks: fmt, clippy -D warnings, tests, docs -D warnings.
    Ci,
    /// Run every crate's benchmarks and print the figures against their baselines.
    Bench(bench::Args),
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Ci => ci(),
        Cmd::Bench(args) => bench::run(&args),
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

fn ci() -> Result<()> {
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
    cargo("test", &["test", "--workspace", "--locked"], &[])?;
    cargo(
        "doc",
        &["doc", "--workspace", "--no-deps", "--locked"],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;
    eprintln!("==> ci: all checks passed");
    Ok(())
}
