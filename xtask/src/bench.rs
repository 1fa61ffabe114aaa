//! `cargo xtask bench`: runs every crate's benchmarks, then prints the
//! figures they recorded as one table (the contract of shared/LIMITS.md).

use std::fmt::Write as _;
use std::fs;
use std::process::Command;

use anyhow::{Context, Result};
use multinode_benchkit::{Better, Figure};

/// Options of `cargo xtask bench`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// A short smoke run (fewer repetitions): what CI can afford.
    #[arg(long)]
    quick: bool,
    /// Also write the table to docs/benchmarks.md with the date and machine.
    #[arg(long)]
    record: bool,
    /// Only the benchmarks of this package (e.g. multinode-wire).
    #[arg(long, short)]
    package: Option<String>,
}

pub(crate) fn run(args: &Args) -> Result<()> {
    let out_dir = crate::root().join("target").join("bench");
    fs::create_dir_all(&out_dir)?;
    let results = out_dir.join("results.jsonl");
    let _ = fs::remove_file(&results);
    let results_str = results.to_string_lossy().into_owned();

    let mut cmd = vec!["bench", "--locked", "--bench", "*"];
    match &args.package {
        Some(p) => cmd.extend(["--package", p.as_str()]),
        None => cmd.push("--workspace"),
    }
    let mut env = vec![("MULTINODE_BENCH_OUT", results_str.as_str())];
    if args.quick {
        env.push(("MULTINODE_BENCH_QUICK", "1"));
    }
    crate::cargo("bench", &cmd, &env)?;

    let text = fs::read_to_string(&results)
        .with_context(|| format!("no figures recorded in {}", results.display()))?;
    let figures = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<Vec<Figure>, _>>()
        .context("malformed line in results.jsonl")?;

    let table = table(&figures);
    println!("\n{table}");
    let missed = figures.iter().filter(|f| !f.meets_target()).count();
    println!(
        "{} figures, {} meet their target, {missed} miss it{}",
        figures.len(),
        figures.len() - missed,
        if args.quick {
            " (quick run: indicative only)"
        } else {
            ""
        }
    );
    fs::write(out_dir.join("summary.md"), &table)?;
    if args.record {
        let doc = format!(
            "# Benchmarks\n\nLatest `cargo xtask bench{}` run: {}, on {}.\n\n\
             Each figure is measured beside its baseline in the same run; `ratio = ours / baseline`. \
             See `shared/LIMITS.md` for the contract. A ✗ marks a figure that misses its target.\n\n{table}",
            if args.quick { " --quick" } else { "" },
            today(),
            machine()
        );
        fs::write(crate::root().join("docs").join("benchmarks.md"), doc)?;
        println!("wrote docs/benchmarks.md");
    }
    Ok(())
}

fn table(figures: &[Figure]) -> String {
    let mut t = String::from(
        "| group | name | ours | baseline | baseline is | ratio | target | |\n|---|---|---:|---:|---|---:|---:|---|\n",
    );
    for f in figures {
        let target = match (f.target, f.better) {
            (Some(x), Better::Higher) => format!("≥ {x}"),
            (Some(x), Better::Lower) => format!("≤ {x}"),
            (None, _) => "—".into(),
        };
        let _ = writeln!(
            t,
            "| {} | {} | {:.3} {} | {:.3} {} | {} | {:.3} | {} | {} |",
            f.group,
            f.name,
            f.ours,
            f.unit,
            f.baseline,
            f.unit,
            f.baseline_name,
            f.ratio,
            target,
            if f.meets_target() { "✓" } else { "✗" }
        );
    }
    t
}

fn today() -> String {
    command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_else(|| "unknown date".into())
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let os = command_line("uname", &["-sr"]).unwrap_or_else(|| std::env::consts::OS.into());
    format!("{os}, {cores} cores, {cpu}")
}

fn command_line(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
