//! The checker, proven by planted bugs: each known defect of the Python
//! example node (`--plant BUG`) fails a test-cluster run within a few
//! seeds, while the same node without a plant passes (`cargo xtask planted`
//! reports seeds needed).

use std::path::Path;

use crate::cluster::{stdout, test_cluster};

fn node(plant: Option<&str>) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python-node/node.py");
    match plant {
        Some(bug) => format!("python3 {} --plant {bug}", path.display()),
        None => format!("python3 {}", path.display()),
    }
}

/// Runs the scenario with `--node-cmd cmd` and `seed`; returns the report
/// and what it printed.
fn scenario(dir: &Path, cmd: &str, seed: u64) -> (serde_json::Value, String) {
    let seed = seed.to_string();
    let args = [
        "--node-cmd",
        cmd,
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
        &seed,
    ];
    let (out, report) = test_cluster(dir, &args);
    (report, stdout(&out))
}

#[test]
fn every_planted_bug_is_caught_and_the_unplanted_node_passes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (report, text) = scenario(dir.path(), &node(None), 1);
    assert_eq!(report["passed"], true, "the control run fails:\n{text}");
    for bug in [
        "ack-before-durable",
        "ties-toward-local",
        "collect-tombstones-at-once",
        "forget-log-tail",
        "merge-keeps-first",
    ] {
        let caught = (1..=8).find(|&seed| {
            let (report, _) = scenario(dir.path(), &node(Some(bug)), seed);
            report["passed"] == false
        });
        println!("{bug}: caught with seed {caught:?}");
        assert!(caught.is_some(), "{bug} was not caught within 8 seeds");
    }
}
