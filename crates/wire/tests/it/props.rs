//! Round-trip and ordering properties, seeded from `MULTINODE_SEED`.

use bytes::{Bytes, BytesMut};
use multinode_wire::{
    Beyond, ClusterFrame, ClusterId, GossipPdu, Hello, HybridClock, Label, LineCodec, LwwEntry,
    LwwMessage, MessageCodec, NodeId, RemoteTell, Reply, Request, Timestamp, Value, WireError,
};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use tokio_util::codec::{Decoder, Encoder};

use crate::support::proptest_config;

fn token() -> impl Strategy<Value = String> {
    // Printable, no whitespace, some non-ASCII; 1..=256 bytes holds for these.
    "[a-zA-Z0-9:./_\\-\\[\\]é→]{1,60}"
}

fn label() -> impl Strategy<Value = Label> {
    token().prop_map(|s| Label::new(s).expect("strategy makes valid labels"))
}

fn value() -> impl Strategy<Value = Value> {
    token().prop_map(|s| Value::new(s).expect("strategy makes valid values"))
}

fn node() -> impl Strategy<Value = NodeId> + Clone {
    prop_oneof![0u64..300, any::<u64>()].prop_map(NodeId)
}

fn frame() -> impl Strategy<Value = ClusterFrame> {
    let bytes = proptest::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from);
    prop_oneof![
        (any::<u16>(), bytes.clone())
            .prop_map(|(schema, body)| ClusterFrame::Gossip(GossipPdu::Opaque { schema, body })),
        (
            ".{0,40}",
            ".{0,20}",
            bytes.clone(),
            proptest::option::of(".{0,40}")
        )
            .prop_map(
                |(target_path, manifest, payload, sender_path)| ClusterFrame::Tell(RemoteTell {
                    target_path,
                    manifest,
                    payload,
                    sender_path,
                })
            ),
        lww(bytes).prop_map(|m| ClusterFrame::Gossip(GossipPdu::Lww(m))),
    ]
}

fn stamp() -> impl Strategy<Value = Timestamp> + Clone {
    (any::<u64>(), any::<u32>(), node()).prop_map(|(physical_ms, logical, node)| Timestamp {
        physical_ms,
        logical,
        node,
    })
}

fn beyond() -> impl Strategy<Value = Beyond> + Clone {
    (node(), any::<u64>()).prop_map(|(origin, fingerprint)| Beyond {
        origin,
        fingerprint,
    })
}

fn lww(bytes: impl Strategy<Value = Bytes> + Clone) -> impl Strategy<Value = LwwMessage> {
    let stamps = proptest::collection::vec(stamp(), 0..6);
    let beyond = proptest::collection::vec(beyond(), 0..4);
    let entry =
        (".{0,30}", proptest::option::of(bytes), stamp()).prop_map(|(key, value, version)| {
            LwwEntry {
                key,
                value,
                version,
            }
        });
    prop_oneof![
        (any::<u32>(), stamps.clone(), any::<u64>(), beyond.clone()).prop_map(
            |(era, watermarks, sent_ms, beyond)| LwwMessage::Digest {
                era,
                watermarks,
                sent_ms,
                beyond,
            }
        ),
        (
            (any::<bool>(), any::<u32>(), any::<u32>(), any::<u64>()),
            stamps.clone(),
            proptest::collection::vec(entry, 0..6),
            stamps,
            beyond,
        )
            .prop_map(
                |((reply, era, answers, sent_ms), watermarks, entries, partial, beyond)| {
                    LwwMessage::Sync {
                        reply,
                        era,
                        answers,
                        watermarks,
                        entries,
                        partial,
                        sent_ms,
                        beyond,
                    }
                }
            ),
    ]
}

fn run<S: Strategy>(
    name: &str,
    cases: u32,
    s: S,
    f: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let mut runner = TestRunner::new(proptest_config(name, cases));
    if let Err(e) = runner.run(&s, f) {
        panic!("{name}: {e}");
    }
}

