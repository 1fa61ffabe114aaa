//! Hostile input: random, mutated and truncated bytes decode to a value, an
//! incomplete frame or a typed error; never a panic, never an allocation
//! beyond the cap.

use bytes::{Bytes, BytesMut};
use multinode_wire::{
    Beyond, ClusterFrame, ClusterId, FRAME_HEADER_LEN, FrameCodec, GossipPdu, Hello, LineCodec,
    LwwEntry, LwwMessage, MessageCodec, NodeId, RemoteTell, Reply, Request, Timestamp, WireError,
};
use tokio_util::codec::{Decoder, Encoder};

use crate::support::{SplitMix, largest_allocation, seed};

const CAP: usize = 1024;

fn samples() -> Vec<BytesMut> {
    let mut codec = MessageCodec::<ClusterFrame>::with_max(CAP);
    let frames = [
        ClusterFrame::Gossip(GossipPdu::Opaque {
            schema: 3,
            body: Bytes::from(vec![7; 200]),
        }),
        ClusterFrame::Tell(RemoteTell {
            target_path: "/user/worker-17".into(),
            manifest: "app.Msg".into(),
            payload: Bytes::from_static(b"hello"),
            sender_path: Some("/user/x".into()),
        }),
        ClusterFrame::Gossip(GossipPdu::Lww(LwwMessage::Sync {
            reply: true,
            era: 2,
            answers: 0,
            watermarks: vec![stamp(1), stamp(2)],
            entries: vec![LwwEntry {
                key: "k".into(),
                value: Some(Bytes::from_static(b"v")),
                version: stamp(1),
            }],
            partial: vec![stamp(2)],
            sent_ms: 1_767_225_600_000,
            beyond: vec![Beyond {
                origin: NodeId(3),
                fingerprint: u64::MAX,
            }],
        })),
    ];
    frames
        .iter()
        .map(|f| {
            let mut b = BytesMut::new();
            codec.encode(f, &mut b).unwrap();
            b
        })
        .collect()
}

fn stamp(node: u64) -> Timestamp {
    Timestamp {
        physical_ms: 1_767_225_600_000,
        logical: 0,
        node: NodeId(node),
    }
}

/// Decodes `input` to the end, asserting only typed outcomes.
fn decode_all(input: &[u8]) -> usize {
    let mut codec = MessageCodec::<ClusterFrame>::with_max(CAP);
    let mut buf = BytesMut::with_capacity(input.len());
    buf.extend_from_slice(input);
    let mut frames = 0;
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(_)) => frames += 1,
            Ok(None) => return frames,
            Err(WireError::FrameTooLarge { len, max }) => {
                assert!(len > max as u64);
                return frames;
            }
            Err(WireError::Decode { .. }) => {} // that frame was consumed: go on
            Err(e) => panic!("unexpected error kind: {e}"),
        }
    }
}

/// The same for channel frames: every outcome typed, nothing over the cap
/// allocated.
fn decode_all_channel(input: &[u8]) {
    let mut codec = multinode_wire::ChannelCodec::with_max(CAP);
    let mut buf = BytesMut::from(input);
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(WireError::FrameTooLarge { len, max }) => {
                assert!(len > max as u64);
                return;
            }
            Err(WireError::Decode { .. }) => {}
            Err(e) => panic!("unexpected error kind: {e}"),
        }
    }
}

