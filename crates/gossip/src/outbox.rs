//! A peer's send queue: frames encoded back to back into chunks, in send
//! order. Sans-IO: the connection task takes a chunk, writes it, and gives
//! the buffer back for reuse, so steady traffic allocates nothing and every
//! buffer stays small enough to stay in cache. A chunk starts at 4 KiB and
//! doubles, up to 128 KiB, each time frames fill one faster than it is
//! written; a queue that drains gives its buffers back. A node of a large
//! cluster has a queue for each of hundreds of peers, most of them quiet,
//! and a quiet queue holds no buffer at all.

use std::collections::VecDeque;

use bytes::BytesMut;
use multinode_wire::{ClusterFrame, FRAME_HEADER_LEN, MessageCodec, WireError};
use tokio_util::codec::Encoder;

/// The largest size at which a chunk is closed and a new one started (a
/// frame is never split: one larger than this makes a chunk of its own
/// size). Each chunk is a write and, while a sender streams, a turn
/// passed between it and the connection task: at 64 KiB a stream of
/// 1 KiB frames did both every 63 frames, and 128 KiB chunks carried a
/// quarter more frames a second on the same CPU (256 KiB, no more).
pub(crate) const CHUNK: usize = 128 << 10;

/// The size a queue's first chunk is closed at.
const MIN_CHUNK: usize = 4 << 10;

/// Spare buffers kept for reuse while frames stream: up to 4 MiB, so a
/// sender that refills half the queue at a time touches no fresh pages.
const POOL: usize = (4 << 20) / CHUNK;

/// Why a frame was not queued.
#[derive(Debug)]
pub(crate) enum Refused {
    /// At the frame or byte bound.
    Full { frames: usize, bytes: usize },
    /// Over the frame cap, or unencodable.
    Encode(WireError),
}

pub(crate) struct Outbox {
    codec: MessageCodec<ClusterFrame>,
    open: BytesMut,
    open_frames: usize,
    /// The size the open chunk is closed at: [`MIN_CHUNK`] doubling up to
    /// [`CHUNK`] while frames stream.
    chunk: usize,
    sealed: VecDeque<(BytesMut, usize)>,
    pool: Vec<BytesMut>,
    frames: usize,
    bytes: usize,
    max_frames: usize,
    max_bytes: usize,
    /// The connection task waits for frames: the next push should wake it.
    pub(crate) idle: bool,
    /// A connection task runs for this queue. It ends once the queue is
    /// empty with no connection open, and the next push starts one: a node
    /// of a large cluster keeps tasks for the peers it talks to now, not
    /// for every peer it knows.
    pub(crate) task: bool,
    /// The connection task has ended: pushes fail.
    pub(crate) closed: bool,
    /// A sender waits for room: the take that makes it should wake it.
    pub(crate) want_room: bool,
    /// Someone (the connection task, or a sender writing a whole chunk
    /// itself) is writing outside the lock: nobody else may write.
    pub(crate) writing: bool,
    /// The connection task waits for the writer to finish.
    pub(crate) want_turn: bool,
    /// The live connection's number, while there is one.
    pub(crate) conn: Option<u64>,
    /// A sender holds the write turn for the oldest closed chunk and has
    /// not taken it yet.
    claimed: bool,
    /// A chunk a sender began and could not finish without blocking: the
    /// connection task writes the rest before anything else.
    pub(crate) partial: Option<Partial>,
}

/// A chunk written in part.
pub(crate) struct Partial {
    pub(crate) chunk: BytesMut,
    /// Bytes already written.
    pub(crate) at: usize,
    pub(crate) frames: usize,
    /// The connection the first `at` bytes went to.
    pub(crate) conn: u64,
}

impl Outbox {
    pub(crate) fn new(max_frame: usize, max_frames: usize, max_bytes: usize) -> Self {
        Self {
            codec: MessageCodec::with_max(max_frame),
            open: BytesMut::new(),
            open_frames: 0,
            chunk: MIN_CHUNK,
            sealed: VecDeque::new(),
            pool: Vec::new(),
            frames: 0,
            bytes: 0,
            max_frames,
            max_bytes,
            idle: false,
            task: false,
            closed: false,
            want_room: false,
            writing: false,
            want_turn: false,
            conn: None,
            claimed: false,
            partial: None,
        }
    }

    /// Takes the write turn for the oldest whole chunk, for a sender to
    /// write itself: only while connected, nobody writing, nothing begun,
    /// and a chunk is closed. Taken in the same hold of the lock as the
    /// push that closed the chunk, so the connection task cannot take the
    /// chunk in between (its core would then write what the sender's core
    /// encoded, and the sender reuse buffers the other core last read).
    /// The chunk stays at the front of the queue for [`Self::take_claimed`].
    #[inline]
    pub(crate) fn claim_sealed(&mut self) -> bool {
        let ready = self.conn.is_some()
            && !self.writing
            && self.partial.is_none()
            && !self.sealed.is_empty();
        if ready {
            self.writing = true;
            self.claimed = true;
        }
        ready
    }

