//! `FileStore` through its public API, on the real disk and on the
//! simulated one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use multinode_filestore::{
    Checkpoint, DiskStorage, FileStore, PutOutcome, SimStorage, StateStore, Storage, StoreError,
};
use multinode_testkit::proptest_config;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

pub(crate) type Cp = Checkpoint<String>;
pub(crate) type Disk = FileStore<Cp>;

pub(crate) fn cp(sequence: u64) -> Cp {
    Checkpoint {
        sequence,
        data: format!("at {sequence}"),
    }
}

fn seq(v: Option<Cp>) -> Option<u64> {
    v.map(|c| c.sequence)
}

fn dir() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().expect("tempdir");
    let p = d.path().join("state.json");
    (d, p)
}

// ---- The reference's defects, one regression each. ----

#[test]
fn defect_a_stale_handle_cannot_resurrect_a_delete() {
    let (_d, path) = dir();
    let a = Disk::open(&path).unwrap();
    a.put("k", cp(5)).wait().unwrap();
    let b = Disk::open(&path).unwrap();
    assert_eq!(seq(b.get("k")), Some(5));
    a.delete("k").wait().unwrap();
    // b still has k = 5 in hand; writing another key must not bring it back.
    assert_eq!(b.put("other", cp(1)).wait().unwrap(), PutOutcome::Applied);
    let fresh = Disk::open(&path).unwrap();
    assert_eq!(fresh.get("k"), None);
    assert_eq!(fresh.keys(), vec!["other".to_string()]);
    // Nor can b put the old value back without having seen the delete.
    let b2 = Disk::open(&path).unwrap();
    a.put("k2", cp(3)).wait().unwrap();
    b2.refresh().wait().unwrap();
    a.delete("k2").wait().unwrap();
    assert_eq!(b2.put("k2", cp(3)).wait().unwrap(), PutOutcome::Superseded);
    assert_eq!(Disk::open(&path).unwrap().get("k2"), None);
}

#[test]
fn defect_a_reset_survives_stale_handles() {
    let (_d, path) = dir();
    let a = Disk::open(&path).unwrap();
    a.put("k", cp(10)).wait().unwrap();
    let b = Disk::open(&path).unwrap();
    a.reset("k", cp(1)).wait().unwrap();
    assert_eq!(
        b.put("k", cp(11)).wait().unwrap(),
        PutOutcome::Superseded,
        "pre-reset numbering"
    );
    assert_eq!(seq(Disk::open(&path).unwrap().get("k")), Some(1));
    // b has now seen the reset: it goes on from there.
    assert_eq!(seq(b.get("k")), Some(1));
    assert_eq!(b.put("k", cp(2)).wait().unwrap(), PutOutcome::Applied);
    assert_eq!(
        b.put("k", cp(2)).wait().unwrap(),
        PutOutcome::Superseded,
        "never backwards or sideways"
    );
}

#[test]
fn defect_temp_litter_is_swept_on_open() {
    let (d, path) = dir();
    let a = Disk::open(&path).unwrap();
    a.put("k", cp(1)).wait().unwrap();
    // What a writer killed between its temp write and its rename leaves.
    for i in 0..9 {
        std::fs::write(
            d.path().join(format!(".state.json.tmp-4242-{i}")),
            b"{partial",
        )
        .unwrap();
    }
    std::fs::write(d.path().join("unrelated.txt"), b"mine").unwrap();
    let b = Disk::open(&path).unwrap();
    assert_eq!(seq(b.get("k")), Some(1));
    let mut left: Vec<String> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            "state.json",
            "state.json.lock",
            "state.json.log",
            "unrelated.txt"
        ]
    );
}

#[test]
fn defect_a_no_op_put_makes_what_it_read_durable() {
    let sim = SimStorage::new();
    let path = Path::new("/s/state.json");
    // A writer that renamed its file into place and died before syncing
    // the directory: the file is visible, not durable.
    let json = br#"{"format":1,"entries":{"k":{"epoch":0,"value":{"sequence":9,"data":"x"}}}}"#;
    let tmp = Path::new("/s/.state.json.tmp-1-0");
    sim.write(tmp, json).unwrap();
    sim.sync_file(tmp).unwrap();
    sim.rename(tmp, path).unwrap();
    let store = FileStore::<Cp, _>::open_with(path, sim.clone()).unwrap();
    assert_eq!(
        store.put("k", cp(3)).wait().unwrap(),
        PutOutcome::Superseded
    );
    sim.power_cut();
    let after = FileStore::<Cp, _>::open_with(path, sim.clone()).unwrap();
    assert_eq!(
        seq(after.get("k")),
        Some(9),
        "the state a no-op put acknowledged was lost"
    );
}