#[test]
fn random_and_mutated_frames() {
    let mut rng = SplitMix(seed("random_and_mutated_frames"));
    let samples = samples();
    let mut worst = 0;
    for i in 0..100_000 {
        let input: Vec<u8> = match i % 4 {
            // Pure noise, with a plausible small length prefix half the time.
            0 => {
                let n = rng.below(64);
                let mut v: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                if rng.below(2) == 0 && n >= 4 {
                    v[..4].copy_from_slice(&((n - 4) as u32).to_be_bytes());
                }
                v
            }
            // A valid frame with a few bytes flipped.
            1 | 2 => {
                let mut v = samples[rng.below(samples.len())].to_vec();
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(v.len());
                    v[at] ^= 1 << rng.below(8);
                }
                v
            }
            // A valid frame whose length prefix is right but whose payload
            // claims huge containers (bincode's 0xfd u64 varint).
            _ => {
                // A tell's path, or an LWW digest's or sync's count.
                let heads: [&[u8]; 3] = [&[1], &[0, 1, 0, 0], &[0, 1, 1, 1, 0, 0, 0]];
                let mut payload = heads[rng.below(3)].to_vec();
                payload.push(0xfd);
                payload.extend_from_slice(&(u64::MAX >> rng.below(40)).to_le_bytes());
                payload.extend((0..rng.below(16)).map(|_| rng.next_u64() as u8));
                let mut v = (payload.len() as u32).to_be_bytes().to_vec();
                v.extend(payload);
                v
            }
        };
        let (_, a) = largest_allocation(|| decode_all(&input));
        let ((), b) = largest_allocation(|| decode_all_channel(&input));
        // A claimed frame up to the cap is reserved whole in the receive
        // buffer; nothing a payload claims may add to that.
        assert!(
            a.max(b) <= receive_bound(&input),
            "an allocation of {} bytes exceeds the cap, decoding input {i}: {input:02x?}",
            a.max(b)
        );
        worst = worst.max(a).max(b);
    }
    println!("largest allocation: {worst} bytes");
}

#[test]
fn every_truncation_is_incomplete_not_an_error() {
    for sample in samples() {
        for cut in 0..sample.len() {
            let mut codec = MessageCodec::<ClusterFrame>::with_max(CAP);
            let mut buf = BytesMut::from(&sample[..cut]);
            assert!(
                matches!(codec.decode(&mut buf), Ok(None)),
                "a {cut}-byte prefix of a {}-byte frame",
                sample.len()
            );
        }
    }
}

#[test]
fn hostile_length_prefix_is_refused_before_allocation() {
    let mut codec = FrameCodec::with_max(CAP);
    let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
    let (res, largest) = largest_allocation(|| codec.decode(&mut buf));
    assert!(matches!(
        res,
        Err(WireError::FrameTooLarge { len, max: CAP }) if len == u64::from(u32::MAX)
    ));
    assert!(
        largest < 64,
        "allocated {largest} bytes for a refused frame"
    );
}

#[test]
fn frame_exactly_at_the_cap_and_one_over() {
    let mut codec = FrameCodec::with_max(CAP);
    let mut buf = BytesMut::new();
    codec.encode(&[5u8; CAP][..], &mut buf).unwrap();
    assert_eq!(buf.len(), CAP + 4);
    assert_eq!(codec.decode(&mut buf).unwrap().unwrap().len(), CAP);

    let over = [5u8; CAP + 1];
    let err = codec.encode(&over[..], &mut buf).unwrap_err();
    assert!(matches!(err, WireError::FrameTooLarge { len, max: CAP } if len == CAP as u64 + 1));
    assert!(buf.is_empty(), "a refused frame left bytes behind");

    let mut wire = BytesMut::from(&((CAP + 1) as u32).to_be_bytes()[..]);
    wire.extend_from_slice(&over);
    assert!(matches!(
        codec.decode(&mut wire),
        Err(WireError::FrameTooLarge { len, .. }) if len == CAP as u64 + 1
    ));
}

#[test]
fn typed_message_over_the_cap_is_refused_on_encode() {
    let mut codec = MessageCodec::<ClusterFrame>::with_max(CAP);
    let mut buf = BytesMut::from(&b"keep"[..]);
    let big = ClusterFrame::Gossip(GossipPdu::Opaque {
        schema: 1,
        body: Bytes::from(vec![0; CAP]),
    });
    assert!(matches!(
        codec.encode(&big, &mut buf),
        Err(WireError::FrameTooLarge { max: CAP, .. })
    ));
    assert_eq!(&buf[..], b"keep", "a refused message left bytes behind");
    // The codec is still usable and a message of exactly the cap passes.
    let fits = ClusterFrame::Gossip(GossipPdu::Opaque {
        schema: 1,
        body: Bytes::from(vec![0; CAP - 6]), // 2 tags, schema, 3-byte length (0xfb + u16)
    });
    codec.encode(&fits, &mut buf).unwrap();
    assert_eq!(
        buf.len(),
        4 + 4 + CAP,
        "\"keep\", a header, and a payload of exactly the cap"
    );
}

#[test]
fn trailing_bytes_are_a_decode_error() {
    let mut codec = MessageCodec::<Hello>::new();
    let mut buf = BytesMut::new();
    codec
        .encode(Hello::new(ClusterId(1), NodeId(1)), &mut buf)
        .unwrap();
    buf.extend_from_slice(&[0]);
    buf[3] += 1; // the length now covers the extra byte
    assert!(matches!(
        codec.decode(&mut buf),
        Err(WireError::Decode { .. })
    ));
}

