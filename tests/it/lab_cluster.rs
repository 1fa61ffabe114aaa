//! test-cluster on a network lab (`--net`): real `multinode node`
//! processes on hosts of their own, real TCP, and faults the kernel makes
//! (nftables on each receiver), counted by the kernel. Needs root (CI runs
//! as root; elsewhere the binary re-runs itself in a user namespace).

use crate::cluster::{multinode, stdout, test_cluster};

fn total(report: &serde_json::Value, counter: &str) -> u64 {
    report["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .filter_map(|p| p["kernel"][counter].as_u64())
        .sum()
}

fn phase<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .find(|p| p["phase"] == name)
        .unwrap_or_else(|| panic!("no phase {name} in {report}"))
}

/// The README's lab run: a partition and 20% packet loss made by the
/// kernel, a SIGKILL and a restart; the partition's counters are not zero,
/// and after the heal every node converges.
#[test]
fn a_kernel_partition_with_loss_and_a_kill_heals_and_converges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = [
        "--net",
        "--partition",
        "--loss",
        "0.2",
        "--kills",
        "1",
        "--nodes",
        "5",
        "--keys",
        "200",
    ];
    let (out, report) = test_cluster(dir.path(), &args);
    let text = stdout(&out);
    assert_eq!(report["passed"], true, "{text}");
    assert_eq!(report["net"], true);
    // The partition dropped packets before the heal, and none after it.
    let cut_before: u64 = ["join", "write", "write-2", "delete"]
        .iter()
        .map(|p| phase(&report, p)["kernel"]["cut"].as_u64().unwrap())
        .sum();
    assert!(cut_before > 0, "{text}");
    // Both ways: packets from each side to the other were cut.
    let side: Vec<u64> = report["partition_side"]
        .as_array()
        .expect("a partition side")
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let (mut out, mut back) = (0, 0);
    for p in report["phases"].as_array().unwrap() {
        let Some(links) = p["kernel"]["links"].as_object() else {
            continue;
        };
        for (link, d) in links {
            let (from, to) = link.split_once('>').unwrap();
            let (from, to): (u64, u64) = (from.parse().unwrap(), to.parse().unwrap());
            let cut = d["cut"].as_u64().unwrap();
            assert!(
                cut == 0 || side.contains(&from) != side.contains(&to),
                "a cut inside one side, {link}: {text}"
            );
            if side.contains(&from) {
                out += cut;
            } else {
                back += cut;
            }
        }
    }
    assert!(
        out > 0 && back > 0,
        "cut {out} one way, {back} the other: {text}"
    );
    assert_eq!(phase(&report, "converge")["kernel"]["cut"], 0, "{text}");
    assert!(text.contains("packets cut by the kernel"), "{text}");
    assert!(text.contains("on a network lab (198.1"), "{text}");
}

/// 30% loss on every link: the kernel drops about 30% of the packets that
/// reach a host (and were not cut), and the cluster still converges.
#[test]
fn thirty_percent_loss_drops_about_thirty_percent_and_the_cluster_converges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = [
        "--net", "--drop", "0.3", "--kills", "0", "--nodes", "3", "--keys", "300",
    ];
    let (out, report) = test_cluster(dir.path(), &args);
    let text = stdout(&out);
    assert_eq!(report["passed"], true, "{text}");
    let (packets, dropped) = (total(&report, "packets"), total(&report, "dropped"));
    let share = dropped as f64 / packets as f64;
    // Each packet is dropped with p = 0.3 by the kernel's own generator, so
    // `dropped` is binomial: the band is 4.5 standard deviations of the
    // packets this run counted (a false failure about once in 150,000
    // runs). How many packets a run sends depends on how often TCP had to
    // retransmit, so the band is computed, not fixed; at the fewest packets
    // accepted it is still narrower than 0.3 ± 0.17.
    assert!(packets >= 150, "{packets} packets: {text}");
    let band = 4.5 * (0.3 * 0.7 / packets as f64).sqrt();
    assert!(
        (share - 0.3).abs() <= band,
        "dropped {dropped} of {packets} ({share:.3}, allowed 0.3 ± {band:.3}): {text}"
    );
}

/// A node paused with SIGSTOP while the others write is reported, and
/// catches up once resumed; another node's link flaps meanwhile.
#[test]
fn a_paused_node_catches_up_and_a_flapped_link_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = [
        "--net", "--pause", "1", "--flap", "--kills", "0", "--nodes", "4", "--keys", "200",
    ];
    let (out, report) = test_cluster(dir.path(), &args);
    let text = stdout(&out);
    assert_eq!(report["passed"], true, "{text}");
    let delete = phase(&report, "delete");
    let result = delete["result"].as_str().unwrap();
    assert!(result.contains("node(s) [3] paused (SIGSTOP)"), "{result}");
    assert!(result.contains("node 0's link flapped"), "{result}");
    assert_eq!(delete["kernel"]["pauses"], 1, "{delete}");
    assert_eq!(delete["kernel"]["flaps"], 1, "{delete}");
}

/// One node's wall clock 20 s behind (libfaketime, through the lab): the
/// hybrid logical clock orders its writes by the cluster's time, since its
/// peers' timestamps pull its clock forward, and the run passes.
#[test]
fn a_host_with_a_clock_offset_converges_within_the_drift_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = [
        "--net", "--skew", "2=-20", "--kills", "0", "--nodes", "3", "--keys", "60",
    ];
    let (out, report) = test_cluster(dir.path(), &args);
    assert_eq!(report["passed"], true, "{}", stdout(&out));
}

/// A lab's hosts have a `/dev/shm` of their own: run directories there are
/// refused at once, before anything is made.
#[test]
fn run_directories_in_dev_shm_are_refused_on_a_lab() {
    let dir = std::path::Path::new("/dev/shm").join(format!("multinode-{}", std::process::id()));
    let out = std::process::Command::new(multinode())
        .args(["test-cluster", "--net", "--nodes", "3", "--dir"])
        .arg(&dir)
        .output();
    // Removed before any assertion, so a failure leaves nothing either.
    let made = dir.exists();
    let _ = std::fs::remove_dir_all(&dir);
    let out = out.expect("multinode runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("a /dev/shm of their own"), "{err}");
    assert!(!made, "{} was made", dir.display());
}

/// A clock 600 s ahead on a lab host fails the run, naming the clock.
#[test]
fn a_host_far_ahead_fails_the_run_naming_its_clock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = [
        "--net",
        "--skew",
        "1=600",
        "--kills",
        "0",
        "--nodes",
        "3",
        "--keys",
        "40",
        "--converge-timeout",
        "5",
    ];
    let (out, report) = test_cluster(dir.path(), &args);
    let text = stdout(&out);
    assert_eq!(report["passed"], false, "{text}");
    assert!(
        text.contains("FAILED: clock offset: node 1's clock is"),
        "{text}"
    );
}

/// The Python example node on a network lab: the kernel's partition and
/// loss, a kill.
#[test]
fn the_python_example_node_passes_on_the_lab() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python-node/node.py");
    let cmd = format!("python3 {}", node.display());
    let args = [
        "--net",
        "--node-cmd",
        &cmd,
        "--partition",
        "--loss",
        "0.2",
        "--kills",
        "1",
        "--nodes",
        "4",
        "--keys",
        "120",
    ];
    let (out, report) = test_cluster(dir.path(), &args);
    assert_eq!(report["passed"], true, "{}", stdout(&out));
    assert!(total(&report, "cut") > 0, "{}", stdout(&out));
}
