//! One node's end of an in-memory link: send, receive with its waits,
//! close, and the `Channel` trait.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering::{Acquire, Relaxed, SeqCst};
use std::time::{Duration, Instant};

use crossbeam_channel::{Select, SendTimeoutError, TrySendError};
use multinode_wire::NodeId;

use super::link::{CLOSED, CRASHED, Conn, End, Item, Tagged};
use super::{Shared, id};
use crate::{Channel, ChannelError, Fate};

/// One node's end of a link in an [`InMemoryGroup`](super::InMemoryGroup).
///
/// Cloning gives another handle to the same end; closing any of them closes
/// the end. Dropping a handle does nothing.
///
/// Several threads may send and receive on one end at once. Which receiving
/// thread gets which message is unspecified; each thread sees the messages
/// it gets in link order. With a delay or hold on the link and several
/// receiving threads, a message queued behind a delayed one can reach
/// another thread first.
#[derive(Clone)]
pub struct InMemoryChannel {
    pub(super) shared: Arc<Shared>,
    pub(super) conn: Arc<Conn>,
    pub(super) side: usize,
    /// Index of the link this end sends on, and of the one it receives on.
    pub(super) tx_link: usize,
    pub(super) rx_link: usize,
}

impl std::fmt::Debug for InMemoryChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryChannel")
            .field("local", &self.local())
            .field("peer", &self.peer())
            .field("incarnation", &self.incarnation())
            .field("open", &self.is_open())
            .finish()
    }
}

/// Whether a tagged message may be delivered now; if not, until when to
/// wait (`None`: until a release).
pub(super) fn ready(
    t: &Tagged,
    released: u64,
    now: &mut Option<Instant>,
) -> Result<(), Option<Instant>> {
    if t.hold.is_some_and(|epoch| epoch >= released) {
        return Err(None);
    }
    match t.due {
        Some(due) if due > *now.get_or_insert_with(Instant::now) => Err(Some(due)),
        _ => Ok(()),
    }
}

impl InMemoryChannel {
    /// The node this end belongs to.
    pub fn local(&self) -> NodeId {
        id(self.local_ix())
    }

    /// The node at the other end.
    pub fn peer(&self) -> NodeId {
        id(self.peer_ix())
    }

    fn local_ix(&self) -> usize {
        self.conn.nodes[self.side]
    }

    fn peer_ix(&self) -> usize {
        self.conn.nodes[1 - self.side]
    }

    /// The incarnation of the local node this handle was taken in.
    pub fn incarnation(&self) -> u64 {
        self.conn.gens[self.side]
    }

    pub(super) fn error_for(&self, side: usize, state: u8, peer: bool) -> Option<ChannelError> {
        if state & CLOSED[side] != 0 {
            return Some(if peer {
                ChannelError::PeerClosed
            } else {
                ChannelError::Closed
            });
        }
        if state & CRASHED[side] != 0 {
            let node = self.conn.nodes[side];
            let (held, current) = (self.conn.gens[side], self.shared.gens[node].load(Acquire));
            return Some(if held != current {
                ChannelError::Stale { held, current }
            } else if peer {
                ChannelError::PeerCrashed(id(node))
            } else {
                ChannelError::Crashed(id(node))
            });
        }
        None
    }

    pub(super) fn own_error(&self, state: u8) -> Option<ChannelError> {
        self.error_for(self.side, state, false)
    }

    pub(super) fn peer_error(&self, state: u8) -> Option<ChannelError> {
        self.error_for(1 - self.side, state, true)
    }

    pub(super) fn delivered(&self, msg: Vec<u8>) -> Result<Option<Vec<u8>>, ChannelError> {
        self.shared.links[self.rx_link]
            .rx
            .0
            .delivered
            .fetch_add(1, Relaxed);
        Ok(Some(msg))
    }

    pub(super) fn queue_full(&self) -> ChannelError {
        ChannelError::QueueFull {
            capacity: self.shared.config.capacity,
        }
    }

