//! Kill-during-write fuzzing of a [`StateStore`], with real processes and
//! real `SIGKILL`.
//!
//! A campaign runs waves. Each wave starts `writers` copies of the current
//! executable as writer processes on one store directory, and kills each
//! with `SIGKILL` at its own seeded random instant, some within the first
//! milliseconds (while the store opens and sweeps). A writer puts
//! [`Checkpoint`]s to a few keys shared by every writer, journaling each
//! attempt before the put and each acknowledgement after it. When a
//! wave's writers are all reaped the checker opens the store afresh and
//! asserts: nothing acknowledged is lost, nothing is invented (every value
//! was attempted by its writer), nothing moved backwards since the last
//! wave, the store opens (its files parse), and no temp file is left.
//!
//! To point it at your own store, implement [`Target`], call [`child_main`]
//! first thing in `main` (a test with `harness = false`), then run a
//! [`Campaign`]:
//!
//! ```no_run
//! use multinode_filestore::killfuzz::{self, Campaign, FileStoreTarget};
//!
//! fn main() {
//!     killfuzz::child_main(&FileStoreTarget);
//!     let dir = std::env::temp_dir().join("kill-fuzz-example");
//!     std::fs::create_dir_all(&dir).unwrap();
//!     let report = Campaign::new(7).run(&FileStoreTarget, &dir, |_| {}).unwrap();
//!     assert!(report.violations.is_empty(), "{:?}", report.violations);
//! }
//! ```
//!
//! `SIGKILL` tests atomicity and recovery, not durability: the kernel
//! keeps what a killed process wrote. Power cuts are
//! [`crate::SimStorage`]'s part.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{Checkpoint, FileStore, PutOutcome, StateStore, StoreError};

/// The argument that makes an executable a kill-fuzz writer.
pub const CHILD_FLAG: &str = "--multinode-killfuzz-writer";
/// The environment variable that must be `1` beside [`CHILD_FLAG`]: the
/// flag alone is refused, so no stray invocation writes anywhere.
pub const CHILD_GATE: &str = "MULTINODE_KILLFUZZ_WRITER";

/// How long a writer runs if nobody kills it.
const WRITER_LIFE_CAP: Duration = Duration::from_secs(30);

/// What the writers put: the data names the writer process.
pub type Value = Checkpoint<String>;

/// A store under test.
pub trait Target: Sync {
    /// The store's handle.
    type Store: StateStore<Value>;
    /// Opens the store kept in `dir` (a writer does this at start-up; the
    /// checker after every wave).
    fn open(&self, dir: &Path) -> Result<Self::Store, StoreError>;
    /// Whether a file in `dir` is litter a killed writer left and opening
    /// must have swept.
    fn is_litter(&self, file_name: &str) -> bool;
    /// Upkeep writers run now and then (compaction, say); none by default.
    fn upkeep(&self, store: &Self::Store) -> Result<(), StoreError> {
        let _ = store;
        Ok(())
    }
}

/// [`FileStore`] as a target: `state.json` in the directory; writers
/// compact now and then.
#[derive(Clone, Copy, Debug, Default)]
pub struct FileStoreTarget;

impl Target for FileStoreTarget {
    type Store = FileStore<Value>;

    fn open(&self, dir: &Path) -> Result<Self::Store, StoreError> {
        FileStore::open(dir.join("state.json"))
    }

    fn is_litter(&self, file_name: &str) -> bool {
        file_name.contains(".tmp-")
    }

    fn upkeep(&self, store: &Self::Store) -> Result<(), StoreError> {
        store.compact().wait()
    }
}

/// A campaign's shape.
#[derive(Clone, Debug)]
pub struct Campaign {
    /// Writer processes per wave.
    pub writers: usize,
    /// Waves (every writer of a wave is killed).
    pub waves: usize,
    /// Keys, shared by every writer.
    pub keys: usize,
    /// The latest instant a writer is killed at, after its start.
    pub max_life: Duration,
    /// Seeds every kill instant and every writer's choices.
    pub seed: u64,
}

