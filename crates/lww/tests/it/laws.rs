//! The merge laws and the reference node's defects, on the sans-IO replica.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use multinode_lww::{Fanout, LwwEntry, LwwError, Outgoing, PeerStatus, Replica, ReplicaConfig};
use multinode_testkit::proptest_config;
use multinode_wire::{LwwMessage, NodeId, Timestamp};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

const T0: u64 = 1_767_225_600_000;

fn replica(node: u64) -> Replica {
    Replica::new(ReplicaConfig::new(NodeId(node))).expect("config")
}

/// Runs one full exchange `a` → `b` → `a` → `b` at `now`.
fn exchange(a: &mut Replica, b: &mut Replica, now: u64) {
    let (ia, ib) = (a.node(), b.node());
    a.add_peer(ib);
    b.add_peer(ia);
    let mut queue: Vec<(bool, LwwMessage)> = Vec::new();
    for (to, m) in a.tick(now).messages {
        if to == ib {
            queue.push((true, m));
        }
    }
    while let Some((to_b, m)) = queue.pop() {
        let got = if to_b {
            b.receive(ia, m, now)
        } else {
            a.receive(ib, m, now)
        };
        for (_, r) in got.replies {
            queue.push((!to_b, r));
        }
    }
}

fn state(r: &Replica) -> Vec<LwwEntry> {
    let mut v: Vec<LwwEntry> = r.entries().cloned().collect();
    v.sort_by(|x, y| x.key.cmp(&y.key));
    v
}

#[test]
fn concurrent_writes_to_one_key_never_tie_and_converge() {
    // Reference defect: per-node counters gave both writes version 2 and
    // the cluster stayed split.
    let (mut a, mut b) = (replica(1), replica(2));
    let va = a.set("k", Bytes::from_static(b"111"), T0).unwrap().version;
    let vb = b.set("k", Bytes::from_static(b"222"), T0).unwrap().version;
    assert_eq!(va.physical_ms, vb.physical_ms);
    assert_ne!(va, vb, "two writes compared equal");
    exchange(&mut a, &mut b, T0 + 100);
    let want: &[u8] = if vb > va { b"222" } else { b"111" };
    assert_eq!(a.get("k").map(|v| &v[..]), Some(want));
    assert_eq!(b.get("k").map(|v| &v[..]), Some(want));
}

#[test]
fn a_causally_later_write_wins_over_a_node_whose_clock_is_ahead() {
    // Reference defect: a later write lost to an earlier one from a node
    // whose counter happened to be ahead.
    let (mut a, mut b) = (replica(1), replica(2));
    for i in 0..50 {
        a.set("k", Bytes::from(format!("a{i}")), T0 + 5_000)
            .unwrap();
    }
    exchange(&mut a, &mut b, T0 + 5_000);
    assert_eq!(b.get("k").map(|v| &v[..]), Some(&b"a49"[..]));
    // b's wall clock is 5 s behind a's, but it has seen a's write.
    b.set("k", Bytes::from_static(b"later"), T0).unwrap();
    exchange(&mut b, &mut a, T0 + 5_100);
    assert_eq!(a.get("k").map(|v| &v[..]), Some(&b"later"[..]));
}

#[test]
fn a_refused_write_leaves_no_phantom() {
    // Reference defect: a rejected write left an entry that was gossiped.
    let mut a = replica(1);
    let mut b = replica(2);
    let huge = Bytes::from(vec![0u8; a.config().max_entry() + 1]);
    assert!(matches!(
        a.set("k", huge, T0),
        Err(LwwError::TooLarge { .. })
    ));
    assert_eq!(a.entry("k"), None);
    exchange(&mut a, &mut b, T0 + 100);
    assert_eq!(b.entry("k"), None);
    assert_eq!(b.stats().entries_received, 0);
}

