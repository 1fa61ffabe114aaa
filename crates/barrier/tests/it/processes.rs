//! Real child processes through the launcher: bash scripts speaking the line
//! protocol over /dev/tcp (a child that is not Rust), exits, SIGKILL.

use std::time::{Duration, Instant};

use multinode_barrier::{BarrierError, BarrierNode, Launcher, OutputMode};
use multinode_wire::NodeId;

use crate::support::{BASH_CLIENT, PATIENCE, controller, eventually, script};

fn launcher(path: &std::path::Path, nodes: u32) -> Launcher {
    Launcher::new("bash", nodes)
        .args([path])
        .output(OutputMode::Captured)
        .timeout(Duration::from_secs(30))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_children_gather_and_pass() {
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "{BASH_CLIENT}\
         say \"GATHER addrs node-$MULTINODE_NODE_INDEX-of-$MULTINODE_NODES\"\n\
         while hear && [ \"${{REPLY%% *}}\" = VALUE ]; do echo \"$REPLY\"; done\n\
         echo \"$REPLY\"\n\
         say 'BARRIER end'; hear; echo \"$REPLY\"\n\
         say LEAVE; hear; echo \"$REPLY\"\n"
    );
    let path = script(dir.path(), "child.sh", &body);
    let report = tokio::time::timeout(PATIENCE, launcher(&path, 3).run())
        .await
        .unwrap()
        .unwrap();
    assert!(report.success(), "{report:#?}");
    assert_eq!(report.barriers_passed, 2);
    for node in &report.nodes {
        let out = String::from_utf8_lossy(&node.output);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            [
                "VALUE addrs 0 node-0-of-3",
                "VALUE addrs 1 node-1-of-3",
                "VALUE addrs 2 node-2-of-3",
                "OK addrs",
                "OK end",
                "BYE"
            ],
            "node {}",
            node.node
        );
        assert_eq!(node.passed, 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_exits_early_fails_the_others_barrier_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // Node 1 exits with status 3 without ever connecting; the others wait at
    // `start` under a 30 s deadline, and must hear of it long before that.
    let body = format!(
        "if [ \"$MULTINODE_NODE_INDEX\" = 1 ]; then exit 3; fi\n\
         {BASH_CLIENT}\
         say 'BARRIER start'; hear; echo \"$REPLY\"\n\
         case \"$REPLY\" in OK*) exit 0;; *) exit 1;; esac\n"
    );
    let path = script(dir.path(), "child.sh", &body);
    let started = Instant::now();
    let report = tokio::time::timeout(PATIENCE, launcher(&path, 3).run())
        .await
        .expect("the others must not wait for the deadline")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(!report.success());
    assert_eq!(report.nodes[1].status.code(), Some(3));
    for i in [0, 2] {
        let out = String::from_utf8_lossy(&report.nodes[i].output);
        assert_eq!(out.trim(), "FAILED start node 1 exited with status 3");
        assert_eq!(report.nodes[i].status.code(), Some(1));
        let (label, cause) = report.nodes[i].first_failure.clone().unwrap();
        assert_eq!(
            (label.as_str(), cause.as_str()),
            ("start", "node 1 exited with status 3")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_killed_mid_barrier_fails_it_with_the_signal() {
    let dir = tempfile::tempdir().unwrap();
    // After `ready`, node 2 SIGKILLs itself while the others wait at `mid`.
    let body = format!(
        "{BASH_CLIENT}\
         say 'BARRIER ready'; hear\n\
         if [ \"$MULTINODE_NODE_INDEX\" = 2 ]; then kill -9 $$; fi\n\
         say 'BARRIER mid'; hear; echo \"$REPLY\"\n"
    );
    let path = script(dir.path(), "child.sh", &body);
    let report = tokio::time::timeout(PATIENCE, launcher(&path, 3).run())
        .await
        .unwrap()
        .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(report.nodes[2].status.signal(), Some(9));
    }
    for i in [0, 1] {
        let out = String::from_utf8_lossy(&report.nodes[i].output);
        assert_eq!(
            out.trim(),
            "FAILED mid node 2 killed by signal 9",
            "node {i}"
        );
        assert_eq!(report.nodes[i].passed, 1);
    }
    assert_eq!((report.barriers_passed, report.barriers_failed), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_while_waiting_does_not_count_as_arrived() {
    // Three members. Node 1 is a real process, outside any launcher: it
    // arrives at `x` and is SIGKILLed while waiting. Node 0 waits too; node
    // 2 arrives last. Counting the dead node as arrived would let 0 and 2
    // pass; instead both must be told it failed.
    let dir = tempfile::tempdir().unwrap();
    let c = controller(3, Duration::from_secs(30)).await;
    let mut a = BarrierNode::connect(c.local_addr(), Some(NodeId(0)))
        .await
        .unwrap();
    let mut z = BarrierNode::connect(c.local_addr(), Some(NodeId(2)))
        .await
        .unwrap();
    // `exec` so the pid we kill is the process holding the socket.
    let body = format!("{BASH_CLIENT}say 'BARRIER x'\necho sent\nexec sleep 1000\n");
    let path = script(dir.path(), "child.sh", &body);
    let mut child = tokio::process::Command::new("bash")
        .arg(&path)
        .env("MULTINODE_BARRIER_ADDR", c.local_addr().to_string())
        .env("MULTINODE_NODE_INDEX", "1")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line)
        .await
        .unwrap();
    assert_eq!(line, "sent\n");
    let waiting = tokio::spawn(async move { a.barrier("x").await });
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let err = tokio::time::timeout(PATIENCE, waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&err, BarrierError::Failed { cause, .. } if cause == "node 1 disconnected"),
        "{err}"
    );
    let late = z.barrier("x").await.unwrap_err();
    assert!(matches!(late, BarrierError::Failed { .. }), "{late}");
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_launch_kills_every_child_and_grandchild() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    std::fs::create_dir(&pids).unwrap();
    // Each child starts a grandchild and records both pids, then waits.
    let body = format!(
        "sleep 1000 &\n\
         echo \"$$ $!\" > {}/$MULTINODE_NODE_INDEX.tmp\n\
         mv {0}/$MULTINODE_NODE_INDEX.tmp {0}/$MULTINODE_NODE_INDEX\n\
         wait\n",
        pids.display()
    );
    let path = script(dir.path(), "child.sh", &body);
    let launch = tokio::spawn(launcher(&path, 3).run());
    eventually("every child to record its pids", || {
        std::fs::read_dir(&pids)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| !e.file_name().to_string_lossy().ends_with(".tmp"))
                    .count()
            })
            .unwrap_or(0)
            == 3
    })
    .await;
    let mut all = Vec::new();
    for i in 0..3 {
        let text = std::fs::read_to_string(pids.join(i.to_string())).unwrap();
        all.extend(text.split_whitespace().map(|p| p.parse::<u32>().unwrap()));
    }
    assert_eq!(all.len(), 6);
    launch.abort();
    let _ = launch.await;
    eventually("every child and grandchild to be gone", || {
        all.iter().all(|pid| gone(*pid))
    })
    .await;
}