#[test]
fn frames_round_trip_in_any_chunking() {
    let s = (proptest::collection::vec(frame(), 1..8), 1usize..50);
    run(
        "frames_round_trip_in_any_chunking",
        256,
        s,
        |(frames, chunk)| {
            let mut codec = MessageCodec::<ClusterFrame>::new();
            let mut wire = BytesMut::new();
            for f in &frames {
                codec
                    .encode(f, &mut wire)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            // Feed the stream `chunk` bytes at a time: incomplete is Ok(None).
            let mut got = Vec::new();
            let mut buf = BytesMut::new();
            for piece in wire.chunks(chunk) {
                buf.extend_from_slice(piece);
                while let Some(f) = codec
                    .decode(&mut buf)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?
                {
                    got.push(f);
                }
            }
            prop_assert_eq!(got, frames);
            prop_assert!(buf.is_empty());
            Ok(())
        },
    );
}

/// What a line reader should make of `input`, by the definition: each
/// `\n`-terminated line of at most `max` bytes is its text (`\r` before the
/// newline dropped, bytes that are not UTF-8 as U+FFFD); a longer one is one
/// error and nothing of it; an unterminated tail is read at the end.
fn lines_by_definition(input: &[u8], max: usize) -> Vec<Result<String, ()>> {
    let text = |l: &[u8]| {
        let l = l.strip_suffix(b"\r").unwrap_or(l);
        String::from_utf8_lossy(l).into_owned()
    };
    let mut out = Vec::new();
    let mut pieces = input.split(|b| *b == b'\n').peekable();
    while let Some(line) = pieces.next() {
        let last = pieces.peek().is_none();
        if last && line.is_empty() {
            break;
        }
        out.push(if line.len() > max {
            Err(())
        } else {
            Ok(text(line))
        });
    }
    out
}

/// The line codec splits its own input: in any chunking, and through either
/// way of reading it (a copy, or the text where it lies), it reads what the
/// definition says, lines over the cap included.
#[test]
fn lines_split_as_defined_in_any_chunking() {
    let byte = prop_oneof![
        6 => b'a'..=b'z',
        2 => Just(b'\n'),
        1 => Just(b'\r'),
        1 => Just(b' '),
        1 => any::<u8>(),
    ];
    let input = proptest::collection::vec(byte, 0..200);
    run(
        "lines_split_as_defined_in_any_chunking",
        1024,
        (input, 1usize..24, 1usize..40, any::<bool>()),
        |(input, max, chunk, in_place)| {
            let mut codec = LineCodec::with_max(max);
            let mut got = Vec::new();
            let mut buf = BytesMut::new();
            let read = |codec: &mut LineCodec, buf: &mut BytesMut| {
                if in_place {
                    codec.decode_with(buf, str::to_owned)
                } else {
                    codec.decode(buf)
                }
            };
            for piece in input.chunks(chunk) {
                buf.extend_from_slice(piece);
                // An error is followed by more reading, as a caller that
                // reads on would; the definition says what it then reads.
                for _ in 0..input.len() + 2 {
                    match read(&mut codec, &mut buf) {
                        Ok(Some(line)) => got.push(Ok(line)),
                        Ok(None) => break,
                        Err(WireError::LineTooLong { max: m }) if m == max => got.push(Err(())),
                        Err(e) => return Err(TestCaseError::fail(e.to_string())),
                    }
                }
            }
            loop {
                match codec.decode_eof(&mut buf) {
                    Ok(Some(line)) => got.push(Ok(line)),
                    Ok(None) => break,
                    Err(WireError::LineTooLong { .. }) => got.push(Err(())),
                    Err(e) => return Err(TestCaseError::fail(e.to_string())),
                }
            }
            prop_assert_eq!(got, lines_by_definition(&input, max), "{:?}", input);
            Ok(())
        },
    );
}

/// A bincode-standard varint of `v` in the form given: 0 the shortest, 1
/// the 3-byte form (`251`, u16), 2 the 5-byte one (`252`, u32).
fn varint(v: u64, form: u8, out: &mut Vec<u8>) {
    match form {
        0 if v < 251 => out.push(v as u8),
        0 | 1 if v <= 0xffff => {
            out.push(251);
            out.extend_from_slice(&(v as u16).to_le_bytes());
        }
        _ => {
            out.push(252);
            out.extend_from_slice(&(v as u32).to_le_bytes());
        }
    }
}

/// The codec reads `Gossip(Opaque)` frames by hand: whatever the payload
/// (the shapes it reads, longer varint forms, lengths one off, bytes cut
/// short or left over, other tags), the codec decides it as bincode does.
#[test]
fn an_opaque_frame_read_by_hand_decodes_as_bincode_does() {
    let s = (
        (0u8..2, 0u8..2),
        prop_oneof![0u64..300, 65_000u64..70_000],
        (0u8..3, -1i64..=1),
        proptest::collection::vec(any::<u8>(), 0..600),
        (0u8..4, any::<u8>()),
    );
    run(
        "an_opaque_frame_read_by_hand_decodes_as_bincode_does",
        1024,
        s,
        |((tag0, tag1), schema, (len_form, skew), body, (schema_form, extra))| {
            let mut payload = vec![tag0, tag1];
            varint(schema, schema_form.min(2), &mut payload);
            let claimed = (body.len() as i64 + skew).max(0) as u64;
            varint(claimed, len_form, &mut payload);
            payload.extend_from_slice(&body);
            if schema_form == 3 {
                payload.push(extra);
            }
            let general = bincode::serde::decode_from_slice::<ClusterFrame, _>(
                &payload,
                bincode::config::standard(),
            )
            .ok()
            .filter(|(_, used)| *used == payload.len())
            .map(|(f, _)| f);
            // The in-place reader takes exactly the shortest forms of an
            // opaque frame, and what it says, it says as bincode would.
            let short = |v: u64, form: u8| v <= 0xffff && (form == 0 || (form == 1 && v >= 251));
            let shortest = (tag0, tag1, skew) == (0, 0, 0)
                && schema_form < 3
                && short(schema, schema_form)
                && short(claimed, len_form);
            let read = ClusterFrame::opaque_gossip(&payload);
            prop_assert_eq!(read.is_some(), shortest, "{:?}", payload);
            if let Some((schema, body)) = read {
                let read = ClusterFrame::Gossip(GossipPdu::Opaque {
                    schema,
                    body: Bytes::copy_from_slice(body),
                });
                prop_assert_eq!(Some(read), general.clone(), "{:?}", payload);
            }
            let mut framed = BytesMut::new();
            framed.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            framed.extend_from_slice(&payload);
            let ours = MessageCodec::<ClusterFrame>::new().decode(&mut framed);
            match (ours, general) {
                (Ok(Some(a)), Some(b)) => prop_assert_eq!(a, b),
                (Err(_), None) => {}
                (ours, general) => {
                    return Err(TestCaseError::fail(format!(
                        "codec {ours:?}, bincode {general:?} for {payload:?}"
                    )));
                }
            }
            Ok(())
        },
    );
}

#[test]
fn payload_len_matches_the_encoder() {
    // Against bincode itself: the codec trusts `payload_len` (through
    // `Message::exact_len`) to size what it encodes, and writes an opaque
    // frame by hand.
    let check = |f: &ClusterFrame| -> Result<(), TestCaseError> {
        let plain = bincode::serde::encode_to_vec(f, bincode::config::standard())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(f.payload_len(), plain.len());
        let mut wire = BytesMut::new();
        MessageCodec::<ClusterFrame>::new()
            .encode(f, &mut wire)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&wire[4..], &plain[..]);
        Ok(())
    };
    run("payload_len_matches_the_encoder", 256, frame(), |f| {
        check(&f)
    });
    // Every varint width, in every length field.
    for len in [0, 250, 251, 65_535, 65_536, 70_000] {
        let body = Bytes::from(vec![7u8; len]);
        let text = "x".repeat(len);
        for schema in [0, 250, 251, u16::MAX] {
            check(&ClusterFrame::Gossip(GossipPdu::Opaque {
                schema,
                body: body.clone(),
            }))
            .unwrap();
        }
        check(&ClusterFrame::Tell(RemoteTell {
            target_path: text.clone(),
            manifest: text.clone(),
            payload: body.clone(),
            sender_path: Some(text),
        }))
        .unwrap();
    }
}

