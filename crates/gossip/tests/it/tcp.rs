//! What only the TCP transport has: sockets, handshakes, hostile bytes.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use futures_util::{FutureExt, StreamExt};
use multinode_gossip::{GossipTransport, SendError, TcpTransport};
use multinode_wire::{ClusterId, Hello, MessageCodec, NodeId, PROTOCOL_VERSION, Session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Encoder, Framed};

use crate::recording::RecordingSink;
use crate::support::{
    CLUSTER, DEADLINE, Settings, closed_by_peer, eventually, handshake_bytes, pdu, raw_peer,
    send_retrying, seq_of, tcp_config,
};

/// Accepts one dialler on `listener` and completes its handshake as
/// `node`; the stream is then the peer's to read or not.
async fn accept_as(listener: &TcpListener, node: NodeId) -> TcpStream {
    let (s, _) = listener.accept().await.expect("accept");
    let mut f = Framed::new(s, MessageCodec::<Hello>::new());
    let _ = f.next().await;
    let mut f = f.map_codec(|_| MessageCodec::<Session>::new());
    let _ = f.next().await;
    let mut s = f.into_parts().io;
    s.write_all(&handshake_bytes(CLUSTER, node, PROTOCOL_VERSION))
        .await
        .expect("handshake");
    s
}

async fn transport(id: u64, settings: Settings) -> (TcpTransport, std::sync::Arc<RecordingSink>) {
    let sink = RecordingSink::new();
    let t = TcpTransport::bind(tcp_config(id, settings), sink.clone())
        .await
        .expect("bind");
    (t, sink)
}

/// Sends `bytes` to `b` as the handshaken peer `node`, then waits until `b`
/// has closed the connection and counted one bad frame from it.
async fn refused_as_a_bad_frame(b: &TcpTransport, node: NodeId, bytes: &[u8], what: &str) {
    let mut s = raw_peer(b.local_addr(), node).await;
    s.write_all(bytes).await.expect("write");
    assert!(closed_by_peer(&mut s).await, "{what}: connection kept");
    eventually(&format!("{what}: counted"), || {
        b.stats().peer(node).bad_frames == 1
    })
    .await;
}

