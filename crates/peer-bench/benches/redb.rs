//! The file store's durable puts beside redb's durable commits
//! (`Durability::Immediate`: each commit is on disk when it returns), on
//! the real disk (the target directory, not a tmpfs), interleaved:
//! - one writer updating one key, one put (one commit) at a time;
//! - sixteen writer threads, each updating its own key: our puts share
//!   fsyncs (group commit), redb's writers take turns (one write
//!   transaction at a time);
//! - one writer updating keys spread over 10,000.
//!
//! Each put writes the same value both ways: a 17-byte position string.

use std::cell::Cell;
use std::fs;
use std::path::Path;
use std::time::Instant;

use multinode_benchkit::{Better, interleaved, quick, record};
use multinode_filestore::{Checkpoint, FileStore, StateStore};
use redb::{Database, Durability, ReadableDatabase, TableDefinition};

type Cp = Checkpoint<String>;

const TABLE: TableDefinition<'static, &str, &str> = TableDefinition::new("state");

fn cp(sequence: u64) -> Cp {
    Checkpoint {
        sequence,
        data: position(sequence),
    }
}

fn position(sequence: u64) -> String {
    format!("position {sequence:08}")
}

fn key(k: u64) -> String {
    format!("key-{k:05}")
}

/// A store (and a redb database) in `dir` holding `keys` keys.
fn ours(dir: &Path, keys: u64) -> FileStore<Cp> {
    let s = FileStore::open(dir.join("state.json")).expect("open");
    for k in 0..keys {
        drop(s.put(&key(k), cp(1)));
    }
    s.compact().wait().expect("compact");
    s
}

fn theirs(dir: &Path, keys: u64) -> Database {
    let db = Database::create(dir.join("state.redb")).expect("redb create");
    let tx = db.begin_write().expect("begin");
    {
        let mut t = tx.open_table(TABLE).expect("table");
        for k in 0..keys {
            t.insert(key(k).as_str(), position(1).as_str())
                .expect("insert");
        }
    }
    tx.commit().expect("commit");
    db
}

/// Puts per second from `threads` threads, `puts` each: thread `t`'s
/// `i`th put is `put(key(pick(t, i)), sequence)`, each put durable when
/// `put` returns.
fn rate(
    threads: u64,
    puts: u64,
    next: &Cell<u64>,
    pick: impl Fn(u64, u64) -> u64 + Sync,
    put: impl Fn(&str, u64) + Sync,
) -> f64 {
    let base = next.get();
    next.set(base + puts);
    let start = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (pick, put) = (&pick, &put);
            scope.spawn(move || {
                for i in 0..puts {
                    put(&key(pick(t, i)), base + i + 1);
                }
            });
        }
    });
    (threads * puts) as f64 / start.elapsed().as_secs_f64()
}

/// One durable put into our store.
fn our_put(s: &FileStore<Cp>, k: &str, seq: u64) {
    s.put(k, cp(seq)).wait().expect("put");
}

/// One durable put into redb: a write transaction committed immediately.
fn their_put(db: &Database, k: &str, seq: u64) {
    let mut tx = db.begin_write().expect("begin");
    tx.set_durability(Durability::Immediate)
        .expect("durability");
    {
        let mut table = tx.open_table(TABLE).expect("table");
        table.insert(k, position(seq).as_str()).expect("insert");
    }
    tx.commit().expect("commit");
}

fn main() {
    let q = quick();
    let reps = if q { 3 } else { 7 };
    let root = env!("CARGO_TARGET_TMPDIR");
    fs::create_dir_all(root).expect("target tmpdir");
    let tmp = || tempfile::tempdir_in(root).expect("tempdir");

    let (d_ours, d_theirs) = (tmp(), tmp());
    let (s, db) = (ours(d_ours.path(), 10), theirs(d_theirs.path(), 10));
    let (ours_next, theirs_next) = (Cell::new(10), Cell::new(10));
    let n = if q { 100 } else { 400 };
    let (o, t) = interleaved(
        reps,
        || rate(1, n, &ours_next, |_, _| 0, |k, q| our_put(&s, k, q)),
        || rate(1, n, &theirs_next, |_, _| 0, |k, q| their_put(&db, k, q)),
    );
    record(
        "peers",
        "redb_one_writer_one_key",
        "put/s",
        o,
        t,
        "redb 3, Durability::Immediate, one commit a put",
        Better::Higher,
        Some(1.0),
    );

    let per = if q { 25 } else { 100 };
    let (o, t) = interleaved(
        reps,
        || rate(16, per, &ours_next, |t, _| t, |k, q| our_put(&s, k, q)),
        || rate(16, per, &theirs_next, |t, _| t, |k, q| their_put(&db, k, q)),
    );
    record(
        "peers",
        "redb_sixteen_writers",
        "put/s",
        o,
        t,
        "redb 3, Durability::Immediate, 16 threads, one commit a put",
        Better::Higher,
        Some(5.0),
    );

    let (d_ours, d_theirs) = (tmp(), tmp());
    let (s, db) = (ours(d_ours.path(), 10_000), theirs(d_theirs.path(), 10_000));
    let m = if q { 200 } else { 1_000 };
    let spread = |_: u64, i: u64| i.wrapping_mul(7919) % 10_000;
    let (o, t) = interleaved(
        reps,
        || rate(1, m, &ours_next, spread, |k, q| our_put(&s, k, q)),
        || rate(1, m, &theirs_next, spread, |k, q| their_put(&db, k, q)),
    );
    record(
        "peers",
        "redb_one_writer_10k_keys",
        "put/s",
        o,
        t,
        "redb 3, Durability::Immediate, keys spread over 10,000",
        Better::Higher,
        None,
    );
    // Both are read back: the figures are for writes that landed.
    let read = db.begin_read().expect("read");
    let table = read.open_table(TABLE).expect("table");
    assert!(table.get(key(0).as_str()).expect("get").is_some());
    assert!(s.get(&key(0)).is_some());
}
