//! A handle's write thread: one cycle under the cross-process lock for
//! everything queued (catch up with the files, merge, append and fsync,
//! check, acknowledge), compaction by the durable replace, and the damage
//! checks that keep a store from acknowledging on files it no longer owns.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{COMPACT_AFTER, Delta, Inner, LogState, Op, Tracked};
use crate::format::{
    Entries, Entry, FORMAT_VERSION, FormatOnly, LogHeader, LogRecord, Marker, Snapshot,
};
use crate::{Merge, PutOutcome, Storage, StoreError, log};

impl<V, S> Inner<V, S>
where
    V: Merge + Clone + Serialize + DeserializeOwned,
    S: Storage,
{
    /// The write thread: one cycle for everything queued, until closed.
    pub(super) fn run(&self) {
        while self.queue.wait_due() {
            self.take_turn();
        }
    }

    /// Runs one cycle for everything queued, if anything is. Cycles take
    /// turns: the write thread's, and those of threads that wait for their
    /// own puts and run them rather than wait for the write thread.
    pub(super) fn take_turn(&self) {
        let _turn = self.turn.lock();
        self.run_queued();
    }

    /// [`Inner::take_turn`], if no cycle runs now; whether it ran.
    pub(super) fn try_turn(&self) -> bool {
        let Some(_turn) = self.turn.try_lock() else {
            return false;
        };
        self.run_queued();
        true
    }

    fn run_queued(&self) {
        let Some(batch) = self.queue.take() else {
            return;
        };
        let (ops, slots): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let outcomes = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.cycle(ops)))
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

    /// Runs `f` under the cross-process lock, waiting at most the
    /// configured lock wait.
    pub(super) fn locked(&self, f: &mut dyn FnMut()) -> Result<(), StoreError> {
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

    pub(super) fn sweep(&self) -> Result<(), StoreError> {
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
    pub(super) fn catch_up(&self, t: &mut Tracked<V>) -> Result<Delta, StoreError> {
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
        let log = s.size(&self.log_path).map_err(at(&self.log_path))?;
        let id = log.map(|v| (v.device, v.inode));
        match (t.log, log) {
            (LogState::Missing, None) => Ok(Delta::Keys(Vec::new())),
            (LogState::Stale(was), Some(_)) if Some(was) == id => Ok(Delta::Keys(Vec::new())),
            (LogState::Live(was, end, _), Some(v)) if Some(was) == id && v.len < end => Err(self
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
            (LogState::Live(was, ..), Some(_)) if Some(was) != id => {
                Err(self.damaged(&self.log_path, "the live log was replaced by another file"))
            }
            (LogState::Live(was, end, _), Some(v)) if Some(was) == id => {
                // Lines are written where the last one ends, into zeros: a
                // zero (or the end of the file) there means no other
                // writer has written a line since this handle read. A
                // writer killed mid-write leaves a prefix of its line, so
                // a first byte; only a power cut leaves holes, and after
                // one every handle starts over with a full read.
                let first = s
                    .read_at(&self.log_path, end, 1)
                    .map_err(at(&self.log_path))?
                    .unwrap_or_default();
                if first.first().is_none_or(|&b| b == 0) {
                    t.log = LogState::Live(was, end, v.len);
                    return Ok(Delta::Keys(Vec::new()));
                }
                let tail = s
                    .read_from(&self.log_path, end)
                    .map_err(at(&self.log_path))?
                    .unwrap_or_default();
                let mut keys = Vec::new();
                let (good, len) = self.replay(&mut t.entries, &tail, end, &mut keys)?;
                t.log = LogState::Live(was, end + good, len);
                if !keys.is_empty() {
                    t.durable = false;
                }
                Ok(Delta::Keys(keys))
            }
            _ => self.reload(t),
        }
    }

    /// Applies the intact records in `tail` (the log from byte `from`
    /// on), cuts a torn tail, and returns how many bytes were intact and
    /// how long the log is now.
    fn replay(
        &self,
        entries: &mut Entries<V>,
        tail: &[u8],
        from: u64,
        keys: &mut Vec<String>,
    ) -> Result<(u64, u64), StoreError> {
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
            return Ok((good, from + good));
        }
        Ok((good, from + tail.len() as u64))
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
        let log = s.size(&self.log_path).map_err(at(&self.log_path))?;
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
                            let (good, len) = self.replay(
                                &mut entries,
                                &bytes[head as usize..],
                                head,
                                &mut keys,
                            )?;
                            LogState::Live(id, head + good, len)
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
        let (id, end, len) = match t.log {
            LogState::Live(id, end, len) => (id, end, len),
            _ => self.new_log(t)?,
        };
        let line = log::line_of(&LogRecord { set: record }).map_err(encode)?;
        let line_len = line.len() as u64;
        s.write_at(&self.log_path, end, &line)
            .map_err(at(&self.log_path))?;
        drop(line);
        let end = end + line_len;
        // Into the room after the last line; when it is used up, the line
        // comes with new room, so that most writes change no length and
        // their fsync has no metadata to commit.
        let len = if end > len {
            let room = log::room_after(end);
            self.write_zeros(end, room)?;
            end + room
        } else {
            len
        };
        s.sync_file(&self.log_path).map_err(at(&self.log_path))?;
        // The write went to whatever file is at the path now: make sure it
        // is still the log we know, whole, before acknowledging.
        match s.size(&self.log_path).map_err(at(&self.log_path))? {
            Some(v) if (v.device, v.inode) == id && v.len == len => {}
            Some(v) if (v.device, v.inode) == id => {
                return Err(self.damaged(
                    &self.log_path,
                    format!(
                        "it is {} bytes after a write that should leave it {len}",
                        v.len
                    ),
                ));
            }
            _ => {
                return Err(self.damaged(
                    &self.log_path,
                    "the live log was deleted or replaced during a write",
                ));
            }
        }
        t.log = LogState::Live(id, end, len);
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
        // Streamed to the file: a large store's snapshot needs no buffer
        // of its size (a node of a thousand held one at its heap's peak).
        let mut bad = None;
        let written = self.replace_with(&self.path, &mut |w| {
            // serde_json writes token by token: into a buffer here, not
            // through a call on the storage's writer each.
            let mut w = io::BufWriter::with_capacity(32 << 10, w);
            match serde_json::to_writer_pretty(&mut w, &snap) {
                Ok(()) => {
                    w.write_all(b"\n")?;
                    w.flush()
                }
                Err(e) if e.is_io() => Err(e.into()),
                Err(e) => {
                    bad = Some(e);
                    Err(io::Error::other("the snapshot cannot be encoded"))
                }
            }
        });
        if let Some(e) = bad {
            return Err(encode(e));
        }
        let written = written?;
        t.generation = generation;
        t.snapshot_len = written;
        t.snapshot = self.storage.version(&self.path).map_err(at(&self.path))?;
        t.log = LogState::Missing;
        self.new_log(t)?;
        t.durable = true;
        Ok(())
    }

    fn new_log(&self, t: &mut Tracked<V>) -> Result<((u64, u64), u64, u64), StoreError> {
        let header = LogHeader {
            log: FORMAT_VERSION,
            generation: t.generation,
        };
        let line = log::encode_line(&serde_json::to_vec(&header).map_err(encode)?);
        self.replace(&self.log_path, &line)?;
        let v = self
            .storage
            .size(&self.log_path)
            .map_err(at(&self.log_path))?
            .ok_or_else(|| StoreError::io(&self.log_path, io::ErrorKind::NotFound.into()))?;
        let pos = ((v.device, v.inode), line.len() as u64, v.len);
        t.log = LogState::Live(pos.0, pos.1, pos.2);
        if t.marker < t.generation {
            self.write_marker(t.generation)?;
            t.marker = t.generation;
        }
        Ok(pos)
    }

    /// Writes `n` zeros into the log from byte `at`, a piece at a time:
    /// room for a large log is never a buffer of its size.
    fn write_zeros(&self, from: u64, n: u64) -> Result<(), StoreError> {
        const PIECE: u64 = 64 << 10;
        let zeros = vec![0; n.min(PIECE) as usize];
        let mut done = 0;
        while done < n {
            let piece = (n - done).min(PIECE) as usize;
            self.storage
                .write_at(&self.log_path, from + done, &zeros[..piece])
                .map_err(at(&self.log_path))?;
            done += piece as u64;
        }
        Ok(())
    }

    /// The durable replace: temp file, fsync, rename, fsync the directory.
    fn replace(&self, path: &Path, data: &[u8]) -> Result<(), StoreError> {
        self.replace_with(path, &mut |w| w.write_all(data))
            .map(drop)
    }

    /// [`Self::replace`] with the contents written by `fill`; returns
    /// their length.
    fn replace_with(
        &self,
        path: &Path,
        fill: &mut dyn FnMut(&mut dyn io::Write) -> io::Result<()>,
    ) -> Result<u64, StoreError> {
        let n = self.temps.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!("{}{}-{n}", self.temp_prefix, std::process::id()));
        let s = &self.storage;
        let written = s.write_from(&tmp, fill).map_err(at(&tmp))?;
        s.sync_file(&tmp).map_err(at(&tmp))?;
        s.rename(&tmp, path).map_err(at(path))?;
        s.sync_dir(&self.dir).map_err(at(&self.dir))?;
        Ok(written)
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
