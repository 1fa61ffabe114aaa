//! The outbound side of the TCP transport: per added peer, a connection
//! task that dials, shakes hands and writes the peer's outbox, redialling
//! with backoff; and the direct write a streaming sender makes itself.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use bytes::BytesMut;
use multinode_wire::WireError;
use tokio::net::TcpStream;

use super::{Peer, Shared};
use crate::backoff::Backoff;
use crate::handshake::{DialError, Shaken, handshake};
use crate::outbox::Partial;
use crate::stats::add;

/// Dials a peer and shakes hands, within the configured timeouts.
async fn dial(shared: &Shared, peer: &Peer) -> Result<(Shaken, TcpStream), DialError> {
    let cfg = &shared.config;
    let stream = tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(peer.addr))
        .await
        .map_err(|_| DialError::ConnectTimeout(cfg.connect_timeout))??;
    let local = shared.local();
    let (shaken, conn) = tokio::time::timeout(
        cfg.handshake_timeout,
        handshake(&local, stream, Some(peer.id)),
    )
    .await
    .map_err(|_| DialError::HandshakeTimeout(cfg.handshake_timeout))??;
    if !conn.read_buf.is_empty() {
        return Err(DialError::Wire(WireError::Decode {
            reason: "the peer sent frames on a connection it accepted".into(),
        }));
    }
    Ok((shaken, conn.io))
}

/// How a connection's pump ended.
enum Ended {
    /// The transport or the peer entry was cancelled.
    Cancelled,
    /// The connection failed; reconnect.
    Failed(String),
    /// Nothing to write for the linger time: closed, to be dialled again
    /// when a frame waits.
    Quiet,
}

/// Whether the peer's outbox holds something to write; when not, the
/// connection task ends (under the lock, so the next push starts another).
fn work(peer: &Peer) -> bool {
    let mut ob = peer.outbox.lock();
    ob.idle = false;
    let work = ob.frames() > 0 || ob.partial.is_some();
    ob.task = work;
    work
}

