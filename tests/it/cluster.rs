//! A real cluster through the `multinode` binary: node processes on
//! loopback, SIGKILL and restart from disk, the conductor's checks, and
//! what a failed run leaves behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `multinode` binary of this build: built now, so it is never stale.
pub(crate) fn multinode() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/it-<hash> → target/<profile>/
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    build.args(["build", "--quiet", "-p", "multinode"]);
    if dir.file_name().is_some_and(|p| p == "release") {
        build.arg("--release");
    }
    let status = build.status().expect("cargo runs");
    assert!(status.success(), "cargo build -p multinode failed");
    dir.join(format!("multinode{}", std::env::consts::EXE_SUFFIX))
}

pub(crate) fn test_cluster(dir: &Path, args: &[&str]) -> (Output, serde_json::Value) {
    let json = dir.join(format!(
        "report-{}.json",
        args.join("_").replace(['-', '.', '/', ' '], "")
    ));
    let out = Command::new(multinode())
        .arg("test-cluster")
        .arg("--dir")
        .arg(dir)
        .arg("--json")
        .arg(&json)
        .args(args)
        .output()
        .expect("multinode runs");
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| {
        panic!(
            "no report ({e}); stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (
        out,
        serde_json::from_str(&text).expect("the report is JSON"),
    )
}

pub(crate) fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Checks that a run failed as a failed run must (exit 1, reported as
/// failed, nothing left alive) and returns what it printed.
fn failed_run(out: &Output, report: &serde_json::Value) -> String {
    let text = stdout(out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert_eq!(report["passed"], false);
    assert_eq!(report["processes_alive"], 0, "{report}");
    text
}

#[test]
fn three_node_processes_survive_a_kill_and_converge() {
    let seed = multinode_testkit::seed("three_node_processes_survive_a_kill_and_converge");
    let dir = tempfile::tempdir().expect("tempdir");
    let seed_arg = seed.to_string();
    let args = [
        "--nodes", "3", "--keys", "60", "--rate", "400", "--seed", &seed_arg,
    ];
    let (out, report) = test_cluster(dir.path(), &args);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert_eq!(report["passed"], true, "{report}");
    assert_eq!(report["processes_alive"], 0, "{report}");
    // Three nodes, one killed and restarted: four processes, all reaped.
    assert_eq!(report["processes_started"], 4, "{report}");
    assert!(
        report["acknowledged_writes"].as_u64().unwrap() > 100,
        "{report}"
    );
    let phases: Vec<&str> = report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(
        phases,
        [
            "join", "write", "write-2", "delete", "converge", "check", "stop"
        ]
    );
    assert!(text.contains("acknowledged writes recovered"), "{text}");
    assert!(text.contains("PASSED"), "{text}");
    // A passing run keeps only its history and its timeline: no node data,
    // logs or secret.
    let runs: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let mut left: Vec<String> = std::fs::read_dir(runs[0].path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["history.jsonl", "report.html"]);

    // The same seed is the same scenario.
    let (again, report2) = test_cluster(dir.path(), &args);
    assert!(again.status.success(), "{}", stdout(&again));
    assert_eq!(report["plan"], report2["plan"]);
    let plan_line = |t: &str| t.lines().next().unwrap_or_default().to_owned();
    assert_eq!(plan_line(&text), plan_line(&stdout(&again)));
}

#[test]
fn a_failed_run_names_its_cause_and_keeps_its_logs() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Nearly every gossip frame is lost and there is no time to agree.
    let args = [
        "--nodes",
        "3",
        "--keys",
        "40",
        "--rate",
        "0",
        "--seed",
        "5",
        // The older name of `--drop`: the replay line says `--drop`.
        "--loss",
        "0.99",
        "--converge-timeout",
        "0.001",
    ];
    let (out, report) = test_cluster(dir.path(), &args);
    let text = failed_run(&out, &report);
    assert!(text.contains("FAILED: no agreement within"), "{text}");
    assert!(text.contains("seed: 5"), "{text}");
    assert!(
        text.contains(
            "replay: multinode test-cluster --nodes 3 --keys 40 --seed 5 --kills 1 --drop 0.99 --rate 0 --converge-timeout 0.001"
        ),
        "{text}"
    );
    let kept = PathBuf::from(report["run_directory"].as_str().unwrap());
    assert!(kept.join("node-0.log").is_file(), "{text}");
    assert!(kept.join("node-0").is_dir(), "{text}");
}

/// Whether a process with this id exists (`kill -0`).
#[cfg(unix)]
fn exists(pid: u32) -> bool {
    Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A 4-node run, slow enough to be writing for a while, read up to the
/// join's line: the conductor, the rest of its output, its node processes.
#[cfg(unix)]
fn a_run_past_its_join(
    dir: &Path,
) -> (
    std::process::Child,
    std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    Vec<u32>,
) {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let mut conductor = Command::new(multinode())
        .arg("test-cluster")
        .arg("--dir")
        .arg(dir)
        .args([
            "--nodes", "4", "--keys", "2000", "--rate", "50", "--seed", "9",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("multinode runs");
    let mut lines = BufReader::new(conductor.stdout.take().unwrap()).lines();
    // The join line names the node processes; they are writing after it.
    let mut pids = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("conductor output");
        if let Some((_, list)) = line.split_once("node processes: pids ") {
            pids = list.split(' ').map(|p| p.parse::<u32>().unwrap()).collect();
            break;
        }
    }
    assert_eq!(pids.len(), 4, "no join line");
    (conductor, lines, pids)
}

#[cfg(unix)]
#[test]
fn ctrl_c_leaves_no_node_process_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut conductor, lines, pids) = a_run_past_its_join(dir.path());
    assert!(
        pids.iter().all(|&p| exists(p)),
        "nodes not running: {pids:?}"
    );
    let sent = Command::new("kill")
        .args(["-INT", &conductor.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = conductor.wait().expect("conductor exits");
    assert_eq!(status.code(), Some(130), "{rest:?}");
    let text = rest.join("\n");
    assert!(text.contains("FAILED: interrupted"), "{text}");
    assert!(text.contains("0 alive"), "{text}");
    let alive: Vec<u32> = pids.into_iter().filter(|&p| exists(p)).collect();
    assert!(
        alive.is_empty(),
        "node processes outlived the run: {alive:?}"
    );
}

/// The parent pid of `pid`, from `/proc/<pid>/stat`.
#[cfg(target_os = "linux")]
fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Whether `pid` runs: it exists and is not a zombie waiting for whoever
/// inherited it to reap it.
#[cfg(target_os = "linux")]
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_owned())
        })
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}

