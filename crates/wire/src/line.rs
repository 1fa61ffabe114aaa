use std::fmt;
use std::str::FromStr;

use std::borrow::Cow;

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::{NodeId, WireError};

/// The most node ids a `TIMEOUT` line lists.
const MAX_LISTED: usize = 100;

/// The default cap on a line, terminator excluded: 4 KiB.
pub const DEFAULT_MAX_LINE: usize = 4096;

/// The longest barrier label, in bytes: short enough that every reply
/// carrying one (a `FAILED` with its 1 KiB cause, a `TIMEOUT` listing 100
/// missing ids) fits in a [`DEFAULT_MAX_LINE`] line.
pub const MAX_LABEL_LEN: usize = 2048;

/// The longest value a node may contribute to a data-carrying barrier, in bytes.
pub const MAX_VALUE_LEN: usize = 256;

/// The line layer: UTF-8 text terminated by `\n` (a `\r` before it is
/// dropped), at most a capped number of bytes.
///
/// A line over the cap is [`WireError::LineTooLong`] and the connection
/// should be closed (the codec skips to the next newline if read on). Bytes
/// that are not UTF-8 decode with U+FFFD in their place, which no request or
/// reply accepts (they parse to "line is not valid utf-8"), so a bad line
/// never ends the stream: tokio-util's `Framed` stops reading after any
/// decoder error, and one bad line must not cost a peer its connection.
#[derive(Clone, Debug)]
pub struct LineCodec {
    max: usize,
    /// How far the buffer was searched for a newline without finding one.
    searched: usize,
    /// Skipping the rest of a line over the cap.
    skipping: bool,
}

impl LineCodec {
    /// A codec with the [`DEFAULT_MAX_LINE`] cap.
    pub fn new() -> Self {
        Self::with_max(DEFAULT_MAX_LINE)
    }

    /// A codec whose lines may be at most `max` bytes.
    pub fn with_max(max: usize) -> Self {
        Self {
            max,
            searched: 0,
            skipping: false,
        }
    }

    /// Reads the next whole line of `src` as [`Decoder::decode`] does, but
    /// hands `read` the line's text where it lies instead of a copy: a
    /// reader of many short lines (a gather's) allocates none of them.
    pub fn decode_with<R>(
        &mut self,
        src: &mut BytesMut,
        read: impl FnOnce(&str) -> R,
    ) -> Result<Option<R>, WireError> {
        loop {
            // A newline may sit just past the cap: the line is then whole.
            let upto = self.max.saturating_add(1).min(src.len());
            let found = src[self.searched..upto].iter().position(|b| *b == b'\n');
            match (self.skipping, found) {
                (true, Some(at)) => {
                    src.advance(self.searched + at + 1);
                    self.searched = 0;
                    self.skipping = false;
                }
                (true, None) => {
                    src.advance(upto);
                    self.searched = 0;
                    if src.is_empty() {
                        return Ok(None);
                    }
                }
                (false, Some(at)) => {
                    let end = self.searched + at;
                    self.searched = 0;
                    let read = read(&text(&src[..end]));
                    src.advance(end + 1);
                    return Ok(Some(read));
                }
                (false, None) if src.len() > self.max => {
                    self.skipping = true;
                    return Err(WireError::LineTooLong { max: self.max });
                }
                (false, None) => {
                    self.searched = upto;
                    return Ok(None);
                }
            }
        }
    }
}

/// A line's text: a `\r` before the newline dropped, and bytes that are not
/// UTF-8 replaced by U+FFFD (valid UTF-8, nearly every line, is checked in
/// one fast pass and not copied).
fn text(line: &[u8]) -> Cow<'_, str> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    match std::str::from_utf8(line) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(line),
    }
}

impl Default for LineCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder for LineCodec {
    type Item = String;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<String>, WireError> {
        self.decode_with(src, str::to_owned)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<String>, WireError> {
        if let Some(line) = self.decode(src)? {
            return Ok(Some(line));
        }
        // The last line may lack its newline.
        if src.is_empty() {
            return Ok(None);
        }
        self.searched = 0;
        let rest = src.split();
        Ok(Some(text(&rest).into_owned()))
    }
}

impl<T: fmt::Display> Encoder<T> for LineCodec {
    type Error = WireError;

