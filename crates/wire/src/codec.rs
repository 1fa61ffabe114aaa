//! The payload encoding. This is the only file that names bincode: switching
//! codec means rewriting `encode_into` and `decode_payload` below.

use std::marker::PhantomData;

use bincode::config;
use bincode::enc::write::Writer;
use bincode::error::EncodeError;
use bytes::{Buf, BufMut, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::codec::{Decoder, Encoder};

use crate::WireError;
use crate::frame::{FRAME_HEADER_LEN, FrameCodec};

/// Encodes `item` as a payload appended to `dst`, failing without leaving
/// anything behind if it is over `max` bytes.
///
/// The fast way is bincode's slice writer (no per-field buffer checks)
/// straight into zeroed room at the end of `dst`: exactly the room a message
/// that knows its length ([`Message::exact_len`]) needs, or `room` bytes,
/// the codec's guess from the last message, for one that does not. A
/// message that does not fit its guess goes through a writer that stops as
/// soon as the payload passes `max`, so an oversized message is never fully
/// buffered; the guess then grows to fit it next time.
#[inline(always)]
pub(crate) fn encode_into<T: Message>(
    item: &T,
    dst: &mut BytesMut,
    max: usize,
    room: &mut usize,
) -> Result<(), WireError> {
    if let Some(len) = item.exact_len() {
        return encode_exact(item, len, dst, max);
    }
    if *room > 0
        && let Some(n) = encode_in_room(item, dst, (*room).min(max))
    {
        *room = room_for(n);
        return Ok(());
    }
    let start = dst.len();
    encode_capped(item, dst, max)?;
    *room = room_for(dst.len() - start);
    Ok(())
}

/// The smallest and largest guess of a payload's length.
const ROOM: std::ops::RangeInclusive<usize> = 32..=64 * 1024;

/// The room to zero for the next message after one of `n` bytes: half as
/// much again, so that messages of about one size fit at the first try;
/// none after one larger than the largest guess, so that a run of large
/// messages goes straight to the capped writer, not through a failed try
/// each.
#[inline]
fn room_for(n: usize) -> usize {
    if n > *ROOM.end() {
        return 0;
    }
    (n + n / 2).clamp(*ROOM.start(), *ROOM.end())
}

/// Encodes `item` with bincode's slice writer into `room` zeroed bytes at
/// the end of `dst`, and returns its length; `None`, leaving `dst` as it
/// was, if it does not fit (or its `Serialize` fails: the slower way then
/// reports that).
#[inline(always)]
fn encode_in_room<T: Serialize>(item: &T, dst: &mut BytesMut, room: usize) -> Option<usize> {
    let start = dst.len();
    dst.put_bytes(0, room);
    match bincode::serde::encode_into_slice(item, &mut dst[start..], config::standard()) {
        Ok(n) => {
            dst.truncate(start + n);
            Some(n)
        }
        Err(_) => {
            dst.truncate(start);
            None
        }
    }
}

/// Encodes a message of unknown length through a writer that stops once
/// the payload passes `max`, so an oversized message is never buffered.
fn encode_capped<T: Serialize + ?Sized>(
    item: &T,
    dst: &mut BytesMut,
    max: usize,
) -> Result<(), WireError> {
    struct Capped<'a> {
        dst: &'a mut BytesMut,
        written: usize,
        max: usize,
    }
    impl Writer for Capped<'_> {
        fn write(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
            self.written += bytes.len();
            if self.written > self.max {
                return Err(EncodeError::Other("frame cap reached"));
            }
            self.dst.put_slice(bytes);
            Ok(())
        }
    }
    let start = dst.len();
    let mut w = Capped {
        dst,
        written: 0,
        max,
    };
    // Bincode's limit only applies to decoding; the capped writer bounds encoding.
    match bincode::serde::encode_into_writer(item, &mut w, config::standard()) {
        Ok(()) => Ok(()),
        Err(e) => {
            let written = w.written;
            dst.truncate(start);
            match e {
                EncodeError::Other("frame cap reached") => Err(WireError::FrameTooLarge {
                    len: written as u64,
                    max,
                }),
                e => Err(WireError::Encode {
                    reason: e.to_string(),
                }),
            }
        }
    }
}

