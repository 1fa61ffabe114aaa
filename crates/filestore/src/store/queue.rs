//! The operations waiting for a handle's write thread: which of them start
//! a cycle now, and how long a staged put may wait for one.

use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// Operations (with whatever each carries) waiting for the next cycle.
pub(super) struct Queue<T> {
    state: Mutex<State<T>>,
    wake: Condvar,
    /// How long a staged operation waits for a cycle it did not start.
    stage_wait: Duration,
}

struct State<T> {
    ops: Vec<T>,
    /// Whether an operation that wants a cycle now is queued.
    urgent: bool,
    /// When the oldest staged operation still queued was staged.
    staged_since: Option<Instant>,
    /// Whether the handles are all gone: what is queued is written, then
    /// the thread stops.
    closed: bool,
}

impl<T> Queue<T> {
    pub(super) fn new(stage_wait: Duration) -> Self {
        Self {
            state: Mutex::new(State {
                ops: Vec::new(),
                urgent: false,
                staged_since: None,
                closed: false,
            }),
            wake: Condvar::new(),
            stage_wait,
        }
    }

    /// Queues `op` for the next cycle: one due now (whoever runs it: the
    /// write thread once [`Queue::wake`] is called, or the thread waiting
    /// for it), or, `staged`, one started by another operation or once it
    /// has waited the stage wait.
    pub(super) fn push(&self, op: T, staged: bool) {
        let mut s = self.state.lock();
        s.ops.push(op);
        if !staged {
            s.urgent = true;
        } else if s.staged_since.is_none() {
            s.staged_since = Some(Instant::now());
            drop(s);
            // The thread may be waiting with no deadline.
            self.wake.notify_one();
        }
    }

    /// Wakes the write thread for a cycle that is due.
    pub(super) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Closes the queue: [`Queue::wait_due`] reports a cycle due until
    /// what is left is taken, then `false`.
    pub(super) fn close(&self) {
        self.state.lock().closed = true;
        self.wake.notify_all();
    }

    /// Blocks until a cycle is due; `false` once closed and empty.
    pub(super) fn wait_due(&self) -> bool {
        let mut s = self.state.lock();
        loop {
            if s.urgent || s.closed {
                return !(s.closed && s.ops.is_empty());
            }
            match s.staged_since {
                None => self.wake.wait(&mut s),
                Some(since) => {
                    let due = since + self.stage_wait;
                    if Instant::now() >= due {
                        return true;
                    }
                    self.wake.wait_until(&mut s, due);
                }
            }
        }
    }

    /// Everything queued, for one cycle; `None` if nothing is.
    pub(super) fn take(&self) -> Option<Vec<T>> {
        let mut s = self.state.lock();
        s.urgent = false;
        s.staged_since = None;
        if s.ops.is_empty() {
            return None;
        }
        Some(std::mem::take(&mut s.ops))
    }
}
