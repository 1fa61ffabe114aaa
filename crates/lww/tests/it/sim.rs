//! Convergence in the simulator under the mesh's fault model (drop,
//! duplicate, reorder, delay, corrupt, partition, hold), crash and restart,
//! deletes, and a thousand replicas.

use std::ops::Range;
use std::time::Duration;

use multinode_lww::{Fanout, Simulator};
use multinode_mesh::LinkFaults;
use multinode_testkit::seed;
use multinode_wire::NodeId;

const ROUND_MS: u64 = 100;

/// Drops each message with probability `p`.
fn drop_all(s: &mut Simulator, p: f64) {
    s.faults().set_all_faults(&LinkFaults {
        drop: p,
        ..LinkFaults::default()
    });
}

/// Replica `i`.
fn id(i: usize) -> NodeId {
    NodeId(i as u64)
}

/// Replicas `r`.
fn ids(r: Range<usize>) -> Vec<NodeId> {
    r.map(id).collect()
}

fn sim(n: usize, seed: u64) -> Simulator {
    Simulator::new(n, seed, ROUND_MS, |c| c.fanout = Fanout::Fixed(3)).expect("config")
}

/// Writes `keys` keys spread over the replicas, some keys from two
/// replicas at once.
fn write_some(s: &mut Simulator, keys: usize, tag: &str) {
    let n = s.len();
    for k in 0..keys {
        let key = format!("k{k}");
        s.set(id(k % n), &key, format!("{tag}-{k}-a").as_bytes());
        if k % 3 == 0 {
            s.set(id((k + 1) % n), &key, format!("{tag}-{k}-b").as_bytes());
        }
    }
}

#[test]
fn converges_without_faults_and_all_agree_on_the_winner() {
    let mut s = sim(20, seed("converges_without_faults"));
    write_some(&mut s, 200, "x");
    assert!(!s.converged(), "replicas should differ before any round");
    let rounds = s
        .run_until(50, Simulator::converged)
        .expect("no convergence in 50 rounds");
    // Concurrent writes to one key: every replica keeps the higher version.
    let winner = s.replica(id(0)).unwrap().entry("k0").unwrap().clone();
    for r in s.live() {
        assert_eq!(r.entry("k0"), Some(&winner));
        assert_eq!(r.len(), 200);
    }
    println!("converged in {rounds} rounds");
}

#[test]
fn converges_under_30_percent_loss() {
    let mut s = sim(20, seed("converges_under_30_percent_loss"));
    drop_all(&mut s, 0.3);
    write_some(&mut s, 200, "x");
    let rounds = s
        .run_until(200, Simulator::converged)
        .expect("no convergence under 30% loss");
    assert!(s.totals().lost > 0, "the loss rate lost nothing");
    assert_eq!(s.totals().lost, s.faults().total().dropped);
    assert_eq!(s.replica(id(7)).unwrap().len(), 200);
    println!(
        "converged in {rounds} rounds, {} messages lost",
        s.totals().lost
    );
}

#[test]
fn retries_replace_lost_exchanges_only() {
    let mut s = sim(30, seed("retries_replace_lost_exchanges_only"));
    write_some(&mut s, 100, "x");
    s.run_until(100, Simulator::converged)
        .expect("no convergence without loss");
    let retries = |s: &Simulator| s.live().map(|r| r.stats().retries).sum::<u64>();
    assert_eq!(retries(&s), 0, "retried without any loss");
    drop_all(&mut s, 0.5);
    write_some(&mut s, 100, "y");
    s.run_until(200, Simulator::converged)
        .expect("no convergence under 50% loss");
    assert!(retries(&s) > 0, "50% loss retried nothing");
}

#[test]
fn converges_after_a_partition_heals() {
    let mut s = sim(10, seed("converges_after_a_partition_heals"));
    s.faults().partition(&ids(0..5), &ids(5..10));
    // Each side writes, including the same keys.
    for k in 0..50 {
        s.set(id(k % 5), &format!("k{k}"), b"left");
        s.set(id(5 + k % 5), &format!("k{k}"), b"right");
    }
    for _ in 0..30 {
        s.round();
    }
    assert!(!s.converged(), "the partition let state through");
    let right = s.replica(id(5)).unwrap().get("k0").cloned();
    assert_eq!(s.replica(id(9)).unwrap().get("k0").cloned(), right);
    s.faults().heal();
    s.run_until(50, Simulator::converged)
        .expect("no convergence after heal");
    // The right side wrote later: its values win everywhere.
    for r in s.live() {
        assert_eq!(r.get("k7").map(|v| &v[..]), Some(&b"right"[..]));
    }
}

