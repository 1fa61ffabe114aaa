//! `multinode run --net`: children on lab hosts, faults from the kernel,
//! asked for through the conductor, and nothing left behind.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::{BIN, PATIENCE, Reap, multinode, repo, text};

#[test]
fn a_python_child_partitions_itself_from_a_peer_and_heals() {
    let out = multinode(&[
        "run",
        "-n",
        "2",
        "--net",
        "--faults",
        "--",
        "python3",
        "examples/partition_self.py",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("[node 0] before: connected\n"), "{stdout}");
    assert!(
        stdout.contains("[node 0] during: TimeoutError\n"),
        "{stdout}"
    );
    assert!(stdout.contains("[node 0] after: connected\n"), "{stdout}");
    // HEAL reports what the partition did: the SYN it dropped, at least.
    let heal = stdout
        .lines()
        .find(|l| l.starts_with("[node 0] OK HEAL "))
        .unwrap_or_else(|| panic!("{stdout}"));
    let cut: u64 = heal
        .split(' ')
        .find_map(|w| w.strip_prefix("cut="))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(cut > 0, "{heal}");
}

#[test]
fn fault_lines_need_faults_and_network_faults_need_the_lab() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("child.sh");
    std::fs::write(
        &script,
        "exec 3<>\"/dev/tcp/${MULTINODE_BARRIER_ADDR%:*}/${MULTINODE_BARRIER_ADDR##*:}\"\n\
         printf 'HELLO 0\\nCUT 0 1\\n' >&3; read -r w <&3; read -r reply <&3; echo \"$reply\"\n",
    )
    .unwrap();
    let script = script.to_str().unwrap();
    let out = multinode(&["run", "-n", "1", "--", "bash", script]);
    assert!(
        text(&out.stdout).contains("[node 0] ERR CUT refused: faults are not enabled in this run"),
        "{}",
        text(&out.stdout)
    );
    let out = multinode(&["run", "-n", "1", "--faults", "--", "bash", script]);
    assert!(
        text(&out.stdout)
            .contains("[node 0] ERR CUT needs a network lab: start the run with --net"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn without_root_or_user_namespaces_the_lab_says_what_it_needs() {
    // As nobody, and told not to try a user namespace: the one clear error.
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            BIN,
        ])
        .args(["run", "-n", "2", "--net", "--", "true"])
        .env("MULTINODE_USERNS", "1")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot build the network lab"), "{stderr}");
    assert!(stderr.contains("needs root"), "{stderr}");
    assert!(stderr.contains("run under sudo"), "{stderr}");
}

/// What a lab could leave behind in this machine's own namespaces.
fn machine_state() -> (String, String, String) {
    let run = |args: &[&str]| {
        let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
        text(&out.stdout)
    };
    (
        run(&["ip", "-o", "link", "show"])
            .lines()
            .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned() + "\n")
            .collect(),
        run(&["nft", "list", "tables"]),
        run(&["ip", "netns", "list"]),
    )
}

/// Every process in /proc, with its network namespace.
fn processes() -> Vec<(u32, String)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let ns = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
            Some((pid, ns.to_string_lossy().into_owned()))
        })
        .collect()
}

/// Whether `pid` is a descendant of `owner`.
fn descends(mut pid: u32, owner: u32) -> bool {
    for _ in 0..64 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        let Some(ppid) = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            return false;
        };
        if ppid == owner {
            return true;
        }
        if ppid <= 1 {
            return false;
        }
        pid = ppid;
    }
    false
}

/// Namespaces open as a descriptor anywhere.
fn namespace_fds() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for pid in std::fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()) {
        let Ok(fds) = std::fs::read_dir(pid.path().join("fd")) else {
            continue;
        };
        for fd in fds.filter_map(|e| e.ok()) {
            if let Ok(l) = std::fs::read_link(fd.path()) {
                let l = l.to_string_lossy().into_owned();
                if l.starts_with("net:[") {
                    out.insert(l);
                }
            }
        }
    }
    out
}

#[test]
fn sigkill_of_the_labs_owner_leaves_no_namespace_link_table_or_process() {
    let before = machine_state();
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    // Node 0 partitions the lab first, so every host has an nft table.
    let mut child = Command::new(BIN)
        .args(["run", "-n", "3", "--net", "--faults", "--", "bash", "-c"])
        .arg(
            "if [ \"$MULTINODE_NODE_INDEX\" = 0 ]; then \
               exec 3<>\"/dev/tcp/${MULTINODE_BARRIER_ADDR%:*}/${MULTINODE_BARRIER_ADDR##*:}\"; \
               printf 'PARTITION 0 1 2\\n' >&3; read -r reply <&3; echo \"$reply\"; \
             fi; echo ready; sleep 600 & wait",
        )
        .current_dir(repo())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let owner = child.id();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut ready = 0;
    let mut partitioned = false;
    while ready < 3 {
        let line = lines.next().expect("output ends early").unwrap();
        ready += usize::from(line.ends_with("] ready"));
        partitioned |= line.starts_with("[node 0] OK PARTITION");
    }
    assert!(partitioned, "the partition was made");
    let mut guard = Reap(child);

    // The lab: the owner's descendants outside our network namespace, and
    // the namespaces they are in.
    let lab: Vec<(u32, String)> = processes()
        .into_iter()
        .filter(|(pid, ns)| *ns != ours.to_string_lossy() && descends(*pid, owner))
        .collect();
    let lab_ns: BTreeSet<String> = lab.iter().map(|(_, ns)| ns.clone()).collect();
    assert!(lab.len() >= 7, "keeper, 3 shells, 3 sleeps: {lab:?}");
    assert!(lab_ns.len() >= 4, "switch and 3 hosts: {lab_ns:?}");
    assert!(namespace_fds().intersection(&lab_ns).count() >= 4);

    let _ = guard.0.kill(); // SIGKILL, to the owner only
    let _ = guard.0.wait();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let alive: Vec<u32> = lab
            .iter()
            .map(|(p, _)| *p)
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
                    !s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
            })
            .collect();
        let in_lab: Vec<(u32, String)> = processes()
            .into_iter()
            .filter(|(_, ns)| lab_ns.contains(ns))
            .collect();
        let held: Vec<String> = namespace_fds().intersection(&lab_ns).cloned().collect();
        if alive.is_empty() && in_lab.is_empty() && held.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "owner {owner} killed, still there: processes {alive:?}, in lab namespaces {in_lab:?}, held {held:?}"
        );
        std::thread::yield_now();
    }
    assert_eq!(
        machine_state(),
        before,
        "links, nft tables or named namespaces changed"
    );
}

