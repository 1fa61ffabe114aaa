//! The async node over the in-process transport: convergence, the change
//! feed, stats, and state kept in a data directory across a restart.

use std::time::{Duration, Instant};

use multinode_gossip::{InProcessNetwork, InProcessTransport};
use multinode_lww::{Inbox, LwwNode, NodeConfig, ReplicaConfig};
use multinode_wire::NodeId;

fn config(id: u64, dir: Option<&std::path::Path>) -> NodeConfig {
    let mut replica = ReplicaConfig::new(NodeId(id));
    replica.round_interval_ms = 20;
    NodeConfig {
        replica,
        data_dir: dir.map(|d| d.to_path_buf()),
    }
}

async fn node(
    net: &InProcessNetwork,
    id: u64,
    dir: Option<&std::path::Path>,
) -> LwwNode<InProcessTransport> {
    let inbox = Inbox::new(1024);
    let t = net.register(NodeId(id), inbox.sink()).expect("register");
    LwwNode::start(config(id, dir), t, inbox)
        .await
        .expect("start")
}

/// Polls `cond` every 10 ms until it holds or `secs` pass.
async fn eventually(secs: u64, what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_converge_and_report_changes() {
    let net = InProcessNetwork::new(3);
    let nodes = [
        node(&net, 0, None).await,
        node(&net, 1, None).await,
        node(&net, 2, None).await,
    ];
    for a in &nodes {
        for b in 0..3 {
            a.add_peer(NodeId(b));
        }
    }
    let mut feed = nodes[2].subscribe();
    for (i, n) in nodes.iter().enumerate() {
        for k in 0..20 {
            n.set(&format!("k{k}"), format!("from {i}")).await.unwrap();
        }
    }
    // Versions order causally, not by wall time: a delete issued in the same
    // millisecond as a write it has not yet seen may lose to it. So node 1
    // deletes only once every write has reached it, and its clock has
    // absorbed them all.
    eventually(10, "the writes to converge", || {
        let f = nodes[0].fingerprint();
        nodes.iter().all(|n| n.fingerprint() == f && n.len() == 20)
    })
    .await;
    nodes[1].delete("k3").await.unwrap();
    eventually(10, "the delete to converge", || {
        let f = nodes[0].fingerprint();
        nodes.iter().all(|n| n.fingerprint() == f && n.len() == 19)
    })
    .await;
    assert_eq!(nodes[0].get("k3"), None);
    let winner = nodes[0].get("k0").unwrap();
    assert!(nodes.iter().all(|n| n.get("k0").as_ref() == Some(&winner)));
    // The feed saw a change that came from another node.
    let mut remote = false;
    while let Ok(e) = feed.try_recv() {
        remote |= e.key == "k3" && e.value.is_none();
    }
    assert!(remote, "node 2's feed never showed node 1's delete");
    let s = nodes[0].stats();
    assert!(s.replica.rounds > 0 && s.replica.bytes_sent > 0 && s.replica.entries_received > 0);
    assert_eq!(s.foreign, 0);
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_restart_from_the_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let net = InProcessNetwork::new(2);
    let a = node(&net, 0, Some(dir.path())).await;
    a.set("kept", "v1").await.unwrap();
    a.set("gone", "x").await.unwrap();
    a.delete("gone").await.unwrap();
    drop(a); // no shutdown: the task is cancelled, nothing is flushed
    net.crash(NodeId(0));
    let a = node(&net, 0, Some(dir.path())).await;
    assert_eq!(a.get("kept").as_deref(), Some(&b"v1"[..]));
    assert_eq!(a.get("gone"), None);
    // A peer that joins later gets the restored write.
    let b = node(&net, 1, None).await;
    a.add_peer(NodeId(1));
    b.add_peer(NodeId(0));
    eventually(10, "the restored write to reach a new peer", || {
        b.get("kept").is_some()
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

/// A write takes its version when `set` is called; a write whose future is
/// dropped, even before it is first polled, is abandoned, so the node's
/// watermark for itself does not stay below it and later writes still go
/// out as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_dropped_before_it_is_polled_does_not_hold_the_watermark_back() {
    let net = InProcessNetwork::new(2);
    let nodes = [node(&net, 0, None).await, node(&net, 1, None).await];
    nodes[0].add_peer(NodeId(1));
    nodes[1].add_peer(NodeId(0));
    let me = NodeId(0);
    eventually(10, "node 0 to settle", || {
        nodes[0].with_replica(|r| !r.is_resyncing())
    })
    .await;
    let first = nodes[0].set("first", "1");
    let second = nodes[0].set("second", "2");
    drop(first);
    let v = second.await.expect("second write");
    eventually(10, "node 0's watermark to reach its last write", || {
        nodes[0].with_replica(|r| r.watermark(me).is_some_and(|w| w >= v))
    })
    .await;
    assert_eq!(nodes[0].get("first"), None, "a dropped write was applied");
}
