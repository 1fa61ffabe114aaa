//! `multinode node` driven through its control interface, as a conductor
//! or a script drives it.

use std::io::{BufRead, BufReader, Lines, Write};
use std::path::Path;
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use super::{BIN, Reap, wait_exit};

struct Ctl {
    proc: Reap,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Ctl {
    fn start(dir: &Path, extra: &[&str]) -> (Self, String) {
        Self::start_as(0, dir, extra)
    }

    fn start_as(id: u64, dir: &Path, extra: &[&str]) -> (Self, String) {
        let mut child = Command::new(BIN)
            .args([
                "node",
                "--id",
                &id.to_string(),
                "--round-ms",
                "20",
                "--data-dir",
            ])
            .arg(dir)
            .args(extra)
            .env_remove("MULTINODE_BARRIER_ADDR")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn multinode node");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut ctl = Self {
            proc: Reap(child),
            stdin,
            lines,
        };
        let ready = ctl.line();
        (ctl, ready)
    }

    fn line(&mut self) -> String {
        self.lines
            .next()
            .expect("a reply before the node exits")
            .unwrap()
    }

    fn raw(&mut self, bytes: &[u8]) {
        self.stdin.write_all(bytes).unwrap();
        self.stdin.flush().unwrap();
    }

    fn call(&mut self, line: &str) -> String {
        self.raw(format!("{line}\n").as_bytes());
        self.line()
    }

    /// Asks `line` until the reply satisfies `done`, for at most 10 s.
    fn poll(&mut self, line: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.call(line);
            if done(&got) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{line}: still {got:?} after 10 s"
            );
            std::thread::yield_now();
        }
    }

    /// A counter of this node's `FAULTS` reply.
    fn fault(&mut self, name: &str) -> u64 {
        field(&self.call("FAULTS"), name)
    }
}

fn field(line: &str, name: &str) -> u64 {
    line.split(' ')
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {line:?}"))
}

/// Two real node processes, peers of each other.
fn pair(a: &Path, b: &Path) -> (Ctl, Ctl) {
    let (mut n0, r0) = Ctl::start_as(0, a, &[]);
    let (mut n1, r1) = Ctl::start_as(1, b, &[]);
    let addr = |ready: &str| ready.split(' ').nth(2).expect("an address").to_owned();
    assert_eq!(n0.call(&format!("PEER 1 {}", addr(&r1))), "OK");
    assert_eq!(n1.call(&format!("PEER 0 {}", addr(&r0))), "OK");
    (n0, n1)
}

#[test]
fn the_fault_verbs_act_on_real_frames_and_are_counted() {
    let (d0, d1) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut n0, mut n1) = pair(d0.path(), d1.path());
    let has = |v: &'static str| move |got: &str| got.ends_with(&format!(" {v}"));
    assert!(n0.call("SET k1 a").starts_with("OK "));
    n1.poll("GET k1", has("a"));
    assert_eq!(n0.fault("held"), 0);

    // A cut: nothing of node 0 reaches node 1, though node 1 still asks.
    assert_eq!(n0.call("CUT 1"), "OK");
    assert!(n0.call("SET k2 b").starts_with("OK "));
    n0.poll("FAULTS", |l| field(l, "cut") >= 10);
    assert_eq!(n1.call("GET k2"), "NONE", "a write crossed the cut");
    assert_eq!(n0.call("HEAL"), "OK");
    n1.poll("GET k2", has("b"));

    // A hold: frames wait, then arrive in order at the release.
    assert_eq!(n0.call("HOLD 1"), "OK");
    assert!(n0.call("SET k3 c").starts_with("OK "));
    n0.poll("FAULTS", |l| field(l, "held") >= 10);
    assert_eq!(n1.call("GET k3"), "NONE", "a held frame arrived");
    assert_eq!(n0.call("RELEASE 1"), "OK");
    n1.poll("GET k3", has("c"));

    // Duplicates and delays still converge; each is counted.
    assert_eq!(n0.call("DUPLICATE 0.5"), "OK");
    assert_eq!(n0.call("DELAY 30 60"), "OK");
    assert!(n0.call("SET k4 d").starts_with("OK "));
    n1.poll("GET k4", has("d"));
    n0.poll("FAULTS", |l| {
        field(l, "duplicated") > 0 && field(l, "delayed") > 0
    });
    assert_eq!(n0.call("DUPLICATE 0"), "OK");
    assert_eq!(n0.call("DELAY 0 0"), "OK");

    // Corruption: every frame has a byte flipped; the peer decodes it or
    // refuses it, and neither process goes down.
    assert_eq!(n0.call("CORRUPT 1"), "OK");
    let before = n0.fault("corrupted");
    n0.poll("FAULTS", |l| field(l, "corrupted") >= before + 20);
    assert_eq!(n1.call("PING"), "PONG");
    assert_eq!(n0.call("CORRUPT 0"), "OK");
    let faults = n0.call("FAULTS");
    assert!(
        field(&faults, "sent") >= field(&faults, "corrupted"),
        "{faults}"
    );
    let trace = faults.rsplit("trace=").next().unwrap();
    assert!(
        trace.len() == 16 && trace.bytes().all(|b| b.is_ascii_hexdigit()),
        "{faults}"
    );
    assert_eq!(n1.call("QUIT"), "BYE");
    assert_eq!(n0.call("QUIT"), "BYE");
    assert!(wait_exit(&mut n0.proc).success());
    assert!(wait_exit(&mut n1.proc).success());
}

