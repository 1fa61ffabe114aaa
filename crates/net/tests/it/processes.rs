use std::time::{Duration, Instant};

use multinode_net::Lab;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::hosts::n;

/// The state letter of `pid` in /proc (R, S, T, ...).
fn state(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit(')')
        .next()
        .and_then(|s| s.trim().chars().next())
        .unwrap_or('?')
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_process_sees_its_host_and_is_paused_resumed_and_killed() {
    let lab = Lab::new(2).unwrap();
    let mut cmd = lab.command(n(1), "sh").unwrap();
    cmd.args([
        "-c",
        "ip -o -4 addr show dev eth0; echo pid $$; exec sleep 60",
    ])
    .stdout(std::process::Stdio::piped());
    let mut child = lab.spawn(n(1), &mut cmd).unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = out.next_line().await.unwrap().unwrap();
    assert!(
        first.contains(&format!("{}/22", lab.addr(n(1)).unwrap())),
        "{first}"
    );
    // It is the first process of the lab's PID namespace after the keeper.
    let second = out.next_line().await.unwrap().unwrap();
    assert!(second.starts_with("pid ") && second != "pid 1", "{second}");

    let pid = child.id().unwrap();
    lab.pause(n(1)).unwrap();
    wait_for("the pause", || state(pid) == 'T');
    lab.resume(n(1)).unwrap();
    wait_for("the resume", || state(pid) != 'T');
    lab.kill(n(1)).unwrap();
    let status = child.wait().await.unwrap();
    lab.reaped(n(1));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "{status}");
    assert!(lab.kill(n(1)).is_err(), "reaped: no signal goes to its pid");

    // Started again: a restart.
    let mut cmd = lab.command(n(1), "true").unwrap();
    let status = lab.spawn(n(1), &mut cmd).unwrap().wait().await.unwrap();
    lab.reaped(n(1));
    assert!(status.success());
    let k = lab.counters().unwrap();
    assert_eq!(
        (k.pauses, k.resumes, k.kills, k.restarts),
        (1, 1, 1, 1),
        "{k}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_offset_shifts_the_wall_clock_of_processes_started_after_it() {
    let lab = Lab::new(1).unwrap();
    if multinode_net::libfaketime().is_none() {
        let e = lab.clock_offset(n(0), 3600).unwrap_err();
        panic!("libfaketime is needed here (CI installs it): {e}");
    }
    lab.clock_offset(n(0), 3600).unwrap();
    let mut cmd = lab.command(n(0), "date").unwrap();
    cmd.arg("+%s").stdout(std::process::Stdio::piped());
    let out = lab
        .spawn(n(0), &mut cmd)
        .unwrap()
        .wait_with_output()
        .await
        .unwrap();
    let theirs: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let ours = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (theirs - ours - 3600).abs() < 60,
        "theirs {theirs}, ours {ours}"
    );
}

/// The pid of `pid` (ours) in its own, innermost PID namespace.
fn inner_pid(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|l| l.split_whitespace().last())
        .expect("NSpid")
        .to_owned()
}

/// Two labs at once, a host of each under a clock offset: their first
/// processes have the same pid in their labs' PID namespaces, and
/// libfaketime names the files it makes in `/dev/shm` by that pid. In one
/// shared `/dev/shm` the second process would find the first one's names
/// (and run without its own), one lab's cleanup would remove the other's,
/// and a name left without its semaphore stops the next process of that
/// pid from starting. Each host has a `/dev/shm` of its own, as a machine
/// of its own would: both start, each with its own clock and its own
/// files, and nothing lands in ours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_labs_start_skewed_processes_of_the_same_pid_at_once() {
    let labs = [Lab::new(1).unwrap(), Lab::new(1).unwrap()];
    let mut children = Vec::new();
    for (lab, secs) in labs.iter().zip([3600i64, -3600]) {
        lab.clock_offset(n(0), secs)
            .expect("libfaketime is needed here (CI installs it)");
        let mut cmd = lab.command(n(0), "sh").unwrap();
        cmd.args(["-c", "date +%s; exec sleep 60"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        children.push((lab.spawn(n(0), &mut cmd).unwrap(), secs));
    }
    let pids: Vec<u32> = children.iter().map(|(c, _)| c.id().unwrap()).collect();
    let inner: Vec<String> = pids.iter().map(|&p| inner_pid(p)).collect();
    assert_eq!(inner[0], inner[1], "nothing to collide: the pids differ");
    for (child, secs) in &mut children {
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(10), out.next_line())
            .await
            .expect("no date in 10 s")
            .unwrap();
        let Some(line) = line else {
            let mut err = String::new();
            let mut stderr = child.stderr.take().unwrap();
            let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut err).await;
            panic!("the process under a {secs:+} s offset did not start: {err}");
        };
        let theirs: i64 = line.trim().parse().unwrap();
        let ours = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!(
            (theirs - ours - *secs).abs() < 60,
            "offset {secs}: theirs {theirs}, ours {ours}"
        );
    }
    let name = format!("dev/shm/faketime_shm_{}", inner[0]);
    for pid in &pids {
        let theirs = format!("/proc/{pid}/root/{name}");
        wait_for("libfaketime's file in the host's /dev/shm", || {
            std::path::Path::new(&theirs).exists()
        });
    }
    assert!(
        !std::path::Path::new("/").join(&name).exists(),
        "libfaketime's file is in our /dev/shm"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_lab_kills_what_runs_on_it() {
    let lab = Lab::new(1).unwrap();
    let mut cmd = lab.command(n(0), "sh").unwrap();
    // A grandchild in the background: it is in the lab's PID namespace too.
    cmd.args(["-c", "sleep 60 & echo $!; exec sleep 60"])
        .stdout(std::process::Stdio::piped());
    let mut child = lab.spawn(n(0), &mut cmd).unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let _inner = out.next_line().await.unwrap().unwrap();
    let pid = child.id().unwrap();
    // The grandchild, by its pid in our namespace: a child of sh.
    let kids = |p: u32| -> Vec<u32> {
        std::fs::read_to_string(format!("/proc/{p}/task/{p}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect()
    };
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let more = kids(all[i]);
        all.extend(more);
        i += 1;
    }
    assert!(all.len() >= 2, "sh and its sleep: {all:?}");
    drop(lab);
    let _ = child.wait().await;
    wait_for("every lab process to go", || {
        all.iter()
            .all(|p| !std::path::Path::new(&format!("/proc/{p}")).exists() || state(*p) == 'Z')
    });
}