#[test]
fn a_fixed_fanout_of_zero_is_refused_at_build() {
    // Reference defect: `Bounded(0)` never gossiped.
    let mut c = ReplicaConfig::new(NodeId(1));
    c.fanout = Fanout::Fixed(0);
    match Replica::new(c) {
        Err(LwwError::Config { field, .. }) => assert_eq!(field, "fanout"),
        other => panic!("expected a config error, got {other:?}"),
    }
    assert_eq!(Fanout::Sqrt.of(100), 10);
    assert_eq!(Fanout::Log.of(1000), 10);
    assert_eq!(Fanout::Fixed(3).of(2), 2);
    assert_eq!(Fanout::All.of(7), 7);
}

#[test]
fn fingerprints_tell_apart_replicas_holding_different_deletes() {
    // Two nodes delete the same key; until the newer delete reaches both,
    // their live state is the same but their state is not.
    let (mut a, mut b) = (replica(1), replica(2));
    a.set("k", Bytes::from_static(b"v"), T0).unwrap();
    exchange(&mut a, &mut b, T0 + 100);
    assert_eq!(a.fingerprint(), b.fingerprint());
    let older = a.delete("k", T0 + 200).unwrap();
    let newer = b.delete("k", T0 + 300).unwrap();
    assert!(older.version < newer.version);
    assert_eq!((a.len(), b.len()), (0, 0));
    assert_ne!(a.fingerprint(), b.fingerprint());
    exchange(&mut a, &mut b, T0 + 400);
    assert_eq!(a.entry("k").map(|e| e.version), Some(newer.version));
    assert_eq!(a.fingerprint(), b.fingerprint());
}

#[test]
fn agreeing_replicas_exchange_only_digests() {
    // Reference defect: every round pushed the whole state.
    let (mut a, mut b) = (replica(1), replica(2));
    for i in 0..1000 {
        a.set(&format!("k{i}"), Bytes::from(vec![7u8; 100]), T0)
            .unwrap();
    }
    // Recent writes ride along with digests for three rounds; after that
    // an idle pair sends digests only.
    for i in 1..=4 {
        exchange(&mut a, &mut b, T0 + 100 * i);
    }
    assert_eq!(a.fingerprint(), b.fingerprint());
    let before = (a.stats().clone(), b.stats().clone());
    exchange(&mut a, &mut b, T0 + 500);
    let sent = a.stats().entries_sent - before.0.entries_sent + b.stats().entries_sent
        - before.1.entries_sent;
    let bytes =
        a.stats().bytes_sent - before.0.bytes_sent + b.stats().bytes_sent - before.1.bytes_sent;
    assert_eq!(sent, 0, "agreeing replicas sent entries");
    assert!(bytes < 200, "an idle exchange cost {bytes} bytes");
}

#[test]
fn a_backlog_spreads_over_rounds_within_the_budget() {
    let mut c = ReplicaConfig::new(NodeId(1));
    c.delta_budget = 16 << 10;
    let mut a = Replica::new(c.clone()).unwrap();
    c.node = NodeId(2);
    let mut b = Replica::new(c.clone()).unwrap();
    c.node = NodeId(3);
    let mut other = Replica::new(c).unwrap();
    for i in 0..500 {
        a.set(&format!("a{i}"), Bytes::from(vec![1u8; 200]), T0)
            .unwrap();
    }
    // A second origin with a small backlog must not wait for the big one.
    for i in 0..5 {
        other
            .set(&format!("o{i}"), Bytes::from(vec![2u8; 10]), T0)
            .unwrap();
    }
    exchange(&mut other, &mut a, T0 + 10);
    b.add_peer(NodeId(1));
    a.add_peer(NodeId(2));
    let mut rounds = 0;
    while b.len() < 505 {
        rounds += 1;
        assert!(rounds < 100, "the backlog never drained");
        let now = T0 + 100 * rounds;
        let d = b
            .tick(now)
            .messages
            .into_iter()
            .find(|(to, _)| *to == NodeId(1));
        let (_, d) = d.expect("b always gossips with its one peer");
        for (_, m) in a.receive(NodeId(2), d, now).replies {
            assert!(m.encoded_len() <= 16 << 10, "a sync over the budget");
            b.receive(NodeId(1), m, now);
        }
        if rounds == 1 {
            assert!((0..5).all(|i| b.get(&format!("o{i}")).is_some()));
            assert!(b.len() < 505, "the budget did not cut the first delta");
        }
    }
    assert!(
        rounds >= 5,
        "500×200 B in 16 KiB deltas took {rounds} rounds"
    );
}