// ---- Corruption, versions, poisoning. ----

#[test]
fn a_corrupt_file_is_a_typed_error_and_stays_untouched() {
    let (_d, path) = dir();
    for bad in [
        &b"{\"format\":1,\"entries\":{\"k\":"[..],
        b"\x00\xff garbage",
        b"",
    ] {
        std::fs::write(&path, bad).unwrap();
        match Disk::open(&path) {
            Err(StoreError::Corrupt { path: p, .. }) => assert_eq!(p, path),
            other => panic!("expected Corrupt, got {other:?}"),
        }
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bad,
            "the corrupt file was touched"
        );
    }
    std::fs::write(&path, br#"{"format":2,"entries":{}}"#).unwrap();
    match Disk::open(&path) {
        Err(
            e @ StoreError::NewerFormat {
                found: 2,
                supported: 1,
                ..
            },
        ) => {
            assert!(e.to_string().contains("format version 2"), "{e}");
        }
        other => panic!("expected NewerFormat, got {other:?}"),
    }
}

#[test]
fn an_fsync_error_fails_the_put_and_poisons_the_handle() {
    let sim = SimStorage::new();
    let path = Path::new("/s/state.json");
    let store = FileStore::<Cp, _>::open_with(path, sim.clone()).unwrap();
    store.put("a", cp(1)).wait().unwrap();
    sim.fail_from(Some(1)); // the log's fsync, after its append
    let err = store.put("b", cp(1)).wait().unwrap_err();
    match err.root() {
        StoreError::Io { path, .. } => assert_eq!(path, Path::new("/s/state.json.log")),
        other => panic!("expected the log's I/O error, got {other:?}"),
    }
    assert!(store.is_poisoned());
    sim.fail_from(None);
    // No retry that could acknowledge on an unknown disk state.
    assert!(matches!(
        store.put("c", cp(1)).wait().unwrap_err().root(),
        StoreError::Poisoned
    ));
    sim.power_cut();
    let fresh = FileStore::<Cp, _>::open_with(path, sim).unwrap();
    assert_eq!(fresh.keys(), vec!["a".to_string()]);
}

#[derive(Clone, Copy, Debug)]
enum Act {
    Put(u64),
    Delete,
    Compact,
}

fn act(s: &FileStore<Cp, SimStorage>, a: Act) -> bool {
    match a {
        Act::Put(n) => s.put("k", cp(n)).wait().is_ok(),
        Act::Delete => s.delete("k").wait().is_ok(),
        Act::Compact => s.compact().wait().is_ok(),
    }
}

