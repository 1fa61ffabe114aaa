//! The node's control protocol (`docs/node-control.md`), sans-IO: one
//! command per line in, one reply per command out. Keys and values are
//! tokens, percent-encoded both ways, so any bytes travel as one word.

use core::net::SocketAddr;
use std::fmt;

use multinode_wire::{NodeId, Timestamp};

use crate::faulty::FaultVerb;

/// The longest control line; a longer one is answered with an error.
pub(crate) const MAX_LINE: usize = 64 * 1024;

/// A control command.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Command {
    Ping,
    Set(String, Vec<u8>),
    Del(String),
    Get(String),
    Digest,
    Dump,
    Stats,
    Peer(NodeId, SocketAddr),
    Join(String),
    Barrier(String),
    Fault(FaultVerb),
    Faults,
    Quit,
}

/// Why a line is not a command; sent back as `ERR <reason>`.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ParseError {
    #[error("empty line")]
    Empty,
    #[error("unknown command {0:?}")]
    Unknown(String),
    #[error("{0} takes {1}")]
    Arity(String, &'static str),
    #[error("bad {what}: {why}")]
    Bad { what: &'static str, why: String },
}

fn bad(what: &'static str, why: impl Into<String>) -> ParseError {
    ParseError::Bad {
        what,
        why: why.into(),
    }
}

impl std::str::FromStr for Command {
    type Err = ParseError;

    fn from_str(line: &str) -> Result<Self, ParseError> {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let mut words = line.split(' ');
        let verb = words
            .next()
            .filter(|w| !w.is_empty())
            .ok_or(ParseError::Empty)?;
        let args: Vec<&str> = words.collect();
        let exact = |n: usize, usage: &'static str| {
            if args.len() == n && args.iter().all(|a| !a.is_empty()) {
                Ok(())
            } else {
                Err(ParseError::Arity(verb.to_owned(), usage))
            }
        };
        Ok(match verb {
            "PING" => exact(0, "no arguments").map(|()| Command::Ping)?,
            "SET" => {
                exact(2, "<key> <value>")?;
                Command::Set(key(args[0])?, decode(args[1]).map_err(|e| bad("value", e))?)
            }
            "DEL" => {
                exact(1, "<key>")?;
                Command::Del(key(args[0])?)
            }
            "GET" => {
                exact(1, "<key>")?;
                Command::Get(key(args[0])?)
            }
            "DIGEST" => exact(0, "no arguments").map(|()| Command::Digest)?,
            "DUMP" => exact(0, "no arguments").map(|()| Command::Dump)?,
            "STATS" => exact(0, "no arguments").map(|()| Command::Stats)?,
            "PEER" => {
                exact(2, "<id> <host:port>")?;
                let addr = args[1]
                    .parse()
                    .map_err(|_| bad("address", format!("{:?} is not host:port", args[1])))?;
                Command::Peer(node_id(args[0])?, addr)
            }
            "JOIN" => {
                exact(1, "<label>")?;
                Command::Join(args[0].to_owned())
            }
            "BARRIER" => {
                exact(1, "<label>")?;
                Command::Barrier(args[0].to_owned())
            }
            "DROP" | "DUPLICATE" | "REORDER" | "CORRUPT" => {
                exact(1, "<probability>")?;
                let p = probability(args[0])?;
                Command::Fault(match verb {
                    "DROP" => FaultVerb::Drop(p),
                    "DUPLICATE" => FaultVerb::Duplicate(p),
                    "REORDER" => FaultVerb::Reorder(p),
                    _ => FaultVerb::Corrupt(p),
                })
            }
            "DELAY" => {
                exact(2, "<min-ms> <max-ms>")?;
                let (lo, hi) = (millis(args[0])?, millis(args[1])?);
                if lo > hi {
                    return Err(bad("delay", format!("{lo} ms is more than {hi} ms")));
                }
                Command::Fault(FaultVerb::Delay(lo, hi))
            }
            "CUT" | "HOLD" | "RELEASE" => {
                if args.is_empty() || args.iter().any(|a| a.is_empty()) {
                    return Err(ParseError::Arity(verb.to_owned(), "<id> [<id>...]"));
                }
                let ids = args.iter().map(|a| node_id(a)).collect::<Result<_, _>>()?;
                Command::Fault(match verb {
                    "CUT" => FaultVerb::Cut(ids),
                    "HOLD" => FaultVerb::Hold(ids),
                    _ => FaultVerb::Release(ids),
                })
            }
            "HEAL" => exact(0, "no arguments").map(|()| Command::Fault(FaultVerb::Heal))?,
            "FAULTS" => exact(0, "no arguments").map(|()| Command::Faults)?,
            "QUIT" => exact(0, "no arguments").map(|()| Command::Quit)?,
            other => return Err(ParseError::Unknown(truncate(other))),
        })
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

fn probability(s: &str) -> Result<f64, ParseError> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(bad(
            "probability",
            format!("{:?} is not in [0, 1]", truncate(s)),
        )),
    }
}

/// A delay bound: whole milliseconds, at most an hour.
fn millis(s: &str) -> Result<u64, ParseError> {
    const HOUR_MS: u64 = 3_600_000;
    match s.parse::<u64>() {
        Ok(ms) if ms <= HOUR_MS => Ok(ms),
        _ => Err(bad(
            "delay",
            format!(
                "{:?} is not a whole number of ms up to {HOUR_MS}",
                truncate(s)
            ),
        )),
    }
}

fn node_id(s: &str) -> Result<NodeId, ParseError> {
    s.parse()
        .map(NodeId)
        .map_err(|_| bad("node id", format!("{:?} is not a node id", truncate(s))))
}

