//! What a flipped byte makes of a frame that a transport never encodes:
//! the frame a receiver would decode from the damaged bytes, or nothing
//! when its decoder refuses them.

use bytes::BytesMut;
use multinode_mesh::Flip;
use multinode_wire::{ClusterFrame, FRAME_HEADER_LEN, MessageCodec};
use tokio_util::codec::{Decoder, Encoder};

/// `frame` with `flip` applied to its encoded payload, as the receiver
/// decodes it: `Some` of the (changed) frame, or `None` when the decoder
/// refuses the bytes, as a TCP receiver would (and close the connection).
pub fn corrupted(frame: &ClusterFrame, flip: Flip) -> Option<ClusterFrame> {
    let mut codec = MessageCodec::<ClusterFrame>::new();
    let mut bytes = BytesMut::new();
    codec.encode(frame, &mut bytes).ok()?;
    flip.apply(&mut bytes[FRAME_HEADER_LEN..]);
    codec.decode(&mut bytes).ok().flatten()
}
