//! `FileStore` on the real disk (in the target directory, not a tmpfs),
//! each figure beside its baseline in the same run, interleaved:
//! - one writer's puts/s against the raw durable replace cycle (temp file,
//!   fsync, rename, fsync of the directory) of the store's file size, and
//!   against its own path's limit (append a log line's size, fsync);
//! - 16 writer threads on one handle against one writer;
//! - put latency with 10,000 keys against 10 keys;
//! - `get` against a plain `RwLock<BTreeMap>` lookup and clone.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use multinode_benchkit::{Better, interleaved, quick, record};
use multinode_filestore::{Checkpoint, FileStore, StateStore};
use parking_lot::RwLock;

type Cp = Checkpoint<String>;

fn cp(sequence: u64) -> Cp {
    Checkpoint {
        sequence,
        data: format!("position {sequence:08}"),
    }
}

/// A store in `dir` with `keys` keys, compacted so its snapshot holds them.
fn filled(dir: &Path, keys: usize) -> FileStore<Cp> {
    let s = FileStore::open(dir.join("state.json")).expect("open");
    for k in 0..keys {
        // Queued now; the compaction queued after them waits for them.
        drop(s.put(&format!("key-{k:05}"), cp(1)));
    }
    s.compact().wait().expect("compact");
    s
}

/// Puts per second from `threads` threads, `puts` each, to their own keys.
fn put_rate(s: &FileStore<Cp>, threads: usize, puts: usize, next: &Cell<u64>) -> f64 {
    let base = next.get();
    next.set(base + puts as u64);
    let start = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..threads {
            scope.spawn(move || {
                for i in 0..puts as u64 {
                    s.put(&format!("key-{t:05}"), cp(base + i + 1))
                        .wait()
                        .expect("put");
                }
            });
        }
    });
    (threads * puts) as f64 / start.elapsed().as_secs_f64()
}

/// The raw durable replace cycle of `size` bytes, per second.
fn raw_replace_rate(dir: &Path, size: usize, cycles: usize) -> f64 {
    let data = vec![b'x'; size];
    let path = dir.join("raw.json");
    let tmp = dir.join(".raw.json.tmp");
    let start = Instant::now();
    for _ in 0..cycles {
        let mut f = File::create(&tmp).expect("create");
        f.write_all(&data).expect("write");
        f.sync_all().expect("fsync");
        drop(f);
        fs::rename(&tmp, &path).expect("rename");
        File::open(dir).expect("dir").sync_all().expect("fsync dir");
    }
    cycles as f64 / start.elapsed().as_secs_f64()
}

/// Appends of `size` bytes, each followed by an fsync, per second.
fn raw_append_rate(dir: &Path, size: usize, appends: usize) -> f64 {
    let data = vec![b'x'; size];
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("raw.log"))
        .expect("open");
    let start = Instant::now();
    for _ in 0..appends {
        f.write_all(&data).expect("append");
        f.sync_all().expect("fsync");
    }
    appends as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let q = quick();
    let reps = if q { 3 } else { 7 };
    let root = env!("CARGO_TARGET_TMPDIR");
    fs::create_dir_all(root).expect("target tmpdir");
    let tmp = |_: ()| tempfile::tempdir_in(root).expect("tempdir");

    // One writer against the raw replace cycle of the store's size.
    let d10 = tmp(());
    let s10 = filled(d10.path(), 10);
    let size = fs::metadata(d10.path().join("state.json"))
        .expect("snapshot")
        .len() as usize;
    let draw = tmp(());
    let n = if q { 100 } else { 400 };
    let next = Cell::new(10);
    let (one, raw) = interleaved(
        reps,
        || put_rate(&s10, 1, n, &next),
        || raw_replace_rate(draw.path(), size, n),
    );
    record(
        "filestore",
        "one_writer_puts",
        "put/s",
        one,
        raw,
        &format!("raw durable replace cycle of {size} B"),
        Better::Higher,
        Some(0.8),
    );

    // The same writer against the physical limit of its own path: append
    // one line of a log record's size and fsync it.
    let line = 96;
    let (one, append) = interleaved(
        reps,
        || put_rate(&s10, 1, n, &next),
        || raw_append_rate(draw.path(), line, n),
    );
    record(
        "filestore",
        "one_writer_puts_vs_append",
        "put/s",
        one,
        append,
        &format!("raw append of {line} B + fsync"),
        Better::Higher,
        None,
    );

    // Sixteen writer threads on one handle against one.
    let per = if q { 25 } else { 100 };
    let (sixteen, single) = interleaved(
        reps,
        || put_rate(&s10, 16, per, &next),
        || put_rate(&s10, 1, n, &next),
    );
    record(
        "filestore",
        "sixteen_writers_puts",
        "put/s",
        sixteen,
        single,
        "one writer",
        Better::Higher,
        Some(5.0),
    );

    // Put latency at 10,000 keys against 10.
    let d10k = tmp(());
    let s10k = filled(d10k.path(), 10_000);
    let m = if q { 200 } else { 1_000 };
    let (at10k, at10) = (Cell::new(10_000), Cell::new(10_000));
    let (big, small) = interleaved(
        reps,
        || 1e6 / put_rate(&s10k, 1, m, &at10k),
        || 1e6 / put_rate(&s10, 1, m, &at10),
    );
    record(
        "filestore",
        "put_latency_10k_keys",
        "us",
        big,
        small,
        "put latency at 10 keys",
        Better::Lower,
        Some(1.5),
    );

    // get: ours against a plain map behind a lock.
    let plain: RwLock<BTreeMap<String, Cp>> = RwLock::new(
        (0..10_000)
            .map(|k| (format!("key-{k:05}"), cp(1)))
            .collect(),
    );
    let lookups = if q { 100_000 } else { 1_000_000 };
    let time_gets = |get: &dyn Fn(&str) -> Option<Cp>| {
        let keys: Vec<String> = (0..1000).map(|k| format!("key-{:05}", k * 7)).collect();
        let start = Instant::now();
        let mut found = 0usize;
        for i in 0..lookups {
            found += usize::from(get(&keys[i % keys.len()]).is_some());
        }
        assert_eq!(found, lookups, "every key is there");
        start.elapsed().as_secs_f64() * 1e6 / lookups as f64
    };
    let (ours, base) = interleaved(
        reps,
        || time_gets(&|k| s10k.get(k)),
        || time_gets(&|k| plain.read().get(k).cloned()),
    );
    record(
        "filestore",
        "get_10k_keys",
        "us",
        ours,
        base,
        "RwLock<BTreeMap> get + clone",
        Better::Lower,
        None,
    );
    println!("filestore/get_10k_keys: {ours:.3} us per get (bound: 1 us)");
}
