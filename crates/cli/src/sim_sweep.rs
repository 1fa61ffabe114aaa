//! `multinode sim-sweep`: many seeds of the deterministic LWW simulator,
//! each a drawn scenario of writes under faults (drops, duplicates,
//! reordering, delays, a partition, crashes and restarts),
//! checked for convergence to the last write of every key. Each seed
//! prints a trace hash: replaying a seed gives the same hash.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use clap::Args;
use multinode_lww::{LwwEntry, Simulator};
use multinode_mesh::LinkFaults;
use multinode_wire::NodeId;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Rounds the replicas have to agree once every fault is healed.
const MAX_ROUNDS: u64 = 400;
/// Rounds of writing under faults.
const WRITE_ROUNDS: u64 = 12;
/// Keys the writes go to: few, so writes race.
const KEYS: usize = 64;

#[derive(Args, Clone, Debug)]
pub(crate) struct SimSweepArgs {
    /// Seeds to run.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    count: u64,
    /// The first seed (default: from the clock; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// Replicas in each simulation.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(2..=2000))]
    replicas: u64,
}

/// What one seed did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// A fingerprint of every fault decision, the rounds and the final
    /// state: equal for equal seeds.
    pub(crate) trace: u64,
    /// Rounds to agree after the heal.
    pub(crate) rounds: Option<u64>,
    /// Why the seed failed, if it did.
    pub(crate) failure: Option<String>,
    /// A short account of the faults drawn.
    pub(crate) faults: String,
}