/// Crashes every step of every kind of write (the first, which creates
/// the snapshot and the log; an append; a compaction; a delete) with a
/// power cut that keeps only what was synced, or that and a torn piece of
/// an unsynced append. Recovery must open, hold the state from before the
/// write or after it (after, if it was acknowledged), leave no temp file,
/// and take further writes that survive another cut.
#[test]
fn a_power_cut_at_every_step_of_every_write_recovers() {
    use Act::*;
    let path = Path::new("/s/state.json");
    let script = [Put(1), Put(2), Compact, Put(3), Delete, Put(4)];
    let states = [None, Some(1), Some(2), Some(2), Some(3), None, Some(4)];
    let mut crashes = 0;
    for (i, &a) in script.iter().enumerate() {
        let steps = {
            let sim = SimStorage::new();
            let s = FileStore::<Cp, _>::open_with(path, sim.clone()).unwrap();
            for &b in &script[..i] {
                assert!(act(&s, b));
            }
            let before = sim.steps();
            assert!(act(&s, a));
            sim.steps() - before
        };
        assert!(steps >= 2, "{a:?} took {steps} steps");
        for step in 0..=steps {
            for torn in [0, 1, 9, 20, usize::MAX] {
                let sim = SimStorage::new();
                let s = FileStore::<Cp, _>::open_with(path, sim.clone()).unwrap();
                for &b in &script[..i] {
                    assert!(act(&s, b));
                }
                sim.fail_from(Some(step));
                let acked = act(&s, a);
                drop(s);
                sim.power_cut_keeping(torn);
                crashes += 1;
                let ctx = format!("{a:?} crashed at step {step}, torn {torn}");
                let after = FileStore::<Cp, _>::open_with(path, sim.clone())
                    .unwrap_or_else(|e| panic!("{ctx}: recovery failed: {e}"));
                let got = seq(after.get("k"));
                assert!(got == states[i] || got == states[i + 1], "{ctx}: {got:?}");
                if acked {
                    assert_eq!(got, states[i + 1], "{ctx}: an acknowledged write was lost");
                }
                let litter: Vec<String> = sim
                    .list(Path::new("/s"))
                    .unwrap()
                    .into_iter()
                    .filter(|n| n.contains(".tmp-"))
                    .collect();
                assert!(litter.is_empty(), "{ctx}: {litter:?}");
                // The recovered store appends after intact lines only.
                after.put("z", cp(7)).wait().unwrap();
                drop(after);
                sim.power_cut();
                let again = FileStore::<Cp, _>::open_with(path, sim.clone())
                    .unwrap_or_else(|e| panic!("{ctx}: second recovery failed: {e}"));
                assert_eq!(seq(again.get("z")), Some(7), "{ctx}");
                assert_eq!(seq(again.get("k")), got, "{ctx}");
            }
        }
    }
    assert!(crashes > 50, "{crashes}");
}