/// One `multinode node` on a lab host, driven through its control pipe.
struct LabNode {
    _child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl LabNode {
    async fn call(&mut self, line: &str) -> String {
        use tokio::io::AsyncWriteExt;
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        let next = tokio::time::timeout(PATIENCE, self.stdout.next_line()).await;
        next.expect("a reply in time")
            .unwrap()
            .expect("the node is alive")
    }

    /// Polls `GET key` until it has a value, within [`PATIENCE`].
    async fn has_eventually(&mut self, key: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.call(&format!("GET {key}")).await.starts_with("VALUE ") {
            assert!(Instant::now() < deadline, "{key} never arrived");
            tokio::task::yield_now().await;
        }
    }
}

fn lab_node(lab: &multinode_net::Lab, dir: &std::path::Path, me: u64, peer: u64) -> LabNode {
    use multinode_wire::NodeId;
    use tokio::io::AsyncBufReadExt;
    let addr = |i: u64| format!("{}:7000", lab.addr(NodeId(i)).unwrap());
    let mut cmd = lab.command(NodeId(me), BIN).unwrap();
    cmd.args(["node", "--id", &me.to_string(), "--round-ms", "20"])
        .arg("--data-dir")
        .arg(dir.join(format!("n{me}")))
        .arg("--secret-file")
        .arg(dir.join("secret"))
        .args([
            "--bind",
            &addr(me),
            "--peer",
            &format!("{peer}={}", addr(peer)),
        ])
        .env_remove("MULTINODE_BARRIER_ADDR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = lab.spawn(NodeId(me), &mut cmd).unwrap();
    let stdin = child.stdin.take().unwrap();
    let stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    LabNode {
        _child: child,
        stdin,
        stdout,
    }
}

/// Two real nodes over real TCP on lab hosts: with `CUT 0 1` the kernel
/// drops exactly the packets from 0 to 1 (its counters show no other link),
/// and for as many gossip rounds as the test waits nothing of node 0's
/// writes reaches node 1; after `HEAL` it does. (Node 1's gossip to node 0
/// starves as well, after a window's worth of segments: node 0's
/// acknowledgements are among the packets cut. See docs/network-lab.md.)
#[tokio::test]
async fn a_one_way_cut_drops_exactly_one_direction_between_real_nodes() {
    use multinode_wire::NodeId;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "a lab test's cluster secret\n").unwrap();
    let lab = multinode_net::Lab::new(2).unwrap();
    let mut n0 = lab_node(&lab, dir.path(), 0, 1);
    let mut n1 = lab_node(&lab, dir.path(), 1, 0);
    for n in [&mut n0, &mut n1] {
        let ready = tokio::time::timeout(PATIENCE, n.stdout.next_line()).await;
        let ready = ready.unwrap().unwrap().unwrap();
        assert!(ready.starts_with("READY "), "{ready}");
    }
    // Both ways before the cut.
    assert!(n0.call("SET before0 x").await.starts_with("OK "));
    assert!(n1.call("SET before1 x").await.starts_with("OK "));
    n1.has_eventually("before0").await;
    n0.has_eventually("before1").await;

    lab.cut(NodeId(0), NodeId(1)).unwrap();
    assert!(n0.call("SET during0 x").await.starts_with("OK "));
    // Fifty of node 1's gossip rounds (20 ms each) pass...
    let rounds = |stats: &str| -> u64 {
        stats
            .split(' ')
            .find_map(|w| w.strip_prefix("rounds="))
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    let start = rounds(&n1.call("STATS").await);
    let deadline = Instant::now() + PATIENCE;
    while rounds(&n1.call("STATS").await) < start + 50 {
        assert!(Instant::now() < deadline, "node 1 stopped gossiping");
        tokio::task::yield_now().await;
    }
    // ...and node 0's write is not there.
    assert_eq!(n1.call("GET during0").await, "NONE");
    let k = lab.counters().unwrap();
    assert!(k.links[&(NodeId(0), NodeId(1))].cut > 0, "{k:?}");
    assert!(!k.links.contains_key(&(NodeId(1), NodeId(0))), "{k:?}");

    lab.heal().unwrap();
    n1.has_eventually("during0").await;
}
