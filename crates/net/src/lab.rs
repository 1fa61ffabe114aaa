//! A lab: N hosts, each a network namespace with one veth link to a bridge
//! in a switch namespace, and a keeper process whose PID namespace every
//! process started on a host joins.
//!
//! Nothing in a lab has a name the system keeps: the namespaces are held by
//! this process's descriptors and by the keeper, and every host process is
//! in the keeper's PID namespace. The keeper is the init of that namespace
//! and reads its stdin, a pipe only this process holds; when this process
//! exits, however it exits (SIGKILL included), the pipe closes, the keeper
//! exits, the kernel kills every process in its PID namespace, and the
//! namespaces, links, bridge, qdiscs and nft tables go with the last
//! reference. Dropping a [`Lab`] does the same at once.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use multinode_wire::NodeId;
use parking_lot::Mutex;

use crate::namespace::{Netns, missing};
use crate::process::Processes;
use crate::rules::Rules;
use crate::{Counters, MAX_HOSTS, NetError, Subnet};

/// The bridge's name in the switch namespace.
const BRIDGE: &str = "br0";
/// Each host's link, as the host sees it.
pub(crate) const LINK: &str = "eth0";
/// How long the keeper may take to start or to exit.
const KEEPER_DEADLINE: Duration = Duration::from_secs(10);

/// Labs this process made, so two labs of one process get distinct
/// subnets.
static LABS: AtomicU32 = AtomicU32::new(0);

/// A network lab of real hosts on one machine; see the crate docs.
pub struct Lab {
    pub(crate) subnet: Subnet,
    pub(crate) hosts: Vec<Netns>,
    switch: Netns,
    pub(crate) pid_ns: File,
    /// The lab's mount namespace: the machine's mounts, but a `/dev/shm`
    /// of the lab's own (see [`Lab::spawn`]).
    pub(crate) mnt_ns: File,
    keeper: Option<(Child, ChildStdin)>,
    pub(crate) rules: Mutex<Rules>,
    /// Hosts whose nft table exists.
    pub(crate) tables: Mutex<BTreeSet<u32>>,
    pub(crate) tally: Mutex<Counters>,
    /// Hosts with a bandwidth limit in force.
    pub(crate) shaped: Mutex<BTreeSet<u32>>,
    pub(crate) processes: Processes,
    pub(crate) clock: Mutex<BTreeMap<u32, i64>>,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("hosts", &self.hosts.len())
            .field("subnet", &self.subnet)
            .finish_non_exhaustive()
    }
}

impl Lab {
    /// Builds a lab of `hosts` hosts: host `i` has address
    /// [`Lab::addr`]`(i)` on its `eth0`, and every host reaches every
    /// other and the switch. Fails with one clear error, and leaves nothing
    /// behind, when a privilege or a program is missing.
    pub fn new(hosts: u32) -> Result<Self, NetError> {
        if !cfg!(target_os = "linux") {
            return Err(NetError::Unsupported);
        }
        if hosts > MAX_HOSTS {
            return Err(NetError::TooManyHosts {
                hosts,
                max: MAX_HOSTS,
            });
        }
        for (tool, package) in [
            ("ip", "iproute2"),
            ("tc", "iproute2"),
            ("nft", "nftables"),
            ("nsenter", "util-linux"),
            ("unshare", "util-linux"),
        ] {
            if !on_path(tool) {
                return Err(NetError::MissingTool { tool, package });
            }
        }
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        let subnet = Subnet::slot(std::process::id().wrapping_mul(37).wrapping_add(n));

        let (keeper, stdin, pid) = start_keeper()?;
        let mut lab = Lab {
            subnet,
            hosts: Vec::with_capacity(hosts as usize),
            switch: Netns::open(&format!("/proc/{pid}/ns/net"))?,
            pid_ns: File::open(format!("/proc/{pid}/ns/pid_for_children"))?,
            mnt_ns: File::open(format!("/proc/{pid}/ns/mnt"))?,
            keeper: Some((keeper, stdin)),
            rules: Mutex::new(Rules::default()),
            tables: Mutex::new(BTreeSet::new()),
            tally: Mutex::new(Counters::default()),
            shaped: Mutex::new(BTreeSet::new()),
            processes: Processes::new(hosts),
            clock: Mutex::new(BTreeMap::new()),
        };
        for _ in 0..hosts {
            lab.hosts.push(Netns::create()?);
        }
        lab.wire()?;
        Ok(lab)
    }

    /// Makes the bridge, one veth pair per host, and the addresses.
    fn wire(&self) -> Result<(), NetError> {
        let mut switch = format!(
            "link set lo up\nlink add {BRIDGE} type bridge\naddr add {}/{} dev {BRIDGE}\nlink set {BRIDGE} up\n",
            self.subnet.switch(),
            self.subnet.prefix_len()
        );
        for (i, host) in self.hosts.iter().enumerate() {
            switch.push_str(&format!(
                "link add h{i} type veth peer name {LINK} netns {}\nlink set h{i} master {BRIDGE} up\n",
                host.path().display()
            ));
        }
        self.switch.run("ip", &["-batch", "-"], Some(&switch))?;
        // The switch is a plain switch: where br_netfilter is loaded, its
        // per-namespace hooks would pass every bridged frame through the
        // switch's (empty) firewall. Faults live on the hosts' input.
        self.switch.within(|| {
            for hook in ["iptables", "ip6tables", "arptables"] {
                let knob = format!("/proc/sys/net/bridge/bridge-nf-call-{hook}");
                // Absent without br_netfilter: nothing to turn off.
                let _ = std::fs::write(knob, "0");
            }
        })?;
        for (i, host) in self.hosts.iter().enumerate() {
            let addr = self.addr(NodeId(i as u64))?;
            let script = format!(
                "link set lo up\naddr add {addr}/{} dev {LINK}\nlink set {LINK} up\n",
                self.subnet.prefix_len()
            );
            host.run("ip", &["-batch", "-"], Some(&script))?;
        }
        Ok(())
    }

