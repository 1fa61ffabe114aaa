//! `FileStore`: lock, catch up, merge, append durably; group commit on one
//! write thread per handle.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex, RwLock};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::log;
use crate::pending::Slot;
use crate::{DiskStorage, FileVersion, Pending, Storage, StoreError};

/// The newest snapshot and log format this build reads, and the one it
/// writes.
pub const FORMAT_VERSION: u32 = 1;

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
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            lock_wait: DEFAULT_LOCK_WAIT,
        }
    }
}

/// The record the lock file keeps (it is never deleted by the store): the
/// newest generation whose log this store has started. A store whose
/// snapshot is older than that, or whose log of that generation is gone,
/// lost files it had written.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Marker {
    log_generation: u64,
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

/// One key: its epoch (raised by every delete and reset) and its value, or
/// a tombstone.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Entry<V> {
    epoch: u64,
    #[serde(default = "Option::default", skip_serializing_if = "Option::is_none")]
    value: Option<V>,
}

type Entries<V> = BTreeMap<String, Entry<V>>;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Snapshot<E> {
    format: u32,
    #[serde(default)]
    generation: u64,
    entries: E,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogHeader {
    log: u32,
    generation: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogRecord<E> {
    set: E,
}

#[derive(Deserialize)]
struct FormatOnly {
    #[serde(alias = "log")]
    format: u32,
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
    /// The live log (device, inode) and where its intact lines end.
    Live((u64, u64), u64),
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
    /// Queued operations, and whether the handles are all gone.
    queue: Mutex<(Vec<Queued<V>>, bool)>,
    wake: Condvar,
}

struct Handle<V, S> {
    inner: Arc<Inner<V, S>>,
    thread: Option<JoinHandle<()>>,
}

impl<V, S> Drop for Handle<V, S> {
    fn drop(&mut self) {
        self.inner.queue.lock().1 = true;
        self.inner.wake.notify_all();
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
/// next one (group commit), on one write thread per opened store. An fsync
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
            queue: Mutex::new((Vec::new(), false)),
            wake: Condvar::new(),
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

    /// Whether an earlier write failed and this handle refuses more.
    pub fn is_poisoned(&self) -> bool {
        self.handle.inner.poisoned.load(Ordering::Acquire)
    }

    fn submit<T>(&self, op: Op<V>, map: fn(PutOutcome) -> T) -> Pending<T> {
        let inner = &self.handle.inner;
        if inner.poisoned.load(Ordering::Acquire) {
            return Pending::ready(Err(StoreError::Poisoned));
        }
        let slot = Arc::new(Slot::default());
        inner.queue.lock().0.push((op, Arc::clone(&slot)));
        inner.wake.notify_one();
        Pending::queued(slot, map)
    }
}

impl<V, S> Inner<V, S>
where
    V: Merge + Clone + Serialize + DeserializeOwned,
    S: Storage,
{
    /// The write thread: one cycle for everything queued, until closed.
    fn run(&self) {
        loop {
            let batch = {
                let mut q = self.queue.lock();
                while q.0.is_empty() && !q.1 {
                    self.wake.wait(&mut q);
                }
                if q.0.is_empty() {
                    return;
                }
                std::mem::take(&mut q.0)
            };
            let (ops, slots): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            let outcomes =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.cycle(ops)))
                    .unwrap_or_else(|_| {
                        self.poisoned.store(true, Ordering::Release);
                        Err(StoreError::Poisoned)
                    });
            match outcomes {
                Ok(list) => {
                    for (slot, o) in slots.iter().zip(list) {
                        slot.complete(Ok(o));
                    }
                }
                Err(e) => {
                    let e = Arc::new(e);
                    for slot in &slots {
                        slot.complete(Err(StoreError::Batch(Arc::clone(&e))));
                    }
                }
            }
        }
    }

    /// Runs `f` under the cross-process lock, waiting at most the
    /// configured lock wait.
    fn locked(&self, f: &mut dyn FnMut()) -> Result<(), StoreError> {
        let wait = self.config.lock_wait;
        self.storage
            .with_lock(&self.lock_path, wait, f)
            .map_err(|e| match e.kind() {
                io::ErrorKind::TimedOut => StoreError::LockTimeout {
                    path: self.lock_path.clone(),
                    waited: wait,
                    holder: crate::storage::lock_holder(&self.lock_path),
                },
                _ => StoreError::io(&self.lock_path, e),
            })
    }

    fn damaged(&self, path: &Path, reason: impl ToString) -> StoreError {
        StoreError::Damaged {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }

    /// The generation the lock file records, 0 for a store that predates
    /// the record (or has never written).
    fn read_marker(&self) -> Result<u64, StoreError> {
        let bytes = self
            .storage
            .read(&self.lock_path)
            .map_err(at(&self.lock_path))?
            .unwrap_or_default();
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(0);
        }
        let marker: Marker =
            serde_json::from_slice(&bytes).map_err(|e| self.corrupt(&self.lock_path, e))?;
        Ok(marker.log_generation)
    }

    /// Records (durably) that the log of `generation` exists.
    fn write_marker(&self, generation: u64) -> Result<(), StoreError> {
        let mut json = serde_json::to_vec(&Marker {
            log_generation: generation,
        })
        .map_err(encode)?;
        json.push(b'\n');
        let s = &self.storage;
        s.write(&self.lock_path, &json)
            .map_err(at(&self.lock_path))?;
        s.sync_file(&self.lock_path).map_err(at(&self.lock_path))
    }

    fn corrupt(&self, path: &Path, reason: impl ToString) -> StoreError {
        StoreError::Corrupt {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }

    fn sweep(&self) -> Result<(), StoreError> {
        let names = self.storage.list(&self.dir).map_err(at(&self.dir))?;
        let mut swept = false;
        for name in names.iter().filter(|n| n.starts_with(&self.temp_prefix)) {
            let p = self.dir.join(name);
            self.storage.remove(&p).map_err(at(&p))?;
            swept = true;
        }
        if swept {
            self.storage.sync_dir(&self.dir).map_err(at(&self.dir))?;
        }
        Ok(())
    }

    fn parse<T: DeserializeOwned>(&self, path: &Path, json: &[u8]) -> Result<T, StoreError> {
        let format: FormatOnly = serde_json::from_slice(json).map_err(|e| self.corrupt(path, e))?;
        if format.format > FORMAT_VERSION {
            return Err(StoreError::NewerFormat {
                path: path.to_path_buf(),
                found: format.format,
                supported: FORMAT_VERSION,
            });
        }
        serde_json::from_slice(json).map_err(|e| self.corrupt(path, e))
    }

    /// Brings `t` up to date with the files, under the lock; a torn log
    /// tail is cut (durably) so the next append follows intact lines.
    fn catch_up(&self, t: &mut Tracked<V>) -> Result<Delta, StoreError> {
        let result = self.catch_up_inner(t);
        if result.is_err() {
            t.valid = false;
        }
        result
    }

    fn catch_up_inner(&self, t: &mut Tracked<V>) -> Result<Delta, StoreError> {
        let s = &self.storage;
        let snapshot = s.version(&self.path).map_err(at(&self.path))?;
        if t.valid && t.snapshot.is_some() && snapshot.is_none() {
            return Err(self.damaged(&self.path, "the snapshot was deleted"));
        }
        if !t.valid || snapshot != t.snapshot {
            return self.reload(t);
        }
        let log = s.version(&self.log_path).map_err(at(&self.log_path))?;
        let id = log.map(|v| (v.device, v.inode));
        match (t.log, log) {
            (LogState::Missing, None) => Ok(Delta::Keys(Vec::new())),
            (LogState::Stale(was), Some(_)) if Some(was) == id => Ok(Delta::Keys(Vec::new())),
            // Torn bytes are only ever cut past an intact line, so a log of
            // the same file and length has no line this handle has not read.
            (LogState::Live(was, end), Some(v)) if Some(was) == id && v.len == end => {
                Ok(Delta::Keys(Vec::new()))
            }
            (LogState::Live(was, end), Some(v)) if Some(was) == id && v.len < end => Err(self
                .damaged(
                    &self.log_path,
                    format!(
                        "it is {} bytes, shorter than the {end} bytes the store wrote and read",
                        v.len
                    ),
                )),
            // No writer replaces or removes the live log of a snapshot that
            // stays: only a compaction does, and it writes a new snapshot
            // first.
            (LogState::Live(..), None) => {
                Err(self.damaged(&self.log_path, "the live log was deleted"))
            }
            (LogState::Live(was, _), Some(_)) if Some(was) != id => {
                Err(self.damaged(&self.log_path, "the live log was replaced by another file"))
            }
            (LogState::Live(was, end), Some(v)) if Some(was) == id && v.len > end => {
                let tail = s
                    .read_from(&self.log_path, end)
                    .map_err(at(&self.log_path))?
                    .unwrap_or_default();
                let mut keys = Vec::new();
                let good = self.replay(&mut t.entries, &tail, end, &mut keys)?;
                t.log = LogState::Live(was, end + good);
                if !keys.is_empty() {
                    t.durable = false;
                }
                Ok(Delta::Keys(keys))
            }
            _ => self.reload(t),
        }
    }

    /// Applies the intact records in `tail` (the log from byte `at` on),
    /// cuts a torn tail, and returns how many bytes were intact.
    fn replay(
        &self,
        entries: &mut Entries<V>,
        tail: &[u8],
        from: u64,
        keys: &mut Vec<String>,
    ) -> Result<u64, StoreError> {
        let lines = log::split(tail).map_err(|e| self.corrupt(&self.log_path, e))?;
        for line in &lines.lines {
            let rec: LogRecord<Entries<V>> = self.parse_record(line)?;
            for (k, e) in rec.set {
                keys.push(k.clone());
                entries.insert(k, e);
            }
        }
        let good = lines.good as u64;
        if lines.torn {
            let s = &self.storage;
            s.truncate(&self.log_path, from + good)
                .map_err(at(&self.log_path))?;
            s.sync_file(&self.log_path).map_err(at(&self.log_path))?;
        }
        Ok(good)
    }

    fn parse_record(&self, line: &[u8]) -> Result<LogRecord<Entries<V>>, StoreError> {
        serde_json::from_slice(line).map_err(|e| self.corrupt(&self.log_path, e))
    }

    /// Reads the snapshot and the log whole.
    fn reload(&self, t: &mut Tracked<V>) -> Result<Delta, StoreError> {
        t.valid = false;
        let s = &self.storage;
        let snapshot = s.version(&self.path).map_err(at(&self.path))?;
        let (mut entries, generation, len) = match s.read(&self.path).map_err(at(&self.path))? {
            None => (BTreeMap::new(), 0, 0),
            Some(bytes) => {
                let snap: Snapshot<Entries<V>> = self.parse(&self.path, &bytes)?;
                (snap.entries, snap.generation, bytes.len() as u64)
            }
        };
        let log = s.version(&self.log_path).map_err(at(&self.log_path))?;
        let state = match (log, s.read(&self.log_path).map_err(at(&self.log_path))?) {
            (Some(v), Some(bytes)) => {
                let id = (v.device, v.inode);
                let lines = log::split(&bytes).map_err(|e| self.corrupt(&self.log_path, e))?;
                match lines.lines.first() {
                    // Written by a rename, a log always has its header: one
                    // without is no log at all.
                    None => LogState::Stale(id),
                    Some(first) => {
                        let header: LogHeader = self.parse(&self.log_path, first)?;
                        if header.generation != generation {
                            LogState::Stale(id)
                        } else {
                            let head = first.len() as u64 + 10;
                            let mut keys = Vec::new();
                            let good = self.replay(
                                &mut entries,
                                &bytes[head as usize..],
                                head,
                                &mut keys,
                            )?;
                            LogState::Live(id, head + good)
                        }
                    }
                }
            }
            _ => LogState::Missing,
        };
        let marker = self.read_marker()?;
        if generation < marker || generation < t.generation {
            let known = marker.max(t.generation);
            let found = match snapshot {
                None => "the file is missing".to_owned(),
                Some(_) => format!("it holds generation {generation}"),
            };
            return Err(self.damaged(
                &self.path,
                format!("the store had written generation {known}, but {found}"),
            ));
        }
        if generation == marker && marker > 0 && !matches!(state, LogState::Live(..)) {
            return Err(self.damaged(
                &self.log_path,
                format!("the log of generation {marker} is missing or not that generation's"),
            ));
        }
        *t = Tracked {
            entries,
            valid: true,
            snapshot,
            snapshot_len: len,
            generation,
            log: state,
            durable: false,
            marker,
        };
        Ok(Delta::All)
    }

    /// One write cycle for `ops`, under the cross-process lock.
    fn cycle(&self, ops: Vec<Op<V>>) -> Result<Vec<PutOutcome>, StoreError> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(StoreError::Poisoned);
        }
        let mut outcome = Err(StoreError::Poisoned);
        let mut ops = Some(ops);
        self.locked(&mut || {
            if let Some(ops) = ops.take() {
                outcome = self.locked_cycle(ops);
            }
        })?;
        outcome
    }

    fn locked_cycle(&self, ops: Vec<Op<V>>) -> Result<Vec<PutOutcome>, StoreError> {
        let mut t = self.tracked.lock();
        let delta = match self.catch_up(&mut t) {
            Ok(delta) => delta,
            Err(e) => {
                if matches!(e, StoreError::Damaged { .. }) {
                    // What this handle acknowledged may be gone: refuse to
                    // acknowledge anything more.
                    self.poisoned.store(true, Ordering::Release);
                }
                return Err(e);
            }
        };
        let mut record: Entries<V> = BTreeMap::new();
        let mut compact = false;
        let outcomes = ops
            .into_iter()
            .map(|op| {
                compact |= matches!(op, Op::Compact);
                match apply(&mut t.entries, op) {
                    Some(key) => {
                        if let Some(e) = t.entries.get(&key) {
                            record.insert(key, e.clone());
                        }
                        PutOutcome::Applied
                    }
                    None => PutOutcome::Superseded,
                }
            })
            .collect();
        if let Err(e) = self.write(&mut t, &record, compact) {
            // The disk is in an unknown state: refuse to go on.
            self.poisoned.store(true, Ordering::Release);
            t.valid = false;
            return Err(e);
        }
        let mut cache = self.cache.write();
        match delta {
            Delta::All => *cache = t.entries.clone(),
            Delta::Keys(keys) => {
                for k in keys {
                    if let Some(e) = t.entries.get(&k) {
                        cache.insert(k, e.clone());
                    }
                }
            }
        }
        cache.extend(record);
        Ok(outcomes)
    }

    /// Makes the cycle durable: appends `record`, compacting if due.
    fn write(
        &self,
        t: &mut Tracked<V>,
        record: &Entries<V>,
        compact: bool,
    ) -> Result<(), StoreError> {
        let s = &self.storage;
        if compact || (t.snapshot.is_none() && !record.is_empty()) {
            return self.compact(t);
        }
        if record.is_empty() {
            // Nothing to write, but what was read must be durable before a
            // no-op is acknowledged: its writer may have died before its
            // fsync.
            if !t.durable {
                if t.snapshot.is_some() {
                    s.sync_file(&self.path).map_err(at(&self.path))?;
                }
                if t.log != LogState::Missing {
                    s.sync_file(&self.log_path).map_err(at(&self.log_path))?;
                }
                s.sync_dir(&self.dir).map_err(at(&self.dir))?;
                t.durable = true;
            }
            return Ok(());
        }
        let (id, end) = match t.log {
            LogState::Live(id, end) => (id, end),
            _ => self.new_log(t)?,
        };
        let json = serde_json::to_vec(&LogRecord { set: record }).map_err(encode)?;
        let line = log::encode_line(&json);
        s.append(&self.log_path, &line)
            .map_err(at(&self.log_path))?;
        s.sync_file(&self.log_path).map_err(at(&self.log_path))?;
        let end = end + line.len() as u64;
        // The append went to whatever file is at the path now: make sure it
        // is still the log we know, whole, before acknowledging.
        match s.version(&self.log_path).map_err(at(&self.log_path))? {
            Some(v) if (v.device, v.inode) == id && v.len == end => {}
            Some(v) if (v.device, v.inode) == id => {
                return Err(self.damaged(
                    &self.log_path,
                    format!(
                        "it is {} bytes after an append that should end at {end}",
                        v.len
                    ),
                ));
            }
            _ => {
                return Err(self.damaged(
                    &self.log_path,
                    "the live log was deleted or replaced during an append",
                ));
            }
        }
        t.log = LogState::Live(id, end);
        if !t.durable {
            // Earlier lines read this cycle may be another writer's that
            // died before its fsync; the file's fsync covered them, but a
            // snapshot it renamed may still need its directory synced.
            s.sync_dir(&self.dir).map_err(at(&self.dir))?;
            t.durable = true;
        }
        if end > COMPACT_AFTER.max(t.snapshot_len) {
            self.compact(t)?;
        }
        Ok(())
    }

    /// Writes every entry as a new snapshot of the next generation, then
    /// starts a fresh log for it. A crash between the two leaves a log of
    /// the old generation, which readers ignore.
    fn compact(&self, t: &mut Tracked<V>) -> Result<(), StoreError> {
        let generation = t.generation + 1;
        let snap = Snapshot {
            format: FORMAT_VERSION,
            generation,
            entries: &t.entries,
        };
        let mut json = serde_json::to_vec_pretty(&snap).map_err(encode)?;
        json.push(b'\n');
        self.replace(&self.path, &json)?;
        t.generation = generation;
        t.snapshot_len = json.len() as u64;
        t.snapshot = self.storage.version(&self.path).map_err(at(&self.path))?;
        t.log = LogState::Missing;
        self.new_log(t)?;
        t.durable = true;
        Ok(())
    }

    fn new_log(&self, t: &mut Tracked<V>) -> Result<((u64, u64), u64), StoreError> {
        let header = LogHeader {
            log: FORMAT_VERSION,
            generation: t.generation,
        };
        let line = log::encode_line(&serde_json::to_vec(&header).map_err(encode)?);
        self.replace(&self.log_path, &line)?;
        let v = self
            .storage
            .version(&self.log_path)
            .map_err(at(&self.log_path))?
            .ok_or_else(|| StoreError::io(&self.log_path, io::ErrorKind::NotFound.into()))?;
        let pos = ((v.device, v.inode), line.len() as u64);
        t.log = LogState::Live(pos.0, pos.1);
        if t.marker < t.generation {
            self.write_marker(t.generation)?;
            t.marker = t.generation;
        }
        Ok(pos)
    }

    /// The durable replace: temp file, fsync, rename, fsync the directory.
    fn replace(&self, path: &Path, data: &[u8]) -> Result<(), StoreError> {
        let n = self.temps.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!("{}{}-{n}", self.temp_prefix, std::process::id()));
        let s = &self.storage;
        s.write(&tmp, data).map_err(at(&tmp))?;
        s.sync_file(&tmp).map_err(at(&tmp))?;
        s.rename(&tmp, path).map_err(at(path))?;
        s.sync_dir(&self.dir).map_err(at(&self.dir))
    }
}

