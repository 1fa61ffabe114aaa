//! Spawns N copies of a command around a barrier controller, each in its own
//! process group, and reaps every one of them on every path.

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use multinode_wire::{Label, NodeId};
use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinSet;

use crate::client::{ENV_ADDR, ENV_INDEX, ENV_NODES};
use crate::{BarrierError, Config, Controller};

/// How long output is still read after every child has exited.
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);

/// How much of each child's output [`OutputMode::Captured`] keeps.
pub const MAX_CAPTURE: usize = 1 << 20;

/// What happens to the children's stdout and stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputMode {
    /// Each line is printed with a `[node i] ` prefix (stdout to stdout,
    /// stderr to stderr).
    Prefixed,
    /// Kept in the report (the first [`MAX_CAPTURE`] bytes per node).
    Captured,
    /// Shared with this process, unchanged.
    Inherit,
}

/// Launches N processes that meet at barriers: like `mpirun` for cluster
/// tests.
///
/// Each child gets `MULTINODE_BARRIER_ADDR`, `MULTINODE_NODE_INDEX` and
/// `MULTINODE_NODES` in its environment, runs in its own process group, and
/// is killed (its whole group, with SIGKILL) and reaped if the launch is
/// dropped, fails or panics. A child that exits fails every barrier the
/// others wait on at once, with its exit status as the cause.
#[derive(Clone, Debug)]
pub struct Launcher {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    nodes: u32,
    timeout: Duration,
    output: OutputMode,
}

/// How one child ended.
#[derive(Debug)]
pub struct NodeReport {
    /// The child's node id (its `MULTINODE_NODE_INDEX`).
    pub node: NodeId,
    /// Its exit status.
    pub status: ExitStatus,
    /// Barriers it passed.
    pub passed: u32,
    /// The first barrier that failed while it was a member, and why.
    pub first_failure: Option<(Label, String)>,
    /// Its output, with [`OutputMode::Captured`] (stdout then stderr).
    pub output: Vec<u8>,
}

/// How a launch ended.
#[derive(Debug)]
pub struct LaunchReport {
    /// One report per child, by node id.
    pub nodes: Vec<NodeReport>,
    /// Barriers every member passed.
    pub barriers_passed: u64,
    /// Barriers that failed or timed out.
    pub barriers_failed: u64,
}

impl LaunchReport {
    /// Whether every child exited with status 0 and no barrier failed.
    pub fn success(&self) -> bool {
        self.barriers_failed == 0 && self.nodes.iter().all(|n| n.status.success())
    }
}

/// Describes an exit status in words: `exited with status 3`,
/// `killed by signal 9`.
pub fn describe(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return format!("killed by signal {sig}");
        }
    }
    match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => "exited".into(),
    }
}