    /// The rest of `receive`: staged and overtaking messages, delays and
    /// holds, and waiting.
    #[inline(never)]
    pub(super) fn receive_waiting(
        &self,
        timeout: Duration,
    ) -> Result<Option<Vec<u8>>, ChannelError> {
        let end = &self.conn.ends[self.side];
        let mut deadline: Option<Option<Instant>> = None;
        loop {
            let state = self.conn.state.load(Acquire);
            if state != 0 {
                if let Some(e) = self.own_error(state) {
                    return Err(e);
                }
            }
            let (until, watch_queue) = match self.take(state) {
                Ok(Some(msg)) => return self.delivered(msg),
                Ok(None) => {
                    return Err(self.peer_error(state).unwrap_or(ChannelError::PeerClosed));
                }
                Err(wait) => wait,
            };
            let now = Instant::now();
            let deadline = *deadline.get_or_insert_with(|| now.checked_add(timeout));
            if deadline.is_some_and(|d| now >= d) {
                return Ok(None);
            }
            let until = match (until, deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let mut select = Select::new();
            let wake = select.recv(&end.wake_rx);
            if watch_queue {
                select.recv(&end.rx);
            }
            if state == 0 {
                select.recv(&self.conn.terminal_rx);
            }
            let ready = match until {
                Some(until) => select.ready_deadline(until).ok(),
                None => Some(select.ready()),
            };
            if ready == Some(wake) {
                let _ = end.wake_rx.try_recv();
            }
        }
    }

    /// Sends `msg`, waiting up to `timeout` for room if the link's queue is
    /// full, where [`Channel::send`] fails at once with
    /// [`ChannelError::QueueFull`]: backpressure without a retry loop.
    pub fn send_timeout(&self, msg: &[u8], timeout: Duration) -> Result<(), ChannelError> {
        self.send_inner(msg, Some(timeout))
    }

    pub(super) fn send_inner(
        &self,
        msg: &[u8],
        wait: Option<Duration>,
    ) -> Result<(), ChannelError> {
        let max = self.shared.config.max_message;
        if msg.len() > max {
            return Err(ChannelError::TooLarge {
                len: msg.len(),
                max,
            });
        }
        let state = self.conn.state.load(Acquire);
        if state != 0 {
            if let Some(e) = self.own_error(state).or_else(|| self.peer_error(state)) {
                return Err(e);
            }
        }
        let link = &self.shared.links[self.tx_link];
        if link.tx.0.faulty.load(Acquire) {
            return self.send_faulty_waiting(msg, wait);
        }
        let inbox = &self.conn.ends[1 - self.side];
        let item = Item::Plain(msg.to_vec());
        let sent = &link.tx.0.sent;
        sent.fetch_add(1, Relaxed);
        let waited = match (inbox.tx.try_send(item), wait) {
            (Ok(()), _) => false,
            (Err(TrySendError::Full(mut item)), Some(timeout)) => {
                // Back off before reading the clock and parking: room
                // usually comes within a few spins.
                for step in 0..SPIN_STEPS {
                    backoff(step);
                    match inbox.tx.try_send(item) {
                        Ok(()) => return self.after_waiting(),
                        Err(TrySendError::Full(back)) => item = back,
                        Err(TrySendError::Disconnected(_)) => {
                            sent.fetch_sub(1, Relaxed);
                            return Err(ChannelError::PeerClosed);
                        }
                    }
                }
                match inbox.tx.send_timeout(item, timeout) {
                    Ok(()) => true,
                    Err(e) => {
                        sent.fetch_sub(1, Relaxed);
                        return Err(match e {
                            SendTimeoutError::Timeout(_) => self.queue_full(),
                            SendTimeoutError::Disconnected(_) => ChannelError::PeerClosed,
                        });
                    }
                }
            }
            (Err(e), _) => {
                sent.fetch_sub(1, Relaxed);
                return Err(match e {
                    TrySendError::Full(_) => self.queue_full(),
                    // The connection owns both halves of its queues.
                    TrySendError::Disconnected(_) => ChannelError::PeerClosed,
                });
            }
        };
        if waited {
            self.after_waiting()?;
        }
        Ok(())
    }

    /// A send that waited may have found room only because the peer's end
    /// closed or crashed and its queue was thrown away: then the message is
    /// lost, counted, and the error reported.
    pub(super) fn after_waiting(&self) -> Result<(), ChannelError> {
        let state = self.conn.state.load(Acquire);
        match self.peer_error(state).or_else(|| self.own_error(state)) {
            None => Ok(()),
            Some(e) => {
                let _ctl = self.shared.control.lock();
                let lost = self.conn.ends[1 - self.side].discard();
                self.shared
                    .link(self.local_ix(), self.peer_ix())
                    .rx
                    .0
                    .lost
                    .fetch_add(lost, Relaxed);
                Err(e)
            }
        }
    }

    /// The slow path, waiting for room: retried in short naps, since room
    /// on a faulty link may come from a release as well as a receive.
    pub(super) fn send_faulty_waiting(
        &self,
        msg: &[u8],
        wait: Option<Duration>,
    ) -> Result<(), ChannelError> {
        let deadline = wait.and_then(|w| Instant::now().checked_add(w));
        loop {
            match self.send_faulty(msg) {
                Err(ChannelError::QueueFull { .. })
                    if wait.is_some() && deadline.is_none_or(|d| Instant::now() < d) =>
                {
                    std::thread::sleep(Duration::from_micros(200));
                }
                other => return other,
            }
        }
    }

    /// The slow path: the link has a fault, cut or hold set.
    pub(super) fn send_faulty(&self, msg: &[u8]) -> Result<(), ChannelError> {
        let (me, peer) = (self.local_ix(), self.peer_ix());
        let mut ctl = self.shared.control.lock();
        // Close and crash happen under this lock: decide on a settled state.
        let state = self.conn.state.load(Acquire);
        if let Some(e) = self.own_error(state).or_else(|| self.peer_error(state)) {
            return Err(e);
        }
        let inbox = &self.conn.ends[1 - self.side];
        let capacity = self.shared.config.capacity;
        if inbox.queued() >= capacity {
            return Err(self.queue_full());
        }
        let link = self.shared.link(me, peer);
        let (due, copies, overtake, hold, corrupt) = match ctl.model.decide(id(me), id(peer), msg) {
            Fate::Dropped => return Ok(()),
            Fate::Held => (None, 1, false, Some(link.rx.0.released.load(Acquire)), None),
            Fate::Deliver(d) => {
                let due = (!d.after.is_zero()).then(|| Instant::now() + d.after);
                (due, d.copies, d.overtake, None, d.corrupt)
            }
        };
        drop(ctl);
        let mut msg = msg.to_vec();
        if let Some(flip) = corrupt {
            flip.apply(&mut msg);
        }
        for copy in 0..copies {
            if copy > 0 && inbox.queued() >= capacity {
                link.rx.0.lost.fetch_add(1, Relaxed);
                break;
            }
            let tagged = Tagged {
                // The last copy takes the message itself.
                msg: if copy + 1 == copies {
                    std::mem::take(&mut msg)
                } else {
                    msg.clone()
                },
                due,
                hold,
            };
            if overtake {
                inbox.push_urgent(tagged);
                continue;
            }
            let item = if due.is_none() && hold.is_none() {
                Item::Plain(tagged.msg)
            } else {
                Item::Tagged(Box::new(tagged))
            };
            match inbox.tx.try_send(item) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) if copy > 0 => {
                    link.rx.0.lost.fetch_add(1, Relaxed);
                }
                Err(_) => return Err(self.queue_full()),
            }
        }
        Ok(())
    }

    /// One attempt to take a deliverable message. `Err(until)` when nothing
    /// is deliverable yet: wait for a signal, and until `until` if given;
    /// the flag says whether the queue itself is worth watching.
    pub(super) fn take(&self, state: u8) -> Result<Option<Vec<u8>>, (Option<Instant>, bool)> {
        let end = &self.conn.ends[self.side];
        let mut staged = end.staged.lock();
        let result = self.take_locked(end, &mut staged, state);
        end.settle(&staged);
        result
    }

    pub(super) fn take_locked(
        &self,
        end: &End,
        staged: &mut VecDeque<Box<Tagged>>,
        state: u8,
    ) -> Result<Option<Vec<u8>>, (Option<Instant>, bool)> {
        let mut now = None;
        let mut until: Option<Instant> = None;
        if end.urgent_len.load(SeqCst) > 0 {
            let mut urgent = end.urgent.lock();
            if let Some(t) = urgent.front() {
                match ready(t, 0, &mut now) {
                    Ok(()) => {
                        let t = urgent.pop_front().map(|t| t.msg);
                        end.urgent_len.fetch_sub(1, SeqCst);
                        return Ok(t);
                    }
                    Err(due) => until = due,
                }
            }
        }
        if staged.is_empty() {
            match end.rx.try_recv() {
                Ok(Item::Plain(msg)) => return Ok(Some(msg)),
                Ok(Item::Tagged(t)) => staged.push_back(t),
                Err(_) => {}
            }
        }
        let Some(t) = staged.front() else {
            // Nothing queued. Once the connection is over, nothing will be.
            if until.is_none() && state != 0 {
                return Ok(None);
            }
            return Err((until, true));
        };
        let released = self
            .shared
            .link(self.peer_ix(), self.local_ix())
            .rx
            .0
            .released
            .load(Acquire);
        match ready(t, released, &mut now) {
            Ok(()) => Ok(staged.pop_front().map(|t| t.msg)),
            Err(due) => {
                let until = match (until, due) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                Err((until, false))
            }
        }
    }
}

