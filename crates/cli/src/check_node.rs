//! `multinode check-node -- PROGRAM ARGS...`: a conformance run of the node
//! contract (docs/node-contract.md) against a few processes of a program,
//! printed as a table of requirements, each passed or failed with what was
//! seen. Exits 0 only if every requirement passes.

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use multinode_barrier::{Config, Controller, ENV_ADDR, ENV_INDEX, ENV_NODES};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::control::{DumpLine, parse_version};

#[derive(Args, Debug)]
pub(crate) struct CheckNodeArgs {
    /// Processes of the program to start (replication needs two).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(2..=8))]
    nodes: u32,
    /// Seconds the program has for each step (a start, a reply, a write
    /// reaching another node).
    #[arg(long, default_value_t = 10.0, value_parser = crate::positive_secs)]
    timeout: f64,
    /// The program and its arguments (after `--`); it is given
    /// `--data-dir DIR` and the contract's environment.
    #[arg(last = true, required = true, num_args = 1..)]
    command: Vec<String>,
}

/// One process of the program under test.
struct Proc {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    wait: Duration,
}

impl Proc {
    async fn line(&mut self) -> Result<String> {
        match tokio::time::timeout(self.wait, self.stdout.next_line()).await {
            Err(_) => bail!("no line within {:?}", self.wait),
            Ok(Err(e)) => Err(e.into()),
            Ok(Ok(None)) => bail!("the process closed its output (exited?)"),
            Ok(Ok(Some(l))) => Ok(l),
        }
    }

    async fn call(&mut self, line: &str) -> Result<String> {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        self.line().await
    }
}

struct Run {
    program: Vec<String>,
    dir: PathBuf,
    barrier: String,
    nodes: u32,
    wait: Duration,
}