#[test]
fn random_lines_never_panic() {
    let mut rng = SplitMix(seed("random_lines_never_panic"));
    let words = [
        "HELLO", "BARRIER", "GATHER", "LEAVE", "OK", "TIMEOUT", "FAILED", "ERR", "VALUE",
        "WELCOME", "BYE",
    ];
    for _ in 0..100_000 {
        let mut line = String::new();
        for k in 0..rng.below(5) {
            if k > 0 || rng.below(8) == 0 {
                line.push(if rng.below(10) == 0 { '\t' } else { ' ' });
            }
            match rng.below(4) {
                0 => line.push_str(words[rng.below(words.len())]),
                1 => line.push_str(&rng.next_u64().to_string()),
                2 => line.push_str("missing=1,,2"),
                _ => line.extend(
                    (0..rng.below(300))
                        .map(|_| char::from_u32(rng.below(0x800) as u32).unwrap_or('x')),
                ),
            }
        }
        // Any outcome is fine as long as it is typed; an accepted line must
        // print back to something that parses to the same value.
        if let Ok(r) = line.parse::<Request>() {
            assert_eq!(r.to_string().parse::<Request>().unwrap(), r);
        }
        if let Ok(r) = line.parse::<Reply>() {
            assert_eq!(r.to_string().parse::<Reply>().unwrap(), r);
        }
    }
}

#[test]
fn line_codec_caps_and_survives_bad_utf8() {
    let mut codec = LineCodec::with_max(16);
    let mut buf = BytesMut::from(&b"BARRIER \xff\xfe\nBARRIER a\r\n"[..]);
    let bad = codec.decode(&mut buf).unwrap().unwrap();
    let err = bad.parse::<Request>().unwrap_err();
    assert_eq!(err.to_string(), "malformed line: line is not valid utf-8");
    assert!(bad.parse::<Reply>().is_err());
    assert_eq!(
        codec.decode(&mut buf).unwrap().as_deref(),
        Some("BARRIER a")
    );

    let mut buf = BytesMut::from(&b"0123456789abcdefXYZ"[..]);
    assert!(matches!(
        codec.decode(&mut buf),
        Err(WireError::LineTooLong { max: 16 })
    ));
    // Feeding more of that line keeps failing rather than buffering it.
    buf.extend_from_slice(&[b'z'; 64]);
    assert!(codec.decode(&mut buf).is_err() || buf.len() <= 16);

    let mut out = BytesMut::new();
    assert!(matches!(
        codec.encode("x".repeat(17), &mut out),
        Err(WireError::LineTooLong { .. })
    ));
    assert!(matches!(
        codec.encode("a\nb", &mut out),
        Err(WireError::MalformedLine { .. })
    ));
    assert!(out.is_empty());
}

#[test]
fn labels_are_bounded_and_clean() {
    use multinode_wire::{Label, MAX_LABEL_LEN, Reply};
    assert!(Label::new("x".repeat(MAX_LABEL_LEN)).is_ok());
    assert!(Label::new("x".repeat(MAX_LABEL_LEN + 1)).is_err());
    assert!(Label::new(format!("a {}", "x".repeat(MAX_LABEL_LEN - 2))).is_ok());
    assert!(Label::new(format!("a {}", "x".repeat(MAX_LABEL_LEN - 1))).is_err());
    for good in ["phase one", "a b c", "é → ok"] {
        assert!(Label::new(good).is_ok(), "{good:?} refused");
    }
    for bad in [
        "",
        "a  b",
        "a\tb",
        "a\u{0}b",
        "a\u{85}b",
        "trailing ",
        " leading",
        "\u{2003}",
        "a missing=1",
    ] {
        assert!(Label::new(bad).is_err(), "{bad:?} accepted");
    }
    // Every reply that carries the longest label still fits a line.
    let label = Label::new(format!("a {}", "x".repeat(MAX_LABEL_LEN - 2))).unwrap();
    let failed = Reply::Failed {
        label: label.clone(),
        cause: "y".repeat(5000),
    };
    let timeout = Reply::Timeout {
        label,
        missing: (0..1000)
            .map(|i| multinode_wire::NodeId(u64::from(u32::MAX) - i))
            .collect(),
    };
    for reply in [failed, timeout] {
        let line = reply.to_string();
        assert!(
            line.len() <= multinode_wire::DEFAULT_MAX_LINE,
            "{}",
            line.len()
        );
    }
}