/// Node processes are started by the spawner, a helper the conductor
/// starts first, not by the conductor: and when the conductor is killed
/// outright (no cleanup of its own can run), the spawner kills every node
/// it started and exits, so nothing of the run is left.
#[cfg(target_os = "linux")]
#[test]
fn a_killed_conductor_leaves_no_node_process_and_no_spawner_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut conductor, _lines, pids) = a_run_past_its_join(dir.path());
    let spawners: Vec<u32> = pids.iter().filter_map(|&p| parent(p)).collect();
    let spawner = spawners[0];
    assert!(
        spawners.iter().all(|&s| s == spawner) && spawner != conductor.id(),
        "nodes' parents {spawners:?}, conductor {}",
        conductor.id()
    );
    assert_eq!(parent(spawner), Some(conductor.id()));
    conductor.kill().expect("SIGKILL the conductor");
    conductor.wait().expect("reaped");
    all_gone(pids.iter().copied().chain([spawner]).collect());
}

/// The processes whose parent is `pid`.
#[cfg(target_os = "linux")]
fn children_of(pid: u32) -> Vec<u32> {
    let dir = std::fs::read_dir("/proc").expect("/proc");
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| parent(p) == Some(pid))
        .collect()
}

/// Polls, with a deadline, until none of `pids` runs.
#[cfg(target_os = "linux")]
fn all_gone(mut left: Vec<u32>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !left.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        left.retain(|&p| running(p));
    }
    assert!(left.is_empty(), "outlived the killed conductor: {left:?}");
}

