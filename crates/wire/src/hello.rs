use std::fmt;

use serde::{Deserialize, Serialize};

use crate::WireError;

/// The first four payload bytes of every `Hello`: ASCII `MNOD`.
pub const MAGIC: [u8; 4] = *b"MNOD";

/// The protocol version this build speaks. Bumped on any incompatible change
/// to a frame that follows the handshake.
pub const PROTOCOL_VERSION: u16 = 4;

/// A node's identity within a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::str::FromStr for NodeId {
    type Err = WireError;

    fn from_str(s: &str) -> Result<Self, WireError> {
        // Only plain decimal digits: no sign, no spaces, no leading `+`.
        if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(WireError::malformed(format!("invalid node id {s:?}")));
        }
        s.parse()
            .map(NodeId)
            .map_err(|_| WireError::malformed(format!("node id {s:?} out of range")))
    }
}

/// Which cluster a process belongs to. Two clusters on one machine never talk:
/// their handshakes fail on this field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClusterId(pub u64);

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// The first frame on every TCP connection between kit processes.
///
/// Its layout never changes across protocol versions: the magic comes first,
/// so a stranger's bytes fail on it instead of being misparsed, and the
/// version second, so an old peer can say which version it met.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Always [`MAGIC`].
    pub magic: [u8; 4],
    /// The sender's [`PROTOCOL_VERSION`].
    pub protocol_version: u16,
    /// The sender's cluster.
    pub cluster_id: ClusterId,
    /// The sender's node id.
    pub node_id: NodeId,
}

/// The `Hello` field on which a handshake failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeField {
    /// The peer is not a multinode process.
    Magic,
    /// The peer speaks another protocol version.
    ProtocolVersion,
    /// The peer belongs to another cluster.
    ClusterId,
    /// The peer is not the node we dialled, or claims our own id.
    NodeId,
}

impl fmt::Display for HandshakeField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HandshakeField::Magic => "magic",
            HandshakeField::ProtocolVersion => "protocol version",
            HandshakeField::ClusterId => "cluster id",
            HandshakeField::NodeId => "node id",
        })
    }
}

impl Hello {
    /// This build's `Hello` for `node_id` in `cluster_id`.
    pub fn new(cluster_id: ClusterId, node_id: NodeId) -> Self {
        Self {
            magic: MAGIC,
            protocol_version: PROTOCOL_VERSION,
            cluster_id,
            node_id,
        }
    }

    /// Checks a peer's `Hello` against ours: same magic, protocol version and
    /// cluster, a node id other than ours, and, when we dialled a known node,
    /// the id we expected. Fields are checked in layout order, so the error
    /// names the first difference.
    pub fn check(&self, received: &Hello, expected_peer: Option<NodeId>) -> Result<(), WireError> {
        let mismatch = |field, expected: String, got: String| {
            Err(WireError::Handshake {
                field,
                expected,
                got,
            })
        };
        if received.magic != self.magic {
            return mismatch(
                HandshakeField::Magic,
                format!("{:02x?}", self.magic),
                format!("{:02x?}", received.magic),
            );
        }
        if received.protocol_version != self.protocol_version {
            return mismatch(
                HandshakeField::ProtocolVersion,
                self.protocol_version.to_string(),
                received.protocol_version.to_string(),
            );
        }
        if received.cluster_id != self.cluster_id {
            return mismatch(
                HandshakeField::ClusterId,
                self.cluster_id.to_string(),
                received.cluster_id.to_string(),
            );
        }
        if received.node_id == self.node_id {
            return mismatch(
                HandshakeField::NodeId,
                format!("a node other than {}", self.node_id),
                received.node_id.to_string(),
            );
        }
        match expected_peer {
            Some(want) if want != received.node_id => mismatch(
                HandshakeField::NodeId,
                want.to_string(),
                received.node_id.to_string(),
            ),
            _ => Ok(()),
        }
    }
}
