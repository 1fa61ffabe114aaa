//! `FileStore`: lock, re-read, merge, durable replace, with group commit.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::{Condvar, Mutex, RwLock};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{DiskStorage, Storage, StoreError};

/// The newest snapshot format this build reads and the one it writes.
pub const FORMAT_VERSION: u32 = 1;

/// How a value merges with the one already stored: the per-key rule that
/// keeps state from moving backwards.
pub trait Merge {
    /// Whether `self`, arriving, replaces `current`. Equal values should not
    /// supersede each other, so a repeated put is a no-op.
    fn supersedes(&self, current: &Self) -> bool;
}

/// The stock value: data under a sequence that never moves backwards.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint<T> {
    /// The position; a put with a lower or equal one is superseded.
    pub sequence: u64,
    /// Whatever the application keeps at that position.
    pub data: T,
}

impl<T> Merge for Checkpoint<T> {
    fn supersedes(&self, current: &Self) -> bool {
        self.sequence > current.sequence
    }
}

/// What a put did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// The value is stored, durably.
    Applied,
    /// The stored state wins and is durable: a value that supersedes this
    /// one, or a delete or reset this handle had not seen (the handle now
    /// has; a repeated put applies if the merge rule allows).
    Superseded,
}

/// A key-value state store shared by processes (blocking; every method may
/// be called from any thread).
pub trait StateStore<V> {
    /// The value of `key` as this handle last saw it. No lock, no I/O.
    fn get(&self, key: &str) -> Option<V>;
    /// Merges `value` into `key`, durably, before returning.
    fn put(&self, key: &str, value: V) -> Result<PutOutcome, StoreError>;
    /// Deletes `key`, durably: no handle that has not seen the delete can
    /// bring the old value back.
    fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// The live keys as this handle last saw them, in order.
    fn keys(&self) -> Vec<String>;
}

/// One key in the snapshot: its epoch (raised by every delete and reset)
/// and its value, or a tombstone.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Entry<V> {
    epoch: u64,
    #[serde(default = "Option::default", skip_serializing_if = "Option::is_none")]
    value: Option<V>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Snapshot<V> {
    format: u32,
    entries: BTreeMap<String, Entry<V>>,
}

#[derive(Deserialize)]
struct FormatOnly {
    format: u32,
}

enum Op<V> {
    Put(String, V, u64),
    Delete(String),
    Reset(String, V),
}

type Outcome = Result<PutOutcome, StoreError>;

#[derive(Default)]
struct Commits<V> {
    queue: Vec<(u64, Op<V>)>,
    done: BTreeMap<u64, Outcome>,
    next: u64,
    leading: bool,
}

struct Inner<V, S> {
    storage: S,
    path: PathBuf,
    dir: PathBuf,
    lock_path: PathBuf,
    temp_prefix: String,
    cache: RwLock<BTreeMap<String, Entry<V>>>,
    commits: Mutex<Commits<V>>,
    committed: Condvar,
    poisoned: AtomicBool,
    temps: AtomicU64,
}

/// A state store in one JSON file, shared by every process that opens it.
///
/// Each write cycle takes the cross-process lock (on `<file>.lock`, which
/// is never deleted), re-reads the file, merges the pending operations key
/// by key into what it read (never writing back a stale cache), writes the
/// result to a temp file in the same directory, fsyncs it, renames it over
/// the file, fsyncs the directory, and only then acknowledges. Concurrent
/// puts in one process share one cycle (group commit). An fsync error fails
/// the cycle and poisons the handle: it never retries and acknowledges.
///
/// Deletes and [`FileStore::reset`] raise the key's epoch; a put from a
/// handle that had not seen the key's current epoch is
/// [`PutOutcome::Superseded`], so a stale handle cannot undo either.
pub struct FileStore<V, S = DiskStorage> {
    inner: Arc<Inner<V, S>>,
}

impl<V, S> Clone for FileStore<V, S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<V, S> std::fmt::Debug for FileStore<V, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStore")
            .field("path", &self.inner.path)
            .field("poisoned", &self.inner.poisoned.load(Ordering::Acquire))
            .finish()
    }
}

impl<V> FileStore<V, DiskStorage>
where
    V: Merge + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Opens (or creates on first write) the store at `path` on disk.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, DiskStorage)
    }
}

