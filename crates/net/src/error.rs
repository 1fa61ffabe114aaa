use std::io;

use multinode_wire::NodeId;

/// Why a lab could not be built or a fault not made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The process may not create namespaces or configure links.
    #[error(
        "the network lab needs root (or CAP_SYS_ADMIN and CAP_NET_ADMIN): {what} was refused; run under sudo, or inside `unshare --user --map-root-user --net` where unprivileged user namespaces are allowed"
    )]
    Privilege {
        /// What the kernel refused.
        what: String,
    },
    /// A program the lab runs is not installed.
    #[error("`{tool}` is not installed: install the Debian package {package}")]
    MissingTool {
        /// The program.
        tool: &'static str,
        /// The package that has it.
        package: &'static str,
    },
    /// A program the lab runs failed.
    #[error("`{tool} {args}` failed ({status}): {stderr}")]
    Tool {
        /// The program.
        tool: &'static str,
        /// Its arguments.
        args: String,
        /// How it exited.
        status: String,
        /// What it printed on stderr (trimmed).
        stderr: String,
    },
    /// A program's output did not read as expected.
    #[error("cannot read the output of `{tool}`: {why}")]
    Output {
        /// The program.
        tool: &'static str,
        /// What was wrong.
        why: String,
    },
    /// More hosts than one lab's subnet holds.
    #[error("a lab holds at most {max} hosts, not {hosts}")]
    TooManyHosts {
        /// Hosts asked for.
        hosts: u32,
        /// The most there can be.
        max: u32,
    },
    /// No such host in this lab.
    #[error("the lab has no host {0}")]
    UnknownHost(NodeId),
    /// A drop probability or rate out of range.
    #[error("{0}")]
    BadFault(String),
    /// A clock offset was asked for without libfaketime.
    #[error(
        "a clock offset needs libfaketime: install the Debian package faketime (or set MULTINODE_LIBFAKETIME)"
    )]
    NoFaketime,
    /// The lab's keeper process (the init of its PID namespace) failed.
    #[error("the lab's keeper process failed: {0}")]
    Keeper(String),
    /// Not on Linux: network namespaces, veth and nftables are Linux's.
    #[error("the network lab needs Linux (network namespaces, veth, nftables)")]
    Unsupported,
    /// An I/O error.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}
