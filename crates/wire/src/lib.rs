//! The multinode wire format: every byte that crosses a process boundary.
//!
//! - **Frames** ([`FrameCodec`]): `[u32 big-endian length][payload]`, with a
//!   cap ([`DEFAULT_MAX_FRAME`], 16 MiB) checked on encode and on decode
//!   before anything is allocated. [`MessageCodec`] puts one serde value in
//!   each payload, so `Framed<TcpStream, MessageCodec<ClusterFrame>>` works.
//! - **Handshake** ([`Hello`]): the first frame on every connection; a peer of
//!   another cluster, protocol version or species is refused with a
//!   [`WireError::Handshake`] that names the field.
//! - **Cluster frames** ([`ClusterFrame`]): gossip PDUs beside remote tells,
//!   after a [`Session`] frame that names the sender's incarnation.
//! - **Channel frames** ([`ChannelCodec`]): a point-to-point channel's
//!   messages and its orderly goodbye, so a close is told from a crash.
//! - **Lines** ([`LineCodec`], [`Request`], [`Reply`]): the barrier protocol,
//!   capped at 4 KiB a line, parsed into typed commands; [`Fault`] is the
//!   conductor's part of it (`PARTITION 0,1 2,3`, `CUT 1 2`, `HEAL`, ...).
//! - **LWW anti-entropy** ([`LwwMessage`], [`LwwEntry`]): digests of
//!   per-origin watermarks and the syncs that answer them, as a typed
//!   gossip PDU.
//! - **Versions** ([`Timestamp`], [`HybridClock`]): a hybrid logical clock
//!   whose timestamps are totally ordered and never tie across nodes.
//! - **Blocking helpers** ([`BlockingReader`], [`BlockingWriter`]) run the
//!   same codecs over `std::io`, resuming cleanly after a read timeout.
//!
//! Invariants: nothing here panics on peer input, every length is bounded
//! before allocation, and the payload encoding (bincode 2 today) never shows
//! in a public signature. The byte layout is in `docs/wire-format.md` and is
//! locked by golden tests.
//!
//! This crate does no I/O of its own and owns no sockets or runtime: codecs
//! are sans-IO and plug into tokio-util's `Framed` or the blocking helpers.
//!
//! A connection: handshake, then a stream of cluster frames.
//!
//! ```no_run
//! use futures_util::{SinkExt, StreamExt};
//! use multinode_wire::{ClusterFrame, ClusterId, Hello, MessageCodec, NodeId, WireError};
//! use tokio_util::codec::Framed;
//!
//! async fn serve(stream: tokio::net::TcpStream) -> Result<(), WireError> {
//!     let ours = Hello::new(ClusterId(7), NodeId(1));
//!     let mut conn = Framed::new(stream, MessageCodec::<Hello>::new());
//!     conn.send(ours).await?;
//!     let eof = || WireError::Io(std::io::ErrorKind::UnexpectedEof.into());
//!     let theirs = conn.next().await.ok_or_else(eof)??;
//!     ours.check(&theirs, None)?; // another cluster or version: an error naming the field
//!     let mut frames = conn.map_codec(|_| MessageCodec::<ClusterFrame>::new());
//!     while let Some(frame) = frames.next().await {
//!         println!("{:?}", frame?);
//!     }
//!     Ok(())
//! }
//! # fn main() {}
//! ```

mod auth;
mod blocking;
pub mod bounded;
mod channel;
mod clock;
mod codec;
mod error;
mod fault;
mod frame;
mod hello;
mod line;
mod message;
mod stamps;

pub use auth::{CHALLENGE_LEN, Exchange, MAX_SECRET_LEN, MIN_SECRET_LEN, Proof, Secret};
pub use blocking::{BlockingReader, BlockingWriter};
pub use channel::{ChannelCodec, ChannelFrame};
pub use clock::{HybridClock, Timestamp};
pub use codec::{Message, MessageCodec};
pub use error::WireError;
pub use fault::Fault;
pub use frame::{DEFAULT_MAX_FRAME, FRAME_HEADER_LEN, FrameCodec};
pub use hello::{ClusterId, HandshakeField, Hello, MAGIC, NodeId, PROTOCOL_VERSION};
pub use line::{
    DEFAULT_MAX_LINE, Label, LineCodec, MAX_LABEL_LEN, MAX_VALUE_LEN, Reply, Request, Value,
};
pub use message::{Beyond, ClusterFrame, GossipPdu, LwwEntry, LwwMessage, RemoteTell, Session};
