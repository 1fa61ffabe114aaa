//! Every disk operation the store makes, behind one small trait, so a
//! simulated disk can model what a power cut keeps.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The disk operations of the store's protocol. Paths are whole paths;
/// directories already exist.
///
/// Nothing written is durable until [`Storage::sync_file`]; no creation,
/// rename or removal is durable until [`Storage::sync_dir`] of its
/// directory. An implementation may keep more across a crash, never less.
pub trait Storage: Send + Sync + 'static {
    /// The file's contents, or `None` if it does not exist.
    fn read(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        self.read_from(path, 0)
    }
    /// The file's contents from byte `offset` on (empty past the end), or
    /// `None` if it does not exist.
    fn read_from(&self, path: &Path, offset: u64) -> io::Result<Option<Vec<u8>>>;
    /// Which version of `path` is there now, or `None` if it does not
    /// exist: cheap (a `stat`), and different after any replace or write.
    fn version(&self, path: &Path) -> io::Result<Option<FileVersion>>;
    /// Which file is at `path` and how long it is, or `None` if it does
    /// not exist: [`Storage::version`] without the change time, for a file
    /// that is written in place. Asking for a file's change time can cost
    /// its next write: Linux (6.13 on) then stamps that write with a
    /// fine-grained time, and the fsync after it has an inode to write too.
    fn size(&self, path: &Path) -> io::Result<Option<FileSize>> {
        Ok(self.version(path)?.map(|v| FileSize {
            device: v.device,
            inode: v.inode,
            len: v.len,
        }))
    }
    /// Creates or truncates `path` and writes `data` (not yet durable).
    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// Creates or truncates `path` and writes what `fill` writes (not yet
    /// durable); returns the bytes written. The default gathers them and
    /// calls [`Storage::write`]; a disk writes them through to the file
    /// as they come, so a large file needs no buffer of its size (`fill`
    /// does its own buffering).
    fn write_from(
        &self,
        path: &Path,
        fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<u64> {
        let mut data = Vec::new();
        fill(&mut data)?;
        self.write(path, &data)?;
        Ok(data.len() as u64)
    }
    /// Up to `len` bytes of the file from byte `offset` on (empty past the
    /// end), or `None` if it does not exist.
    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Option<Vec<u8>>>;
    /// Writes `data` into the existing file `path` at byte `offset`, over
    /// what is there and past its end if it reaches further (not yet
    /// durable). A gap before `offset` reads as zeros.
    fn write_at(&self, path: &Path, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Cuts `path` to `len` bytes (not yet durable).
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
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
    /// (created if missing, never deleted), waiting at most `wait` for it;
    /// a lock still held by another after `wait` is
    /// [`io::ErrorKind::TimedOut`] and `f` does not run.
    fn with_lock(&self, lock_path: &Path, wait: Duration, f: &mut dyn FnMut()) -> io::Result<()>;
}

/// Identifies one state of one file: which file (device and inode, so a
/// replace shows) and its length and change time (so a write shows).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileVersion {
    /// The device the file is on.
    pub device: u64,
    /// The file's inode number.
    pub inode: u64,
    /// Its length in bytes.
    pub len: u64,
    /// When its contents or metadata last changed, in nanoseconds.
    pub changed_ns: i128,
}

/// Which file is at a path (device and inode) and its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileSize {
    /// The device the file is on.
    pub device: u64,
    /// The file's inode number.
    pub inode: u64,
    /// Its length in bytes.
    pub len: u64,
}

/// The real disk: `std::fs`, files made durable by `fdatasync`
/// (`File::sync_data`) and directories by `fsync`, and an `fd-lock` write
/// lock on the sidecar file.
#[derive(Clone, Copy, Debug, Default)]
pub struct DiskStorage;

/// A writer that counts what it passes on.
struct Counted<W>(W, u64);

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.0.write(buf)?;
        self.1 += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

fn found<T>(r: io::Result<T>) -> io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

impl Storage for DiskStorage {
    fn read(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        found(fs::read(path))
    }

    fn read_from(&self, path: &Path, offset: u64) -> io::Result<Option<Vec<u8>>> {
        let Some(mut f) = found(File::open(path))? else {
            return Ok(None);
        };
        f.seek(SeekFrom::Start(offset))?;
        let mut out = Vec::new();
        f.read_to_end(&mut out)?;
        Ok(Some(out))
    }

