//! The fault model through its public API.

use std::time::Duration;

use multinode_mesh::{Fate, FaultModel, LinkCounters, LinkFaults};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

use crate::support::{proptest_config, seed};

const DELIVER: Fate = Fate::Deliver {
    after: Duration::ZERO,
    copies: 1,
    overtake: false,
};

fn noisy() -> LinkFaults {
    LinkFaults {
        drop: 0.3,
        duplicate: 0.2,
        reorder: 0.1,
        delay: Some((Duration::from_millis(1), Duration::from_millis(5))),
    }
}

/// Sends `count` messages round-robin over every link; returns the fates.
fn run(model: &mut FaultModel, count: usize) -> Vec<Fate> {
    let n = model.nodes();
    (0..count)
        .map(|i| model.decide(i % n, (i / n) % n, &[i as u8; 3]))
        .collect()
}

#[test]
fn faults_off_deliver_everything_once_in_order_at_once() {
    let mut runner = TestRunner::new(proptest_config("faults_off_deliver_everything", 128));
    let sends = proptest::collection::vec((0usize..4, 0usize..4, 0usize..100), 0..200);
    runner
        .run(&(any::<u64>(), sends), |(model_seed, sends)| {
            let mut m = FaultModel::new(4, model_seed);
            for (from, to, len) in &sends {
                prop_assert_eq!(m.decide(*from, *to, &vec![0; *len]), DELIVER);
            }
            let sent: u64 = (0..4)
                .flat_map(|a| (0..4).map(move |b| (a, b)))
                .map(|(a, b)| m.counters(a, b).sent)
                .sum();
            prop_assert_eq!(sent, sends.len() as u64);
            Ok(())
        })
        .unwrap();
}

#[test]
fn one_seed_one_trace() {
    let s = seed("one_seed_one_trace");
    let (mut a, mut b) = (FaultModel::new(3, s), FaultModel::new(3, s));
    a.set_all_faults(&noisy());
    b.set_all_faults(&noisy());
    assert_eq!(run(&mut a, 5000), run(&mut b, 5000));
    assert_eq!(a.trace_hash(), b.trace_hash());

    let mut c = FaultModel::new(3, s.wrapping_add(1));
    c.set_all_faults(&noisy());
    run(&mut c, 5000);
    assert_ne!(
        a.trace_hash(),
        c.trace_hash(),
        "another seed, the same trace"
    );
}

#[test]
fn counters_match_the_fates() {
    let mut m = FaultModel::new(2, seed("counters_match_the_fates"));
    m.set_faults(0, 1, noisy());
    let fates: Vec<Fate> = (0..20_000).map(|_| m.decide(0, 1, b"x")).collect();
    let c = m.counters(0, 1);
    let count = |f: &dyn Fn(&Fate) -> bool| fates.iter().filter(|x| f(x)).count() as u64;
    assert_eq!(c.sent, 20_000);
    assert_eq!(c.dropped, count(&|f| *f == Fate::Dropped));
    assert_eq!(
        c.duplicated,
        count(&|f| matches!(f, Fate::Deliver { copies: 2, .. }))
    );
    assert_eq!(
        c.reordered,
        count(&|f| matches!(f, Fate::Deliver { overtake: true, .. }))
    );
    assert_eq!(
        c.delayed,
        count(&|f| matches!(f, Fate::Deliver { after, .. } if !after.is_zero()))
    );
    // Every fault acted, near its rate (binomial, 20,000 draws: ±2% is > 5 sigma).
    assert!((5_400..=6_600).contains(&c.dropped), "{c:?}");
    let delivered = c.sent - c.dropped;
    assert!(
        c.duplicated * 100 >= delivered * 17 && c.duplicated * 100 <= delivered * 23,
        "{c:?}"
    );
    for f in &fates {
        if let Fate::Deliver { after, .. } = f {
            assert!((Duration::from_millis(1)..=Duration::from_millis(5)).contains(after));
        }
    }
    // The other direction had no faults and saw nothing.
    assert_eq!(m.counters(1, 0), LinkCounters::default());
}

#[test]
fn cut_is_one_way_and_partition_both_ways_until_heal() {
    let mut m = FaultModel::new(4, 1);
    m.cut(0, 1);
    assert_eq!(m.decide(0, 1, b"a"), Fate::Dropped);
    assert_eq!(m.decide(1, 0, b"b"), DELIVER, "a cut is one-way");
    m.partition(&[0, 1], &[2, 3]);
    for (a, b) in [(0, 2), (2, 0), (1, 3), (3, 1)] {
        assert_eq!(m.decide(a, b, b"p"), Fate::Dropped, "{a}->{b}");
    }
    assert_eq!(m.decide(2, 3, b"q"), DELIVER, "inside one side");
    assert_eq!(m.counters(0, 2).cut, 1);
    m.heal();
    assert!(!m.is_cut(0, 1) && !m.is_cut(3, 1));
    assert_eq!(m.decide(0, 1, b"a"), DELIVER);
}

#[test]
fn hold_holds_until_release() {
    let mut m = FaultModel::new(2, 1);
    m.hold(0, 1);
    for i in 0..5u8 {
        assert_eq!(m.decide(0, 1, &[i]), Fate::Held);
    }
    assert_eq!(m.decide(1, 0, b"other way"), DELIVER);
    assert_eq!(m.counters(0, 1).held, 5);
    assert!(m.is_holding(0, 1) && m.is_faulty(0, 1) && !m.is_faulty(1, 0));
    m.release(0, 1);
    assert!(!m.is_holding(0, 1) && !m.is_faulty(0, 1));
    assert_eq!(m.decide(0, 1, b"after"), DELIVER);
    assert_eq!(m.counters(0, 1).held, 5);
}

#[test]
fn bad_probabilities_are_clamped_not_trusted() {
    let mut m = FaultModel::new(2, 1);
    m.set_faults(
        0,
        1,
        LinkFaults {
            drop: f64::NAN,
            duplicate: 7.0,
            reorder: -1.0,
            delay: Some((Duration::from_millis(5), Duration::from_millis(1))),
        },
    );
    for _ in 0..100 {
        match m.decide(0, 1, b"x") {
            Fate::Deliver {
                copies,
                overtake,
                after,
            } => {
                assert_eq!(copies, 2);
                assert!(!overtake);
                assert!((Duration::from_millis(1)..=Duration::from_millis(5)).contains(&after));
            }
            other => panic!("{other:?}"),
        }
    }
}
