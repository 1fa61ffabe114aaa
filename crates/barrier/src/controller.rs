//! The barrier controller's I/O: one task per connection and one timer task,
//! all feeding the sans-IO [`Core`] under a mutex and carrying out what it
//! says. No protocol decision is made here.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use std::fmt::Write as _;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use multinode_wire::{Fault, LineCodec, NodeId, Reply, Request, WireError};
use parking_lot::Mutex;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use crate::conductor::{self, Conductor};
use crate::core::{Config, ConnId, Core, Output, Summary};

/// Bytes of replies a connection may have waiting for its socket before it
/// counts as too slow a reader and is dropped (its node then counts as
/// disconnected).
const MAX_BACKLOG: usize = 1 << 20;

/// How long, and how much, a refused peer's input is drained before close.
const LINGER_TIME: std::time::Duration = std::time::Duration::from_millis(250);
const LINGER_BYTES: usize = 1 << 20;

/// The write side of one connection. Replies are written straight from
/// whichever task dispatches them (one `try_write`, no task wake-up on the
/// common path); what the socket does not take at once waits in `backlog`,
/// which the connection's own task flushes when the socket is writable.
struct Writer {
    half: Arc<OwnedWriteHalf>,
    backlog: BytesMut,
    closing: bool,
    dead: bool,
    wake: Arc<Notify>,
}

