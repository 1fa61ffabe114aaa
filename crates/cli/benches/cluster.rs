//! The real TCP node as a user runs it: five `multinode node` processes on
//! loopback, each persisting to its own data directory, driven unpaced by
//! `multinode test-cluster` (no kills, no loss).
//!
//! - Write throughput: writes acknowledged per second across the five
//!   nodes, against the file store alone: five threads in one process, each
//!   putting the same number of writes one at a time into its own store
//!   (the durability every acknowledged write pays, without processes,
//!   control pipes, the replica or gossip).
//! - The same against the file store alone under the load the nodes get:
//!   each store written by as many threads as the conductor keeps writes
//!   in flight at a node, so the store shares its fsyncs as a node does.
//!   It writes each write once where the cluster stores it on every node,
//!   so this one is far below 1 on a small machine; it has no target.
//! - Time to convergence: from the last acknowledged write until every
//!   node reports the same digest, against one gossip round interval
//!   (100 ms), the time a write can wait for the next round.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use multinode_benchkit::{Better, interleaved, quick, record};
use multinode_filestore::{Checkpoint, FileStore, StateStore};

const NODES: usize = 5;
const ROUND_MS: f64 = 100.0;
/// Writes the conductor keeps in flight at each node.
const WINDOW: usize = 8;

/// One cluster run: (writes/s in the write phases, converge ms, writes).
fn cluster(seed: u64, keys: u32) -> (f64, f64, usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_multinode"))
        .args([
            "test-cluster",
            "--nodes",
            "5",
            "--kills",
            "0",
            "--rate",
            "0",
        ])
        .args(["--keys", &keys.to_string(), "--seed", &seed.to_string()])
        .arg("--json")
        .arg(&json)
        .arg("--dir")
        .arg(dir.path())
        .output()
        .expect("multinode runs");
    assert!(
        out.status.success(),
        "test-cluster failed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("report")).expect("JSON");
    let phases = report["phases"].as_array().expect("phases");
    let phase = |name: &str| {
        phases
            .iter()
            .find(|p| p["phase"] == name)
            .unwrap_or_else(|| panic!("no {name} phase"))
    };
    let (mut writes, mut ms) = (0, 0.0);
    for name in ["write", "write-2"] {
        writes += phase(name)["writes"].as_u64().expect("writes") as usize;
        ms += phase(name)["duration_ms"].as_f64().expect("duration");
    }
    let converge = phase("converge")["converge_ms"].as_f64().expect("converge");
    (writes as f64 / (ms / 1000.0), converge, writes)
}

/// The file store alone: `NODES` stores, `per_node` puts each, from
/// `lanes` threads per store, each thread one put at a time. Returns
/// writes/s.
fn stores_alone(dir: &Path, per_node: usize, run: usize, lanes: usize) -> f64 {
    let started = Instant::now();
    std::thread::scope(|s| {
        for n in 0..NODES {
            let path = dir.join(format!("run-{run}-lanes-{lanes}-node-{n}.json"));
            let store = FileStore::<Checkpoint<String>>::open(path).expect("open");
            for lane in 0..lanes {
                let store = store.clone();
                s.spawn(move || {
                    for i in (lane..per_node).step_by(lanes) {
                        let v = Checkpoint {
                            sequence: i as u64 + 1,
                            data: format!("n{n}w{i}"),
                        };
                        store
                            .put(&format!("k{:05}", i % 2000), v)
                            .wait()
                            .expect("put");
                    }
                });
            }
        }
    });
    (NODES * per_node) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let (reps, keys) = if quick() { (1, 400) } else { (3, 2000) };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut converge = Vec::new();
    let mut seed = 0;
    let mut run = 0;
    let per_node = std::cell::Cell::new(0);
    let mut windowed = Vec::new();
    let (ours, base) = interleaved(
        reps,
        || {
            seed += 1;
            let (rate, ms, writes) = cluster(seed, keys);
            converge.push(ms);
            per_node.set(writes / NODES);
            rate
        },
        || {
            run += 1;
            windowed.push(stores_alone(dir.path(), per_node.get(), run, WINDOW));
            stores_alone(dir.path(), per_node.get(), run, 1)
        },
    );
    record(
        "lww",
        "tcp5_write_throughput",
        "writes/s",
        ours,
        base,
        "the file store alone, 5 writers one write at a time",
        Better::Higher,
        Some(0.8),
    );
    record(
        "lww",
        "tcp5_write_throughput_same_window",
        "writes/s",
        ours,
        multinode_benchkit::median(&mut windowed),
        "the file store alone, 5 stores with 8 writers each (the nodes' window)",
        Better::Higher,
        None,
    );
    let converge = multinode_benchkit::median(&mut converge);
    record(
        "lww",
        "tcp5_time_to_converge",
        "ms",
        converge,
        ROUND_MS,
        "one gossip round interval",
        Better::Lower,
        None,
    );
}
