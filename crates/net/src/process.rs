//! Processes on lab hosts: started inside a host's network namespace and
//! the lab's PID namespace, each in its own process group, and the process
//! faults (pause, resume, kill) made on those groups.
//!
//! No `nsenter` stands between the lab and a host process: a stopped
//! `nsenter` stops itself again after SIGCONT when its child was stopped,
//! and would then never reap it.

use std::ffi::OsStr;

use multinode_wire::NodeId;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use parking_lot::Mutex;
use tokio::process::{Child, Command};

use crate::faketime::libfaketime;
use crate::{Lab, NetError};

/// The group leader's pid of the process each host runs now, if any; a
/// host that ran one before counts its next start as a restart.
#[derive(Debug)]
pub(crate) struct Processes {
    hosts: Mutex<Vec<(Option<u32>, u64)>>,
}

impl Processes {
    pub(crate) fn new(hosts: u32) -> Self {
        Self {
            hosts: Mutex::new(vec![(None, 0); hosts as usize]),
        }
    }

    /// SIGKILL to every group still recorded: the lab is going away.
    pub(crate) fn kill_all(&self) {
        for (pid, _) in self.hosts.lock().iter_mut() {
            if let Some(pid) = pid.take() {
                let _ = signal(pid, Signal::SIGKILL);
            }
        }
    }
}

fn signal(pgid: u32, sig: Signal) -> nix::Result<()> {
    let pgid = i32::try_from(pgid).map_err(|_| nix::Error::EINVAL)?;
    killpg(Pid::from_raw(pgid), sig)
}

impl Lab {
    /// A command for `program` on host `node`: in a process group of its
    /// own, killed if its handle is dropped, and under libfaketime when the
    /// host has a clock offset. Start it with [`Lab::spawn`].
    pub fn command(&self, node: NodeId, program: impl AsRef<OsStr>) -> Result<Command, NetError> {
        self.host(node)?;
        let mut cmd = Command::new(program);
        cmd.process_group(0).kill_on_drop(true);
        if let Some(&secs) = self.clock.lock().get(&(node.0 as u32)) {
            let lib = libfaketime().ok_or(NetError::NoFaketime)?;
            cmd.env("LD_PRELOAD", lib)
                .env("FAKETIME", format!("{secs:+}s"))
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
                .env("FAKETIME_NO_CACHE", "1");
        }
        Ok(cmd)
    }

