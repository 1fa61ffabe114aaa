//! Real processes on one store: the kill-fuzz campaign, the writer gate,
//! and random operations from handles in several processes against a
//! model. `harness = false`, because this binary is also the processes it
//! starts. `--waves N` (or `--cycles N`) sets the campaign's length.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use multinode_filestore::killfuzz::{self, CHILD_FLAG, CHILD_GATE, Campaign, FileStoreTarget};
use multinode_filestore::{Checkpoint, FileStore, PutOutcome, StateStore};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

type Cp = Checkpoint<String>;

type Check<'a> = dyn Fn() -> Result<(), String> + 'a;

const MODEL_FLAG: &str = "--model-handle";
const MODEL_GATE: &str = "MULTINODE_FILESTORE_MODEL_HANDLE";

fn main() {
    killfuzz::child_main(&FileStoreTarget);
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == MODEL_FLAG) {
        model_handle(&args[at + 1..]);
        return;
    }
    let waves = args
        .iter()
        .position(|a| a == "--waves" || a == "--cycles")
        .and_then(|i| args.get(i + 1))
        .map(|n| n.parse().expect("--waves takes a number"))
        .unwrap_or(25);
    let started = Instant::now();
    let tests: [(&str, &Check<'_>); 3] = [
        ("the_writer_flag_without_its_gate_is_refused", &gate_refused),
        ("handles_in_several_processes_match_a_model", &model),
        ("a_kill_fuzz_campaign_finds_no_violation", &|| {
            campaign(waves)
        }),
    ];
    let mut failed = 0;
    println!("\nrunning {} tests", tests.len());
    for (name, test) in tests {
        match test() {
            Ok(()) => println!("test {name} ... ok"),
            Err(e) => {
                println!("test {name} ... FAILED\n{e}");
                failed += 1;
            }
        }
    }
    let passed = tests.len() - failed;
    println!(
        "\ntest result: {}. {passed} passed; {failed} failed; 0 ignored; 0 measured; 0 filtered out; finished in {:.2}s\n",
        if failed == 0 { "ok" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    if failed > 0 {
        std::process::exit(101);
    }
}

fn gate_refused() -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let out = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .args([CHILD_FLAG, &dir.path().to_string_lossy(), "0", "1", "2"])
        .env_remove(CHILD_GATE)
        .output()
        .map_err(|e| e.to_string())?;
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.code() != Some(2) || !err.contains("refusing") || !err.contains(CHILD_GATE) {
        return Err(format!(
            "expected a loud refusal, got {}: {err}",
            out.status
        ));
    }
    let left = std::fs::read_dir(dir.path())
        .map_err(|e| e.to_string())?
        .count();
    if left != 0 {
        return Err(format!("the refused writer left {left} files"));
    }
    Ok(())
}

fn campaign(waves: usize) -> Result<(), String> {
    let seed = multinode_testkit::seed("filestore_kill_fuzz");
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let campaign = Campaign {
        waves,
        ..Campaign::new(seed)
    };
    let every = (waves / 10).max(1);
    let report = campaign
        .run(&FileStoreTarget, dir.path(), |r| {
            if r.waves % every == 0 || !r.violations.is_empty() {
                eprintln!("kill-fuzz: {r}");
            }
        })
        .map_err(|e| e.to_string())?;
    println!("kill-fuzz (seed {seed}): {report}");
    if !report.violations.is_empty() {
        let kept = dir.keep();
        return Err(format!(
            "violations (files kept in {}):\n{}",
            kept.display(),
            report.violations.join("\n")
        ));
    }
    if report.kills < waves as u64 || report.acknowledged == 0 {
        return Err(format!("the campaign did not exercise the store: {report}"));
    }
    Ok(())
}

// ---- Handles in other processes, against a model. ----

/// A handle in this process, serving one command per line on stdin:
/// `put KEY SEQ`, `delete KEY`, `reset KEY SEQ`, `refresh`, `get KEY`.
fn model_handle(args: &[String]) {
    if std::env::var(MODEL_GATE).as_deref() != Ok("1") {
        eprintln!("refusing: {MODEL_FLAG} without {MODEL_GATE}=1");
        std::process::exit(2);
    }
    let store = FileStore::<Cp>::open(&args[0]).expect("open");
    let mut out = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        let reply = command(&store, &line.expect("stdin"));
        writeln!(out, "{reply}").expect("stdout");
        out.flush().expect("stdout");
    }
}

/// Runs one command on a handle; the reply line.
fn command(store: &FileStore<Cp>, line: &str) -> String {
    let seq = |s: &str| s.parse().map(cp);
    let f: Vec<&str> = line.split(' ').collect();
    match f.as_slice() {
        ["put", k, n] => match seq(n).map(|v| store.put(k, v).wait()) {
            Ok(Ok(PutOutcome::Applied)) => "applied".to_string(),
            Ok(Ok(PutOutcome::Superseded)) => "superseded".to_string(),
            Ok(Err(e)) => format!("error {e}"),
            Err(e) => format!("error {e}"),
        },
        ["delete", k] => done(store.delete(k).wait()),
        ["reset", k, n] => match seq(n) {
            Ok(v) => done(store.reset(k, v).wait()),
            Err(e) => format!("error {e}"),
        },
        ["refresh"] => done(store.refresh().wait()),
        ["get", k] => store
            .get(k)
            .map_or("none".to_string(), |v| v.sequence.to_string()),
        _ => format!("error unknown command {line:?}"),
    }
}

