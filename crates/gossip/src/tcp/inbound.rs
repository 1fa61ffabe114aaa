//! The inbound side of the TCP transport: the accept loop and, per
//! connection, a reader task (handshake, the peer checks, then frames to
//! the sink until the peer closes, misbehaves, goes quiet or reconnects).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use multinode_wire::{ClusterFrame, FRAME_HEADER_LEN, GossipPdu, NodeId};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Shared;
use crate::RemoteMessageSink;
use crate::handshake::handshake;
use crate::stats::{PeerCounters, add};
use crate::transport::dispatch;

/// Frames counted at a time before they are decoded and handed to the
/// sink: the counters cost two atomic adds per batch, not per frame.
const BATCH: usize = 32;

/// How many complete frames (at most `most`) the front of `buf` holds, and
/// their bytes, headers included. Only the length headers are read: a
/// frame over the cap is never complete here (the codec refuses it).
fn complete(buf: &[u8], most: usize) -> (usize, usize) {
    let (mut frames, mut at) = (0, 0);
    while frames < most {
        let Some(len) = payload_len(&buf[at..]) else {
            break;
        };
        let end = at + FRAME_HEADER_LEN + len;
        if end > buf.len() {
            break;
        }
        (frames, at) = (frames + 1, end);
    }
    (frames, at)
}

/// The payload length the frame header at the front of `buf` claims, once
/// the header is in.
#[inline(always)]
fn payload_len(buf: &[u8]) -> Option<usize> {
    let mut len = [0; FRAME_HEADER_LEN];
    len.copy_from_slice(buf.get(..FRAME_HEADER_LEN)?);
    Some(u32::from_be_bytes(len) as usize)
}

/// Hands the complete frame at the front of `buf` to `sink` when it is
/// the kind a gossip layer of its own sends (`Gossip(Opaque)` in its
/// shortest form, within `max`), read where it lies; returns the bytes it
/// took. `None`: the codec decides the frame. The PDU is built in the
/// sink call's argument: a decoded frame moved through two more enums on
/// its way cost as much as the rest of the reading (each move a load
/// that waits for the stores of the one before).
#[inline(always)]
fn deliver_opaque(
    sink: &dyn RemoteMessageSink,
    from: NodeId,
    buf: &[u8],
    max: usize,
) -> Option<usize> {
    let len = payload_len(buf)?;
    if len > max {
        return None;
    }
    let payload = buf.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len)?;
    let (schema, body) = ClusterFrame::opaque_gossip(payload)?;
    // Built in place: `Bytes::copy_from_slice` returned its value through
    // memory to be copied again.
    let body = Bytes::from(body.to_vec());
    sink.on_gossip(from, GossipPdu::Opaque { schema, body });
    Some(FRAME_HEADER_LEN + len)
}

/// What a connection reads at a time when it opens, and once its peer has
/// been quiet for a while (a quiet connection with nothing buffered holds
/// no buffer at all while it waits)...
const READ_BUF: usize = 4 << 10;
/// ...and at most, while its peer streams.
const READ_BUF_MAX: usize = 256 << 10;

/// How much a connection's reader offers the socket: [`READ_BUF`], doubling
/// up to [`READ_BUF_MAX`] while reads fill all they are offered (the peer
/// streams, and fewer, larger reads cost less), halving back towards
/// [`READ_BUF`] while reads come back less than a quarter full. A stream
/// that pauses keeps its large buffer for a few reads; a quiet connection
/// ends up with a small one.
#[derive(Debug)]
struct ReadSize(usize);

impl ReadSize {
    fn new() -> Self {
        Self(READ_BUF)
    }

    fn get(&self) -> usize {
        self.0
    }

    /// Learns from a read that was offered `offered` bytes and got `got`.
    fn after(&mut self, offered: usize, got: usize) {
        if got >= offered {
            self.0 = (self.0 * 2).min(READ_BUF_MAX);
        } else if got < offered / 4 {
            self.0 = (self.0 / 2).max(READ_BUF);
        }
    }
}

/// Accepts connections until cancelled; each gets a reader task, up to
/// `max_inbound` at once.
pub(super) async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(shared.config.max_inbound));
    loop {
        let accepted = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, from) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: pause instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(50)) => continue,
                }
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            add(&shared.over_limit, 1);
            if let Some(skipped) = shared.warnings.over_limit.allow(Instant::now()) {
                tracing::warn!(%from, skipped, "inbound connection limit reached: closing");
            }
            continue;
        };
        let (shared, cancel) = (Arc::clone(&shared), cancel.clone());
        tracker.spawn(async move {
            tokio::select! {
                biased;
                () = cancel.cancelled() => {}
                () = serve(&shared, stream, from) => {}
            }
            drop(permit);
        });
    }
    // The listener drops here: the port is closed once this task ends.
}

