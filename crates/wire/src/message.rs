use bytes::Bytes;
use serde::{Deserialize, Serialize};

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
}