#[test]
fn values_are_bytes_and_deletes_are_tombstones() {
    let (mut a, mut b) = (replica(1), replica(2));
    a.set("bin", Bytes::from_static(&[0, 255, 10, 13]), T0)
        .unwrap();
    a.set("gone", Bytes::from_static(b"x"), T0).unwrap();
    exchange(&mut a, &mut b, T0 + 100);
    let d = b.delete("gone", T0 + 200).unwrap();
    assert_eq!(d.value, None);
    exchange(&mut b, &mut a, T0 + 300);
    assert_eq!(a.get("bin").map(|v| &v[..]), Some(&[0u8, 255, 10, 13][..]));
    assert_eq!(a.get("gone"), None);
    assert_eq!(a.entry("gone").map(|e| e.value.clone()), Some(None));
    assert_eq!(a.len(), 1);
}

#[test]
fn liveness_follows_heartbeats() {
    let mut c = ReplicaConfig::new(NodeId(1));
    c.round_interval_ms = 100;
    let mut a = Replica::new(c.clone()).unwrap();
    c.node = NodeId(2);
    let mut b = Replica::new(c).unwrap();
    let mut now = T0;
    for _ in 0..20 {
        now += 100;
        exchange(&mut a, &mut b, now);
    }
    assert_eq!(a.liveness(now)[&NodeId(2)], PeerStatus::Alive);
    // b stops: a hears nothing more.
    assert_eq!(a.liveness(now + 1_500)[&NodeId(2)], PeerStatus::Suspect);
    assert_eq!(a.liveness(now + 5_000)[&NodeId(2)], PeerStatus::Dead);
}

#[test]
fn the_peer_choice_follows_the_seed() {
    let chosen = |seed: u64| -> Vec<Vec<NodeId>> {
        let mut c = ReplicaConfig::new(NodeId(0));
        c.seed = seed;
        let mut r = Replica::new(c).unwrap();
        for p in 1..50 {
            r.add_peer(NodeId(p));
        }
        (0..10)
            .map(|i| {
                r.tick(T0 + i)
                    .messages
                    .into_iter()
                    .map(|(to, _)| to)
                    .collect()
            })
            .collect()
    };
    assert_eq!(chosen(7), chosen(7));
    assert_ne!(chosen(7), chosen(8));
    let all: BTreeSet<NodeId> = chosen(7).into_iter().flatten().collect();
    assert!(all.len() > 10, "the choice is not spread: {all:?}");
}

/// Entries whose versions collide on physical time and logical counter
/// across nodes; a version names one write (its value derives from it).
fn entries() -> impl Strategy<Value = Vec<LwwEntry>> {
    let entry = (0..3u64, 0..3u32, 0..3u64).prop_map(|(ms, logical, node)| {
        let version = Timestamp {
            physical_ms: T0 + ms,
            logical,
            node: NodeId(node),
        };
        let key = (ms * 7 + u64::from(logical) * 3 + node) % 4;
        let live = (ms + u64::from(logical) + node) % 3 != 0;
        LwwEntry {
            key: format!("k{key}"),
            value: live.then(|| Bytes::from(format!("{version}"))),
            version,
        }
    });
    proptest::collection::vec(entry, 0..12)
}

/// A replica holding `xs` merged in order.
fn of(xs: &[&[LwwEntry]]) -> Replica {
    let mut r = replica(9);
    for x in xs {
        r.restore(x.iter().cloned(), T0);
    }
    r
}

