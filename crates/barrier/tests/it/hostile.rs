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
        b"BARRIER a  b\n",
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

/// A member that sent an over-long line is gone at once: the barrier it
/// was part of fails for the others now (not at its 30 s deadline), and the
/// member can come back under its id.
#[tokio::test]
async fn an_over_long_line_from_a_member_frees_its_slot_at_once() {
    let c = controller(2, Duration::from_secs(30)).await;
    let mut good = Raw::connect(c.local_addr()).await;
    let mut bad = Raw::connect(c.local_addr()).await;
    bad.send(b"HELLO 1\n").await;
    assert_eq!(bad.line().await.as_deref(), Some("WELCOME 1 2"));
    // The second HELLO's answer proves the arrival before it was read.
    good.send(b"HELLO 0\nBARRIER pending\nHELLO\n").await;
    assert_eq!(good.line().await.as_deref(), Some("WELCOME 0 2"));
    assert_eq!(good.line().await.as_deref(), Some("WELCOME 0 2"));
    bad.send(&vec![b'x'; 5000]).await;
    assert_eq!(
        bad.line().await.as_deref(),
        Some("ERR line longer than 4096 bytes")
    );
    // Within the patience bound, far below the 30 s deadline.
    assert_eq!(
        good.line().await.as_deref(),
        Some("FAILED pending node 1 disconnected")
    );
    let mut back = BarrierNode::connect(c.local_addr(), Some(NodeId(1)))
        .await
        .expect("node 1 may come back");
    good.send(b"BARRIER after\n").await;
    back.barrier("after").await.unwrap();
    assert_eq!(good.line().await.as_deref(), Some("OK after"));
}

/// A connection that closes before its first line was one of the members:
/// the others are told at once instead of waiting out the deadline.
#[tokio::test]
async fn a_member_that_dies_before_speaking_fails_the_barrier_at_once() {
    let c = controller(3, Duration::from_secs(30)).await;
    let addr = c.local_addr();
    let silent = Raw::connect(addr).await;
    let mut a = Raw::connect(addr).await;
    let mut b = Raw::connect(addr).await;
    // The HELLO after each arrival is answered only once the arrival is in.
    for member in [&mut a, &mut b] {
        member.send(b"BARRIER start\nHELLO\n").await;
        let welcome = member.line().await.expect("a welcome");
        assert!(welcome.starts_with("WELCOME "), "{welcome}");
    }
    drop(silent);
    let want = "FAILED start a connection closed before identifying itself; \
                2 of 3 members remain connected";
    assert_eq!(a.line().await.as_deref(), Some(want));
    assert_eq!(b.line().await.as_deref(), Some(want));
}

/// Connections that never speak, opened before the members, hold no slot.
#[tokio::test]
async fn idle_connections_do_not_squat_membership() {
    let c = controller(3, Duration::from_secs(30)).await;
    let addr = c.local_addr();
    let mut squatters = Vec::new();
    for _ in 0..3 {
        squatters.push(Raw::connect(addr).await);
    }
    let mut nodes = Vec::new();
    for id in 0..3 {
        nodes.push(BarrierNode::connect(addr, Some(NodeId(id))).await.unwrap());
    }
    let [x, y, z] = &mut nodes[..] else {
        unreachable!()
    };
    let (x, y, z) = tokio::join!(x.barrier("go"), y.barrier("go"), z.barrier("go"));
    x.unwrap();
    y.unwrap();
    z.unwrap();
    drop(squatters);
}

/// The reference protocol took the rest of the line as the label.
#[tokio::test]
async fn labels_of_several_words_pass_and_fail_by_their_whole_label() {
    let c = controller(2, Duration::from_secs(30)).await;
    let addr = c.local_addr();
    let mut raw = Raw::connect(addr).await;
    let mut node = BarrierNode::connect(addr, None).await.unwrap();
    raw.send(b"BARRIER phase one\n").await;
    node.barrier("phase one").await.unwrap();
    assert_eq!(raw.line().await.as_deref(), Some("OK phase one"));

    // A failure names the whole label, and the client reads it as its own.
    let waiting = tokio::spawn(async move { node.barrier("phase two starts").await });
    raw.send(b"BARRIER phase two starts\n").await;
    drop(raw);
    let err = tokio::time::timeout(PATIENCE, waiting)
        .await
        .unwrap()
        .unwrap()
        .expect_err("the other member is gone");
    match err {
        multinode_barrier::BarrierError::Failed { label, cause } => {
            assert_eq!(label.as_str(), "phase two starts");
            assert!(cause.contains("disconnected"), "{cause}");
        }
        other => panic!("{other}"),
    }
}