/// Names `p` in an I/O error.
fn at(p: &Path) -> impl Fn(io::Error) -> StoreError {
    let p = p.to_path_buf();
    move |e| StoreError::io(&p, e)
}

fn encode(e: serde_json::Error) -> StoreError {
    StoreError::Encode {
        reason: e.to_string(),
    }
}

/// Applies one operation; the key it changed, if any.
fn apply<V: Merge>(entries: &mut Entries<V>, op: Op<V>) -> Option<String> {
    match op {
        Op::Put(key, value, seen) => match entries.get_mut(&key) {
            None => {
                let value = Some(value);
                entries.insert(key.clone(), Entry { epoch: seen, value });
                Some(key)
            }
            Some(e) if e.epoch > seen => None,
            Some(e) => match &e.value {
                Some(current) if !value.supersedes(current) => None,
                _ => {
                    e.value = Some(value);
                    Some(key)
                }
            },
        },
        Op::Delete(key) => match entries.get_mut(&key) {
            Some(e) if e.value.is_some() => {
                e.epoch += 1;
                e.value = None;
                Some(key)
            }
            _ => None,
        },
        Op::Reset(key, value) => {
            let e = entries.entry(key.clone()).or_insert(Entry {
                epoch: 0,
                value: None,
            });
            e.epoch += 1;
            e.value = Some(value);
            Some(key)
        }
        Op::Refresh | Op::Compact => None,
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
        let seen = self
            .handle
            .inner
            .cache
            .read()
            .get(key)
            .map_or(0, |e| e.epoch);
        self.submit(Op::Put(key.to_owned(), value, seen), |o| o)
    }

    fn delete(&self, key: &str) -> Pending<()> {
        self.submit(Op::Delete(key.to_owned()), |_| ())
    }
}