impl Campaign {
    /// Four writers, 25 waves, 6 keys, lives up to 80 ms.
    pub fn new(seed: u64) -> Self {
        Self {
            writers: 4,
            waves: 25,
            keys: 6,
            max_life: Duration::from_millis(80),
            seed,
        }
    }
}

/// What a campaign did, and what it found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Waves run.
    pub waves: usize,
    /// Writers killed by `SIGKILL`.
    pub kills: u64,
    /// Of those, killed before their store had opened.
    pub kills_in_startup: u64,
    /// Puts attempted, over all writers.
    pub attempted: u64,
    /// Puts acknowledged (applied or superseded).
    pub acknowledged: u64,
    /// Every broken promise, as a sentence; empty when the store held.
    pub violations: Vec<String>,
}

/// Runs as a writer and exits if this process was started as one;
/// returns at once otherwise. Call it first thing in `main`. The flag
/// without [`CHILD_GATE`]`=1` is refused with exit status 2.
pub fn child_main<T: Target>(target: &T) {
    let args: Vec<String> = std::env::args().collect();
    let Some(at) = args.iter().position(|a| a == CHILD_FLAG) else {
        return;
    };
    if std::env::var(CHILD_GATE).as_deref() != Ok("1") {
        eprintln!(
            "refusing to run as a kill-fuzz writer: {CHILD_FLAG} was given without \
             {CHILD_GATE}=1 (only a kill-fuzz campaign starts writers)"
        );
        std::process::exit(2);
    }
    let code = match writer(target, &args[at + 1..]) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("kill-fuzz writer: {e}");
            3
        }
    };
    std::process::exit(code);
}

/// A writer: `dir id seed keys`. Puts until killed (or for 30 s at most).
fn writer<T: Target>(target: &T, args: &[String]) -> Result<(), String> {
    let [dir, id, seed, keys] = args else {
        return Err(format!("expected: DIR ID SEED KEYS, got {args:?}"));
    };
    let num = |s: &str| s.parse::<u64>().map_err(|e| format!("{s:?}: {e}"));
    let (dir, id, seed, keys) = (Path::new(dir), num(id)?, num(seed)?, num(keys)?.max(1));
    let mut journal = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("journal-{id}.log")))
        .map_err(|e| e.to_string())?;
    // One write(2) per line, unbuffered: a kill keeps every whole line.
    let mut note = |line: String| {
        journal
            .write_all(line.as_bytes())
            .map_err(|e| e.to_string())
    };
    let store = target.open(dir).map_err(|e| e.to_string())?;
    note("O\n".into())?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut mine: BTreeMap<u64, u64> = BTreeMap::new();
    // A writer whose campaign died stops by itself.
    let started = Instant::now();
    while started.elapsed() < WRITER_LIFE_CAP {
        if rng.random_range(0..16) == 0 {
            target.upkeep(&store).map_err(|e| e.to_string())?;
        }
        let k = rng.random_range(0..keys);
        let key = format!("k{k}");
        let seen = store.get(&key).map_or(0, |v| v.sequence);
        let last = mine.get(&k).copied().unwrap_or(0);
        let sequence = seen.max(last) + rng.random_range(1..=3);
        mine.insert(k, sequence);
        note(format!("A {key} {sequence}\n"))?;
        let data = format!("c{id}");
        let outcome = store.put(&key, Checkpoint { sequence, data }).wait();
        match outcome.map_err(|e| e.to_string())? {
            PutOutcome::Applied => note(format!("K {key} {sequence} applied\n"))?,
            PutOutcome::Superseded => note(format!("K {key} {sequence} superseded\n"))?,
        }
    }
    Ok(())
}

/// Kills and reaps every writer still running, however the wave ends.
struct Wave(Vec<(Child, u64)>);

