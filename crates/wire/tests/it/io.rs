//! The codecs over real loopback sockets, blocking and async.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use multinode_wire::{
    BlockingReader, BlockingWriter, ClusterFrame, ClusterId, GossipPdu, HandshakeField, Hello,
    LineCodec, MessageCodec, NodeId, Request, WireError,
};
use tokio_util::codec::{Encoder, Framed};

fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    (client, server)
}

fn gossip(n: u8, len: usize) -> ClusterFrame {
    ClusterFrame::Gossip(GossipPdu::Opaque {
        schema: u16::from(n),
        body: Bytes::from(vec![n; len]),
    })
}

#[test]
fn read_timeout_mid_frame_keeps_the_stream_in_sync() {
    let (mut tx, rx) = pair();
    rx.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut wire = BytesMut::new();
    let mut codec = MessageCodec::<ClusterFrame>::new();
    codec.encode(&gossip(1, 10_000), &mut wire).unwrap();
    codec.encode(&gossip(2, 10), &mut wire).unwrap();
    let split = 4 + 5_000;

    let (saw_timeout, wait) = mpsc::channel::<()>();
    let writer = std::thread::spawn(move || {
        tx.write_all(&wire[..split]).unwrap();
        wait.recv().unwrap(); // the reader has timed out mid-frame
        tx.write_all(&wire[split..]).unwrap();
    });

    let mut reader = BlockingReader::new(rx, MessageCodec::<ClusterFrame>::new());
    let err = match reader.read() {
        Err(e) => e,
        Ok(x) => panic!("read {x:?} before the frame was complete"),
    };
    assert!(err.is_timeout());
    assert_eq!(reader.buffered(), split, "partial frame not kept");
    saw_timeout.send(()).unwrap();
    reader
        .get_mut()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(reader.read().unwrap(), Some(gossip(1, 10_000)));
    assert_eq!(reader.read().unwrap(), Some(gossip(2, 10)));
    writer.join().unwrap();
    assert_eq!(reader.read().unwrap(), None, "clean end of stream");
}

#[test]
fn end_of_stream_inside_a_frame_is_an_error() {
    let (mut tx, rx) = pair();
    tx.write_all(&[0, 0, 0, 9, 1, 2]).unwrap();
    drop(tx);
    let mut reader = BlockingReader::new(rx, MessageCodec::<ClusterFrame>::new());
    assert!(matches!(reader.read(), Err(WireError::Io(_))));
}

#[test]
fn blocking_writer_and_reader_carry_many_frames() {
    let (tx, rx) = pair();
    let sender = std::thread::spawn(move || {
        let mut w = BlockingWriter::new(tx, MessageCodec::<ClusterFrame>::with_max(4096));
        // An oversized frame is refused without poisoning the writer.
        assert!(matches!(
            w.send(gossip(0, 5000)),
            Err(WireError::FrameTooLarge { .. })
        ));
        assert!(!w.is_poisoned());
        for i in 0..1000u32 {
            w.feed(gossip((i % 251) as u8, (i % 300) as usize)).unwrap();
            if i % 64 == 0 {
                w.flush().unwrap();
            }
        }
        w.flush().unwrap();
    });
    let mut r = BlockingReader::new(rx, MessageCodec::<ClusterFrame>::with_max(4096));
    for i in 0..1000u32 {
        assert_eq!(
            r.read().unwrap(),
            Some(gossip((i % 251) as u8, (i % 300) as usize))
        );
    }
    assert_eq!(r.read().unwrap(), None);
    sender.join().unwrap();
}

#[test]
fn blocking_lines_over_a_socket() {
    let (tx, rx) = pair();
    let mut w = BlockingWriter::new(tx, LineCodec::new());
    w.send(Request::Hello(Some(NodeId(4)))).unwrap();
    w.get_mut().write_all(b"BARRIER   spaced\n").unwrap();
    drop(w);
    let mut r = BlockingReader::new(rx, LineCodec::new());
    let first = r.read().unwrap().unwrap();
    assert_eq!(
        first.parse::<Request>().unwrap(),
        Request::Hello(Some(NodeId(4)))
    );
    let second = r.read().unwrap().unwrap();
    assert!(second.parse::<Request>().is_err());
    assert_eq!(r.read().unwrap(), None);
}