/// How many backoff steps a receive takes on an empty queue before it
/// parks: 6 growing spins, then 4 yields.
pub(super) const SPIN_STEPS: u32 = 10;

pub(super) fn backoff(step: u32) {
    if step < 6 {
        for _ in 0..1u32 << step {
            std::hint::spin_loop();
        }
    } else {
        std::thread::yield_now();
    }
}

impl Channel for InMemoryChannel {
    fn send(&self, msg: &[u8]) -> Result<(), ChannelError> {
        self.send_inner(msg, None)
    }

    fn receive(&self, timeout: Duration) -> Result<Option<Vec<u8>>, ChannelError> {
        // The fast path, kept small enough to inline: an open connection,
        // nothing staged, a plain message at the front of the queue.
        // While the queue is empty it spins, then yields, a few times, as
        // crossbeam's own blocking receive does before it parks: a message
        // about to arrive is taken without registering a waiter.
        let end = &self.conn.ends[self.side];
        let spins = if timeout.is_zero() { 0 } else { SPIN_STEPS };
        let mut step = 0;
        while self.conn.state.load(Acquire) == 0 && !end.slow.load(SeqCst) {
            match end.rx.try_recv() {
                Ok(Item::Plain(msg)) => return self.delivered(msg),
                Ok(Item::Tagged(t)) => {
                    let mut staged = end.staged.lock();
                    staged.push_back(t);
                    end.settle(&staged);
                }
                Err(_) if step < spins => {
                    backoff(step);
                    step += 1;
                }
                Err(_) => break,
            }
        }
        self.receive_waiting(timeout)
    }

    fn close(&self) {
        let _ctl = self.shared.control.lock();
        if self.conn.mark(CLOSED[self.side]) {
            let lost = self.conn.ends[self.side].discard();
            self.shared
                .link(self.peer_ix(), self.local_ix())
                .rx
                .0
                .lost
                .fetch_add(lost, Relaxed);
        }
    }

    fn is_open(&self) -> bool {
        self.conn.state.load(Acquire) == 0
    }
}