#[test]
fn converges_under_duplicates_reordering_and_delays() {
    let mut s = sim(20, seed("converges_under_duplicates_reordering_and_delays"));
    s.faults().set_all_faults(&LinkFaults {
        duplicate: 0.2,
        reorder: 0.2,
        delay: Some((Duration::ZERO, Duration::from_millis(3 * ROUND_MS))),
        ..LinkFaults::default()
    });
    write_some(&mut s, 200, "x");
    s.run_until(300, Simulator::converged)
        .expect("no convergence under duplicates, reordering and delays");
    let c = s.faults().total();
    assert!(
        c.duplicated > 0 && c.reordered > 0 && c.delayed > 0,
        "a fault was inert: {c:?}"
    );
    assert_eq!(s.replica(id(3)).unwrap().len(), 200);
}

#[test]
fn a_held_link_delivers_in_order_after_its_release() {
    let mut s = sim(2, seed("a_held_link_delivers_in_order_after_its_release"));
    s.faults().hold(NodeId(0), NodeId(1));
    s.faults().hold(NodeId(1), NodeId(0));
    s.set(id(0), "k", b"v");
    for _ in 0..5 {
        s.round();
    }
    assert!(
        s.replica(id(1)).unwrap().get("k").is_none(),
        "a held message arrived"
    );
    assert!(s.faults().counters(NodeId(0), NodeId(1)).held > 0);
    s.faults().release(NodeId(0), NodeId(1));
    s.faults().release(NodeId(1), NodeId(0));
    s.run_until(20, Simulator::converged)
        .expect("no convergence after the release");
    assert_eq!(
        s.replica(id(1)).unwrap().get("k").map(|v| &v[..]),
        Some(&b"v"[..])
    );
}

/// The protocol trusts the transport for integrity (TCP's checksum): a
/// flipped byte that still decodes is taken as sent. What the simulator
/// must show is that every corruption is counted, a refused one is lost
/// and counted, and none takes a replica down.
#[test]
fn corruption_is_counted_and_takes_no_replica_down() {
    let mut s = sim(10, seed("corruption_is_counted_and_takes_no_replica_down"));
    s.faults().set_all_faults(&LinkFaults {
        corrupt: 0.2,
        ..LinkFaults::default()
    });
    for wave in 0..10 {
        write_some(&mut s, 50, &format!("w{wave}"));
        for _ in 0..5 {
            s.round();
        }
    }
    let c = s.faults().total();
    assert!(c.corrupted > 100, "{c:?}");
    assert!(
        s.totals().lost > 0 && s.totals().lost <= c.corrupted,
        "refused corruptions are the only loss: lost {}, {c:?}",
        s.totals().lost
    );
    assert_eq!(s.live().count(), 10);
    s.faults().set_all_faults(&LinkFaults::default());
    let agreed = s.run_until(50, Simulator::converged);
    println!("after corruption stopped: converged in {agreed:?} rounds");
}

#[test]
fn converges_across_crash_and_restart() {
    let mut s = sim(10, seed("converges_across_crash_and_restart"));
    write_some(&mut s, 100, "x");
    s.run_until(50, Simulator::converged)
        .expect("first convergence");
    s.crash(id(3));
    s.crash(id(4));
    write_some(&mut s, 100, "y");
    s.run_until(50, Simulator::converged)
        .expect("survivors converge");
    s.restart(id(3), false).unwrap(); // from its durable writes
    s.restart(id(4), true).unwrap(); // wiped
    assert!(!s.converged());
    s.run_until(100, Simulator::converged)
        .expect("restarted replicas catch up");
    assert_eq!(s.replica(id(4)).unwrap().len(), 100);
    assert_eq!(
        s.replica(id(3)).unwrap().get("k5").map(|v| &v[..]),
        Some(&b"y-5-a"[..])
    );
}

