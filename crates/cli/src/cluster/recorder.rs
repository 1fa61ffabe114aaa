//! Writes the run's `history.jsonl` as the run goes: one line per record,
//! numbered, stamped with monotonic nanoseconds since the run began.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use parking_lot::Mutex;

use crate::history::Event;

/// The history file of a run, shared by the conductor and its node pipes.
pub(crate) struct Recorder {
    path: PathBuf,
    t0: Instant,
    out: Mutex<Out>,
}

struct Out {
    file: BufWriter<File>,
    index: u64,
    /// The first write that failed: the history is then incomplete, and
    /// the run says so at its next flush.
    failed: Option<std::io::Error>,
}

impl Recorder {
    /// Creates `dir/history.jsonl`.
    pub(crate) fn create(dir: &Path) -> Result<Self> {
        let path = dir.join("history.jsonl");
        let file =
            File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self {
            path,
            t0: Instant::now(),
            out: Mutex::new(Out {
                file: BufWriter::new(file),
                index: 0,
                failed: None,
            }),
        })
    }

    /// Where the history is.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Nanoseconds since the run began: every record's `time`.
    pub(crate) fn now(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    /// Appends one record.
    pub(crate) fn record(&self, event: &Event) {
        let mut out = self.out.lock();
        let line = event.to_json(out.index).to_string();
        out.index += 1;
        if out.failed.is_none() {
            if let Err(e) = writeln!(out.file, "{line}") {
                out.failed = Some(e);
            }
        }
    }

    /// Writes out what is buffered; the first failed write, if any, is the
    /// error.
    pub(crate) fn flush(&self) -> Result<()> {
        let mut out = self.out.lock();
        if let Some(e) = out.failed.take() {
            return Err(e).with_context(|| format!("cannot write {}", self.path.display()));
        }
        out.file
            .flush()
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}
