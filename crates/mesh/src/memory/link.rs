//! One connection of the in-memory mesh: the inbox each side owns, what
//! the send and receive paths read without a lock, and the close and crash
//! flags.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::{AcqRel, Acquire, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, bounded};
use parking_lot::Mutex;

pub(super) const CLOSED: [u8; 2] = [1, 2];
pub(super) const CRASHED: [u8; 2] = [4, 8];

/// A message in an inbox. Plain messages are the fast path; the rest carry
/// what the fault model decided.
pub(super) enum Item {
    Plain(Vec<u8>),
    Tagged(Box<Tagged>),
}

pub(super) struct Tagged {
    pub(super) msg: Vec<u8>,
    /// Not visible before this instant.
    pub(super) due: Option<Instant>,
    /// Held until the link's release count passes this value.
    pub(super) hold: Option<u64>,
}

/// Keeps the sender's and the receiver's counters off each other's cache
/// line.
#[repr(align(128))]
#[derive(Default)]
pub(super) struct Padded<T>(pub(super) T);

/// Per directed link: what the send and receive paths read without a lock.
#[derive(Default)]
pub(super) struct LinkState {
    pub(super) tx: Padded<TxState>,
    pub(super) rx: Padded<RxState>,
}

#[derive(Default)]
pub(super) struct TxState {
    /// A mirror of `FaultModel::is_faulty`: when false, sends skip the model.
    pub(super) faulty: AtomicBool,
    /// Messages sent on the fast path (the model counts the rest).
    pub(super) sent: AtomicU64,
}

#[derive(Default)]
pub(super) struct RxState {
    /// How many holds of this link have been released.
    pub(super) released: AtomicU64,
    pub(super) delivered: AtomicU64,
    pub(super) lost: AtomicU64,
}

/// One side's inbox on one connection.
pub(super) struct End {
    pub(super) tx: Sender<Item>,
    pub(super) rx: Receiver<Item>,
    /// Messages taken off the queue that may not be delivered yet (delayed
    /// or held), in queue order.
    pub(super) staged: Mutex<VecDeque<Box<Tagged>>>,
    /// Messages that overtake the queue.
    pub(super) urgent: Mutex<VecDeque<Tagged>>,
    pub(super) urgent_len: AtomicUsize,
    /// Whether anything is staged or urgent: while false, a receiver may
    /// take a plain message straight off the queue without a lock.
    pub(super) slow: AtomicBool,
    /// A nudge for a blocked receiver: a release, an overtaking message.
    pub(super) wake_tx: Sender<()>,
    pub(super) wake_rx: Receiver<()>,
}

impl End {
    pub(super) fn new(capacity: usize) -> Self {
        let (tx, rx) = bounded(capacity);
        let (wake_tx, wake_rx) = bounded(1);
        Self {
            tx,
            rx,
            staged: Mutex::new(VecDeque::new()),
            urgent: Mutex::new(VecDeque::new()),
            urgent_len: AtomicUsize::new(0),
            slow: AtomicBool::new(false),
            wake_tx,
            wake_rx,
        }
    }

    pub(super) fn queued(&self) -> usize {
        self.rx.len() + self.urgent_len.load(Acquire)
    }

    pub(super) fn push_urgent(&self, t: Tagged) {
        self.urgent.lock().push_back(t);
        self.urgent_len.fetch_add(1, SeqCst);
        self.slow.store(true, SeqCst);
        self.wake();
    }

    /// Clears `slow` if nothing is staged or urgent; `staged` is the locked
    /// staging queue.
    pub(super) fn settle(&self, staged: &VecDeque<Box<Tagged>>) {
        if staged.is_empty() && self.urgent_len.load(SeqCst) == 0 {
            self.slow.store(false, SeqCst);
            // An overtaking message may have come in between: keep it seen.
            if self.urgent_len.load(SeqCst) > 0 {
                self.slow.store(true, SeqCst);
            }
        } else {
            self.slow.store(true, SeqCst);
        }
    }

    pub(super) fn wake(&self) {
        let _ = self.wake_tx.try_send(());
    }

    /// Throws away everything queued here; returns how much.
    pub(super) fn discard(&self) -> u64 {
        let mut staged = self.staged.lock();
        let mut n = staged.len() as u64;
        staged.clear();
        let mut urgent = self.urgent.lock();
        n += urgent.len() as u64;
        urgent.clear();
        self.urgent_len.store(0, SeqCst);
        self.slow.store(false, SeqCst);
        drop(urgent);
        n += self.rx.try_iter().count() as u64;
        n
    }
}

/// A connection between two nodes, for one life of each.
pub(super) struct Conn {
    /// The two nodes, lower index first; side `i` belongs to `nodes[i]`.
    pub(super) nodes: [usize; 2],
    /// Each node's incarnation when the connection opened.
    pub(super) gens: [u64; 2],
    /// `CLOSED` and `CRASHED` bits per side.
    pub(super) state: AtomicU8,
    pub(super) ends: [End; 2],
    /// Dropped at the first close or crash, which wakes every receiver.
    pub(super) terminal_tx: Mutex<Option<Sender<()>>>,
    pub(super) terminal_rx: Receiver<()>,
}

impl Conn {
    pub(super) fn side_of(&self, node: usize) -> usize {
        usize::from(self.nodes[1] == node)
    }

    /// Sets a state bit; wakes every receiver on both sides.
    pub(super) fn mark(&self, bit: u8) -> bool {
        let old = self.state.fetch_or(bit, AcqRel);
        self.terminal_tx.lock().take();
        for end in &self.ends {
            end.wake();
        }
        old & bit == 0
    }
}