/// A message that does not know its length: the codec guesses its room
/// from the last one, so a run of sizes that jump up and down takes the
/// guess that fits, the one that is too small, and the capped writer.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Unsized(#[serde(deserialize_with = "multinode_wire::bounded::string")] String);
impl multinode_wire::Message for Unsized {}

#[test]
fn messages_of_unknown_length_encode_as_bincode_whatever_the_sizes_before() {
    let sizes = proptest::collection::vec(
        prop_oneof![0usize..40, 40usize..300, 300usize..100_000],
        1..12,
    );
    run(
        "messages_of_unknown_length_encode_as_bincode",
        128,
        sizes,
        |sizes| {
            let mut codec = MessageCodec::<Unsized>::new();
            let mut wire = BytesMut::from(&b"lead"[..]);
            let mut expected = b"lead".to_vec();
            let sent: Vec<Unsized> = sizes.iter().map(|&n| Unsized("y".repeat(n))).collect();
            for m in &sent {
                codec
                    .encode(m, &mut wire)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let plain = bincode::serde::encode_to_vec(m, bincode::config::standard())
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                expected.extend_from_slice(&(plain.len() as u32).to_be_bytes());
                expected.extend_from_slice(&plain);
            }
            prop_assert!(wire[..] == expected[..], "the frames differ from bincode's");
            let _ = wire.split_to(4);
            let mut got = Vec::new();
            while let Some(m) = codec
                .decode(&mut wire)
                .map_err(|e| TestCaseError::fail(e.to_string()))?
            {
                got.push(m);
            }
            prop_assert_eq!(got, sent);
            Ok(())
        },
    );
}

