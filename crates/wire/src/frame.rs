use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use crate::WireError;

/// The default cap on a frame's payload: 16 MiB.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// Bytes in a frame header: a big-endian `u32` payload length.
pub const FRAME_HEADER_LEN: usize = 4;

/// The frame layer: `[u32 big-endian payload length][payload]`.
///
/// Built on tokio-util's [`LengthDelimitedCodec`], with the cap checked on
/// encode and on decode before any payload space is reserved, and reported as
/// a typed [`WireError::FrameTooLarge`]. Sans-IO: it only moves bytes between
/// buffers, so the async `Framed` adapters and the blocking helpers share it.
///
/// An incomplete frame decodes to `Ok(None)` and stays in the buffer. A frame
/// over the cap is an error for the whole stream: the caller must drop the
/// connection, since the oversized payload is not skipped.
#[derive(Debug)]
pub struct FrameCodec {
    inner: LengthDelimitedCodec,
    max: usize,
}

impl FrameCodec {
    /// A codec with the [`DEFAULT_MAX_FRAME`] cap.
    pub fn new() -> Self {
        Self::with_max(DEFAULT_MAX_FRAME)
    }

    /// A codec whose payloads may be at most `max` bytes (at most `u32::MAX`).
    pub fn with_max(max: usize) -> Self {
        let max = max.min(u32::MAX as usize);
        // The header stays in the buffer until the whole frame is in
        // (`num_skip(0)`, and the length covers it via the adjustment), so
        // the front of the buffer is always the current frame's header.
        let inner = LengthDelimitedCodec::builder()
            .big_endian()
            .length_field_type::<u32>()
            .length_adjustment(FRAME_HEADER_LEN as isize)
            .num_skip(0)
            .max_frame_length(max.saturating_add(FRAME_HEADER_LEN))
            .new_codec();
        Self { inner, max }
    }

    /// The payload cap in force.
    pub fn max_frame(&self) -> usize {
        self.max
    }

    /// Checks a payload length against the cap.
    pub(crate) fn check_len(&self, len: usize) -> Result<(), WireError> {
        if len > self.max {
            return Err(WireError::FrameTooLarge {
                len: len as u64,
                max: self.max,
            });
        }
        Ok(())
    }

    /// The payload length of the complete frame at the front of `src`, if
    /// one is there; checks the cap as soon as the header is in, and reserves
    /// room for the rest of an incomplete frame. For decoders that read the
    /// payload in place and then advance past it.
    pub(crate) fn complete_frame(&self, src: &mut BytesMut) -> Result<Option<usize>, WireError> {
        if src.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let len = (&src[..FRAME_HEADER_LEN]).get_u32() as usize;
        self.check_len(len)?;
        let total = FRAME_HEADER_LEN + len;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        Ok(Some(len))
    }

    /// Reserves a header in `dst` and returns its position, for encoders
    /// that write the payload in place and then call [`Self::finish_in_place`].
    pub(crate) fn begin_in_place(dst: &mut BytesMut) -> usize {
        let at = dst.len();
        dst.put_u32(0);
        at
    }

    /// Patches the header reserved at `at` with the payload length written
    /// since, or removes the partial frame and fails if it is over the cap.
    pub(crate) fn finish_in_place(&self, dst: &mut BytesMut, at: usize) -> Result<(), WireError> {
        let len = dst.len() - at - FRAME_HEADER_LEN;
        if let Err(e) = self.check_len(len) {
            dst.truncate(at);
            return Err(e);
        }
        dst[at..at + FRAME_HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(())
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl Clone for FrameCodec {
    fn clone(&self) -> Self {
        Self::with_max(self.max)
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, WireError> {
        // Check the declared length ourselves first, so the error carries it.
        if src.len() >= FRAME_HEADER_LEN {
            let declared = (&src[..FRAME_HEADER_LEN]).get_u32() as usize;
            self.check_len(declared)?;
        }
        Ok(self.inner.decode(src)?.map(|mut frame| {
            frame.advance(FRAME_HEADER_LEN);
            frame
        }))
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = WireError;

    fn encode(&mut self, payload: Bytes, dst: &mut BytesMut) -> Result<(), WireError> {
        self.encode(&payload[..], dst)
    }
}

impl Encoder<&[u8]> for FrameCodec {
    type Error = WireError;

    fn encode(&mut self, payload: &[u8], dst: &mut BytesMut) -> Result<(), WireError> {
        self.check_len(payload.len())?;
        dst.reserve(FRAME_HEADER_LEN + payload.len());
        dst.put_u32(payload.len() as u32);
        dst.put_slice(payload);
        Ok(())
    }
}