#[test]
fn bad_control_lines_get_error_lines_and_the_node_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let (mut n, ready) = Ctl::start(dir.path(), &[]);
    assert!(ready.starts_with("READY 0 127.0.0.1:"), "{ready}");
    assert!(ready.ends_with(" entries=0"), "{ready}");
    let cases: [(&[u8], &str); 8] = [
        (b"HELLO\n", "ERR unknown command \"HELLO\""),
        (b"SET onlykey\n", "ERR SET takes <key> <value>"),
        (b"\n", "ERR empty line"),
        (b"GET %zz\n", "ERR bad key: bad escape at byte 0"),
        (b"DROP 7\n", "ERR bad probability: \"7\" is not in [0, 1]"),
        (b"\xff\xfe binary\n", "ERR line is not UTF-8"),
        (
            b"PEER 1 not-an-address\n",
            "ERR bad address: \"not-an-address\" is not host:port",
        ),
        // No barrier controller in the environment.
        (
            b"BARRIER x\n",
            "ERR no barrier controller: MULTINODE_BARRIER_ADDR is not set",
        ),
    ];
    for (input, want) in cases {
        n.raw(input);
        let got = n.line();
        assert!(
            got.starts_with(want),
            "{input:?}: got {got:?}, want {want:?}"
        );
    }
    let mut long = vec![b'x'; 70_000];
    long.push(b'\n');
    n.raw(&long);
    assert_eq!(n.line(), "ERR line longer than 65536 bytes");
    assert_eq!(n.call("PING"), "PONG");
    // Keys and values are percent-encoded both ways.
    let ok = n.call("SET a%20key caf%C3%A9%0A");
    assert!(ok.starts_with("OK ") && ok.ends_with("@0"), "{ok}");
    let version = &ok[3..];
    assert_eq!(
        n.call("GET a%20key"),
        format!("VALUE {version} caf%C3%A9%0A")
    );
    assert_eq!(n.call("GET nothing"), "NONE");
    let del = n.call("DEL a%20key");
    assert_eq!(n.call("GET a%20key"), format!("GONE {}", &del[3..]));
    let digest = n.call("DIGEST");
    assert!(digest.contains(" live=0 entries=1 "), "{digest}");
    assert!(n.call("STATS").starts_with("STATS rounds="));
    assert_eq!(n.call("QUIT"), "BYE");
    let status = wait_exit(&mut n.proc);
    assert!(status.success(), "{status}");
}

#[test]
fn an_acknowledged_write_survives_sigkill_of_the_node_process() {
    let dir = tempfile::tempdir().unwrap();
    let (mut n, _) = Ctl::start(dir.path(), &[]);
    let mut acked = Vec::new();
    for k in 0..50 {
        let ok = n.call(&format!("SET k{k} v{k}"));
        acked.push((k, ok.strip_prefix("OK ").expect("acknowledged").to_owned()));
    }
    let del = n.call("DEL k7");
    // Writes still in flight when the kill lands may or may not survive.
    n.raw(b"SET late1 x\nSET late2 y\n");
    n.proc.0.kill().unwrap();
    n.proc.0.wait().unwrap();

    let (mut n, ready) = Ctl::start(dir.path(), &[]);
    let restored: usize = ready.rsplit('=').next().unwrap().parse().unwrap();
    assert!((50..=52).contains(&restored), "{ready}");
    for (k, version) in acked {
        let got = n.call(&format!("GET k{k}"));
        if k == 7 {
            assert_eq!(got, format!("GONE {}", &del[3..]));
        } else {
            assert_eq!(got, format!("VALUE {version} v{k}"));
        }
    }
    // End of input stops the node cleanly.
    drop(n.stdin);
    let status = wait_exit(&mut n.proc);
    assert!(status.success(), "{status}");
}