#[test]
fn a_torn_log_tail_is_cut_and_damage_before_it_is_corruption() {
    let (_d, path) = dir();
    let log = path.with_file_name("state.json.log");
    {
        let s = Disk::open(&path).unwrap();
        for n in 1..=3 {
            s.put(&format!("k{n}"), cp(n)).wait().unwrap();
        }
    }
    let piece = b"0badc0de {\"set\":{\"k9\":";
    // A crash mid-write: half a line, never acknowledged, where the next
    // line goes (over the room after the lines), or past the end of the
    // file (as an older version's append would leave it).
    for n in 0..2 {
        let intact = std::fs::read(&log).unwrap();
        let end = intact.iter().rposition(|&b| b == b'\n').unwrap() + 1;
        let mut torn = intact.clone();
        if n == 0 {
            torn.resize(torn.len().max(end + piece.len()), 0);
            torn[end..end + piece.len()].copy_from_slice(piece);
        } else {
            torn.extend_from_slice(piece);
        }
        std::fs::write(&log, &torn).unwrap();
        let s = Disk::open(&path).unwrap();
        assert_eq!(s.keys().len(), 3 + n);
        let now = std::fs::read(&log).unwrap();
        assert_eq!(now[..end], intact[..end], "the intact lines changed");
        assert!(
            now.len() <= end || now[end..].iter().all(|&b| b == 0),
            "the torn tail was not cut"
        );
        s.put(&format!("k{}", 4 + n), cp(4)).wait().unwrap();
        drop(s);
        assert_eq!(Disk::open(&path).unwrap().keys().len(), 4 + n);
    }
    // A flipped byte in a line before the last is corruption: an error
    // naming the log, which is left untouched.
    let mut bad = std::fs::read(&log).unwrap();
    let second_line = bad.iter().position(|&b| b == b'\n').unwrap() + 12;
    bad[second_line] ^= 0x20;
    std::fs::write(&log, &bad).unwrap();
    match Disk::open(&path) {
        Err(StoreError::Corrupt { path: p, reason }) => {
            assert_eq!(p, log);
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(std::fs::read(&log).unwrap(), bad);
}

#[test]
fn concurrent_puts_from_threads_all_land() {
    let (_d, path) = dir();
    let store = Disk::open(&path).unwrap();
    std::thread::scope(|s| {
        for t in 0..8 {
            let store = store.clone();
            s.spawn(move || {
                for i in 0..5u64 {
                    let r = store.put(&format!("t{t}-{i}"), cp(i + 1)).wait().unwrap();
                    assert_eq!(r, PutOutcome::Applied);
                }
            });
        }
    });
    assert_eq!(Disk::open(&path).unwrap().keys().len(), 40);
}

/// A `Storage` on the real disk that counts its calls and its fsyncs.
#[derive(Clone, Default)]
struct CountingDisk(
    std::sync::Arc<std::sync::atomic::AtomicU64>,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
);

impl CountingDisk {
    fn call(&self) {
        self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Storage for CountingDisk {
    fn read_from(&self, p: &Path, offset: u64) -> std::io::Result<Option<Vec<u8>>> {
        self.call();
        DiskStorage.read_from(p, offset)
    }
    fn version(&self, p: &Path) -> std::io::Result<Option<multinode_filestore::FileVersion>> {
        self.call();
        DiskStorage.version(p)
    }
    fn write(&self, p: &Path, data: &[u8]) -> std::io::Result<()> {
        self.call();
        DiskStorage.write(p, data)
    }
    fn read_at(&self, p: &Path, offset: u64, len: usize) -> std::io::Result<Option<Vec<u8>>> {
        self.call();
        DiskStorage.read_at(p, offset, len)
    }
    fn write_at(&self, p: &Path, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.call();
        DiskStorage.write_at(p, offset, data)
    }
    fn truncate(&self, p: &Path, len: u64) -> std::io::Result<()> {
        self.call();
        DiskStorage.truncate(p, len)
    }
    fn sync_file(&self, p: &Path) -> std::io::Result<()> {
        self.call();
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        DiskStorage.sync_file(p)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.call();
        DiskStorage.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        self.call();
        DiskStorage.sync_dir(dir)
    }
    fn remove(&self, p: &Path) -> std::io::Result<()> {
        self.call();
        DiskStorage.remove(p)
    }
    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        self.call();
        DiskStorage.list(dir)
    }
    fn with_lock(
        &self,
        lock: &Path,
        wait: std::time::Duration,
        f: &mut dyn FnMut(),
    ) -> std::io::Result<()> {
        self.call();
        DiskStorage.with_lock(lock, wait, f)
    }
}

#[test]
fn concurrent_puts_share_write_cycles() {
    let (_d, path) = dir();
    let disk = CountingDisk::default();
    let store = FileStore::<Cp, _>::open_with(&path, disk.clone()).unwrap();
    store.put("warm", cp(1)).wait().unwrap();
    let before = disk.0.load(std::sync::atomic::Ordering::Relaxed);
    let (threads, each) = (16, 10u64);
    std::thread::scope(|s| {
        for t in 0..threads {
            let store = store.clone();
            s.spawn(move || {
                for i in 0..each {
                    store.put(&format!("t{t}"), cp(i + 1)).wait().unwrap();
                }
            });
        }
    });
    let fsyncs = disk.0.load(std::sync::atomic::Ordering::Relaxed) - before;
    let puts = threads * each;
    assert!(
        fsyncs < puts,
        "{puts} concurrent puts took {fsyncs} fsyncs: no group commit"
    );
    let fresh = Disk::open(&path).unwrap();
    for t in 0..threads {
        assert_eq!(seq(fresh.get(&format!("t{t}"))), Some(each));
    }
}

fn staging(stage_wait: std::time::Duration) -> multinode_filestore::StoreConfig {
    multinode_filestore::StoreConfig {
        stage_wait,
        ..Default::default()
    }
}

/// Staged puts start no cycle: with a stage wait of an hour they wait,
/// undone, until a put starts one; they ride on it (no more fsyncs than
/// the put alone takes) and are durable when it is.
#[test]
fn staged_puts_ride_on_the_next_cycle() {
    use std::sync::atomic::Ordering::Relaxed;
    let (_d, path) = dir();
    let disk = CountingDisk::default();
    let hour = std::time::Duration::from_secs(3600);
    let store = FileStore::<Cp, _>::open_configured(&path, disk.clone(), staging(hour)).unwrap();
    store.put("warm", cp(1)).wait().unwrap();
    let before = disk.0.load(Relaxed);
    store.put("alone", cp(1)).wait().unwrap();
    let one_put = disk.0.load(Relaxed) - before;
    let staged: Vec<_> = (0..10)
        .map(|i| store.stage(&format!("s{i}"), cp(2)))
        .collect();
    // Nothing but a cycle finishes them, and none comes in a while (a
    // cycle takes milliseconds).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for p in staged {
            let _ = tx.send(p.wait());
        }
    });
    let early = rx.recv_timeout(std::time::Duration::from_millis(300));
    assert!(
        early.is_err(),
        "a staged put finished without a cycle: {early:?}"
    );
    let before = disk.0.load(Relaxed);
    store.put("now", cp(1)).wait().unwrap();
    assert_eq!(
        disk.0.load(Relaxed) - before,
        one_put,
        "staged puts took fsyncs of their own"
    );
    for _ in 0..10 {
        let got = rx.recv_timeout(std::time::Duration::from_secs(30));
        assert!(matches!(got, Ok(Ok(PutOutcome::Applied))), "{got:?}");
    }
    let fresh = Disk::open(&path).unwrap();
    for i in 0..10 {
        assert_eq!(seq(fresh.get(&format!("s{i}"))), Some(2));
    }
}

