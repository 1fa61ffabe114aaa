//! `FileStore`: lock, catch up, merge, append durably; group commit on one
//! write thread per handle.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

mod cycle;
mod queue;

use crate::format::Entries;
use crate::pending::Slot;
use crate::{DiskStorage, FileVersion, Pending, Storage, StoreError};

/// The log is folded into a new snapshot once it is longer than this and
/// than the snapshot, so a put costs O(1) amortized, not O(state).
const COMPACT_AFTER: u64 = 256 * 1024;

/// How long a write cycle waits for the cross-process lock by default.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(30);

/// Settings of a [`FileStore`] handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// How long opening and each write cycle wait for another process's
    /// hold on the lock before failing with [`StoreError::LockTimeout`]
    /// (the operations of that cycle fail; the handle stays usable).
    pub lock_wait: Duration,
    /// How long a [staged](FileStore::stage) put waits for a write cycle
    /// that another operation starts before it starts one itself.
    pub stage_wait: Duration,
}

/// How long a staged put waits for a cycle by default.
pub const DEFAULT_STAGE_WAIT: Duration = Duration::from_millis(100);

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            lock_wait: DEFAULT_LOCK_WAIT,
            stage_wait: DEFAULT_STAGE_WAIT,
        }
    }
}

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

/// A key-value state store shared by processes. Reads are answered from
/// memory; writes return a [`Pending`] to `.await` from async code or to
/// [`Pending::wait`] for from blocking code.
pub trait StateStore<V>: Send + Sync {
    /// The value of `key` as this handle last saw it. No lock, no I/O.
    fn get(&self, key: &str) -> Option<V>;
    /// The live keys as this handle last saw them, in order.
    fn keys(&self) -> Vec<String>;
    /// Merges `value` into `key`; done when it is durable.
    fn put(&self, key: &str, value: V) -> Pending<PutOutcome>;
    /// Deletes `key`; done when durable. No handle that has not seen the
    /// delete can bring the old value back.
    fn delete(&self, key: &str) -> Pending<()>;
}

enum Op<V> {
    Put(String, V, u64),
    Delete(String),
    Reset(String, V),
    Refresh,
    Compact,
}

/// The log as the writer last left it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LogState {
    /// No log file.
    Missing,
    /// A log of an older generation (a compaction's leftover): ignored,
    /// replaced by the next write.
    Stale((u64, u64)),
    /// The live log (device, inode), where its intact lines end (where
    /// the next line goes), and its length as last seen: the zeros between
    /// the two are room made for lines to come.
    Live((u64, u64), u64, u64),
}

/// What the writer knows of the files, under the cross-process lock.
struct Tracked<V> {
    entries: Entries<V>,
    /// False until loaded, and after any failure: the next cycle reloads.
    valid: bool,
    snapshot: Option<FileVersion>,
    snapshot_len: u64,
    generation: u64,
    log: LogState,
    /// Whether everything in `entries` is known to be durable.
    durable: bool,
    /// The newest generation whose log the lock file says was started.
    marker: u64,
}

/// What a catch-up changed, for the readers' cache.
enum Delta {
    All,
    Keys(Vec<String>),
}

type Queued<V> = (Op<V>, Arc<Slot>);

struct Inner<V, S> {
    storage: S,
    path: PathBuf,
    log_path: PathBuf,
    dir: PathBuf,
    lock_path: PathBuf,
    temp_prefix: String,
    config: StoreConfig,
    tracked: Mutex<Tracked<V>>,
    cache: RwLock<Entries<V>>,
    poisoned: AtomicBool,
    temps: AtomicU64,
    queue: queue::Queue<Queued<V>>,
    /// Held by whoever runs a cycle: the write thread, or a thread that
    /// waits for its own put.
    turn: Mutex<()>,
}

impl<V, S> crate::pending::Runner for Inner<V, S>
where
    V: Merge + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    S: Storage,
{
    fn try_run(&self) -> bool {
        self.try_turn()
    }

    fn wake(&self) {
        self.queue.wake();
    }
}