impl Drop for Wave {
    fn drop(&mut self) {
        for (child, _) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn bad_line(path: &Path, line: &str) -> FuzzError {
    FuzzError::Journal {
        path: path.to_path_buf(),
        line: line.to_owned(),
    }
}

/// Every journal so far: per key, the highest acknowledged sequence, and
/// every attempted (sequence, data).
#[derive(Default)]
struct Journals {
    floor: BTreeMap<String, u64>,
    attempted: BTreeSet<(String, u64, String)>,
    opened: BTreeSet<u64>,
    attempts: u64,
    acks: u64,
}

impl Journals {
    fn read(&mut self, dir: &Path, id: u64) -> Result<(), FuzzError> {
        let path = dir.join(format!("journal-{id}.log"));
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(path.display().to_string())(e)),
        };

        // A line cut by the kill has no newline: it was never complete.
        let whole = text.rfind('\n').map_or("", |end| &text[..end]);
        for line in whole.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            match f.as_slice() {
                ["O"] => {
                    self.opened.insert(id);
                }
                ["A", key, seq] => {
                    let seq = seq.parse().map_err(|_| bad_line(&path, line))?;
                    self.attempts += 1;
                    self.attempted
                        .insert((key.to_string(), seq, format!("c{id}")));
                }
                ["K", key, seq, _] => {
                    let seq: u64 = seq.parse().map_err(|_| bad_line(&path, line))?;
                    self.acks += 1;
                    let floor = self.floor.entry(key.to_string()).or_default();
                    *floor = (*floor).max(seq);
                }
                _ => return Err(bad_line(&path, line)),
            }
        }
        Ok(())
    }
}

impl Campaign {
    /// Runs the campaign on the store in `dir` (an empty directory; it
    /// keeps the journals and each writer's stderr), calling `progress` after every wave. Stops at
    /// the first wave with a violation; the report lists them.
    pub fn run<T: Target>(
        &self,
        target: &T,
        dir: &Path,
        mut progress: impl FnMut(&Report),
    ) -> Result<Report, FuzzError> {
        if std::env::var_os(CHILD_GATE).is_some() {
            return Err(FuzzError::InsideWriter);
        }
        let exe = std::env::current_exe().map_err(io("current_exe"))?;
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let mut report = Report::default();
        let mut journals = Journals::default();
        let mut seen: BTreeMap<String, u64> = BTreeMap::new();
        let mut next_id = 0u64;
        for wave in 0..self.waves {
            let ids: Vec<u64> = (0..self.writers as u64).map(|i| next_id + i).collect();
            next_id += self.writers as u64;
            let max = self.max_life.as_micros().max(1) as u64;
            let mut kills: Vec<(Duration, usize)> = (0..ids.len())
                .map(|i| {
                    // A quarter die within 4 ms: in exec, open or sweep.
                    let us = if rng.random_range(0..4) == 0 {
                        rng.random_range(0..4_000.min(max))
                    } else {
                        rng.random_range(0..max)
                    };
                    (Duration::from_micros(us), i)
                })
                .collect();
            kills.sort();
            let mut running = Wave(Vec::new());
            let start = Instant::now();
            for &id in &ids {
                let err = File::create(dir.join(format!("writer-{id}.err")))
                    .map_err(io("creating a writer's stderr file"))?;
                let child = Command::new(&exe)
                    .arg(CHILD_FLAG)
                    .arg(dir)
                    .arg(id.to_string())
                    .arg(rng.random::<u64>().to_string())
                    .arg(self.keys.to_string())
                    .env(CHILD_GATE, "1")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(err)
                    .spawn()
                    .map_err(io("spawning a writer"))?;
                running.0.push((child, id));
            }
            for (at, i) in kills {
                // Scheduling a kill, not waiting for a condition.
                if let Some(wait) = at.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
                let (child, id) = &mut running.0[i];
                match child.try_wait() {
                    Ok(Some(status)) => {
                        let err = std::fs::read_to_string(dir.join(format!("writer-{id}.err")))
                            .unwrap_or_default();
                        report.violations.push(format!(
                            "wave {wave}: writer {id} exited by itself ({status}): {}",
                            err.trim()
                        ));
                    }
                    _ => {
                        child.kill().map_err(io(format!("killing writer {id}")))?;
                        child.wait().map_err(io(format!("reaping writer {id}")))?;
                        report.kills += 1;
                    }
                }
            }
            running.0.clear();
            for &id in &ids {
                journals.read(dir, id)?;
                if !journals.opened.contains(&id) {
                    report.kills_in_startup += 1;
                }
            }
            self.check(target, dir, wave, &journals, &mut seen, &mut report);
            report.waves = wave + 1;
            report.attempted = journals.attempts;
            report.acknowledged = journals.acks;
            progress(&report);
            if !report.violations.is_empty() {
                break;
            }
        }
        Ok(report)
    }

