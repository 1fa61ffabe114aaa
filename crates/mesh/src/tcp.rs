//! The TCP channel: [`Channel`] over a loopback (or any) TCP connection, in
//! `multinode-wire` channel frames after a `Hello` handshake.
//!
//! Sends go into a bounded buffer that one writer thread per channel drains
//! into the socket, many frames per write; receives read the socket under
//! their own lock. So a receive blocked on the socket never blocks a send,
//! and a slow peer costs a sender buffer space, never a stall.

use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::AtomicU8;
use std::sync::atomic::Ordering::{AcqRel, Acquire};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use multinode_wire::{
    BlockingReader, BlockingWriter, ChannelCodec, ChannelFrame, Hello, MessageCodec, NodeId,
    WireError,
};
use parking_lot::{Condvar, Mutex};
use tokio_util::codec::Encoder;

use crate::{Channel, ChannelError};

/// Settings of a TCP channel.
#[derive(Clone, Debug)]
pub struct TcpConfig {
    max_message: usize,
    send_buffer: usize,
    connect_timeout: Duration,
    handshake_timeout: Duration,
    write_timeout: Duration,
}

impl Default for TcpConfig {
    /// Messages up to 16 MiB less one byte, 8 MiB of send buffer, 5 s to
    /// connect and to shake hands, 10 s for a write to make progress.
    fn default() -> Self {
        Self {
            max_message: multinode_wire::DEFAULT_MAX_FRAME - 1,
            send_buffer: 8 * 1024 * 1024,
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
        }
    }
}

impl TcpConfig {
    /// The largest message sent or accepted. A peer's larger frame breaks
    /// the connection (with [`WireError::FrameTooLarge`]) before anything of
    /// its size is allocated.
    pub fn max_message(mut self, max: usize) -> Self {
        self.max_message = max.min(u32::MAX as usize - 1);
        self
    }

    /// Bytes of frames a channel buffers for its writer; `send` fails with
    /// [`ChannelError::QueueFull`] beyond it. One message always fits in an
    /// empty buffer, whatever its size.
    pub fn send_buffer(mut self, bytes: usize) -> Self {
        self.send_buffer = bytes;
        self
    }

    /// How long `connect` waits for the TCP connection.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long either side waits for the peer's `Hello`.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// How long a write may make no progress before the connection is
    /// declared broken (a peer that stopped reading).
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }
}

/// Accepts [`TcpChannel`]s, shaking hands with each.
#[derive(Debug)]
pub struct TcpChannelListener {
    listener: TcpListener,
    hello: Hello,
    config: TcpConfig,
}

