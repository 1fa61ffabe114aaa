//! The fault model through its public API.

use std::time::Duration;

use multinode_mesh::{Delivery, Fate, FaultModel, LinkCounters, LinkFaults};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

use crate::support::{id, ids, proptest_config, seed};

const DELIVER: Fate = Fate::CLEAN;

fn noisy() -> LinkFaults {
    LinkFaults {
        drop: 0.3,
        duplicate: 0.2,
        reorder: 0.1,
        delay: Some((Duration::from_millis(1), Duration::from_millis(5))),
        corrupt: 0.1,
    }
}

/// Sends `count` messages round-robin over every link between `n` nodes;
/// returns the fates.
fn run(model: &mut FaultModel, n: usize, count: usize) -> Vec<Fate> {
    (0..count)
        .map(|i| model.decide(id(i % n), id((i / n) % n), &[i as u8; 3]))
        .collect()
}

#[test]
fn faults_off_deliver_everything_once_in_order_at_once() {
    let mut runner = TestRunner::new(proptest_config("faults_off_deliver_everything", 128));
    let sends = proptest::collection::vec((0usize..4, 0usize..4, 0usize..100), 0..200);
    runner
        .run(&(any::<u64>(), sends), |(model_seed, sends)| {
            let mut m = FaultModel::new(model_seed);
            for (from, to, len) in &sends {
                prop_assert_eq!(m.decide(id(*from), id(*to), &vec![0; *len]), DELIVER);
            }
            // Links nothing was said of are not tracked: nothing acted.
            prop_assert_eq!(m.total(), LinkCounters::default());
            Ok(())
        })
        .unwrap();
}

#[test]
fn one_seed_one_trace() {
    let s = seed("one_seed_one_trace");
    let (mut a, mut b) = (FaultModel::new(s), FaultModel::new(s));
    a.set_all_faults(&noisy());
    b.set_all_faults(&noisy());
    assert_eq!(run(&mut a, 3, 5000), run(&mut b, 3, 5000));
    assert_eq!(a.trace_hash(), b.trace_hash());

    let mut c = FaultModel::new(s.wrapping_add(1));
    c.set_all_faults(&noisy());
    run(&mut c, 3, 5000);
    assert_ne!(
        a.trace_hash(),
        c.trace_hash(),
        "another seed, the same trace"
    );
}

#[test]
fn counters_match_the_fates() {
    let mut m = FaultModel::new(seed("counters_match_the_fates"));
    m.set_faults(id(0), id(1), noisy());
    let fates: Vec<Fate> = (0..20_000).map(|_| m.decide(id(0), id(1), b"x")).collect();
    let c = m.counters(id(0), id(1));
    let count = |f: &dyn Fn(&Fate) -> bool| fates.iter().filter(|x| f(x)).count() as u64;
    assert_eq!(c.sent, 20_000);
    assert_eq!(c.dropped, count(&|f| *f == Fate::Dropped));
    assert_eq!(
        c.duplicated,
        count(&|f| matches!(f, Fate::Deliver(Delivery { copies: 2, .. })))
    );
    assert_eq!(
        c.reordered,
        count(&|f| matches!(f, Fate::Deliver(Delivery { overtake: true, .. })))
    );
    assert_eq!(
        c.delayed,
        count(&|f| matches!(f, Fate::Deliver(Delivery { after, .. }) if !after.is_zero()))
    );
    assert_eq!(
        c.corrupted,
        count(&|f| matches!(
            f,
            Fate::Deliver(Delivery {
                corrupt: Some(_),
                ..
            })
        ))
    );
    // Every fault acted, near its rate (binomial, 20,000 draws: ±2% is > 5 sigma).
    assert!((5_400..=6_600).contains(&c.dropped), "{c:?}");
    let delivered = c.sent - c.dropped;
    assert!(
        c.duplicated * 100 >= delivered * 17 && c.duplicated * 100 <= delivered * 23,
        "{c:?}"
    );
    assert!(
        c.corrupted * 100 >= delivered * 8 && c.corrupted * 100 <= delivered * 12,
        "{c:?}"
    );
    for f in &fates {
        if let Fate::Deliver(Delivery { after, corrupt, .. }) = f {
            assert!((Duration::from_millis(1)..=Duration::from_millis(5)).contains(after));
            // The only byte of b"x", changed.
            assert!(corrupt.is_none_or(|flip| flip.at == 0 && flip.mask != 0));
        }
    }
    // The other direction had no faults and saw nothing.
    assert_eq!(m.counters(id(1), id(0)), LinkCounters::default());
}

