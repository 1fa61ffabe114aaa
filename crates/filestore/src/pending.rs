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

/// A store operation on its way to disk: `.await` it, or [`Pending::wait`]
/// for it from blocking code. The operation is queued when this is made;
/// dropping it does not cancel it.
#[must_use = "the outcome says whether the write is durable"]
pub struct Pending<T> {
    state: State<T>,
}

enum State<T> {
    Ready(Option<Result<T, StoreError>>),
    Queued(Arc<Slot>, fn(PutOutcome) -> T),
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

    pub(crate) fn queued(slot: Arc<Slot>, map: fn(PutOutcome) -> T) -> Self {
        Self {
            state: State::Queued(slot, map),
        }
    }

    /// Blocks the thread until the operation is durable or has failed.
    pub fn wait(self) -> Result<T, StoreError> {
        match self.state {
            State::Ready(r) => r.unwrap_or(Err(StoreError::Polled)),
            State::Queued(slot, map) => {
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

impl<T> Future for Pending<T> {
    type Output = Result<T, StoreError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let done = match &mut this.state {
            State::Ready(r) => r.take().unwrap_or(Err(StoreError::Polled)),
            State::Queued(slot, map) => {
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
