//! LWW convergence in the simulator, each figure beside its baseline from
//! the same run:
//! - rounds until every replica holds a new write (fanout 3, p99 over
//!   trials), against an idealised push-pull rumour on the same peer
//!   choices' distribution: every node contacts 3 uniform peers a round and
//!   a contact informs both ends, with no protocol at all;
//! - the same at 50% message loss, against our own no-loss figure, and
//!   against the idealised rumour at the same loss (a push is one message,
//!   a pull two, each lost independently; it has no retries, ours retry
//!   an unanswered exchange once a round); with the messages each replica
//!   sends a round at that loss, against the same without loss;
//! - bytes to converge after 100 new writes into 100,000 keys, against a
//!   full-state push (each replica sends its whole state to 3 peers a
//!   round) over the same rounds, sized from the replicas' real state.

use multinode_benchkit::{Better, percentile, quick, record};
use multinode_lww::{Fanout, Simulator};
use multinode_mesh::LinkFaults;
use multinode_wire::{FRAME_HEADER_LEN, NodeId};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn main() {
    let quick = quick();
    let mut no_loss = Vec::new();
    for (n, trials, target) in [(100usize, 200usize, 5.0 / 4.0), (1000, 30, 7.0 / 6.0)] {
        let trials = if quick { trials / 5 } else { trials };
        let (ours, messages) = spread_p99(n, trials, 0.0);
        let ideal = ideal_p99(n, 2000, 0.0);
        no_loss.push((ours, messages));
        record(
            "lww",
            &format!("rounds_p99_n{n}"),
            "rounds",
            ours,
            ideal,
            "idealised push-pull rumour, fanout 3 (Monte Carlo, 2000 trials)",
            Better::Lower,
            Some(target),
        );
    }
    for (i, (n, trials)) in [(100usize, 200usize), (1000, 30)].into_iter().enumerate() {
        let trials = if quick { trials / 5 } else { trials };
        let (lossy, messages) = spread_p99(n, trials, 0.5);
        record(
            "lww",
            &format!("rounds_p99_n{n}_loss50"),
            "rounds",
            lossy,
            no_loss[i].0,
            "ours without loss, same run",
            Better::Lower,
            Some(2.0),
        );
        record(
            "lww",
            &format!("messages_per_round_n{n}_loss50"),
            "messages/replica",
            messages,
            no_loss[i].1,
            "ours without loss, same run (retries included)",
            Better::Lower,
            None,
        );
        let ideal = ideal_p99(n, if quick { 200 } else { 1000 }, 0.5);
        record(
            "lww",
            &format!("rounds_p99_n{n}_loss50_vs_ideal"),
            "rounds",
            lossy,
            ideal,
            "idealised push-pull rumour at 50% loss, fanout 3, no retries (Monte Carlo)",
            Better::Lower,
            None,
        );
    }
    let keys = if quick { 20_000 } else { 100_000 };
    let (ours, full) = bytes_to_converge(10, keys, 100);
    record(
        "lww",
        &format!("bytes_100_writes_into_{}k_keys", keys / 1000),
        "bytes",
        ours,
        full,
        "full-state push to 3 peers a round, over the same rounds",
        Better::Lower,
        Some(0.01),
    );
}

/// Replica `i`.
fn id(i: usize) -> NodeId {
    NodeId(i as u64)
}

fn sim(n: usize, seed: u64) -> Simulator {
    Simulator::new(n, seed, 100, |c| c.fanout = Fanout::Fixed(3)).expect("config")
}

