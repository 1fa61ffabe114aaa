//! The launcher's children as the conductor sees them: one process group
//! per node, the process faults made on them (pause, resume, kill,
//! restart), and the kill of every group when the launch ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use multinode_wire::{Fault, NodeId};
use parking_lot::{Condvar, Mutex};
use tokio::sync::mpsc::UnboundedSender;

use crate::Conductor;

/// How long a `RESTART` waits for a killed node to be reaped.
const REAP_WAIT: Duration = Duration::from_secs(5);

/// Process groups this launch started, by node: the leader's pid while it
/// runs, and whether the conductor killed it.
pub(crate) struct Groups {
    live: Vec<Option<u32>>,
    killed: Vec<bool>,
    pauses: u64,
    resumes: u64,
    kills: u64,
    restarts: u64,
    reaped: Arc<Condvar>,
}

impl Groups {
    pub(crate) fn new(nodes: u32) -> Self {
        Self {
            live: vec![None; nodes as usize],
            killed: vec![false; nodes as usize],
            pauses: 0,
            resumes: 0,
            kills: 0,
            restarts: 0,
            reaped: Arc::new(Condvar::new()),
        }
    }

    /// Node `i`'s copy started as group `pid`.
    pub(crate) fn started(&mut self, i: u32, pid: u32) {
        self.live[i as usize] = Some(pid);
        self.killed[i as usize] = false;
    }

    /// Node `i`'s leader `pid` was reaped: kill what it left in its group
    /// now. While any member lives the group id cannot be reused, and pids
    /// are handed out cyclically, so this signal reaches only processes of
    /// that group. Returns whether the conductor had killed it.
    pub(crate) fn reaped(&mut self, i: u32, pid: u32) -> bool {
        let i = i as usize;
        if self.live[i] == Some(pid) {
            self.live[i] = None;
        }
        signal_group(pid, Signal::Kill);
        self.reaped.notify_all();
        std::mem::take(&mut self.killed[i])
    }

    /// Kills the groups whose leaders were not reaped yet (so their ids are
    /// still ours): the launch is being abandoned.
    pub(crate) fn kill_all(&mut self) {
        for pid in self.live.iter_mut().filter_map(Option::take) {
            signal_group(pid, Signal::Kill);
        }
    }

    fn report(&self) -> String {
        format!(
            "pauses={} resumes={} kills={} restarts={}",
            self.pauses, self.resumes, self.kills, self.restarts
        )
    }
}

/// Kills every group still recorded when the launch ends, however it ends.
pub(crate) struct KillOnDrop(pub(crate) Arc<Mutex<Groups>>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.0.lock().kill_all();
    }
}

/// The launcher's conductor: process faults on its own children, the rest
/// to the network conductor, if any.
pub(crate) struct ProcessFaults {
    groups: Arc<Mutex<Groups>>,
    reaped: Arc<Condvar>,
    restart: UnboundedSender<u32>,
    network: Option<Arc<dyn Conductor>>,
}

impl ProcessFaults {
    pub(crate) fn new(
        groups: Arc<Mutex<Groups>>,
        restart: UnboundedSender<u32>,
        network: Option<Arc<dyn Conductor>>,
    ) -> Self {
        let reaped = Arc::clone(&groups.lock().reaped);
        Self {
            groups,
            reaped,
            restart,
            network,
        }
    }

    fn process(&self, fault: &Fault, node: NodeId) -> Result<(), String> {
        let mut g = self.groups.lock();
        let i = usize::try_from(node.0)
            .ok()
            .filter(|&i| i < g.live.len())
            .ok_or_else(|| format!("no node {node} in this run"))?;
        if let Fault::Restart(_) = fault {
            if g.live[i].is_some() && !g.killed[i] {
                return Err(format!("node {node} is still running: KILL it first"));
            }
            let deadline = Instant::now() + REAP_WAIT;
            while g.live[i].is_some() {
                if self.reaped.wait_until(&mut g, deadline).timed_out() {
                    return Err(format!(
                        "node {node} was killed but not reaped in {REAP_WAIT:?}"
                    ));
                }
            }
            self.restart
                .send(i as u32)
                .map_err(|_| "the launch is over".to_owned())?;
            g.restarts += 1;
            return Ok(());
        }
        let pid = g.live[i].ok_or_else(|| format!("node {node} is not running"))?;
        let sig = match fault {
            Fault::Pause(_) => Signal::Stop,
            Fault::Resume(_) => Signal::Cont,
            _ => Signal::Kill,
        };
        signal_group(pid, sig);
        match sig {
            Signal::Stop => g.pauses += 1,
            Signal::Cont => g.resumes += 1,
            Signal::Kill => {
                g.kills += 1;
                g.killed[i] = true;
            }
        }
        Ok(())
    }
}

impl Conductor for ProcessFaults {
    fn conduct(&self, fault: &Fault) -> Result<String, String> {
        let network = match fault {
            Fault::Pause(n) | Fault::Resume(n) | Fault::Kill(n) | Fault::Restart(n) => {
                self.process(fault, *n)?;
                match &self.network {
                    Some(net) => net.conduct(&Fault::Counters)?,
                    None => String::new(),
                }
            }
            other => match &self.network {
                Some(net) => net.conduct(other)?,
                None if *other == Fault::Counters => String::new(),
                None => {
                    return Err(format!(
                        "{} needs a network lab: start the run with --net",
                        other.verb()
                    ));
                }
            },
        };
        let processes = self.groups.lock().report();
        Ok(if network.is_empty() {
            processes
        } else {
            format!("{network} {processes}")
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Signal {
    Stop,
    Cont,
    Kill,
}

/// A signal to the process group led by `pid`; only groups this launcher
/// created are ever passed here.
#[cfg(unix)]
#[allow(unsafe_code, reason = "killpg has no safe wrapper in std")]
fn signal_group(pid: u32, sig: Signal) {
    let Ok(pgid) = libc::pid_t::try_from(pid) else {
        return;
    };
    let sig = match sig {
        Signal::Stop => libc::SIGSTOP,
        Signal::Cont => libc::SIGCONT,
        Signal::Kill => libc::SIGKILL,
    };
    // SAFETY: kill(2) with a negative pid signals that process group; it
    // takes no pointers and cannot violate memory safety.
    unsafe {
        libc::kill(-pgid, sig);
    }
}

#[cfg(not(unix))]
fn signal_group(_pid: u32, _sig: Signal) {}
