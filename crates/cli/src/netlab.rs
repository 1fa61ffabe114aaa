//! The network lab in the binary: the conductor that makes network faults
//! on a [`Lab`], the launcher's hooks that put each child on its own host,
//! and the user-namespace fallback for runs without root.

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use anyhow::{Context, Result};
use multinode_barrier::{Conductor, Launcher};
use multinode_net::{Lab, NetError};
use multinode_wire::Fault;

/// The environment variable that gives a lab child its host's address.
pub(crate) const ENV_HOST_ADDR: &str = "MULTINODE_HOST_ADDR";
/// Set once the binary re-ran itself in a user namespace.
const ENV_USERNS: &str = "MULTINODE_USERNS";

/// Makes network faults on a lab; process faults are the launcher's.
pub(crate) struct LabConductor(pub(crate) Arc<Lab>);

impl Conductor for LabConductor {
    fn conduct(&self, fault: &Fault) -> Result<String, String> {
        let lab = &self.0;
        let done = match fault {
            Fault::Partition(groups) => lab.partition(groups),
            Fault::Cut { from, to } => lab.cut(*from, *to),
            Fault::Heal => lab.heal(),
            Fault::Drop { ppm, link: None } => lab.drop_all(Fault::probability(*ppm)),
            Fault::Drop {
                ppm,
                link: Some((from, to)),
            } => lab.drop_link(*from, *to, Fault::probability(*ppm)),
            Fault::Bandwidth { node, bits_per_sec } => lab.bandwidth(*node, *bits_per_sec),
            Fault::Flap { node, down_ms } => {
                lab.flap(*node, std::time::Duration::from_millis(*down_ms))
            }
            Fault::Counters => Ok(()),
            other => return Err(format!("{} is not a network fault", other.verb())),
        };
        done.map_err(|e| e.to_string())?;
        let c = lab.counters().map_err(|e| e.to_string())?;
        Ok(format!(
            "received={} cut={} dropped={} shaped={} flaps={}",
            c.received, c.cut, c.dropped, c.shaped, c.flaps
        ))
    }
}

/// A lab of `hosts` hosts, built off the runtime's thread.
pub(crate) async fn lab(hosts: u32) -> Result<Arc<Lab>> {
    let lab = tokio::task::spawn_blocking(move || Lab::new(hosts))
        .await
        .context("the lab's builder panicked")?
        .context("cannot build the network lab")?;
    Ok(Arc::new(lab))
}

/// Puts each of the launcher's children on its own host, with its address
/// in `MULTINODE_HOST_ADDR`, and its controller on the switch.
pub(crate) fn on_lab(launcher: Launcher, lab: &Arc<Lab>) -> Result<Launcher> {
    let switch = lab.switch_addr();
    let listener = lab
        .within_switch(move || std::net::TcpListener::bind((switch, 0)))?
        .with_context(|| format!("cannot listen on the lab's switch {switch}"))?;
    let l = Arc::clone(lab);
    Ok(launcher.listener(listener).spawner(move |node, cmd| {
        let addr = l.addr(node).map_err(std::io::Error::other)?;
        cmd.env(ENV_HOST_ADDR, addr.to_string());
        l.spawn(node, cmd).map_err(|e| match e {
            NetError::Io(e) => e,
            e => std::io::Error::other(e),
        })
    }))
}

/// Without root, runs this same command again inside a new user namespace
/// (as its root, with a network namespace of its own) where the system
/// allows unprivileged user namespaces; returns only if it does not.
pub(crate) fn reexec_in_user_namespace() {
    use std::os::unix::process::CommandExt;
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if root || std::env::var_os(ENV_USERNS).is_some() {
        return;
    }
    let allowed = std::process::Command::new("unshare")
        .args(["--user", "--map-root-user", "--net", "true"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !allowed {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let err = std::process::Command::new("unshare")
        .args(["--user", "--map-root-user", "--net", "--"])
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(ENV_USERNS, "1")
        .exec();
    eprintln!("multinode: cannot re-run in a user namespace: {err}");
}