#[test]
fn a_store_whose_files_vanish_refuses_writes_and_restarts_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let (mut n, _) = Ctl::start(dir.path(), &[]);
    for k in 0..300 {
        let ok = n.call(&format!("SET k{k} v{k}"));
        assert!(ok.starts_with("OK "), "{ok}");
    }
    for name in ["lww.json", "lww.json.log"] {
        std::fs::remove_file(dir.path().join(name)).unwrap();
    }
    let refused = n.call("SET after x");
    assert!(
        refused.starts_with("ERR "),
        "acknowledged on lost files: {refused}"
    );
    assert!(refused.contains("lww.json"), "names the file: {refused}");
    assert!(refused.contains("changed underneath"), "{refused}");
    // The cause is said once, not once per layer of the error chain.
    let cause = "was changed underneath the store";
    assert_eq!(refused.matches(cause).count(), 1, "{refused}");
    let again = n.call("SET again y");
    assert!(again.starts_with("ERR "), "{again}");
    drop(n.stdin);
    wait_exit(&mut n.proc);

    // Restarting over the lost files refuses to start empty.
    let out = Command::new(BIN)
        .args(["node", "--id", "0", "--data-dir"])
        .arg(dir.path())
        .env_remove("MULTINODE_BARRIER_ADDR")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "started over lost files");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("READY"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("lww.json"), "{stderr}");
    assert!(stderr.contains("generation"), "{stderr}");
}

/// The bytes of a stranger that speaks the protocol without the secret:
/// a `Hello` and `Session` as node 1, then a sync carrying a write to `k`
/// stamped 55 s ahead (within the drift bound, so a node takes it).
fn stranger_write() -> Vec<u8> {
    use multinode_wire::{
        ClusterFrame, ClusterId, GossipPdu, Hello, LwwEntry, LwwMessage, MessageCodec, NodeId,
        Session, Timestamp,
    };
    use tokio_util::codec::Encoder;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut buf = bytes::BytesMut::new();
    let hello = Hello::new(ClusterId(1), NodeId(1));
    MessageCodec::<Hello>::new()
        .encode(hello, &mut buf)
        .unwrap();
    let session = Session {
        incarnation: 1,
        wall_ms: now,
        challenge: None,
    };
    MessageCodec::<Session>::new()
        .encode(session, &mut buf)
        .unwrap();
    let entry = LwwEntry {
        key: "k".into(),
        value: Some(bytes::Bytes::from_static(b"evil")),
        version: Timestamp {
            physical_ms: now + 55_000,
            logical: 0,
            node: NodeId(1),
        },
    };
    let sync = LwwMessage::Sync {
        reply: false,
        era: 0,
        answers: multinode_lww::NO_DIGEST,
        watermarks: Vec::new(),
        entries: vec![entry],
        partial: Vec::new(),
        sent_ms: now,
        beyond: Vec::new(),
    };
    let frame = ClusterFrame::Gossip(GossipPdu::Lww(sync));
    MessageCodec::<ClusterFrame>::new()
        .encode(frame, &mut buf)
        .unwrap();
    buf.to_vec()
}

/// Sends the stranger's write to `ready`'s node and waits until the node
/// closes the connection or has read it all.
fn send_as_stranger(ready: &str) {
    use std::io::Read;
    let addr: std::net::SocketAddr = ready.split(' ').nth(2).unwrap().parse().unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .unwrap();
    s.write_all(&stranger_write()).unwrap();
    let mut sink = [0u8; 256];
    // The node's own handshake comes back; then it closes (refused) or,
    // without a secret, keeps the connection open until the timeout.
    while let Ok(n) = s.read(&mut sink) {
        if n == 0 {
            break;
        }
    }
}

#[test]
fn a_stranger_without_the_cluster_secret_cannot_write_into_a_node() {
    // Control: without a secret a loopback node takes the stranger's write.
    let dir = tempfile::tempdir().unwrap();
    let (mut open, ready) = Ctl::start(&dir.path().join("open"), &[]);
    send_as_stranger(&ready);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let got = open.call("GET k");
        if got.ends_with(" evil") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{got}");
        std::thread::yield_now();
    }
    // With a secret, the same bytes write nothing.
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "a cluster secret of some length\n").unwrap();
    let (mut guarded, ready) = Ctl::start(
        &dir.path().join("guarded"),
        &["--secret-file", secret.to_str().unwrap()],
    );
    send_as_stranger(&ready);
    // Anything the node took from that connection it took before the close.
    assert_eq!(guarded.call("GET k"), "NONE");
    assert_eq!(guarded.call("PING"), "PONG");
}

/// The node's peak resident memory, from `/proc`.
#[cfg(target_os = "linux")]
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}