impl<V, S> FileStore<V, S>
where
    V: Merge + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    S: Storage,
{
    /// Opens the store at `path` on `storage`: under the lock, sweeps temp
    /// files a killed writer left, then reads the file. A corrupt file is
    /// an error naming it, and is left as it is.
    pub fn open_with(path: impl AsRef<Path>, storage: S) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| StoreError::io(&path, io::ErrorKind::InvalidInput.into()))?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let inner = Arc::new(Inner {
            lock_path: dir.join(format!("{name}.lock")),
            temp_prefix: format!(".{name}.tmp-"),
            path,
            dir,
            storage,
            cache: RwLock::new(BTreeMap::new()),
            commits: Mutex::new(Commits {
                queue: Vec::new(),
                done: BTreeMap::new(),
                next: 0,
                leading: false,
            }),
            committed: Condvar::new(),
            poisoned: AtomicBool::new(false),
            temps: AtomicU64::new(0),
        });
        let mut result = Ok(());
        let locked = inner.storage.with_lock(&inner.lock_path, &mut || {
            result = inner.sweep().and_then(|()| {
                let entries = inner.read()?;
                *inner.cache.write() = entries;
                Ok(())
            });
        });
        locked.map_err(|e| StoreError::io(&inner.lock_path, e))?;
        result?;
        Ok(Self { inner })
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Re-reads the file (without the lock: writers replace it whole), so
    /// `get` and `keys` see other processes' writes.
    pub fn refresh(&self) -> Result<(), StoreError> {
        let entries = self.inner.read()?;
        *self.inner.cache.write() = entries;
        Ok(())
    }

    /// Sets `key` to `value` whatever is stored, and raises its epoch: puts
    /// from handles that have not seen the reset are superseded.
    pub fn reset(&self, key: &str, value: V) -> Result<(), StoreError> {
        self.commit(Op::Reset(key.to_owned(), value)).map(|_| ())
    }

    /// Whether an earlier write failed and this handle refuses more.
    pub fn is_poisoned(&self) -> bool {
        self.inner.poisoned.load(Ordering::Acquire)
    }

    fn seen_epoch(&self, key: &str) -> u64 {
        self.inner.cache.read().get(key).map_or(0, |e| e.epoch)
    }

    /// Queues `op` and waits for the cycle that carries it; the first
    /// waiter with no cycle running leads one for everything queued.
    fn commit(&self, op: Op<V>) -> Outcome {
        let inner = &self.inner;
        let mut c = inner.commits.lock();
        let ticket = c.next;
        c.next += 1;
        c.queue.push((ticket, op));
        loop {
            if let Some(outcome) = c.done.remove(&ticket) {
                return outcome;
            }
            if c.leading {
                inner.committed.wait(&mut c);
                continue;
            }
            c.leading = true;
            let batch = std::mem::take(&mut c.queue);
            drop(c);
            let outcomes = inner.cycle(batch);
            c = inner.commits.lock();
            c.done.extend(outcomes);
            c.leading = false;
            inner.committed.notify_all();
        }
    }
}

