//! Who gets in: the cluster secret, the peer list, one connection per node
//! id, and the idle timeout (docs/wire-format.md, "Threat model").

use std::time::Duration;

use multinode_gossip::{GossipTransport, TcpTransport, TcpTransportConfig};
use multinode_wire::{NodeId, Secret};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::recording::RecordingSink;
use crate::support::{
    CLUSTER, DEADLINE, Settings, closed_by_peer, eventually, handshake_bytes, pdu, raw_peer,
    seq_of, tcp_config,
};

fn secret(s: &str) -> Secret {
    Secret::new(s.as_bytes().to_vec()).expect("a usable secret")
}

async fn with_secret(id: u64, key: Option<&str>) -> (TcpTransport, std::sync::Arc<RecordingSink>) {
    let mut config = tcp_config(id, Settings::default());
    config.secret = key.map(secret);
    let sink = RecordingSink::new();
    let t = TcpTransport::bind(config, sink.clone())
        .await
        .expect("bind");
    (t, sink)
}

#[tokio::test]
async fn members_that_share_the_secret_talk() {
    let (a, _) = with_secret(0, Some("the cluster secret")).await;
    let (b, b_sink) = with_secret(1, Some("the cluster secret")).await;
    a.add_peer(NodeId(1), b.local_addr()).unwrap();
    a.send(NodeId(1), &pdu(7)).unwrap();
    assert!(
        b_sink
            .wait_for(DEADLINE, |got| got.iter().any(|e| seq_of(e) == Some(7)))
            .await
    );
    assert_eq!((a.stats().auth_failures, b.stats().auth_failures), (0, 0));
}

#[tokio::test]
async fn a_wrong_or_missing_secret_is_refused_both_ways_and_counted() {
    let (b, b_sink) = with_secret(1, Some("the cluster secret")).await;
    for (id, key) in [(2, Some("another secret!!")), (3, None)] {
        let (a, _) = with_secret(id, key).await;
        a.add_peer(NodeId(1), b.local_addr()).unwrap();
        a.send(NodeId(1), &pdu(id)).unwrap();
        eventually("the dialler's refusal counted", || {
            a.stats().auth_failures > 0
        })
        .await;
        assert_eq!(a.stats().peer(NodeId(1)).connects, 0);
        a.shutdown().await;
    }
    eventually("both refusals counted", || b.stats().auth_failures >= 2).await;
    assert!(b_sink.events().is_empty(), "{:?}", b_sink.events());
    // And a node without the secret refuses one that demands it.
    let (open, _) = with_secret(4, None).await;
    let (a, _) = with_secret(5, Some("the cluster secret")).await;
    a.add_peer(NodeId(4), open.local_addr()).unwrap();
    // A peer is dialled once something is queued for it.
    a.send(NodeId(4), &pdu(5)).unwrap();
    eventually("refused by the node without a secret", || {
        open.stats().auth_failures > 0
    })
    .await;
}

/// A stranger who speaks the protocol but holds no secret cannot write as
/// a member, whatever id it claims.
#[tokio::test]
async fn a_stranger_claiming_a_member_id_cannot_write() {
    let (b, b_sink) = with_secret(1, Some("the cluster secret")).await;
    let mut s = TcpStream::connect(b.local_addr()).await.unwrap();
    s.write_all(&handshake_bytes(
        CLUSTER,
        NodeId(0),
        multinode_wire::PROTOCOL_VERSION,
    ))
    .await
    .unwrap();
    assert!(
        closed_by_peer(&mut s).await,
        "a stranger kept its connection"
    );
    eventually("refusal counted", || b.stats().auth_failures == 1).await;
    assert!(b_sink.events().is_empty());
}

#[tokio::test]
async fn a_non_loopback_bind_needs_a_secret() {
    let mut config = TcpTransportConfig::new(CLUSTER, NodeId(0));
    config.bind = "0.0.0.0:0".parse().unwrap();
    let err = TcpTransport::bind(config, RecordingSink::new())
        .await
        .expect_err("bound a public address without a secret");
    assert!(err.to_string().contains("needs a cluster secret"), "{err}");
}

