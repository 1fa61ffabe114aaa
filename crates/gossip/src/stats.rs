//! Counters: atomics inside the transports, plain snapshot structs outside.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use multinode_wire::NodeId;
use parking_lot::Mutex;

/// Frames lost or refused for one peer, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drops {
    /// Refused by `send`: the peer's queue was full.
    pub queue_full: u64,
    /// Refused by `send`: over the frame cap.
    pub too_large: u64,
    /// TCP: being written when the connection failed or timed out. They
    /// may or may not have reached the peer.
    pub write_failed: u64,
    /// TCP: still queued when the transport shut down or the peer was
    /// removed. (In-process, frames a crashed receiver never took are the
    /// network's `lost`, per link.)
    pub shutdown: u64,
}

impl Drops {
    /// All drops, whatever the reason.
    pub fn total(&self) -> u64 {
        self.queue_full + self.too_large + self.write_failed + self.shutdown
    }
}

/// What one transport did with one peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Frames sent to the peer: written to its socket (TCP) or handed to
    /// the network (in-process, whose faults the network counts).
    pub frames_sent: u64,
    /// Bytes of those frames, each with its 4-byte header.
    pub bytes_sent: u64,
    /// Frames received from the peer and handed to the sink.
    pub frames_received: u64,
    /// Bytes of those frames, each with its 4-byte header.
    pub bytes_received: u64,
    /// Frames refused or lost, by reason.
    pub drops: Drops,
    /// Frames queued for the peer right now (TCP).
    pub queued: u64,
    /// Outbound connections established (TCP).
    pub connects: u64,
    /// Connections established after the first, other than after a quiet
    /// close: reconnects after a failure (TCP).
    pub reconnects: u64,
    /// Outbound connections closed after the linger time with nothing to
    /// write (TCP).
    pub quiet_closes: u64,
    /// Outbound connection attempts that failed: refused, timed out, or
    /// broken during the handshake (TCP).
    pub connect_failures: u64,
    /// Handshakes with this peer refused for another cluster id, protocol
    /// version or node id (TCP).
    pub refused: u64,
    /// Inbound connections from the peer closed for an invalid frame: over
    /// the cap, undecodable, or cut short (TCP).
    pub bad_frames: u64,
    /// Times the peer was seen with a new incarnation.
    pub restarts: u64,
    /// The peer's incarnation as last seen, if it was seen.
    pub incarnation: Option<u64>,
    /// How far the peer's wall clock was ahead of ours (negative: behind)
    /// at its last handshake, in ms, to within the one-way delay (TCP).
    pub clock_offset_ms: Option<i64>,
}

/// A snapshot of a transport's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportStats {
    /// The transport's node.
    pub node: NodeId,
    /// Its incarnation.
    pub incarnation: u64,
    /// Per peer, every peer it sent to or heard from.
    pub peers: BTreeMap<NodeId, PeerStats>,
    /// Sends refused because the peer was unknown.
    pub unknown_peer: u64,
    /// Inbound connections refused at the handshake (another cluster or
    /// protocol version, or a node claiming our id) (TCP).
    pub refused_handshakes: u64,
    /// Inbound connections closed before a valid handshake: not a
    /// multinode peer, or silent past the handshake timeout (TCP).
    pub bad_connections: u64,
    /// Inbound connections closed at once because the inbound limit or the
    /// limit on tracked peers was reached (TCP).
    pub over_limit: u64,
    /// Handshakes refused for a missing or wrong proof of the cluster
    /// secret, either way (TCP).
    pub auth_failures: u64,
    /// Inbound connections closed after `idle_timeout` without a frame, or
    /// replaced by a newer connection from the same node (TCP).
    pub idle_closed: u64,
}

impl TransportStats {
    /// The stats for `peer` (all zero if it never appeared).
    pub fn peer(&self, peer: NodeId) -> PeerStats {
        self.peers.get(&peer).copied().unwrap_or_default()
    }
}

/// Live counters for one peer.
#[derive(Debug, Default)]
pub(crate) struct PeerCounters {
    pub(crate) frames_sent: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) frames_received: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) queue_full: AtomicU64,
    pub(crate) too_large: AtomicU64,
    pub(crate) write_failed: AtomicU64,
    pub(crate) shutdown: AtomicU64,
    pub(crate) connects: AtomicU64,
    pub(crate) quiet_closes: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) bad_frames: AtomicU64,
    restarts: AtomicU64,
    incarnation: Mutex<Option<u64>>,
    clock_offset_ms: Mutex<Option<i64>>,
}

/// Adds `n` to a counter.
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Relaxed);
}

impl PeerCounters {
    /// Records the peer's incarnation; true when it differs from one seen
    /// before (the peer restarted), which is also counted.
    pub(crate) fn observe(&self, incarnation: u64) -> bool {
        let mut seen = self.incarnation.lock();
        let restarted = seen.is_some_and(|old| old != incarnation);
        *seen = Some(incarnation);
        if restarted {
            add(&self.restarts, 1);
        }
        restarted
    }

    /// Records how far the peer's clock is ahead of ours (ms).
    pub(crate) fn observe_clock(&self, offset_ms: i64) {
        *self.clock_offset_ms.lock() = Some(offset_ms);
    }

    /// Whether anything was ever counted for this peer.
    pub(crate) fn is_idle(&self) -> bool {
        let s = self.snapshot();
        s == PeerStats::default()
    }

    pub(crate) fn snapshot(&self) -> PeerStats {
        let get = |c: &AtomicU64| c.load(Relaxed);
        let connects = get(&self.connects);
        let quiet_closes = get(&self.quiet_closes);
        PeerStats {
            frames_sent: get(&self.frames_sent),
            bytes_sent: get(&self.bytes_sent),
            frames_received: get(&self.frames_received),
            bytes_received: get(&self.bytes_received),
            drops: Drops {
                queue_full: get(&self.queue_full),
                too_large: get(&self.too_large),
                write_failed: get(&self.write_failed),
                shutdown: get(&self.shutdown),
            },
            queued: 0,
            connects,
            reconnects: connects.saturating_sub(1).saturating_sub(quiet_closes),
            quiet_closes,
            connect_failures: get(&self.connect_failures),
            refused: get(&self.refused),
            bad_frames: get(&self.bad_frames),
            restarts: get(&self.restarts),
            incarnation: *self.incarnation.lock(),
            clock_offset_ms: *self.clock_offset_ms.lock(),
        }
    }
}