/// A wiped replica whose first peer is another restarted one, which never
/// saw its writes, must still get its lost writes back from the others
/// (it used to take its own watermark from the clock at once, so nobody
/// ever sent them).
#[test]
fn a_wiped_replica_recovers_its_writes_though_its_first_peer_never_saw_them() {
    let mut s = sim(10, seed("a_wiped_replica_recovers_its_writes"));
    write_some(&mut s, 100, "x");
    s.run_until(50, Simulator::converged)
        .expect("first convergence");
    s.crash(id(3));
    s.crash(id(4));
    s.restart(id(3), true).unwrap();
    s.restart(id(4), true).unwrap();
    // The two restarted replicas hear only each other at first.
    s.faults()
        .partition(&ids(3..5), &[ids(0..3), ids(5..10)].concat());
    for _ in 0..3 {
        s.round();
    }
    s.faults().heal();
    s.run_until(100, |s| {
        s.converged() && s.live().all(|r| !r.is_resyncing())
    })
    .expect("the wiped replicas never caught up");
    for i in [3, 4] {
        assert_eq!(s.replica(id(i)).unwrap().len(), 100, "replica {i}");
    }
}

#[test]
fn a_delete_never_resurrects_after_a_short_absence() {
    let mut s = Simulator::new(6, seed("delete_short_absence"), ROUND_MS, |c| {
        c.tombstone_grace_ms = 10_000;
    })
    .unwrap();
    s.set(id(0), "doomed", b"v");
    s.run_until(50, Simulator::converged).unwrap();
    let resyncs = s.replica(id(5)).unwrap().stats().resyncs;
    s.faults().partition(&ids(5..6), &ids(0..5));
    s.delete(id(1), "doomed");
    // Away for less than the grace period (30 rounds = 3 s).
    for _ in 0..30 {
        s.round();
    }
    assert!(s.replica(id(5)).unwrap().get("doomed").is_some());
    s.faults().heal();
    s.run_until(50, Simulator::converged).unwrap();
    for r in s.live() {
        assert_eq!(r.get("doomed"), None, "replica {} resurrected it", r.node());
    }
    // Caught up by deltas: no resynchronisation was needed.
    assert_eq!(s.replica(id(5)).unwrap().stats().resyncs, resyncs);
}

#[test]
fn a_replica_away_longer_than_the_grace_resyncs_instead_of_resurrecting() {
    long_absence(seed("delete_long_absence"));
}

/// A seed at which the healthy replicas resynchronised against the one
/// coming back, pulled its stale entries and resurrected the delete.
#[test]
fn healthy_replicas_do_not_resync_against_one_back_from_a_long_absence() {
    long_absence(1_795_256_050_267_412_577);
}

/// A seed at which the replica was cut off before it had a watermark for
/// any other origin: it could not tell it lagged and kept the delete.
#[test]
fn a_replica_cut_off_before_any_watermark_still_resyncs() {
    long_absence(1_796_247_872_251_277_528);
}

fn long_absence(seed: u64) {
    let mut s = Simulator::new(6, seed, ROUND_MS, |c| {
        c.tombstone_grace_ms = 2_000;
    })
    .unwrap();
    s.set(id(0), "doomed", b"v");
    s.set(id(0), "kept", b"v");
    s.run_until(50, Simulator::converged).unwrap();
    let resyncs = s.replica(id(5)).unwrap().stats().resyncs;
    s.faults().partition(&ids(5..6), &ids(0..5));
    s.delete(id(1), "doomed");
    // 100 rounds = 10 s: five times the grace; the tombstone is collected.
    for _ in 0..100 {
        s.round();
    }
    for i in 0..5 {
        assert_eq!(
            s.replica(id(i)).unwrap().entry("doomed"),
            None,
            "tombstone kept"
        );
    }
    assert!(s.replica(id(5)).unwrap().get("doomed").is_some());
    // Replica 5 also wrote while away; that write must survive the resync.
    s.set(id(5), "written-away", b"w");
    s.faults().heal();
    s.run_until(100, Simulator::converged)
        .expect("no convergence");
    for r in s.live() {
        assert_eq!(r.get("doomed"), None, "replica {} resurrected it", r.node());
        assert!(r.get("kept").is_some());
        assert!(r.get("written-away").is_some());
    }
    assert!(
        s.replica(id(5)).unwrap().stats().resyncs > resyncs,
        "no resync"
    );
}