/// Our nodes also exit when their control pipe closes; these do not (they
/// ignore stdin and never answer), so only the spawner's SIGKILL, once the
/// conductor is killed outright, ends them.
#[cfg(target_os = "linux")]
#[test]
fn the_spawner_kills_nodes_that_outlive_their_conductor() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let node = dir.path().join("deaf-node");
    std::fs::write(&node, "#!/bin/sh\nexec sleep 600\n").expect("script");
    std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let run = dir.path().join("run");
    std::fs::create_dir(&run).expect("run dir");
    let mut conductor = Command::new(multinode())
        .arg("test-cluster")
        .arg("--dir")
        .arg(&run)
        .args(["--nodes", "2", "--node-cmd"])
        .arg(&node)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("multinode runs");
    // The conductor waits for the nodes' READY, which never comes: poll
    // until its spawner has started both.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let (spawner, nodes) = loop {
        let spawner = children_of(conductor.id()).into_iter().find(|&p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|w| w == b"spawner"))
        });
        if let Some(s) = spawner {
            let nodes = children_of(s);
            if nodes.len() == 2 {
                break (s, nodes);
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the spawner never started two nodes"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    conductor.kill().expect("SIGKILL the conductor");
    conductor.wait().expect("reaped");
    all_gone(nodes.into_iter().chain([spawner]).collect());
}

/// A node whose wall clock is 600 s ahead (libfaketime, the `faketime`
/// package, which `.ci/run` installs) cannot converge with the others: the
/// run fails, and the first cause it names is the clock, not a symptom.
#[cfg(target_os = "linux")]
#[test]
fn a_node_with_a_skewed_clock_fails_the_run_naming_the_clock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = [
        "--nodes",
        "3",
        "--keys",
        "40",
        "--seed",
        "11",
        "--skew",
        "1=600",
        "--converge-timeout",
        "5",
    ];
    let (out, report) = test_cluster(dir.path(), &args);
    let text = failed_run(&out, &report);
    assert!(
        text.contains("FAILED: clock offset: node 1's clock is"),
        "the clock is not the first cause named:\n{text}"
    );
    assert!(text.contains("ahead of the cluster's"), "{text}");
    assert!(
        text.contains("--skew 1=600"),
        "no replay of the skew:\n{text}"
    );
}

/// Within half the drift bound a skewed clock costs nothing: the run passes.
#[cfg(target_os = "linux")]
#[test]
fn a_node_with_a_small_skew_converges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = [
        "--nodes", "3", "--keys", "40", "--seed", "12", "--skew", "2=-20",
    ];
    let (out, report) = test_cluster(dir.path(), &args);
    assert_eq!(report["passed"], true, "{}", stdout(&out));
}

/// libfaketime leaves two files in `/dev/shm` for each process it is in
/// that is killed, and a later process given that pid cannot start under
/// it: the run removes them. Every node is skewed here, so the one killed
/// is.
#[cfg(target_os = "linux")]
#[test]
fn a_killed_node_under_a_skewed_clock_leaves_no_files_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = [
        "--nodes", "3", "--keys", "40", "--kills", "1", "--skew", "0=3", "--skew", "1=-3",
        "--skew", "2=2",
    ];
    let (out, report) = test_cluster(dir.path(), &args);
    let text = stdout(&out);
    assert_eq!(report["passed"], true, "{text}");
    let pids: Vec<&str> = text
        .lines()
        .find_map(|l| l.split_once("node processes: pids ").map(|(_, p)| p))
        .expect("the run names its node processes")
        .split(' ')
        .collect();
    assert_eq!(pids.len(), 3, "{text}");
    let left: Vec<String> = pids
        .iter()
        .flat_map(|p| [format!("faketime_shm_{p}"), format!("sem.faketime_sem_{p}")])
        .filter(|name| Path::new("/dev/shm").join(name).exists())
        .collect();
    assert!(left.is_empty(), "left in /dev/shm: {left:?}");
}

/// A kept run's `history.jsonl` re-checks offline with `multinode check`
/// to the run's verdict; the same history with an acknowledged write
/// removed from every node's final state is flagged as a lost write.
#[test]
fn a_kept_history_rechecks_offline_and_a_lost_write_is_flagged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = ["--nodes", "3", "--keys", "60", "--kills", "1", "--keep"];
    let (out, report) = test_cluster(dir.path(), &args);
    assert_eq!(report["passed"], true, "{}", stdout(&out));
    let run = Path::new(report["run_directory"].as_str().unwrap()).to_path_buf();
    let history = run.join("history.jsonl");
    let check = |path: &Path| {
        Command::new(multinode())
            .arg("check")
            .arg(path)
            .output()
            .expect("multinode check runs")
    };
    // The timeline draws every record of the history.
    let page = std::fs::read_to_string(run.join("report.html")).expect("report.html");
    let drawn: std::collections::BTreeSet<u64> = page
        .split("data-i=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .flat_map(|list| list.split(','))
        .filter_map(|n| n.parse().ok())
        .collect();
    let records = std::fs::read_to_string(&history).unwrap().lines().count() as u64;
    let all: std::collections::BTreeSet<u64> = (0..records).collect();
    assert_eq!(drawn, all, "records the report does not draw");
    assert!(stdout(&out).contains(&format!("report: {}", run.join("report.html").display())));

    let again = check(&run);
    assert!(again.status.success(), "{}", stdout(&again));
    assert!(stdout(&again).contains("PASSED"), "{}", stdout(&again));

    // Remove the first acknowledged set's key from every final state.
    let text = std::fs::read_to_string(&history).unwrap();
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let key = records
        .iter()
        .find(|r| r["type"] == "ok" && !r["value"][0][2].is_null())
        .map(|r| r["value"][0][1].as_str().unwrap().to_owned())
        .expect("an acknowledged set");
    let edited: String = records
        .into_iter()
        .map(|mut r| {
            if r["f"] == "final" {
                let kept: Vec<serde_json::Value> = r["value"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|e| e[0] != key.as_str())
                    .cloned()
                    .collect();
                r["value"] = kept.into();
            }
            r.to_string() + "\n"
        })
        .collect();
    let bad = dir.path().join("edited.jsonl");
    std::fs::write(&bad, edited).unwrap();
    let flagged = check(&bad);
    let text = stdout(&flagged);
    assert_eq!(flagged.status.code(), Some(1), "{text}");
    assert!(text.contains("FAILED"), "{text}");
    assert!(
        text.contains("lost write: node") && text.contains(&format!("{key:?}")),
        "{text}"
    );
}