#[test]
fn merge_is_commutative_associative_and_idempotent() {
    let mut runner = TestRunner::new(proptest_config("merge_laws", 512));
    runner
        .run(&(entries(), entries(), entries()), |(a, b, c)| {
            // Commutative, with the same values and versions everywhere.
            prop_assert_eq!(state(&of(&[&a, &b])), state(&of(&[&b, &a])));
            // Associative: merge states, not only lists.
            let ab: Vec<LwwEntry> = of(&[&a, &b]).entries().cloned().collect();
            let bc: Vec<LwwEntry> = of(&[&b, &c]).entries().cloned().collect();
            prop_assert_eq!(state(&of(&[&ab, &c])), state(&of(&[&a, &bc])));
            // Idempotent.
            let aa = of(&[&a, &a]);
            prop_assert_eq!(state(&aa), state(&of(&[&a])));
            prop_assert_eq!(aa.fingerprint(), of(&[&a]).fingerprint());
            // The winner of each key is its greatest version.
            let r = of(&[&a, &b, &c]);
            for e in a.iter().chain(&b).chain(&c) {
                prop_assert!(r.entry(&e.key).unwrap().version >= e.version);
            }
            Ok(())
        })
        .unwrap();
}

/// Replicas 1 to 10, each a peer of `a` and `a` of each.
fn ten_peers_of(a: &mut Replica) -> BTreeMap<NodeId, Replica> {
    let mut peers: BTreeMap<NodeId, Replica> = (1..=10).map(|i| (NodeId(i), replica(i))).collect();
    for p in peers.values_mut() {
        a.add_peer(p.node());
        p.add_peer(a.node());
    }
    peers
}

/// Delivers `opened` to `peers` and their answers back to `a`; the closing
/// syncs `a` sends are dropped.
fn answer(a: &mut Replica, peers: &mut BTreeMap<NodeId, Replica>, opened: Outgoing, now: u64) {
    for (to, m) in opened {
        let got = peers.get_mut(&to).unwrap().receive(a.node(), m, now);
        for (_, r) in got.replies {
            a.receive(to, r, now);
        }
    }
}

#[test]
fn an_unanswered_exchange_is_retried_once_with_a_peer_not_yet_contacted() {
    let mut a = replica(0);
    let mut peers = ten_peers_of(&mut a);
    let opened = a.tick(T0).messages;
    assert_eq!(opened.len(), 3);
    let first: BTreeSet<NodeId> = opened.iter().map(|(to, _)| *to).collect();
    // The first peer answers; the other two openers are lost.
    answer(&mut a, &mut peers, opened[..1].to_vec(), T0);
    let retried = a.retry(T0 + 50);
    let second: BTreeSet<NodeId> = retried.iter().map(|(to, _)| *to).collect();
    assert_eq!(second.len(), 2, "two exchanges went unanswered: {second:?}");
    assert!(
        second.is_disjoint(&first),
        "a retry went to a peer already contacted"
    );
    assert_eq!(a.stats().retries, 2);
    // One retry a round by default, answered or not.
    assert!(a.retry(T0 + 75).is_empty());
    // A round whose exchanges are all answered retries nothing.
    let opened = a.tick(T0 + 100).messages;
    answer(&mut a, &mut peers, opened, T0 + 100);
    assert!(
        a.retry(T0 + 150).is_empty(),
        "answered exchanges were retried"
    );
    assert_eq!(a.stats().retries, 2);
    // `retries = 0` never retries.
    let mut cfg = ReplicaConfig::new(NodeId(0));
    cfg.retries = 0;
    let mut z = Replica::new(cfg).expect("config");
    for i in 1..=10 {
        z.add_peer(NodeId(i));
    }
    assert_eq!(z.tick(T0).messages.len(), 3);
    assert!(z.retry(T0 + 50).is_empty());
}