    fn encode(&mut self, item: T, dst: &mut BytesMut) -> Result<(), WireError> {
        let line = item.to_string();
        if line.len() > self.max {
            return Err(WireError::LineTooLong { max: self.max });
        }
        if line.contains('\n') {
            return Err(WireError::malformed("line contains a newline"));
        }
        dst.reserve(line.len() + 1);
        dst.put_slice(line.as_bytes());
        dst.put_u8(b'\n');
        Ok(())
    }
}

/// A label: 1 to [`MAX_LABEL_LEN`] bytes, words separated by single spaces
/// (the reference protocol took the rest of a `BARRIER` line as its label),
/// no other whitespace and no control characters. A label of several words
/// may not end in a word that starts with `missing=`, so a `TIMEOUT` line
/// reads one way only.
fn check_label(s: &str, what: &str, max: usize) -> Result<(), WireError> {
    for word in s.split(' ') {
        check_token(word, what, max)?;
    }
    if s.len() > max {
        return Err(WireError::malformed(format!(
            "{what} is {} bytes, more than {max}",
            s.len()
        )));
    }
    if s.contains(' ')
        && s.rsplit(' ')
            .next()
            .is_some_and(|w| w.starts_with("missing="))
    {
        return Err(WireError::malformed(format!(
            "a {what} of several words may not end in a word starting with \"missing=\""
        )));
    }
    Ok(())
}

fn check_token(s: &str, what: &str, max: usize) -> Result<(), WireError> {
    if s.is_empty() {
        return Err(WireError::malformed(format!("empty {what}")));
    }
    if s.len() > max {
        return Err(WireError::malformed(format!(
            "{what} is {} bytes, more than {max}",
            s.len()
        )));
    }
    // ASCII (nearly every token) by bytes: whitespace and control
    // characters there are the bytes up to the space, and DEL.
    if s.is_ascii() && s.bytes().all(|b| b > b' ' && b != 0x7f) {
        return Ok(());
    }
    if let Some(c) = s.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(WireError::malformed(format!(
            "{what} contains {c:?}: whitespace and control characters are not allowed"
        )));
    }
    Ok(())
}

macro_rules! token_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:expr, $check:ident, $store:ty) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name($store);

        impl $name {
            #[doc = concat!("Validates a ", $what, ".")]
            pub fn new(s: impl Into<String>) -> Result<Self, WireError> {
                let s = s.into();
                $check(&s, $what, $max)?;
                Ok(Self(<$store>::from(s)))
            }

            #[doc = concat!("The ", $what, " as text.")]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = WireError;

            fn from_str(s: &str) -> Result<Self, WireError> {
                Self::new(s)
            }
        }
    };
}

token_type!(
    /// A barrier label: 1 to 2,048 bytes of UTF-8, words separated by
    /// single spaces (`phase one`), no other whitespace and no control
    /// characters, so it reads the same on both sides of a line. A `GATHER`
    /// label is one word, since its value follows it on the line.
    Label,
    "label",
    MAX_LABEL_LEN,
    check_label,
    // Shared: a gather of N members answers each with N lines about one
    // label, and each reply holds it.
    std::sync::Arc<str>
);

impl Label {
    /// Whether the label is one word (no space), as a `GATHER` label must be.
    pub fn is_word(&self) -> bool {
        !self.0.contains(' ')
    }
}

token_type!(
    /// A value contributed to a data-carrying barrier (a listen address, say):
    /// 1 to 256 bytes of UTF-8 with no whitespace and no control characters.
    Value,
    "value",
    MAX_VALUE_LEN,
    check_token,
    String
);

/// A line from a node to the barrier controller.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Request {
    /// `HELLO [<node-id>]`: claim an identity (or ask for the assigned one).
    Hello(Option<NodeId>),
    /// `BARRIER <label>`: wait until every member has arrived.
    Barrier(Label),
    /// `GATHER <label> <value>`: a barrier that also shares one value per node.
    Gather(Label, Value),
    /// `LEAVE`: an orderly exit; later barriers no longer wait for this node.
    Leave,
    /// A conductor line (`PARTITION 0,1 2`, `KILL 3`, ...): a fault to
    /// make, when the run enables faults.
    Fault(crate::Fault),
}

/// A line from the barrier controller to a node.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reply {
    /// `WELCOME <node-id> <nodes>`: the identity in force and the cluster size.
    Welcome {
        /// This connection's node id.
        node: NodeId,
        /// How many members each barrier waits for.
        nodes: u32,
    },
    /// `OK <label>`: every member arrived.
    Ok(Label),
    /// `VALUE <label> <node-id> <value>`: one member's contribution to a
    /// `GATHER`; one line per member, then `OK <label>`.
    Value {
        /// The barrier.
        label: Label,
        /// The member that contributed `value`.
        node: NodeId,
        /// What it contributed.
        value: Value,
    },
    /// `TIMEOUT <label> [missing=<id>,<id>...]`: the deadline passed first.
    Timeout {
        /// The barrier.
        label: Label,
        /// The members that had not arrived (the line lists the first 100).
        missing: Vec<NodeId>,
    },
    /// `FAILED <label> <cause>`: the barrier can never complete.
    Failed {
        /// The barrier.
        label: Label,
        /// Why, in words (for example which node disconnected).
        cause: String,
    },
    /// `ERR <reason>`: the last line was refused.
    Err(String),
    /// `BYE`: the `LEAVE` was recorded.
    Bye,
}

