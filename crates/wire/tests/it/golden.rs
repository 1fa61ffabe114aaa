//! The golden examples of docs/wire-format.md, checked both ways.

use bytes::{Bytes, BytesMut};
use multinode_wire::{
    Beyond, ChannelCodec, ChannelFrame, ClusterFrame, ClusterId, GossipPdu, Hello, LwwEntry,
    LwwMessage, MAGIC, MessageCodec, NodeId, RemoteTell, Reply, Request, Session, Timestamp,
    WireError,
};
use tokio_util::codec::{Decoder, Encoder};

const DOC: &str = include_str!("../../../../docs/wire-format.md");

/// The hex of the code block after `<!-- golden: name -->`, comments dropped.
fn golden(name: &str) -> Vec<u8> {
    let marker = format!("<!-- golden: {name} -->");
    let at = DOC
        .find(&marker)
        .unwrap_or_else(|| panic!("docs/wire-format.md has no {marker}"));
    block_after(at)
        .iter()
        .flat_map(|line| {
            line.split_whitespace()
                .take_while(|w| w.len() == 2 && w.bytes().all(|b| b.is_ascii_hexdigit()))
                .map(|w| u8::from_str_radix(w, 16).expect("hex byte"))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The lines of the first fenced code block after byte `at` of the doc.
fn block_after(at: usize) -> Vec<&'static str> {
    let rest = &DOC[at..];
    let open = rest.find("```").expect("a code block after the marker");
    let body = &rest[open..];
    let body = &body[body.find('\n').expect("fence line") + 1..];
    let close = body.find("```").expect("closing fence");
    body[..close].lines().collect()
}

fn check_frame<T>(name: &str, value: T)
where
    T: multinode_wire::Message + PartialEq + std::fmt::Debug,
{
    let want = golden(name);
    let mut codec = MessageCodec::<T>::new();
    let mut buf = BytesMut::new();
    codec.encode(&value, &mut buf).expect("encode");
    assert_eq!(
        hex(&buf),
        hex(&want),
        "{name}: encoder disagrees with docs/wire-format.md"
    );
    let mut src = BytesMut::from(&want[..]);
    let back = codec
        .decode(&mut src)
        .expect("decode")
        .expect("a whole frame");
    assert_eq!(
        back, value,
        "{name}: decoder disagrees with docs/wire-format.md"
    );
    assert!(src.is_empty(), "{name}: bytes left over");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x} ")).collect()
}

#[test]
fn every_golden_marker_is_checked() {
    let checked = [
        "hello",
        "hello-wide",
        "gossip-opaque",
        "tell",
        "tell-sender",
        "session",
        "session-wide",
        "proof",
        "timestamp",
        "channel-data",
        "channel-bye",
        "lww-digest",
        "lww-sync",
    ];
    let in_doc = DOC.matches("<!-- golden: ").count();
    assert_eq!(
        in_doc,
        checked.len(),
        "a golden example in the doc has no test"
    );
}

#[test]
fn hello_frames() {
    check_frame("hello", Hello::new(ClusterId(42), NodeId(3)));
    check_frame(
        "hello-wide",
        Hello {
            magic: MAGIC,
            protocol_version: 4,
            cluster_id: ClusterId(0xc0ffee),
            node_id: NodeId(300),
        },
    );
}

#[test]
fn session_frames() {
    check_frame(
        "session",
        Session {
            incarnation: 9,
            wall_ms: 1_767_225_600_000,
            challenge: None,
        },
    );
    check_frame(
        "session-wide",
        Session {
            incarnation: 0x0123_4567_89ab_cdef,
            wall_ms: 1_767_225_600_000,
            challenge: Some([0xab; multinode_wire::CHALLENGE_LEN]),
        },
    );
    check_frame(
        "proof",
        multinode_wire::Proof {
            mac: [0xcd; multinode_wire::CHALLENGE_LEN],
        },
    );
}

#[test]
fn cluster_frames() {
    check_frame(
        "gossip-opaque",
        ClusterFrame::Gossip(GossipPdu::Opaque {
            schema: 7,
            body: Bytes::from_static(&[0xaa, 0xbb]),
        }),
    );
    let tell = RemoteTell {
        target_path: "/user/a".into(),
        manifest: "m".into(),
        payload: Bytes::from_static(&[1, 2, 3]),
        sender_path: None,
    };
    check_frame("tell", ClusterFrame::Tell(tell.clone()));
    check_frame(
        "tell-sender",
        ClusterFrame::Tell(RemoteTell {
            sender_path: Some("/b".into()),
            ..tell
        }),
    );
}

#[test]
fn channel_frames() {
    for (name, frame) in [
        ("channel-data", ChannelFrame::Data(&b"hi"[..])),
        ("channel-bye", ChannelFrame::Bye),
    ] {
        let want = golden(name);
        let mut buf = BytesMut::new();
        ChannelCodec::default()
            .encode(frame.clone(), &mut buf)
            .expect("encode");
        assert_eq!(
            hex(&buf),
            hex(&want),
            "{name}: encoder disagrees with the doc"
        );
        let mut src = BytesMut::from(&want[..]);
        let back = ChannelCodec::default()
            .decode(&mut src)
            .expect("decode")
            .expect("a whole frame");
        let owned = |f: ChannelFrame<&[u8]>| match f {
            ChannelFrame::Data(b) => ChannelFrame::Data(b.to_vec()),
            ChannelFrame::Bye => ChannelFrame::Bye,
        };
        let back = match back {
            ChannelFrame::Data(b) => ChannelFrame::Data(b.to_vec()),
            ChannelFrame::Bye => ChannelFrame::Bye,
        };
        assert_eq!(back, owned(frame), "{name}: decoder disagrees with the doc");
        assert!(src.is_empty());
    }
}

#[test]
fn channel_frames_refuse_foreign_tags() {
    for bad in [&[0, 0, 0, 0][..], &[0, 0, 0, 1, 2], &[0, 0, 0, 2, 1, 0]] {
        let err = ChannelCodec::default()
            .decode(&mut BytesMut::from(bad))
            .expect_err("a foreign channel frame");
        assert!(matches!(err, WireError::Decode { .. }), "{bad:?}: {err}");
    }
    let err = ChannelCodec::with_max(2)
        .encode(ChannelFrame::Data(&[0u8; 3][..]), &mut BytesMut::new())
        .expect_err("over the cap");
    assert!(matches!(err, WireError::FrameTooLarge { .. }), "{err}");
}

#[test]
fn timestamp_payload() {
    // A bare payload: strip the frame our codec adds, compare the rest.
    let ts = Timestamp {
        physical_ms: 1_767_225_600_000,
        logical: 5,
        node: NodeId(2),
    };
    let mut buf = BytesMut::new();
    MessageCodec::<Timestamp>::new()
        .encode(&ts, &mut buf)
        .expect("encode");
    assert_eq!(hex(&buf[4..]), hex(&golden("timestamp")));
    assert_eq!(
        u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize,
        buf.len() - 4
    );
}

fn doc_lines(marker: &str) -> Vec<(char, &'static str)> {
    let at = DOC.find(marker).expect("marker in doc");
    block_after(at)
        .into_iter()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let dir = l.chars().next().expect("direction");
            (dir, &l[2..])
        })
        .collect()
}

