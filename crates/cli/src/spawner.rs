//! Node processes started by a small helper process, so that no start
//! copies the conductor's descriptor table.
//!
//! A conductor of N nodes holds four descriptors for each (two pipes, the
//! barrier connection, the child's pidfd). Every fork copies that table and
//! every exec closes the copies again: at 1,000 nodes, a third of a
//! millisecond of CPU for each start, growing with N — the part of starting
//! a cluster that grew as N². The spawner is started before the first node,
//! while the conductor holds a handful. It starts each node with two fresh
//! pipes, hands their far ends back over a Unix socket (`SCM_RIGHTS`),
//! reaps the node and reports how it exited. When the conductor goes away,
//! the spawner kills what it started and exits: no node outlives its run.
//!
//! Messages are single datagrams of a `SOCK_SEQPACKET` pair, fields split
//! by NUL (which no argument, variable or path can hold):
//! - `S id log program n args… m vars…` starts a process (a variable
//!   without `=` is removed); answered `P id pid` with the two descriptors,
//!   or `F id reason`;
//! - `K pid` kills a process the spawner started and has not reaped;
//! - `X pid status` says a process exited (its raw wait status).

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{ExitCode, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::Pid;
use parking_lot::{Condvar, Mutex};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType, recvmsg, sendmsg, socketpair,
};
use tokio::io::Interest;
use tokio::net::UnixDatagram;
use tokio::sync::{oneshot, watch};

/// The largest message either side accepts: a start request's program,
/// arguments and changed variables.
const MAX_MESSAGE: usize = 64 << 10;

/// How long a start may take before the spawner counts as stuck.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The conductor's side: starts processes through the spawner.
pub(crate) struct Spawner {
    /// A `SOCK_SEQPACKET` socket, driven as tokio drives a datagram one;
    /// `None` once closed.
    sock: Option<Arc<UnixDatagram>>,
    state: Arc<Mutex<State>>,
    process: tokio::process::Child,
    reader: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct State {
    next: u64,
    /// Starts asked for and not yet answered, by request id.
    starting: HashMap<u64, oneshot::Sender<Result<Started, String>>>,
    /// Processes started and not yet reported exited, by pid.
    running: HashMap<u32, watch::Sender<Option<ExitStatus>>>,
    /// The spawner is gone: nothing more will start or be reported.
    gone: bool,
}

struct Started {
    pid: u32,
    stdin: OwnedFd,
    stdout: OwnedFd,
    exit: watch::Receiver<Option<ExitStatus>>,
}

/// A process the spawner started: what the conductor holds of it.
pub(crate) struct Spawned {
    /// Its stdin's write end and its stdout's read end.
    pub(crate) stdin: OwnedFd,
    pub(crate) stdout: OwnedFd,
    pub(crate) handle: SpawnedHandle,
}

/// Waits for and kills a process the spawner started. Dropping it kills the
/// process if it has not exited.
pub(crate) struct SpawnedHandle {
    pid: u32,
    exit: watch::Receiver<Option<ExitStatus>>,
    sock: Arc<UnixDatagram>,
}

impl Spawner {
    /// Starts the spawner: `exe spawner`, this same program.
    pub(crate) fn start(exe: &Path) -> Result<Self> {
        let (ours, theirs) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .context("cannot make the spawner's socket")?;
        // Its end blocks: the spawner reads it with a plain thread.
        rustix::io::ioctl_fionbio(&theirs, false)?;
        let process = tokio::process::Command::new(exe)
            .arg("spawner")
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            // Its own group: a terminal's Ctrl-C reaches the conductor,
            // which stops the nodes in order, not the spawner.
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start the spawner {}", exe.display()))?;
        let sock = Arc::new(UnixDatagram::from_std(ours.into())?);
        let state = Arc::new(Mutex::new(State::default()));
        let reader = tokio::spawn(read_replies(Arc::clone(&sock), Arc::clone(&state)));
        Ok(Self {
            sock: Some(sock),
            state,
            process,
            reader,
        })
    }