struct Handle<V, S> {
    inner: Arc<Inner<V, S>>,
    thread: Option<JoinHandle<()>>,
}

impl<V, S> Drop for Handle<V, S> {
    fn drop(&mut self) {
        self.inner.queue.close();
        if let Some(t) = self.thread.take() {
            // The thread finishes what is queued, then stops.
            let _ = t.join();
        }
    }
}

/// A state store in a human-readable JSON snapshot (`<file>`) and a
/// checksummed append-only log (`<file>.log`), shared by every process
/// that opens it.
///
/// Each write cycle takes the cross-process lock (on `<file>.lock`, which
/// is never deleted), catches up with what other processes wrote, merges
/// the queued operations key by key, appends one line to the log, fsyncs
/// it, and only then acknowledges. When the log outgrows the snapshot it is
/// folded into a new one by the durable replace (temp file, fsync, rename,
/// fsync of the directory). Operations queued while a cycle runs share the
/// next one (group commit). Cycles run on one write thread per opened
/// store, or on a thread that blocks in [`Pending::wait`] while no cycle
/// runs (one put at a time then costs no switch between threads). An fsync
/// error fails the cycle and poisons the handle: it never retries and
/// acknowledges.
///
/// Deletes and [`FileStore::reset`] raise the key's epoch; a put from a
/// handle that had not seen the key's current epoch is
/// [`PutOutcome::Superseded`], so a stale handle cannot undo either.
pub struct FileStore<V, S = DiskStorage> {
    handle: Arc<Handle<V, S>>,
}

impl<V, S> Clone for FileStore<V, S> {
    fn clone(&self) -> Self {
        Self {
            handle: Arc::clone(&self.handle),
        }
    }
}

impl<V, S> std::fmt::Debug for FileStore<V, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = &self.handle.inner;
        f.debug_struct("FileStore")
            .field("path", &inner.path)
            .field("poisoned", &inner.poisoned.load(Ordering::Acquire))
            .finish()
    }
}