/// With no other write, a staged put starts its own cycle once it has
/// waited the stage wait; and the last handle's drop writes what is
/// staged.
#[test]
fn a_staged_put_is_written_after_the_stage_wait_or_at_close() {
    let (_d, path) = dir();
    let store = Disk::open_configured(
        &path,
        DiskStorage,
        staging(std::time::Duration::from_millis(20)),
    )
    .unwrap();
    let pending = store.stage("waited", cp(1));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(pending.wait()));
    let got = rx.recv_timeout(std::time::Duration::from_secs(30));
    assert!(matches!(got, Ok(Ok(PutOutcome::Applied))), "{got:?}");
    assert_eq!(seq(Disk::open(&path).unwrap().get("waited")), Some(1));

    let store = Disk::open_configured(
        &path,
        DiskStorage,
        staging(std::time::Duration::from_secs(3600)),
    )
    .unwrap();
    let pending = store.stage("closed", cp(1));
    drop(store);
    assert!(matches!(pending.wait(), Ok(PutOutcome::Applied)));
    assert_eq!(seq(Disk::open(&path).unwrap().get("closed")), Some(1));
}

#[test]
fn get_and_keys_take_no_lock_and_do_no_io() {
    let (_d, path) = dir();
    let disk = CountingDisk::default();
    let store = FileStore::<Cp, _>::open_with(&path, disk.clone()).unwrap();
    store.put("a", cp(1)).wait().unwrap();
    let calls = disk.1.load(std::sync::atomic::Ordering::Relaxed);
    for _ in 0..100 {
        assert_eq!(seq(store.get("a")), Some(1));
        assert_eq!(store.get("b"), None);
        assert_eq!(store.keys(), ["a"]);
    }
    assert_eq!(disk.1.load(std::sync::atomic::Ordering::Relaxed), calls);
}

#[test]
fn writes_can_be_awaited_from_async_tasks() {
    let (_d, path) = dir();
    let store = Disk::open(&path).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let outcomes = rt.block_on(async {
        // On one thread, every put is in flight at once: they share cycles
        // and none blocks the runtime.
        let tasks: Vec<_> = (0..32u64)
            .map(|i| tokio::spawn(store.put(&format!("k{i}"), cp(i + 1))))
            .collect();
        let mut outcomes = Vec::new();
        for t in tasks {
            outcomes.push(t.await.unwrap().unwrap());
        }
        store.delete("k0").await.unwrap();
        outcomes
    });
    assert!(outcomes.iter().all(|o| *o == PutOutcome::Applied));
    let fresh = Disk::open(&path).unwrap();
    assert_eq!(fresh.keys().len(), 31);
    assert_eq!(seq(fresh.get("k31")), Some(32));
}

// ---- The model test. ----

/// The store's documented semantics, written plainly over a BTreeMap.
#[derive(Clone, Default)]
struct Model {
    /// key → (epoch, sequence or tombstone)
    file: BTreeMap<String, (u64, Option<u64>)>,
}

#[derive(Clone, Debug)]
enum Step {
    Put(usize, u8, u64),
    Delete(usize, u8),
    Reset(usize, u8, u64),
    Refresh(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..3usize, 0..4u8, 0..20u64).prop_map(|(h, k, s)| Step::Put(h, k, s)),
        1 => (0..3usize, 0..4u8).prop_map(|(h, k)| Step::Delete(h, k)),
        1 => (0..3usize, 0..4u8, 0..20u64).prop_map(|(h, k, s)| Step::Reset(h, k, s)),
        1 => (0..3usize).prop_map(Step::Refresh),
    ]
}