#[tokio::test(flavor = "current_thread")]
async fn async_framed_handshake_then_frames() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        let mut hello = Framed::new(sock, MessageCodec::<Hello>::new());
        let theirs = hello.next().await.unwrap().unwrap();
        let ours = Hello::new(ClusterId(7), NodeId(0));
        ours.check(&theirs, None).unwrap();
        hello.send(ours).await.unwrap();
        let mut frames = hello.map_codec(|_| MessageCodec::<ClusterFrame>::new());
        let mut got = Vec::new();
        while let Some(f) = frames.next().await {
            got.push(f.unwrap());
        }
        got
    });

    let sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut hello = Framed::new(sock, MessageCodec::<Hello>::new());
    let ours = Hello::new(ClusterId(7), NodeId(1));
    hello.send(ours).await.unwrap();
    let theirs = hello.next().await.unwrap().unwrap();
    ours.check(&theirs, Some(NodeId(0))).unwrap();
    let mut frames = hello.map_codec(|_| MessageCodec::<ClusterFrame>::new());
    for i in 0..100 {
        frames.send(gossip(i, usize::from(i) * 3)).await.unwrap();
    }
    drop(frames);
    let got = server.await.unwrap();
    assert_eq!(
        got,
        (0..100)
            .map(|i| gossip(i, usize::from(i) * 3))
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "current_thread")]
async fn async_handshake_with_another_cluster_is_refused() {
    let (a, b) = tokio::io::duplex(1024);
    let mut a = Framed::new(a, MessageCodec::<Hello>::new());
    let mut b = Framed::new(b, MessageCodec::<Hello>::new());
    a.send(Hello::new(ClusterId(1), NodeId(1))).await.unwrap();
    let got = b.next().await.unwrap().unwrap();
    let err = Hello::new(ClusterId(2), NodeId(2))
        .check(&got, None)
        .unwrap_err();
    assert!(matches!(
        err,
        WireError::Handshake {
            field: HandshakeField::ClusterId,
            ..
        }
    ));
    assert_eq!(
        err.to_string(),
        "handshake mismatch on cluster id: expected 0x2, got 0x1"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_stranger_is_refused_never_misparsed() {
    // Exactly Hello-shaped noise fails on the magic; anything else fails to
    // decode. Either way a typed error, never a Hello from another species.
    for (noise, want_magic) in [(&b"GET / H"[..], true), (&b"GET / HTTP/1.1"[..], false)] {
        let (a, b) = tokio::io::duplex(1024);
        let mut a = Framed::new(a, multinode_wire::FrameCodec::new());
        a.send(Bytes::from_static(noise)).await.unwrap();
        let mut b = Framed::new(b, MessageCodec::<Hello>::new());
        let outcome = match b.next().await.unwrap() {
            Ok(got) => Hello::new(ClusterId(1), NodeId(2)).check(&got, None),
            Err(e) => Err(e),
        };
        match outcome {
            Err(WireError::Handshake {
                field: HandshakeField::Magic,
                ..
            }) => assert!(want_magic),
            Err(WireError::Decode { .. }) => assert!(!want_magic),
            other => panic!("{noise:?}: {other:?}"),
        }
    }
}

#[test]
fn switching_codec_after_the_handshake_keeps_early_frames() {
    // The peer's Hello and its first channel frames arrive in one read.
    let mut bytes = BytesMut::new();
    MessageCodec::<Hello>::new()
        .encode(&Hello::new(ClusterId(1), NodeId(2)), &mut bytes)
        .unwrap();
    let mut channel = multinode_wire::ChannelCodec::default();
    channel
        .encode(
            multinode_wire::ChannelFrame::Data(&b"first"[..]),
            &mut bytes,
        )
        .unwrap();
    channel
        .encode(multinode_wire::ChannelFrame::Bye, &mut bytes)
        .unwrap();
    let mut reader = BlockingReader::new(
        std::io::Cursor::new(bytes.to_vec()),
        MessageCodec::<Hello>::new(),
    );
    assert_eq!(
        reader.read().unwrap(),
        Some(Hello::new(ClusterId(1), NodeId(2)))
    );
    let mut reader = reader.map_codec(|_| multinode_wire::ChannelCodec::default());
    assert!(
        reader.buffered() > 0,
        "the early frames were read with the Hello"
    );
    match reader.read_buffered().unwrap() {
        Some(multinode_wire::ChannelFrame::Data(b)) => assert_eq!(&b[..], b"first"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        reader.read_buffered().unwrap(),
        Some(multinode_wire::ChannelFrame::Bye)
    );
    assert_eq!(reader.read_buffered().unwrap(), None);
    assert_eq!(reader.read().unwrap(), None, "a clean end of stream");
}