impl Launcher {
    /// `nodes` copies of `program`.
    pub fn new(program: impl Into<OsString>, nodes: u32) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            envs: Vec::new(),
            nodes,
            timeout: Duration::from_secs(30),
            output: OutputMode::Prefixed,
        }
    }

    /// Arguments passed to every copy.
    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// An extra environment variable for every copy.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// The controller's per-barrier deadline (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Where the children's output goes (default [`OutputMode::Prefixed`]).
    pub fn output(mut self, mode: OutputMode) -> Self {
        self.output = mode;
        self
    }

    /// Starts the controller and the children, waits for every child to
    /// exit, and reports. Dropping the future kills and reaps them all.
    pub async fn run(self) -> Result<LaunchReport, BarrierError> {
        let mut config = Config::new(self.nodes);
        config.timeout = self.timeout;
        // Long enough for the reaper to name the exit status, well inside
        // the 100 ms in which a dead node must fail the others' barrier.
        config.disconnect_grace = Duration::from_millis(40);
        let controller =
            Controller::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), config).await?;
        let addr = controller.local_addr().to_string();

        let group = Arc::new(Mutex::new(Groups::default()));
        let _guard = KillOnDrop(Arc::clone(&group));
        let mut waits = JoinSet::new();
        let mut outputs = Vec::new();
        for i in 0..self.nodes {
            let mut cmd = Command::new(&self.program);
            cmd.args(&self.args)
                .envs(self.envs.iter().map(|(k, v)| (k, v)))
                .env(ENV_ADDR, &addr)
                .env(ENV_INDEX, i.to_string())
                .env(ENV_NODES, self.nodes.to_string())
                .stdin(Stdio::null())
                .kill_on_drop(true);
            #[cfg(unix)]
            cmd.process_group(0);
            if self.output != OutputMode::Inherit {
                cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            }
            let mut child = cmd.spawn()?;
            let pid = child.id();
            if let Some(pid) = pid {
                group.lock().live.push(pid);
            }
            outputs.push(self.collect_output(i, &mut child));
            waits.spawn(async move {
                let status = child.wait().await;
                (i, pid, status)
            });
        }

        let mut statuses: Vec<Option<ExitStatus>> = vec![None; self.nodes as usize];
        while let Some(joined) = waits.join_next().await {
            let (i, pid, status) =
                joined.map_err(|e| BarrierError::Io(std::io::Error::other(e)))?;
            if let Some(pid) = pid {
                group.lock().reaped(pid);
            }
            let status = status?;
            controller.node_exited(NodeId(u64::from(i)), describe(status));
            statuses[i as usize] = Some(status);
        }

        // Pipes close when the last holder exits; a process that escaped its
        // group (setsid) could hold one open forever, so the wait is bounded.
        let mut captured = Vec::with_capacity(outputs.len());
        for out in outputs {
            let out = tokio::time::timeout(OUTPUT_DRAIN, out).await;
            captured.push(out.ok().and_then(Result::ok).unwrap_or_default());
        }
        let summary = controller.shutdown().await;
        let nodes = statuses
            .into_iter()
            .zip(captured)
            .enumerate()
            .map(|(i, (status, output))| {
                let rec = summary.nodes.get(i).cloned().unwrap_or_default();
                NodeReport {
                    node: NodeId(i as u64),
                    status: status.expect("every child was reaped"),
                    passed: rec.passed,
                    first_failure: rec.first_failure,
                    output,
                }
            })
            .collect();
        Ok(LaunchReport {
            nodes,
            barriers_passed: summary.passed,
            barriers_failed: summary.failed,
        })
    }

    /// Starts forwarding or capturing one child's output; the handle yields
    /// what was captured once both streams close.
    fn collect_output(&self, node: u32, child: &mut Child) -> tokio::task::JoinHandle<Vec<u8>> {
        let mode = self.output;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        tokio::spawn(async move {
            let (a, b) = tokio::join!(
                pump(stdout, mode, node, false),
                pump(stderr, mode, node, true)
            );
            let mut out = a;
            out.extend(b);
            out.truncate(MAX_CAPTURE);
            out
        })
    }
}

async fn pump(
    stream: Option<impl AsyncRead + Unpin>,
    mode: OutputMode,
    node: u32,
    is_err: bool,
) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(stream) = stream else {
        return kept;
    };
    let mut lines = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match lines.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return kept,
            Ok(_) => {}
        }
        match mode {
            OutputMode::Prefixed => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches('\n');
                if is_err {
                    eprintln!("[node {node}] {text}");
                } else {
                    println!("[node {node}] {text}");
                }
            }
            OutputMode::Captured => {
                if kept.len() < MAX_CAPTURE {
                    kept.extend_from_slice(&line);
                }
            }
            OutputMode::Inherit => {}
        }
    }
}

/// Process groups this launch started, by the leader's pid.
#[derive(Default)]
struct Groups {
    live: Vec<u32>,
}

impl Groups {
    /// The leader was reaped: kill what it left in its group now. While any
    /// member lives the group id cannot be reused, and pids are handed out
    /// cyclically, so this signal reaches only processes of that group.
    fn reaped(&mut self, pid: u32) {
        self.live.retain(|&p| p != pid);
        kill_group(pid);
    }

    /// Kills the groups whose leaders were not reaped yet (so their ids are
    /// still ours): the launch is being abandoned.
    fn kill_all(&mut self) {
        for pid in self.live.drain(..) {
            kill_group(pid);
        }
    }
}

/// Kills every group still recorded when the launch ends, however it ends.
struct KillOnDrop(Arc<Mutex<Groups>>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.0.lock().kill_all();
    }
}

/// SIGKILL to the process group led by `pid`; only groups this launcher
/// created are ever passed here.
#[cfg(unix)]
#[allow(unsafe_code, reason = "killpg has no safe wrapper in std")]
fn kill_group(pid: u32) {
    let Ok(pgid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) with a negative pid signals that process group; it
    // takes no pointers and cannot violate memory safety.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

#[cfg(not(unix))]
fn kill_group(_pid: u32) {}
