//! The in-memory mesh through its public API: the reference's defects as
//! regressions, faults that act and are counted, seeded reproducibility.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use multinode_mesh::{
    Channel, ChannelError, InMemoryChannel, InMemoryGroup, InMemoryTransport, LinkFaults,
    MeshConfig,
};
use multinode_wire::NodeId;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

use crate::support::{id, ids, join_soon, proptest_config, recv, seed};

const BRIEF: Duration = Duration::from_millis(20);

fn ch(g: &InMemoryGroup, from: usize, to: usize) -> InMemoryChannel {
    g.channel(id(from), id(to)).expect("a live link")
}

// ---- The reference implementation's defects, one regression each. ----

#[test]
fn defect_crashing_one_node_leaves_the_others_live() {
    let g = InMemoryTransport::new_group(3);
    let (a, b) = (ch(&g, 0, 1), ch(&g, 1, 0));
    g.crash(id(2));
    assert!(g.is_node_live(id(0)) && g.is_node_live(id(1)) && !g.is_node_live(id(2)));
    assert!(a.is_open() && b.is_open());
    a.send(b"still here").expect("a healthy link");
    assert_eq!(recv(&b), b"still here");
}

#[test]
fn defect_a_link_stays_down_while_either_node_is_crashed() {
    let g = InMemoryTransport::new_group(2);
    let old = ch(&g, 0, 1);
    g.crash(id(0));
    g.crash(id(1));
    g.restart(id(0));
    assert!(g.is_node_live(id(0)) && !g.is_node_live(id(1)));
    assert!(matches!(
        g.channel(id(0), id(1)),
        Err(ChannelError::PeerCrashed(NodeId(1)))
    ));
    assert!(matches!(
        g.channel(id(1), id(0)),
        Err(ChannelError::Crashed(NodeId(1)))
    ));
    assert!(!old.is_open());
    g.restart(id(1));
    let (a, b) = (ch(&g, 0, 1), ch(&g, 1, 0));
    a.send(b"back").expect("send");
    assert_eq!(recv(&b), b"back");
}

#[test]
fn defect_a_one_node_group_can_crash_and_restart() {
    let g = InMemoryTransport::new_group(1);
    assert_eq!(g.size(), 1);
    g.crash(id(0));
    assert!(!g.is_node_live(id(0)));
    g.restart(id(0));
    assert!(g.is_node_live(id(0)));
    assert_eq!(g.incarnation(id(0)), 1);
    assert!(matches!(
        g.channel(id(0), id(0)),
        Err(ChannelError::NoSuchLink {
            from: NodeId(0),
            to: NodeId(0),
            size: 1
        })
    ));
}

#[test]
fn defect_sending_to_a_closed_peer_fails_and_says_so() {
    let (a, b) = InMemoryTransport::new_pair();
    b.close();
    assert!(matches!(a.send(b"x"), Err(ChannelError::PeerClosed)));
    assert!(
        !a.is_open(),
        "is_open must turn false on the survivor at once"
    );
}

#[test]
fn defect_messages_in_flight_at_a_crash_still_reach_the_survivor() {
    let g = InMemoryTransport::new_group(2);
    let (a, b) = (ch(&g, 0, 1), ch(&g, 1, 0));
    for i in 0..5u8 {
        a.send(&[i]).expect("send");
    }
    b.send(b"to the doomed").expect("send");
    g.crash(id(0));
    for i in 0..5u8 {
        assert_eq!(recv(&b), [i], "sent before the crash");
    }
    assert!(matches!(
        b.receive(BRIEF),
        Err(ChannelError::PeerCrashed(NodeId(0)))
    ));
    assert!(matches!(
        b.send(b"y"),
        Err(ChannelError::PeerCrashed(NodeId(0)))
    ));
    assert!(matches!(
        a.send(b"z"),
        Err(ChannelError::Crashed(NodeId(0)))
    ));
    assert!(matches!(
        a.receive(BRIEF),
        Err(ChannelError::Crashed(NodeId(0)))
    ));
    // What was queued for the crashed node is gone, and counted.
    let c = g.counters(id(1), id(0));
    assert_eq!((c.sent, c.delivered, c.lost), (1, 0, 1));
    assert_eq!(g.counters(id(0), id(1)).delivered, 5);
}