    /// Starts `cmd` (its program, arguments and changed variables; its own
    /// process group; stdin and stdout piped, stderr appended to `log`).
    pub(crate) async fn spawn(&self, cmd: &std::process::Command, log: &Path) -> Result<Spawned> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut s = self.state.lock();
            if s.gone {
                bail!("the spawner has exited");
            }
            s.next += 1;
            let id = s.next;
            s.starting.insert(id, tx);
            id
        };
        let msg = start_request(id, cmd, log)?;
        let sock = self.sock.as_ref().context("the spawner is closed")?;
        if let Err(e) = send(sock, &msg).await {
            self.state.lock().starting.remove(&id);
            return Err(e).context("cannot reach the spawner");
        }
        // A start is a fork and an exec: an answer that never comes (a
        // spawner stopped, say) is an error, not a hang.
        let answer = tokio::time::timeout(START_TIMEOUT, rx).await.map_err(|_| {
            self.state.lock().starting.remove(&id);
            anyhow!(
                "the spawner did not answer within {} s",
                START_TIMEOUT.as_secs()
            )
        })?;
        let started = answer
            .map_err(|_| anyhow!("the spawner exited"))?
            .map_err(|why| anyhow!("{why}"))?;
        Ok(Spawned {
            stdin: started.stdin,
            stdout: started.stdout,
            handle: SpawnedHandle {
                pid: started.pid,
                exit: started.exit,
                sock: Arc::clone(sock),
            },
        })
    }

    /// Closes the socket (the spawner then kills anything it still runs)
    /// and waits for the spawner to exit.
    pub(crate) async fn close(mut self) {
        self.reader.abort();
        let _ = (&mut self.reader).await;
        self.sock = None;
        let exited = tokio::time::timeout(Duration::from_secs(10), self.process.wait()).await;
        if exited.is_err() {
            let _ = self.process.start_kill();
            let _ = self.process.wait().await;
        }
    }
}

