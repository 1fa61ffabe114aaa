//! The append-only log beside the snapshot, as bytes: one line per write
//! cycle, `<crc32 of the JSON, 8 hex digits> <JSON>\n`. Sans-IO.

/// Frames `json` (which holds no newline: compact JSON escapes them) as
/// one checksummed line.
pub(crate) fn encode_line(json: &[u8]) -> Vec<u8> {
    let mut line = Vec::with_capacity(json.len() + 10);
    line.extend_from_slice(format!("{:08x} ", crc32fast::hash(json)).as_bytes());
    line.extend_from_slice(json);
    line.push(b'\n');
    line
}

/// A log's complete lines, and what follows them.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Lines<'a> {
    /// The JSON of each complete, intact line, in order.
    pub(crate) lines: Vec<&'a [u8]>,
    /// How many bytes those lines take: where a torn tail starts.
    pub(crate) good: usize,
    /// Whether bytes follow that end without a newline: an append cut
    /// short by a crash, never acknowledged.
    pub(crate) torn: bool,
}

/// Splits a log into lines. A line that ends in a newline but fails its
/// checksum is damage, wherever it is: an error naming its byte offset.
/// An unterminated last line is a torn tail.
pub(crate) fn split(bytes: &[u8]) -> Result<Lines<'_>, String> {
    let mut lines = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some(len) = bytes[at..].iter().position(|&b| b == b'\n') else {
            return Ok(Lines {
                lines,
                good: at,
                torn: true,
            });
        };
        let line = &bytes[at..at + len];
        let intact = line.len() > 9
            && line[8] == b' '
            && std::str::from_utf8(&line[..8])
                .ok()
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .is_some_and(|crc| crc == crc32fast::hash(&line[9..]));
        if !intact {
            return Err(format!("the log line at byte {at} fails its checksum"));
        }
        lines.push(&line[9..]);
        at += len + 1;
    }
    Ok(Lines {
        lines,
        good: at,
        torn: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_a_torn_tail_is_told_from_damage() {
        let mut log = encode_line(b"{\"a\":1}");
        log.extend(encode_line(b"{\"b\":2}"));
        let whole = log.len();
        let got = split(&log).unwrap();
        assert_eq!(got.lines, [&b"{\"a\":1}"[..], b"{\"b\":2}"]);
        assert_eq!((got.good, got.torn), (whole, false));
        // Every cut inside the second line is a torn tail after the first.
        let first = encode_line(b"{\"a\":1}").len();
        for cut in first + 1..whole {
            let got = split(&log[..cut]).unwrap();
            assert_eq!((got.lines.len(), got.good, got.torn), (1, first, true));
        }
        // A flipped byte in a terminated line is damage, not a tail.
        for i in 0..first - 1 {
            let mut bad = log.clone();
            bad[i] ^= 0x01;
            assert!(split(&bad).is_err(), "byte {i}");
        }
        // So is a bad line at the very end, if it is terminated.
        let mut bad = log.clone();
        bad[whole - 3] ^= 0x01;
        assert!(split(&bad).is_err());
    }
}