    /// Starts `cmd` on host `node`, inside its network namespace and the
    /// lab's PID and mount namespaces (forked from a thread that entered
    /// them, so the process is this one's child, with no wrapper between),
    /// and records it as the host's process, the one [`Lab::pause`],
    /// [`Lab::resume`] and [`Lab::kill`] reach. Call [`Lab::reaped`] once
    /// it has been waited for, so no signal can reach a recycled pid. Must
    /// be called inside a tokio runtime.
    ///
    /// The lab's mount namespace is the machine's, as it was when the lab
    /// was made (mounts made since are not in it), with a `/dev/shm` of the
    /// lab's own, as a machine of its own would have: libfaketime names
    /// its files there by the pid in the lab's PID namespace, which another
    /// lab's process may have at the same time. The process starts in this
    /// process's working directory.
    pub fn spawn(&self, node: NodeId, cmd: &mut Command) -> Result<Child, NetError> {
        let i = self.host_index(node)?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| NetError::Keeper(format!("spawn needs a tokio runtime: {e}")))?;
        let host = self.host(node)?;
        let cwd = std::env::current_dir().map_err(|e| {
            NetError::Io(std::io::Error::new(
                e.kind(),
                format!("cannot read the working directory a host process starts in: {e}"),
            ))
        })?;
        let (pid_ns, mnt_ns) = (&self.pid_ns, &self.mnt_ns);
        let child = host.within(|| {
            #[cfg(target_os = "linux")]
            enter(pid_ns, mnt_ns, &cwd)?;
            let _ = (pid_ns, mnt_ns, &cwd);
            let _rt = runtime.enter();
            cmd.spawn().map_err(NetError::Io)
        })??;
        let mut hosts = self.processes.hosts.lock();
        let slot = &mut hosts[i];
        if slot.1 > 0 {
            self.tally.lock().restarts += 1;
        }
        slot.0 = child.id();
        slot.1 += 1;
        Ok(child)
    }

    /// Host `node`'s process was waited for: forget its pid.
    pub fn reaped(&self, node: NodeId) {
        if let Ok(i) = self.host_index(node) {
            self.processes.hosts.lock()[i].0 = None;
        }
    }

    /// Stops host `node`'s process group (SIGSTOP): it holds its sockets
    /// and answers nothing, like a long GC pause or a stalled VM.
    pub fn pause(&self, node: NodeId) -> Result<(), NetError> {
        self.signal(node, Signal::SIGSTOP)?;
        self.tally.lock().pauses += 1;
        Ok(())
    }

    /// Continues host `node`'s process group (SIGCONT).
    pub fn resume(&self, node: NodeId) -> Result<(), NetError> {
        self.signal(node, Signal::SIGCONT)?;
        self.tally.lock().resumes += 1;
        Ok(())
    }

    /// Kills host `node`'s process group (SIGKILL); the caller still reaps
    /// it, then may start it again.
    pub fn kill(&self, node: NodeId) -> Result<(), NetError> {
        self.signal(node, Signal::SIGKILL)?;
        self.tally.lock().kills += 1;
        Ok(())
    }

    /// Shifts the wall clock of processes started on host `node` from now
    /// on by `secs` seconds (through libfaketime; monotonic clocks are left
    /// alone). Errors at once when libfaketime is not installed.
    pub fn clock_offset(&self, node: NodeId, secs: i64) -> Result<(), NetError> {
        let i = self.host_index(node)? as u32;
        libfaketime().ok_or(NetError::NoFaketime)?;
        let mut clock = self.clock.lock();
        if secs == 0 {
            clock.remove(&i);
        } else {
            clock.insert(i, secs);
        }
        Ok(())
    }

    fn signal(&self, node: NodeId, sig: Signal) -> Result<(), NetError> {
        let i = self.host_index(node)?;
        let pid = self.processes.hosts.lock()[i].0;
        let Some(pid) = pid else {
            return Err(NetError::BadFault(format!("host {node} runs no process")));
        };
        signal(pid, sig).map_err(|e| NetError::Io(e.into()))
    }

    pub(crate) fn host_index(&self, node: NodeId) -> Result<usize, NetError> {
        self.host(node)?;
        Ok(node.0 as usize)
    }
}

/// Moves the calling thread (a thread of its own, made to start one
/// process) into the lab's PID namespace for its children and into the
/// lab's mount namespace, then back to `cwd`: joining a mount namespace
/// sets the working directory to its root, and a thread may join one only
/// once it shares its filesystem attributes with no other thread.
#[cfg(target_os = "linux")]
fn enter(
    pid_ns: &std::fs::File,
    mnt_ns: &std::fs::File,
    cwd: &std::path::Path,
) -> Result<(), NetError> {
    use crate::namespace::refused;
    use nix::sched::{CloneFlags, setns, unshare};
    setns(pid_ns, CloneFlags::CLONE_NEWPID).map_err(|e| refused("setns(CLONE_NEWPID)", e))?;
    unshare(CloneFlags::CLONE_FS).map_err(|e| refused("unshare(CLONE_FS)", e))?;
    setns(mnt_ns, CloneFlags::CLONE_NEWNS).map_err(|e| refused("setns(CLONE_NEWNS)", e))?;
    std::env::set_current_dir(cwd).map_err(|e| {
        NetError::Io(std::io::Error::new(
            e.kind(),
            format!(
                "the working directory {} is not in the lab's mount namespace: {e}",
                cwd.display()
            ),
        ))
    })
}