/// 2,000 connections that open a handshake and go away, 250 at a time:
/// they cost the node a bounded log and bounded memory. (Before: one WARN
/// line each, and 64 KiB of read buffer each, which glibc kept: +13 MB.)
#[cfg(target_os = "linux")]
#[test]
fn a_flood_of_half_handshakes_costs_a_few_log_lines_and_little_memory() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr");
    let mut child = Command::new(BIN)
        .args(["node", "--id", "0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env_remove("MULTINODE_BARRIER_ADDR")
        .env("MULTINODE_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn multinode node");
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut proc = Reap(child);
    let ready = lines.next().unwrap().unwrap();
    let addr: std::net::SocketAddr = ready.split(' ').nth(2).unwrap().parse().unwrap();
    let before = peak_rss_kib(pid);
    for _ in 0..8 {
        let mut held = Vec::new();
        for _ in 0..250 {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            // Half a Hello: the node's handshake waits for the rest.
            s.write_all(b"\x00\x00\x00\x07MNOD").unwrap();
            held.push(s);
        }
        // Each connection is read from before it is dropped, so the node
        // has seen it: its Hello arrives once it accepted and answered, or
        // the connection is closed (over the inbound limit, while the last
        // wave's are still being closed).
        for s in &mut held {
            s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
                .unwrap();
            let mut hello = [0u8; 4];
            match s.read_exact(&mut hello) {
                Ok(()) => {}
                Err(e) => assert!(
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
                    ),
                    "{e}"
                ),
            }
        }
    }
    let grew = peak_rss_kib(pid).saturating_sub(before);
    stdin.write_all(b"QUIT\n").unwrap();
    assert!(wait_exit(&mut proc).success());
    let warns = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter(|l| l.contains("WARN"))
        .count();
    assert!(warns <= 10, "{warns} warning lines for one flood");
    assert!(grew < 9 * 1024, "peak memory grew by {grew} KiB");
}

#[cfg(unix)]
#[test]
fn sigterm_stops_the_node_cleanly_even_mid_session() {
    let dir = tempfile::tempdir().unwrap();
    let (mut n, _) = Ctl::start(dir.path(), &[]);
    // Served commands first: the signal listener must outlive them.
    for k in 0..5 {
        assert!(n.call(&format!("SET k{k} v")).starts_with("OK "));
    }
    let pid = n.proc.0.id().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(sent.success());
    let status = wait_exit(&mut n.proc);
    assert!(status.success(), "{status}");
}

/// Whether the pipe end `fd` is non-blocking.
fn non_blocking(fd: &impl std::os::fd::AsFd) -> bool {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = fcntl(fd, FcntlArg::F_GETFL).expect("F_GETFL");
    OFlag::from_bits_truncate(flags).contains(OFlag::O_NONBLOCK)
}

/// Writes and reads sent together: each read sees every write sent before
/// it, and a read never holds the writes after it back. The control pipe
/// runs on the node's reactor (its stdin is made non-blocking, a flag the
/// pipe shares with every holder of it) and is given back blocking when
/// the node quits.
#[test]
fn pipelined_reads_see_the_writes_before_them_and_the_pipe_is_given_back() {
    let dir = tempfile::tempdir().unwrap();
    let (reader, mut writer) = std::io::pipe().unwrap();
    let shared = reader.try_clone().unwrap();
    let mut child = Command::new(BIN)
        .args(["node", "--id", "0", "--round-ms", "20", "--data-dir"])
        .arg(dir.path())
        .env_remove("MULTINODE_BARRIER_ADDR")
        .stdin(reader)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn multinode node");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut guard = Reap(child);
    let mut line = || lines.next().expect("a reply").unwrap();
    assert!(line().starts_with("READY 0 "));
    assert!(non_blocking(&shared), "stdin is not on the reactor");
    writer
        .write_all(b"SET k a\nSET k b\nGET k\nSET k c\nGET k\nSET j x\nGET j\n")
        .unwrap();
    let version = |reply: &str| -> (u64, u32) {
        let v = reply.split(' ').nth(1).expect("a version");
        let (ms, rest) = v.split_once('.').expect("ms.counter@node");
        let counter = rest.split('@').next().unwrap();
        (ms.parse().unwrap(), counter.parse().unwrap())
    };
    let (a, b) = (line(), line());
    assert!(a.starts_with("OK ") && b.starts_with("OK "), "{a:?} {b:?}");
    let first = line();
    // b, or c if c was durable by the read's turn; never a.
    assert!(
        first.ends_with(" b") || first.ends_with(" c"),
        "the read did not see the write before it: {first:?}"
    );
    assert!(version(&first) >= version(&b), "{first:?} older than {b:?}");
    let c = line();
    assert!(c.starts_with("OK "), "{c:?}");
    let second = line();
    assert_eq!(version(&second), version(&c), "{second:?} is not {c:?}");
    assert!(second.ends_with(" c"), "{second:?}");
    assert!(line().starts_with("OK "));
    assert!(line().ends_with(" x"));
    writer.write_all(b"QUIT\n").unwrap();
    assert_eq!(line(), "BYE");
    assert!(wait_exit(&mut guard).success());
    assert!(!non_blocking(&shared), "the pipe was left non-blocking");
}