/// What the replica budgets for a sync besides its entries is never less
/// than such a sync takes as a frame, at the widest of every field; and an
/// LWW message's frame length is what the codec writes.
#[test]
fn a_sync_fits_its_overhead_and_frame_len_is_exact() {
    let s = (
        proptest::collection::vec(stamp(), 0..40),
        proptest::collection::vec(stamp(), 0..40),
        any::<bool>(),
        proptest::collection::vec(beyond(), 0..40),
    );
    run(
        "a_sync_fits_its_overhead",
        128,
        s,
        |(watermarks, partial, reply, beyond)| {
            let m = LwwMessage::Sync {
                reply,
                era: u32::MAX,
                answers: u32::MAX,
                watermarks: watermarks.clone(),
                entries: Vec::new(),
                partial: partial.clone(),
                sent_ms: u64::MAX,
                beyond: beyond.clone(),
            };
            let most = LwwMessage::sync_overhead(&watermarks, &beyond)
                + partial.len() * LwwMessage::MAX_PARTIAL_LEN;
            prop_assert!(m.frame_len() <= most);
            let frame = ClusterFrame::Gossip(GossipPdu::Lww(m.clone()));
            let mut wire = BytesMut::new();
            MessageCodec::<ClusterFrame>::new()
                .encode(&frame, &mut wire)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(m.frame_len(), wire.len());
            Ok(())
        },
    );
}

