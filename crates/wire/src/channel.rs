use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::{FRAME_HEADER_LEN, FrameCodec, WireError};

/// Payload tag of a [`ChannelFrame::Data`] frame.
const TAG_DATA: u8 = 0;
/// Payload tag of a [`ChannelFrame::Bye`] frame.
const TAG_BYE: u8 = 1;

/// One frame of a point-to-point channel (the mesh's TCP channel), after the
/// handshake: an application message, or the orderly goodbye that tells a
/// close from a crash.
///
/// On the wire it is a frame whose payload starts with a one-byte tag:
/// `00` then the message bytes, or `01` alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelFrame<B> {
    /// An application message.
    Data(B),
    /// The sender closed its end on purpose; nothing follows.
    Bye,
}

/// Encodes and decodes [`ChannelFrame`]s on top of [`FrameCodec`].
///
/// The message cap is the frame cap less the tag byte. An unknown tag, or a
/// `Bye` with a body, is a [`WireError::Decode`]: the stream is not one of
/// ours and must be dropped.
#[derive(Clone, Debug, Default)]
pub struct ChannelCodec {
    frames: FrameCodec,
}

impl ChannelCodec {
    /// A codec whose messages may be at most `max` bytes.
    pub fn with_max(max: usize) -> Self {
        Self {
            frames: FrameCodec::with_max(max.saturating_add(1)),
        }
    }

    /// The largest message this codec carries.
    pub fn max_message(&self) -> usize {
        self.frames.max_frame() - 1
    }
}

impl Decoder for ChannelCodec {
    type Item = ChannelFrame<BytesMut>;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, WireError> {
        let Some(mut payload) = self.frames.decode(src)? else {
            return Ok(None);
        };
        if payload.is_empty() {
            return Err(WireError::Decode {
                reason: "channel frame without a tag".into(),
            });
        }
        match payload.get_u8() {
            TAG_DATA => Ok(Some(ChannelFrame::Data(payload))),
            TAG_BYE if payload.is_empty() => Ok(Some(ChannelFrame::Bye)),
            TAG_BYE => Err(WireError::Decode {
                reason: format!("channel bye frame carries {} bytes", payload.len()),
            }),
            tag => Err(WireError::Decode {
                reason: format!("unknown channel frame tag {tag:#04x}"),
            }),
        }
    }
}

impl Encoder<ChannelFrame<&[u8]>> for ChannelCodec {
    type Error = WireError;

    fn encode(&mut self, frame: ChannelFrame<&[u8]>, dst: &mut BytesMut) -> Result<(), WireError> {
        let (tag, body) = match frame {
            ChannelFrame::Data(body) => (TAG_DATA, body),
            ChannelFrame::Bye => (TAG_BYE, &[][..]),
        };
        let len = body.len() + 1;
        self.frames.check_len(len)?;
        dst.reserve(FRAME_HEADER_LEN + len);
        dst.put_u32(len as u32);
        dst.put_u8(tag);
        dst.put_slice(body);
        Ok(())
    }
}