/// `--node-cmd`: our node started only as the node contract says (its
/// arguments, `--data-dir` and the environment, `MULTINODE_NO_JOIN` on
/// restart), through a kill and a partition.
#[test]
fn a_node_command_kept_to_the_contract_passes_with_a_kill_and_a_partition() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cmd = format!("{} node --round-ms 50", multinode().display());
    let args = [
        "--node-cmd",
        &cmd,
        "--nodes",
        "3",
        "--keys",
        "60",
        "--kills",
        "1",
        "--partition",
    ];
    let (out, report) = test_cluster(dir.path(), &args);
    assert_eq!(report["passed"], true, "{}", stdout(&out));
    assert!(
        report["replay"].as_str().unwrap().contains("--node-cmd"),
        "{report}"
    );
}

/// The Python example node (standard library only) through the same
/// scenario: kills, a partition made by its own CUT lines, and the DUMP
/// comparison, since it has no DIGEST.
#[test]
fn the_python_example_node_passes_with_a_kill_and_a_partition() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python-node/node.py");
    let cmd = format!("python3 {}", node.display());
    let args = [
        "--node-cmd",
        &cmd,
        "--nodes",
        "4",
        "--keys",
        "120",
        "--kills",
        "1",
        "--partition",
    ];
    let (out, report) = test_cluster(dir.path(), &args);
    assert_eq!(report["passed"], true, "{}", stdout(&out));
}

/// `--sweep`: seeds back to back, each its own drawn scenario, one line
/// each, and the rate at the end; a drawn scenario replays by its seed;
/// a passing seed leaves no directory behind.
#[test]
fn a_sweep_runs_drawn_scenarios_and_reports_seeds_per_minute() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seed = std::env::var("MULTINODE_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(40);
    println!("first seed {seed} (MULTINODE_SEED replays it)");
    let out = Command::new(multinode())
        .arg("test-cluster")
        .arg("--dir")
        .arg(dir.path())
        .args(["--sweep", "2", "--seed", &seed.to_string()])
        .output()
        .expect("multinode runs");
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("seed ") && l.contains("passed in"))
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with(&format!("seed {seed}: ")), "{text}");
    assert!(
        lines[1].starts_with(&format!("seed {}: ", seed + 1)),
        "{text}"
    );
    // Each line names the scenario its seed drew: a node count in 3..=7.
    for l in &lines {
        let nodes: u32 = l
            .split(": ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no node count in {l:?}"));
        assert!((3..=7).contains(&nodes), "{l}");
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("sweep: 2 seeds passed in") && l.ends_with("seeds per minute")),
        "{text}"
    );
    // A sweep's runs print no phases, and its passing seeds leave nothing.
    assert!(!text.contains("] join"), "{text}");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("the sweep's directory")
        .map(|e| e.map(|e| e.file_name()))
        .collect();
    assert!(left.is_empty(), "left behind by passing seeds: {left:?}");
    // The explicit scenario flags are refused beside --sweep.
    let out = Command::new(multinode())
        .args(["test-cluster", "--sweep", "2", "--nodes", "5"])
        .output()
        .expect("multinode runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot be used with"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A cluster larger than the descriptor hard limit allows fails at once,
/// saying what it needs and how to get it.
#[test]
fn too_few_descriptors_for_the_nodes_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -n 300 && exec "$0" test-cluster --nodes 200 --dir "$1""#)
        .arg(multinode())
        .arg(dir.path())
        .output()
        .expect("sh runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("200 nodes need about 1056 file descriptors")
            && err.contains("the hard limit is 300"),
        "{err}"
    );
    // Nothing was started.
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
}