    fn version(&self, path: &Path) -> io::Result<Option<FileVersion>> {
        let Some(m) = found(fs::metadata(path))? else {
            return Ok(None);
        };
        #[cfg(unix)]
        let v = {
            use std::os::unix::fs::MetadataExt;
            FileVersion {
                device: m.dev(),
                inode: m.ino(),
                len: m.len(),
                changed_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
            }
        };
        #[cfg(not(unix))]
        let v = FileVersion {
            device: 0,
            inode: 0,
            len: m.len(),
            changed_ns: m
                .modified()?
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i128),
        };
        Ok(Some(v))
    }

    #[cfg(target_os = "linux")]
    fn size(&self, path: &Path) -> io::Result<Option<FileSize>> {
        use rustix::fs::{AtFlags, CWD, StatxFlags, makedev, statx};
        let want = StatxFlags::INO | StatxFlags::SIZE;
        let Some(x) = found(statx(CWD, path, AtFlags::empty(), want).map_err(io::Error::from))?
        else {
            return Ok(None);
        };
        Ok(Some(FileSize {
            device: makedev(x.stx_dev_major, x.stx_dev_minor),
            inode: x.stx_ino,
            len: x.stx_size,
        }))
    }

    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut f = File::create(path)?;
        f.write_all(data)
    }

    fn write_from(
        &self,
        path: &Path,
        fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<u64> {
        let mut w = Counted(File::create(path)?, 0);
        fill(&mut w)?;
        Ok(w.1)
    }

    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Option<Vec<u8>>> {
        let Some(mut f) = found(File::open(path))? else {
            return Ok(None);
        };
        f.seek(SeekFrom::Start(offset))?;
        let mut out = Vec::with_capacity(len.min(64 * 1024));
        f.take(len as u64).read_to_end(&mut out)?;
        Ok(Some(out))
    }

    fn write_at(&self, path: &Path, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut f = OpenOptions::new().write(true).open(path)?;
        f.seek(SeekFrom::Start(offset))?;
        f.write_all(data)
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        OpenOptions::new().write(true).open(path)?.set_len(len)
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        // fdatasync: the contents and what reading them back needs (the
        // length), without the timestamps a full fsync also writes.
        OpenOptions::new().write(true).open(path)?.sync_data()
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

    fn with_lock(&self, lock_path: &Path, wait: Duration, f: &mut dyn FnMut()) -> io::Result<()> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(lock_path)?;
        let mut lock = fd_lock::RwLock::new(file);
        // flock cannot be given a deadline: try, and back off between tries
        // (20 µs doubling to 2 ms, so a lock handed on within an fsync's
        // time costs little latency).
        let deadline = Instant::now() + wait;
        let mut pause = Duration::from_micros(20);
        loop {
            match lock.try_write() {
                Ok(_guard) => {
                    f();
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(io::ErrorKind::TimedOut.into());
                    }
                    std::thread::sleep(pause.min(deadline - now));
                    pause = (pause * 2).min(Duration::from_millis(2));
                }
                Err(e) => return Err(e),
            }
        }
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
struct SimFile {
    now: Vec<u8>,
    synced: Vec<u8>,
    changes: u64,
}

#[derive(Debug, Default)]
struct SimDisk {
    next_inode: u64,
    /// inode → the file.
    inodes: HashMap<u64, SimFile>,
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
    fn file(&mut self, path: &Path) -> io::Result<&mut SimFile> {
        let ino = *self.names.get(path).ok_or(io::ErrorKind::NotFound)?;
        let f = self.inodes.get_mut(&ino).ok_or(io::ErrorKind::NotFound)?;
        f.changes += 1;
        Ok(f)
    }

    fn create(&mut self, path: &Path) -> &mut SimFile {
        let ino = match self.names.get(path) {
            Some(&ino) => ino,
            None => {
                self.next_inode += 1;
                let ino = self.next_inode;
                self.names.insert(path.to_path_buf(), ino);
                ino
            }
        };
        let f = self.inodes.entry(ino).or_default();
        f.changes += 1;
        f
    }

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
        self.power_cut_keeping(0);
    }

    /// Loses power, but a file whose unsynced contents extend its synced
    /// ones keeps up to `torn` bytes of the extension, as a half-finished
    /// append would. Writing over zeros at the end of a file counts as an
    /// extension (an append into room made for it); any other unsynced
    /// change is lost whole.
    pub fn power_cut_keeping(&self, torn: usize) {
        let mut d = self.disk.lock();
        d.names = d.durable_names.clone();
        let live: Vec<u64> = d.names.values().copied().collect();
        d.inodes.retain(|ino, _| live.contains(ino));
        for f in d.inodes.values_mut() {
            f.now = torn_write(&f.synced, &f.now, torn);
            f.changes += 1;
        }
        d.fail_from = None;
    }
}

/// What a power cut leaves of a file that was `synced` and is `now`:
/// `synced`, but where `now` only extends it (past its end, or over zeros
/// at its end), with up to `torn` bytes of the extension.
fn torn_write(synced: &[u8], now: &[u8], torn: usize) -> Vec<u8> {
    let Some(from) = (0..now.len()).find(|&i| synced.get(i) != Some(&now[i])) else {
        return synced.to_vec();
    };
    let extends =
        now.len() >= synced.len() && synced[from.min(synced.len())..].iter().all(|&b| b == 0);
    if torn == 0 || !extends {
        return synced.to_vec();
    }
    let to = from.saturating_add(torn).min(now.len());
    let mut kept = synced.to_vec();
    if kept.len() < to {
        kept.resize(to, 0);
    }
    kept[from..to].copy_from_slice(&now[from..to]);
    kept
}