impl TcpChannelListener {
    /// Listens on `addr` (use `127.0.0.1:0` for a free loopback port) as the
    /// node `hello` describes.
    pub fn bind(
        addr: impl ToSocketAddrs,
        hello: Hello,
        config: TcpConfig,
    ) -> Result<Self, ChannelError> {
        Ok(Self {
            listener: TcpListener::bind(addr).map_err(WireError::from)?,
            hello,
            config,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> Result<SocketAddr, ChannelError> {
        Ok(self.listener.local_addr().map_err(WireError::from)?)
    }

    /// Waits for the next connection and shakes hands. A peer of another
    /// cluster or protocol version fails with a [`WireError::Handshake`]
    /// naming the field (the connection is dropped; the listener carries on).
    pub fn accept(&self) -> Result<TcpChannel, ChannelError> {
        let (stream, _) = self.listener.accept().map_err(WireError::from)?;
        TcpChannel::handshake(stream, self.hello, None, self.config.clone())
    }
}

/// This side closed.
const CLOSED: u8 = 1;
/// The peer said goodbye (nothing follows it on the stream).
const PEER_CLOSED: u8 = 2;
/// The stream ended, or was reset, without a goodbye.
const PEER_LOST: u8 = 4;
/// A write failed; what the peer sent before may still be read.
const BROKEN: u8 = 8;
/// The peer sent bytes that are not channel frames: nothing more is read.
const CORRUPT: u8 = 16;

struct Out {
    buf: BytesMut,
    codec: ChannelCodec,
    closing: bool,
}

struct Inner {
    state: AtomicU8,
    /// What broke the connection, for the errors that follow.
    broken: Mutex<Option<String>>,
    out: Mutex<Out>,
    /// The writer waits on it for frames; senders never wait.
    ready: Condvar,
    /// A handle for `shutdown` only.
    stream: TcpStream,
    config: TcpConfig,
    peer: NodeId,
}

impl Inner {
    fn set(&self, bit: u8) {
        self.state.fetch_or(bit, AcqRel);
    }

    /// Records why the connection broke and sets `bit` (`BROKEN` or
    /// `CORRUPT`); a corrupt stream is shut down both ways at once.
    fn break_with(&self, bit: u8, why: String) {
        self.broken.lock().get_or_insert(why);
        self.set(bit);
        if bit == CORRUPT {
            let _ = self.stream.shutdown(Shutdown::Both);
        }
        self.ready.notify_one();
    }

    fn error(&self, state: u8) -> Option<ChannelError> {
        if state & CLOSED != 0 {
            Some(ChannelError::Closed)
        } else if state & CORRUPT != 0 {
            let why = self.broken.lock().clone().unwrap_or_default();
            Some(ChannelError::Wire(WireError::Decode {
                reason: format!("peer sent a corrupt stream: {why}"),
            }))
        } else if state & PEER_CLOSED != 0 {
            Some(ChannelError::PeerClosed)
        } else if state & PEER_LOST != 0 {
            Some(ChannelError::PeerCrashed(self.peer))
        } else if state & BROKEN != 0 {
            let why = self.broken.lock().clone().unwrap_or_default();
            Some(ChannelError::Wire(WireError::Io(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("connection broken: {why}"),
            ))))
        } else {
            None
        }
    }
}

/// A [`Channel`] over TCP: `multinode-wire` channel frames after a `Hello`
/// handshake in each direction.
///
/// Close and crash over TCP: [`Channel::close`] (or dropping the channel)
/// flushes what was sent, then a goodbye frame, then shuts the connection
/// down, so the peer receives everything and then
/// [`ChannelError::PeerClosed`]. A connection that ends without the goodbye
/// (the peer process was killed, the connection reset) is
/// [`ChannelError::PeerCrashed`] with the peer's node id. TCP tells a side
/// of its peer's close only through the stream, so a peer learns of it when
/// its `receive` reaches it; until then its sends still succeed (and are
/// lost).
///
/// `close` and drop wait for the writer to flush; a peer that stopped
/// reading holds them up for at most the write timeout
/// ([`TcpConfig::write_timeout`]), after which the connection is broken.
pub struct TcpChannel {
    inner: Arc<Inner>,
    reader: Mutex<BlockingReader<TcpStream, ChannelCodec>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    local: NodeId,
}

impl std::fmt::Debug for TcpChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpChannel")
            .field("local", &self.local)
            .field("peer", &self.inner.peer)
            .field("open", &self.is_open())
            .finish()
    }
}

impl TcpChannel {
    /// Connects to `addr` as the node `hello` describes and shakes hands.
    /// With `expected_peer`, a peer with another node id is refused.
    pub fn connect(
        addr: SocketAddr,
        hello: Hello,
        expected_peer: Option<NodeId>,
        config: TcpConfig,
    ) -> Result<Self, ChannelError> {
        let stream =
            TcpStream::connect_timeout(&addr, config.connect_timeout).map_err(WireError::from)?;
        Self::handshake(stream, hello, expected_peer, config)
    }

