//! A node process's handle, whoever started it: the conductor itself (in a
//! lab, where a node starts inside its host's namespaces) or the spawner.

use std::io;
use std::process::ExitStatus;

use crate::spawner::SpawnedHandle;

/// Waits for and kills one node process; dropping it kills the process.
pub(super) enum NodeChild {
    Direct(tokio::process::Child),
    Spawned(SpawnedHandle),
}

impl NodeChild {
    /// Its pid, until it is reaped.
    pub(super) fn id(&self) -> Option<u32> {
        match self {
            NodeChild::Direct(c) => c.id(),
            NodeChild::Spawned(c) => c.id(),
        }
    }

    pub(super) async fn wait(&mut self) -> io::Result<ExitStatus> {
        match self {
            NodeChild::Direct(c) => c.wait().await,
            NodeChild::Spawned(c) => c.wait().await,
        }
    }

    pub(super) fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        match self {
            NodeChild::Direct(c) => c.try_wait(),
            NodeChild::Spawned(c) => c.try_wait(),
        }
    }

    /// Sends SIGKILL, unless it has exited.
    pub(super) fn start_kill(&mut self) -> io::Result<()> {
        match self {
            NodeChild::Direct(c) => c.start_kill(),
            NodeChild::Spawned(c) => c.start_kill(),
        }
    }
}