#[test]
fn hello_round_trips_and_checks() {
    let s = (any::<u16>(), any::<u64>(), node(), node());
    run(
        "hello_round_trips_and_checks",
        256,
        s,
        |(version, cluster, a, b)| {
            let hello = Hello {
                protocol_version: version,
                ..Hello::new(ClusterId(cluster), a)
            };
            let mut codec = MessageCodec::<Hello>::new();
            let mut buf = BytesMut::new();
            codec.encode(&hello, &mut buf).unwrap();
            prop_assert_eq!(codec.decode(&mut buf).unwrap(), Some(hello));
            let ours = Hello::new(ClusterId(cluster), b);
            let verdict = ours.check(&hello, None);
            prop_assert_eq!(
                verdict.is_ok(),
                version == multinode_wire::PROTOCOL_VERSION && a != b
            );
            Ok(())
        },
    );
}

#[test]
fn lines_round_trip() {
    let req = prop_oneof![
        proptest::option::of(node()).prop_map(Request::Hello),
        label().prop_map(Request::Barrier),
        (label(), value()).prop_map(|(l, v)| Request::Gather(l, v)),
        Just(Request::Leave),
    ];
    run("request_lines_round_trip", 512, req, |r| {
        let line = r.to_string();
        prop_assert!(line.len() <= multinode_wire::DEFAULT_MAX_LINE);
        prop_assert_eq!(line.parse::<Request>().unwrap(), r);
        Ok(())
    });
    let reply = prop_oneof![
        (node(), any::<u32>()).prop_map(|(node, nodes)| Reply::Welcome { node, nodes }),
        label().prop_map(Reply::Ok),
        (label(), node(), value()).prop_map(|(label, node, value)| Reply::Value {
            label,
            node,
            value
        }),
        (label(), proptest::collection::vec(node(), 0..100))
            .prop_map(|(label, missing)| Reply::Timeout { label, missing }),
        (label(), "[a-z0-9=]{1,10}( [a-z0-9()]{1,10}){0,5}")
            .prop_map(|(label, cause)| Reply::Failed { label, cause }),
        "[a-z]{1,10}( [a-z\"]{1,10}){0,5}".prop_map(Reply::Err),
        Just(Reply::Bye),
    ];
    run("reply_lines_round_trip", 512, reply, |r| {
        let line = r.to_string();
        prop_assert!(line.len() <= multinode_wire::DEFAULT_MAX_LINE);
        prop_assert_eq!(line.parse::<Reply>().unwrap(), r);
        Ok(())
    });
}

/// A value is refused exactly when it is empty, too long, or holds
/// whitespace or a control character, by Unicode's definitions, for ASCII
/// (read by bytes) as for the rest.
#[test]
fn values_refuse_whitespace_and_control_characters_by_unicodes_definition() {
    run(
        "values_refuse_whitespace_and_control_characters_by_unicodes_definition",
        1024,
        "[\\x00-\\x7f\u{85}\u{a0}\u{2028}\u{fffd}é]{0,8}",
        |s| {
            let allowed = !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c.is_control());
            prop_assert_eq!(Value::new(s.clone()).is_ok(), allowed, "{:?}", s);
            Ok(())
        },
    );
}

