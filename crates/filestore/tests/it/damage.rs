//! Files changed underneath a running store (deleted, truncated, replaced by
//! hand) and a lock holder that hangs: loud errors naming the file, never an
//! acknowledgement the disk no longer backs, never a silent start from empty.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::time::Duration;

use multinode_filestore::{DiskStorage, StateStore, StoreConfig, StoreError};

use crate::store::{Disk, cp};

/// A store with `n` acknowledged writes, and its directory.
fn written(n: u64) -> (tempfile::TempDir, PathBuf, Disk) {
    let d = tempfile::tempdir().expect("tempdir");
    let path = d.path().join("state.json");
    let store = Disk::open(&path).unwrap();
    for i in 0..n {
        store.put(&format!("k{i}"), cp(i + 1)).wait().unwrap();
    }
    (d, path, store)
}

fn log_of(path: &Path) -> PathBuf {
    path.with_file_name("state.json.log")
}

/// The next write must fail with `Damaged` naming `file`, and the handle
/// must refuse everything after it.
fn refuses_after_damage(store: &Disk, file: &Path) {
    let err = store
        .put("after", cp(1))
        .wait()
        .expect_err("acknowledged on damaged files");
    match err.root() {
        StoreError::Damaged { path, .. } => assert_eq!(path, file, "{err}"),
        other => panic!("not a damage error: {other}"),
    }
    assert!(store.is_poisoned());
    let again = store
        .put("again", cp(1))
        .wait()
        .expect_err("a poisoned handle acknowledged");
    assert!(matches!(again.root(), StoreError::Poisoned), "{again}");
}

fn reopen_refuses(path: &Path) -> String {
    match Disk::open(path) {
        Err(e @ StoreError::Damaged { .. }) => e.to_string(),
        Err(e) => panic!("reopen failed, but not as damage: {e}"),
        Ok(s) => panic!("reopened with {} keys over lost files", s.keys().len()),
    }
}

#[test]
fn deleting_the_files_underneath_is_refused_now_and_at_restart() {
    let (_d, path, store) = written(300);
    std::fs::remove_file(&path).unwrap();
    std::fs::remove_file(log_of(&path)).unwrap();
    refuses_after_damage(&store, &path);
    drop(store);
    let why = reopen_refuses(&path);
    assert!(why.contains("the file is missing"), "{why}");
}

#[test]
fn deleting_the_log_underneath_is_refused_now_and_at_restart() {
    let (_d, path, store) = written(300);
    std::fs::remove_file(log_of(&path)).unwrap();
    refuses_after_damage(&store, &log_of(&path));
    drop(store);
    let why = reopen_refuses(&path);
    assert!(why.contains("the log of generation"), "{why}");
}

#[test]
fn truncating_the_log_underneath_is_refused() {
    let (_d, path, store) = written(300);
    let log = log_of(&path);
    let len = std::fs::metadata(&log).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    refuses_after_damage(&store, &log);
}

#[test]
fn a_log_replaced_underneath_is_refused() {
    let (_d, path, store) = written(50);
    let log = log_of(&path);
    let copy = log.with_file_name("copy");
    std::fs::copy(&log, &copy).unwrap();
    std::fs::rename(&copy, &log).unwrap();
    refuses_after_damage(&store, &log);
}

/// A file store that other processes changed the ordinary way (a compaction
/// by another handle) is not mistaken for damage.
#[test]
fn another_handles_compaction_is_not_damage() {
    let (_d, path, a) = written(20);
    let b = Disk::open(&path).unwrap();
    b.compact().wait().unwrap();
    b.put("from-b", cp(1)).wait().unwrap();
    a.put("from-a", cp(1)).wait().unwrap();
    a.refresh().wait().unwrap();
    assert_eq!(a.keys().len(), 22);
    drop((a, b));
    assert_eq!(Disk::open(&path).unwrap().keys().len(), 22);
}

#[test]
fn a_hung_lock_holder_fails_the_write_after_the_lock_wait_naming_it() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("state.json");
    let config = StoreConfig {
        lock_wait: Duration::from_millis(200),
        ..StoreConfig::default()
    };
    let store = Disk::open_configured(&path, DiskStorage, config).unwrap();
    store.put("before", cp(1)).wait().unwrap();
    // Another open file description on the lock: flock treats it as
    // another holder, as a hung process would be.
    let lock_path = d.path().join("state.json.lock");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&lock_path)
        .unwrap();
    let mut lock = fd_lock::RwLock::new(file);
    let guard = lock.write().unwrap();
    let err = store
        .put("k", cp(2))
        .wait()
        .expect_err("a write without the lock");
    match err.root() {
        StoreError::LockTimeout {
            path,
            waited,
            holder,
        } => {
            assert_eq!(path, &lock_path);
            assert_eq!(*waited, Duration::from_millis(200));
            if cfg!(target_os = "linux") {
                assert_eq!(*holder, Some(std::process::id()), "{err}");
            }
        }
        other => panic!("not a lock timeout: {other}"),
    }
    assert!(
        err.to_string().contains("state.json.lock is held by"),
        "{err}"
    );
    drop(guard);
    // The handle is not poisoned: nothing was written.
    assert!(!store.is_poisoned());
    store.put("k", cp(2)).wait().unwrap();
}
