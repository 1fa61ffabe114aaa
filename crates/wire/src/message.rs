use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// Every frame that follows the handshake on a cluster connection: gossip
/// protocol units beside application messages.
///
/// New variants are only ever appended, so an older peer fails to decode a
/// newer variant with a typed error instead of misreading it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ClusterFrame {
    /// A gossip protocol unit.
    Gossip(GossipPdu),
    /// An application message for an actor or handler on the receiving node.
    Tell(RemoteTell),
}

/// A gossip protocol unit.
///
/// The gossip and LWW layers own the content of their PDUs and add typed
/// variants here as they are specified; until then `Opaque` carries bytes
/// tagged with a schema number so a receiver can tell formats apart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum GossipPdu {
    /// Bytes in a format identified by `schema`, owned by the sender's layer.
    Opaque {
        /// Which format `body` is in.
        schema: u16,
        /// The encoded unit.
        #[serde(deserialize_with = "crate::bounded::bytes")]
        body: Bytes,
    },
    /// A last-write-wins replica's anti-entropy message.
    Lww(LwwMessage),
}

/// One key's latest write as last-write-wins replicas exchange it: a value,
/// or a tombstone (`value: None`) that records a delete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LwwEntry {
    /// The key.
    #[serde(deserialize_with = "crate::bounded::string")]
    pub key: String,
    /// The value, or `None` for a delete.
    #[serde(deserialize_with = "crate::bounded::opt_bytes")]
    pub value: Option<Bytes>,
    /// The write's version; its `node` is the write's origin.
    pub version: Timestamp,
}

/// The anti-entropy exchange of last-write-wins replicas: a digest, answered
/// by a sync that carries the entries the digest's sender lacks.
///
/// A *watermark* `w` for origin `o` says: the sender holds every write `o`
/// made with a version up to `w`, or a write that superseded it. Watermarks
/// travel as timestamps whose `node` is the origin, each list packed as
/// differences from the timestamp before (about 4 bytes a watermark in node
/// order; see `docs/wire-format.md`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LwwMessage {
    /// Opens a round: the sender's watermarks.
    Digest {
        /// The sender's watermark era: raised each time it drops its
        /// watermarks to resynchronise; a sync answering this digest echoes it.
        era: u32,
        /// One per origin the sender knows.
        #[serde(with = "crate::stamps")]
        watermarks: Vec<Timestamp>,
        /// The sender's wall clock as it sent this, in ms since the Unix
        /// epoch: how the receiver keeps track of each peer's clock offset.
        sent_ms: u64,
        /// What the sender holds past its watermarks (see [`Beyond`]).
        #[serde(deserialize_with = "crate::bounded::seq")]
        beyond: Vec<Beyond>,
    },
    /// Entries the receiver lacks by its last digest, with the sender's
    /// watermarks; the receiver's watermark for an origin moves up to the
    /// sender's, or to the one in `partial` where the entries were cut short
    /// by the byte budget.
    Sync {
        /// Whether the receiver should answer with a sync of its own.
        reply: bool,
        /// The sender's watermark era.
        era: u32,
        /// The receiver's era this sync was computed against: a receiver
        /// whose era moved on since takes the entries but not the
        /// watermarks.
        answers: u32,
        /// The sender's watermarks, one per origin it knows.
        #[serde(with = "crate::stamps")]
        watermarks: Vec<Timestamp>,
        /// The entries, each origin's in ascending version order.
        #[serde(deserialize_with = "crate::bounded::seq")]
        entries: Vec<LwwEntry>,
        /// Origins whose entries stop short of the sender's watermark: how
        /// far they reach.
        #[serde(with = "crate::stamps")]
        partial: Vec<Timestamp>,
        /// The sender's wall clock as it sent this (as in `Digest`).
        sent_ms: u64,
        /// What the sender holds past its watermarks (as in `Digest`).
        #[serde(deserialize_with = "crate::bounded::seq")]
        beyond: Vec<Beyond>,
    },
}

/// What a replica holds of one origin past its watermark for it (writes
/// pushed to it, or carried along, ahead of a complete range), as an
/// order-independent fingerprint of their versions. A peer that holds the
/// same versions there sends none of them, and the watermark it sends
/// still stands: the two hold the same. A list may leave origins out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beyond {
    /// The origin.
    pub origin: crate::NodeId,
    /// The wrapping sum of [`Timestamp::fingerprint`] over the versions.
    pub fingerprint: u64,
}

/// An application message addressed to a path on another node, as the
/// reference transport carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteTell {
    /// Where the message goes on the receiving node.
    #[serde(deserialize_with = "crate::bounded::string")]
    pub target_path: String,
    /// Names the payload's type, so the receiver picks the decoder.
    #[serde(deserialize_with = "crate::bounded::string")]
    pub manifest: String,
    /// The encoded message.
    #[serde(deserialize_with = "crate::bounded::bytes")]
    pub payload: Bytes,
    /// Where replies go, if anywhere.
    #[serde(deserialize_with = "crate::bounded::opt_string")]
    pub sender_path: Option<String>,
}

/// The frame each side of a cluster connection sends right after its
/// [`Hello`](crate::Hello): who this process is in time.
///
/// `incarnation` is chosen when the process starts and differs across its
/// restarts, so a peer that sees a new incarnation for a node id knows the
/// node restarted (and lost whatever it held only in memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The sender's incarnation.
    pub incarnation: u64,
    /// The sender's wall clock when it sent this, in milliseconds since the
    /// Unix epoch: the receiver learns how far apart the two clocks are.
    pub wall_ms: u64,
    /// With a cluster secret in force, a fresh random challenge the peer
    /// must answer with a [`Proof`](crate::Proof); `None` without one.
    pub challenge: Option<[u8; crate::CHALLENGE_LEN]>,
}
