//! What only the in-process network has: registration and the mesh's
//! fault verbs.

use std::sync::Arc;
use std::time::Duration;

use multinode_gossip::{
    GossipError, GossipTransport, InProcessConfig, InProcessNetwork, RemoteMessageSink, SendError,
};
use multinode_mesh::LinkFaults;
use multinode_wire::{GossipPdu, NodeId, RemoteTell};

use crate::recording::RecordingSink;
use crate::support::{DEADLINE, eventually, pdu, seq_of};

const A: NodeId = NodeId(0);
const B: NodeId = NodeId(1);
const C: NodeId = NodeId(2);

fn seqs(sink: &RecordingSink) -> Vec<u64> {
    sink.events().iter().filter_map(seq_of).collect()
}

#[tokio::test]
async fn a_taken_address_is_an_error_and_an_old_handle_never_unregisters_a_new_one() {
    let net = InProcessNetwork::new(2);
    let first = net.register(B, RecordingSink::new()).expect("register");
    let err = net.register(B, RecordingSink::new()).expect_err("taken");
    assert!(matches!(err, GossipError::AddressInUse(NodeId(1))), "{err}");
    let err = net
        .register(NodeId(2), RecordingSink::new())
        .expect_err("outside");
    assert!(
        matches!(err, GossipError::OutsideNetwork { size: 2, .. }),
        "{err}"
    );
    // The old life of B crashes; its handle lives on while B restarts.
    net.crash(B);
    assert!(!net.is_registered(B));
    let sink = RecordingSink::new();
    let second = net.register(B, sink.clone()).expect("register again");
    assert_ne!(first.incarnation(), second.incarnation());
    assert_eq!(first.send(A, &pdu(0)), Err(SendError::Closed));
    drop(first);
    assert!(
        net.is_registered(B),
        "dropping the old handle unregistered the new one"
    );
    let a = net.register(A, RecordingSink::new()).expect("register");
    a.send(B, &pdu(7)).expect("send");
    assert!(sink.wait_for(DEADLINE, |got| got.len() == 1).await);
    drop(second);
    assert!(!net.is_registered(B));
}

#[tokio::test]
async fn registering_outside_a_runtime_is_an_error() {
    let net = InProcessNetwork::new(1);
    let err = std::thread::spawn(move || net.register(A, RecordingSink::new()).map(|_| ()))
        .join()
        .expect("thread");
    assert!(matches!(err, Err(GossipError::NoRuntime)), "{err:?}");
}

struct Net {
    net: InProcessNetwork,
    nodes: Vec<multinode_gossip::InProcessTransport>,
    sinks: Vec<Arc<RecordingSink>>,
}

fn network(n: usize, seed: u64) -> Net {
    let mut config = InProcessConfig::default();
    config.seed = seed;
    let net = InProcessNetwork::with_config(n, config);
    let sinks: Vec<_> = (0..n).map(|_| RecordingSink::new()).collect();
    let nodes = (0..n)
        .map(|i| {
            net.register(NodeId(i as u64), sinks[i].clone())
                .expect("register")
        })
        .collect();
    Net { net, nodes, sinks }
}

#[tokio::test]
async fn a_cut_loses_and_counts_and_a_heal_restores() {
    let n = network(3, 1);
    n.net.cut(A, B);
    for i in 0..10 {
        n.nodes[0].send(B, &pdu(i)).expect("send");
        n.nodes[0].send(C, &pdu(i)).expect("send");
    }
    n.nodes[1].send(A, &pdu(100)).expect("send"); // one way only
    assert!(n.sinks[2].wait_for(DEADLINE, |got| got.len() == 10).await);
    assert!(n.sinks[0].wait_for(DEADLINE, |got| got.len() == 1).await);
    let cut = n.net.counters(A, B);
    assert_eq!((cut.sent, cut.cut, cut.delivered), (10, 10, 0), "{cut:?}");
    assert!(n.sinks[1].is_empty());
    n.net.heal();
    n.nodes[0].send(B, &pdu(11)).expect("send");
    assert!(n.sinks[1].wait_for(DEADLINE, |got| got.len() == 1).await);
    assert_eq!(seqs(&n.sinks[1]), [11]);
    n.net.partition(&[A], &[B, C]);
    n.nodes[2].send(A, &pdu(12)).expect("send");
    eventually("partition counted", || n.net.counters(C, A).cut == 1).await;
    assert_eq!(n.sinks[0].len(), 1);
}

