//! Helpers the multinode test suites share (a dev-dependency only).
//!
//! Every randomized test prints its seed and replays from
//! `MULTINODE_SEED`: [`seed`] gives the seed, [`proptest_config`] a
//! proptest configuration drawing from it.

use proptest::test_runner::{Config, RngSeed};

/// The seed for a randomized test: `MULTINODE_SEED` if set, else a fresh
/// one. Printed either way, so a failure can be replayed.
///
/// # Panics
/// If `MULTINODE_SEED` is set but is not a `u64`.
pub fn seed(test: &str) -> u64 {
    let seed = match std::env::var("MULTINODE_SEED") {
        Ok(s) => s.parse().expect("MULTINODE_SEED must be a u64"),
        Err(_) => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock after 1970");
            t.as_nanos() as u64 ^ (u64::from(std::process::id()) << 32)
        }
    };
    println!("{test}: seed {seed} (replay with MULTINODE_SEED={seed})");
    seed
}

/// A proptest configuration of `cases` cases seeded by [`seed`], with no
/// failure files written.
pub fn proptest_config(test: &str, cases: u32) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(seed(test)),
        failure_persistence: None,
        ..Config::default()
    }
}