    fn check<T: Target>(
        &self,
        target: &T,
        dir: &Path,
        wave: usize,
        journals: &Journals,
        seen: &mut BTreeMap<String, u64>,
        report: &mut Report,
    ) {
        let v = &mut report.violations;
        let store = match target.open(dir) {
            Ok(s) => s,
            Err(e) => {
                v.push(format!("wave {wave}: the store does not open: {e}"));
                return;
            }
        };
        for k in 0..self.keys {
            let key = format!("k{k}");
            let got = store.get(&key);
            let floor = journals.floor.get(&key).copied();
            match (&got, floor) {
                (None, Some(f)) => v.push(format!(
                    "wave {wave}: {key} is missing; sequence {f} was acknowledged"
                )),
                (Some(g), Some(f)) if g.sequence < f => v.push(format!(
                    "wave {wave}: {key} is at {}; sequence {f} was acknowledged",
                    g.sequence
                )),
                _ => {}
            }
            if let Some(g) = &got {
                if !journals
                    .attempted
                    .contains(&(key.clone(), g.sequence, g.data.clone()))
                {
                    v.push(format!(
                        "wave {wave}: {key} holds {} from {:?}, which no writer attempted",
                        g.sequence, g.data
                    ));
                }
                let before = seen.entry(key.clone()).or_default();
                if g.sequence < *before {
                    v.push(format!(
                        "wave {wave}: {key} moved back from {before} to {}",
                        g.sequence
                    ));
                }
                *before = g.sequence;
            } else if seen.contains_key(&key) {
                v.push(format!("wave {wave}: {key} disappeared"));
            }
        }
        drop(store);
        match std::fs::read_dir(dir) {
            Ok(entries) => {
                for e in entries {
                    match e {
                        Ok(e) => {
                            let name = e.file_name().to_string_lossy().into_owned();
                            if target.is_litter(&name) {
                                v.push(format!("wave {wave}: litter left after open: {name}"));
                            }
                        }
                        Err(e) => v.push(format!("wave {wave}: listing {}: {e}", dir.display())),
                    }
                }
            }
            Err(e) => v.push(format!("wave {wave}: listing {}: {e}", dir.display())),
        }
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} waves, {} kills ({} before the store opened), {} puts attempted, {} acknowledged, {} violations",
            self.waves,
            self.kills,
            self.kills_in_startup,
            self.attempted,
            self.acknowledged,
            self.violations.len()
        )
    }
}

/// Why a campaign could not run (a violation is not an error: it is in
/// the [`Report`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FuzzError {
    /// [`Campaign::run`] was called in a writer process.
    #[error(
        "a campaign cannot run inside a writer: call child_main first in main ({CHILD_GATE} is set)"
    )]
    InsideWriter,
    /// Starting, killing or reaping a writer, or reading its files, failed.
    #[error("{what}: {source}")]
    Io {
        /// What the harness was doing.
        what: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A journal line is not one a writer writes.
    #[error("{}: bad journal line {line:?}", path.display())]
    Journal {
        /// The journal.
        path: PathBuf,
        /// The line.
        line: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> FuzzError {
    let what = what.into();
    move |source| FuzzError::Io { what, source }
}
