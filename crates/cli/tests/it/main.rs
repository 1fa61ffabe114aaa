//! The `multinode` binary, run as a user runs it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use multinode_barrier::BlockingBarrierNode;
use multinode_wire::NodeId;

const BIN: &str = env!("CARGO_BIN_EXE_multinode");
const PATIENCE: Duration = Duration::from_secs(20);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Kills the child it holds (by pid, ours) if a test fails before reaping it.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the binary to completion, bounded by [`PATIENCE`].
fn multinode(args: &[&str]) -> Output {
    let child = Command::new(BIN)
        .args(args)
        .current_dir(repo())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn multinode");
    let mut guard = Reap(child);
    wait_exit(&mut guard);
    let Reap(child) = &mut guard;
    let mut out = Vec::new();
    let mut err = Vec::new();
    std::io::Read::read_to_end(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    std::io::Read::read_to_end(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    Output {
        status: child.wait().unwrap(),
        stdout: out,
        stderr: err,
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn run_the_readme_example() {
    let out = multinode(&["run", "-n", "3", "--", "bash", "examples/barrier-child.sh"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    for i in 0..3 {
        assert!(
            stdout.contains(&format!("[node {i}] joined as node {i} of 3\n")),
            "{stdout}"
        );
        for j in 0..3 {
            let peer = format!("[node {i}] peer: {j} 127.0.0.1:{}\n", 7000 + j);
            assert!(stdout.contains(&peer), "missing {peer:?} in {stdout}");
        }
    }
    assert!(
        stdout.contains("3 of 3 nodes exited 0; 3 barrier(s) passed, 0 failed: OK"),
        "{stdout}"
    );
}

#[test]
fn run_reports_the_first_failure_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("child.sh");
    std::fs::write(
        &script,
        "if [ \"$MULTINODE_NODE_INDEX\" = 1 ]; then exit 7; fi\n\
         exec 3<>\"/dev/tcp/${MULTINODE_BARRIER_ADDR%:*}/${MULTINODE_BARRIER_ADDR##*:}\"\n\
         printf 'BARRIER start\\n' >&3; read -r reply <&3; echo \"$reply\"\n",
    )
    .unwrap();
    let out = multinode(&["run", "-n", "2", "--", "bash", script.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("[node 0] FAILED start node 1 exited with status 7"),
        "{stdout}"
    );
    assert!(stdout.contains("exited with status 7"), "{stdout}");
    assert!(
        stdout.contains("start: node 1 exited with status 7"),
        "{stdout}"
    );
    assert!(stdout.contains(": FAILED"), "{stdout}");
}

#[test]
fn bad_arguments_are_refused_clearly() {
    let out = multinode(&["run", "-n", "0", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("0 is not in 1..=1024"),
        "{}",
        text(&out.stderr)
    );
    let out = multinode(&["run", "-n", "2"]);
    assert_eq!(out.status.code(), Some(2));
    let out = multinode(&["run", "-n", "1", "--", "/nonexistent/program"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cannot launch"),
        "{}",
        text(&out.stderr)
    );
    let out = multinode(&["barrier", "serve", "--nodes", "2", "--timeout", "-1"]);
    assert_eq!(out.status.code(), Some(2));
}

/// Starts `multinode barrier serve` and reads its address.
fn serve(args: &[&str]) -> (Reap, std::net::SocketAddr) {
    let mut child = Command::new(BIN)
        .args(["barrier", "serve"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr = first
        .strip_prefix("LISTENING ")
        .unwrap_or_else(|| panic!("first line was {first:?}"))
        .trim()
        .parse()
        .unwrap();
    (Reap(child), addr)
}

fn wait_exit(guard: &mut Reap) -> std::process::ExitStatus {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = guard.0.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "multinode did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn serve_exits_0_when_every_node_passed_and_left() {
    let (mut guard, addr) = serve(&["--nodes", "2"]);
    let threads: Vec<_> = (0..2)
        .map(|i| {
            std::thread::spawn(move || {
                let mut n = BlockingBarrierNode::connect(addr, Some(NodeId(i))).unwrap();
                n.barrier("a", Some(PATIENCE)).unwrap();
                n.leave().unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(wait_exit(&mut guard).success());
}

#[test]
fn serve_exits_1_when_a_barrier_failed() {
    let (mut guard, addr) = serve(&["--nodes", "2", "--timeout", "0.1"]);
    let mut a = BlockingBarrierNode::connect(addr, Some(NodeId(0))).unwrap();
    assert!(a.barrier("lonely", Some(PATIENCE)).is_err());
    a.leave().unwrap();
    let b = BlockingBarrierNode::connect(addr, Some(NodeId(1))).unwrap();
    b.leave().unwrap();
    assert_eq!(wait_exit(&mut guard).code(), Some(1));
    let mut err = String::new();
    std::io::Read::read_to_string(guard.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains("0 barrier(s) passed, 1 failed"), "{err}");
    assert!(
        err.contains("first failure at lonely: timed out waiting for node(s) 1"),
        "{err}"
    );
}

#[cfg(target_os = "linux")]
#[test]
fn ctrl_c_stops_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("child.sh");
    let pids = dir.path().join("pids");
    std::fs::create_dir(&pids).unwrap();
    std::fs::write(
        &script,
        format!(
            "echo $$ > {0}/$MULTINODE_NODE_INDEX.tmp && mv {0}/$MULTINODE_NODE_INDEX.tmp {0}/$MULTINODE_NODE_INDEX\nexec sleep 1000\n",
            pids.display()
        ),
    )
    .unwrap();
    let child = Command::new(BIN)
        .args(["run", "-n", "2", "--", "bash", script.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = Reap(child);
    let deadline = Instant::now() + PATIENCE;
    let recorded = || (0..2).all(|i| pids.join(i.to_string()).exists());
    while !recorded() {
        assert!(Instant::now() < deadline, "children never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let node_pids: Vec<u32> = (0..2)
        .map(|i| {
            std::fs::read_to_string(pids.join(i.to_string()))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        })
        .collect();
    // SIGINT to the multinode process we started, as a terminal's Ctrl-C would.
    let status = Command::new("kill")
        .args(["-INT", &guard.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(wait_exit(&mut guard).code(), Some(130));
    let deadline = Instant::now() + PATIENCE;
    let dead = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
    };
    while !node_pids.iter().all(|&p| dead(p)) {
        assert!(
            Instant::now() < deadline,
            "a node outlived multinode run: {node_pids:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(target_os = "linux")]
mod check_node;
#[cfg(target_os = "linux")]
mod lab;
#[cfg(target_os = "linux")]
mod launchers;
mod node;