#[test]
fn a_failed_line_about_a_label_of_several_words_reads_by_the_label_awaited() {
    use multinode_wire::{Label, Reply};
    let label = Label::new("phase two").unwrap();
    let line = "FAILED phase two node 1 disconnected";
    assert_eq!(
        Reply::parse_about(line, &label).unwrap(),
        Reply::Failed {
            label: label.clone(),
            cause: "node 1 disconnected".into()
        }
    );
    // Another label's failure stays about that label.
    let other = Reply::parse_about("FAILED phase node 1 disconnected", &label).unwrap();
    assert_eq!(other.label().map(Label::as_str), Some("phase"));
}

/// A frame header that claims a length within the cap makes the codec
/// reserve the whole frame in its receive buffer: bounded by the cap (plus
/// the header and the bytes already buffered), whatever the payload claims.
/// Found by `random_and_mutated_frames` (seed 1795381742855472825): a
/// mutated sync whose trailing bytes read as a channel frame of 1,025 bytes.
fn receive_bound(input: &[u8]) -> usize {
    CAP + 1 + FRAME_HEADER_LEN + input.len()
}

#[test]
fn a_header_within_the_cap_reserves_no_more_than_the_cap() {
    // 42 bytes of frame, then a header claiming 1,025 bytes (the channel
    // codec's cap: 1,024 of message and a tag byte) with 12 of them sent.
    let mut input = vec![0, 0, 0, 42, 0];
    input.extend(std::iter::repeat_n(7, 41));
    input.extend([0, 0, 4, 1]);
    input.extend([1; 12]);
    let ((), largest) = largest_allocation(|| decode_all_channel(&input));
    assert!(largest > CAP, "the frame is reserved whole: {largest}");
    assert!(largest <= receive_bound(&input), "{largest}");
}

/// A message type that does not know its length: it takes the capped
/// writer, which must refuse over the cap and leave nothing behind too.
#[derive(serde::Serialize, serde::Deserialize)]
struct Unsized(String);
impl multinode_wire::Message for Unsized {}

#[test]
fn a_message_of_unknown_length_over_the_cap_is_refused_on_encode() {
    let mut codec = MessageCodec::<Unsized>::with_max(CAP);
    let mut buf = BytesMut::from(&b"keep"[..]);
    let big = Unsized("x".repeat(CAP));
    assert!(matches!(
        codec.encode(&big, &mut buf),
        Err(WireError::FrameTooLarge { max: CAP, .. })
    ));
    assert_eq!(&buf[..], b"keep", "a refused message left bytes behind");
    // 3-byte length (0xfb + u16) and the text: exactly the cap.
    codec
        .encode(&Unsized("x".repeat(CAP - 3)), &mut buf)
        .unwrap();
    assert_eq!(buf.len(), 4 + 4 + CAP);
}

/// A decoded list is held while the node works through its queue: one that
/// grew past the count trusted up front gives back the room it did not use.
#[test]
fn a_decoded_list_holds_no_room_beyond_its_items() {
    let entries: Vec<LwwEntry> = (0..1000)
        .map(|i| LwwEntry {
            key: format!("key-{i}"),
            value: None,
            version: stamp(i % 7),
        })
        .collect();
    let frame = ClusterFrame::Gossip(GossipPdu::Lww(LwwMessage::Sync {
        reply: false,
        era: 1,
        answers: 1,
        watermarks: vec![stamp(1)],
        entries,
        partial: vec![],
        sent_ms: 0,
        beyond: vec![],
    }));
    let mut codec = MessageCodec::<ClusterFrame>::new();
    let mut buf = BytesMut::new();
    codec.encode(&frame, &mut buf).unwrap();
    let back = codec.decode(&mut buf).unwrap().expect("a whole frame");
    assert_eq!(back, frame);
    let ClusterFrame::Gossip(GossipPdu::Lww(LwwMessage::Sync { entries, .. })) = back else {
        unreachable!("decoded as encoded");
    };
    assert_eq!(
        entries.capacity(),
        1000,
        "room for entries that are not there"
    );
}