impl Drop for Spawner {
    /// Without [`Spawner::close`] (a run that failed on its way): the
    /// reader ends, so the socket closes once no process handle holds it,
    /// and the spawner then kills what is left and exits.
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl SpawnedHandle {
    /// Its pid until it is reported exited.
    pub(crate) fn id(&self) -> Option<u32> {
        self.exit.borrow().is_none().then_some(self.pid)
    }

    pub(crate) async fn wait(&mut self) -> io::Result<ExitStatus> {
        match self.exit.wait_for(Option::is_some).await {
            Ok(status) => Ok(status.expect("waited for a status")),
            Err(_) => Err(io::Error::other(
                "the spawner exited before reporting this process's exit",
            )),
        }
    }

    pub(crate) fn try_wait(&self) -> io::Result<Option<ExitStatus>> {
        if let Some(status) = *self.exit.borrow() {
            return Ok(Some(status));
        }
        if self.exit.has_changed().is_err() {
            return Err(io::Error::other("the spawner exited"));
        }
        Ok(None)
    }

    /// Asks the spawner to SIGKILL the process, unless it has exited.
    pub(crate) fn start_kill(&mut self) -> io::Result<()> {
        if self.exit.borrow().is_some() {
            return Ok(());
        }
        let msg = format!("K\0{}", self.pid);
        rustix::net::send(&*self.sock, msg.as_bytes(), SendFlags::DONTWAIT)?;
        Ok(())
    }
}

impl Drop for SpawnedHandle {
    fn drop(&mut self) {
        let _ = self.start_kill();
    }
}

/// `S id log program n args… m vars…`, bounded.
fn start_request(id: u64, cmd: &std::process::Command, log: &Path) -> Result<Vec<u8>> {
    let mut fields: Vec<&OsStr> = Vec::new();
    let id = id.to_string();
    let args: Vec<&OsStr> = cmd.get_args().collect();
    let nargs = args.len().to_string();
    let vars: Vec<OsString> = cmd
        .get_envs()
        .map(|(k, v)| match v {
            Some(v) => {
                let mut kv = k.to_os_string();
                kv.push("=");
                kv.push(v);
                kv
            }
            None => k.to_os_string(),
        })
        .collect();
    let nvars = vars.len().to_string();
    fields.extend([
        OsStr::new("S"),
        OsStr::new(&id),
        log.as_os_str(),
        cmd.get_program(),
        OsStr::new(&nargs),
    ]);
    fields.extend(args);
    fields.push(OsStr::new(&nvars));
    fields.extend(vars.iter().map(OsString::as_os_str));
    let mut msg = Vec::new();
    for (i, f) in fields.iter().enumerate() {
        if f.as_bytes().contains(&0) {
            bail!("{f:?} holds a NUL byte");
        }
        if i > 0 {
            msg.push(0);
        }
        msg.extend_from_slice(f.as_bytes());
    }
    if msg.len() > MAX_MESSAGE {
        bail!(
            "a start request of {} bytes, more than {MAX_MESSAGE}",
            msg.len()
        );
    }
    Ok(msg)
}

async fn send(sock: &UnixDatagram, msg: &[u8]) -> io::Result<()> {
    sock.async_io(Interest::WRITABLE, || {
        Ok(rustix::net::send(sock, msg, SendFlags::DONTWAIT)?)
    })
    .await
    .map(drop)
}

/// Reads the spawner's replies until it goes away.
async fn read_replies(sock: Arc<UnixDatagram>, state: Arc<Mutex<State>>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = sock
            .async_io(Interest::READABLE, || {
                let flags = RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC;
                let iov = &mut [IoSliceMut::new(&mut buf)];
                Ok(recvmsg(&*sock, iov, &mut control, flags)?)
            })
            .await;
        let n = match got {
            Ok(msg) => msg.bytes,
            Err(_) => break,
        };
        if n == 0 {
            break;
        }
        let mut fds: Vec<OwnedFd> = Vec::new();
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = m {
                fds.extend(rights);
            }
        }
        take_reply(&state, &buf[..n.min(buf.len())], fds);
    }
    // Gone: every start waiting fails, every process's exit is unknown.
    let mut s = state.lock();
    s.gone = true;
    s.starting.clear();
    s.running.clear();
}

fn take_reply(state: &Mutex<State>, msg: &[u8], fds: Vec<OwnedFd>) {
    let text = String::from_utf8_lossy(msg);
    let fields: Vec<&str> = text.split('\0').collect();
    let number = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let mut s = state.lock();
    match (fields[0], number(1), number(2)) {
        ("P", Some(id), Some(pid)) => {
            let pid = pid as u32;
            let (tx, exit) = watch::channel(None);
            s.running.insert(pid, tx);
            let started = match <[OwnedFd; 2]>::try_from(fds) {
                Ok([stdin, stdout]) => Ok(Started {
                    pid,
                    stdin,
                    stdout,
                    exit,
                }),
                Err(fds) => Err(format!(
                    "the spawner sent {} descriptors for pid {pid}, not 2",
                    fds.len()
                )),
            };
            if let Some(waiting) = s.starting.remove(&id) {
                let _ = waiting.send(started);
            }
        }
        ("F", Some(id), _) => {
            let why = fields.get(2).copied().unwrap_or("").to_owned();
            if let Some(waiting) = s.starting.remove(&id) {
                let _ = waiting.send(Err(why));
            }
        }
        ("X", Some(pid), _) => {
            let raw = fields
                .get(2)
                .and_then(|f| f.parse::<i32>().ok())
                .unwrap_or(0);
            if let Some(tx) = s.running.remove(&(pid as u32)) {
                let _ = tx.send(Some(ExitStatus::from_raw(raw)));
            }
        }
        _ => tracing::warn!("the spawner said {text:?}"),
    }
}

/// What the spawner has started and not reaped.
#[derive(Default)]
struct Live {
    pids: HashSet<i32>,
    /// The conductor went away: kill the rest, reap them, exit.
    closing: bool,
}