#[test]
fn defect_stale_handles_are_detectable_and_accessors_never_panic() {
    let g = InMemoryTransport::new_group(2);
    let (a, b) = (ch(&g, 0, 1), ch(&g, 1, 0));
    assert_eq!((a.incarnation(), g.incarnation(id(0))), (0, 0));
    g.restart(id(0));
    assert_eq!(g.incarnation(id(0)), 1);
    assert!(matches!(
        a.send(b"x"),
        Err(ChannelError::Stale {
            held: 0,
            current: 1
        })
    ));
    assert!(matches!(
        b.receive(BRIEF),
        Err(ChannelError::Stale {
            held: 0,
            current: 1
        })
    ));
    let (a2, b2) = (ch(&g, 0, 1), ch(&g, 1, 0));
    assert_eq!(a2.incarnation(), 1);
    a2.send(b"new life").expect("send");
    assert_eq!(recv(&b2), b"new life");
    g.crash(id(1));
    assert!(matches!(
        g.channel(id(0), id(1)),
        Err(ChannelError::PeerCrashed(NodeId(1)))
    ));
    assert!(matches!(
        g.channel(id(0), id(7)),
        Err(ChannelError::NoSuchLink { .. })
    ));
}

#[test]
fn defect_close_does_what_the_trait_says() {
    // The full semantics run in the conformance suite for both channels;
    // here, what only the in-memory channel can promise: the peer's send is
    // refused at once, and a new connection can be taken after a close.
    let g = InMemoryTransport::new_group(2);
    let (a, b) = (ch(&g, 0, 1), ch(&g, 1, 0));
    b.send(b"queued").expect("send");
    a.close();
    assert!(matches!(a.receive(BRIEF), Err(ChannelError::Closed)));
    assert!(matches!(b.send(b"x"), Err(ChannelError::PeerClosed)));
    assert_eq!(
        g.counters(id(1), id(0)).lost,
        1,
        "a closed end's queue is discarded"
    );
    let (a2, b2) = (ch(&g, 0, 1), ch(&g, 1, 0));
    a2.send(b"again").expect("a fresh connection");
    assert_eq!(recv(&b2), b"again");
    assert!(matches!(b.receive(BRIEF), Err(ChannelError::PeerClosed)));
}

#[test]
fn defect_queues_are_bounded() {
    let g = InMemoryGroup::with_config(2, MeshConfig::default().capacity(1000));
    let (a, b) = (ch(&g, 0, 1), ch(&g, 1, 0));
    let accepted = (0..1_000_000u32)
        .take_while(|i| match a.send(&i.to_le_bytes()) {
            Ok(()) => true,
            Err(ChannelError::QueueFull { capacity }) => {
                assert_eq!(capacity, 1000);
                false
            }
            Err(e) => panic!("{e}"),
        })
        .count();
    assert_eq!(accepted, 1000);
    assert_eq!(recv(&b), 0u32.to_le_bytes());
    a.send(b"room again").expect("one slot freed");
    assert_eq!(g.counters(id(0), id(1)).sent, 1001);
}

#[test]
fn defect_faults_beyond_crash_exist_and_act() {
    let g = InMemoryTransport::new_group(3);
    g.partition(&ids(&[0]), &ids(&[1, 2]));
    let (a, b) = (ch(&g, 0, 1), ch(&g, 1, 0));
    a.send(b"lost").expect("a cut loses silently");
    b.send(b"lost too").expect("both ways");
    assert_eq!(b.receive(BRIEF).expect("receive"), None);
    assert_eq!(a.receive(BRIEF).expect("receive"), None);
    assert_eq!(
        (g.counters(id(0), id(1)).cut, g.counters(id(1), id(0)).cut),
        (1, 1)
    );
    let (c, d) = (ch(&g, 1, 2), ch(&g, 2, 1));
    c.send(b"same side").expect("send");
    assert_eq!(recv(&d), b"same side");
    g.heal();
    a.send(b"healed").expect("send");
    assert_eq!(recv(&b), b"healed");
}

// ---- Faults through the mesh. ----

#[test]
fn cut_is_one_way() {
    let g = InMemoryTransport::new_group(2);
    let (a, b) = (ch(&g, 0, 1), ch(&g, 1, 0));
    g.cut(id(0), id(1));
    a.send(b"x").expect("send");
    b.send(b"y").expect("send");
    assert_eq!(recv(&a), b"y");
    assert_eq!(b.receive(BRIEF).expect("receive"), None);
    let c = g.counters(id(0), id(1));
    assert_eq!((c.sent, c.cut, c.delivered), (1, 1, 0));
}