/// One inbound connection: handshake, then frames to the sink until the
/// peer closes, sends something invalid, goes quiet past the idle timeout,
/// or connects again (the newer connection replaces this one).
async fn serve(shared: &Shared, stream: TcpStream, from: SocketAddr) {
    let timeout = shared.config.handshake_timeout;
    let local = shared.local();
    let shook = tokio::time::timeout(timeout, handshake(&local, stream, None)).await;
    let now = Instant::now;
    let w = &shared.warnings;
    let (shaken, conn) = match shook {
        Ok(Ok(h)) => h,
        Ok(Err(e)) if e.is_auth() => {
            add(&shared.auth_failures, 1);
            if let Some(skipped) = w.auth.allow(now()) {
                tracing::warn!(%from, skipped, "refused a connection: {e}");
            }
            return;
        }
        Ok(Err(e)) if e.is_refusal() => {
            add(&shared.refused_handshakes, 1);
            if let Some(skipped) = w.refused.allow(now()) {
                tracing::warn!(%from, skipped, "refused a connection: {e}");
            }
            return;
        }
        Ok(Err(e)) => {
            add(&shared.bad_connections, 1);
            if let Some(skipped) = w.bad_connection.allow(now()) {
                tracing::warn!(%from, skipped, "bad connection: {e}");
            }
            return;
        }
        Err(_) => {
            add(&shared.bad_connections, 1);
            if let Some(skipped) = w.bad_connection.allow(now()) {
                tracing::warn!(%from, ?timeout, skipped, "no handshake in time: closing");
            }
            return;
        }
    };
    let node = shaken.hello.node_id;
    {
        let peers = shared.peers.read();
        if !peers.is_empty() && !peers.contains_key(&node) {
            drop(peers);
            add(&shared.refused_handshakes, 1);
            if let Some(skipped) = w.refused.allow(now()) {
                tracing::warn!(%from, peer = %node, skipped, "refused a node that is not a peer");
            }
            return;
        }
    }
    let Some(c) = shared.tracked_counters(node) else {
        add(&shared.over_limit, 1);
        if let Some(skipped) = w.over_limit.allow(now()) {
            tracing::warn!(%from, peer = %node, skipped, "too many distinct peers: closing");
        }
        return;
    };
    shared.observe(node, &c, &shaken);
    // One live inbound connection per node: this one replaces any older.
    let number = shared.next_inbound.fetch_add(1, Relaxed);
    let replaced = CancellationToken::new();
    if let Some((_, old)) = shared
        .inbound
        .lock()
        .insert(node, (number, replaced.clone()))
    {
        old.cancel();
    }
    tokio::select! {
        biased;
        () = replaced.cancelled() => {
            add(&shared.idle_closed, 1);
            tracing::debug!(peer = %node, %from, "replaced by a newer connection");
        }
        () = read_frames(shared, conn, node, &c, from) => {}
    }
    let mut inbound = shared.inbound.lock();
    if inbound.get(&node).is_some_and(|(n, _)| *n == number) {
        inbound.remove(&node);
    }
}