/// `multinode spawner`: serves the conductor on the socket that is its
/// stdin until the conductor closes it.
pub(crate) fn serve() -> Result<ExitCode> {
    let sock = io::stdin().as_fd().try_clone_to_owned()?;
    let live = Arc::new((Mutex::new(Live::default()), Condvar::new()));
    let reaper = {
        let (sock, live) = (sock.try_clone()?, Arc::clone(&live));
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || reap(&sock, &live))?
    };
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut failed = None;
    loop {
        let mut control = RecvAncillaryBuffer::new(&mut []);
        let got = recvmsg(
            &sock,
            &mut [IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::empty(),
        );
        let n = match got {
            Ok(msg) if msg.flags.contains(rustix::net::ReturnFlags::TRUNC) => continue,
            Ok(msg) => msg.bytes,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                failed = Some(e);
                0
            }
        };
        if n == 0 {
            break;
        }
        let fields: Vec<&[u8]> = buf[..n].split(|b| *b == 0).collect();
        match fields[0] {
            b"S" => start(&sock, &live, &fields),
            b"K" => {
                let pid = std::str::from_utf8(fields.get(1).copied().unwrap_or(b""))
                    .ok()
                    .and_then(|p| p.parse::<i32>().ok());
                let l = live.0.lock();
                if let Some(pid) = pid.filter(|p| l.pids.contains(p)) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
            _ => {}
        }
    }
    // The conductor is gone: nothing it started outlives it.
    {
        let mut l = live.0.lock();
        l.closing = true;
        for pid in &l.pids {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        live.1.notify_all();
    }
    let _ = reaper.join();
    match failed {
        // A terminal or a file is not the socket test-cluster gives it.
        Some(e) => bail!("cannot read the conductor's socket on stdin: {e}"),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// Starts the process a `S` request describes and answers `P` or `F`.
fn start(sock: &OwnedFd, live: &(Mutex<Live>, Condvar), fields: &[&[u8]]) {
    let id = fields.get(1).copied().unwrap_or(b"?");
    let answer = |text: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]| {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            control.push(SendAncillaryMessage::ScmRights(fds));
        }
        let _ = sendmsg(
            sock,
            &[IoSlice::new(text)],
            &mut control,
            SendFlags::empty(),
        );
    };
    let fail = |why: String| {
        let mut text = b"F\0".to_vec();
        text.extend_from_slice(id);
        text.push(0);
        text.extend_from_slice(why.replace('\0', " ").as_bytes());
        answer(&text, &[]);
    };
    let Some(mut cmd) = command(fields) else {
        return fail("a malformed start request".into());
    };
    let log = Path::new(OsStr::from_bytes(fields[2]));
    let log = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        Ok(f) => f,
        Err(e) => return fail(format!("cannot open {}: {e}", log.display())),
    };
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        .process_group(0);
    // Held from the start to the answer: the reaper reports an exit only
    // after the start is answered, and only of a pid it knows.
    let mut l = live.0.lock();
    match cmd.spawn() {
        Ok(mut child) => {
            let pid = child.id();
            let stdin = child.stdin.take().map(OwnedFd::from);
            let stdout = child.stdout.take().map(OwnedFd::from);
            l.pids.insert(pid as i32);
            live.1.notify_all();
            if let (Some(stdin), Some(stdout)) = (stdin, stdout) {
                let text = format!("P\0{}\0{pid}", String::from_utf8_lossy(id));
                answer(text.as_bytes(), &[stdin.as_fd(), stdout.as_fd()]);
            }
        }
        Err(e) => {
            drop(l);
            fail(format!(
                "cannot start {}: {e}",
                String::from_utf8_lossy(fields[3])
            ));
        }
    }
}