#[test]
fn documented_lines_parse_and_print_back() {
    let lines = doc_lines("<!-- golden-lines -->");
    assert!(lines.len() >= 13);
    for (dir, line) in lines {
        let printed = match dir {
            '>' => line.parse::<Request>().map(|r| r.to_string()),
            '<' => line.parse::<Reply>().map(|r| r.to_string()),
            _ => panic!("bad direction in doc: {dir}"),
        };
        assert_eq!(printed.expect(line), line);
    }
}

#[test]
fn documented_bad_lines_are_refused() {
    let lines = doc_lines("<!-- bad-lines -->");
    assert!(lines.len() >= 15);
    assert!(
        lines.iter().any(|(_, l)| l.ends_with(' ')),
        "the trailing-space example lost its space"
    );
    for (dir, line) in lines {
        let err = match dir {
            '>' => line.parse::<Request>().err(),
            _ => line.parse::<Reply>().err(),
        };
        let err = err.unwrap_or_else(|| panic!("{line:?} was accepted"));
        assert!(
            matches!(err, multinode_wire::WireError::MalformedLine { .. }),
            "{line:?}: {err}"
        );
    }
}

#[test]
fn documented_lines_mean_what_the_doc_says() {
    use multinode_wire::{Label, Value};
    assert_eq!(
        "GATHER addrs 127.0.0.1:40123".parse::<Request>().unwrap(),
        Request::Gather(
            Label::new("addrs").unwrap(),
            Value::new("127.0.0.1:40123").unwrap()
        )
    );
    assert_eq!(
        "TIMEOUT start missing=1,2".parse::<Reply>().unwrap(),
        Reply::Timeout {
            label: Label::new("start").unwrap(),
            missing: vec![NodeId(1), NodeId(2)]
        }
    );
    assert_eq!(
        "FAILED start node 2 disconnected".parse::<Reply>().unwrap(),
        Reply::Failed {
            label: Label::new("start").unwrap(),
            cause: "node 2 disconnected".into()
        }
    );
    assert_eq!(
        "WELCOME 3 4".parse::<Reply>().unwrap(),
        Reply::Welcome {
            node: NodeId(3),
            nodes: 4
        }
    );
}