/// Encodes `item`, whose payload is `len` bytes by its own account: over
/// `max` it is refused before any encoding; otherwise it is encoded in one
/// pass into `len` zeroed bytes. An account that does not match what
/// bincode writes is a bug in the message type: the message then goes the
/// general way, so the bytes are right whatever the account said.
fn encode_exact<T: Message>(
    item: &T,
    len: usize,
    dst: &mut BytesMut,
    max: usize,
) -> Result<(), WireError> {
    if len > max {
        return Err(WireError::FrameTooLarge {
            len: len as u64,
            max,
        });
    }
    let start = dst.len();
    if item.encode_by_hand(dst) {
        debug_assert_eq!(dst.len() - start, len, "exact_len does not match");
        return Ok(());
    }
    match encode_in_room(item, dst, len) {
        Some(n) if n == len => Ok(()),
        _ => {
            debug_assert!(false, "exact_len {len} does not match the encoding");
            dst.truncate(start);
            encode_capped(item, dst, max)
        }
    }
}

/// Decodes one payload with bincode: the value and how many bytes it used.
///
/// No bincode byte limit: it charges every primitive read and halves decode
/// speed. Allocation is bounded instead by reading strings and bytes by
/// borrowing from `bytes` (see `bounded.rs`), so no field can claim more
/// than the payload holds, and serde preallocates sequences cautiously
/// (at most 1 MiB before elements actually decode).
///
/// The caller checks that the payload was consumed exactly, and turns the
/// result into its own without a `Result<T, _>` in between: moving the
/// freshly decoded value through one more enum costs a small message a
/// fifth of its decode time (a store that cannot be forwarded to the load).
#[inline(always)]
fn decode_payload<T: DeserializeOwned>(
    bytes: &[u8],
) -> Result<(T, usize), bincode::error::DecodeError> {
    bincode::serde::decode_from_slice(bytes, config::standard())
}

#[cold]
fn trailing(n: usize) -> WireError {
    WireError::Decode {
        reason: format!("{n} trailing bytes after the message"),
    }
}

#[cold]
fn undecodable(e: bincode::error::DecodeError) -> WireError {
    WireError::Decode {
        reason: e.to_string(),
    }
}

/// A value that travels as one frame's payload.
///
/// The contract: decoding a `Message` never allocates more than the payload
/// holds, whatever length prefixes a hostile peer writes inside it. Fixed-size
/// fields need nothing; every `String`, `Bytes`, `Option<String>`,
/// `Option<Bytes>` or `Vec<T>` field must read through the
/// [`bounded`](crate::bounded) deserializers, which never reserve room for
/// more than the input can hold (1 KiB ahead, for a sequence). This crate's messages keep the contract and its
/// hostile-input tests check them; a type outside it that implements
/// `Message` takes the contract on.
pub trait Message: Serialize + DeserializeOwned {
    /// This payload decoded without bincode, for the shapes a type can
    /// read faster by hand; `None` (the default) sends it the general way.
    /// A `Some` must be exactly what the general way would decode.
    #[doc(hidden)]
    #[inline(always)]
    fn decode_by_hand(payload: &[u8]) -> Option<Self> {
        let _ = payload;
        None
    }

    /// Appends this message's payload to `dst` without bincode, for the
    /// shapes a type writes faster by hand, and says whether it did;
    /// `false` (the default), with `dst` untouched, sends it the general
    /// way. What it appends must be exactly what the general way writes.
    #[doc(hidden)]
    #[inline(always)]
    fn encode_by_hand(&self, dst: &mut BytesMut) -> bool {
        let _ = dst;
        false
    }