#[test]
fn hold_keeps_messages_in_order_until_release_and_release_wakes() {
    let g = InMemoryGroup::with_config(2, MeshConfig::default().capacity(8));
    let (a, b) = (ch(&g, 0, 1), ch(&g, 1, 0));
    a.send(b"before").expect("send");
    g.hold(id(0), id(1));
    for i in 0..7u8 {
        a.send(&[i]).expect("send");
    }
    assert!(
        matches!(
            a.send(b"one too many"),
            Err(ChannelError::QueueFull { capacity: 8 })
        ),
        "held messages take room"
    );
    b.send(b"other way").expect("the reverse link is not held");
    assert_eq!(recv(&a), b"other way");
    assert_eq!(recv(&b), b"before");
    assert_eq!(b.receive(BRIEF).expect("receive"), None, "held");
    assert_eq!(g.counters(id(0), id(1)).held, 7);
    let b = Arc::new(b);
    let waiting = {
        let b = Arc::clone(&b);
        thread::spawn(move || b.receive(Duration::from_secs(3600)))
    };
    g.release(id(0), id(1));
    assert_eq!(
        join_soon(waiting, "receive across a release").expect("receive"),
        Some(vec![0])
    );
    a.send(b"after").expect("send");
    for i in 1..7u8 {
        assert_eq!(recv(&*b), [i]);
    }
    assert_eq!(recv(&*b), b"after");
}

#[test]
fn delay_makes_messages_late_but_keeps_their_order() {
    let g = InMemoryTransport::new_group(2);
    let (a, b) = (ch(&g, 0, 1), ch(&g, 1, 0));
    let (lo, hi) = (Duration::from_millis(30), Duration::from_millis(60));
    g.set_faults(
        id(0),
        id(1),
        LinkFaults {
            delay: Some((lo, hi)),
            ..LinkFaults::default()
        },
    );
    let mut sent_at = Vec::new();
    for i in 0..10u8 {
        sent_at.push(Instant::now());
        a.send(&[i]).expect("send");
    }
    for i in 0..10u8 {
        assert_eq!(recv(&b), [i], "a delay never reorders");
        assert!(
            sent_at[i as usize].elapsed() >= lo,
            "message {i} visible before its delay"
        );
    }
    assert_eq!(g.counters(id(0), id(1)).delayed, 10);
}

#[test]
fn reorder_overtakes_what_is_queued() {
    let g = InMemoryTransport::new_group(2);
    let (a, b) = (ch(&g, 0, 1), ch(&g, 1, 0));
    for i in 0..5u8 {
        a.send(&[i]).expect("send");
    }
    g.set_faults(
        id(0),
        id(1),
        LinkFaults {
            reorder: 1.0,
            ..LinkFaults::default()
        },
    );
    a.send(b"first!").expect("send");
    assert_eq!(recv(&b), b"first!");
    for i in 0..5u8 {
        assert_eq!(recv(&b), [i]);
    }
    assert_eq!(g.counters(id(0), id(1)).reordered, 1);
}

#[test]
fn duplicate_and_drop_act_and_are_counted() {
    let g = InMemoryTransport::new_group(3);
    g.set_faults(
        id(0),
        id(1),
        LinkFaults {
            duplicate: 1.0,
            ..LinkFaults::default()
        },
    );
    g.set_faults(
        id(0),
        id(2),
        LinkFaults {
            drop: 1.0,
            ..LinkFaults::default()
        },
    );
    let (a, b) = (ch(&g, 0, 1), ch(&g, 1, 0));
    let (c, d) = (ch(&g, 0, 2), ch(&g, 2, 0));
    for i in 0..3u8 {
        a.send(&[i]).expect("send");
        c.send(&[i]).expect("a drop is silent to the sender");
    }
    for i in 0..3u8 {
        assert_eq!(recv(&b), [i]);
        assert_eq!(recv(&b), [i]);
    }
    assert_eq!(b.receive(BRIEF).expect("receive"), None);
    assert_eq!(d.receive(BRIEF).expect("receive"), None);
    let (dup, drop) = (g.counters(id(0), id(1)), g.counters(id(0), id(2)));
    assert_eq!((dup.sent, dup.duplicated, dup.delivered), (3, 3, 6));
    assert_eq!((drop.sent, drop.dropped, drop.delivered), (3, 3, 0));
}