/// `parse_about` reads a gather's `VALUE` lines by a shorter path: it must
/// accept and refuse exactly what the general parse does, whatever follows
/// the label (spaces, control characters, U+FFFD, signs, empty words).
#[test]
fn value_lines_read_about_a_label_as_the_general_parse_reads_them() {
    // Mostly well-formed pieces, with every kind of flaw mixed in.
    let node = prop_oneof![4 => "[0-9]{1,20}", 1 => "[0-9+\\- a]{0,22}"];
    let sep = prop_oneof![4 => Just(" "), 1 => Just(""), 1 => Just("  "), 1 => Just("\t")];
    let value = prop_oneof![
        4 => "[a-z0-9:.é]{1,20}",
        1 => "[a-z0-9 \t\u{1}\u{7f}\u{85}\u{fffd}é:.]{0,24}",
        1 => "[a-z]{0,3}\u{fffd}[a-z]{0,3}",
        1 => "[a-z]{250,260}",
    ];
    let tail = (node, sep, value).prop_map(|(n, s, v)| format!("{n}{s}{v}"));
    run(
        "value_lines_read_about_a_label_as_the_general_parse_reads_them",
        1024,
        (label(), tail, any::<bool>()),
        |(label, tail, same)| {
            let about = if same {
                label.clone()
            } else {
                Label::new(format!("{label}x")).unwrap()
            };
            let line = format!("VALUE {label} {tail}");
            match (Reply::parse_about(&line, &about), line.parse::<Reply>()) {
                (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                (Err(_), Err(_)) => {}
                (a, b) => prop_assert!(false, "{line:?}: about {a:?}, general {b:?}"),
            }
            Ok(())
        },
    );
}

#[test]
fn free_text_never_breaks_a_line() {
    run("free_text_never_breaks_a_line", 512, ".{0,3000}", |cause| {
        let reply = Reply::Failed {
            label: Label::new("x").unwrap(),
            cause,
        };
        let line = reply.to_string();
        prop_assert!(!line.contains('\n') && !line.contains('\r'));
        prop_assert!(line.len() <= multinode_wire::DEFAULT_MAX_LINE);
        prop_assert!(line.parse::<Reply>().is_ok(), "{line:?}");
        Ok(())
    });
}

#[derive(Clone, Debug)]
enum Op {
    Now(u64),
    Observe {
        ms: u64,
        logical: u32,
        node: u64,
        wall: u64,
    },
}

#[test]
fn clock_is_strictly_monotonic_and_absorbs() {
    let op = prop_oneof![
        (0u64..1_000).prop_map(Op::Now),
        (
            0u64..1_200,
            prop_oneof![0u32..5, Just(u32::MAX - 1), Just(u32::MAX)],
            0u64..4,
            0u64..1_000
        )
            .prop_map(|(ms, logical, node, wall)| Op::Observe {
                ms,
                logical,
                node,
                wall
            }),
    ];
    let s = proptest::collection::vec(op, 1..60);
    run("clock_is_strictly_monotonic_and_absorbs", 512, s, |ops| {
        let me = NodeId(9);
        let mut clock = HybridClock::new(me, 100);
        let mut last: Option<Timestamp> = None;
        for op in ops {
            match op {
                Op::Now(wall) => {
                    let t = clock.now(wall);
                    prop_assert!(last.is_none_or(|l| t > l), "{t} not after {last:?}");
                    prop_assert!(t.physical_ms >= wall);
                    last = Some(t);
                }
                Op::Observe {
                    ms,
                    logical,
                    node,
                    wall,
                } => {
                    let remote = Timestamp {
                        physical_ms: ms,
                        logical,
                        node: NodeId(node),
                    };
                    let before = clock.last();
                    match clock.observe(remote, wall) {
                        Ok(t) => {
                            prop_assert!(t > remote && last.is_none_or(|l| t > l));
                            prop_assert_eq!(t.node, me);
                            last = Some(t);
                        }
                        Err(WireError::ClockDrift { .. }) => {
                            prop_assert!(ms > wall + 100);
                            prop_assert_eq!(
                                clock.last(),
                                before,
                                "a refused timestamp moved the clock"
                            );
                        }
                        Err(e) => prop_assert!(false, "unexpected error {e}"),
                    }
                }
            }
        }
        Ok(())
    });
}

#[test]
fn equal_clocks_on_two_nodes_never_tie() {
    run(
        "equal_clocks_on_two_nodes_never_tie",
        256,
        (0u64..10, 0u64..10, 0u64..100),
        |(a, b, wall)| {
            prop_assume!(a != b);
            let ta = HybridClock::new(NodeId(a), 0).now(wall);
            let tb = HybridClock::new(NodeId(b), 0).now(wall);
            prop_assert_ne!(ta, tb);
            prop_assert_eq!(ta < tb, a < b, "the node id breaks the tie");
            Ok(())
        },
    );
}