impl<V> FileStore<V, DiskStorage>
where
    V: Merge + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Opens (or creates on first write) the store at `path` on disk.
    /// Blocking: it takes the lock and reads the files.
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
    /// files a killed writer left, cuts a torn tail off the log, then reads.
    /// A corrupt file is an error naming it, and is left as it is.
    pub fn open_with(path: impl AsRef<Path>, storage: S) -> Result<Self, StoreError> {
        Self::open_configured(path, storage, StoreConfig::default())
    }

    /// [`FileStore::open_with`], with settings.
    ///
    /// Opening refuses a store whose files were lost underneath it
    /// ([`StoreError::Damaged`]): a snapshot older than the generation the
    /// lock file records, or that generation's log gone. It never starts
    /// empty over a store that had data.
    pub fn open_configured(
        path: impl AsRef<Path>,
        storage: S,
        config: StoreConfig,
    ) -> Result<Self, StoreError> {
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
            log_path: dir.join(format!("{name}.log")),
            lock_path: dir.join(format!("{name}.lock")),
            temp_prefix: format!(".{name}.tmp-"),
            config,
            path,
            dir,
            storage,
            tracked: Mutex::new(Tracked {
                entries: BTreeMap::new(),
                valid: false,
                snapshot: None,
                snapshot_len: 0,
                generation: 0,
                log: LogState::Missing,
                durable: false,
                marker: 0,
            }),
            cache: RwLock::new(BTreeMap::new()),
            poisoned: AtomicBool::new(false),
            temps: AtomicU64::new(0),
            queue: queue::Queue::new(config.stage_wait),
            turn: Mutex::new(()),
        });
        let mut result = Ok(());
        inner.locked(&mut || {
            result = inner.sweep().and_then(|()| {
                let mut t = inner.tracked.lock();
                inner.catch_up(&mut t)?;
                *inner.cache.write() = t.entries.clone();
                Ok(())
            });
        })?;
        result?;
        let worker = Arc::clone(&inner);
        let thread = std::thread::Builder::new()
            .name("filestore-write".into())
            .spawn(move || worker.run())
            .map_err(|e| StoreError::io(&inner.path, e))?;
        Ok(Self {
            handle: Arc::new(Handle {
                inner,
                thread: Some(thread),
            }),
        })
    }

    /// The snapshot file this store lives in.
    pub fn path(&self) -> &Path {
        &self.handle.inner.path
    }

    /// Catches up with other processes' writes, so `get` and `keys` see
    /// them (one write cycle, under the lock).
    pub fn refresh(&self) -> Pending<()> {
        self.submit(Op::Refresh, |_| ())
    }

    /// Sets `key` to `value` whatever is stored, and raises its epoch: puts
    /// from handles that have not seen the reset are superseded.
    pub fn reset(&self, key: &str, value: V) -> Pending<()> {
        self.submit(Op::Reset(key.to_owned(), value), |_| ())
    }

    /// Folds the log into a new snapshot now (it also happens by itself
    /// once the log outgrows the snapshot).
    pub fn compact(&self) -> Pending<()> {
        self.submit(Op::Compact, |_| ())
    }

    /// Merges `value` into `key` like [`StateStore::put`], but starts no
    /// write cycle of its own: the put rides on the next cycle another
    /// operation starts, or starts one once it has waited
    /// [`StoreConfig::stage_wait`]. Done, like a put, when it is durable.
    ///
    /// For writes whose loss in a crash costs nothing that cannot be had
    /// again, such as a replica's copy of a write that is durable at its
    /// origin: they stop costing a cycle (an fsync) each, and stop making
    /// the writes that are awaited wait behind their cycles.
    pub fn stage(&self, key: &str, value: V) -> Pending<PutOutcome> {
        self.queue_op(self.put_op(key, value), true, |o| o)
    }

    /// Whether an earlier write failed and this handle refuses more.
    pub fn is_poisoned(&self) -> bool {
        self.handle.inner.poisoned.load(Ordering::Acquire)
    }

    fn submit<T>(&self, op: Op<V>, map: fn(PutOutcome) -> T) -> Pending<T> {
        self.queue_op(op, false, map)
    }

    fn queue_op<T>(&self, op: Op<V>, staged: bool, map: fn(PutOutcome) -> T) -> Pending<T> {
        let inner = &self.handle.inner;
        if inner.poisoned.load(Ordering::Acquire) {
            return Pending::ready(Err(StoreError::Poisoned));
        }
        let slot = Arc::new(Slot::default());
        inner.queue.push((op, Arc::clone(&slot)), staged);
        // A thread that waits for the outcome runs the cycle itself if it
        // can; otherwise the pending wakes the write thread when it is
        // awaited or dropped. A staged operation waits for another's cycle.
        let runner = (!staged).then(|| Arc::clone(inner) as Arc<dyn crate::pending::Runner>);
        Pending::queued(slot, map, runner)
    }

    /// A put of `value` at `key`, under the key's epoch as this handle
    /// last saw it.
    fn put_op(&self, key: &str, value: V) -> Op<V> {
        let inner = &self.handle.inner;
        let seen = inner.cache.read().get(key).map_or(0, |e| e.epoch);
        Op::Put(key.to_owned(), value, seen)
    }
}

impl<V, S> StateStore<V> for FileStore<V, S>
where
    V: Merge + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    S: Storage,
{
    fn get(&self, key: &str) -> Option<V> {
        let cache = self.handle.inner.cache.read();
        cache.get(key).and_then(|e| e.value.clone())
    }

    fn keys(&self) -> Vec<String> {
        let cache = self.handle.inner.cache.read();
        let live = cache.iter().filter(|(_, e)| e.value.is_some());
        live.map(|(k, _)| k.clone()).collect()
    }

    fn put(&self, key: &str, value: V) -> Pending<PutOutcome> {
        self.submit(self.put_op(key, value), |o| o)
    }

    fn delete(&self, key: &str) -> Pending<()> {
        self.submit(Op::Delete(key.to_owned()), |_| ())
    }
}
