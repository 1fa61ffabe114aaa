//! Replica configuration, checked when the replica is built.

use multinode_wire::NodeId;

use crate::LwwError;

/// How many peers a replica opens an anti-entropy round with each tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fanout {
    /// A fixed number (at least 1; more than the peers means all of them).
    Fixed(usize),
    /// ⌈√n⌉ of n peers.
    Sqrt,
    /// ⌈log₂ n⌉ of n peers (at least 1).
    Log,
    /// Every peer.
    All,
}

impl Fanout {
    /// How many of `n` peers to contact.
    pub fn of(self, n: usize) -> usize {
        let k = match self {
            Fanout::Fixed(k) => k,
            Fanout::Sqrt => (n as f64).sqrt().ceil() as usize,
            Fanout::Log => (n as f64).log2().ceil().max(1.0) as usize,
            Fanout::All => n,
        };
        k.min(n)
    }
}

/// A replica's configuration. Build with [`ReplicaConfig::new`], change the
/// public fields, and [`Replica::new`](crate::Replica::new) checks them.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    /// This replica's node id: the tie-break of its versions.
    pub node: NodeId,
    /// Peers contacted per round (default `Fixed(3)`).
    pub fanout: Fanout,
    /// Bytes a sync message may take, watermarks and entries together
    /// (default 256 KiB); one entry may take at most a quarter of it.
    pub delta_budget: usize,
    /// How long a tombstone outlives its delete (default 10 minutes). A
    /// replica whose knowledge of some origin lags a peer's by more than
    /// this resynchronises; tombstones are collected after 1.5× this.
    pub tombstone_grace_ms: u64,
    /// Remote versions more than this ahead of local wall time are refused
    /// (default 60 s).
    pub max_drift_ms: u64,
    /// Expected interval between rounds, the liveness detector's prior
    /// (default 200 ms).
    pub round_interval_ms: u64,
    /// φ at or above which a peer is suspect (default 5).
    pub phi_suspect: f64,
    /// φ at or above which a peer is dead (default 12).
    pub phi_dead: f64,
    /// Rounds a resynchronisation may take before its own-history guard
    /// is lifted (default 100).
    pub resync_rounds: u64,
    /// Times a round retries its unanswered exchanges, each with a peer
    /// the round has not contacted yet (default 1; 0 never retries). The
    /// node spaces them evenly: an exchange gets `round_interval_ms /
    /// (retries + 1)` to be answered. At 50% message loss one retry keeps
    /// a round's messages about where they are without loss (the lost
    /// answers are the messages the retries send instead).
    pub retries: u32,
    /// Seeds the peer choice and the delta's starting origin.
    pub seed: u64,
}

impl ReplicaConfig {
    /// The defaults for `node`, seeded by its id.
    pub fn new(node: NodeId) -> Self {
        Self {
            node,
            fanout: Fanout::Fixed(3),
            delta_budget: 256 << 10,
            tombstone_grace_ms: 10 * 60 * 1000,
            max_drift_ms: 60_000,
            round_interval_ms: 200,
            phi_suspect: 5.0,
            phi_dead: 12.0,
            resync_rounds: 100,
            retries: 1,
            seed: node.0,
        }
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), LwwError> {
        let bad = |field, reason: &str| {
            Err(LwwError::Config {
                field,
                reason: reason.into(),
            })
        };
        if self.fanout == Fanout::Fixed(0) {
            return bad("fanout", "a fixed fanout of 0 would never gossip");
        }
        if self.delta_budget < 4096 {
            return bad("delta_budget", "must be at least 4096 bytes");
        }
        if self.tombstone_grace_ms == 0 {
            return bad("tombstone_grace_ms", "must be positive");
        }
        if self.round_interval_ms == 0 {
            return bad("round_interval_ms", "must be positive");
        }
        if !(self.phi_suspect > 0.0 && self.phi_dead > self.phi_suspect) {
            return bad("phi_dead", "need 0 < phi_suspect < phi_dead");
        }
        Ok(())
    }

    /// The largest entry (key, value and version, encoded) a write may make.
    pub fn max_entry(&self) -> usize {
        self.delta_budget / 4
    }
}