/// Entries that reached a replica ahead of its watermark (pushed to it)
/// are not sent to it again by a peer that holds the same there, and its
/// watermark still moves; a replica missing one of them is sent them.
#[test]
fn entries_held_past_a_watermark_are_not_sent_again() {
    let now = T0 + 1000;
    // A learns origin 9's three writes, and its watermark, from 9 itself.
    let mut origin = replica(9);
    let writes: Vec<LwwEntry> = (0..3)
        .map(|i| {
            origin
                .set(&format!("o{i}"), Bytes::from_static(b"v"), T0 + i)
                .unwrap()
        })
        .collect();
    let newest = writes[2].version;
    // B and C are synchronised with A first (a new replica takes a few
    // rounds to settle its own watermark).
    let (mut a, mut b, mut c) = (replica(1), replica(2), replica(3));
    for i in 0..12 {
        exchange(&mut a, &mut b, T0 + 10 * i);
        exchange(&mut a, &mut c, T0 + 10 * i + 5);
    }
    for i in 0..12 {
        exchange(&mut origin, &mut a, now + 10 * i);
        exchange(&mut a, &mut origin, now + 10 * i + 5);
    }
    let now = now + 200;
    assert!(![&a, &b, &c].iter().any(|r| r.is_resyncing()));
    assert!(a.watermark(NodeId(9)).is_some_and(|w| w >= newest));
    // B and C get 9's writes pushed to them, C only two of them: pushed
    // entries move no watermark.
    let pushed = |to: &mut Replica, entries: &[LwwEntry]| {
        to.receive(
            NodeId(9),
            LwwMessage::Sync {
                reply: true,
                era: 0,
                answers: multinode_lww::NO_DIGEST,
                watermarks: Vec::new(),
                entries: entries.to_vec(),
                partial: Vec::new(),
                sent_ms: now,
                beyond: Vec::new(),
            },
            now,
        );
        assert!(to.watermark(NodeId(9)).is_none());
    };
    let answer_to = |from: &mut Replica, a: &mut Replica, at: u64| {
        let (_, opener) = from.tick(at).messages.remove(0);
        let theirs = match &opener {
            LwwMessage::Digest { beyond, .. } | LwwMessage::Sync { beyond, .. } => beyond.clone(),
        };
        let mut replies = a.receive(from.node(), opener, at).replies;
        assert_eq!(replies.len(), 1);
        let (_, reply) = replies.remove(0);
        let LwwMessage::Sync { entries, .. } = &reply else {
            panic!("a digest answered with {reply:?}");
        };
        let of_origin: Vec<LwwEntry> = entries
            .iter()
            .filter(|e| e.version.node == NodeId(9))
            .cloned()
            .collect();
        from.receive(a.node(), reply, at);
        (theirs, of_origin)
    };
    pushed(&mut b, &writes);
    pushed(&mut c, &writes[..2]);
    let (said, sent) = answer_to(&mut b, &mut a, now + 10);
    assert_eq!(said.len(), 1, "B names what it holds past its watermark");
    assert_eq!(said[0].origin, NodeId(9));
    assert!(sent.is_empty(), "A sent B again {sent:?}");
    assert_eq!(b.watermark(NodeId(9)), a.watermark(NodeId(9)));
    let (_, sent) = answer_to(&mut c, &mut a, now + 10);
    assert_eq!(sent, writes, "C, missing one, is sent the range whole");
    assert_eq!(c.watermark(NodeId(9)), a.watermark(NodeId(9)));
    assert_eq!(b.fingerprint(), a.fingerprint());
    assert_eq!(c.fingerprint(), a.fingerprint());
}

/// An exchange slower than usual is not taken for lost: it is not retried
/// before three times the smoothed answer time, and until then it keeps
/// its place in the next round's fanout.
#[test]
fn a_slow_exchange_is_not_retried_and_keeps_its_place_in_the_fanout() {
    let mut cfg = ReplicaConfig::new(NodeId(0));
    cfg.round_interval_ms = 1000;
    let mut a = Replica::new(cfg).expect("config");
    let mut peers = ten_peers_of(&mut a);
    // Answers take 400 ms: expected within 1,200.
    let opened = a.tick(T0).messages;
    assert_eq!(opened.len(), 3);
    answer(&mut a, &mut peers, opened, T0 + 400);
    assert_eq!(
        a.tick(T0 + 1000).messages.len(),
        3,
        "answered exchanges hold no place"
    );
    assert!(a.retry(T0 + 1500).is_empty(), "a slow exchange was retried");
    let next = a.tick(T0 + 2000).messages;
    assert!(
        next.is_empty(),
        "three exchanges still expected, yet {next:?}"
    );
    // Past the patience they are taken for lost: a full round again.
    let next = a.tick(T0 + 3500).messages;
    assert_eq!(next.len(), 3);
    assert_eq!(a.stats().retries, 0);
}