pub(crate) fn run(args: SimSweepArgs) -> Result<ExitCode> {
    let first = args.seed.unwrap_or_else(crate::cluster::clock_seed);
    let n = args.replicas as usize;
    println!(
        "sim-sweep: {} seeds from {first}, {n} replicas each",
        args.count
    );
    let began = Instant::now();
    let mut last_line = Instant::now();
    for i in 0..args.count {
        let seed = first.wrapping_add(i);
        let o = simulate(seed, n)?;
        if let Some(why) = &o.failure {
            println!("seed {seed}: FAILED: {why}");
            println!("faults: {}", o.faults);
            println!("trace hash: {:016x}", o.trace);
            println!(
                "replay: multinode sim-sweep --seed {seed} --count 1 --replicas {n} \
                 (prints the same trace hash)"
            );
            println!("sim-sweep: {i} seed(s) passed before it");
            return Ok(ExitCode::FAILURE);
        }
        // A progress line every few seconds, and one for a single seed.
        if args.count == 1 || last_line.elapsed() >= Duration::from_secs(5) {
            last_line = Instant::now();
            println!(
                "seed {seed}: agreed {} rounds after the heal; trace {:016x}; {}/{} ({})",
                o.rounds.unwrap_or(0),
                o.trace,
                i + 1,
                args.count,
                o.faults
            );
        }
    }
    let secs = began.elapsed().as_secs_f64();
    println!(
        "sim-sweep: {} seeds passed in {secs:.1} s: {:.1} seeds per minute",
        args.count,
        args.count as f64 * 60.0 / secs
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs seed `seed` with `n` replicas.
pub(crate) fn simulate(seed: u64, n: usize) -> Result<Outcome> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut sim = Simulator::new(n, seed, 100, |_| {}).map_err(|e| anyhow!("{e}"))?;
    let faults = LinkFaults {
        drop: rng.random_range(0.0..0.3),
        duplicate: rng.random_range(0.0..0.1),
        reorder: rng.random_range(0.0..0.2),
        delay: rng
            .random_bool(0.5)
            .then(|| (Duration::from_millis(10), Duration::from_millis(250))),
        // Not corruption: a flipped byte that still decodes is taken as
        // the sender's word (the replica trusts its transport's
        // integrity), so it would fail seeds for a known limit.
        corrupt: 0.0,
    };
    sim.faults().set_all_faults(&faults);
    let mut account = format!(
        "drop {:.2}, duplicate {:.2}, reorder {:.2}{}",
        faults.drop,
        faults.duplicate,
        faults.reorder,
        if faults.delay.is_some() {
            ", delay 10-250 ms"
        } else {
            ""
        }
    );
    let ids: Vec<NodeId> = (0..n as u64).map(NodeId).collect();
    if rng.random_bool(0.5) {
        let cut = rng.random_range(1..n);
        sim.faults().partition(&ids[..cut], &ids[cut..]);
        account.push_str(&format!(", partition {cut}|{}", n - cut));
    }
    let crashes = rng.random_range(0..=3.min(n - 1));
    let victims: Vec<NodeId> = (0..crashes)
        .map(|_| ids[rng.random_range(0..n)])
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let crash_at = rng.random_range(1..WRITE_ROUNDS);
    if !victims.is_empty() {
        account.push_str(&format!(", crash {victims:?} at round {crash_at}"));
    }
    let mut written: Vec<LwwEntry> = Vec::new();
    for round in 0..WRITE_ROUNDS {
        if round == crash_at {
            for v in &victims {
                sim.crash(*v);
            }
        }
        if round == crash_at + 3 {
            for v in &victims {
                sim.restart(*v, false).map_err(|e| anyhow!("{e}"))?;
            }
        }
        for _ in 0..rng.random_range(1..=n.div_ceil(5)) {
            let at = ids[rng.random_range(0..n)];
            let key = format!("k{}", rng.random_range(0..KEYS));
            let e = if rng.random_bool(0.2) {
                sim.delete(at, &key)
            } else {
                sim.set(at, &key, format!("{seed}-{round}-{}", at.0).as_bytes())
            };
            written.extend(e);
        }
        sim.round();
    }
    // Heal everything; crashed replicas come back from their disks.
    for v in &victims {
        if sim.replica(*v).is_none() {
            sim.restart(*v, false).map_err(|e| anyhow!("{e}"))?;
        }
    }
    sim.faults().heal();
    sim.faults().set_all_faults(&LinkFaults::default());
    let rounds = sim.run_until(MAX_ROUNDS, Simulator::converged);
    let mut failure = match rounds {
        None => Some(format!(
            "no agreement within {MAX_ROUNDS} rounds of the heal: {}",
            disagreement(&sim)
        )),
        Some(_) => None,
    };
    // Every key holds its last write: the highest version written.
    let mut last: BTreeMap<&str, &LwwEntry> = BTreeMap::new();
    for e in &written {
        let slot = last.entry(e.key.as_str()).or_insert(e);
        if e.version > slot.version {
            *slot = e;
        }
    }
    if failure.is_none() {
        'check: for r in sim.live() {
            for (key, want) in &last {
                let held = r.entry(key);
                let ok = match (held, &want.value) {
                    (Some(h), _) => h.version == want.version && h.value == want.value,
                    // A delete's tombstone may have been collected.
                    (None, None) => true,
                    (None, Some(_)) => false,
                };
                if !ok {
                    failure = Some(format!(
                        "replica {} holds {held:?} for {key:?}, not its last write {want:?}",
                        r.node()
                    ));
                    break 'check;
                }
            }
        }
    }
    let fingerprint = sim.live().next().map_or(0, |r| r.fingerprint());
    let trace = [
        sim.faults().trace_hash(),
        rounds.unwrap_or(u64::MAX),
        fingerprint,
        written.len() as u64,
    ]
    .iter()
    .fold(0xcbf2_9ce4_8422_2325_u64, |h, v| {
        (h ^ v).wrapping_mul(0x0100_0000_01b3)
    });
    Ok(Outcome {
        trace,
        rounds,
        failure,
        faults: account,
    })
}

/// Which replicas hold a state other than the most common one.
fn disagreement(sim: &Simulator) -> String {
    let mut by: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for r in sim.live() {
        by.entry(r.fingerprint()).or_default().push(r.node().0);
    }
    let mut groups: Vec<Vec<u64>> = by.into_values().collect();
    groups.sort_by_key(|g| std::cmp::Reverse(g.len()));
    let common = groups.first().map_or(0, Vec::len);
    let odd: Vec<String> = groups.iter().skip(1).map(|g| format!("{g:?}")).collect();
    format!(
        "{} distinct states; apart from the {common} that agree: {}",
        groups.len(),
        odd.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::simulate;

    /// Seeds the sweep found failing, each fixed at its cause: they must
    /// pass, and replay to the same trace.
    #[test]
    fn seeds_found_by_the_sweep_pass_and_replay() {
        // Seed 19: a sync answering a digest of a crashed replica's
        // previous life reached the restarted one, which took its
        // watermarks (both lives had era 0) and never got back the
        // entries they covered. A restarted replica now starts a new era.
        let first = simulate(19, 100).expect("runs");
        assert_eq!(first.failure, None, "{}", first.faults);
        assert_eq!(simulate(19, 100).expect("runs"), first);
    }

    #[test]
    fn different_seeds_trace_differently() {
        let a = simulate(3, 20).expect("runs");
        let b = simulate(4, 20).expect("runs");
        assert_ne!(a.trace, b.trace);
    }
}
