//! Seeds per minute of the two sweeps, each beside the same seeds run the
//! plain way, one invocation of their replay command each (a shell loop):
//!
//! - `multinode test-cluster --sweep K`: small drawn scenarios of real node
//!   processes (3 to 7 nodes, 5 on average, every fault mixed in);
//! - `multinode sim-sweep --count K --replicas 100`: the deterministic
//!   simulator with faults.
//!
//! The ratio is the sweep's own cost per seed: 1.0 means it adds nothing
//! to what the seeds themselves take.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use multinode_benchkit::{Better, interleaved, quick, record};

const EXE: &str = env!("CARGO_BIN_EXE_multinode");

/// Runs `multinode ARGS`, failing the bench if it fails; returns stdout.
/// A test-cluster run keeps its history and timeline when it passes: the
/// bench's runs keep them under `runs`, which the bench removes.
fn multinode(runs: &Path, args: &[&str]) -> String {
    let mut cmd = Command::new(EXE);
    cmd.args(args);
    if args.first() == Some(&"test-cluster") {
        cmd.arg("--dir").arg(runs);
    }
    let out = cmd.output().expect("multinode runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "multinode {} failed: {}\n{stdout}",
        args.join(" "),
        out.status
    );
    stdout
}

/// Seeds per minute of `run`, which runs `seeds` seeds.
fn per_minute(seeds: usize, run: impl FnOnce()) -> f64 {
    let began = Instant::now();
    run();
    seeds as f64 * 60.0 / began.elapsed().as_secs_f64()
}

/// The replay commands a sweep printed for its passing seeds.
fn replays(stdout: &str) -> Vec<Vec<String>> {
    stdout
        .lines()
        .filter_map(|l| l.split_once("; replay: multinode ").map(|(_, r)| r))
        .map(|r| r.split_whitespace().map(str::to_owned).collect())
        .collect()
}

fn main() {
    let (seeds, reps) = if quick() { (3, 1) } else { (10, 3) };
    let dir = tempfile::tempdir().expect("tempdir");
    let multinode = |args: &[&str]| multinode(dir.path(), args);
    let first = "7000";
    let count = seeds.to_string();

    // The sweep prints each seed's replay command: those are the baseline.
    let probe = multinode(&["test-cluster", "--sweep", &count, "--seed", first]);
    let commands = replays(&probe);
    assert_eq!(commands.len(), seeds, "one replay line a seed:\n{probe}");
    println!("sweep seeds: {commands:?}");
    let (ours, base) = interleaved(
        reps,
        || {
            per_minute(seeds, || {
                multinode(&["test-cluster", "--sweep", &count, "--seed", first]);
            })
        },
        || {
            per_minute(seeds, || {
                for c in &commands {
                    let args: Vec<&str> = c.iter().map(String::as_str).collect();
                    multinode(&args);
                }
            })
        },
    );
    record(
        "cli",
        "sweep_seeds_per_minute",
        "seeds/min",
        ours,
        base,
        "the same seeds, one test-cluster invocation each (3-7 nodes, 5 on average)",
        Better::Higher,
        None,
    );

    let (ours, base) = interleaved(
        reps,
        || {
            per_minute(seeds, || {
                multinode(&[
                    "sim-sweep",
                    "--count",
                    &count,
                    "--seed",
                    first,
                    "--replicas",
                    "100",
                ]);
            })
        },
        || {
            per_minute(seeds, || {
                for i in 0..seeds {
                    let seed = (7000 + i).to_string();
                    multinode(&[
                        "sim-sweep",
                        "--count",
                        "1",
                        "--seed",
                        &seed,
                        "--replicas",
                        "100",
                    ]);
                }
            })
        },
    );
    record(
        "cli",
        "sim_sweep_seeds_per_minute_n100",
        "seeds/min",
        ours,
        base,
        "the same seeds, one sim-sweep --count 1 invocation each",
        Better::Higher,
        None,
    );
}
