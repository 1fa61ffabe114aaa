//! Faults a conductor can switch on in a node process: outbound message
//! loss with a seeded generator, and blocked peers (one side of a
//! partition). A dropped frame is dropped as the network would drop it:
//! `send` succeeds, and the drop is counted here.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use multinode_gossip::{ClusterFrame, GossipTransport, Ready, SendError, TransportStats};
use multinode_wire::NodeId;
use parking_lot::Mutex;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A transport whose outbound frames pass through a fault switch.
pub(crate) struct Faulty<T> {
    inner: T,
    state: Mutex<State>,
    dropped: AtomicU64,
}

struct State {
    loss: f64,
    blocked: BTreeSet<NodeId>,
    rng: ChaCha8Rng,
}

impl<T> Faulty<T> {
    pub(crate) fn new(inner: T, seed: u64) -> Self {
        Self {
            inner,
            state: Mutex::new(State {
                loss: 0.0,
                blocked: BTreeSet::new(),
                rng: ChaCha8Rng::seed_from_u64(seed),
            }),
            dropped: AtomicU64::new(0),
        }
    }

    pub(crate) fn inner(&self) -> &T {
        &self.inner
    }

    /// Drops each outbound frame with probability `p`.
    pub(crate) fn set_loss(&self, p: f64) {
        self.state.lock().loss = p;
    }

    /// Drops every frame to `peers` until [`Self::unblock`].
    pub(crate) fn block(&self, peers: &[NodeId]) {
        self.state.lock().blocked.extend(peers);
    }

    pub(crate) fn unblock(&self) {
        self.state.lock().blocked.clear();
    }

    /// Frames dropped by the faults so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }
}

impl<T: GossipTransport> GossipTransport for Faulty<T> {
    fn local_node(&self) -> NodeId {
        self.inner.local_node()
    }

    fn send(&self, to: NodeId, frame: &ClusterFrame) -> Result<(), SendError> {
        let drop_it = {
            let mut s = self.state.lock();
            let loss = s.loss;
            s.blocked.contains(&to) || (loss > 0.0 && s.rng.random_bool(loss))
        };
        if drop_it {
            self.dropped.fetch_add(1, Relaxed);
            return Ok(());
        }
        self.inner.send(to, frame)
    }

    fn ready(&self, to: NodeId) -> Ready<'_> {
        self.inner.ready(to)
    }

    fn stats(&self) -> TransportStats {
        self.inner.stats()
    }
}