    fn handshake(
        stream: TcpStream,
        hello: Hello,
        expected_peer: Option<NodeId>,
        config: TcpConfig,
    ) -> Result<Self, ChannelError> {
        let io = |e: io::Error| ChannelError::Wire(WireError::Io(e));
        stream.set_nodelay(true).map_err(io)?;
        stream
            .set_read_timeout(Some(config.handshake_timeout.max(Duration::from_micros(1))))
            .map_err(io)?;
        stream
            .set_write_timeout(Some(config.write_timeout.max(Duration::from_micros(1))))
            .map_err(io)?;
        BlockingWriter::new(&stream, MessageCodec::<Hello>::new()).send(&hello)?;
        let mut reader = BlockingReader::new(
            stream.try_clone().map_err(io)?,
            MessageCodec::<Hello>::new(),
        );
        let theirs = reader.read()?.ok_or_else(|| {
            WireError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "peer closed during the handshake",
            ))
        })?;
        hello.check(&theirs, expected_peer)?;
        let codec = ChannelCodec::with_max(config.max_message);
        let reader = reader.map_codec(|_| codec.clone());
        let inner = Arc::new(Inner {
            state: AtomicU8::new(0),
            broken: Mutex::new(None),
            out: Mutex::new(Out {
                buf: BytesMut::new(),
                codec,
                closing: false,
            }),
            ready: Condvar::new(),
            stream: stream.try_clone().map_err(io)?,
            config,
            peer: theirs.node_id,
        });
        let writer = {
            let inner = Arc::clone(&inner);
            std::thread::Builder::new()
                .name(format!("mesh-tcp-writer-{}", theirs.node_id))
                .spawn(move || write_loop(&inner, stream))
                .map_err(io)?
        };
        Ok(Self {
            inner,
            reader: Mutex::new(reader),
            writer: Mutex::new(Some(writer)),
            local: hello.node_id,
        })
    }

    /// This side's node id.
    pub fn local_node(&self) -> NodeId {
        self.local
    }

    /// The peer's node id, from its `Hello`.
    pub fn peer_node(&self) -> NodeId {
        self.inner.peer
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> Result<SocketAddr, ChannelError> {
        Ok(self.inner.stream.peer_addr().map_err(WireError::from)?)
    }

    fn frame(&self, frame: ChannelFrame<BytesMut>) -> Result<Option<Vec<u8>>, ChannelError> {
        match frame {
            ChannelFrame::Data(msg) => Ok(Some(Vec::from(&msg[..]))),
            ChannelFrame::Bye => {
                self.inner.set(PEER_CLOSED);
                Err(ChannelError::PeerClosed)
            }
        }
    }

    /// A read failed: sort an end of stream, a reset and garbage apart.
    fn read_failed(&self, err: Option<WireError>) -> ChannelError {
        let inner = &self.inner;
        if let Some(e) = inner.error(inner.state.load(Acquire)) {
            // Our own close (which shuts reads down) or an earlier verdict.
            return e;
        }
        match err {
            // Clean end of stream, a reset, or a stream cut inside a frame:
            // the peer went away without saying goodbye.
            None => inner.set(PEER_LOST),
            Some(WireError::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::UnexpectedEof
                        | io::ErrorKind::BrokenPipe
                ) =>
            {
                inner.set(PEER_LOST)
            }
            Some(e) => {
                // The first caller gets the wire error itself; later ones
                // get a summary of it.
                inner.break_with(CORRUPT, e.to_string());
                return ChannelError::Wire(e);
            }
        }
        inner
            .error(inner.state.load(Acquire))
            .unwrap_or(ChannelError::PeerClosed)
    }
}

/// Below this many buffered bytes the writer yields once before writing,
/// so a burst of small sends goes out in one write.
const COALESCE: usize = 16 * 1024;