impl Writer {
    /// Writes what was said unless the connection is closing or dead: in
    /// one vectored write, so text shared with other connections is not
    /// copied for this one unless the socket leaves some of it waiting.
    fn send(&mut self, said: &Said) {
        if self.closing || self.dead {
            return;
        }
        let mut parts: Vec<&[u8]> = said.parts.iter().map(Part::bytes).collect();
        if self.backlog.is_empty() {
            // Far below the kernel's cap on slices (1,024); what is left
            // over waits in the backlog like any remainder.
            let slices: Vec<io::IoSlice<'_>> =
                parts.iter().take(64).map(|p| io::IoSlice::new(p)).collect();
            match self.half.try_write_vectored(&slices) {
                Ok(mut n) => {
                    // Skip what the socket took, part by part.
                    while let Some(first) = parts.first_mut() {
                        if n < first.len() {
                            *first = &first[n..];
                            break;
                        }
                        n -= first.len();
                        parts.remove(0);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    self.dead = true;
                    self.wake.notify_one();
                    return;
                }
            }
        }
        let rest: usize = parts.iter().map(|p| p.len()).sum();
        if rest > 0 {
            if self.backlog.len() + rest > MAX_BACKLOG {
                self.dead = true;
            } else {
                parts.iter().for_each(|p| self.backlog.extend_from_slice(p));
            }
            self.wake.notify_one();
        }
    }
}

/// What one dispatch says to one connection, in order: its own lines, and
/// lines it shares with others (a gather's values, formatted once).
#[derive(Default)]
struct Said {
    parts: Vec<Part>,
}

enum Part {
    Own(String),
    Shared(Bytes),
}

impl Part {
    fn bytes(&self) -> &[u8] {
        match self {
            Part::Own(text) => text.as_bytes(),
            Part::Shared(text) => text,
        }
    }
}

impl Said {
    /// The connection's own text to append to.
    fn own(&mut self) -> &mut String {
        if !matches!(self.parts.last(), Some(Part::Own(_))) {
            self.parts.push(Part::Own(String::new()));
        }
        match self.parts.last_mut() {
            Some(Part::Own(text)) => text,
            _ => unreachable!("an own part was just pushed"),
        }
    }
}

struct Shared {
    core: Core,
    writers: HashMap<ConnId, Writer>,
}

impl Shared {
    /// Carries out the core's outputs. Never blocks.
    ///
    /// The replies to one connection go out in one write: a gather of N
    /// nodes answers each with N + 1 lines, and a write apiece made the
    /// join of a thousand nodes a million system calls.
    fn dispatch(&mut self) {
        let mut said: HashMap<ConnId, Said> = HashMap::new();
        // The text of the last shared batch of lines, formatted once.
        let mut shared: Option<(Arc<[Reply]>, Bytes)> = None;
        let outputs: Vec<Output> = self.core.drain().collect();
        for output in outputs {
            match output {
                Output::Send(conn, reply) => {
                    // A reply's text never holds a newline (labels and values
                    // are validated, free text is sanitised when printed).
                    let _ = writeln!(said.entry(conn).or_default().own(), "{reply}");
                }
                Output::SendAll(conn, replies) => {
                    if !shared
                        .as_ref()
                        .is_some_and(|(r, _)| Arc::ptr_eq(r, &replies))
                    {
                        let mut text = String::new();
                        for reply in replies.iter() {
                            let _ = writeln!(text, "{reply}");
                        }
                        shared = Some((replies, Bytes::from(text)));
                    }
                    if let Some((_, text)) = &shared {
                        let parts = &mut said.entry(conn).or_default().parts;
                        parts.push(Part::Shared(text.clone()));
                    }
                }
                Output::Close(conn) => {
                    let text = said.remove(&conn);
                    if let Some(w) = self.writers.get_mut(&conn) {
                        // What was said before the close goes first.
                        if let Some(text) = text {
                            w.send(&text);
                        }
                        w.closing = true;
                        w.wake.notify_one();
                    }
                }
            }
        }
        for (conn, text) in said {
            if let Some(w) = self.writers.get_mut(&conn) {
                w.send(&text);
            }
        }
    }
}

struct Inner {
    shared: Mutex<Shared>,
    /// Wakes the timer when the next deadline may have moved, and anyone
    /// waiting for every node to leave.
    changed: Notify,
    all_left: Notify,
    next_conn: AtomicU64,
    conductor: Option<Arc<dyn Conductor>>,
}

/// A barrier controller serving the line protocol on a TCP listener.
///
/// Dropping it stops everything it started: the listener closes and every
/// connection is dropped. [`Controller::shutdown`] does the same and waits
/// for its tasks to finish.
pub struct Controller {
    addr: SocketAddr,
    inner: Arc<Inner>,
    cancel: CancellationToken,
    tasks: Option<tokio::task::JoinHandle<()>>,
}

/// The accept queue a controller asks for (the kernel caps it at
/// `net.core.somaxconn`, 4,096 by default).
const ACCEPT_BACKLOG: i32 = 4096;

impl Controller {
    /// Binds `addr` (use `127.0.0.1:0` for an ephemeral loopback port) and
    /// starts serving.
    pub async fn bind(addr: SocketAddr, config: Config) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Self::start(listener, config)
    }

    /// Starts serving on an already-bound listener. Must be called within
    /// a tokio runtime, which runs the controller's tasks.
    pub fn start(listener: TcpListener, config: Config) -> io::Result<Self> {
        Self::start_inner(listener, config, None)
    }

    /// Like [`Controller::start`], and fault lines (`PARTITION 0,1 2`,
    /// `KILL 3`, ...) from any connection go to `conductor`, one at a time
    /// per connection, each answered `OK <VERB> <counters>` or
    /// `ERR <reason>`.
    pub fn start_conducting(
        listener: TcpListener,
        config: Config,
        conductor: Arc<dyn Conductor>,
    ) -> io::Result<Self> {
        Self::start_inner(listener, config, Some(conductor))
    }

    fn start_inner(
        listener: TcpListener,
        config: Config,
        conductor: Option<Arc<dyn Conductor>>,
    ) -> io::Result<Self> {
        let addr = listener.local_addr()?;
        // Every member connects at once: with the usual backlog of 128,
        // the kernel drops the SYNs past it and those members retry a
        // second later, then three, so the join grew faster than N.
        socket2::SockRef::from(&listener).listen(ACCEPT_BACKLOG)?;
        let inner = Arc::new(Inner {
            shared: Mutex::new(Shared {
                core: Core::new(config),
                writers: HashMap::new(),
            }),
            changed: Notify::new(),
            all_left: Notify::new(),
            next_conn: AtomicU64::new(0),
            conductor,
        });
        let cancel = CancellationToken::new();
        let tasks = tokio::spawn(run(listener, Arc::clone(&inner), cancel.clone()));
        Ok(Self {
            addr,
            inner,
            cancel,
            tasks: Some(tasks),
        })
    }