/// Hands the frames of one handshaken inbound connection to the sink.
async fn read_frames(
    shared: &Shared,
    conn: crate::handshake::Conn,
    node: NodeId,
    c: &PeerCounters,
    from: SocketAddr,
) {
    let (mut io, mut codec, mut buf) = (conn.io, conn.codec, conn.read_buf);
    let mut size = ReadSize::new();
    loop {
        // The complete frames in the buffer are counted first, then decoded
        // and handed over one by one: a sink that sees a frame sees it
        // counted, and no frame waits in a batch (a batch held room for
        // decoded frames on each of a large node's hundreds of
        // connections).
        let (frames, bytes) = complete(&buf, BATCH);
        add(&c.frames_received, frames as u64);
        add(&c.bytes_received, bytes as u64);
        let start = buf.len();
        let max = codec.max_frame();
        let mut bad = None;
        // With no complete frame, the codec still looks at the one begun:
        // it refuses a header over the cap before the payload is in.
        for delivered in 0..frames.max(1) {
            if delivered < frames
                && let Some(used) = deliver_opaque(&*shared.sink, node, &buf, max)
            {
                buf.advance(used);
                continue;
            }
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => dispatch(&*shared.sink, node, frame),
                Ok(None) => break,
                // Over the cap or undecodable: what was counted and not
                // delivered is taken back.
                Err(e) => {
                    let taken = frames.saturating_sub(delivered);
                    c.frames_received.fetch_sub(taken as u64, Relaxed);
                    let used = start - buf.len();
                    c.bytes_received
                        .fetch_sub(bytes.saturating_sub(used) as u64, Relaxed);
                    bad = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = bad {
            add(&c.bad_frames, 1);
            if let Some(skipped) = shared.warnings.bad_frame.allow(Instant::now()) {
                tracing::warn!(peer = %node, %from, skipped, "closing the connection: {e}");
            }
            return;
        }
        if frames == BATCH {
            continue;
        }
        let idle = shared.config.idle_timeout;
        if buf.is_empty() && size.get() == READ_BUF {
            // A quiet connection holds no buffer while it waits: a node of
            // a large cluster has hundreds of them.
            buf = BytesMut::new();
            match tokio::time::timeout(idle, io.readable()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(peer = %node, "connection lost: {e}");
                    return;
                }
                Err(_) => {
                    add(&shared.idle_closed, 1);
                    tracing::debug!(peer = %node, %from, ?idle, "closing an idle connection");
                    return;
                }
            }
        }
        let want = size.get();
        if buf.is_empty() && buf.capacity() > 4 * want {
            // A stream ended: give back the large buffer.
            buf = BytesMut::with_capacity(want);
        } else if buf.capacity() - buf.len() < want / 4 {
            buf.reserve(want);
        }
        let offered = buf.capacity() - buf.len();
        let Ok(read) = tokio::time::timeout(idle, io.read_buf(&mut buf)).await else {
            add(&shared.idle_closed, 1);
            tracing::debug!(peer = %node, %from, ?idle, "closing an idle connection");
            return;
        };
        match read {
            Ok(0) if buf.is_empty() => return,
            Ok(0) => {
                add(&c.bad_frames, 1);
                if let Some(skipped) = shared.warnings.bad_frame.allow(Instant::now()) {
                    tracing::warn!(peer = %node, %from, skipped, "connection closed mid-frame");
                }
                return;
            }
            Ok(n) => size.after(offered, n),
            Err(e) => {
                tracing::debug!(peer = %node, "connection lost: {e}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `len` bytes framed: the big-endian length, then `len` copies of `len`.
    fn framed(len: u8) -> Vec<u8> {
        let mut f = u32::from(len).to_be_bytes().to_vec();
        f.extend(std::iter::repeat_n(len, usize::from(len)));
        f
    }

    #[test]
    fn complete_counts_whole_frames_only_and_stops_at_the_most_asked() {
        let mut buf = [framed(3), framed(0), framed(10)].concat();
        assert_eq!(complete(&buf, 32), (3, 4 + 3 + 4 + 4 + 10));
        assert_eq!(complete(&buf, 2), (2, 4 + 3 + 4), "at most two");
        assert_eq!(complete(&buf, 0), (0, 0));
        // The last frame cut anywhere, header included, is not complete.
        let whole = buf.len();
        for cut in 1..=14 {
            assert_eq!(complete(&buf[..whole - cut], 32), (2, 11), "cut {cut}");
        }
        // A header claiming more than the buffer holds: nothing past it.
        buf.splice(0..0, u32::MAX.to_be_bytes());
        assert_eq!(complete(&buf, 32), (0, 0));
        assert_eq!(complete(&[], 32), (0, 0));
    }

    #[test]
    fn the_read_size_grows_while_reads_come_back_full_and_falls_back_when_not() {
        let mut size = ReadSize::new();
        assert_eq!(size.get(), READ_BUF);
        for _ in 0..10 {
            let offered = size.get();
            size.after(offered, offered);
        }
        assert_eq!(size.get(), READ_BUF_MAX, "capped");
        // A third full: a stream still, of about this size.
        size.after(READ_BUF_MAX, READ_BUF_MAX / 3);
        assert_eq!(size.get(), READ_BUF_MAX);
        // A small read: the stream may be pausing; the size halves.
        size.after(READ_BUF_MAX, 100);
        assert_eq!(size.get(), READ_BUF_MAX / 2);
        // Small reads go on: back to the quiet size, and no lower.
        for _ in 0..10 {
            let offered = size.get();
            size.after(offered, 100);
        }
        assert_eq!(size.get(), READ_BUF);
    }
}
