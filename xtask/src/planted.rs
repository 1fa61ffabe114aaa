//! `cargo xtask planted`: proves the checker by planted bugs. Each known
//! defect of the Python example node (`--plant BUG`) runs through
//! test-cluster, seed after seed, until the run fails; a bug no seed
//! catches is a hole in the scenario, and this command fails.

use std::process::Stdio;

use anyhow::{Result, bail};

/// The defects `examples/python-node/node.py --plant` knows, and what each
/// breaks.
pub(crate) const BUGS: [(&str, &str); 5] = [
    (
        "ack-before-durable",
        "acknowledges, writes its log 300 ms later",
    ),
    (
        "ties-toward-local",
        "ignores the node id in versions; a tie keeps its own",
    ),
    (
        "collect-tombstones-at-once",
        "a delete forgets the key at once",
    ),
    (
        "forget-log-tail",
        "on restart ignores the last 5 log records",
    ),
    (
        "merge-keeps-first",
        "never replaces a key it holds by a peer's",
    ),
];

/// Seeds tried per bug before it counts as not caught.
const SEEDS: u64 = 10;

fn run(plant: Option<&str>, seed: u64) -> Result<(bool, String)> {
    let node = crate::root().join("examples/python-node/node.py");
    let mut cmd_line = format!("python3 {}", node.display());
    if let Some(bug) = plant {
        cmd_line.push_str(&format!(" --plant {bug}"));
    }
    let seed = seed.to_string();
    let args = [
        "--node-cmd",
        cmd_line.as_str(),
        "--nodes",
        "5",
        "--keys",
        "300",
        "--kills",
        "1",
        "--partition",
        "--converge-timeout",
        "5",
        "--seed",
        seed.as_str(),
    ];
    let out = crate::test_cluster_command(&args)?
        .stderr(Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let verdict = text
        .lines()
        .find(|l| l.starts_with("FAILED: ") || l.starts_with("PASSED "))
        .unwrap_or("(no verdict)")
        .to_owned();
    Ok((out.status.success(), verdict))
}

pub(crate) fn planted() -> Result<()> {
    // The control: without a plant the node passes, so a catch below is the
    // bug's, not the scenario's.
    let (passed, verdict) = run(None, 1)?;
    if !passed {
        bail!("the unplanted node fails (seed 1): {verdict}");
    }
    eprintln!("==> planted: control (no plant, seed 1) passes");
    let mut rows = Vec::new();
    for (bug, what) in BUGS {
        let mut caught = None;
        for seed in 1..=SEEDS {
            let (passed, verdict) = run(Some(bug), seed)?;
            eprintln!("==> planted: {bug}, seed {seed}: {verdict}");
            if !passed {
                caught = Some((seed, verdict));
                break;
            }
        }
        rows.push((bug, what, caught));
    }
    println!();
    println!(
        "{:<28} {:<10} {:<6} first failure",
        "planted bug", "caught", "seeds"
    );
    for (bug, _, caught) in &rows {
        match caught {
            Some((seed, verdict)) => {
                let v: String = verdict
                    .trim_start_matches("FAILED: ")
                    .chars()
                    .take(90)
                    .collect();
                println!("{bug:<28} {:<10} {seed:<6} {v}", "yes");
            }
            None => println!("{bug:<28} {:<10} {:<6} -", "NO", format!(">{SEEDS}")),
        }
    }
    let missed: Vec<&str> = rows.iter().filter(|r| r.2.is_none()).map(|r| r.0).collect();
    if !missed.is_empty() {
        bail!("not caught within {SEEDS} seeds: {}", missed.join(", "));
    }
    println!("every planted bug was caught");
    Ok(())
}
