//! The append-only log beside the snapshot, as bytes: one line per write
//! cycle, `<crc32 of the JSON, 8 hex digits> <JSON>\n`, then zeros: room
//! made ahead for the lines to come, so that writing one changes no file
//! length (an fsync then has no metadata to commit). Sans-IO.

/// Frames `json` (which holds no newline: compact JSON escapes them) as
/// one checksummed line.
pub(crate) fn encode_line(json: &[u8]) -> Vec<u8> {
    let mut line = Vec::with_capacity(json.len() + 10);
    line.extend_from_slice(format!("{:08x} ", crc32fast::hash(json)).as_bytes());
    line.extend_from_slice(json);
    line.push(b'\n');
    line
}

/// Serializes `value` as compact JSON framed as one checksummed line, as
/// [`encode_line`] does, in one buffer: a large cycle's record is not held
/// twice.
pub(crate) fn line_of<T: serde::Serialize>(value: &T) -> serde_json::Result<Vec<u8>> {
    const CRC: usize = 8;
    let mut line = Vec::with_capacity(256);
    line.extend_from_slice(&[b'0'; CRC]);
    line.push(b' ');
    serde_json::to_writer(&mut line, value)?;
    let crc = format!("{:08x}", crc32fast::hash(&line[CRC + 1..]));
    line[..CRC].copy_from_slice(crc.as_bytes());
    line.push(b'\n');
    Ok(line)
}

/// How much room to make ahead of a log whose lines end at `end`: as much
/// again, within bounds, so a log is extended a few times in its life.
pub(crate) fn room_after(end: u64) -> u64 {
    end.clamp(4 * 1024, 256 * 1024)
}

/// A log's complete lines, and what follows them.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Lines<'a> {
    /// The JSON of each complete, intact line, in order.
    pub(crate) lines: Vec<&'a [u8]>,
    /// How many bytes those lines take: where the next line goes, and
    /// where a torn tail starts.
    pub(crate) good: usize,
    /// Whether a write cut short by a crash, never acknowledged, follows
    /// those lines (not just zeros): it must be cut before the next line.
    pub(crate) torn: bool,
}

/// Splits a log into lines. What follows the last intact line is room
/// (zeros), or a torn tail: bytes without a newline, or a last line that
/// fails its checksum with zeros in it where the write did not reach (no
/// line holds a zero byte: compact JSON escapes it). Any other line that
/// fails its checksum is damage, wherever it is: an error naming its byte
/// offset.
pub(crate) fn split(bytes: &[u8]) -> Result<Lines<'_>, String> {
    let mut lines = Vec::new();
    let mut at = 0;
    let zeros = |b: &[u8]| b.iter().all(|&b| b == 0);
    while at < bytes.len() {
        let torn = |lines| {
            Ok(Lines {
                lines,
                good: at,
                torn: true,
            })
        };
        let Some(len) = bytes[at..].iter().position(|&b| b == b'\n') else {
            if zeros(&bytes[at..]) {
                break;
            }
            return torn(lines);
        };
        let line = &bytes[at..at + len];
        let intact = line.len() > 9
            && line[8] == b' '
            && std::str::from_utf8(&line[..8])
                .ok()
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .is_some_and(|crc| crc == crc32fast::hash(&line[9..]));
        if !intact {
            if line.contains(&0) && zeros(&bytes[at + len + 1..]) {
                return torn(lines);
            }
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
    fn a_line_of_a_value_is_the_line_of_its_json() {
        let value = serde_json::json!({"set": {"k": {"epoch": 3, "value": "a\nb"}}});
        let line = line_of(&value).unwrap();
        assert_eq!(line, encode_line(&serde_json::to_vec(&value).unwrap()));
        let lines = split(&line).unwrap();
        assert_eq!(lines.lines.len(), 1);
        assert_eq!(lines.good, line.len());
    }

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

    #[test]
    fn zeros_after_the_lines_are_room_and_a_write_into_them_cut_short_is_a_torn_tail() {
        let first = encode_line(b"{\"a\":1}");
        let second = encode_line(b"{\"b\":22222222}");
        let mut log = first.clone();
        log.resize(first.len() + 200, 0);
        let got = split(&log).unwrap();
        assert_eq!(got.lines, [&b"{\"a\":1}"[..]]);
        assert_eq!((got.good, got.torn), (first.len(), false));
        // The second line written into the room whole: both lines, room after.
        let mut whole = log.clone();
        whole[first.len()..first.len() + second.len()].copy_from_slice(&second);
        let got = split(&whole).unwrap();
        assert_eq!(got.lines.len(), 2);
        assert_eq!((got.good, got.torn), (first.len() + second.len(), false));
        // Any part of it missing (zeros where the write did not reach, at
        // its start, its middle or its end): a torn tail after the first.
        for hole in 0..second.len() {
            for width in [1, 3, second.len()] {
                let mut cut = whole.clone();
                let from = first.len() + hole;
                let to = (from + width).min(first.len() + second.len());
                cut[from..to].fill(0);
                let got = split(&cut).unwrap();
                // A hole over the whole line leaves only room.
                let torn = to - from < second.len();
                assert_eq!(
                    (got.lines.len(), got.good, got.torn),
                    (1, first.len(), torn),
                    "a hole of {width} at {hole}"
                );
            }
        }
        // A line that fails its checksum with no zero in it is damage,
        // even at the end with room after it.
        let mut bad = whole.clone();
        bad[first.len() + 12] ^= 0x01;
        assert!(split(&bad).is_err());
        // And so is one with a zero in it when a line follows it.
        let mut bad = whole.clone();
        bad[first.len() + 12] = 0;
        bad.truncate(first.len() + second.len());
        bad.extend(encode_line(b"{\"c\":3}"));
        assert!(split(&bad).is_err());
    }
}