impl Reply {
    /// The label this reply is about, if any.
    pub fn label(&self) -> Option<&Label> {
        match self {
            Reply::Ok(l) => Some(l),
            Reply::Value { label, .. }
            | Reply::Timeout { label, .. }
            | Reply::Failed { label, .. } => Some(label),
            Reply::Welcome { .. } | Reply::Err(_) | Reply::Bye => None,
        }
    }
}

impl Reply {
    /// Parses a reply for a caller waiting on `expected`. A `FAILED` line
    /// whose label has spaces cannot be read without knowing the label
    /// (its cause follows it on the line): a line that starts with
    /// `FAILED <expected> ` is read as about `expected`. Every other line
    /// reads as [`str::parse`] reads it.
    pub fn parse_about(line: &str, expected: &Label) -> Result<Reply, WireError> {
        if let Some(reply) = Self::value_about(line, expected) {
            return reply;
        }
        let cause = line
            .strip_prefix("FAILED ")
            .and_then(|rest| rest.strip_prefix(expected.as_str()))
            .and_then(|rest| rest.strip_prefix(' '));
        match cause {
            Some(cause) if !expected.is_word() => {
                words(line)?;
                Ok(Reply::Failed {
                    label: expected.clone(),
                    cause: free_text(cause),
                })
            }
            _ => line.parse(),
        }
    }
}

impl Reply {
    /// `VALUE <expected> <node-id> <value>` read without splitting the line
    /// into words or parsing the label again: a gather of N members is N
    /// such lines at each of them, N² in all. `None` for any other line
    /// (read the usual way); what it refuses, the usual way refuses too.
    fn value_about(line: &str, expected: &Label) -> Option<Result<Reply, WireError>> {
        let rest = line
            .strip_prefix("VALUE ")?
            .strip_prefix(expected.as_str())?
            .strip_prefix(' ')?;
        // A gather's label is one word; a label of several would make the
        // words of the line ambiguous here.
        if !expected.is_word() {
            return None;
        }
        let (node, value) = rest.split_once(' ')?;
        Some((|| {
            if lossy(value) {
                return Err(WireError::malformed("line is not valid utf-8"));
            }
            Ok(Reply::Value {
                label: expected.clone(),
                node: node.parse()?,
                // Refuses spaces (a fifth word), control characters and
                // the empty value, as the usual way does.
                value: value.parse()?,
            })
        })())
    }
}

/// Whether text holds U+FFFD, which the codec puts where a line's bytes
/// were not UTF-8. ASCII, as nearly every line is, holds none: one fast
/// pass instead of a substring search (60 ns a gather line, measured).
fn lossy(text: &str) -> bool {
    !text.is_ascii() && text.contains(char::REPLACEMENT_CHARACTER)
}

/// Splits a line into single-space-separated words, refusing the spacing
/// mistakes that would make two sides read one line differently.
fn words(line: &str) -> Result<Vec<&str>, WireError> {
    if line.is_empty() {
        return Err(WireError::malformed("empty line"));
    }
    if lossy(line) {
        return Err(WireError::malformed("line is not valid utf-8"));
    }
    if line.starts_with(' ') || line.ends_with(' ') || line.contains("  ") {
        return Err(WireError::malformed("leading, trailing or double space"));
    }
    if let Some(c) = line.chars().find(|c| c.is_control()) {
        return Err(WireError::malformed(format!("control character {c:?}")));
    }
    Ok(line.split(' ').collect())
}

/// The free-text tail of a line: everything after the first `n` words.
fn tail(line: &str, n: usize) -> Option<&str> {
    line.splitn(n + 1, ' ').nth(n).filter(|t| !t.is_empty())
}

fn arity(verb: &str, got: usize, want: &str) -> WireError {
    WireError::malformed(format!("{verb} takes {want}, got {got} words"))
}

impl FromStr for Request {
    type Err = WireError;

    fn from_str(line: &str) -> Result<Self, WireError> {
        let w = words(line)?;
        match w[0] {
            "HELLO" => match w.len() {
                1 => Ok(Request::Hello(None)),
                2 => Ok(Request::Hello(Some(w[1].parse()?))),
                n => Err(arity("HELLO", n - 1, "at most a node id")),
            },
            "BARRIER" => match tail(line, 1) {
                Some(label) => Ok(Request::Barrier(label.parse()?)),
                None => Err(arity("BARRIER", 0, "a label")),
            },
            "GATHER" => match w.len() {
                3 => Ok(Request::Gather(w[1].parse()?, w[2].parse()?)),
                n => Err(arity("GATHER", n - 1, "a one-word label and a value")),
            },
            "LEAVE" => match w.len() {
                1 => Ok(Request::Leave),
                n => Err(arity("LEAVE", n - 1, "no arguments")),
            },
            verb if crate::Fault::VERBS.contains(&verb) => Ok(Request::Fault(line.parse()?)),
            verb => Err(WireError::malformed(format!(
                "unknown command {:?}",
                truncate(verb, 32)
            ))),
        }
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Hello(None) => f.write_str("HELLO"),
            Request::Hello(Some(id)) => write!(f, "HELLO {id}"),
            Request::Barrier(label) => write!(f, "BARRIER {label}"),
            Request::Gather(label, value) => write!(f, "GATHER {label} {value}"),
            Request::Leave => f.write_str("LEAVE"),
            Request::Fault(fault) => write!(f, "{fault}"),
        }
    }
}

