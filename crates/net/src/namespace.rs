//! Network namespaces held by file descriptor, never by name: when the
//! process that holds them dies, the kernel frees them, with every link,
//! bridge, qdisc and nft table inside.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;

#[cfg(target_os = "linux")]
use nix::sched::{CloneFlags, setns, unshare};

use crate::NetError;

/// A network namespace, kept alive by an open descriptor.
#[derive(Debug)]
pub(crate) struct Netns(File);

impl Netns {
    /// Network namespaces are Linux's.
    #[cfg(not(target_os = "linux"))]
    pub(crate) fn create() -> Result<Self, NetError> {
        Err(NetError::Unsupported)
    }

    /// A new, empty network namespace (only a down `lo`). Made on a thread
    /// of its own that exits at once, so nothing else ever runs in it.
    #[cfg(target_os = "linux")]
    pub(crate) fn create() -> Result<Self, NetError> {
        std::thread::spawn(|| {
            unshare(CloneFlags::CLONE_NEWNET).map_err(|e| refused("unshare(CLONE_NEWNET)", e))?;
            Ok(Self(File::open("/proc/thread-self/ns/net")?))
        })
        .join()
        .map_err(|_| NetError::Keeper("the namespace thread panicked".into()))?
    }

    /// Opens a namespace file (`/proc/<pid>/ns/net`).
    pub(crate) fn open(path: &str) -> Result<Self, NetError> {
        Ok(Self(File::open(path)?))
    }

    /// A path any process of ours can open to reach this namespace.
    pub(crate) fn path(&self) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            self.0.as_raw_fd()
        ))
    }

    /// Runs `f` on a thread inside this namespace: sockets it opens stay
    /// in the namespace for life, and processes it starts begin there.
    #[cfg(target_os = "linux")]
    pub(crate) fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetError> {
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(&self.0, CloneFlags::CLONE_NEWNET).map_err(|e| refused("setns", e))?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Network namespaces are Linux's.
    #[cfg(not(target_os = "linux"))]
    pub(crate) fn within<T: Send>(&self, _f: impl FnOnce() -> T + Send) -> Result<T, NetError> {
        Err(NetError::Unsupported)
    }

    /// Runs `program args` inside this namespace with `input` on stdin and
    /// returns its stdout; a failure is [`NetError::Tool`].
    pub(crate) fn run(
        &self,
        program: &'static str,
        args: &[&str],
        input: Option<&str>,
    ) -> Result<String, NetError> {
        self.within(|| run(program, args, input))?
    }
}

/// Runs a tool to completion, in the caller's namespaces.
pub(crate) fn run(
    program: &'static str,
    args: &[&str],
    input: Option<&str>,
) -> Result<String, NetError> {
    use std::io::Write;
    use std::process::Stdio;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| missing(program, e))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        // A tool that fails early closes its stdin: its stderr says why.
        let _ = stdin.write_all(text.as_bytes());
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        let args = args.join(" ");
        if stderr.contains("Operation not permitted") {
            return Err(NetError::Privilege {
                what: format!("`{program} {args}`"),
            });
        }
        return Err(NetError::Tool {
            tool: program,
            args,
            status: out.status.to_string(),
            stderr,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The Debian package that has `program`.
fn package(program: &str) -> &'static str {
    match program {
        "nft" => "nftables",
        "ip" | "tc" => "iproute2",
        _ => "util-linux",
    }
}

pub(crate) fn missing(program: &'static str, e: std::io::Error) -> NetError {
    if e.kind() == std::io::ErrorKind::NotFound {
        NetError::MissingTool {
            tool: program,
            package: package(program),
        }
    } else {
        NetError::Io(e)
    }
}

#[cfg(target_os = "linux")]
pub(crate) fn refused(what: &str, e: nix::Error) -> NetError {
    match e {
        nix::Error::EPERM | nix::Error::EACCES => NetError::Privilege { what: what.into() },
        e => NetError::Io(e.into()),
    }
}
