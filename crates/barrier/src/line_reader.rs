//! The async client's reading half: lines read where they lie in its
//! buffer, so a gather's N lines cost no allocation each.

use bytes::BytesMut;
use multinode_wire::{LineCodec, WireError};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::codec::Decoder;

/// How much room each read asks for: a gather of a thousand members is
/// about 30 KiB of lines, read in two or three.
const READ_ROOM: usize = 16 << 10;

/// Lines off `io`, each bounded by the codec's cap before it is buffered.
pub(crate) struct LineReader<R> {
    io: R,
    codec: LineCodec,
    buf: BytesMut,
    eof: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub(crate) fn new(io: R) -> Self {
        Self {
            io,
            codec: LineCodec::new(),
            buf: BytesMut::new(),
            eof: false,
        }
    }

    /// Hands the next line to `read`; `None` at the end of the stream.
    /// Cancellation-safe: what a dropped call read stays buffered.
    pub(crate) async fn next_with<T>(
        &mut self,
        mut read: impl FnMut(&str) -> T,
    ) -> Option<Result<T, WireError>> {
        loop {
            match self.codec.decode_with(&mut self.buf, &mut read) {
                Ok(Some(t)) => return Some(Ok(t)),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
            if self.eof {
                return self
                    .codec
                    .decode_eof(&mut self.buf)
                    .map(|line| line.map(|l| read(&l)))
                    .transpose();
            }
            self.buf.reserve(READ_ROOM);
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(e) => return Some(Err(WireError::Io(e))),
            }
        }
    }

    /// The next line, as a copy.
    pub(crate) async fn next(&mut self) -> Option<Result<String, WireError>> {
        self.next_with(str::to_owned).await
    }
}
