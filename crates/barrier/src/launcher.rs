//! Spawns N copies of a command around a barrier controller, each in its own
//! process group, and reaps every one of them on every path.

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::Conductor;
use crate::process_faults::{Groups, KillOnDrop, ProcessFaults};

use multinode_wire::{Label, NodeId};
use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinSet;

use crate::identity::{ENV_ADDR, ENV_INDEX, ENV_NODES};
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
#[derive(Clone)]
pub struct Launcher {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    nodes: u32,
    timeout: Duration,
    output: OutputMode,
    spawner: Option<Spawner>,
    listener: Option<Arc<std::net::TcpListener>>,
    faults: Option<Option<Arc<dyn Conductor>>>,
}

/// Starts one child: given its node id and its command (program, arguments
/// and environment set), spawns it — on a lab host, say.
pub type Spawner = Arc<dyn Fn(NodeId, &mut Command) -> std::io::Result<Child> + Send + Sync>;

impl std::fmt::Debug for Launcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launcher")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("nodes", &self.nodes)
            .field("timeout", &self.timeout)
            .field("output", &self.output)
            .field("spawner", &self.spawner.is_some())
            .field("faults", &self.faults.is_some())
            .finish_non_exhaustive()
    }
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
            spawner: None,
            listener: None,
            faults: None,
        }
    }

    /// Starts each child with `spawner` instead of spawning it here: a
    /// network lab puts each on its own host. The command it gets is fully
    /// set up (process group, environment, pipes).
    pub fn spawner(
        mut self,
        spawner: impl Fn(NodeId, &mut Command) -> std::io::Result<Child> + Send + Sync + 'static,
    ) -> Self {
        self.spawner = Some(Arc::new(spawner));
        self
    }

    /// Serves the controller on `listener` (default: an ephemeral loopback
    /// port); its address is what the children are given.
    pub fn listener(mut self, listener: std::net::TcpListener) -> Self {
        self.listener = Some(Arc::new(listener));
        self
    }

    /// Enables conductor lines. `PAUSE`, `RESUME`, `KILL` and `RESTART`
    /// are made by the launcher on its own children (a node killed this way
    /// counts as disconnected, not exited, so a `RESTART`ed copy takes its
    /// slot back); the other faults go to `network`, and are refused
    /// without one.
    pub fn faults(mut self, network: Option<Arc<dyn Conductor>>) -> Self {
        self.faults = Some(network);
        self
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
        let listener = match &self.listener {
            Some(l) => {
                let l = l.try_clone()?;
                l.set_nonblocking(true)?;
                tokio::net::TcpListener::from_std(l)?
            }
            None => {
                tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?
            }
        };
        let group = Arc::new(Mutex::new(Groups::new(self.nodes)));
        let _guard = KillOnDrop(Arc::clone(&group));
        let (restart_tx, mut restarts) = tokio::sync::mpsc::unbounded_channel();
        let controller = match &self.faults {
            Some(network) => {
                let faults = ProcessFaults::new(Arc::clone(&group), restart_tx, network.clone());
                Controller::start_conducting(listener, config, Arc::new(faults))?
            }
            None => Controller::start(listener, config)?,
        };
        let addr = controller.local_addr().to_string();

        let mut waits = JoinSet::new();
        let mut outputs: Vec<Vec<tokio::task::JoinHandle<Vec<u8>>>> =
            (0..self.nodes).map(|_| Vec::new()).collect();
        for i in 0..self.nodes {
            let (child, out) = self.start(i, &addr, &group)?;
            outputs[i as usize].push(out);
            waits.spawn(wait(i, child));
        }

        let mut statuses: Vec<Option<ExitStatus>> = vec![None; self.nodes as usize];
        loop {
            tokio::select! {
                joined = waits.join_next() => {
                    let Some(joined) = joined else { break };
                    let (i, pid, status) =
                        joined.map_err(|e| BarrierError::Io(std::io::Error::other(e)))?;
                    let killed = pid.is_some_and(|pid| group.lock().reaped(i, pid));
                    let status = status?;
                    // A node the conductor killed is only disconnected: a
                    // restarted copy may take its slot back.
                    if !killed {
                        controller.node_exited(NodeId(u64::from(i)), describe(status));
                    }
                    statuses[i as usize] = Some(status);
                }
                Some(i) = restarts.recv() => {
                    let (child, out) = self.start(i, &addr, &group)?;
                    outputs[i as usize].push(out);
                    waits.spawn(wait(i, child));
                }
            }
        }

        // Pipes close when the last holder exits; a process that escaped its
        // group (setsid) could hold one open forever, so the wait is bounded.
        let mut captured = Vec::with_capacity(outputs.len());
        for lives in outputs {
            let mut all = Vec::new();
            for out in lives {
                let out = tokio::time::timeout(OUTPUT_DRAIN, out).await;
                all.extend(out.ok().and_then(Result::ok).unwrap_or_default());
            }
            all.truncate(MAX_CAPTURE);
            captured.push(all);
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

    /// Starts copy `i`, records its group, and starts collecting its output.
    fn start(
        &self,
        i: u32,
        addr: &str,
        group: &Mutex<Groups>,
    ) -> Result<(Child, tokio::task::JoinHandle<Vec<u8>>), BarrierError> {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .env(ENV_ADDR, addr)
            .env(ENV_INDEX, i.to_string())
            .env(ENV_NODES, self.nodes.to_string())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        #[cfg(unix)]
        cmd.process_group(0);
        if self.output != OutputMode::Inherit {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        let mut child = match &self.spawner {
            Some(spawn) => spawn(NodeId(u64::from(i)), &mut cmd)?,
            None => cmd.spawn()?,
        };
        if let Some(pid) = child.id() {
            group.lock().started(i, pid);
        }
        let out = self.collect_output(i, &mut child);
        Ok((child, out))
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

async fn wait(i: u32, mut child: Child) -> (u32, Option<u32>, std::io::Result<ExitStatus>) {
    let pid = child.id();
    let status = child.wait().await;
    (i, pid, status)
}
