//! The benchmark contract of `shared/LIMITS.md`, in one place.
//!
//! A benchmark measures our code and its baseline in the same process,
//! interleaved (A B A B ...), takes the median of each, and records one
//! [`Figure`] as a JSON line in `target/bench/results.jsonl`, where
//! `cargo xtask bench` collects them into a table. `ratio = ours / baseline`.
//!
//! Internal to the workspace (a dev-dependency of each crate's benches): it
//! is not part of any published API.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which direction of the ratio is good.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    /// A throughput: ours should be high, the ratio at or above the target.
    Higher,
    /// A latency: ours should be low, the ratio at or below the target.
    Lower,
}

/// One measured figure beside its baseline.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Figure {
    /// The crate or area, e.g. `wire`.
    pub group: String,
    /// What was measured, e.g. `codec_small_entry`.
    pub name: String,
    /// The unit of `ours` and `baseline`, e.g. `Mmsg/s` or `us`.
    pub unit: String,
    /// Our median.
    pub ours: f64,
    /// The baseline's median, measured in the same run.
    pub baseline: f64,
    /// What the baseline is.
    pub baseline_name: String,
    /// `ours / baseline`.
    pub ratio: f64,
    /// Which direction is good.
    pub better: Better,
    /// The ratio the issue asks for, if any.
    pub target: Option<f64>,
}

impl Figure {
    /// Whether the ratio meets its target (always true without one).
    pub fn meets_target(&self) -> bool {
        match (self.target, self.better) {
            (None, _) => true,
            (Some(t), Better::Higher) => self.ratio >= t,
            (Some(t), Better::Lower) => self.ratio <= t,
        }
    }
}

/// Whether this is a short smoke run (`MULTINODE_BENCH_QUICK=1`, set by
/// `cargo xtask bench --quick`).
pub fn quick() -> bool {
    std::env::var_os("MULTINODE_BENCH_QUICK").is_some_and(|v| v != "0")
}

/// Runs `ours` and `baseline` alternately `reps` times each and returns the
/// median of each one's results.
pub fn interleaved(
    reps: usize,
    mut ours: impl FnMut() -> f64,
    mut baseline: impl FnMut() -> f64,
) -> (f64, f64) {
    let (mut a, mut b) = (Vec::with_capacity(reps), Vec::with_capacity(reps));
    for _ in 0..reps.max(1) {
        a.push(ours());
        b.push(baseline());
    }
    (median(&mut a), median(&mut b))
}

/// The median of `v` (0 for an empty slice).
pub fn median(v: &mut [f64]) -> f64 {
    percentile(v, 50.0)
}

/// The `p`th percentile of `v` by nearest rank (0 for an empty slice).
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Records a figure: prints it and appends it to `target/bench/results.jsonl`
/// (or to `$MULTINODE_BENCH_OUT`).
#[allow(
    clippy::too_many_arguments,
    reason = "one call site per figure, read as a table row"
)]
pub fn record(
    group: &str,
    name: &str,
    unit: &str,
    ours: f64,
    baseline: f64,
    baseline_name: &str,
    better: Better,
    target: Option<f64>,
) -> Figure {
    let fig = Figure {
        group: group.into(),
        name: name.into(),
        unit: unit.into(),
        ours,
        baseline,
        baseline_name: baseline_name.into(),
        ratio: if baseline == 0.0 {
            f64::NAN
        } else {
            ours / baseline
        },
        better,
        target,
    };
    let mark = if fig.meets_target() {
        ""
    } else {
        "  MISSES TARGET"
    };
    println!(
        "{group}/{name}: ours {ours:.3} {unit}, baseline {baseline:.3} {unit} ({baseline_name}), ratio {:.3}{}{mark}",
        fig.ratio,
        target
            .map(|t| format!(
                " (target {} {t})",
                if better == Better::Higher { ">=" } else { "<=" }
            ))
            .unwrap_or_default(),
    );
    if let Err(e) = append(&fig) {
        eprintln!("warning: cannot record figure {group}/{name}: {e}");
    }
    fig
}

fn append(fig: &Figure) -> std::io::Result<()> {
    let path = results_path()?;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut f = OpenOptions::new().create(true).append(true).open(&path)?;
    let line = serde_json::to_string(fig).map_err(std::io::Error::other)?;
    writeln!(f, "{line}")
}

/// `$MULTINODE_BENCH_OUT`, or `<target>/bench/results.jsonl` found from this
/// executable's place in `<target>/<profile>/deps/`.
pub fn results_path() -> std::io::Result<PathBuf> {
    if let Some(p) = std::env::var_os("MULTINODE_BENCH_OUT") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let target = exe
        .ancestors()
        .nth(3)
        .ok_or_else(|| std::io::Error::other("cannot locate the target directory"))?;
    Ok(target.join("bench").join("results.jsonl"))
}
