//! The cluster connection handshake, the same on both sides: `Hello` and
//! `Session` both ways, then (with a cluster secret) a `Proof` both ways.
//! See `docs/wire-format.md` for the frames and the threat model.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use multinode_wire::{
    CHALLENGE_LEN, ClusterFrame, Exchange, Hello, Message, MessageCodec, NodeId, Proof, Secret,
    Session, WireError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Decoder, Encoder};

/// The read buffer a connection has until its handshake is done: enough for
/// the handshake frames, so a flood of connections that never complete one
/// costs little memory.
const HANDSHAKE_BUF: usize = 512;

/// The room a handshake read is offered at least.
const READ_MIN: usize = 128;

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

/// The stream after a handshake, and what was read past the handshake's
/// frames (frames the peer sent right after it).
pub(crate) struct Conn {
    pub(crate) io: TcpStream,
    /// Bytes read and not yet decoded: a small buffer, not a streaming
    /// one, so a connection that has just shaken hands costs little.
    pub(crate) read_buf: BytesMut,
    /// The cluster frame codec, with the frame cap in force.
    pub(crate) codec: MessageCodec<ClusterFrame>,
}

/// Reads one `T` of at most `max` bytes from `io`, buffering in `buf`.
async fn read_one<T: Message>(
    io: &mut TcpStream,
    buf: &mut BytesMut,
    max: usize,
) -> Result<T, DialError> {
    let mut codec = MessageCodec::<T>::with_max(max);
    // Bounded: every read adds at least a byte, and a frame past `max`
    // fails to decode, so a frame is complete or refused within
    // `max` + its header.
    loop {
        if let Some(frame) = codec.decode(buf)? {
            return Ok(frame);
        }
        if buf.capacity() - buf.len() < READ_MIN {
            buf.reserve(HANDSHAKE_BUF);
        }
        if io.read_buf(buf).await? == 0 {
            return Err(DialError::Closed);
        }
    }
}

/// Encodes `frame` (of at most `max` bytes) at the end of `out`.
fn put<T: Message>(frame: &T, max: usize, out: &mut BytesMut) -> Result<(), DialError> {
    Ok(MessageCodec::<T>::with_max(max).encode(frame, out)?)
}

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
    mut io: TcpStream,
    expected: Option<NodeId>,
) -> Result<(Shaken, Conn), DialError> {
    let _ = io.set_nodelay(true);
    let ours = local.secret.map(|_| challenge()).transpose()?;
    let mut out = BytesMut::with_capacity(HANDSHAKE_BUF);
    put(&local.hello, 64, &mut out)?;
    let session = Session {
        incarnation: local.incarnation,
        wall_ms: wall_ms(),
        challenge: ours,
    };
    put(&session, 128, &mut out)?;
    io.write_all(&out).await?;
    let mut buf = BytesMut::with_capacity(HANDSHAKE_BUF);
    let hello: Hello = read_one(&mut io, &mut buf, 64).await?;
    local.hello.check(&hello, expected)?;
    let session: Session = read_one(&mut io, &mut buf, 128).await?;
    // Peer input: any u64. The difference saturates instead of overflowing.
    let diff = i128::from(session.wall_ms) - i128::from(wall_ms());
    let clock_offset_ms = i64::try_from(diff).unwrap_or(if diff < 0 { i64::MIN } else { i64::MAX });
    let peer = hello.node_id;
    match (local.secret.zip(ours), session.challenge) {
        (None, None) => {}
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
            let mine = Exchange {
                cluster,
                prover: me,
                verifier: peer,
                verifier_challenge: theirs,
                prover_challenge: ours,
            };
            out.clear();
            put(&mine.prove(secret), 64, &mut out)?;
            io.write_all(&out).await?;
            let proof: Proof = read_one(&mut io, &mut buf, 64).await?;
            let their = Exchange {
                cluster,
                prover: peer,
                verifier: me,
                verifier_challenge: ours,
                prover_challenge: theirs,
            };
            their.verify(secret, &proof)?;
        }
    }
    let conn = Conn {
        io,
        read_buf: buf,
        codec: MessageCodec::with_max(local.max_frame),
    };
    let shaken = Shaken {
        hello,
        session,
        clock_offset_ms,
    };
    Ok((shaken, conn))
}