/// The writer thread: swaps the send buffer out and writes it whole, until
/// the channel closes (then it writes what is left, the goodbye, and shuts
/// its half down) or a write fails.
fn write_loop(inner: &Inner, mut stream: TcpStream) {
    let mut batch = BytesMut::new();
    loop {
        let closing = {
            let mut out = inner.out.lock();
            let dead = || inner.state.load(Acquire) & (BROKEN | CORRUPT | PEER_LOST) != 0;
            while out.buf.is_empty() && !out.closing && !dead() {
                inner.ready.wait(&mut out);
            }
            if dead() {
                return;
            }
            if out.buf.len() < COALESCE && !out.closing {
                // A sender is likely mid-burst: let it add to this write.
                drop(out);
                std::thread::yield_now();
                out = inner.out.lock();
            }
            std::mem::swap(&mut out.buf, &mut batch);
            out.closing
        };
        if let Err(e) = stream.write_all(&batch) {
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ) {
                inner.set(PEER_LOST);
            }
            inner.break_with(BROKEN, format!("write failed: {e}"));
            return;
        }
        batch.clear();
        if closing && inner.out.lock().buf.is_empty() {
            let _ = stream.shutdown(Shutdown::Write);
            return;
        }
    }
}

impl Channel for TcpChannel {
    fn send(&self, msg: &[u8]) -> Result<(), ChannelError> {
        let inner = &self.inner;
        let max = inner.config.max_message;
        if msg.len() > max {
            return Err(ChannelError::TooLarge {
                len: msg.len(),
                max,
            });
        }
        if let Some(e) = inner.error(inner.state.load(Acquire)) {
            return Err(e);
        }
        let mut out = inner.out.lock();
        let was_empty = out.buf.is_empty();
        if !was_empty && out.buf.len() + msg.len() > inner.config.send_buffer {
            return Err(ChannelError::QueueFull {
                capacity: inner.config.send_buffer,
            });
        }
        let Out { buf, codec, .. } = &mut *out;
        codec.encode(ChannelFrame::Data(msg), buf)?;
        drop(out);
        if was_empty {
            inner.ready.notify_one();
        }
        Ok(())
    }

    fn receive(&self, timeout: Duration) -> Result<Option<Vec<u8>>, ChannelError> {
        let inner = &self.inner;
        // After a lost peer or a failed write, what arrived before is still
        // read; after a goodbye or garbage nothing more is.
        let state = inner.state.load(Acquire);
        if state & (CLOSED | CORRUPT | PEER_CLOSED) != 0 {
            if let Some(e) = inner.error(state) {
                return Err(e);
            }
        }
        let deadline = Instant::now().checked_add(timeout);
        let mut reader = match deadline {
            Some(d) => match self.reader.try_lock_until(d) {
                Some(r) => r,
                None => return Ok(None),
            },
            None => self.reader.lock(),
        };
        match reader.read_buffered() {
            Ok(Some(frame)) => return self.frame(frame),
            Ok(None) => {}
            Err(e) => return Err(self.read_failed(Some(e))),
        }
        // A zero wait still looks at what has arrived.
        let wait = deadline.map(|d| {
            d.saturating_duration_since(Instant::now())
                .max(Duration::from_micros(1))
        });
        if let Err(e) = reader.get_ref().set_read_timeout(wait) {
            return Err(self.read_failed(Some(e.into())));
        }
        match reader.read() {
            Ok(Some(frame)) => self.frame(frame),
            Ok(None) => Err(self.read_failed(None)),
            Err(e) if e.is_timeout() => Ok(None),
            Err(e) => Err(self.read_failed(Some(e))),
        }
    }

    fn close(&self) {
        let inner = &self.inner;
        if inner.state.fetch_or(CLOSED, AcqRel) & CLOSED == 0 {
            {
                let mut out = inner.out.lock();
                let Out { buf, codec, .. } = &mut *out;
                // Encoding a goodbye cannot fail: it is one byte.
                let _ = codec.encode(ChannelFrame::Bye, buf);
                out.closing = true;
            }
            inner.ready.notify_one();
            // Wakes a receive blocked on this side.
            let _ = inner.stream.shutdown(Shutdown::Read);
        }
        if let Some(writer) = self.writer.lock().take() {
            let _ = writer.join();
        }
    }

    fn is_open(&self) -> bool {
        self.inner.state.load(Acquire) == 0
    }
}

impl Drop for TcpChannel {
    fn drop(&mut self) {
        self.close();
    }
}