/// The command a start request describes (without its stdio).
fn command(fields: &[&[u8]]) -> Option<std::process::Command> {
    let os = |b: &[u8]| OsString::from_vec(b.to_vec());
    let count = |b: &[u8]| std::str::from_utf8(b).ok()?.parse::<usize>().ok();
    let program = fields.get(3)?;
    let nargs = count(fields.get(4)?)?;
    let args = fields.get(5..5 + nargs)?;
    let nvars = count(fields.get(5 + nargs)?)?;
    let vars = fields.get(6 + nargs..6 + nargs + nvars)?;
    let mut cmd = std::process::Command::new(os(program));
    cmd.args(args.iter().map(|a| os(a)));
    for var in vars {
        match var.iter().position(|b| *b == b'=') {
            Some(at) => cmd.env(os(&var[..at]), os(&var[at + 1..])),
            None => cmd.env_remove(os(var)),
        };
    }
    Some(cmd)
}

/// Reaps every process the spawner started and reports each exit, until
/// the conductor is gone and nothing is left.
fn reap(sock: &OwnedFd, live: &(Mutex<Live>, Condvar)) {
    loop {
        // Learn of an exit without reaping, so the pid cannot be reused
        // while a kill may still name it.
        match waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Ok(status) => {
                let Some(pid) = status.pid() else {
                    continue;
                };
                let mut l = live.0.lock();
                let _ = waitpid(pid, None);
                l.pids.remove(&pid.as_raw());
                let raw = match status {
                    WaitStatus::Exited(_, code) => (code & 0xff) << 8,
                    WaitStatus::Signaled(_, sig, core) => sig as i32 | if core { 0x80 } else { 0 },
                    _ => 0,
                };
                let text = format!("X\0{}\0{raw}", pid.as_raw());
                let _ = rustix::net::send(sock, text.as_bytes(), SendFlags::empty());
            }
            Err(nix::errno::Errno::ECHILD) => {
                let mut l = live.0.lock();
                while l.pids.is_empty() && !l.closing {
                    live.1.wait(&mut l);
                }
                if l.closing && l.pids.is_empty() {
                    return;
                }
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(msg: &[u8]) -> Vec<&[u8]> {
        msg.split(|b| *b == 0).collect()
    }

    /// A start request carries the program, its arguments (spaces and all)
    /// and its changed variables, removals included, to the spawner intact.
    #[test]
    fn a_start_request_reads_back_as_the_command_it_describes() {
        let mut cmd = std::process::Command::new("/bin/some prog");
        cmd.args(["node", "--data-dir", "/tmp/a b/node-3", ""])
            .env("MULTINODE_NODE_INDEX", "3")
            .env("EMPTY", "")
            .env("PAIR", "x=y")
            .env_remove("MULTINODE_NO_JOIN");
        let msg = start_request(7, &cmd, Path::new("/tmp/a b/node-3.log")).unwrap();
        let f = fields(&msg);
        assert_eq!(f[..3], [&b"S"[..], b"7", b"/tmp/a b/node-3.log"]);
        let back = command(&f).expect("well formed");
        assert_eq!(back.get_program(), cmd.get_program());
        assert_eq!(
            back.get_args().collect::<Vec<_>>(),
            cmd.get_args().collect::<Vec<_>>()
        );
        let mut want: Vec<_> = cmd.get_envs().collect();
        let mut got: Vec<_> = back.get_envs().collect();
        want.sort();
        got.sort();
        assert_eq!(got, want);
    }

    /// Counts that point past the message, or are not numbers, are refused
    /// rather than read out of bounds.
    #[test]
    fn a_malformed_start_request_is_refused() {
        for msg in [
            &b"S\x001\x00log\x00prog\x005\x00a"[..],
            b"S\x001\x00log\x00prog\x00x\x000",
            b"S\x001\x00log\x00prog\x000\x009",
            b"S\x001\x00log",
            b"S",
        ] {
            assert!(command(&fields(msg)).is_none(), "{msg:?}");
        }
        assert!(command(&fields(b"S\x001\x00log\x00prog\x000\x000")).is_some());
    }

    /// A NUL byte cannot be carried (nor opened as a path): refused.
    #[test]
    fn a_nul_byte_in_a_start_request_is_an_error() {
        let cmd = std::process::Command::new("prog");
        assert!(start_request(1, &cmd, Path::new("lo\0g")).is_err());
        assert!(start_request(1, &cmd, Path::new("log")).is_ok());
    }
}