impl<V, S> Inner<V, S>
where
    V: Merge + Clone + Serialize + DeserializeOwned,
    S: Storage,
{
    fn sweep(&self) -> Result<(), StoreError> {
        let names = self
            .storage
            .list(&self.dir)
            .map_err(|e| StoreError::io(&self.dir, e))?;
        let mut swept = false;
        for name in names.iter().filter(|n| n.starts_with(&self.temp_prefix)) {
            let p = self.dir.join(name);
            self.storage.remove(&p).map_err(|e| StoreError::io(&p, e))?;
            swept = true;
        }
        if swept {
            self.storage
                .sync_dir(&self.dir)
                .map_err(|e| StoreError::io(&self.dir, e))?;
        }
        Ok(())
    }

    fn read(&self) -> Result<BTreeMap<String, Entry<V>>, StoreError> {
        let Some(bytes) = self
            .storage
            .read(&self.path)
            .map_err(|e| StoreError::io(&self.path, e))?
        else {
            return Ok(BTreeMap::new());
        };
        let corrupt = |reason: String| StoreError::Corrupt {
            path: self.path.clone(),
            reason,
        };
        let format: FormatOnly =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if format.format > FORMAT_VERSION {
            return Err(StoreError::NewerFormat {
                path: self.path.clone(),
                found: format.format,
                supported: FORMAT_VERSION,
            });
        }
        let snap: Snapshot<V> =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        Ok(snap.entries)
    }

    /// One write cycle for `batch`, under the cross-process lock.
    fn cycle(&self, batch: Vec<(u64, Op<V>)>) -> Vec<(u64, Outcome)> {
        if self.poisoned.load(Ordering::Acquire) {
            return batch
                .into_iter()
                .map(|(t, _)| (t, Err(StoreError::Poisoned)))
                .collect();
        }
        let tickets: Vec<u64> = batch.iter().map(|(t, _)| *t).collect();
        let mut outcome: Result<Vec<PutOutcome>, StoreError> = Ok(Vec::new());
        let mut batch = Some(batch);
        let locked = self.storage.with_lock(&self.lock_path, &mut || {
            if let Some(batch) = batch.take() {
                outcome = self.apply_and_write(batch);
            }
        });
        let outcome = locked
            .map_err(|e| StoreError::io(&self.lock_path, e))
            .and(outcome);
        match outcome {
            Ok(list) => tickets.into_iter().zip(list.into_iter().map(Ok)).collect(),
            Err(e) => {
                let e = Arc::new(e);
                tickets
                    .into_iter()
                    .map(|t| (t, Err(StoreError::Batch(Arc::clone(&e)))))
                    .collect()
            }
        }
    }

    fn apply_and_write(&self, batch: Vec<(u64, Op<V>)>) -> Result<Vec<PutOutcome>, StoreError> {
        let mut entries = self.read()?;
        let mut changed = false;
        let outcomes: Vec<PutOutcome> = batch
            .into_iter()
            .map(|(_, op)| {
                let applied = apply(&mut entries, op);
                changed |= applied;
                if applied {
                    PutOutcome::Applied
                } else {
                    PutOutcome::Superseded
                }
            })
            .collect();
        let written = if changed {
            self.replace(&entries)
        } else {
            // Nothing to write, but what was read must be durable before
            // a no-op is acknowledged: its writer may have died before
            // syncing the directory.
            self.make_durable()
        };
        if let Err(e) = written {
            self.poisoned.store(true, Ordering::Release);
            return Err(e);
        }
        *self.cache.write() = entries;
        Ok(outcomes)
    }

    /// The durable replace: temp file, fsync, rename, fsync the directory.
    fn replace(&self, entries: &BTreeMap<String, Entry<V>>) -> Result<(), StoreError> {
        let snap = SnapshotRef {
            format: FORMAT_VERSION,
            entries,
        };
        let mut json = serde_json::to_vec_pretty(&snap).map_err(|e| StoreError::Encode {
            reason: e.to_string(),
        })?;
        json.push(b'\n');
        let n = self.temps.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!("{}{}-{n}", self.temp_prefix, std::process::id()));
        let s = &self.storage;
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |e| StoreError::io(&p, e)
        };
        s.write(&tmp, &json).map_err(io(&tmp))?;
        s.sync_file(&tmp).map_err(io(&tmp))?;
        s.rename(&tmp, &self.path).map_err(io(&self.path))?;
        s.sync_dir(&self.dir).map_err(io(&self.dir))
    }

    fn make_durable(&self) -> Result<(), StoreError> {
        let s = &self.storage;
        if s.read(&self.path)
            .map_err(|e| StoreError::io(&self.path, e))?
            .is_some()
        {
            s.sync_file(&self.path)
                .map_err(|e| StoreError::io(&self.path, e))?;
            s.sync_dir(&self.dir)
                .map_err(|e| StoreError::io(&self.dir, e))?;
        }
        Ok(())
    }
}

#[derive(Serialize)]
struct SnapshotRef<'a, V> {
    format: u32,
    entries: &'a BTreeMap<String, Entry<V>>,
}

/// Applies one operation; whether it changed anything.
fn apply<V: Merge>(entries: &mut BTreeMap<String, Entry<V>>, op: Op<V>) -> bool {
    match op {
        Op::Put(key, value, seen) => match entries.get_mut(&key) {
            None => {
                entries.insert(
                    key,
                    Entry {
                        epoch: seen,
                        value: Some(value),
                    },
                );
                true
            }
            Some(e) if e.epoch > seen => false,
            Some(e) => match &e.value {
                Some(current) if !value.supersedes(current) => false,
                _ => {
                    e.value = Some(value);
                    true
                }
            },
        },
        Op::Delete(key) => match entries.get_mut(&key) {
            Some(e) if e.value.is_some() => {
                e.epoch += 1;
                e.value = None;
                true
            }
            _ => false,
        },
        Op::Reset(key, value) => {
            let e = entries.entry(key).or_insert(Entry {
                epoch: 0,
                value: None,
            });
            e.epoch += 1;
            e.value = Some(value);
            true
        }
    }
}

impl<V, S> StateStore<V> for FileStore<V, S>
where
    V: Merge + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    S: Storage,
{
    fn get(&self, key: &str) -> Option<V> {
        self.inner
            .cache
            .read()
            .get(key)
            .and_then(|e| e.value.clone())
    }

    fn put(&self, key: &str, value: V) -> Result<PutOutcome, StoreError> {
        let seen = self.seen_epoch(key);
        self.commit(Op::Put(key.to_owned(), value, seen))
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.commit(Op::Delete(key.to_owned())).map(|_| ())
    }

    fn keys(&self) -> Vec<String> {
        self.inner
            .cache
            .read()
            .iter()
            .filter(|(_, e)| e.value.is_some())
            .map(|(k, _)| k.clone())
            .collect()
    }
}
