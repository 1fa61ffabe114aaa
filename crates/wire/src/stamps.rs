//! Timestamp lists, packed: how LWW messages carry watermarks.
//!
//! A watermark list has one timestamp per origin, so at a thousand nodes it
//! is most of every anti-entropy message. Each timestamp alone takes 11–13
//! bytes (a 41-bit millisecond count is a 9-byte varint). Packed, each
//! timestamp is written as differences from the one before it — node id and
//! physical ms as zigzag LEB128, the logical counter as LEB128 — so a list
//! in node order whose clocks lie within 8 s of each other takes about
//! 4 bytes a timestamp. The list travels as one byte string (a varint
//! length, then the packed bytes), read by borrowing and bounded by it.

use std::fmt;

use serde::de::{Error, Visitor};
use serde::{Deserializer, Serializer};

use crate::{NodeId, Timestamp};

/// The most bytes one packed timestamp takes: two 64-bit and one 32-bit
/// LEB128 numbers at their widest.
pub(crate) const MAX_PACKED: usize = 10 + 10 + 5;

fn zigzag(d: i64) -> u64 {
    ((d << 1) ^ (d >> 63)) as u64
}

fn unzigzag(z: u64) -> i64 {
    ((z >> 1) as i64) ^ -((z & 1) as i64)
}

fn leb_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn put_leb(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The three numbers `t` is written as, after `prev`.
fn parts(prev: (u64, u64), t: &Timestamp) -> [u64; 3] {
    [
        zigzag(t.node.0.wrapping_sub(prev.0) as i64),
        zigzag(t.physical_ms.wrapping_sub(prev.1) as i64),
        u64::from(t.logical),
    ]
}

/// Bytes `stamps` take packed, without the length prefix.
pub(crate) fn packed_len(stamps: &[Timestamp]) -> usize {
    let mut prev = (0, 0);
    let mut n = 0;
    for t in stamps {
        n += parts(prev, t).iter().map(|v| leb_len(*v)).sum::<usize>();
        prev = (t.node.0, t.physical_ms);
    }
    n
}

fn pack(stamps: &[Timestamp]) -> Vec<u8> {
    // About 4 bytes a stamp in node order; the vector grows if not.
    let mut out = Vec::with_capacity(4 * stamps.len() + 8);
    let mut prev = (0, 0);
    for t in stamps {
        for v in parts(prev, t) {
            put_leb(&mut out, v);
        }
        prev = (t.node.0, t.physical_ms);
    }
    out
}

/// Why packed bytes are not a timestamp list.
#[derive(Debug)]
enum Unpack {
    Truncated,
    Overlong,
    Logical(u64),
}

impl fmt::Display for Unpack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unpack::Truncated => f.write_str("packed timestamps: truncated number"),
            Unpack::Overlong => f.write_str("packed timestamps: number wider than 64 bits"),
            Unpack::Logical(v) => write!(f, "packed timestamps: logical {v} wider than 32 bits"),
        }
    }
}

fn take_leb(bytes: &mut &[u8]) -> Result<u64, Unpack> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let (&b, rest) = bytes.split_first().ok_or(Unpack::Truncated)?;
        *bytes = rest;
        let bits = u64::from(b & 0x7f);
        // The tenth byte holds the top bit only.
        if i == 9 && bits > 1 {
            return Err(Unpack::Overlong);
        }
        v |= bits << (7 * i);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(Unpack::Overlong)
}

fn unpack(mut bytes: &[u8]) -> Result<Vec<Timestamp>, Unpack> {
    // Each number ends in a byte without the top bit, and a timestamp is
    // three numbers: room for exactly the timestamps a valid list holds
    // (about 4 bytes of input each, 24 in memory), bounded by the input.
    let ends = bytes.iter().filter(|b| **b & 0x80 == 0).count();
    let mut out = Vec::with_capacity(ends / 3);
    let mut prev = (0u64, 0u64);
    while !bytes.is_empty() {
        let node = prev.0.wrapping_add(unzigzag(take_leb(&mut bytes)?) as u64);
        let physical_ms = prev.1.wrapping_add(unzigzag(take_leb(&mut bytes)?) as u64);
        let logical = take_leb(&mut bytes)?;
        let logical = u32::try_from(logical).map_err(|_| Unpack::Logical(logical))?;
        out.push(Timestamp {
            physical_ms,
            logical,
            node: NodeId(node),
        });
        prev = (node, physical_ms);
    }
    Ok(out)
}

/// Writes a timestamp list packed (serde `serialize_with`).
pub(crate) fn serialize<S: Serializer>(stamps: &[Timestamp], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(&pack(stamps))
}

struct Packed;

impl Visitor<'_> for Packed {
    type Value = Vec<Timestamp>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("packed timestamps")
    }

    fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<Timestamp>, E> {
        unpack(v).map_err(E::custom)
    }
}

/// Reads a packed timestamp list by borrowing from the input (serde
/// `deserialize_with`).
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Timestamp>, D::Error> {
    d.deserialize_bytes(Packed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(physical_ms: u64, logical: u32, node: u64) -> Timestamp {
        Timestamp {
            physical_ms,
            logical,
            node: NodeId(node),
        }
    }

    #[test]
    fn extremes_round_trip_and_lengths_are_exact() {
        let v = vec![
            t(u64::MAX, u32::MAX, u64::MAX),
            t(0, 0, 0),
            t(1_767_225_600_000, 3, 7),
            t(1_767_225_599_000, 0, 8),
            t(u64::MAX, 1, 0),
        ];
        let packed = pack(&v);
        assert_eq!(packed.len(), packed_len(&v));
        assert_eq!(unpack(&packed).unwrap(), v);
        assert!(packed.len() <= v.len() * MAX_PACKED);
    }

    #[test]
    fn a_list_in_node_order_with_close_clocks_packs_to_four_bytes_a_stamp() {
        let v: Vec<_> = (0..1000)
            .map(|i| t(1_767_225_600_000 - (i * 37 % 5000), 0, i))
            .collect();
        let len = packed_len(&v);
        assert!(len <= 4 * 1000 + 8, "{len} bytes");
    }

    #[test]
    fn an_unpacked_list_holds_no_more_room_than_its_stamps() {
        let v: Vec<_> = (0..1000)
            .map(|i| t(1_767_225_600_000 - (i * 37 % 5000), i as u32 % 3, i))
            .collect();
        let back = unpack(&pack(&v)).unwrap();
        assert_eq!(back, v);
        assert_eq!(
            back.capacity(),
            v.len(),
            "room for stamps that are not there"
        );
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(matches!(unpack(&[0x80]), Err(Unpack::Truncated)));
        assert!(matches!(unpack(&[0, 0]), Err(Unpack::Truncated)));
        assert!(matches!(unpack(&[0xff; 11]), Err(Unpack::Overlong)));
        let mut wide = vec![0xff; 9];
        wide.push(0x02);
        assert!(matches!(unpack(&wide), Err(Unpack::Overlong)));
        assert!(matches!(
            unpack(&[0, 0, 0x80, 0x80, 0x80, 0x80, 0x10]),
            Err(Unpack::Logical(_))
        ));
    }
}