#[tokio::test]
async fn a_node_with_a_peer_list_accepts_only_its_peers() {
    let (b, _) = with_secret(1, None).await;
    b.add_peer(NodeId(0), "127.0.0.1:9".parse().unwrap())
        .unwrap();
    let mut stranger = raw_peer(b.local_addr(), NodeId(42)).await;
    assert!(closed_by_peer(&mut stranger).await, "a non-peer was kept");
    eventually("refusal counted", || b.stats().refused_handshakes == 1).await;
    let mut peer = raw_peer(b.local_addr(), NodeId(0)).await;
    peer.write_all(&crate::support::frame_bytes(&pdu(1)))
        .await
        .unwrap();
    eventually("the peer is heard", || {
        b.stats().peer(NodeId(0)).frames_received == 1
    })
    .await;
}

#[tokio::test]
async fn a_second_connection_from_one_node_replaces_the_first() {
    let (b, _) = with_secret(1, None).await;
    let mut first = raw_peer(b.local_addr(), NodeId(5)).await;
    // Heard on the first connection: the node has taken it in.
    first
        .write_all(&crate::support::frame_bytes(&pdu(1)))
        .await
        .unwrap();
    eventually("the first connection is heard", || {
        b.stats().peer(NodeId(5)).frames_received == 1
    })
    .await;
    let _second = raw_peer(b.local_addr(), NodeId(5)).await;
    assert!(
        closed_by_peer(&mut first).await,
        "two live connections for node 5"
    );
    eventually("replacement counted", || b.stats().idle_closed == 1).await;
}

/// Connections that complete the handshake and then say nothing cannot
/// hold every inbound slot: they are closed after the idle timeout, and a
/// real member gets in.
#[tokio::test]
async fn silent_connections_are_closed_and_free_their_slots() {
    let mut config = tcp_config(1, Settings::default());
    config.max_inbound = 3;
    config.idle_timeout = Duration::from_millis(300);
    let sink = RecordingSink::new();
    let b = TcpTransport::bind(config, sink.clone()).await.unwrap();
    let mut squatters = Vec::new();
    for id in 10..13 {
        squatters.push(raw_peer(b.local_addr(), NodeId(id)).await);
    }
    let (a, _) = with_secret(0, None).await;
    a.add_peer(NodeId(1), b.local_addr()).unwrap();
    a.send(NodeId(1), &pdu(3)).unwrap();
    assert!(
        sink.wait_for(DEADLINE, |got| got.iter().any(|e| seq_of(e) == Some(3)))
            .await,
        "the member never got in"
    );
    for s in &mut squatters {
        assert!(closed_by_peer(s).await, "a silent connection was kept");
    }
    assert!(b.stats().idle_closed >= 3, "{:?}", b.stats());
}

/// A peer's clock is peer input: a wall clock past `i64::MAX` ms is
/// recorded (saturating), never an overflow that kills the reader.
#[tokio::test]
async fn an_absurd_peer_clock_is_recorded_not_a_panic() {
    use bytes::BytesMut;
    use multinode_wire::{Hello, MessageCodec, Session};
    use tokio_util::codec::Encoder;
    let (b, _) = with_secret(1, None).await;
    let mut bytes = BytesMut::new();
    MessageCodec::<Hello>::new()
        .encode(Hello::new(CLUSTER, NodeId(7)), &mut bytes)
        .unwrap();
    let session = Session {
        incarnation: 1,
        wall_ms: 1 << 63,
        challenge: None,
    };
    MessageCodec::<Session>::new()
        .encode(session, &mut bytes)
        .unwrap();
    bytes.extend_from_slice(&crate::support::frame_bytes(&pdu(9)));
    let mut s = TcpStream::connect(b.local_addr()).await.unwrap();
    s.write_all(&bytes).await.unwrap();
    eventually("the peer's frame is heard", || {
        b.stats().peer(NodeId(7)).frames_received == 1
    })
    .await;
    let offset = b.stats().peer(NodeId(7)).clock_offset_ms.expect("recorded");
    let now = crate::support::wall_ms() as i64;
    assert!(offset > i64::MAX - now - 60_000, "{offset}");
}