/// Runs a seeded noisy scenario; returns what each receiver got, and the
/// trace hash.
fn noisy_run(seed: u64) -> (Vec<Vec<Vec<u8>>>, u64) {
    let n = 3;
    let g = InMemoryGroup::with_config(n, MeshConfig::default().seed(seed).capacity(100_000));
    g.set_all_faults(&LinkFaults {
        drop: 0.2,
        duplicate: 0.2,
        reorder: 0.1,
        delay: None,
        corrupt: 0.1,
    });
    let links: Vec<(InMemoryChannel, InMemoryChannel)> = (0..n)
        .flat_map(|f| (0..n).filter(move |&t| t != f).map(move |t| (f, t)))
        .map(|(f, t)| (ch(&g, f, t), ch(&g, t, f)))
        .collect();
    for i in 0..6000u32 {
        let (tx, _) = &links[i as usize % links.len()];
        tx.send(&i.to_le_bytes()).expect("send");
    }
    let mut got = Vec::new();
    for (from, (_, rx)) in links.iter().enumerate() {
        let mut seen = Vec::new();
        while let Some(m) = rx.receive(Duration::ZERO).expect("receive") {
            seen.push(m);
        }
        let c = g.counters(id(from / (n - 1)), rx.local());
        assert_eq!(c.sent, 1000, "link {from}");
        assert_eq!(
            c.delivered,
            c.sent - c.dropped + c.duplicated,
            "link {from}: {c:?}"
        );
        assert_eq!(seen.len() as u64, c.delivered);
        assert!(
            c.dropped > 0 && c.duplicated > 0 && c.reordered > 0 && c.corrupted > 0,
            "{c:?}"
        );
        // A corrupted message arrives changed: not one this link sent
        // (unless the flip happens to land on another of its messages).
        let sent_here = |m: &[u8]| {
            let v = u32::from_le_bytes(m.try_into().expect("4 bytes"));
            v < 6000 && v as usize % links.len() == from
        };
        let altered = seen.iter().filter(|m| !sent_here(m)).count() as u64;
        assert!(
            altered > 0 && altered <= 2 * c.corrupted,
            "link {from}: {altered} altered, {c:?}"
        );
        got.push(seen);
    }
    (got, g.trace_hash())
}

#[test]
fn one_seed_gives_one_delivery_trace() {
    let s = seed("one_seed_gives_one_delivery_trace");
    let (first, hash) = noisy_run(s);
    let (second, hash2) = noisy_run(s);
    assert_eq!(first, second, "same seed, different deliveries");
    assert_eq!(hash, hash2);
    let (third, hash3) = noisy_run(s.wrapping_add(1));
    assert_ne!(hash, hash3, "another seed, the same trace");
    assert_ne!(first, third);
}

/// Checks that `m` is the next message expected on `from → to`.
fn check(next_seen: &mut [[u32; 4]; 4], from: usize, to: usize, m: &[u8]) {
    let n = u32::from_le_bytes(m[..4].try_into().unwrap());
    assert_eq!(n, next_seen[from][to], "link {from}->{to}");
    assert!(m[4..].iter().all(|&b| b == n as u8));
    next_seen[from][to] += 1;
}

#[test]
fn faults_off_every_message_arrives_exactly_once_in_order() {
    let mut runner = TestRunner::new(proptest_config("faults_off_exactly_once_in_order", 64));
    // Each step sends on a link or drains one receiver a little.
    let steps =
        proptest::collection::vec((0usize..4, 0usize..4, 0usize..64, any::<bool>()), 0..300);
    runner
        .run(&steps, |steps| {
            let g = InMemoryGroup::with_config(4, MeshConfig::default().capacity(400));
            let mut next_sent = [[0u32; 4]; 4];
            let mut next_seen = [[0u32; 4]; 4];
            for (from, to, len, drain) in steps {
                if from == to {
                    continue;
                }
                if drain {
                    let rx = g.channel(id(to), id(from)).unwrap();
                    if let Some(m) = rx.receive(Duration::ZERO).unwrap() {
                        check(&mut next_seen, from, to, &m);
                    }
                } else {
                    let n = next_sent[from][to];
                    let mut m = n.to_le_bytes().to_vec();
                    m.resize(4 + len, n as u8);
                    g.channel(id(from), id(to)).unwrap().send(&m).unwrap();
                    next_sent[from][to] += 1;
                }
            }
            for from in 0..4 {
                for to in (0..4).filter(|&t| t != from) {
                    let rx = g.channel(id(to), id(from)).unwrap();
                    while let Some(m) = rx.receive(Duration::ZERO).unwrap() {
                        check(&mut next_seen, from, to, &m);
                    }
                    prop_assert_eq!(next_seen[from][to], next_sent[from][to]);
                    let c = g.counters(id(from), id(to));
                    prop_assert_eq!(c.sent, u64::from(next_sent[from][to]));
                    prop_assert_eq!(c.delivered, c.sent);
                }
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn send_timeout_waits_for_room_instead_of_failing() {
    let g = InMemoryGroup::with_config(2, MeshConfig::default().capacity(1));
    let (a, b) = (ch(&g, 0, 1), ch(&g, 1, 0));
    a.send(b"first").expect("send");
    assert!(matches!(
        a.send(b"x"),
        Err(ChannelError::QueueFull { capacity: 1 })
    ));
    assert!(matches!(
        a.send_timeout(b"x", BRIEF),
        Err(ChannelError::QueueFull { capacity: 1 })
    ));
    let waiting = thread::spawn(move || a.send_timeout(b"second", Duration::from_secs(3600)));
    assert_eq!(recv(&b), b"first");
    join_soon(waiting, "send_timeout once there is room").expect("send");
    assert_eq!(recv(&b), b"second");
    assert_eq!(g.counters(id(0), id(1)).sent, 2);
}