    /// The exact length of this message's payload once encoded, if it is
    /// cheap to compute without encoding. With it, an encoder refuses a
    /// message over the cap before encoding anything and encodes the rest
    /// in one pass into room reserved up front. `None` (the default) is
    /// always correct; a wrong `Some` is a bug, caught in debug builds.
    fn exact_len(&self) -> Option<usize> {
        None
    }
}

impl Message for crate::Hello {}
impl Message for crate::ClusterFrame {
    fn exact_len(&self) -> Option<usize> {
        Some(self.payload_len())
    }

    /// `Gossip(Opaque { .. })` written by hand: the body is copied once,
    /// not into zeroed room after zeroing it (at 1 KiB the zeroing was a
    /// tenth of the sender's time).
    #[inline(always)]
    fn encode_by_hand(&self, dst: &mut BytesMut) -> bool {
        let crate::ClusterFrame::Gossip(crate::GossipPdu::Opaque { schema, body }) = self else {
            return false;
        };
        dst.put_slice(&[0, 0]);
        put_varint(dst, u64::from(*schema));
        put_varint(dst, body.len() as u64);
        dst.put_slice(body);
        true
    }

    /// `Gossip(Opaque { .. })`, the frame a gossip layer of its own sends,
    /// read by hand (see [`ClusterFrame::opaque_gossip`]); anything else
    /// goes the general way, which decides it as before.
    ///
    /// [`ClusterFrame::opaque_gossip`]: crate::ClusterFrame::opaque_gossip
    #[inline(always)]
    fn decode_by_hand(payload: &[u8]) -> Option<Self> {
        let (schema, body) = crate::ClusterFrame::opaque_gossip(payload)?;
        Some(crate::ClusterFrame::Gossip(crate::GossipPdu::Opaque {
            schema,
            body: bytes::Bytes::from(body.to_vec()),
        }))
    }
}

impl crate::ClusterFrame {
    /// The schema and body of a `Gossip(Opaque { .. })` payload, read
    /// where they lie, without decoding a frame: two variant tags, the
    /// schema, the body's length and the body, each in its shortest varint
    /// form, filling the payload exactly, as this crate writes them. `None`
    /// for anything else (another variant, a longer form, bytes left over
    /// or missing): decode such a payload the general way, which decides
    /// it. A reader that hands each body on as it comes costs no decoded
    /// frame moved through memory.
    #[inline(always)]
    pub fn opaque_gossip(payload: &[u8]) -> Option<(u16, &[u8])> {
        let [0, 0, rest @ ..] = payload else {
            return None;
        };
        let (schema, rest) = short_varint(rest)?;
        let (len, body) = short_varint(rest)?;
        if body.len() as u64 != len {
            return None;
        }
        Some((u16::try_from(schema).ok()?, body))
    }
}

/// A bincode-standard varint at the front of `b` in its one- or three-byte
/// form (values below 65,536, as written), and what follows it.
#[inline(always)]
fn short_varint(b: &[u8]) -> Option<(u64, &[u8])> {
    match b {
        [v @ 0..=250, rest @ ..] => Some((u64::from(*v), rest)),
        [251, lo, hi, rest @ ..] => {
            let v = u16::from_le_bytes([*lo, *hi]);
            (v > 250).then_some((u64::from(v), rest))
        }
        _ => None,
    }
}
impl Message for crate::Timestamp {}
impl Message for crate::Session {}
impl Message for crate::Proof {}

/// The widest a varint gets (a `0xfd` tag and a `u64`).
const MAX_VARINT: usize = 9;

/// Appends `v` as a bincode-standard varint, in its shortest form.
#[inline(always)]
fn put_varint(dst: &mut BytesMut, v: u64) {
    match v {
        0..=250 => dst.put_u8(v as u8),
        251..=0xffff => {
            dst.put_u8(251);
            dst.put_u16_le(v as u16);
        }
        0x1_0000..=0xffff_ffff => {
            dst.put_u8(252);
            dst.put_u32_le(v as u32);
        }
        _ => {
            dst.put_u8(253);
            dst.put_u64_le(v);
        }
    }
}