/// p99 over `trials` of the rounds until all `n` replicas hold a new write
/// made at a random replica, at message loss `loss`; and the messages a
/// replica sent per round meanwhile (lost ones included).
fn spread_p99(n: usize, trials: usize, loss: f64) -> (f64, f64) {
    let mut s = sim(n, 0x5eed ^ n as u64);
    // Settle the initial resynchronisations first.
    s.run_until(50, |s| s.live().all(|r| !r.is_resyncing()));
    s.faults().set_all_faults(&LinkFaults {
        drop: loss,
        ..LinkFaults::default()
    });
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut rounds = Vec::with_capacity(trials);
    let before = s.totals();
    for t in 0..trials {
        let at = rng.random_range(0..n);
        let e = s.set(id(at), &format!("t{t}"), b"v").expect("write");
        let r = s
            .run_until(200, |s| s.holders(&e) == n)
            .expect("a write never spread");
        rounds.push(r as f64);
    }
    let after = s.totals();
    let per_round =
        (after.messages - before.messages) as f64 / (after.rounds - before.rounds) as f64;
    (percentile(&mut rounds, 99.0), per_round / n as f64)
}

/// The idealised rumour: rounds until all `n` know, p99 of `trials`. Each
/// contact a→b is a push (one message) if a knew and a pull (a request and
/// a reply) if b knew; each message is lost with probability `loss`.
fn ideal_p99(n: usize, trials: usize, loss: f64) -> f64 {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut rounds = Vec::with_capacity(trials);
    for _ in 0..trials {
        let mut knows = vec![false; n];
        knows[rng.random_range(0..n)] = true;
        let mut count = 1;
        let mut r = 0;
        while count < n {
            r += 1;
            let before = knows.clone();
            for a in 0..n {
                for _ in 0..3 {
                    let mut b = rng.random_range(0..n - 1);
                    if b >= a {
                        b += 1;
                    }
                    let mut arrives = |messages: i32| {
                        loss == 0.0 || (0..messages).all(|_| !rng.random_bool(loss))
                    };
                    let informed = if before[a] && !knows[b] && arrives(1) {
                        Some(b)
                    } else if before[b] && !knows[a] && arrives(2) {
                        Some(a)
                    } else {
                        None
                    };
                    if let Some(x) = informed {
                        knows[x] = true;
                        count += 1;
                    }
                }
            }
        }
        rounds.push(f64::from(r));
    }
    percentile(&mut rounds, 99.0)
}

/// Bytes our protocol sends to converge after `writes` new writes into a
/// converged state of `keys` keys on `n` replicas, and what a full-state
/// push would send over the same rounds.
fn bytes_to_converge(n: usize, keys: usize, writes: usize) -> (f64, f64) {
    let mut s = Simulator::new(n, 99, 100, |c| {
        c.fanout = Fanout::Fixed(3);
        c.delta_budget = 1 << 20;
    })
    .expect("config");
    for k in 0..keys {
        s.set(
            id(k % n),
            &format!("key-{k:06}"),
            format!("value-{k}").as_bytes(),
        );
    }
    s.run_until(500, Simulator::converged)
        .expect("the initial state never converged");
    // Idle rounds: once recent writes stop riding along (three rounds), a
    // converged cluster sends digests only.
    for _ in 0..4 {
        s.round();
    }
    let before = entries_sent(&s);
    for _ in 0..5 {
        s.round();
    }
    assert_eq!(entries_sent(&s), before, "an idle cluster sent entries");
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for w in 0..writes {
        let k = rng.random_range(0..keys);
        s.set(
            id(rng.random_range(0..n)),
            &format!("key-{k:06}"),
            format!("new-{w}").as_bytes(),
        );
    }
    let (mut ours, mut full) = (0u64, 0u64);
    while !s.converged() {
        // What each replica would push this round: its whole state as one
        // sync frame, to each of 3 peers.
        for r in s.live() {
            let state: usize = r.entries().map(|e| e.encoded_len()).sum();
            full += 3 * (FRAME_HEADER_LEN + 16 + state) as u64;
        }
        ours += s.round().bytes;
        assert!(s.totals().rounds < 10_000, "never converged");
    }
    (ours as f64, full as f64)
}

fn entries_sent(s: &Simulator) -> u64 {
    s.live().map(|r| r.stats().entries_sent).sum()
}