/// Whether a process no longer runs: absent, or a zombie awaiting its reaper.
#[cfg(target_os = "linux")]
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state is the first field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_faults_a_child_kills_and_restarts_another_through_the_conductor() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("node1-lived");
    let body = format!(
        "{BASH_CLIENT}\
         if [ \"$MULTINODE_NODE_INDEX\" = 0 ]; then\n\
           say 'BARRIER up'; hear; echo \"$REPLY\"\n\
           say 'PAUSE 1'; hear; echo \"$REPLY\"\n\
           say 'RESUME 1'; hear; echo \"$REPLY\"\n\
           say 'KILL 1'; hear; echo \"$REPLY\"\n\
           say 'RESTART 1'; hear; echo \"$REPLY\"\n\
           say 'CUT 0 1'; hear; echo \"$REPLY\"\n\
           say 'BARRIER again'; hear; echo \"$REPLY\"\n\
         elif [ -e {m} ]; then\n\
           say 'BARRIER again'; hear; echo \"$REPLY\"\n\
         else\n\
           touch {m}\n\
           say 'BARRIER up'; hear; echo \"$REPLY\"\n\
           exec sleep 60\n\
         fi\n\
         say LEAVE; hear\n",
        m = marker.display()
    );
    let path = script(dir.path(), "child.sh", &body);
    let report = tokio::time::timeout(PATIENCE, launcher(&path, 2).faults(None).run())
        .await
        .unwrap()
        .unwrap();
    let out = |i: usize| String::from_utf8_lossy(&report.nodes[i].output).into_owned();
    assert_eq!(
        out(0).lines().collect::<Vec<_>>(),
        [
            "OK up",
            "OK PAUSE pauses=1 resumes=0 kills=0 restarts=0",
            "OK RESUME pauses=1 resumes=1 kills=0 restarts=0",
            "OK KILL pauses=1 resumes=1 kills=1 restarts=0",
            "OK RESTART pauses=1 resumes=1 kills=1 restarts=1",
            "ERR CUT needs a network lab: start the run with --net",
            "OK again",
        ],
        "{report:#?}"
    );
    // Node 1's two lives: the first passed `up` and was killed, the second
    // passed `again` and exited 0.
    assert_eq!(out(1).lines().collect::<Vec<_>>(), ["OK up", "OK again"]);
    assert!(report.success(), "{report:#?}");
}
