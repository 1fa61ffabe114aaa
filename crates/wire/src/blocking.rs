use std::io::{self, Read, Write};

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use crate::WireError;

const READ_CHUNK: usize = 64 * 1024;

/// Reads items from a blocking `std::io` stream with one of this crate's
/// decoders ([`FrameCodec`](crate::FrameCodec), [`MessageCodec`](crate::MessageCodec),
/// [`LineCodec`](crate::LineCodec)).
///
/// Bytes read but not yet decoded stay buffered across calls, so a read
/// timeout in the middle of a frame (`set_read_timeout` on a socket) loses
/// nothing: the call fails with an error whose
/// [`is_timeout`](WireError::is_timeout) is true, and the next call resumes
/// where the stream left off.
#[derive(Debug)]
pub struct BlockingReader<R, D> {
    inner: R,
    codec: D,
    buf: BytesMut,
    scratch: Box<[u8]>,
}

impl<R: Read, D: Decoder<Error = WireError>> BlockingReader<R, D> {
    /// Wraps `inner`, decoding with `codec`.
    pub fn new(inner: R, codec: D) -> Self {
        Self {
            inner,
            codec,
            buf: BytesMut::new(),
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
        }
    }

    /// Reads the next item: `Ok(None)` at a clean end of stream, an error if
    /// the stream ends inside an item.
    pub fn read(&mut self) -> Result<Option<D::Item>, WireError> {
        loop {
            if let Some(item) = self.codec.decode(&mut self.buf)? {
                return Ok(Some(item));
            }
            match self.inner.read(&mut self.scratch) {
                Ok(0) => return self.codec.decode_eof(&mut self.buf),
                Ok(n) => self.buf.extend_from_slice(&self.scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Decodes the next item from bytes already received, without touching
    /// the stream: `Ok(None)` if they hold no whole item.
    pub fn read_buffered(&mut self) -> Result<Option<D::Item>, WireError> {
        self.codec.decode(&mut self.buf)
    }

    /// Switches to another decoder, keeping every byte received but not yet
    /// decoded (as after a handshake, when the peer's first frames may
    /// already be in the buffer).
    pub fn map_codec<D2>(self, f: impl FnOnce(D) -> D2) -> BlockingReader<R, D2> {
        BlockingReader {
            inner: self.inner,
            codec: f(self.codec),
            buf: self.buf,
            scratch: self.scratch,
        }
    }

    /// Bytes received but not yet decoded (part of an item).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The underlying stream, for setting timeouts. Reading from it directly
    /// would desynchronise the decoder.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }
}

/// Writes items to a blocking `std::io` stream with one of this crate's
/// encoders.
///
/// A write can stop part-way through an item (a write timeout, a reset), and
/// the stream's framing is then lost for good: after any write error the
/// writer is poisoned and refuses further items, rather than send a stream
/// the peer would misread. Encoding errors (an item over the cap) write
/// nothing and do not poison.
#[derive(Debug)]
pub struct BlockingWriter<W, E> {
    inner: W,
    codec: E,
    buf: BytesMut,
    poisoned: bool,
}

impl<W: Write, E> BlockingWriter<W, E> {
    /// Wraps `inner`, encoding with `codec`.
    pub fn new(inner: W, codec: E) -> Self {
        Self {
            inner,
            codec,
            buf: BytesMut::new(),
            poisoned: false,
        }
    }

    /// Encodes `item` into the write buffer without writing it yet.
    pub fn feed<I>(&mut self, item: I) -> Result<(), WireError>
    where
        E: Encoder<I, Error = WireError>,
    {
        self.check()?;
        self.codec.encode(item, &mut self.buf)
    }

    /// Writes everything fed so far and flushes the stream.
    pub fn flush(&mut self) -> Result<(), WireError> {
        self.check()?;
        let res = self
            .inner
            .write_all(&self.buf)
            .and_then(|()| self.inner.flush());
        self.buf.clear();
        res.map_err(|e| {
            self.poisoned = true;
            e.into()
        })
    }

    /// Encodes `item`, writes it and flushes.
    pub fn send<I>(&mut self, item: I) -> Result<(), WireError>
    where
        E: Encoder<I, Error = WireError>,
    {
        self.feed(item)?;
        self.flush()
    }

    /// Whether an earlier write failed, leaving the stream unusable.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// The underlying stream, for setting timeouts.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    fn check(&self) -> Result<(), WireError> {
        if self.poisoned {
            return Err(WireError::Io(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "an earlier write failed part-way; the stream is out of sync",
            )));
        }
        Ok(())
    }
}