/// Behind a slow link a peer's digests keep naming the watermarks it had
/// before our last sync reached it: the range already sent is not sent
/// again within the patience, and what goes instead vouches for nothing
/// below it (if the first sync was lost, the peer's watermark stays);
/// past the patience the range goes again.
#[test]
fn a_range_sent_and_not_yet_confirmed_is_not_sent_again_within_the_patience() {
    let (mut a, mut b) = (replica(1), replica(2));
    for i in 0..12 {
        exchange(&mut a, &mut b, T0 + 10 * i);
    }
    // B's own exchange with A is answered in 400 ms: patience 1,200.
    let t1 = T0 + 1000;
    let (_, opener) = b.tick(t1).messages.remove(0);
    for (_, r) in a.receive(b.node(), opener, t1).replies {
        for (_, c) in b.receive(a.node(), r, t1 + 400).replies {
            a.receive(b.node(), c, t1 + 400);
        }
    }
    let writes: Vec<LwwEntry> = (0..3)
        .map(|i| {
            b.set(&format!("k{i}"), Bytes::from_static(b"v"), t1 + 410 + i)
                .unwrap()
        })
        .collect();
    let before = a.watermark(b.node());
    // A's digests, answered by B; the answers are held up on the way.
    let answer = |a: &mut Replica, b: &mut Replica, at: u64| {
        let (_, digest) = a.tick(at).messages.remove(0);
        let (_, sync) = b.receive(a.node(), digest, at).replies.remove(0);
        sync
    };
    let of = |m: &LwwMessage| match m {
        LwwMessage::Sync {
            entries, partial, ..
        } => (entries.clone(), partial.clone()),
        other => panic!("a digest answered with {other:?}"),
    };
    let t2 = t1 + 500;
    let first = answer(&mut a, &mut b, t2);
    assert_eq!(of(&first).0, writes, "the first answer carries the writes");
    let second = answer(&mut a, &mut b, t2 + 100);
    let (entries, partial) = of(&second);
    assert!(entries.is_empty(), "sent again: {entries:?}");
    let named: Vec<&Timestamp> = partial.iter().filter(|t| t.node == b.node()).collect();
    assert_eq!(named.len(), 1, "{partial:?}");
    assert!(before.is_none_or(|w| *named[0] <= w), "{partial:?}");
    // The first answer is lost: the second moves A's watermark of B no
    // further than what A holds.
    a.receive(b.node(), second, t2 + 150);
    assert_eq!(a.watermark(b.node()), before);
    assert!(a.entries().all(|e| !writes.contains(e)));
    // Past the patience (1,200 ms from the first answer) the range goes
    // again, and A takes it in.
    let third = answer(&mut a, &mut b, t2 + 1300);
    assert_eq!(of(&third).0, writes, "the range was not sent again");
    for (_, c) in a.receive(b.node(), third, t2 + 1300).replies {
        b.receive(a.node(), c, t2 + 1300);
    }
    assert!(a.watermark(b.node()) >= Some(writes[2].version));
    assert_eq!(a.fingerprint(), b.fingerprint());
}

/// Delivers `first` (to `b` when `to_b`) and every answer it draws, in
/// turn, at `now`; calls `seen` on each message on its way.
fn deliver(
    a: &mut Replica,
    b: &mut Replica,
    to_b: bool,
    first: LwwMessage,
    now: u64,
    mut seen: impl FnMut(bool, &LwwMessage),
) {
    let (ia, ib) = (a.node(), b.node());
    let mut queue = vec![(to_b, first)];
    while let Some((to_b, m)) = queue.pop() {
        seen(to_b, &m);
        let got = if to_b {
            b.receive(ia, m, now)
        } else {
            a.receive(ib, m, now)
        };
        queue.extend(got.replies.into_iter().map(|(_, r)| (!to_b, r)));
    }
}