/// A whole frame over the receiver's cap, well formed and in the same read
/// as the frames around it, is refused like one whose header alone is in:
/// the frame before it arrives, it and the ones after do not, and only the
/// delivered frame stays counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_frame_over_the_cap_is_refused_with_what_follows() {
    let small = Settings {
        max_frame: 1024,
        ..Settings::default()
    };
    let (b, b_sink) = transport(1, small).await;
    let mut bytes = BytesMut::new();
    let mut codec = MessageCodec::<multinode_wire::ClusterFrame>::new();
    let big = multinode_wire::ClusterFrame::Gossip(multinode_wire::GossipPdu::Opaque {
        schema: 1,
        body: vec![9u8; 2000].into(),
    });
    for f in [pdu(1), big, pdu(2)] {
        codec.encode(&f, &mut bytes).expect("encode");
    }
    refused_as_a_bad_frame(&b, NodeId(5), &bytes, "a whole frame over the cap").await;
    let got: Vec<_> = b_sink.events().iter().filter_map(seq_of).collect();
    assert_eq!(got, [1], "delivered: {} frames", b_sink.len());
    assert_eq!(b.stats().peer(NodeId(5)).frames_received, 1);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_peer_never_delays_a_healthy_one() {
    // The wedged peer completes the handshake, then never reads.
    let wedged = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let wedged_addr = wedged.local_addr().expect("addr");
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = wedged.accept().await {
            let mut f = Framed::new(s, MessageCodec::<Hello>::new());
            let _ = f.next().await;
            let mut f = f.map_codec(|_| MessageCodec::<Session>::new());
            let _ = f.next().await;
            let mut s = f.into_parts().io;
            let _ = s
                .write_all(&handshake_bytes(CLUSTER, NodeId(9), PROTOCOL_VERSION))
                .await;
            held.push(s);
        }
    });
    let settings = Settings {
        queue_frames: 512,
        ..Settings::default()
    };
    let mut config = tcp_config(0, settings);
    config.write_timeout = Duration::from_millis(300);
    let sink = RecordingSink::new();
    let a = TcpTransport::bind(config, sink).await.expect("bind");
    let (h, h_sink) = transport(1, settings).await;
    a.add_peer(NodeId(9), wedged_addr).expect("add wedged");
    a.add_peer(NodeId(1), h.local_addr()).expect("add healthy");
    let body = vec![7u8; 1024];
    let frame = |i: u64| {
        let mut b = body.clone();
        b[..8].copy_from_slice(&i.to_be_bytes());
        multinode_wire::ClusterFrame::Gossip(multinode_wire::GossipPdu::Opaque {
            schema: 1,
            body: b.into(),
        })
    };
    let (mut accepted, mut refused) = (0u64, 0u64);
    for i in 0..20_000u64 {
        match a.send(NodeId(9), &frame(i)) {
            Ok(()) => accepted += 1,
            Err(SendError::QueueFull { .. }) => refused += 1,
            Err(e) => panic!("send to the wedged peer: {e}"),
        }
        send_retrying(&a, NodeId(1), frame(i)).await;
    }
    assert!(
        h_sink.wait_for(DEADLINE, |got| got.len() >= 20_000).await,
        "the healthy peer got {} of 20000",
        h_sink.len()
    );
    let seqs: Vec<_> = h_sink.events().iter().filter_map(seq_of).collect();
    assert!(
        seqs.iter().copied().eq(0..20_000),
        "healthy peer: out of order"
    );
    // The wedged peer's frames are refused or counted, never silently lost.
    eventually("a write to the wedged peer times out", || {
        a.stats().peer(NodeId(9)).drops.write_failed > 0
    })
    .await;
    a.shutdown().await;
    let w = a.stats().peer(NodeId(9));
    assert!(refused > 0, "the wedged peer's queue never filled");
    assert_eq!(w.drops.queue_full, refused);
    assert_eq!(
        w.frames_sent + w.drops.write_failed + w.drops.shutdown,
        accepted,
        "frames unaccounted for: {w:?}"
    );
    h.shutdown().await;
    holder.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bytes_close_only_their_connection() {
    let (b, b_sink) = (transport(1, Settings::default())).await;
    let (a, _) = transport(0, Settings::default()).await;
    a.add_peer(NodeId(1), b.local_addr()).expect("add");
    let mut next = 0u64;
    let mut healthy_frame_arrives = async |what: &str| {
        send_retrying(&a, NodeId(1), pdu(next)).await;
        let want = next;
        next += 1;
        assert!(
            b_sink
                .wait_for(DEADLINE, |got| got
                    .iter()
                    .filter_map(seq_of)
                    .any(|s| s == want))
                .await,
            "after {what}: a healthy peer's frame did not arrive"
        );
    };
    healthy_frame_arrives("start").await;

    // Not a multinode peer at all.
    let mut s = TcpStream::connect(b.local_addr()).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    assert!(closed_by_peer(&mut s).await, "garbage: connection kept");
    eventually("garbage counted", || b.stats().bad_connections == 1).await;
    healthy_frame_arrives("garbage").await;

    // A valid handshake, then a length prefix far over the cap.
    refused_as_a_bad_frame(
        &b,
        NodeId(5),
        &u32::MAX.to_be_bytes(),
        "an oversized prefix",
    )
    .await;
    healthy_frame_arrives("an oversized prefix").await;

    // A valid handshake, then a frame whose payload is not a cluster frame.
    let mut junk = BytesMut::new();
    junk.put_u32(3);
    junk.put_slice(&[0xff, 0xff, 0xff]);
    refused_as_a_bad_frame(&b, NodeId(6), &junk, "an undecodable frame").await;
    assert_eq!(
        b.stats().peer(NodeId(6)).frames_received,
        0,
        "an undecodable frame is not counted as received"
    );
    healthy_frame_arrives("an undecodable frame").await;

    // A valid handshake, then half a frame and a close.
    let mut s = raw_peer(b.local_addr(), NodeId(7)).await;
    let mut half = BytesMut::new();
    half.put_u32(100);
    half.put_slice(&[0u8; 40]);
    s.write_all(&half).await.expect("write");
    s.shutdown().await.expect("shutdown write half");
    assert!(
        closed_by_peer(&mut s).await,
        "truncated frame: connection kept"
    );
    eventually("truncation counted", || {
        b.stats().peer(NodeId(7)).bad_frames == 1
    })
    .await;
    healthy_frame_arrives("a truncated frame").await;

    // A handshake cut short.
    let mut s = TcpStream::connect(b.local_addr()).await.expect("connect");
    s.write_all(&handshake_bytes(CLUSTER, NodeId(8), PROTOCOL_VERSION)[..5])
        .await
        .expect("write");
    s.shutdown().await.expect("shutdown write half");
    assert!(closed_by_peer(&mut s).await);
    eventually("cut handshake counted", || b.stats().bad_connections == 2).await;
    healthy_frame_arrives("a cut handshake").await;

    assert_eq!(b.stats().peer(NodeId(0)).bad_frames, 0);
    assert_eq!(
        a.stats().peer(NodeId(1)).connects,
        1,
        "the healthy connection dropped"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_cluster_or_version_is_refused_and_counted() {
    let (b, b_sink) = transport(1, Settings::default()).await;
    let mut other = tcp_config(0, Settings::default());
    other.cluster_id = ClusterId(0xbad);
    let a = TcpTransport::bind(other, RecordingSink::new())
        .await
        .expect("bind");
    a.add_peer(NodeId(1), b.local_addr()).expect("add");
    let _ = a.send(NodeId(1), &pdu(1));
    eventually("both sides refuse", || {
        a.stats().peer(NodeId(1)).refused >= 1 && b.stats().refused_handshakes >= 1
    })
    .await;
    assert_eq!(a.stats().peer(NodeId(1)).connects, 0);
    a.shutdown().await;
    let refused = b.stats().refused_handshakes;

    let mut s = TcpStream::connect(b.local_addr()).await.expect("connect");
    s.write_all(&handshake_bytes(CLUSTER, NodeId(3), PROTOCOL_VERSION + 1))
        .await
        .expect("write");
    assert!(
        closed_by_peer(&mut s).await,
        "another version: connection kept"
    );
    eventually("version mismatch counted", || {
        b.stats().refused_handshakes == refused + 1
    })
    .await;
    // A peer claiming our own id is refused too.
    let mut s = TcpStream::connect(b.local_addr()).await.expect("connect");
    s.write_all(&handshake_bytes(CLUSTER, NodeId(1), PROTOCOL_VERSION))
        .await
        .expect("write");
    assert!(closed_by_peer(&mut s).await, "own id: connection kept");
    eventually("own id counted", || {
        b.stats().refused_handshakes == refused + 2
    })
    .await;
    assert!(b_sink.is_empty(), "a refused peer's frame was delivered");
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_the_listener_and_drop_cancels() {
    let (a, _) = transport(0, Settings::default()).await;
    let (b, _) = transport(1, Settings::default()).await;
    a.add_peer(NodeId(1), b.local_addr()).expect("add");
    b.add_peer(NodeId(0), a.local_addr()).expect("add");
    send_retrying(&a, NodeId(1), pdu(1)).await;
    eventually("connected", || {
        b.stats().peer(NodeId(0)).frames_received == 1
    })
    .await;
    let addr = b.local_addr();
    tokio::time::timeout(DEADLINE, b.shutdown())
        .await
        .expect("shutdown hung");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the accept loop outlived shutdown"
    );
    assert_eq!(b.send(NodeId(0), &pdu(2)), Err(SendError::Closed));
    let addr = a.local_addr();
    drop(a);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "drop did not stop the listener"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_the_newest_and_removal_counts_the_rest() {
    // A port nobody listens on: the connection task keeps backing off.
    let dead = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let dead_addr = dead.local_addr().expect("addr");
    drop(dead);
    let settings = Settings {
        queue_frames: 8,
        ..Settings::default()
    };
    let (a, _) = transport(0, settings).await;
    a.add_peer(NodeId(1), dead_addr).expect("add");
    for i in 0..8 {
        a.send(NodeId(1), &pdu(i)).expect("room in the queue");
    }
    let err = a.send(NodeId(1), &pdu(8)).expect_err("queue full");
    assert!(
        matches!(
            err,
            SendError::QueueFull {
                peer: NodeId(1),
                frames: 8,
                ..
            }
        ),
        "{err}"
    );
    eventually("redials counted", || {
        a.stats().peer(NodeId(1)).connect_failures >= 2
    })
    .await;
    let s = a.stats().peer(NodeId(1));
    assert_eq!((s.queued, s.drops.queue_full), (8, 1), "{s:?}");
    assert!(a.remove_peer(NodeId(1)));
    eventually("removal drops the queue", || {
        a.stats().peer(NodeId(1)).drops.shutdown == 8
    })
    .await;
    assert_eq!(a.stats().peer(NodeId(1)).queued, 0);
    assert_eq!(
        a.send(NodeId(1), &pdu(9)),
        Err(SendError::UnknownPeer(NodeId(1)))
    );
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_waits_for_room_instead_of_spinning() {
    // A peer that completes the handshake, then reads only when told to.
    let slow = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let slow_addr = slow.local_addr().expect("addr");
    let (read_now, start_reading) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        let mut s = accept_as(&slow, NodeId(1)).await;
        let _ = start_reading.await;
        let mut buf = vec![0u8; 1 << 16];
        while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    let settings = Settings {
        queue_frames: 64,
        ..Settings::default()
    };
    let (a, _) = transport(0, settings).await;
    a.add_peer(NodeId(1), slow_addr).expect("add");
    // Unknown peers resolve at once: the next send says why.
    assert!(a.ready(NodeId(42)).now_or_never().is_some());
    // Fill the socket buffers and then the queue with 256 KiB frames.
    let big = multinode_wire::ClusterFrame::Gossip(multinode_wire::GossipPdu::Opaque {
        schema: 1,
        body: vec![1u8; 256 << 10].into(),
    });
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match a.send(NodeId(1), &big) {
            Ok(()) => {}
            Err(SendError::QueueFull { .. }) => break,
            Err(e) => panic!("send: {e}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the queue never filled"
        );
        tokio::task::yield_now().await;
    }
    let mut waiting = Box::pin(a.ready(NodeId(1)));
    assert!(
        (&mut waiting).now_or_never().is_none(),
        "ready resolved with the queue full"
    );
    read_now.send(()).expect("reader alive");
    tokio::time::timeout(DEADLINE, waiting)
        .await
        .expect("ready never resolved once the peer read");
    a.send(NodeId(1), &big)
        .expect("room in the queue after ready");
    a.shutdown().await;
    reader.abort();
}

/// A peer that stops reading mid-stream (so writes stop part-way through
/// a chunk) and is replaced by a new process on its address: the new
/// process gets whole frames in send order, and every frame accepted is
/// accounted for. (Which writer holds the cut chunk is a race; the
/// outbox's unit tests pin the rule for each case.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_peer_replaced_mid_stream_gets_whole_frames_in_order() {
    // The first peer shakes hands, then never reads.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (a, _) = transport(0, Settings::default()).await;
    a.add_peer(NodeId(1), addr).expect("add");
    // Odd-sized frames, so the socket fills part-way through a chunk.
    let frame = |i: u64| {
        let mut body = i.to_be_bytes().to_vec();
        body.resize(40_009, 0x5a);
        multinode_wire::ClusterFrame::Gossip(multinode_wire::GossipPdu::Opaque {
            schema: 1,
            body: body.into(),
        })
    };
    // The first frame makes the transport dial.
    a.send(NodeId(1), &frame(0)).expect("send");
    let wedged = accept_as(&listener, NodeId(1)).await;
    let (mut accepted, mut seq) = (1u64, 1u64);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match a.send(NodeId(1), &frame(seq)) {
            Ok(()) => accepted += 1,
            Err(SendError::QueueFull { .. }) => break,
            Err(e) => panic!("send: {e}"),
        }
        seq += 1;
        assert!(
            tokio::time::Instant::now() < deadline,
            "the queue never filled"
        );
        tokio::task::yield_now().await;
    }
    // The old process goes; a new one takes its address.
    drop((wedged, listener));
    let sink = RecordingSink::new();
    let mut config = tcp_config(1, Settings::default());
    config.bind = addr;
    let b = TcpTransport::bind(config, sink.clone())
        .await
        .expect("rebind");
    for _ in 0..10 {
        send_retrying(&a, NodeId(1), frame(seq)).await;
        accepted += 1;
        seq += 1;
    }
    let last = seq - 1;
    assert!(
        sink.wait_for(DEADLINE, |got| got.iter().any(|e| seq_of(e) == Some(last)))
            .await,
        "the new process never got the last frame"
    );
    let got: Vec<u64> = sink.events().iter().filter_map(seq_of).collect();
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "frames out of order or repeated: {got:?}"
    );
    let r = b.stats().peer(NodeId(0));
    assert_eq!(
        r.bad_frames, 0,
        "a torn frame reached the new process: {r:?}"
    );
    assert_eq!(r.frames_received, got.len() as u64);
    eventually("every accepted frame accounted for", || {
        let s = a.stats().peer(NodeId(1));
        s.queued == 0 && s.frames_sent + s.drops.write_failed == accepted
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_connections_are_limited_and_slow_handshakes_time_out() {
    let mut config = tcp_config(1, Settings::default());
    config.max_inbound = 1;
    config.handshake_timeout = Duration::from_millis(300);
    let b = TcpTransport::bind(config, RecordingSink::new())
        .await
        .expect("bind");
    // Silent: holds the only slot until its handshake times out.
    let mut silent = TcpStream::connect(b.local_addr()).await.expect("connect");
    let mut second = TcpStream::connect(b.local_addr()).await.expect("connect");
    assert!(closed_by_peer(&mut second).await, "over the limit: kept");
    assert!(
        closed_by_peer(&mut silent).await,
        "silent: kept past the handshake timeout"
    );
    let s = b.stats();
    assert_eq!((s.over_limit, s.bad_connections), (1, 1), "{s:?}");
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_inventing_node_ids_cannot_grow_memory() {
    let mut config = tcp_config(1, Settings::default());
    config.max_tracked_peers = 3;
    let b = TcpTransport::bind(config, RecordingSink::new())
        .await
        .expect("bind");
    // No peer list (which would refuse every stranger): three invented ids
    // fit, then no more.
    for id in 100..110 {
        let mut s = TcpStream::connect(b.local_addr()).await.expect("connect");
        s.write_all(&handshake_bytes(CLUSTER, NodeId(id), PROTOCOL_VERSION))
            .await
            .expect("write");
        if id >= 103 {
            assert!(closed_by_peer(&mut s).await, "id {id}: kept over the limit");
        } else {
            let mut f = Framed::new(s, MessageCodec::<Hello>::new());
            f.next().await.expect("their hello").expect("valid hello");
            // Its hello can come before its reader tracks us: wait, so the
            // next id cannot take this one's place.
            eventually("the id tracked", || {
                b.stats().peers.contains_key(&NodeId(id))
            })
            .await;
        }
    }
    eventually("refusals counted", || b.stats().over_limit == 7).await;
    let tracked = b.stats().peers.len();
    assert_eq!(
        tracked,
        3,
        "{:?}",
        b.stats().peers.keys().collect::<Vec<_>>()
    );
    // A known id still gets in.
    let mut s = raw_peer(b.local_addr(), NodeId(100)).await;
    s.write_all(&{
        let mut buf = BytesMut::new();
        MessageCodec::<multinode_wire::ClusterFrame>::new()
            .encode(pdu(5), &mut buf)
            .expect("encode");
        buf
    })
    .await
    .expect("write");
    eventually("a known id is served", || {
        b.stats().peer(NodeId(100)).frames_received == 1
    })
    .await;
    b.shutdown().await;
}

/// A peer is dialled only once a frame waits for it, and a connection with
/// nothing to write for the linger time is closed, then dialled again for
/// the next frame: a node holds descriptors for the peers it talks to, not
/// for every peer it knows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_are_dialled_on_demand_and_quiet_connections_close() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut config = tcp_config(0, Settings::default());
    config.linger = Duration::from_millis(200);
    let a = TcpTransport::bind(config, RecordingSink::new())
        .await
        .expect("bind");
    a.add_peer(NodeId(1), addr).expect("add");
    // Nothing queued: no dial, whatever the wait.
    let early = tokio::time::timeout(Duration::from_millis(500), listener.accept()).await;
    assert!(early.is_err(), "dialled with nothing to send");
    // A peer nobody sent to is an address: no queue, no counters.
    assert_eq!(a.peers(), vec![(NodeId(1), addr)]);
    assert!(
        !a.stats().peers.contains_key(&NodeId(1)),
        "{:?}",
        a.stats().peers
    );
    // Room is there at once: nothing is queued.
    tokio::time::timeout(DEADLINE, a.ready(NodeId(1)))
        .await
        .expect("ready waited for a peer with nothing queued");
    a.send(NodeId(1), &pdu(1)).expect("send");
    let mut first = accept_as(&listener, NodeId(1)).await;
    // The dialler closes the quiet connection: end of stream after the frame.
    let mut got = Vec::new();
    tokio::time::timeout(DEADLINE, first.read_to_end(&mut got))
        .await
        .expect("the quiet connection was never closed")
        .expect("read");
    assert!(!got.is_empty(), "the frame never came");
    eventually("the quiet close counted", || {
        a.stats().peer(NodeId(1)).quiet_closes == 1
    })
    .await;
    // The next frame dials again; a quiet close is not a failure.
    a.send(NodeId(1), &pdu(2)).expect("send");
    let _second = accept_as(&listener, NodeId(1)).await;
    eventually("dialled again", || a.stats().peer(NodeId(1)).connects == 2).await;
    let s = a.stats().peer(NodeId(1));
    assert_eq!((s.reconnects, s.connect_failures), (0, 0), "{s:?}");
    a.shutdown().await;
}

/// `add_peers` adds as `add_peer` does one at a time: into an empty table
/// and into one with peers (a repeat keeps its last address, a move
/// replaces the old one), and adds none when one of them is its own id.
#[tokio::test]
async fn peers_added_at_once_are_as_if_added_one_by_one() {
    let (a, _) = transport(0, Settings::default()).await;
    let at = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    a.add_peers(&[(NodeId(2), at(2)), (NodeId(1), at(1)), (NodeId(2), at(22))])
        .expect("add");
    assert_eq!(a.peers(), vec![(NodeId(1), at(1)), (NodeId(2), at(22))]);
    a.add_peers(&[(NodeId(3), at(3)), (NodeId(1), at(11))])
        .expect("add");
    assert_eq!(
        a.peers(),
        vec![(NodeId(1), at(11)), (NodeId(2), at(22)), (NodeId(3), at(3))]
    );
    assert!(
        a.add_peers(&[(NodeId(4), at(4)), (NodeId(0), at(9))])
            .is_err()
    );
    assert_eq!(a.peers().len(), 3, "nothing added with the own id");
}