/// The connection task of one peer, started by a push that finds none:
/// dial, handshake, then write what its queue holds, in order; on any
/// failure, back off and dial again while frames wait; after the linger
/// time with nothing to write, close, and end if nothing came meanwhile.
pub(super) async fn run_peer(shared: Arc<Shared>, peer: Arc<Peer>) {
    let cfg = &shared.config;
    let started = peer.tasks.fetch_add(1, Relaxed);
    let seed = cfg
        .seed
        .unwrap_or(shared.incarnation ^ cfg.node_id.0.rotate_left(32))
        ^ peer.id.0
        ^ started.rotate_left(48);
    let mut backoff = Backoff::new(cfg.backoff_min, cfg.backoff_max, seed);
    backoff.resume(peer.failures.load(Relaxed));
    let c = &*peer.counters;
    let cancelled = loop {
        if peer.cancel.is_cancelled() {
            break true;
        }
        if !work(&peer) {
            break false;
        }
        let dialled = tokio::select! {
            biased;
            () = peer.cancel.cancelled() => break true,
            r = dial(&shared, &peer) => r,
        };
        let ended = match dialled {
            Ok((shaken, stream)) => {
                add(&c.connects, 1);
                shared.observe(peer.id, c, &shaken);
                tracing::debug!(peer = %peer.id, addr = %peer.addr, "connected");
                let conn = peer.conns.fetch_add(1, Relaxed) + 1;
                let since = Instant::now();
                let ended = pump(&shared, &peer, stream, conn).await;
                // Only a connection that lasted starts the delays afresh: a
                // peer that accepts and at once closes (it does not list us
                // as a peer yet, say) is dialled less and less often.
                if since.elapsed() >= cfg.backoff_max {
                    backoff.reset();
                }
                ended
            }
            Err(e) => {
                if e.is_auth() {
                    add(&shared.auth_failures, 1);
                    add(&c.refused, 1);
                    if let Some(skipped) = shared.warnings.auth.allow(Instant::now()) {
                        tracing::warn!(peer = %peer.id, addr = %peer.addr, skipped, "{e}");
                    }
                } else if e.is_refusal() {
                    add(&c.refused, 1);
                    if let Some(skipped) = shared.warnings.refused.allow(Instant::now()) {
                        tracing::warn!(peer = %peer.id, addr = %peer.addr, skipped, "peer refused: {e}");
                    }
                } else {
                    add(&c.connect_failures, 1);
                    tracing::debug!(peer = %peer.id, addr = %peer.addr, "cannot connect: {e}");
                }
                Ended::Failed(e.to_string())
            }
        };
        match ended {
            Ended::Cancelled => break true,
            Ended::Quiet => {
                add(&c.quiet_closes, 1);
                tracing::debug!(peer = %peer.id, "closed a quiet connection");
            }
            Ended::Failed(why) => {
                let delay = backoff.next_delay();
                tracing::debug!(peer = %peer.id, ?delay, "reconnecting after: {why}");
                tokio::select! {
                    biased;
                    () = peer.cancel.cancelled() => break true,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    };
    // Only one task runs for a peer at a time: the next one starts here.
    peer.failures.store(backoff.failures(), Relaxed);
    if cancelled {
        // Shut down or removed: what is still queued is dropped, and counted.
        let dropped = peer.outbox.lock().close();
        peer.room.notify_waiters();
        add(&c.shutdown, dropped as u64);
    }
}

/// A sender that closed a chunk while nobody was writing writes it itself,
/// as far as the socket takes it without blocking: a streaming sender then
/// costs no wake-up of the connection task. What does not fit is left to
/// the connection task, which writes it before anything else.
pub(super) fn write_direct(peer: &Peer, chunk: BytesMut, frames: usize, conn: u64) {
    let stream = peer
        .stream
        .lock()
        .as_ref()
        .filter(|(n, _)| *n == conn)
        .map(|(_, s)| Arc::clone(s));
    let mut at = 0;
    if let Some(s) = stream {
        while at < chunk.len() {
            match s.try_write(&chunk[at..]) {
                Ok(n) => at += n,
                // Would block, or failed: the connection task finds out.
                Err(_) => break,
            }
        }
    }
    let c = &*peer.counters;
    let mut ob = peer.outbox.lock();
    ob.writing = false;
    if at == chunk.len() {
        add(&c.frames_sent, frames as u64);
        add(&c.bytes_sent, chunk.len() as u64);
        ob.recycle(chunk);
    } else if ob.closed {
        add(&c.shutdown, frames as u64);
    } else {
        ob.partial = Some(Partial {
            chunk,
            at,
            frames,
            conn,
        });
        ob.want_turn = true;
    }
    let wake = std::mem::take(&mut ob.want_turn);
    drop(ob);
    if wake {
        peer.wake.notify_one();
    }
}

/// Writes the peer's outbox to `stream`, in order, until the connection
/// fails or the task is cancelled, sharing the socket with senders that
/// write whole chunks themselves (one writer at a time: the outbox's
/// `writing` turn).
async fn pump(shared: &Shared, peer: &Peer, stream: TcpStream, conn: u64) -> Ended {
    let stream = Arc::new(stream);
    *peer.stream.lock() = Some((conn, Arc::clone(&stream)));
    peer.outbox.lock().conn = Some(conn);
    let ended = pump_on(shared, peer, &stream, conn).await;
    peer.outbox.lock().conn = None;
    *peer.stream.lock() = None;
    ended
}

async fn pump_on(shared: &Shared, peer: &Peer, stream: &TcpStream, conn: u64) -> Ended {
    let c = &*peer.counters;
    loop {
        let_it_fill(peer).await;
        let job = {
            let mut ob = peer.outbox.lock();
            let job = if ob.writing {
                ob.want_turn = true;
                None
            } else {
                match ob.next_write(conn) {
                    Ok(job) => job,
                    // Begun on a connection that is gone: its frames are torn.
                    Err(frames) => {
                        add(&c.write_failed, frames as u64);
                        continue;
                    }
                }
            };
            ob.idle = job.is_none() && !ob.want_turn;
            if ob.idle {
                ob.trim();
            }
            if ob.want_room && ob.has_room() {
                ob.want_room = false;
                peer.room.notify_waiters();
            }
            job
        };
        let Some(Partial {
            chunk,
            mut at,
            frames,
            ..
        }) = job
        else {
            tokio::select! {
                biased;
                () = peer.cancel.cancelled() => return Ended::Cancelled,
                () = peer.wake.notified() => continue,
                why = closed(stream) => return Ended::Failed(why),
                () = tokio::time::sleep(shared.config.linger) => {
                    // Re-checked under the lock: a frame that came with
                    // the timer is written first.
                    let mut ob = peer.outbox.lock();
                    if ob.frames() == 0 && ob.partial.is_none() && !ob.writing {
                        // No sender may start writing on it from here on.
                        ob.conn = None;
                        return Ended::Quiet;
                    }
                    continue;
                }
            }
        };
        let written = tokio::select! {
            biased;
            () = peer.cancel.cancelled() => None,
            r = tokio::time::timeout(shared.config.write_timeout, write_rest(stream, &chunk, &mut at)) => Some(r),
        };
        let mut ob = peer.outbox.lock();
        ob.writing = false;
        match written {
            None => {
                add(&c.shutdown, frames as u64);
                return Ended::Cancelled;
            }
            Some(Ok(Ok(()))) => {
                add(&c.frames_sent, frames as u64);
                add(&c.bytes_sent, chunk.len() as u64);
                ob.recycle(chunk);
            }
            Some(Ok(Err(e))) => {
                add(&c.write_failed, frames as u64);
                return Ended::Failed(format!("write failed: {e}"));
            }
            Some(Err(_)) => {
                add(&c.write_failed, frames as u64);
                tracing::warn!(
                    peer = %peer.id,
                    timeout = ?shared.config.write_timeout,
                    "write timed out: the peer is not reading"
                );
                return Ended::Failed("write timed out".into());
            }
        }
    }
}

/// Scheduler turns the connection task gives a sender filling the queue's
/// only chunk, at most.
const FILL_TURNS: usize = 8;

/// Waits while a sender fills the queue's only chunk, a turn at a time,
/// for as long as it grows (at most [`FILL_TURNS`]). The first frame after
/// a quiet spell wakes the connection task; writing at once took a chunk
/// of a few frames from a sender that was streaming, so the task's core
/// wrote most of what the sender's core encoded: at 64 B frames the
/// sender then spent a third of its time waiting on the cache lines of
/// recycled chunks the other core had read, and the task's core sent and
/// received both. Left to fill, a chunk is sealed and written by the
/// sender itself. A lone frame waits one turn.
async fn let_it_fill(peer: &Peer) {
    let mut seen = peer.outbox.lock().growing_len();
    for _ in 0..FILL_TURNS {
        let Some(len) = seen else {
            return;
        };
        tokio::task::yield_now().await;
        seen = peer.outbox.lock().growing_len().filter(|&now| now > len);
    }
}

/// Writes `chunk` from `at` on, waiting for room in the socket.
async fn write_rest(stream: &TcpStream, chunk: &[u8], at: &mut usize) -> std::io::Result<()> {
    while *at < chunk.len() {
        stream.writable().await?;
        match stream.try_write(&chunk[*at..]) {
            Ok(n) => *at += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Resolves once the peer closes `stream` or sends on it: it never sends
/// after the handshake, so either means the connection is done.
async fn closed(stream: &TcpStream) -> String {
    let mut probe = [0u8; 64];
    loop {
        if let Err(e) = stream.readable().await {
            return format!("read failed: {e}");
        }
        match stream.try_read(&mut probe) {
            Ok(0) => return "peer closed the connection".into(),
            Ok(_) => return "peer sent bytes on a connection it accepted".into(),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return format!("read failed: {e}"),
        }
    }
}
