//! Barrier, gossip (TCP on loopback), LWW and the file store together in one
//! process: three nodes find each other through a data-carrying barrier,
//! agree (checked through another), and one comes back from its data
//! directory with everything it acknowledged.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use multinode_barrier::{BarrierNode, Config, Controller};
use multinode_gossip::{TcpTransport, TcpTransportConfig};
use multinode_lww::{Inbox, LwwNode, NodeConfig, ReplicaConfig};
use multinode_wire::{ClusterId, NodeId, Timestamp};

const NODES: u64 = 3;

type Node = LwwNode<TcpTransport>;

async fn start(id: u64, dir: &Path, seed: u64) -> Node {
    let inbox = Inbox::new(1024);
    let tcp = TcpTransportConfig::new(ClusterId(7), NodeId(id));
    let transport = TcpTransport::bind(tcp, inbox.sink()).await.expect("bind");
    let mut replica = ReplicaConfig::new(NodeId(id));
    replica.round_interval_ms = 20;
    replica.seed = seed ^ id;
    let config = NodeConfig {
        replica,
        data_dir: Some(dir.join(format!("node-{id}"))),
    };
    LwwNode::start(config, transport, inbox)
        .await
        .expect("start")
}

/// Shares this node's address at `label` and gossips with the others.
async fn join(node: &Node, barrier: &mut BarrierNode, label: &str) {
    let me = node.transport().local_addr().to_string();
    for (peer, addr) in barrier.gather(label, &me).await.expect("gather") {
        if peer != node.node_id() {
            let addr: SocketAddr = addr.as_str().parse().expect("an address");
            node.transport().add_peer(peer, addr).expect("add peer");
            node.add_peer(peer);
        }
    }
}

/// Meets the others at `<label>-<try>` with this node's fingerprint until
/// all three agree; returns how many tries that took.
async fn agree(node: &Node, barrier: &mut BarrierNode, label: &str) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    for attempt in 0.. {
        let fp = format!("{:016x}", node.fingerprint());
        let all = barrier
            .gather(&format!("{label}-{attempt}"), &fp)
            .await
            .expect("gather");
        if all.iter().all(|(_, v)| v.as_str() == fp) {
            return attempt;
        }
        assert!(
            Instant::now() < deadline,
            "no agreement at {label}: {all:?}"
        );
        // Every node decides alike from the same gathered values, so they
        // all try again together; a round passes before the next look.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    unreachable!()
}

/// One member's whole life in the test. Node 2 restarts from disk halfway.
async fn member(id: u64, ctl: SocketAddr, dir: PathBuf, seed: u64) -> Vec<(String, Timestamp)> {
    let mut barrier = BarrierNode::connect(ctl, Some(NodeId(id)))
        .await
        .expect("connect");
    let mut node = start(id, &dir, seed).await;
    join(&node, &mut barrier, "addrs").await;
    let mut acked = Vec::new();
    for k in 0..20 {
        // Shared keys, written by every node at once, and keys of its own.
        for key in [format!("shared-{k}"), format!("own-{id}-{k}")] {
            let v = node.set(&key, format!("{id}:{k}")).await.expect("set");
            acked.push((key, v));
        }
    }
    barrier.barrier("written").await.expect("barrier");
    agree(&node, &mut barrier, "agree").await;

    if id == 2 {
        node.transport().shutdown().await;
        node.shutdown().await;
        node = start(id, &dir, seed).await;
        // Before it hears from anyone, its disk alone holds every write it
        // acknowledged.
        for (key, version) in &acked {
            let held = node.with_replica(|r| r.entry(key).map(|e| e.version));
            assert!(
                held >= Some(*version),
                "node 2 lost {key} at {version} across a restart: holds {held:?}"
            );
        }
    }
    join(&node, &mut barrier, "addrs-again").await;
    if id == 0 {
        node.delete("shared-3").await.expect("delete");
    }
    barrier.barrier("deleted").await.expect("barrier");
    agree(&node, &mut barrier, "agree-again").await;
    assert_eq!(node.get("shared-3"), None, "node {id} resurrected a delete");
    assert_eq!(node.len(), 20 + 3 * 20 - 1, "node {id}");
    barrier.leave().await.expect("leave");
    node.transport().shutdown().await;
    node.shutdown().await;
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_meet_at_barriers_agree_over_tcp_and_recover_from_disk() {
    let seed =
        multinode_testkit::seed("nodes_meet_at_barriers_agree_over_tcp_and_recover_from_disk");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::new(NODES as u32);
    config.timeout = Duration::from_secs(30);
    let controller = Controller::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), config)
        .await
        .expect("controller");
    let ctl = controller.local_addr();
    let tasks: Vec<_> = (0..NODES)
        .map(|id| tokio::spawn(member(id, ctl, dir.path().to_path_buf(), seed)))
        .collect();
    let mut acked = 0;
    for t in tasks {
        acked += t.await.expect("member panicked").len();
    }
    assert_eq!(acked, 3 * 40);
    let summary = controller.shutdown().await;
    assert_eq!(summary.failed, 0, "{summary:?}");
    assert!(summary.passed >= 6, "{summary:?}");
}