/// Bytes a bincode-standard varint of `v` takes.
#[inline]
fn varint_len(v: u64) -> usize {
    match v {
        0..=250 => 1,
        251..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

/// Bytes a length-prefixed string or byte field of `len` bytes takes.
#[inline]
fn field_len(len: usize) -> usize {
    varint_len(len as u64) + len
}

impl crate::ClusterFrame {
    /// The length of this frame's payload once encoded (the frame adds a
    /// 4-byte header), computed without encoding it: what a transport that
    /// never serializes (an in-process one) checks against the frame cap
    /// and counts as bytes.
    #[inline]
    pub fn payload_len(&self) -> usize {
        use crate::{ClusterFrame, GossipPdu};
        match self {
            ClusterFrame::Gossip(GossipPdu::Opaque { schema, body }) => {
                1 + 1 + varint_len(u64::from(*schema)) + field_len(body.len())
            }
            ClusterFrame::Gossip(GossipPdu::Lww(m)) => 1 + 1 + m.encoded_len(),
            ClusterFrame::Tell(t) => {
                1 + field_len(t.target_path.len())
                    + field_len(t.manifest.len())
                    + field_len(t.payload.len())
                    + 1
                    + t.sender_path.as_ref().map_or(0, |p| field_len(p.len()))
            }
        }
    }
}

impl crate::Timestamp {
    /// Bytes this timestamp takes inside a message.
    pub fn encoded_len(&self) -> usize {
        varint_len(self.physical_ms) + varint_len(u64::from(self.logical)) + varint_len(self.node.0)
    }
}

impl crate::LwwEntry {
    /// Bytes this entry takes inside a message: what a byte budget counts.
    pub fn encoded_len(&self) -> usize {
        field_len(self.key.len())
            + 1
            + self.value.as_ref().map_or(0, |v| field_len(v.len()))
            + self.version.encoded_len()
    }
}

impl crate::LwwMessage {
    /// The most bytes one timestamp of a sync's `partial` list takes: a
    /// replica that cuts an origin short charges this against its budget.
    pub const MAX_PARTIAL_LEN: usize = crate::stamps::MAX_PACKED;

    /// The most bytes a `Sync` whose watermarks are `watermarks` and
    /// whose `beyond` is `beyond` takes besides its entries and its
    /// `partial` timestamps (at most [`Self::MAX_PARTIAL_LEN`] each): its
    /// tag and `reply`, `era`, `answers` and `sent_ms` and every count at
    /// their widest, the packed watermarks, `beyond`, and the frame header
    /// and PDU tags. A byte budget for a sync's entries is what is left of
    /// it after this.
    pub fn sync_overhead(watermarks: &[crate::Timestamp], beyond: &[crate::Beyond]) -> usize {
        let stamps = MAX_VARINT + crate::stamps::packed_len(watermarks);
        let header = crate::FRAME_HEADER_LEN + 2;
        let beyond = MAX_VARINT + beyond_len(beyond);
        2 + 5 + 5 + stamps + MAX_VARINT + MAX_VARINT + MAX_VARINT + beyond + header
    }

    /// Bytes this message takes as a TCP frame: the frame header, the
    /// `ClusterFrame` and `GossipPdu` tags, and the message.
    pub fn frame_len(&self) -> usize {
        crate::FRAME_HEADER_LEN + 2 + self.encoded_len()
    }

    /// Bytes this message takes inside a frame, computed without encoding.
    pub fn encoded_len(&self) -> usize {
        fn stamps(v: &[crate::Timestamp]) -> usize {
            field_len(crate::stamps::packed_len(v))
        }
        match self {
            crate::LwwMessage::Digest {
                era,
                watermarks,
                sent_ms,
                beyond,
            } => {
                1 + varint_len(u64::from(*era))
                    + stamps(watermarks)
                    + varint_len(*sent_ms)
                    + varint_len(beyond.len() as u64)
                    + beyond_len(beyond)
            }
            crate::LwwMessage::Sync {
                era,
                answers,
                watermarks,
                entries,
                partial,
                sent_ms,
                beyond,
                ..
            } => {
                varint_len(*sent_ms)
                    + 1
                    + 1
                    + varint_len(u64::from(*era))
                    + varint_len(u64::from(*answers))
                    + stamps(watermarks)
                    + varint_len(entries.len() as u64)
                    + entries.iter().map(|e| e.encoded_len()).sum::<usize>()
                    + stamps(partial)
                    + varint_len(beyond.len() as u64)
                    + beyond_len(beyond)
            }
        }
    }
}

/// The bytes of a `beyond` list's items (without its count).
fn beyond_len(beyond: &[crate::Beyond]) -> usize {
    beyond
        .iter()
        .map(|b| varint_len(b.origin.0) + varint_len(b.fingerprint))
        .sum()
}

/// A typed frame codec: each frame's payload is one `T`.
///
/// `Framed<TcpStream, MessageCodec<ClusterFrame>>` is a stream and sink of
/// [`ClusterFrame`](crate::ClusterFrame)s. Decoding a payload that is not a
/// valid `T` is a [`WireError::Decode`]; the frame has been consumed, so the
/// stream stays in sync, but the peer is not speaking our protocol and the
/// connection is usually best dropped.
#[derive(Debug)]
pub struct MessageCodec<T> {
    frame: FrameCodec,
    /// How many bytes to zero for the next payload of unknown length (0:
    /// the last was too large to guess; take the capped writer).
    room: usize,
    _item: PhantomData<fn() -> T>,
}

impl<T> MessageCodec<T> {
    /// A codec with the default frame cap.
    pub fn new() -> Self {
        Self::with_max(crate::DEFAULT_MAX_FRAME)
    }

    /// A codec whose payloads may be at most `max` bytes.
    pub fn with_max(max: usize) -> Self {
        Self {
            frame: FrameCodec::with_max(max),
            room: *ROOM.start(),
            _item: PhantomData,
        }
    }

    /// The payload cap in force.
    pub fn max_frame(&self) -> usize {
        self.frame.max_frame()
    }
}

impl<T> Default for MessageCodec<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for MessageCodec<T> {
    fn clone(&self) -> Self {
        Self::with_max(self.max_frame())
    }
}

impl<T: Message> Decoder for MessageCodec<T> {
    type Item = T;
    type Error = WireError;

    #[inline(always)]
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<T>, WireError> {
        // Decode the payload where it lies, then drop the frame: splitting
        // it off first (as `FrameCodec` does) costs two atomic refcount
        // operations per frame, a third of the time for a small message.
        let Some(len) = self.frame.complete_frame(src)? else {
            return Ok(None);
        };
        let end = FRAME_HEADER_LEN + len;
        if let Some(value) = T::decode_by_hand(&src[FRAME_HEADER_LEN..end]) {
            src.advance(end);
            return Ok(Some(value));
        }
        let decoded = decode_payload(&src[FRAME_HEADER_LEN..end]);
        src.advance(end);
        match decoded {
            Ok((value, used)) if used == len => Ok(Some(value)),
            Ok((_, used)) => Err(trailing(len - used)),
            Err(e) => Err(undecodable(e)),
        }
    }
}

impl<T: Message> Encoder<&T> for MessageCodec<T> {
    type Error = WireError;

    #[inline(always)]
    fn encode(&mut self, item: &T, dst: &mut BytesMut) -> Result<(), WireError> {
        let max = self.max_frame();
        let at = FrameCodec::begin_in_place(dst);
        if let Err(e) = encode_into(item, dst, max, &mut self.room) {
            dst.truncate(at);
            return Err(e);
        }
        self.frame.finish_in_place(dst, at)
    }
}

impl<T: Message> Encoder<T> for MessageCodec<T> {
    type Error = WireError;

    fn encode(&mut self, item: T, dst: &mut BytesMut) -> Result<(), WireError> {
        self.encode(&item, dst)
    }
}