#[tokio::test]
async fn hold_then_release_delivers_in_order_ahead_of_later_frames() {
    let n = network(2, 2);
    n.net.hold(A, B);
    for i in 0..5 {
        n.nodes[0].send(B, &pdu(i)).expect("send");
    }
    assert_eq!(n.net.counters(A, B).held, 5);
    n.nodes[1].send(A, &pdu(50)).expect("send");
    assert!(n.sinks[0].wait_for(DEADLINE, |got| got.len() == 1).await);
    assert!(n.sinks[1].is_empty(), "a held frame arrived");
    n.net.release(A, B);
    n.nodes[0].send(B, &pdu(5)).expect("send");
    assert!(n.sinks[1].wait_for(DEADLINE, |got| got.len() == 6).await);
    assert_eq!(seqs(&n.sinks[1]), [0, 1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn random_faults_act_and_every_one_is_counted() {
    let seed = multinode_testkit::seed("random_faults_act_and_every_one_is_counted");
    let n = network(2, seed);
    n.net.set_faults(
        A,
        B,
        LinkFaults {
            drop: 0.2,
            duplicate: 0.2,
            ..LinkFaults::default()
        },
    );
    for i in 0..1000 {
        n.nodes[0].send(B, &pdu(i)).expect("send");
    }
    let c = n.net.counters(A, B);
    let want = c.sent - c.dropped + c.duplicated;
    assert!(
        n.sinks[1]
            .wait_for(DEADLINE, |got| got.len() as u64 == want)
            .await,
        "{} arrived, counters say {want}: {c:?}",
        n.sinks[1].len()
    );
    eventually("delivered counted", || {
        n.net.counters(A, B).delivered == want
    })
    .await;
    assert!(c.dropped > 100 && c.duplicated > 100, "faults inert: {c:?}");
    // Duplicates sit next to their original; nothing else moves.
    let got = seqs(&n.sinks[1]);
    assert!(
        got.windows(2).all(|w| w[0] <= w[1]),
        "reordered without a reorder fault"
    );
    // Same seed, same sends: same decisions.
    let again = network(2, seed);
    again.net.set_faults(
        A,
        B,
        LinkFaults {
            drop: 0.2,
            duplicate: 0.2,
            ..LinkFaults::default()
        },
    );
    for i in 0..1000 {
        again.nodes[0].send(B, &pdu(i)).expect("send");
    }
    assert_eq!(again.net.trace_hash(), n.net.trace_hash());
}

#[tokio::test]
async fn corrupt_flips_a_byte_the_receiver_decodes_or_refuses_and_counts_both() {
    let seed = multinode_testkit::seed("corrupt_flips_a_byte");
    let n = network(2, seed);
    n.net.set_faults(
        A,
        B,
        LinkFaults {
            corrupt: 1.0,
            ..LinkFaults::default()
        },
    );
    for i in 0..600 {
        n.nodes[0].send(B, &pdu(i)).expect("send");
    }
    eventually("every frame delivered or lost", || {
        let c = n.net.counters(A, B);
        c.delivered + c.lost == 600
    })
    .await;
    let c = n.net.counters(A, B);
    assert_eq!((c.sent, c.corrupted), (600, 600), "{c:?}");
    // A flip in the frame's tags or lengths is refused by the decoder (lost);
    // one in the 8-byte body arrives changed.
    assert!(c.lost > 0 && c.delivered > 0, "{c:?}");
    assert_eq!(n.sinks[1].len() as u64, c.delivered);
    let changed = seqs(&n.sinks[1]).iter().filter(|&&s| s >= 600).count() as u64;
    assert!(
        changed * 2 > c.delivered,
        "{changed} of {} delivered frames changed",
        c.delivered
    );
}

#[tokio::test(start_paused = true)]
async fn delay_holds_frames_back_and_keeps_the_link_in_order() {
    let n = network(3, 3);
    n.net.set_faults(
        A,
        B,
        LinkFaults {
            delay: Some((Duration::from_millis(10), Duration::from_millis(50))),
            ..LinkFaults::default()
        },
    );
    let start = tokio::time::Instant::now();
    for i in 0..100 {
        n.nodes[0].send(B, &pdu(i)).expect("send");
    }
    n.nodes[2].send(B, &pdu(1000)).expect("send");
    // The undelayed link overtakes the delayed one.
    assert!(n.sinks[1].wait_for(DEADLINE, |got| !got.is_empty()).await);
    assert_eq!(seqs(&n.sinks[1]), [1000]);
    assert!(n.sinks[1].wait_for(DEADLINE, |got| got.len() == 101).await);
    assert!(start.elapsed() >= Duration::from_millis(10));
    let got: Vec<_> = seqs(&n.sinks[1]).into_iter().skip(1).collect();
    assert_eq!(
        got,
        (0..100).collect::<Vec<_>>(),
        "a delayed link reordered"
    );
    assert_eq!(n.net.counters(A, B).delayed, 100);
}

#[tokio::test(start_paused = true)]
async fn reorder_lets_a_frame_overtake_what_waits() {
    let seed = multinode_testkit::seed("reorder_lets_a_frame_overtake_what_waits");
    let n = network(2, seed);
    n.net.set_faults(
        A,
        B,
        LinkFaults {
            reorder: 0.3,
            delay: Some((Duration::from_millis(5), Duration::from_millis(5))),
            ..LinkFaults::default()
        },
    );
    for i in 0..200 {
        n.nodes[0].send(B, &pdu(i)).expect("send");
    }
    assert!(n.sinks[1].wait_for(DEADLINE, |got| got.len() == 200).await);
    let got = seqs(&n.sinks[1]);
    let inversions = got.windows(2).filter(|w| w[0] > w[1]).count();
    let c = n.net.counters(A, B);
    assert!(c.reordered > 0 && inversions > 0, "reorder inert: {c:?}");
    let mut sorted = got.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..200).collect::<Vec<_>>(),
        "a frame lost or invented"
    );
}

/// A sink that blocks in its first call until told to go on.
struct Stuck {
    gate: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    got: RecordingSink,
}

impl RemoteMessageSink for Stuck {
    fn on_gossip(&self, from: NodeId, pdu: GossipPdu) {
        let _ = self.gate.lock().expect("gate").recv();
        self.got.on_gossip(from, pdu);
    }
    fn on_tell(&self, from: NodeId, tell: RemoteTell) {
        self.got.on_tell(from, tell);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_inbox_refuses_and_counts_and_a_crash_counts_what_it_loses() {
    let mut config = InProcessConfig::default();
    config.queue_frames = 4;
    let net = InProcessNetwork::with_config(2, config);
    let (go, gate) = std::sync::mpsc::channel();
    let stuck = Arc::new(Stuck {
        gate: std::sync::Mutex::new(gate),
        got: RecordingSink::default(),
    });
    let a = net.register(A, RecordingSink::new()).expect("register");
    let _b = net.register(B, stuck.clone()).expect("register");
    let mut refused = 0;
    let mut accepted = 0;
    for i in 0..20 {
        match a.send(B, &pdu(i)) {
            Ok(()) => accepted += 1,
            Err(SendError::QueueFull { .. }) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(refused > 0, "a 4-frame inbox took 20 frames");
    assert_eq!(a.stats().peer(B).drops.queue_full, refused);
    assert_eq!(a.stats().peer(B).frames_sent, accepted);
    net.crash(B);
    for _ in 0..20 {
        let _ = go.send(());
    }
    eventually("what the crash lost is counted", || {
        let c = net.counters(A, B);
        c.delivered + c.lost == accepted
    })
    .await;
    assert!(net.counters(A, B).lost > 0);
    // At most the frame the sink was inside when B crashed got through.
    assert!(stuck.got.len() <= 1, "frames handed over after the crash");
    assert_eq!(net.counters(A, B).delivered, stuck.got.len() as u64);
    assert!(matches!(
        a.send(B, &pdu(99)),
        Ok(()) // handed to the network, which loses it
    ));
    eventually("a frame to a crashed node is lost and counted", || {
        let c = net.counters(A, B);
        c.sent == accepted + 1 && c.delivered + c.lost == accepted + 1
    })
    .await;
}
