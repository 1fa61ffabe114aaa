use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use multinode_barrier::{
    BarrierError, BarrierNode, BlockingBarrierNode, Conductor, Config, Controller,
};
use multinode_wire::{Fault, NodeId};
use parking_lot::Mutex;

use crate::support::{Raw, controller};

/// Records what it is asked and refuses `KILL`: the controller's side of
/// the conductor is under test here, not a lab.
#[derive(Default)]
struct Recording(Mutex<Vec<String>>);

impl Conductor for Recording {
    fn conduct(&self, fault: &Fault) -> Result<String, String> {
        let mut seen = self.0.lock();
        seen.push(fault.to_string());
        match fault {
            Fault::Kill(n) => Err(format!("node {n} runs no process")),
            _ => Ok(format!("cut={} dropped=0", seen.len())),
        }
    }
}

async fn conducting(nodes: u32) -> (Controller, Arc<Recording>) {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .unwrap();
    let rec = Arc::new(Recording::default());
    let c = Controller::start_conducting(listener, Config::new(nodes), rec.clone()).unwrap();
    (c, rec)
}

#[tokio::test]
async fn fault_lines_are_refused_when_the_run_has_no_conductor() {
    let c = controller(2, Duration::from_secs(5)).await;
    let mut raw = Raw::connect(c.local_addr()).await;
    raw.send(b"PARTITION 0 1\n").await;
    let line = raw.line().await.unwrap();
    assert!(
        line.starts_with("ERR PARTITION refused: faults are not enabled"),
        "{line}"
    );
    let mut node = BarrierNode::connect(c.local_addr(), Some(NodeId(0)))
        .await
        .unwrap();
    let e = node.fault(&Fault::Heal).await.unwrap_err();
    assert!(
        matches!(e, BarrierError::Refused(ref r) if r.contains("--faults")),
        "{e}"
    );
}

#[tokio::test]
async fn a_conductor_line_is_answered_ok_with_its_verb_and_counters_or_err() {
    let (c, rec) = conducting(2).await;
    // The transcript of docs/barrier-protocol.md, from a raw socket that
    // never said HELLO (a driver).
    let mut raw = Raw::connect(c.local_addr()).await;
    raw.send(b"PARTITION 0 1\n").await;
    assert_eq!(raw.line().await.unwrap(), "OK PARTITION cut=1 dropped=0");
    raw.send(b"KILL 1\n").await;
    assert_eq!(raw.line().await.unwrap(), "ERR node 1 runs no process");
    raw.send(b"DROP 2\n").await;
    let line = raw.line().await.unwrap();
    assert!(
        line.starts_with("ERR ") && line.contains("not a probability"),
        "{line}"
    );
    raw.send(b"HEAL\n").await;
    assert_eq!(raw.line().await.unwrap(), "OK HEAL cut=3 dropped=0");

    // The clients' method.
    let mut node = BarrierNode::connect(c.local_addr(), Some(NodeId(0)))
        .await
        .unwrap();
    let report = node
        .fault(&Fault::Cut {
            from: NodeId(0),
            to: NodeId(1),
        })
        .await
        .unwrap();
    assert_eq!(report, "cut=4 dropped=0");
    let e = node.fault(&Fault::Kill(NodeId(1))).await.unwrap_err();
    assert!(
        matches!(e, BarrierError::Refused(ref r) if r == "node 1 runs no process"),
        "{e}"
    );
    let addr = c.local_addr();
    let blocking = tokio::task::spawn_blocking(move || {
        let mut b = BlockingBarrierNode::connect(addr, Some(NodeId(1))).unwrap();
        b.fault(&Fault::Pause(NodeId(0)), Some(Duration::from_secs(5)))
    });
    assert_eq!(blocking.await.unwrap().unwrap(), "cut=6 dropped=0");
    assert_eq!(
        *rec.0.lock(),
        [
            "PARTITION 0 1",
            "KILL 1",
            "HEAL",
            "CUT 0 1",
            "KILL 1",
            "PAUSE 0"
        ]
    );
    // Barriers still work beside faults.
    let mut other = BarrierNode::connect(addr, Some(NodeId(1))).await.unwrap();
    let (a, b) = tokio::join!(node.barrier("after"), other.barrier("after"));
    a.unwrap();
    b.unwrap();
}