#[test]
fn cut_is_one_way_and_partition_both_ways_until_heal() {
    let mut m = FaultModel::new(1);
    m.cut(id(0), id(1));
    assert_eq!(m.decide(id(0), id(1), b"a"), Fate::Dropped);
    assert_eq!(m.decide(id(1), id(0), b"b"), DELIVER, "a cut is one-way");
    m.partition(&ids(&[0, 1]), &ids(&[2, 3]));
    for (a, b) in [(0, 2), (2, 0), (1, 3), (3, 1)] {
        assert_eq!(m.decide(id(a), id(b), b"p"), Fate::Dropped, "{a}->{b}");
    }
    assert_eq!(m.decide(id(2), id(3), b"q"), DELIVER, "inside one side");
    assert_eq!(m.counters(id(0), id(2)).cut, 1);
    m.heal();
    assert!(!m.is_cut(id(0), id(1)) && !m.is_cut(id(3), id(1)));
    assert_eq!(m.decide(id(0), id(1), b"a"), DELIVER);
}

#[test]
fn hold_holds_until_release() {
    let mut m = FaultModel::new(1);
    m.hold(id(0), id(1));
    for i in 0..5u8 {
        assert_eq!(m.decide(id(0), id(1), &[i]), Fate::Held);
    }
    assert_eq!(m.decide(id(1), id(0), b"other way"), DELIVER);
    assert_eq!(m.counters(id(0), id(1)).held, 5);
    assert!(m.is_holding(id(0), id(1)) && m.is_faulty(id(0), id(1)) && !m.is_faulty(id(1), id(0)));
    m.release(id(0), id(1));
    assert!(!m.is_holding(id(0), id(1)) && !m.is_faulty(id(0), id(1)));
    assert_eq!(m.decide(id(0), id(1), b"after"), DELIVER);
    assert_eq!(m.counters(id(0), id(1)).held, 5);
}

#[test]
fn bad_probabilities_are_clamped_not_trusted() {
    let mut m = FaultModel::new(1);
    m.set_faults(
        id(0),
        id(1),
        LinkFaults {
            drop: f64::NAN,
            duplicate: 7.0,
            reorder: -1.0,
            delay: Some((Duration::from_millis(5), Duration::from_millis(1))),
            corrupt: f64::INFINITY,
        },
    );
    for _ in 0..100 {
        match m.decide(id(0), id(1), b"x") {
            Fate::Deliver(Delivery {
                copies,
                overtake,
                after,
                corrupt,
            }) => {
                assert_eq!(copies, 2);
                assert!(corrupt.is_some(), "a probability over 1 is 1");
                assert!(!overtake);
                assert!((Duration::from_millis(1)..=Duration::from_millis(5)).contains(&after));
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn corrupt_flips_one_byte_inside_the_message_and_never_an_empty_one() {
    let mut m = FaultModel::new(seed("corrupt_flips_one_byte"));
    m.set_all_faults(&LinkFaults {
        corrupt: 1.0,
        ..LinkFaults::default()
    });
    let msg: Vec<u8> = (0..=255).collect();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4096 {
        let Fate::Deliver(Delivery {
            corrupt: Some(flip),
            ..
        }) = m.decide(id(0), id(1), &msg)
        else {
            panic!("corrupt 1.0 left a message intact");
        };
        let mut got = msg.clone();
        flip.apply(&mut got);
        let differ: Vec<usize> = (0..msg.len()).filter(|&i| got[i] != msg[i]).collect();
        assert_eq!(differ, [flip.at], "exactly the flipped byte changes");
        seen.insert(flip.at);
    }
    assert!(
        seen.len() > 200,
        "flips spread over the message: {}",
        seen.len()
    );
    assert_eq!(m.decide(id(0), id(1), b""), DELIVER, "an empty message");
    assert_eq!(m.counters(id(0), id(1)).corrupted, 4096);
}

#[test]
fn set_all_faults_reaches_links_first_used_later_and_replaces_one_link_faults() {
    let mut m = FaultModel::new(1);
    m.set_faults(id(0), id(1), noisy());
    let all_drop = LinkFaults {
        drop: 1.0,
        ..LinkFaults::default()
    };
    m.set_all_faults(&all_drop);
    assert_eq!(
        m.faults(id(0), id(1)),
        &all_drop,
        "one link's faults replaced"
    );
    assert_eq!(m.decide(id(7), id(9), b"new link"), Fate::Dropped);
    assert_eq!(m.total().dropped, 1);
    m.set_all_faults(&LinkFaults::default());
    assert!(!m.any_faulty());
    assert_eq!(m.decide(id(7), id(9), b"new link"), DELIVER);
}
