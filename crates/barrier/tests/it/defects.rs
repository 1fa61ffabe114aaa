//! Each defect of the reference controller, as a regression test over TCP.

use std::time::Duration;

use multinode_barrier::{BarrierError, BarrierNode, BlockingBarrierNode, Config};
use multinode_wire::{NodeId, WireError};

use crate::support::{PATIENCE, Raw, controller, eventually};

#[tokio::test]
async fn a_timed_out_label_answers_timeout_to_late_arrivals() {
    let c = controller(2, Duration::from_millis(200)).await;
    let mut a = BarrierNode::connect(c.local_addr(), Some(NodeId(0)))
        .await
        .unwrap();
    let err = a.barrier("x").await.unwrap_err();
    assert!(matches!(&err, BarrierError::Timeout { missing, .. } if missing == &[NodeId(1)]));
    let mut b = BarrierNode::connect(c.local_addr(), Some(NodeId(1)))
        .await
        .unwrap();
    let late = b.barrier("x").await.unwrap_err();
    assert!(
        matches!(late, BarrierError::Timeout { .. }),
        "late arrival got {late:?}"
    );
}

#[tokio::test]
async fn a_lone_node_never_passes_and_the_default_deadline_is_finite() {
    assert_eq!(Config::new(2).timeout, Duration::from_secs(30));
    let c = controller(2, Duration::from_millis(100)).await;
    let mut a = BarrierNode::connect(c.local_addr(), None).await.unwrap();
    let err = tokio::time::timeout(PATIENCE, a.barrier("alone"))
        .await
        .unwrap();
    assert!(matches!(err, Err(BarrierError::Timeout { .. })));
}

#[tokio::test]
async fn the_timeout_error_names_who_is_missing() {
    let c = controller(3, Duration::from_millis(100)).await;
    let mut a = BarrierNode::connect(c.local_addr(), Some(NodeId(1)))
        .await
        .unwrap();
    let err = a.barrier("x").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "barrier x timed out; missing node(s): 0, 2"
    );
}

#[tokio::test]
async fn three_nodes_cannot_pass_a_barrier_for_two() {
    let c = controller(2, Duration::from_secs(30)).await;
    let mut a = BarrierNode::connect(c.local_addr(), None).await.unwrap();
    let mut b = BarrierNode::connect(c.local_addr(), None).await.unwrap();
    let mut third = Raw::connect(c.local_addr()).await;
    third.send(b"BARRIER x\n").await; // the reference protocol: no HELLO
    assert_eq!(
        third.line().await.as_deref(),
        Some("ERR cluster full: 2 of 2 nodes are connected")
    );
    assert_eq!(third.line().await, None, "the extra connection is closed");
    let (x, y) = tokio::join!(a.barrier("x"), b.barrier("x"));
    x.unwrap();
    y.unwrap();
}

#[tokio::test]
async fn a_call_given_up_locally_does_not_poison_the_next() {
    let c = controller(2, Duration::from_secs(30)).await;
    let mut a = BarrierNode::connect(c.local_addr(), Some(NodeId(0)))
        .await
        .unwrap();
    let mut b = BarrierNode::connect(c.local_addr(), Some(NodeId(1)))
        .await
        .unwrap();
    // a gives up on x before b arrives; the controller still counts it.
    let gave_up = tokio::time::timeout(Duration::from_millis(50), a.barrier("x")).await;
    assert!(gave_up.is_err());
    b.barrier("x").await.unwrap(); // x completes: "OK x" is queued for a
    let (ra, rb) = tokio::join!(a.gather("y", "va"), b.gather("y", "vb"));
    let want = vec![
        (NodeId(0), "va".parse().unwrap()),
        (NodeId(1), "vb".parse().unwrap()),
    ];
    assert_eq!(ra.unwrap(), want);
    assert_eq!(rb.unwrap(), want);
}

#[test]
fn a_blocking_call_that_timed_out_does_not_poison_the_next() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = rt.block_on(controller(2, Duration::from_secs(30)));
    let addr = c.local_addr();
    let mut a = BlockingBarrierNode::connect(addr, Some(NodeId(0))).unwrap();
    let mut b = BlockingBarrierNode::connect(addr, Some(NodeId(1))).unwrap();
    let err = a.barrier("x", Some(Duration::from_millis(50))).unwrap_err();
    assert!(matches!(err, BarrierError::LocalTimeout(_)));
    b.barrier("x", Some(PATIENCE)).unwrap();
    let t = std::thread::spawn(move || b.barrier("y", Some(PATIENCE)));
    a.barrier("y", Some(PATIENCE)).unwrap();
    t.join().unwrap().unwrap();
}

#[tokio::test]
async fn a_label_with_a_trailing_space_is_refused_on_both_sides() {
    let c = controller(2, Duration::from_secs(30)).await;
    let mut raw = Raw::connect(c.local_addr()).await;
    raw.send(b"BARRIER a \n").await;
    let reply = raw.line().await.unwrap();
    assert!(reply.starts_with("ERR "), "{reply}");
    let mut client = BarrierNode::connect(c.local_addr(), None).await.unwrap();
    let local = client.barrier("a ").await.unwrap_err();
    assert!(matches!(
        local,
        BarrierError::Wire(WireError::MalformedLine { .. })
    ));
    // Both sides agree on the well-formed label.
    raw.send(b"BARRIER a\n").await;
    client.barrier("a").await.unwrap();
    assert_eq!(raw.line().await.as_deref(), Some("OK a"));
}

#[tokio::test]
async fn dropping_the_controller_closes_its_listener_and_connections() {
    let c = controller(2, Duration::from_secs(30)).await;
    let addr = c.local_addr();
    let mut member = Raw::connect(addr).await;
    drop(c);
    assert_eq!(
        member.line().await,
        None,
        "a live connection must see end of stream"
    );
    let mut refused = false;
    eventually("the listener to close", || {
        refused = std::net::TcpStream::connect(addr).is_err();
        refused
    })
    .await;
}