/// A burst of writes is pushed only in part: the newest go with the
/// round's opener, as a rumour, and the rest by sync, where each peer is
/// sent only what it lacks (pushed blindly, a burst reached each replica
/// from every peer that opened a round with it).
#[test]
fn a_burst_of_writes_is_pushed_only_in_part_and_the_rest_goes_by_sync() {
    let (mut a, mut b) = (replica(1), replica(2));
    a.add_peer(b.node());
    b.add_peer(a.node());
    let writes: Vec<LwwEntry> = (0..300)
        .map(|i| {
            a.set(&format!("k{i:03}"), Bytes::from_static(b"v"), T0 + i)
                .unwrap()
        })
        .collect();
    let (_, opener) = a.tick(T0 + 400).messages.remove(0);
    let pushed = match &opener {
        LwwMessage::Sync { entries, .. } => entries.clone(),
        other => panic!("the writes were not pushed: {other:?}"),
    };
    assert!(
        !pushed.is_empty() && pushed.len() < writes.len(),
        "{} of {} writes pushed",
        pushed.len(),
        writes.len()
    );
    let newest: BTreeSet<Timestamp> = writes
        .iter()
        .rev()
        .take(pushed.len())
        .map(|e| e.version)
        .collect();
    assert!(
        pushed.iter().all(|e| newest.contains(&e.version)),
        "not the newest pushed"
    );
    deliver(&mut a, &mut b, true, opener, T0 + 400, |_, _| {});
    for i in 0..10 {
        if state(&b) == state(&a) {
            break;
        }
        exchange(&mut a, &mut b, T0 + 500 + 100 * i);
    }
    assert_eq!(state(&b), state(&a), "no agreement in 10 exchanges");
    assert_eq!(b.entries().count(), writes.len());
}

/// Entries held past a replica's watermark, pushed to it by an origin that
/// then died, are vouched for by no range: they go to a peer that lacks
/// them a few a sync, from a seeded one on, never all at once (in a burst
/// every replica sent them to every peer it met until the watermarks
/// caught up), and yet all of them arrive.
#[test]
fn entries_no_range_vouches_for_go_a_few_a_sync_and_all_arrive() {
    let (mut a, mut b, mut c) = (replica(1), replica(2), replica(3));
    a.add_peer(b.node());
    let origin = a.node();
    for i in 0..100 {
        a.set(&format!("k{i:03}"), Bytes::from_static(b"v"), T0 + i)
            .unwrap();
    }
    let (_, opener) = a.tick(T0 + 200).messages.remove(0);
    // A dies before it answers B: B holds the pushed writes, no range.
    let _ = b.receive(origin, opener, T0 + 200);
    let held = b.entries().filter(|e| e.version.node == origin).count();
    assert_eq!(held, 100, "the push did not carry the burst");
    assert_eq!(b.watermark(origin), None);
    b.add_peer(c.node());
    c.add_peer(b.node());
    let mut largest = 0;
    let mut syncs = 0;
    for i in 0..50u64 {
        let now = T0 + 1000 + 100 * i;
        let (_, open) = c.tick(now).messages.remove(0);
        deliver(&mut c, &mut b, true, open, now, |to_b, m| {
            if let (false, LwwMessage::Sync { entries, .. }) = (to_b, m) {
                let n = entries.iter().filter(|e| e.version.node == origin).count();
                largest = largest.max(n);
                syncs += usize::from(n > 0);
            }
        });
        if c.entries().filter(|e| e.version.node == origin).count() == held {
            break;
        }
    }
    assert!(largest < held, "all {held} went in one sync");
    assert!(syncs > 1, "{syncs} syncs");
    assert_eq!(state(&c), state(&b), "not all arrived in 50 rounds");
}
