//! A sink that records what a transport hands it, for assertions: the
//! tests' helper, not part of the crate's API.

use std::sync::Arc;
use std::time::Duration;

use multinode_gossip::RemoteMessageSink;
use multinode_wire::{GossipPdu, NodeId, RemoteTell};
use parking_lot::Mutex;
use tokio::sync::Notify;

/// One thing a [`RecordingSink`] was handed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Inbound {
    /// A gossip PDU.
    Gossip {
        /// The sender.
        from: NodeId,
        /// The PDU.
        pdu: GossipPdu,
    },
    /// A remote tell.
    Tell {
        /// The sender.
        from: NodeId,
        /// The tell.
        tell: RemoteTell,
    },
    /// A peer restarted.
    Restarted {
        /// The peer.
        peer: NodeId,
        /// Its new incarnation.
        incarnation: u64,
    },
}

impl Inbound {
    /// The node this came from.
    pub(crate) fn from(&self) -> NodeId {
        match self {
            Inbound::Gossip { from, .. } | Inbound::Tell { from, .. } => *from,
            Inbound::Restarted { peer, .. } => *peer,
        }
    }
}

/// A sink that records everything in arrival order, for assertions.
#[derive(Debug, Default)]
pub(crate) struct RecordingSink {
    events: Mutex<Vec<Inbound>>,
    changed: Notify,
}

impl RecordingSink {
    /// A new, empty sink, shared.
    pub(crate) fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Everything recorded so far.
    pub(crate) fn events(&self) -> Vec<Inbound> {
        self.events.lock().clone()
    }

    /// How many things were recorded.
    pub(crate) fn len(&self) -> usize {
        self.events.lock().len()
    }

    /// Whether nothing was recorded.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until `done` holds for the recorded events, or `timeout`
    /// passes; returns whether it held.
    pub(crate) async fn wait_for(
        &self,
        timeout: Duration,
        done: impl Fn(&[Inbound]) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done(&self.events.lock()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return done(&self.events.lock());
            }
        }
    }

    fn push(&self, event: Inbound) {
        self.events.lock().push(event);
        self.changed.notify_waiters();
    }
}

impl RemoteMessageSink for RecordingSink {
    fn on_gossip(&self, from: NodeId, pdu: GossipPdu) {
        self.push(Inbound::Gossip { from, pdu });
    }

    fn on_tell(&self, from: NodeId, tell: RemoteTell) {
        self.push(Inbound::Tell { from, tell });
    }

    fn on_peer_restarted(&self, peer: NodeId, incarnation: u64) {
        self.push(Inbound::Restarted { peer, incarnation });
    }
}
