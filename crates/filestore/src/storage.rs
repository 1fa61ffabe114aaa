//! Every disk operation the store makes, behind one small trait, so a
//! simulated disk can model what a power cut keeps.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

/// The disk operations of the store's protocol. Paths are whole paths;
/// directories already exist.
///
/// Nothing written is durable until [`Storage::sync_file`]; no creation,
/// rename or removal is durable until [`Storage::sync_dir`] of its
/// directory. An implementation may keep more across a crash, never less.
pub trait Storage: Send + Sync + 'static {
    /// The file's contents, or `None` if it does not exist.
    fn read(&self, path: &Path) -> io::Result<Option<Vec<u8>>>;
    /// Creates or truncates `path` and writes `data` (not yet durable).
    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// Makes `path`'s contents durable (fsync).
    fn sync_file(&self, path: &Path) -> io::Result<()>;
    /// Renames `from` to `to`, replacing `to` atomically.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the directory's entries durable (fsync of the directory).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Removes a file; a missing file is not an error.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// The names of the files in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Runs `f` holding the exclusive cross-process lock on `lock_path`
    /// (created if missing, never deleted).
    fn with_lock(&self, lock_path: &Path, f: &mut dyn FnMut()) -> io::Result<()>;
}

/// The real disk: `std::fs`, `fsync` via `File::sync_all`, and an
/// `fd-lock` write lock on the sidecar file.
#[derive(Clone, Copy, Debug, Default)]
pub struct DiskStorage;

impl Storage for DiskStorage {
    fn read(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        match fs::read(path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut f = File::create(path)?;
        f.write_all(data)
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        OpenOptions::new().write(true).open(path)?.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        // On Unix a directory is fsynced through a read-only handle.
        File::open(dir)?.sync_all()
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        fs::read_dir(dir)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect()
    }

    fn with_lock(&self, lock_path: &Path, f: &mut dyn FnMut()) -> io::Result<()> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(lock_path)?;
        let mut lock = fd_lock::RwLock::new(file);
        let _guard = lock.write()?;
        f();
        Ok(())
    }
}

/// A simulated disk that keeps, across [`SimStorage::power_cut`], exactly
/// what the [`Storage`] contract promises: synced contents under synced
/// directory entries. It can also fail every operation from a chosen step
/// on, as a crash mid-protocol would.
#[derive(Clone, Debug, Default)]
pub struct SimStorage {
    disk: Arc<Mutex<SimDisk>>,
    lock: Arc<Mutex<()>>,
}

#[derive(Debug, Default)]
struct SimDisk {
    next_inode: u64,
    /// inode → (contents now, contents synced).
    inodes: HashMap<u64, (Vec<u8>, Option<Vec<u8>>)>,
    /// path → inode, as the running system sees it.
    names: BTreeMap<PathBuf, u64>,
    /// path → inode, as a power cut would leave it.
    durable_names: BTreeMap<PathBuf, u64>,
    /// Mutating operations so far.
    steps: u64,
    /// From this step on every operation fails.
    fail_from: Option<u64>,
}

impl SimDisk {
    fn step(&mut self) -> io::Result<()> {
        let step = self.steps;
        self.steps += 1;
        match self.fail_from {
            Some(from) if step >= from => Err(io::Error::other(format!(
                "simulated crash before step {step}"
            ))),
            _ => Ok(()),
        }
    }
}

impl SimStorage {
    /// An empty simulated disk.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many mutating operations (write, sync, rename, remove) ran.
    pub fn steps(&self) -> u64 {
        self.disk.lock().steps
    }

    /// Makes every operation from mutating step `step` on fail (`None`:
    /// none fail).
    pub fn fail_from(&self, step: Option<u64>) {
        let mut d = self.disk.lock();
        d.fail_from = step.map(|s| d.steps + s);
    }

    /// Loses power: everything not made durable is gone, and failures stop.
    pub fn power_cut(&self) {
        let mut d = self.disk.lock();
        d.names = d.durable_names.clone();
        let live: Vec<u64> = d.names.values().copied().collect();
        d.inodes.retain(|ino, _| live.contains(ino));
        for (now, synced) in d.inodes.values_mut() {
            *now = synced.clone().unwrap_or_default();
        }
        d.fail_from = None;
    }
}

impl Storage for SimStorage {
    fn read(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        let d = self.disk.lock();
        if d.fail_from.is_some_and(|f| d.steps >= f) {
            return Err(io::Error::other("simulated crash"));
        }
        Ok(d.names.get(path).map(|ino| d.inodes[ino].0.clone()))
    }

    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut d = self.disk.lock();
        d.step()?;
        let ino = match d.names.get(path) {
            Some(&ino) => ino,
            None => {
                d.next_inode += 1;
                let ino = d.next_inode;
                d.names.insert(path.to_path_buf(), ino);
                d.inodes.insert(ino, (Vec::new(), None));
                ino
            }
        };
        if let Some(i) = d.inodes.get_mut(&ino) {
            i.0 = data.to_vec();
        }
        Ok(())
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        let mut d = self.disk.lock();
        d.step()?;
        let ino = *d.names.get(path).ok_or(io::ErrorKind::NotFound)?;
        if let Some(i) = d.inodes.get_mut(&ino) {
            i.1 = Some(i.0.clone());
        }
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut d = self.disk.lock();
        d.step()?;
        let ino = d.names.remove(from).ok_or(io::ErrorKind::NotFound)?;
        d.names.insert(to.to_path_buf(), ino);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut d = self.disk.lock();
        d.step()?;
        let SimDisk {
            names,
            durable_names,
            ..
        } = &mut *d;
        durable_names.retain(|p, _| p.parent() != Some(dir));
        for (p, ino) in names.iter() {
            if p.parent() == Some(dir) {
                durable_names.insert(p.clone(), *ino);
            }
        }
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut d = self.disk.lock();
        d.step()?;
        d.names.remove(path);
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let d = self.disk.lock();
        Ok(d.names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    fn with_lock(&self, _lock_path: &Path, f: &mut dyn FnMut()) -> io::Result<()> {
        // One simulated disk lives in one process: a mutex stands in for
        // the cross-process lock.
        let _guard = self.lock.lock();
        f();
        Ok(())
    }
}
