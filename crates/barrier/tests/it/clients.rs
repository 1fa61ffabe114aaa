//! The clients against a real controller on loopback.

use std::time::Duration;

use multinode_barrier::{BarrierError, BarrierNode, BlockingBarrierNode};
use multinode_wire::NodeId;

use crate::support::{PATIENCE, connect_when_free, controller};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_async_nodes_pass_many_barriers() {
    let n = 8;
    let c = controller(n, Duration::from_secs(30)).await;
    let mut tasks = Vec::new();
    for i in 0..n {
        let addr = c.local_addr();
        tasks.push(tokio::spawn(async move {
            let mut node = BarrierNode::connect(addr, Some(NodeId(u64::from(i)))).await?;
            assert_eq!(node.nodes(), n);
            for round in 0..20 {
                node.barrier(&format!("round-{round}")).await?;
            }
            let all = node
                .gather("addrs", &format!("127.0.0.1:{}", 1000 + i))
                .await?;
            node.leave().await?;
            Ok::<_, BarrierError>(all)
        }));
    }
    for t in tasks {
        let all = tokio::time::timeout(PATIENCE, t)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let ids: Vec<u64> = all.iter().map(|(id, _)| id.0).collect();
        assert_eq!(ids, (0..u64::from(n)).collect::<Vec<_>>());
        assert_eq!(all[3].1.as_str(), "127.0.0.1:1003");
    }
    tokio::time::timeout(PATIENCE, c.all_left()).await.unwrap();
    let summary = c.shutdown().await;
    assert_eq!((summary.passed, summary.failed), (21, 0));
    assert!(summary.nodes.iter().all(|r| r.passed == 21));
}

#[test]
fn blocking_nodes_on_threads() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = rt.block_on(controller(3, Duration::from_secs(30)));
    let addr = c.local_addr();
    let threads: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(move || {
                let mut node = BlockingBarrierNode::connect(addr, None)?;
                node.barrier("start", Some(PATIENCE))?;
                let all = node.gather("ids", &format!("n{}", node.node()), Some(PATIENCE))?;
                node.leave()?;
                Ok::<_, BarrierError>(all)
            })
        })
        .collect();
    for t in threads {
        let all = t.join().unwrap().unwrap();
        let values: Vec<&str> = all.iter().map(|(_, v)| v.as_str()).collect();
        assert_eq!(values, ["n0", "n1", "n2"]);
    }
}

#[tokio::test]
async fn a_node_that_restarts_between_barriers_carries_on() {
    let c = controller(2, Duration::from_secs(30)).await;
    let addr = c.local_addr();
    let mut a = BarrierNode::connect(addr, Some(NodeId(0))).await.unwrap();
    let mut b = BarrierNode::connect(addr, Some(NodeId(1))).await.unwrap();
    let (x, y) = tokio::join!(a.barrier("one"), b.barrier("one"));
    x.unwrap();
    y.unwrap();
    drop(b); // "crash" between barriers
    let mut b = connect_when_free(addr, NodeId(1)).await;
    let (x, y) = tokio::join!(a.barrier("two"), b.barrier("two"));
    x.unwrap();
    y.unwrap();
}