#[test]
fn a_thousand_replicas_converge() {
    let mut s = sim(1000, seed("a_thousand_replicas_converge"));
    let e = s.set(id(17), "hot", b"1").unwrap();
    let rounds = s
        .run_until(30, |s| s.holders(&e) == 1000)
        .expect("the write did not spread");
    assert!(rounds <= 10, "took {rounds} rounds");
    println!("1000 replicas hold the write after {rounds} rounds");
}

/// Three replicas, clocks at `skew` ahead and behind the first; one quiet
/// round so every clock is measured, then `writes` rounds with a write at
/// every replica each round. Returns the simulator, the writes refused,
/// and the entries sent until convergence (or the round cap).
fn skewed(skew: i64, writes: usize) -> (Simulator, usize, u64) {
    let mut s = Simulator::new(3, seed("skewed"), ROUND_MS, |c| c.fanout = Fanout::Fixed(2))
        .expect("config");
    s.set_clock_offset(id(1), skew);
    s.set_clock_offset(id(2), -skew);
    s.round();
    let mut refused = 0;
    for round in 0..writes {
        for i in 0..3 {
            if s.set(id(i), &format!("k{i}-{round}"), b"v").is_none() {
                refused += 1;
            }
        }
        s.round();
    }
    s.run_until(300, Simulator::converged);
    let sent = s.live().map(|r| r.stats().entries_sent).sum();
    (s, refused, sent)
}

#[test]
fn a_replica_whose_clock_is_off_the_cluster_refuses_writes_and_says_so() {
    let (mut s, refused, _) = skewed(600_000, 20);
    assert_eq!(refused, 40, "the two skewed replicas took writes");
    let now = s.now_ms();
    let fast = s.replica_mut(id(1)).unwrap();
    let o = fast.clock_offset().expect("measured");
    assert!((590_000..=610_000).contains(&o.ahead_ms), "{o:?}");
    let err = fast
        .set("k", "v".into(), now + 600_000)
        .expect_err("a write on a clock 600 s ahead");
    assert!(
        err.to_string()
            .starts_with("clock ahead of the cluster's by 600.0 s (the median of this clock and 2 measured peer(s);"),
        "{err}"
    );
    let slow = s.replica(id(2)).unwrap().clock_offset().unwrap();
    assert!(slow.ahead_ms < -590_000, "{slow:?}");
    // The replica in the middle is the cluster's clock: it writes.
    assert!(
        s.replica(id(0))
            .unwrap()
            .clock_offset()
            .unwrap()
            .ahead_ms
            .abs()
            < 1_000
    );
    assert_eq!(s.replica(id(0)).unwrap().len(), 20);
    assert_eq!(
        s.replica(id(1)).unwrap().len(),
        20,
        "the replica ahead takes the median's writes"
    );
}

/// A peer that would refuse a version is not sent it again each round: at
/// 70 s of skew (past the 60 s bound) the entries sent stay close to what
/// the same writes cost without skew. (Before, the refused entries went
/// out every round: 500,000 entries and 16 MB for 300 writes.)
#[test]
fn versions_a_peer_would_refuse_are_not_sent_again_and_again() {
    let (_, refused, unskewed) = skewed(0, 50);
    assert_eq!(refused, 0);
    let (s, refused, sent) = skewed(70_000, 50);
    assert_eq!(refused, 100, "the skewed replicas took writes");
    assert!(
        sent <= unskewed,
        "{sent} entries sent at 70 s of skew, {unskewed} without"
    );
    let rejected: u64 = s.live().map(|r| r.stats().rejected).sum();
    assert!(rejected <= 10, "{rejected} entries refused");
    // The first replica's writes reach the slow one once its clock is
    // within the bound of theirs: everything converges.
    assert!(s.converged(), "no convergence at 70 s of skew");
}