impl SimStorage {
    fn lookup(
        &self,
        path: &Path,
    ) -> io::Result<Option<(u64, parking_lot::MappedMutexGuard<'_, SimFile>)>> {
        let d = self.disk.lock();
        if d.fail_from.is_some_and(|f| d.steps >= f) {
            return Err(io::Error::other("simulated crash"));
        }
        let Some(&ino) = d.names.get(path) else {
            return Ok(None);
        };
        Ok(
            parking_lot::MutexGuard::try_map(d, |d| d.inodes.get_mut(&ino))
                .ok()
                .map(|f| (ino, f)),
        )
    }
}

impl Storage for SimStorage {
    fn read_from(&self, path: &Path, offset: u64) -> io::Result<Option<Vec<u8>>> {
        Ok(self.lookup(path)?.map(|(_, f)| {
            let from = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(f.now.len());
            f.now[from..].to_vec()
        }))
    }

    fn version(&self, path: &Path) -> io::Result<Option<FileVersion>> {
        Ok(self.lookup(path)?.map(|(ino, f)| FileVersion {
            device: 0,
            inode: ino,
            len: f.now.len() as u64,
            changed_ns: i128::from(f.changes),
        }))
    }

    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut d = self.disk.lock();
        d.step()?;
        d.create(path).now = data.to_vec();
        Ok(())
    }

    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Option<Vec<u8>>> {
        Ok(self.lookup(path)?.map(|(_, f)| {
            let from = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(f.now.len());
            f.now[from..from.saturating_add(len).min(f.now.len())].to_vec()
        }))
    }

    fn write_at(&self, path: &Path, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut d = self.disk.lock();
        d.step()?;
        let f = d.file(path)?;
        let at = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let end = at + data.len();
        if f.now.len() < end {
            f.now.resize(end, 0);
        }
        f.now[at..end].copy_from_slice(data);
        Ok(())
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut d = self.disk.lock();
        d.step()?;
        let f = d.file(path)?;
        f.now.truncate(usize::try_from(len).unwrap_or(usize::MAX));
        Ok(())
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        let mut d = self.disk.lock();
        d.step()?;
        let f = d.file(path)?;
        f.synced = f.now.clone();
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

    fn with_lock(&self, _lock_path: &Path, wait: Duration, f: &mut dyn FnMut()) -> io::Result<()> {
        // One simulated disk lives in one process: a mutex stands in for
        // the cross-process lock.
        let Some(_guard) = self.lock.try_lock_for(wait) else {
            return Err(io::ErrorKind::TimedOut.into());
        };
        f();
        Ok(())
    }
}

/// The process holding an exclusive `flock` on `lock_path`, read from
/// `/proc/locks` by the file's device and inode (Linux only; `None`
/// elsewhere, or when nobody holds it).
pub(crate) fn lock_holder(lock_path: &Path) -> Option<u32> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(lock_path).ok()?;
        let (major, minor) = (libc_major(m.dev()), libc_minor(m.dev()));
        let want = format!("{major:02x}:{minor:02x}:{}", m.ino());
        let holder = |locks: String| {
            locks.lines().find_map(|line| {
                let w: Vec<&str> = line.split_whitespace().collect();
                if w.contains(&"->") {
                    return None; // a waiter, not the holder
                }
                // "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
                let at = w.iter().position(|x| *x == "FLOCK")?;
                (w.get(at + 4) == Some(&want.as_str()))
                    .then(|| w.get(at + 3)?.parse().ok())
                    .flatten()
            })
        };
        // A list longer than the kernel's buffer takes several reads,
        // between which a line can still fall: a few tries.
        (0..3).find_map(|_| holder(proc_locks()?))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = lock_path;
        None
    }
}

/// `/proc/locks` in as few reads as it takes, at most 1 MiB of it. The
/// kernel lists the locks a page at a time, and the list changes between
/// reads: read in small pieces (as `read_to_string` begins), a line fell
/// between them while other threads took and dropped locks, and the
/// holder named nobody.
#[cfg(target_os = "linux")]
fn proc_locks() -> Option<String> {
    use std::io::Read;
    // Room for a page and more from the first read (an empty buffer
    // starts with a 32-byte probe).
    let mut buf = Vec::with_capacity(64 << 10);
    let file = fs::File::open("/proc/locks").ok()?;
    file.take(1 << 20).read_to_end(&mut buf).ok()?;
    String::from_utf8(buf).ok()
}

/// Linux's `major()` of a `dev_t`.
#[cfg(target_os = "linux")]
fn libc_major(dev: u64) -> u64 {
    ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff)
}

/// Linux's `minor()` of a `dev_t`.
#[cfg(target_os = "linux")]
fn libc_minor(dev: u64) -> u64 {
    ((dev >> 12) & 0xffff_ff00) | (dev & 0xff)
}