fn key(s: &str) -> Result<String, ParseError> {
    let bytes = decode(s).map_err(|e| bad("key", e))?;
    String::from_utf8(bytes).map_err(|_| bad("key", "not UTF-8 once decoded"))
}

/// Percent-encodes `bytes`: everything outside `!`..=`~`, and `%` itself.
pub(crate) fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reverses [`encode`]; a `%` must be followed by two hex digits.
pub(crate) fn decode(s: &str) -> Result<Vec<u8>, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad escape at byte {i}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// A version as the protocol writes it: `<ms>.<logical>@<node>`.
pub(crate) fn parse_version(s: &str) -> Option<Timestamp> {
    let (time, node) = s.split_once('@')?;
    let (ms, logical) = time.split_once('.')?;
    Some(Timestamp {
        physical_ms: ms.parse().ok()?,
        logical: logical.parse().ok()?,
        node: NodeId(node.parse().ok()?),
    })
}

/// One entry of a `DUMP`: a live value or a tombstone, with its version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DumpLine {
    pub(crate) key: String,
    pub(crate) version: Timestamp,
    pub(crate) value: Option<Vec<u8>>,
}

impl fmt::Display for DumpLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(
                f,
                "LIVE {} {} {}",
                encode(self.key.as_bytes()),
                self.version,
                encode(v)
            ),
            None => write!(f, "GONE {} {}", encode(self.key.as_bytes()), self.version),
        }
    }
}

impl DumpLine {
    /// Parses a `LIVE` or `GONE` line.
    pub(crate) fn parse(line: &str) -> Option<Self> {
        let w: Vec<&str> = line.split(' ').collect();
        let (live, n) = match *w.first()? {
            "LIVE" => (true, 4),
            "GONE" => (false, 3),
            _ => return None,
        };
        if w.len() != n {
            return None;
        }
        Some(Self {
            key: String::from_utf8(decode(w[1]).ok()?).ok()?,
            version: parse_version(w[2])?,
            value: if live { Some(decode(w[3]).ok()?) } else { None },
        })
    }
}

/// `key=value` pairs of a `STATS` or `DIGEST` reply.
pub(crate) fn field(line: &str, name: &str) -> Option<u64> {
    line.split(' ')
        .filter_map(|w| w.split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_and_bad_lines_get_reasons() {
        assert_eq!(
            "SET k%20x v%00".parse(),
            Ok(Command::Set("k x".into(), b"v\0".to_vec()))
        );
        assert_eq!("DEL k\r".parse(), Ok(Command::Del("k".into())));
        assert_eq!(
            "PEER 3 127.0.0.1:9".parse(),
            Ok(Command::Peer(NodeId(3), "127.0.0.1:9".parse().unwrap()))
        );
        assert_eq!(
            "CUT 1 2".parse(),
            Ok(Command::Fault(FaultVerb::Cut(vec![NodeId(1), NodeId(2)])))
        );
        assert_eq!(
            "DROP 0.25".parse(),
            Ok(Command::Fault(FaultVerb::Drop(0.25)))
        );
        assert_eq!(
            "CORRUPT 1".parse(),
            Ok(Command::Fault(FaultVerb::Corrupt(1.0)))
        );
        assert_eq!(
            "DELAY 5 20".parse(),
            Ok(Command::Fault(FaultVerb::Delay(5, 20)))
        );
        let err = |l: &str| l.parse::<Command>().unwrap_err().to_string();
        assert_eq!(err(""), "empty line");
        assert_eq!(err("SET k"), "SET takes <key> <value>");
        assert_eq!(err("SET  k v"), "SET takes <key> <value>");
        assert_eq!(err("FOO"), "unknown command \"FOO\"");
        assert_eq!(err("DROP 2"), "bad probability: \"2\" is not in [0, 1]");
        assert_eq!(
            err("CORRUPT NaN"),
            "bad probability: \"NaN\" is not in [0, 1]"
        );
        assert_eq!(err("DELAY 9 3"), "bad delay: 9 ms is more than 3 ms");
        assert_eq!(
            err("DELAY 0 -1"),
            "bad delay: \"-1\" is not a whole number of ms up to 3600000"
        );
        assert_eq!(err("HOLD"), "HOLD takes <id> [<id>...]");
        assert_eq!(err("SET k %G0"), "bad value: bad escape at byte 0");
        assert_eq!(err("SET k %4"), "bad value: bad escape at byte 0");
        assert_eq!(err("GET %FF"), "bad key: not UTF-8 once decoded");
        assert_eq!(
            err("PEER x 1.2.3.4:5"),
            "bad node id: \"x\" is not a node id"
        );
        assert_eq!(
            err("PEER 1 nowhere"),
            "bad address: \"nowhere\" is not host:port"
        );
    }

    #[test]
    fn encoding_round_trips_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        let e = encode(&all);
        assert!(!e.contains(' ') && e.is_ascii());
        assert_eq!(decode(&e).unwrap(), all);
        assert_eq!(encode(b"a%b c"), "a%25b%20c");
    }

    #[test]
    fn dump_lines_and_versions_round_trip() {
        let version = Timestamp {
            physical_ms: 1_700_000_000_123,
            logical: 7,
            node: NodeId(4),
        };
        assert_eq!(parse_version(&version.to_string()), Some(version));
        for value in [Some(b"x y".to_vec()), None] {
            let d = DumpLine {
                key: "k%".into(),
                version,
                value,
            };
            assert_eq!(DumpLine::parse(&d.to_string()), Some(d));
        }
        assert_eq!(DumpLine::parse("LIVE k 1.2@3"), None);
        assert_eq!(DumpLine::parse("GONE k 1.x@3"), None);
        assert_eq!(
            field("STATS rounds=4 bytes_sent=99", "bytes_sent"),
            Some(99)
        );
        assert_eq!(field("STATS rounds=4", "bytes_sent"), None);
    }
}
