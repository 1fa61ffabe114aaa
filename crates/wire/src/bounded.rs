//! Deserializers for variable-length fields that read by borrowing from the
//! received frame instead of allocating what the peer claims: a string or
//! byte field whose length prefix exceeds what the frame holds fails before
//! anything is allocated.
//!
//! Every `String`, `Bytes` and `Option<String>` field of a
//! [`Message`](crate::Message) uses one of these, e.g.
//! `#[serde(deserialize_with = "multinode_wire::bounded::string")]`.
//! The hostile-input tests hold this crate's messages to it with an
//! allocation gauge.

use std::fmt;

use bytes::Bytes;
use serde::Deserializer;
use serde::de::{Error, Visitor};

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