#[test]
fn lww_frames() {
    let at = |physical_ms, logical, node| Timestamp {
        physical_ms,
        logical,
        node: NodeId(node),
    };
    let lww = |m| ClusterFrame::Gossip(GossipPdu::Lww(m));
    check_frame(
        "lww-digest",
        lww(LwwMessage::Digest {
            era: 0,
            watermarks: vec![at(1_767_225_600_000, 0, 1), at(1_767_225_600_000, 3, 2)],
            sent_ms: 1_767_225_600_001,
            beyond: vec![Beyond {
                origin: NodeId(2),
                fingerprint: 300,
            }],
        }),
    );
    let sync = lww(LwwMessage::Sync {
        reply: true,
        era: 1,
        answers: 0,
        watermarks: vec![at(1_767_225_600_000, 0, 1)],
        entries: vec![
            LwwEntry {
                key: "k".into(),
                value: Some(Bytes::from_static(b"hi")),
                version: at(1_767_225_599_000, 1, 1),
            },
            LwwEntry {
                key: "j".into(),
                value: None,
                version: at(1_767_225_599_500, 0, 1),
            },
        ],
        partial: vec![],
        sent_ms: 1_767_225_600_001,
        beyond: vec![],
    });
    assert_eq!(sync.payload_len() + 4, golden("lww-sync").len());
    check_frame("lww-sync", sync);
}

/// The fingerprints docs/wire-format.md gives (computed there from the
/// stated formula, not by this crate): every build must sum the same.
#[test]
fn version_fingerprints_are_as_documented() {
    let at = |physical_ms, logical| Timestamp {
        physical_ms,
        logical,
        node: NodeId(1),
    };
    let (a, b) = (at(1_767_225_599_000, 1), at(1_767_225_599_500, 0));
    assert_eq!(a.fingerprint(), 0x7543_e6ff_4ec4_fd89);
    assert_eq!(b.fingerprint(), 0xc665_63d9_b313_6c94);
    assert_eq!(
        a.fingerprint().wrapping_add(b.fingerprint()),
        0x3ba9_4ad9_01d8_6a1d
    );
    for hex in [
        "0x7543e6ff4ec4fd89",
        "0xc66563d9b3136c94",
        "0x3ba94ad901d86a1d",
    ] {
        assert!(DOC.contains(hex), "docs/wire-format.md lost {hex}");
    }
}
