//! Deserializers for variable-length fields that read by borrowing from the
//! received frame instead of allocating what the peer claims: a string or
//! byte field whose length prefix exceeds what the frame holds fails before
//! anything is allocated.
//!
//! Every `String`, `Bytes`, `Option<String>`, `Option<Bytes>` and `Vec` field of a
//! [`Message`](crate::Message) uses one of these, e.g.
//! `#[serde(deserialize_with = "multinode_wire::bounded::string")]`.
//! The hostile-input tests hold this crate's messages to it with an
//! allocation gauge.

use std::fmt;
use std::marker::PhantomData;

use bytes::Bytes;
use serde::de::{Error, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

struct Text;

impl Visitor<'_> for Text {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }
}

struct Raw;

impl Visitor<'_> for Raw {
    type Value = Bytes;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bytes")
    }

    fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(v))
    }
}

struct MaybeText;

impl<'de> Visitor<'de> for MaybeText {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an optional string")
    }

    fn visit_none<E: Error>(self) -> Result<Option<String>, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<String>, D::Error> {
        string(d).map(Some)
    }
}

struct MaybeRaw;

impl<'de> Visitor<'de> for MaybeRaw {
    type Value = Option<Bytes>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("optional bytes")
    }

    fn visit_none<E: Error>(self) -> Result<Option<Bytes>, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<Bytes>, D::Error> {
        bytes(d).map(Some)
    }
}

/// Reads a `String` by borrowing from the input.
pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    d.deserialize_str(Text)
}

/// Reads `Bytes` by borrowing from the input.
pub fn bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
    d.deserialize_bytes(Raw)
}

/// Reads an `Option<String>` by borrowing from the input.
pub fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    d.deserialize_option(MaybeText)
}

/// Reads an `Option<Bytes>` by borrowing from the input.
pub fn opt_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Bytes>, D::Error> {
    d.deserialize_option(MaybeRaw)
}

struct Seq<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for Seq<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Vec<T>, A::Error> {
        // Trust the claimed count for 1 KiB of items only: past that the
        // vector grows with what actually decodes, and every item takes input.
        let ahead = (1024 / std::mem::size_of::<T>().max(1)).max(1);
        let mut v = Vec::with_capacity(items.size_hint().unwrap_or(0).min(ahead));
        while let Some(item) = items.next_element()? {
            v.push(item);
        }
        // Grown by doubling past the trusted count: give back the slack, as
        // a decoded list may be held a while (a node queues what it
        // receives).
        v.shrink_to_fit();
        Ok(v)
    }
}

/// Reads a `Vec<T>` whose claimed length reserves at most 1 KiB up front,
/// so a huge claim allocates nothing the input cannot fill.
pub fn seq<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    d.deserialize_seq(Seq(PhantomData))
}