    /// The chunk [`Self::claim_sealed`] claimed, and the connection it is
    /// for. `None` if the connection has ended since (the turn is given
    /// back, the chunk left for the next connection) or the queue closed.
    pub(crate) fn take_claimed(&mut self) -> Option<(BytesMut, usize, u64)> {
        if !std::mem::take(&mut self.claimed) {
            return None;
        }
        let Some(conn) = self.conn else {
            self.writing = false;
            return None;
        };
        let (chunk, frames) = self.sealed.pop_front()?;
        self.frames -= frames;
        self.bytes -= chunk.len();
        Some((chunk, frames, conn))
    }

    /// The open chunk's length, when it is all the queue holds and nobody
    /// writes.
    pub(crate) fn growing_len(&self) -> Option<usize> {
        (self.sealed.is_empty() && self.partial.is_none() && !self.writing && self.open_frames > 0)
            .then_some(self.open.len())
    }

    /// Whether the queue is at most half full, by frames and by bytes.
    pub(crate) fn has_room(&self) -> bool {
        self.frames <= self.max_frames / 2 && self.bytes <= self.max_bytes / 2
    }

    /// Frames queued.
    pub(crate) fn frames(&self) -> usize {
        self.frames
    }

    /// Encodes `frame` at the back of the queue. Over a bound, the frame
    /// is refused and the queue left as it was (overflow refuses the
    /// newest). A single frame may exceed the byte bound when the queue is
    /// empty, so any frame under the cap can be sent.
    pub(crate) fn push(&mut self, frame: &ClusterFrame) -> Result<(), Refused> {
        if self.frames >= self.max_frames {
            return Err(self.full());
        }
        // A frame that would outgrow the open chunk starts a new one, so
        // a chunk never reallocates (a doubled chunk would be too big to
        // recycle, and big enough for the allocator to map afresh).
        let want = FRAME_HEADER_LEN + frame.payload_len();
        if self.open_frames > 0 && self.open.len() + want > self.open.capacity() {
            self.seal_full();
        }
        if self.open.capacity() == 0 {
            self.open = self
                .pool
                .pop()
                .unwrap_or_else(|| BytesMut::with_capacity(self.chunk.max(want)));
        }
        let before = self.open.len();
        self.codec
            .encode(frame, &mut self.open)
            .map_err(Refused::Encode)?;
        let len = self.open.len() - before;
        if self.frames > 0 && self.bytes + len > self.max_bytes {
            self.open.truncate(before);
            return Err(self.full());
        }
        self.frames += 1;
        self.bytes += len;
        self.open_frames += 1;
        if self.open.len() >= self.chunk {
            self.seal_full();
        }
        Ok(())
    }

    fn full(&self) -> Refused {
        Refused::Full {
            frames: self.frames,
            bytes: self.bytes,
        }
    }

    /// Closes a full chunk: frames come faster than chunks go, so the next
    /// ones are larger.
    fn seal_full(&mut self) {
        self.chunk = (self.chunk * 2).min(CHUNK);
        self.seal();
    }

    /// Closes the open chunk; the next push starts another.
    fn seal(&mut self) {
        let next = self.pool.pop().unwrap_or_default();
        let chunk = std::mem::replace(&mut self.open, next);
        self.sealed
            .push_back((chunk, std::mem::take(&mut self.open_frames)));
    }

    /// The oldest chunk and how many frames it holds, if any are queued.
    pub(crate) fn take(&mut self) -> Option<(BytesMut, usize)> {
        let (chunk, frames) = match self.sealed.pop_front() {
            Some(c) => c,
            None if self.open_frames > 0 => {
                let next = self.pool.pop().unwrap_or_default();
                (
                    std::mem::replace(&mut self.open, next),
                    std::mem::take(&mut self.open_frames),
                )
            }
            None => return None,
        };
        self.frames -= frames;
        self.bytes -= chunk.len();
        Some((chunk, frames))
    }

    /// What the connection task on connection `conn` writes next, taking
    /// the write turn: the rest of a chunk a sender began (on `conn`, or
    /// not at all), else the oldest chunk. A chunk begun on another
    /// connection is dropped, since its first frame would arrive torn:
    /// `Err` holds how many frames it carried, for counting.
    pub(crate) fn next_write(&mut self, conn: u64) -> Result<Option<Partial>, usize> {
        debug_assert!(!self.writing, "two writers");
        let next = match self.partial.take() {
            Some(p) if p.at > 0 && p.conn != conn => return Err(p.frames),
            Some(p) => Some(p),
            None => self.take().map(|(chunk, frames)| Partial {
                chunk,
                at: 0,
                frames,
                conn,
            }),
        };
        self.writing = next.is_some();
        Ok(next)
    }