fn done(r: Result<(), multinode_filestore::StoreError>) -> String {
    r.map_or_else(|e| format!("error {e}"), |()| "ok".to_string())
}

fn cp(sequence: u64) -> Cp {
    Checkpoint {
        sequence,
        data: format!("at {sequence}"),
    }
}

/// A handle: in this process, or in a child spoken to over pipes.
enum H {
    Local(FileStore<Cp>),
    Remote(Child, ChildStdin, BufReader<ChildStdout>),
}

impl H {
    fn spawn(path: &Path) -> Result<Self, String> {
        let mut child = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
            .arg(MODEL_FLAG)
            .arg(path)
            .env(MODEL_GATE, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut h = H::Remote(child, stdin, stdout);
        // Its first answer means it has opened the store.
        match h.ask("refresh")?.as_str() {
            "ok" => Ok(h),
            other => Err(format!("the handle process did not start: {other}")),
        }
    }

    fn ask(&mut self, cmd: &str) -> Result<String, String> {
        match self {
            H::Local(s) => Ok(command(s, cmd)),
            H::Remote(_, stdin, stdout) => {
                writeln!(stdin, "{cmd}").map_err(|e| e.to_string())?;
                stdin.flush().map_err(|e| e.to_string())?;
                let mut line = String::new();
                stdout.read_line(&mut line).map_err(|e| e.to_string())?;
                if line.is_empty() {
                    return Err(format!("the handle process died on {cmd:?}"));
                }
                Ok(line.trim_end().to_string())
            }
        }
    }
}

impl Drop for H {
    fn drop(&mut self) {
        if let H::Remote(child, ..) = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Two handles here and two in child processes run seeded random puts,
/// deletes, resets and refreshes on one store; every answer and every
/// handle's view is checked against the documented semantics written
/// plainly over a `BTreeMap`.
fn model() -> Result<(), String> {
    let seed = multinode_testkit::seed("filestore_process_model");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().join("state.json");
    let open = || FileStore::<Cp>::open(&path).map_err(|e| e.to_string());
    let mut handles = [
        H::Local(open()?),
        H::Local(open()?),
        H::spawn(&path)?,
        H::spawn(&path)?,
    ];
    // key → (epoch, sequence or tombstone): the file, and each handle's view.
    type View = BTreeMap<String, (u64, Option<u64>)>;
    let mut file = View::new();
    let mut seen: Vec<View> = vec![View::new(); handles.len()];
    for step in 0..400 {
        let h = rng.random_range(0..handles.len());
        let key = format!("k{}", rng.random_range(0..4));
        let n: u64 = rng.random_range(0..20);
        let (cmd, want) = match rng.random_range(0..8) {
            0..=3 => {
                let seen_epoch = seen[h].get(&key).map_or(0, |e| e.0);
                let want = match file.get(&key) {
                    None => {
                        file.insert(key.clone(), (seen_epoch, Some(n)));
                        "applied"
                    }
                    Some(&(e, _)) if e > seen_epoch => "superseded",
                    Some(&(_, Some(cur))) if n <= cur => "superseded",
                    Some(&(e, _)) => {
                        file.insert(key.clone(), (e, Some(n)));
                        "applied"
                    }
                };
                (format!("put {key} {n}"), want)
            }
            4 => {
                if let Some((e, v)) = file.get_mut(&key) {
                    if v.is_some() {
                        *e += 1;
                        *v = None;
                    }
                }
                (format!("delete {key}"), "ok")
            }
            5 => {
                let e = file.get(&key).map_or(0, |e| e.0) + 1;
                file.insert(key.clone(), (e, Some(n)));
                (format!("reset {key} {n}"), "ok")
            }
            _ => ("refresh".to_string(), "ok"),
        };
        let got = handles[h].ask(&cmd)?;
        if got != want {
            return Err(format!(
                "seed {seed}, step {step}: handle {h} `{cmd}` gave {got}, the model {want}"
            ));
        }
        seen[h] = file.clone();
        for (i, handle) in handles.iter_mut().enumerate() {
            for k in 0..4 {
                let key = format!("k{k}");
                let want = seen[i]
                    .get(&key)
                    .and_then(|e| e.1)
                    .map_or("none".to_string(), |s| s.to_string());
                let got = handle.ask(&format!("get {key}"))?;
                if got != want {
                    return Err(format!(
                        "seed {seed}, step {step} (`{cmd}` by handle {h}): handle {i} sees {key} = {got}, the model {want}"
                    ));
                }
            }
        }
    }
    Ok(())
}