#[test]
fn random_operations_from_several_handles_match_a_model() {
    let mut runner = TestRunner::new(proptest_config("filestore_model", 48));
    runner
        .run(&proptest::collection::vec(step(), 1..40), |steps| {
            let sim = SimStorage::new();
            let path = Path::new("/m/state.json");
            let handles: Vec<_> = (0..3)
                .map(|_| FileStore::<Cp, _>::open_with(path, sim.clone()).unwrap())
                .collect();
            let mut model = Model::default();
            // What each handle last saw of the file.
            let mut seen: Vec<Model> = vec![Model::default(); 3];
            for st in steps {
                match st {
                    Step::Put(h, k, s) => {
                        let key = format!("k{k}");
                        let seen_epoch = seen[h].file.get(&key).map_or(0, |e| e.0);
                        let want = match model.file.get(&key) {
                            None => {
                                model.file.insert(key.clone(), (seen_epoch, Some(s)));
                                PutOutcome::Applied
                            }
                            Some(&(e, _)) if e > seen_epoch => PutOutcome::Superseded,
                            Some(&(_, Some(cur))) if s <= cur => PutOutcome::Superseded,
                            Some(&(e, _)) => {
                                model.file.insert(key.clone(), (e, Some(s)));
                                PutOutcome::Applied
                            }
                        };
                        prop_assert_eq!(handles[h].put(&key, cp(s)).wait().unwrap(), want);
                        seen[h] = model.clone();
                    }
                    Step::Delete(h, k) => {
                        let key = format!("k{k}");
                        if let Some((e, v)) = model.file.get_mut(&key) {
                            if v.is_some() {
                                *e += 1;
                                *v = None;
                            }
                        }
                        handles[h].delete(&key).wait().unwrap();
                        seen[h] = model.clone();
                    }
                    Step::Reset(h, k, s) => {
                        let key = format!("k{k}");
                        let e = model.file.get(&key).map_or(0, |e| e.0) + 1;
                        model.file.insert(key.clone(), (e, Some(s)));
                        handles[h].reset(&key, cp(s)).wait().unwrap();
                        seen[h] = model.clone();
                    }
                    Step::Refresh(h) => {
                        handles[h].refresh().wait().unwrap();
                        seen[h] = model.clone();
                    }
                }
                for (h, view) in seen.iter().enumerate() {
                    for k in 0..4u8 {
                        let key = format!("k{k}");
                        let want = view.file.get(&key).and_then(|e| e.1);
                        prop_assert_eq!(
                            seq(handles[h].get(&key)),
                            want,
                            "handle {} key {}",
                            h,
                            key
                        );
                    }
                }
            }
            let fresh = FileStore::<Cp, _>::open_with(path, sim.clone()).unwrap();
            let live: Vec<String> = model
                .file
                .iter()
                .filter(|(_, e)| e.1.is_some())
                .map(|(k, _)| k.clone())
                .collect();
            prop_assert_eq!(fresh.keys(), live);
            Ok(())
        })
        .unwrap();
}

/// A compaction streams the snapshot to the disk: a store far larger than
/// the writer's buffer comes back whole, in one valid JSON document.
#[test]
fn a_large_snapshot_is_streamed_whole() {
    let (_d, path) = dir();
    let store = Disk::open(&path).unwrap();
    let keys = 3000u64;
    let staged: Vec<_> = (0..keys)
        .map(|i| store.stage(&format!("key-{i:05}"), cp(i + 1)))
        .collect();
    store.put("last", cp(1)).wait().unwrap();
    for s in staged {
        assert_eq!(s.wait().unwrap(), PutOutcome::Applied);
    }
    store.compact().wait().unwrap();
    let text = std::fs::read(&path).unwrap();
    assert!(text.len() > 64 << 10, "only {} bytes", text.len());
    assert_eq!(text.last(), Some(&b'\n'));
    let doc: serde_json::Value = serde_json::from_slice(&text).unwrap();
    assert_eq!(doc["entries"].as_object().map(|e| e.len()), Some(3001));
    let fresh = Disk::open(&path).unwrap();
    for i in (0..keys).step_by(97) {
        assert_eq!(seq(fresh.get(&format!("key-{i:05}"))), Some(i + 1));
    }
}