    /// Frees every buffer once the queue has drained, and starts the next
    /// chunk small again.
    pub(crate) fn trim(&mut self) {
        self.pool = Vec::new();
        self.chunk = MIN_CHUNK;
        if self.open_frames == 0 {
            self.open = BytesMut::new();
        }
    }

    /// Gives a written chunk's buffer back for reuse.
    pub(crate) fn recycle(&mut self, mut buf: BytesMut) {
        // Smaller than the chunks now made, it would cut the next one short.
        let fits = (self.chunk..=2 * CHUNK).contains(&buf.capacity());
        if self.pool.len() < POOL && fits {
            buf.clear();
            self.pool.push(buf);
        }
    }

    /// Empties the queue for good; returns how many frames it held.
    pub(crate) fn close(&mut self) -> usize {
        self.closed = true;
        let frames = self.frames + self.partial.as_ref().map_or(0, |p| p.frames);
        *self = Self {
            closed: true,
            ..Self::new(0, 0, 0)
        };
        frames
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use multinode_wire::GossipPdu;

    use super::*;

    fn frame(n: usize) -> ClusterFrame {
        ClusterFrame::Gossip(GossipPdu::Opaque {
            schema: 1,
            body: Bytes::from(vec![n as u8; n]),
        })
    }

    /// Every frame comes out once, in order, chunk by chunk.
    #[test]
    fn frames_come_out_in_order_in_bounded_chunks() {
        let mut ob = Outbox::new(1 << 20, 1 << 20, 1 << 30);
        let sizes: Vec<usize> = (0..2000)
            .map(|i| (i * 37) % 3000)
            .chain([200_000, 5])
            .collect();
        let mut want = BytesMut::new();
        let mut codec = MessageCodec::<ClusterFrame>::new();
        for &n in &sizes {
            ob.push(&frame(n)).expect("room");
            codec.encode(&frame(n), &mut want).expect("encode");
        }
        assert_eq!(ob.frames(), sizes.len());
        let (mut got, mut frames) = (BytesMut::new(), 0);
        while let Some((chunk, n)) = ob.take() {
            assert!(chunk.len() < CHUNK + 200_010, "chunk of {}", chunk.len());
            got.extend_from_slice(&chunk);
            frames += n;
            ob.recycle(chunk);
        }
        assert_eq!(frames, sizes.len());
        assert_eq!(got, want);
        assert_eq!((ob.frames, ob.bytes), (0, 0));
    }

    /// The open chunk counts as growing only while it is all there is to
    /// write and nobody writes: a sealed chunk, a chunk begun, or a writer
    /// at work each mean the connection task has something else to do.
    #[test]
    fn only_a_lone_open_chunk_counts_as_growing() {
        let mut ob = Outbox::new(1 << 20, 1 << 20, 1 << 30);
        assert_eq!(ob.growing_len(), None, "empty");
        ob.push(&frame(10)).expect("room");
        let one = ob.growing_len().expect("one frame, open");
        ob.push(&frame(10)).expect("room");
        assert!(ob.growing_len().expect("two frames, open") > one);
        ob.writing = true;
        assert_eq!(ob.growing_len(), None, "someone writes");
        ob.writing = false;
        // Past the first chunk's size: one sealed, the next one open.
        while ob.sealed.is_empty() {
            ob.push(&frame(1000)).expect("room");
        }
        assert_eq!(ob.growing_len(), None, "a sealed chunk waits");
        while let Some((chunk, _)) = ob.take() {
            ob.recycle(chunk);
        }
        assert_eq!(ob.growing_len(), None, "drained");
        ob.push(&frame(10)).expect("room");
        ob.partial = Some(Partial {
            chunk: BytesMut::from(&b"begun"[..]),
            at: 2,
            frames: 1,
            conn: 1,
        });
        assert_eq!(ob.growing_len(), None, "a chunk begun waits");
    }

    /// A frame that would not fit in the open chunk starts the next one:
    /// no chunk of several frames grows past the size it was made with.
    /// Chunks start small and double while frames stream, up to `CHUNK`;
    /// written chunks are reused, and a drained queue keeps no buffer.
    #[test]
    fn chunks_never_grow_grow_while_streaming_and_are_reused() {
        let mut ob = Outbox::new(1 << 20, 1 << 20, 1 << 30);
        for round in 0..3 {
            for _ in 0..1000 {
                ob.push(&frame(1000)).expect("room");
            }
            let (mut chunks, mut last) = (0, 0);
            while let Some((chunk, n)) = ob.take() {
                let cap = chunk.capacity();
                assert!(
                    cap <= CHUNK,
                    "round {round}: chunk of {n} frames grew to {cap}"
                );
                assert!(chunk.len() <= cap);
                last = cap;
                chunks += 1;
                ob.recycle(chunk);
            }
            assert_eq!(last, CHUNK, "round {round}: chunks never reached full size");
            assert!(
                chunks >= 1000 * 1000 / CHUNK,
                "round {round}: {chunks} chunks"
            );
        }
        assert!(ob.pool.len() > 1, "written chunks were not kept for reuse");
        ob.trim();
        assert!(ob.pool.is_empty() && ob.open.capacity() == 0);
        ob.push(&frame(100)).expect("room");
        let (chunk, _) = ob.take().expect("a chunk");
        assert_eq!(
            chunk.capacity(),
            MIN_CHUNK,
            "a drained queue starts small again"
        );
    }

    /// One writer at a time, chunks in order, and a chunk cut short on one
    /// connection is never finished on another.
    #[test]
    fn a_chunk_begun_by_a_sender_is_finished_on_its_connection_only() {
        let mut ob = Outbox::new(1 << 20, 1 << 20, 1 << 30);
        assert!(!ob.claim_sealed(), "nothing queued");
        assert!(ob.take_claimed().is_none(), "nothing claimed");
        for _ in 0..200 {
            ob.push(&frame(1000)).expect("room");
        }
        assert!(!ob.claim_sealed(), "not connected");
        ob.conn = Some(1);
        assert!(ob.claim_sealed(), "a whole chunk");
        assert!(!ob.claim_sealed(), "a second writer");
        let before = ob.frames();
        let (chunk, frames, conn) = ob.take_claimed().expect("the chunk claimed");
        assert_eq!(conn, 1);
        assert_eq!(ob.frames(), before - frames);
        assert!(ob.take_claimed().is_none(), "taken twice");
        // A turn claimed on a connection that ends before the take is
        // given back, and the chunk stays queued.
        let mut other = Outbox::new(1 << 20, 1 << 20, 1 << 30);
        while other.sealed.is_empty() {
            other.push(&frame(1000)).expect("room");
        }
        other.conn = Some(7);
        assert!(other.claim_sealed());
        other.conn = None;
        let queued = other.frames();
        assert!(other.take_claimed().is_none());
        assert!(!other.writing, "the turn was not given back");
        assert_eq!(other.frames(), queued, "the chunk left the queue");
        // The sender got 100 bytes out, then the socket was full.
        ob.writing = false;
        ob.partial = Some(Partial {
            chunk,
            at: 100,
            frames,
            conn,
        });
        assert!(!ob.claim_sealed(), "a chunk overtook the one begun");
        // On the same connection the rest goes first.
        let p = ob
            .next_write(1)
            .expect("same connection")
            .expect("the rest");
        assert_eq!((p.at, p.frames), (100, frames));
        assert!(ob.writing);
        // On another connection it is dropped and counted, and the next
        // chunk follows whole.
        ob.writing = false;
        ob.partial = Some(p);
        assert_eq!(ob.next_write(2).err(), Some(frames));
        let next = ob
            .next_write(2)
            .expect("no torn chunk")
            .expect("the next chunk");
        assert_eq!(next.at, 0);
        // A chunk not yet begun may go on any connection.
        ob.writing = false;
        ob.partial = Some(next);
        assert_eq!(ob.next_write(3).expect("whole").expect("chunk").at, 0);
    }

    #[test]
    fn bounds_refuse_the_newest_and_leave_the_queue_intact() {
        let mut ob = Outbox::new(1 << 20, 3, 1 << 30);
        for _ in 0..3 {
            ob.push(&frame(10)).expect("room");
        }
        assert!(matches!(
            ob.push(&frame(10)),
            Err(Refused::Full { frames: 3, .. })
        ));
        let mut ob = Outbox::new(1 << 20, 100, 1000);
        ob.push(&frame(2000))
            .expect("one frame may exceed the byte bound");
        assert!(matches!(
            ob.push(&frame(10)),
            Err(Refused::Full { frames: 1, .. })
        ));
        let (chunk, n) = ob.take().expect("a chunk");
        assert_eq!(n, 1);
        assert!(chunk.len() > 2000);
        assert!(ob.take().is_none());
        let mut ob = Outbox::new(100, 100, 1000);
        assert!(matches!(
            ob.push(&frame(200)),
            Err(Refused::Encode(WireError::FrameTooLarge { .. }))
        ));
        assert_eq!(ob.frames(), 0);
        assert!(ob.take().is_none(), "a refused frame left bytes behind");
        assert_eq!(ob.close(), 0);
    }
}