    /// How many hosts the lab has.
    pub fn hosts(&self) -> u32 {
        self.hosts.len() as u32
    }

    /// The lab's subnet.
    pub fn subnet(&self) -> Subnet {
        self.subnet
    }

    /// Host `node`'s address.
    pub fn addr(&self, node: NodeId) -> Result<Ipv4Addr, NetError> {
        self.host(node)?;
        self.subnet.host(node).ok_or(NetError::UnknownHost(node))
    }

    /// The switch's address: sockets opened [`Lab::within_switch`] bind it
    /// to be reachable from every host, and no fault ever touches it.
    pub fn switch_addr(&self) -> Ipv4Addr {
        self.subnet.switch()
    }

    pub(crate) fn host(&self, node: NodeId) -> Result<&Netns, NetError> {
        usize::try_from(node.0)
            .ok()
            .and_then(|i| self.hosts.get(i))
            .ok_or(NetError::UnknownHost(node))
    }

    /// Runs `f` on a thread inside host `node`'s network namespace: a
    /// socket it opens lives on that host.
    pub fn within<T: Send>(
        &self,
        node: NodeId,
        f: impl FnOnce() -> T + Send,
    ) -> Result<T, NetError> {
        self.host(node)?.within(f)
    }

    /// Runs `f` on a thread inside the switch's namespace, where the lab's
    /// owner listens (a barrier controller, say) and reaches every host.
    pub fn within_switch<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetError> {
        self.switch.within(f)
    }

    /// What the faults did so far: the kernel's counters on every host a
    /// network fault touched, and the lab's own tally.
    pub fn counters(&self) -> Result<Counters, NetError> {
        let mut c = self.tally.lock().clone();
        let tables: Vec<u32> = self.tables.lock().iter().copied().collect();
        for to in tables {
            let node = NodeId(u64::from(to));
            let json = self.host(node)?.run(
                "nft",
                &[
                    "-j",
                    "list",
                    "counters",
                    "table",
                    "inet",
                    crate::rules::TABLE,
                ],
                None,
            )?;
            c.add_host(node, &crate::counters::parse(&json)?);
        }
        let shaped: Vec<u32> = self.shaped.lock().iter().copied().collect();
        for host in shaped {
            c.shaped += self.tbf_drops(host)?;
        }
        Ok(c)
    }
}

impl Lab {
    /// What the bandwidth limit on `host` dropped so far.
    pub(crate) fn tbf_drops(&self, host: u32) -> Result<u64, NetError> {
        let json = self.hosts[host as usize].run(
            "tc",
            &["-s", "-j", "qdisc", "show", "dev", LINK],
            None,
        )?;
        crate::counters::parse_tbf_drops(&json)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.processes.kill_all();
        if let Some((mut keeper, stdin)) = self.keeper.take() {
            // The keeper's stdin closes: it exits, and the kernel kills
            // every process in its PID namespace.
            drop(stdin);
            let deadline = Instant::now() + KEEPER_DEADLINE;
            loop {
                match keeper.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = keeper.kill();
                        let _ = keeper.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        }
    }
}

/// Starts the keeper: `unshare` in a new network namespace (the switch),
/// PID namespace and mount namespace, whose init mounts a `/dev/shm` of
/// the lab's own and then reads stdin until it closes. Returns it once the
/// namespaces exist, with its stdin and pid.
fn start_keeper() -> Result<(Child, ChildStdin, u32), NetError> {
    let mut child = Command::new("unshare")
        .args([
            "--net",
            "--pid",
            "--mount",
            "--fork",
            "--kill-child",
            "--",
            "sh",
            "-c",
        ])
        .arg("mount -t tmpfs -o mode=1777 multinode-lab-shm /dev/shm && echo ready && exec cat >/dev/null")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| missing("unshare", e))?;
    let stdin = child.stdin.take().expect("piped");
    let mut line = String::new();
    let ready = BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line);
    if !matches!(ready, Ok(n) if n > 0 && line.trim() == "ready") {
        drop(stdin);
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        let _ = child.wait();
        let stderr = stderr.trim().to_owned();
        if stderr.contains("Operation not permitted") {
            return Err(NetError::Privilege {
                what: "unshare --net --pid --mount".into(),
            });
        }
        return Err(NetError::Keeper(stderr));
    }
    let pid = child.id();
    Ok((child, stdin, pid))
}

/// Whether `tool` is an executable file on `PATH`.
fn on_path(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(tool))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_missing_tool_is_found_missing() {
        assert!(super::on_path("sh"));
        assert!(!super::on_path("multinode-no-such-tool"));
    }
}
