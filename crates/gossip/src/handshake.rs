//! The cluster connection handshake, the same on both sides: `Hello` and
//! `Session` both ways, then (with a cluster secret) a `Proof` both ways.
//! See `docs/wire-format.md` for the frames and the threat model.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use multinode_wire::{
    CHALLENGE_LEN, ClusterFrame, Exchange, Hello, MessageCodec, NodeId, Proof, Secret, Session,
    WireError,
};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// The read buffer a connection has until its handshake is done: enough for
/// the handshake frames, so a flood of connections that never complete one
/// costs little memory.
const HANDSHAKE_BUF: usize = 512;

/// Why a connection attempt or a handshake failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DialError {
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("handshake timed out after {0:?}")]
    HandshakeTimeout(Duration),
    #[error("connection closed during the handshake")]
    Closed,
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl DialError {
    /// A peer that is not one of ours (another cluster, version or id).
    pub(crate) fn is_refusal(&self) -> bool {
        matches!(self, DialError::Wire(WireError::Handshake { .. }))
    }

    /// A peer that did not prove the cluster secret, or demanded one.
    pub(crate) fn is_auth(&self) -> bool {
        matches!(self, DialError::Wire(WireError::Auth { .. }))
    }
}

/// What this side brings to a handshake.
pub(crate) struct Local<'a> {
    pub(crate) hello: Hello,
    pub(crate) incarnation: u64,
    pub(crate) secret: Option<&'a Secret>,
    pub(crate) max_frame: usize,
}

/// A finished handshake: who the peer is and how far its clock is from ours.
pub(crate) struct Shaken {
    pub(crate) hello: Hello,
    pub(crate) session: Session,
    /// The peer's wall clock minus ours, in ms.
    pub(crate) clock_offset_ms: i64,
}

/// The stream after a handshake, which may already hold frames the peer
/// sent after it.
pub(crate) type Conn = Framed<TcpStream, MessageCodec<ClusterFrame>>;

/// Wall-clock milliseconds since the Unix epoch.
pub(crate) fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn challenge() -> Result<[u8; CHALLENGE_LEN], DialError> {
    let mut c = [0u8; CHALLENGE_LEN];
    getrandom::fill(&mut c).map_err(|e| DialError::Io(std::io::Error::other(e.to_string())))?;
    Ok(c)
}

fn auth(reason: String) -> DialError {
    DialError::Wire(WireError::Auth { reason })
}

/// Both sides send at once and then read the peer's frames, so neither
/// waits on the other to speak first. `expected` is the node dialled.
pub(crate) async fn handshake(
    local: &Local<'_>,
    stream: TcpStream,
    expected: Option<NodeId>,
) -> Result<(Shaken, Conn), DialError> {
    let _ = stream.set_nodelay(true);
    let ours = local.secret.map(|_| challenge()).transpose()?;
    let mut conn =
        Framed::with_capacity(stream, MessageCodec::<Hello>::with_max(64), HANDSHAKE_BUF);
    conn.feed(local.hello).await?;
    let mut conn = conn.map_codec(|_| MessageCodec::<Session>::with_max(128));
    conn.send(Session {
        incarnation: local.incarnation,
        wall_ms: wall_ms(),
        challenge: ours,
    })
    .await?;
    let mut conn = conn.map_codec(|_| MessageCodec::<Hello>::with_max(64));
    let hello = conn.next().await.ok_or(DialError::Closed)??;
    local.hello.check(&hello, expected)?;
    let mut conn = conn.map_codec(|_| MessageCodec::<Session>::with_max(128));
    let session = conn.next().await.ok_or(DialError::Closed)??;
    // Peer input: any u64. The difference saturates instead of overflowing.
    let diff = i128::from(session.wall_ms) - i128::from(wall_ms());
    let clock_offset_ms = i64::try_from(diff).unwrap_or(if diff < 0 { i64::MIN } else { i64::MAX });
    let peer = hello.node_id;
    let max = local.max_frame;
    let conn = match (local.secret.zip(ours), session.challenge) {
        (None, None) => conn.map_codec(|_| MessageCodec::with_max(max)),
        (None, Some(_)) => {
            return Err(auth(format!(
                "node {peer} requires a cluster secret and this node has none"
            )));
        }
        (Some(_), None) => {
            return Err(auth(format!(
                "node {peer} proves no cluster secret (it has none)"
            )));
        }
        (Some((secret, ours)), Some(theirs)) => {
            let me = local.hello.node_id;
            let cluster = local.hello.cluster_id;
            let mut conn = conn.map_codec(|_| MessageCodec::<Proof>::with_max(64));
            let mine = Exchange {
                cluster,
                prover: me,
                verifier: peer,
                verifier_challenge: theirs,
                prover_challenge: ours,
            };
            conn.send(mine.prove(secret)).await?;
            let proof = conn.next().await.ok_or(DialError::Closed)??;
            let their = Exchange {
                cluster,
                prover: peer,
                verifier: me,
                verifier_challenge: ours,
                prover_challenge: theirs,
            };
            their.verify(secret, &proof)?;
            conn.map_codec(|_| MessageCodec::with_max(max))
        }
    };
    let shaken = Shaken {
        hello,
        session,
        clock_offset_ms,
    };
    Ok((shaken, conn))
}
