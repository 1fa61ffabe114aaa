//! `Pending`: a write that is queued, awaited from async code or waited
//! for from blocking code.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::{Condvar, Mutex};

use crate::{PutOutcome, StoreError};

pub(crate) type Outcome = Result<PutOutcome, StoreError>;

/// Where the write thread leaves one operation's outcome.
#[derive(Default)]
pub(crate) struct Slot {
    state: Mutex<(Option<Outcome>, Option<Waker>)>,
    done: Condvar,
}

impl Slot {
    pub(crate) fn complete(&self, outcome: Outcome) {
        let waker = {
            let mut s = self.state.lock();
            s.0 = Some(outcome);
            s.1.take()
        };
        self.done.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Who runs the cycle an operation is queued for.
pub(crate) trait Runner: Send + Sync {
    /// Runs a cycle for what is queued in the calling thread, if no cycle
    /// runs now; whether it ran.
    fn try_run(&self) -> bool;
    /// Hands the cycle to the write thread.
    fn wake(&self);
}

/// A store operation on its way to disk: `.await` it, or [`Pending::wait`]
/// for it from blocking code. The operation is queued when this is made,
/// in order; its cycle starts once it is awaited, waited for or dropped
/// (or with a cycle another operation starts). Dropping it does not cancel
/// it.
#[must_use = "the outcome says whether the write is durable"]
pub struct Pending<T> {
    state: State<T>,
}

enum State<T> {
    Ready(Option<Result<T, StoreError>>),
    Queued(Arc<Slot>, fn(PutOutcome) -> T, Option<Arc<dyn Runner>>),
}

impl<T> Unpin for Pending<T> {}

impl<T> std::fmt::Debug for Pending<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pending")
    }
}

impl<T> Pending<T> {
    /// An operation that has already finished (for stores that write
    /// synchronously).
    pub fn ready(result: Result<T, StoreError>) -> Self {
        Self {
            state: State::Ready(Some(result)),
        }
    }

    pub(crate) fn queued(
        slot: Arc<Slot>,
        map: fn(PutOutcome) -> T,
        runner: Option<Arc<dyn Runner>>,
    ) -> Self {
        Self {
            state: State::Queued(slot, map, runner),
        }
    }

    /// Blocks the thread until the operation is durable or has failed.
    ///
    /// If no write cycle runs when it is called, the calling thread runs
    /// the cycle for what is queued (its own operation among them) rather
    /// than hand it to the write thread and wait to be woken: one put at a
    /// time then costs no switch between threads.
    pub fn wait(mut self) -> Result<T, StoreError> {
        match std::mem::replace(&mut self.state, State::Ready(None)) {
            State::Ready(r) => r.unwrap_or(Err(StoreError::Polled)),
            State::Queued(slot, map, runner) => {
                if let Some(runner) = runner {
                    // A turn that ran took this operation, which was queued
                    // before it: it is done. One that could not run leaves
                    // it to the write thread.
                    if slot.state.lock().0.is_none() && !runner.try_run() {
                        runner.wake();
                    }
                }
                let mut s = slot.state.lock();
                loop {
                    if let Some(o) = s.0.take() {
                        return o.map(map);
                    }
                    slot.done.wait(&mut s);
                }
            }
        }
    }
}

impl<T> Drop for Pending<T> {
    fn drop(&mut self) {
        // Not awaited, nor waited for: the write thread writes it.
        if let State::Queued(_, _, Some(runner)) = &self.state {
            runner.wake();
        }
    }
}

impl<T> Future for Pending<T> {
    type Output = Result<T, StoreError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let done = match &mut this.state {
            State::Ready(r) => r.take().unwrap_or(Err(StoreError::Polled)),
            State::Queued(slot, map, runner) => {
                // Awaited: the write thread runs the cycle.
                if let Some(runner) = runner.take() {
                    runner.wake();
                }
                let mut s = slot.state.lock();
                match s.0.take() {
                    Some(o) => o.map(*map),
                    None => {
                        s.1 = Some(cx.waker().clone());
                        return Poll::Pending;
                    }
                }
            }
        };
        this.state = State::Ready(None);
        Poll::Ready(done)
    }
}
