//! Hostile peers: every well-behaved node still passes its barriers.

use std::time::Duration;

use multinode_barrier::BarrierNode;
use multinode_wire::NodeId;
use tokio::io::AsyncWriteExt;

use crate::support::{PATIENCE, Raw, connect_when_free, controller};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_strangers_does_not_disturb_the_members() {
    let c = controller(2, Duration::from_secs(30)).await;
    let addr = c.local_addr();
    let mut a = BarrierNode::connect(addr, Some(NodeId(0))).await.unwrap();
    let mut b = BarrierNode::connect(addr, Some(NodeId(1))).await.unwrap();

    let junk: [&[u8]; 5] = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\xff\xfe\xfd\n",
        &[b'A'; 10_000],
        b"BARRIER round-0\n",
        b"HELLO 0\n",
    ];
    let flood = tokio::spawn(async move {
        for i in 0..50 {
            let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
                continue;
            };
            let _ = s.write_all(junk[i % junk.len()]).await;
        }
    });
    for round in 0..10 {
        let label = format!("round-{round}");
        let (x, y) = tokio::join!(a.barrier(&label), b.barrier(&label));
        x.unwrap();
        y.unwrap();
    }
    flood.await.unwrap();
}

#[tokio::test]
async fn a_member_sending_garbage_gets_errors_and_carries_on() {
    let c = controller(2, Duration::from_secs(30)).await;
    let mut raw = Raw::connect(c.local_addr()).await;
    let lines: [&[u8]; 6] = [
        b"\n",
        b"JUMP\n",
        b"BARRIER\n",
        b"BARRIER a b c\n",
        b"\xc3\x28 invalid utf-8\n",
        b"GATHER x\n",
    ];
    for line in lines {
        raw.send(line).await;
        let reply = raw.line().await.expect("a reply, not a closed connection");
        assert!(reply.starts_with("ERR "), "{line:?} -> {reply}");
    }
    let mut good = BarrierNode::connect(c.local_addr(), None).await.unwrap();
    raw.send(b"BARRIER ok\n").await;
    tokio::time::timeout(PATIENCE, good.barrier("ok"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(raw.line().await.as_deref(), Some("OK ok"));
}

#[tokio::test]
async fn an_impossible_identity_is_refused_and_closed() {
    let c = controller(2, Duration::from_secs(30)).await;
    let mut raw = Raw::connect(c.local_addr()).await;
    raw.send(b"HELLO 99\n").await;
    assert_eq!(
        raw.line().await.as_deref(),
        Some("ERR node id 99 out of range 0..2")
    );
    assert_eq!(raw.line().await, None);
}

#[tokio::test]
async fn an_over_long_line_closes_only_that_connection() {
    let c = controller(2, Duration::from_secs(30)).await;
    let mut good = BarrierNode::connect(c.local_addr(), Some(NodeId(0)))
        .await
        .unwrap();
    let mut bad = Raw::connect(c.local_addr()).await;
    bad.send(&vec![b'x'; 5000]).await;
    assert_eq!(
        bad.line().await.as_deref(),
        Some("ERR line longer than 4096 bytes")
    );
    assert_eq!(bad.line().await, None);
    // Its slot is free again; a proper node takes it and both pass.
    let mut other = connect_when_free(c.local_addr(), NodeId(1)).await;
    let (x, y) = tokio::join!(good.barrier("after"), other.barrier("after"));
    x.unwrap();
    y.unwrap();
}