impl Run {
    fn start(&self, i: u32, restarted: bool) -> Result<Proc> {
        let mut cmd = Command::new(&self.program[0]);
        cmd.args(&self.program[1..])
            .arg("--data-dir")
            .arg(self.dir.join(format!("node-{i}")))
            .env(ENV_ADDR, &self.barrier)
            .env(ENV_INDEX, i.to_string())
            .env(ENV_NODES, self.nodes.to_string())
            .env("MULTINODE_SECRET_FILE", self.dir.join("cluster.secret"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        if restarted {
            cmd.env("MULTINODE_NO_JOIN", "1");
        } else {
            cmd.env_remove("MULTINODE_NO_JOIN");
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {:?}", self.program[0]))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
        Ok(Proc {
            child,
            stdin,
            stdout,
            wait: self.wait,
        })
    }
}

/// A requirement's outcome: what was seen, or why it failed.
type Outcome = std::result::Result<String, String>;

fn version_of(reply: &str, prefix: &str) -> std::result::Result<String, String> {
    reply
        .strip_prefix(prefix)
        .and_then(|rest| rest.split(' ').next())
        .filter(|v| parse_version(v).is_some())
        .map(str::to_owned)
        .ok_or_else(|| format!("answered {reply:?}, not {prefix}<ms>.<logical>@<node> ..."))
}

pub(crate) async fn run(args: CheckNodeArgs) -> Result<ExitCode> {
    let dir = tempfile::Builder::new()
        .prefix("check-node-")
        .tempdir()
        .context("cannot create a directory for the nodes")?;
    std::fs::write(
        dir.path().join("cluster.secret"),
        "a check-node run's cluster secret\n",
    )?;
    let mut config = Config::new(args.nodes);
    config.timeout = Duration::from_secs_f64(args.timeout * 3.0);
    let controller = Controller::bind(([127, 0, 0, 1], 0).into(), config).await?;
    let run = Run {
        program: args.command.clone(),
        dir: dir.path().to_path_buf(),
        barrier: controller.local_addr().to_string(),
        nodes: args.nodes,
        wait: Duration::from_secs_f64(args.timeout),
    };
    println!(
        "check-node: {} process(es) of {:?}, {} s a step",
        args.nodes,
        args.command.join(" "),
        args.timeout
    );
    let mut results: Vec<(&str, Outcome)> = Vec::new();
    let outcome = requirements(&run, &mut results).await;
    drop(controller);
    println!();
    println!("{:<58} result", "requirement");
    for (name, r) in &results {
        match r {
            Ok(seen) => println!("{name:<58} PASS  {}", clip(seen)),
            Err(why) => println!("{name:<58} FAIL  {}", clip(why)),
        }
    }
    let passed = results.iter().filter(|(_, r)| r.is_ok()).count();
    let all = outcome.is_ok() && passed == results.len();
    if let Err(e) = &outcome {
        println!("stopped early: {}", crate::error_line(e));
    }
    println!(
        "check-node: {passed} of {} requirement(s) pass: {}",
        results.len(),
        if all { "PASS" } else { "FAIL" }
    );
    Ok(if all {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn clip(s: &str) -> String {
    let s = s.replace(['\n', '\r'], " ");
    match s.char_indices().nth(100) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

/// Runs every requirement in order, recording each; an `Err` means the
/// run could not go on (the rest are not recorded).
async fn requirements(run: &Run, out: &mut Vec<(&'static str, Outcome)>) -> Result<()> {
    let mut procs = Vec::new();
    for i in 0..run.nodes {
        procs.push(run.start(i, false)?);
    }
    // Starting: READY within the deadline, on every process.
    let mut ready = Vec::new();
    for (i, p) in procs.iter_mut().enumerate() {
        let r = match p.line().await {
            Ok(l) if is_ready(&l, i) => Ok(l),
            Ok(l) => Err(format!("node {i}'s first line was {l:?}")),
            Err(e) => Err(format!("node {i}: {e}")),
        };
        ready.push(r);
    }
    let all_ready = ready.iter().all(Result::is_ok);
    out.push((
        "starts: first line READY <id> <host:port> entries=<n>",
        match ready.into_iter().find(Result::is_err) {
            Some(e) => e,
            None => Ok(format!("{} process(es) ready", run.nodes)),
        },
    ));
    if !all_ready {
        bail!("not every process started");
    }

    let n0 = &mut procs[0];
    let set = n0.call("SET check-a one").await?;
    let v1 = version_of(&set, "OK ");
    out.push((
        "SET k v answers OK <version>",
        v1.clone().map(|v| format!("OK {v}")),
    ));
    let get = n0.call("GET check-a").await?;
    out.push((
        "GET k returns what SET wrote, at its version",
        match &v1 {
            Ok(v) if get == format!("VALUE {v} one") => Ok(get),
            _ => Err(format!("answered {get:?}")),
        },
    ));
    let enc = n0.call("SET check%20b%25%2F v%0Aw%C3%A9").await?;
    let back = n0.call("GET check%20b%25%2F").await?;
    out.push((
        "keys and values are percent-encoded both ways",
        match version_of(&enc, "OK ") {
            Ok(v) if back == format!("VALUE {v} v%0Aw%C3%A9") => Ok(back),
            _ => Err(format!("SET answered {enc:?}, GET {back:?}")),
        },
    ));
    let del = n0.call("DEL check-a").await?;
    let gone = n0.call("GET check-a").await?;
    out.push((
        "DEL answers OK at a higher version; GET then GONE or NONE",
        match (version_of(&del, "OK "), &v1) {
            (Ok(d), Ok(s))
                if parse_version(&d) > parse_version(s)
                    && (gone.starts_with("GONE ") || gone == "NONE") =>
            {
                Ok(format!("{del}; {gone}"))
            }
            _ => Err(format!("DEL answered {del:?}, GET {gone:?}")),
        },
    ));
    out.push((
        "DUMP lists entries sorted by key, then END <count>",
        dump(n0).await?,
    ));
    let mut refused = Vec::new();
    for bad in ["BOGUS 1", "SET only-a-key", "GET", "SET a b c"] {
        let r = n0.call(bad).await?;
        if !r.starts_with("ERR") {
            refused.push(format!("{bad:?} answered {r:?}"));
        }
    }
    let after = n0.call("GET check%20b%25%2F").await?;
    out.push((
        "a malformed line is answered ERR, and the node carries on",
        match (refused.is_empty(), after.starts_with("VALUE ")) {
            (true, true) => Ok("4 bad lines, 4 ERR; the next GET answered".into()),
            (false, _) => Err(refused.join("; ")),
            (true, false) => Err(format!("after the bad lines GET answered {after:?}")),
        },
    ));

    // Replication: a write on node 0 reaches every other node.
    let rep = procs[0].call("SET check-rep here").await?;
    let want = version_of(&rep, "OK ").map(|v| format!("VALUE {v} here"));
    let mut reached = Ok(format!(
        "node 0's write read on every other node ({})",
        run.nodes - 1
    ));
    for (i, p) in procs.iter_mut().enumerate().skip(1) {
        let deadline = Instant::now() + run.wait;
        loop {
            let got = p.call("GET check-rep").await?;
            if want.as_ref().is_ok_and(|w| *w == got) {
                break;
            }
            if Instant::now() >= deadline {
                reached = Err(format!(
                    "node {i} still answers {got:?} after {:?}",
                    run.wait
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    out.push(("a write reaches every other node", reached));

    // Durability: an acknowledged write survives SIGKILL and a restart.
    let last = procs.len() - 1;
    let durable = procs[last].call("SET check-durable kept").await?;
    let kept = version_of(&durable, "OK ");
    procs[last].child.start_kill()?;
    let _ = procs[last].child.wait().await;
    procs[last] = run.start(last as u32, true)?;
    let again = match procs[last].line().await {
        Ok(l) if is_ready(&l, last) => procs[last].call("GET check-durable").await?,
        Ok(l) => format!("restarted with {l:?}"),
        Err(e) => format!("restarted without READY: {e}"),
    };
    out.push((
        "an acknowledged write survives SIGKILL and a restart",
        match &kept {
            Ok(v) if again == format!("VALUE {v} kept") => Ok(again),
            _ => Err(format!(
                "SET answered {durable:?}; after the restart: {again:?}"
            )),
        },
    ));

    // Stopping: QUIT exits 0.
    let p = &mut procs[0];
    p.stdin.write_all(b"QUIT\n").await?;
    let status = tokio::time::timeout(run.wait, p.child.wait()).await;
    out.push((
        "QUIT exits 0",
        match status {
            Ok(Ok(s)) if s.success() => Ok("exited 0".into()),
            Ok(Ok(s)) => Err(multinode_barrier::describe(s)),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("still running after {:?}", run.wait)),
        },
    ));
    Ok(())
}

fn is_ready(line: &str, id: usize) -> bool {
    let w: Vec<&str> = line.split(' ').collect();
    w.len() == 4
        && w[0] == "READY"
        && w[1] == id.to_string()
        && w[2].parse::<std::net::SocketAddr>().is_ok()
        && w[3]
            .strip_prefix("entries=")
            .is_some_and(|n| n.parse::<u64>().is_ok())
}

async fn dump(p: &mut Proc) -> Result<Outcome> {
    p.stdin.write_all(b"DUMP\n").await?;
    let mut entries: Vec<DumpLine> = Vec::new();
    loop {
        let line = p.line().await?;
        if let Some(n) = line.strip_prefix("END ") {
            return Ok(match n.parse::<usize>() {
                Ok(n) if n != entries.len() => {
                    Err(format!("END {n} after {} entries", entries.len()))
                }
                Err(_) => Err(format!("ended with {line:?}")),
                Ok(_) if !entries.windows(2).all(|w| w[0].key < w[1].key) => {
                    Err("entries not sorted by key".into())
                }
                Ok(_) if !entries.iter().any(|e| e.key == "check b%/") => {
                    Err("the encoded key written before is missing".into())
                }
                Ok(n) => Ok(format!("{n} entries, sorted")),
            });
        }
        let entry = DumpLine::parse(&line).ok_or_else(|| anyhow!("not a DUMP line: {line:?}"));
        match entry {
            Ok(e) => entries.push(e),
            Err(e) => return Ok(Err(e.to_string())),
        }
        if entries.len() > 1_000_000 {
            return Ok(Err("more than a million entries".into()));
        }
    }
}
