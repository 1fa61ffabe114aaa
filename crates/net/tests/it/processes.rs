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

/// libfaketime leaves two files in `/dev/shm`, named by the pid in the
/// lab's PID namespace, for a process killed under it: gone with the lab.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_under_a_clock_offset_leaves_no_files_behind() {
    let lab = Lab::new(1).unwrap();
    lab.clock_offset(n(0), 60)
        .expect("libfaketime is needed here (CI installs it)");
    let mut cmd = lab.command(n(0), "sleep").unwrap();
    cmd.arg("60");
    let mut child = lab.spawn(n(0), &mut cmd).unwrap();
    let pid = child.id().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let inner = status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|l| l.split_whitespace().last())
        .expect("NSpid")
        .to_owned();
    let names = [
        format!("/dev/shm/faketime_shm_{inner}"),
        format!("/dev/shm/sem.faketime_sem_{inner}"),
    ];
    let exist = || names.iter().all(|f| std::path::Path::new(f).exists());
    wait_for("libfaketime's files", exist);
    lab.kill(n(0)).unwrap();
    child.wait().await.unwrap();
    lab.reaped(n(0));
    assert!(exist(), "the kill itself removed {names:?}");
    drop(lab);
    let left: Vec<&String> = names
        .iter()
        .filter(|f| std::path::Path::new(f).exists())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
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