    /// The address nodes connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many members each barrier waits for.
    pub fn nodes(&self) -> u32 {
        self.inner.shared.lock().core.nodes()
    }

    /// What happened so far: barriers passed and failed, per node.
    pub fn summary(&self) -> Summary {
        self.inner.shared.lock().core.summary().clone()
    }

    /// Tells the controller that node `node`'s process exited, with the
    /// cause in words (`exited with status 3`, `killed by signal 9`). Every
    /// barrier waiting for it fails now, naming that cause, and so does any
    /// later one: the launcher calls this as it reaps each child.
    pub fn node_exited(&self, node: NodeId, cause: impl Into<String>) {
        let Ok(node) = u32::try_from(node.0) else {
            return;
        };
        let mut s = self.inner.shared.lock();
        s.core.exited(node, cause.into());
        s.dispatch();
        drop(s);
        self.inner.changed.notify_one();
    }

    /// Waits until every member has left with `LEAVE`.
    pub async fn all_left(&self) {
        loop {
            let notified = self.inner.all_left.notified();
            if self.inner.shared.lock().core.all_left() {
                return;
            }
            notified.await;
        }
    }

    /// Stops serving, closes every connection, waits for the tasks to end,
    /// and returns the summary.
    pub async fn shutdown(mut self) -> Summary {
        self.cancel.cancel();
        if let Some(tasks) = self.tasks.take() {
            let _ = tasks.await;
        }
        self.summary()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn run(listener: TcpListener, inner: Arc<Inner>, cancel: CancellationToken) {
    let mut conns = JoinSet::new();
    conns.spawn(timer(Arc::clone(&inner), cancel.clone()));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    conns.spawn(connection(stream, Arc::clone(&inner), cancel.clone()));
                }
                // Out of descriptors and the like: keep serving those we
                // have, and try again shortly rather than spin.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            },
            // Reap finished connection tasks as we go.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

async fn timer(inner: Arc<Inner>, cancel: CancellationToken) {
    loop {
        let changed = inner.changed.notified();
        let deadline = inner.shared.lock().core.next_deadline();
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = changed => {}
            _ = sleep => {
                let mut s = inner.shared.lock();
                s.core.tick(Instant::now());
                s.dispatch();
            }
        }
    }
}

/// What a connection's task does after flushing its backlog.
enum Flushed {
    /// Keep serving.
    Open,
    /// The core asked for a close and everything is written: linger, close.
    Close,
    /// The socket failed or the peer stopped reading: drop it.
    Dead,
}

async fn flush(inner: &Inner, conn: ConnId, half: &OwnedWriteHalf) -> Flushed {
    loop {
        {
            let mut s = inner.shared.lock();
            let Some(w) = s.writers.get_mut(&conn) else {
                return Flushed::Dead;
            };
            while !w.dead && !w.backlog.is_empty() {
                match half.try_write(&w.backlog) {
                    Ok(n) => w.backlog.advance(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => w.dead = true,
                }
            }
            if w.dead {
                return Flushed::Dead;
            }
            if w.backlog.is_empty() {
                return if w.closing {
                    Flushed::Close
                } else {
                    Flushed::Open
                };
            }
        }
        if half.writable().await.is_err() {
            return Flushed::Dead;
        }
    }
}

/// Closes a connection we refused without losing our last line: a close
/// with unread input makes the kernel send a reset, and the peer may then
/// discard the `ERR` it has not read yet. So half-close first, then read and
/// drop what the peer still sends, within a small bound of bytes and time.
async fn linger(mut read: OwnedReadHalf, mut write: OwnedWriteHalf) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if write.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut total = 0usize;
        while total < LINGER_BYTES {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

/// The fault a line asks for, if it is a well-formed conductor line (a
/// malformed one goes to the core, which answers `ERR` with the reason).
fn fault_line(line: &str) -> Option<Fault> {
    let verb = line.split(' ').next()?;
    if !Fault::VERBS.contains(&verb) {
        return None;
    }
    match line.parse::<Request>() {
        Ok(Request::Fault(f)) => Some(f),
        _ => None,
    }
}

/// Has the conductor make `fault` (off the runtime: it may run commands)
/// and writes its answer.
async fn conduct(inner: &Inner, conn: ConnId, conductor: &Arc<dyn Conductor>, fault: Fault) {
    let c = Arc::clone(conductor);
    let asked = fault.clone();
    let outcome = tokio::task::spawn_blocking(move || c.conduct(&asked))
        .await
        .unwrap_or_else(|e| Err(format!("the conductor failed: {e}")));
    let reply = conductor::reply(&fault, outcome);
    let mut s = inner.shared.lock();
    if let Some(w) = s.writers.get_mut(&conn) {
        let mut said = Said::default();
        let _ = writeln!(said.own(), "{reply}");
        w.send(&said);
    }
}

async fn connection(stream: TcpStream, inner: Arc<Inner>, cancel: CancellationToken) {
    let conn = inner.next_conn.fetch_add(1, Ordering::Relaxed);
    let (read_half, write_half) = stream.into_split();
    let half = Arc::new(write_half);
    let wake = Arc::new(Notify::new());
    {
        let mut s = inner.shared.lock();
        let writer = Writer {
            half: Arc::clone(&half),
            backlog: BytesMut::new(),
            closing: false,
            dead: false,
            wake: Arc::clone(&wake),
        };
        s.writers.insert(conn, writer);
        s.core.connect(conn);
        s.dispatch();
    }
    let mut lines = FramedRead::new(read_half, LineCodec::new());
    // Cleared after an over-long line: the stream cannot be read further,
    // and only the refusal remains to be written.
    let mut reading = true;
    let mut close = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = wake.notified() => match flush(&inner, conn, &half).await {
                Flushed::Open => {}
                Flushed::Close => {
                    close = true;
                    break;
                }
                Flushed::Dead => break,
            },
            line = lines.next(), if reading => {
                if let (Some(Ok(text)), Some(conductor)) = (&line, &inner.conductor) {
                    if let Some(fault) = fault_line(text) {
                        // A long fault (a FLAP of minutes) never holds up a
                        // shutdown: the conductor's thread finishes alone.
                        tokio::select! {
                            _ = cancel.cancelled() => break,
                            _ = conduct(&inner, conn, conductor, fault) => continue,
                        }
                    }
                }
                let now = Instant::now();
                let mut s = inner.shared.lock();
                let keep = match line {
                    Some(Ok(line)) => {
                        s.core.line(conn, &line, now);
                        true
                    }
                    Some(Err(WireError::LineTooLong { max })) => {
                        s.core.line_too_long(conn, max, now);
                        reading = false;
                        true // write the ERR, then close
                    }
                    Some(Err(_)) | None => false,
                };
                s.dispatch();
                let left = s.core.all_left();
                drop(s);
                inner.changed.notify_one();
                if left {
                    inner.all_left.notify_waiters();
                }
                if !keep {
                    break;
                }
            }
        }
    }
    {
        let mut s = inner.shared.lock();
        s.writers.remove(&conn);
        s.core.disconnect(conn, Instant::now());
        s.dispatch();
    }
    inner.changed.notify_one();
    if close {
        if let Ok(write_half) = Arc::try_unwrap(half) {
            linger(lines.into_inner(), write_half).await;
        }
    }
}