impl FromStr for Reply {
    type Err = WireError;

    fn from_str(line: &str) -> Result<Self, WireError> {
        let w = words(line)?;
        match w[0] {
            "WELCOME" => match w.len() {
                3 => Ok(Reply::Welcome {
                    node: w[1].parse()?,
                    nodes: w[2]
                        .parse()
                        .map_err(|_| WireError::malformed("invalid node count"))?,
                }),
                n => Err(arity("WELCOME", n - 1, "a node id and a count")),
            },
            "OK" => match tail(line, 1) {
                Some(label) => Ok(Reply::Ok(label.parse()?)),
                None => Err(arity("OK", 0, "a label")),
            },
            "VALUE" => match w.len() {
                4 => Ok(Reply::Value {
                    label: w[1].parse()?,
                    node: w[2].parse()?,
                    value: w[3].parse()?,
                }),
                n => Err(arity("VALUE", n - 1, "a label, a node id and a value")),
            },
            "TIMEOUT" => match w.last().and_then(|l| l.strip_prefix("missing=")) {
                Some(ids) if w.len() >= 3 => {
                    let missing = ids
                        .split(',')
                        .map(NodeId::from_str)
                        .collect::<Result<_, _>>()?;
                    let label = &line["TIMEOUT ".len()..line.len() - w[w.len() - 1].len() - 1];
                    Ok(Reply::Timeout {
                        label: label.parse()?,
                        missing,
                    })
                }
                _ => match tail(line, 1) {
                    Some(label) => Ok(Reply::Timeout {
                        label: label.parse()?,
                        missing: Vec::new(),
                    }),
                    None => Err(arity("TIMEOUT", 0, "a label and a missing list")),
                },
            },
            "FAILED" => match (w.len(), tail(line, 2)) {
                (n, Some(cause)) if n >= 3 => Ok(Reply::Failed {
                    label: w[1].parse()?,
                    cause: free_text(cause),
                }),
                (n, _) => Err(arity("FAILED", n - 1, "a label and a cause")),
            },
            "ERR" => match tail(line, 1) {
                Some(reason) => Ok(Reply::Err(free_text(reason))),
                None => Err(arity("ERR", 0, "a reason")),
            },
            "BYE" => match w.len() {
                1 => Ok(Reply::Bye),
                n => Err(arity("BYE", n - 1, "no arguments")),
            },
            verb => Err(WireError::malformed(format!(
                "unknown reply {:?}",
                truncate(verb, 32)
            ))),
        }
    }
}

/// Free text in the one form a line carries it (applied when printing and
/// when parsing, so both sides read the same words): whitespace and control
/// characters become single spaces, U+FFFD becomes `?`, and it is cut to
/// 1 KiB.
fn free_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(1024));
    for c in s.chars() {
        let c = match c {
            c if c.is_control() || c.is_whitespace() => ' ',
            char::REPLACEMENT_CHARACTER => '?',
            c => c,
        };
        if c == ' ' && (out.is_empty() || out.ends_with(' ')) {
            continue;
        }
        if out.len() + c.len_utf8() > 1024 {
            break;
        }
        out.push(c);
    }
    let out = out.trim_end().to_owned();
    if out.is_empty() {
        "unspecified".to_owned()
    } else {
        out
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Welcome { node, nodes } => write!(f, "WELCOME {node} {nodes}"),
            Reply::Ok(label) => write!(f, "OK {label}"),
            Reply::Value { label, node, value } => write!(f, "VALUE {label} {node} {value}"),
            Reply::Timeout { label, missing } if missing.is_empty() => write!(f, "TIMEOUT {label}"),
            Reply::Timeout { label, missing } => {
                // At most MAX_LISTED ids, so the line stays far below the cap.
                write!(f, "TIMEOUT {label} missing=")?;
                for (i, id) in missing.iter().take(MAX_LISTED).enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{id}")?;
                }
                Ok(())
            }
            Reply::Failed { label, cause } => write!(f, "FAILED {label} {}", free_text(cause)),
            Reply::Err(reason) => write!(f, "ERR {}", free_text(reason)),
            Reply::Bye => f.write_str("BYE"),
        }
    }
}
