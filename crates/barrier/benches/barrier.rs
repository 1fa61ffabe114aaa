//! Barrier round time with N participants (4, 16, 64 and 1,000), each a
//! thread with its own TCP
//! connection on loopback: our controller and blocking client, against a
//! plain rendezvous (one blocking thread reads one line from each
//! connection, then writes `OK` to all) in the same run, interleaved.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use multinode_barrier::{BlockingBarrierNode, Config, Controller};
use multinode_benchkit::{Better, percentile, quick, record};

/// Runs `rounds` barriers with `n` client threads; returns each round's
/// duration in µs, as seen by node 0 (time between consecutive passes).
fn rounds_with(
    n: usize,
    rounds: usize,
    mut client: impl FnMut(usize) -> Box<dyn FnMut(usize) + Send>,
) -> Vec<f64> {
    let start = Arc::new(Barrier::new(n));
    let mut handles = Vec::new();
    for i in 0..n {
        let mut pass = client(i);
        let start = Arc::clone(&start);
        handles.push(thread::spawn(move || {
            start.wait();
            let mut stamps = Vec::with_capacity(rounds + 1);
            stamps.push(Instant::now());
            for r in 0..rounds {
                pass(r);
                stamps.push(Instant::now());
            }
            stamps
        }));
    }
    let mut stamps = Vec::new();
    for (i, h) in handles.into_iter().enumerate() {
        let s = h.join().expect("client thread");
        if i == 0 {
            stamps = s;
        }
    }
    // Skip the first round: connection warm-up.
    stamps
        .windows(2)
        .skip(1)
        .map(|w| (w[1] - w[0]).as_secs_f64() * 1e6)
        .collect()
}

/// Our controller on a current-thread runtime in its own thread, as
/// `multinode barrier serve` runs it, with our blocking client.
fn ours(n: usize, rounds: usize, tag: usize) -> Vec<f64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut cfg = Config::new(n as u32);
    cfg.timeout = Duration::from_secs(60);
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = thread::spawn(move || {
        rt.block_on(async move {
            let c = Controller::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), cfg)
                .await
                .expect("bind");
            addr_tx.send(c.local_addr()).expect("send addr");
            let _ = stop_rx.await;
            c.shutdown().await;
        });
    });
    let addr = addr_rx.recv().expect("controller address");
    let mut nodes: Vec<Option<BlockingBarrierNode>> = (0..n)
        .map(|i| {
            let id = multinode_wire::NodeId(i as u64);
            Some(BlockingBarrierNode::connect(addr, Some(id)).expect("connect"))
        })
        .collect();
    let samples = rounds_with(n, rounds, |i| {
        let mut node = nodes[i].take().expect("one client per thread");
        Box::new(move |r| node.barrier(&format!("b{tag}-{r}"), None).expect("barrier"))
    });
    let _ = stop_tx.send(());
    server.join().expect("controller thread");
    samples
}

fn raw(n: usize, rounds: usize) -> Vec<f64> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = thread::spawn(move || {
        let mut conns: Vec<(BufReader<TcpStream>, TcpStream)> = (0..n)
            .map(|_| {
                let (s, _) = listener.accept().expect("accept");
                s.set_nodelay(true).expect("nodelay");
                (BufReader::new(s.try_clone().expect("clone")), s)
            })
            .collect();
        let mut line = String::new();
        for _ in 0..rounds {
            let mut label = String::new();
            for (r, _) in &mut conns {
                line.clear();
                r.read_line(&mut line).expect("read");
                label = line.trim_end().trim_start_matches("BARRIER ").to_owned();
            }
            let reply = format!("OK {label}\n");
            for (_, w) in &mut conns {
                w.write_all(reply.as_bytes()).expect("write");
            }
        }
    });
    let mut streams: Vec<Option<TcpStream>> = (0..n)
        .map(|_| {
            let s = TcpStream::connect(addr).expect("connect");
            s.set_nodelay(true).expect("nodelay");
            Some(s)
        })
        .collect();
    let samples = rounds_with(n, rounds, |i| {
        let s = streams[i].take().expect("one stream per thread");
        let mut r = BufReader::new(s.try_clone().expect("clone"));
        let mut w = s;
        let mut line = String::new();
        Box::new(move |round| {
            w.write_all(format!("BARRIER b{round}\n").as_bytes())
                .expect("write");
            line.clear();
            r.read_line(&mut line).expect("read");
        })
    });
    server.join().expect("server");
    samples
}

/// A bash child that joins as node 1, arrives at `x`, says so, and sleeps
/// (as the process holding the socket) until it is killed.
fn waiting_child(addr: SocketAddr) -> std::process::Child {
    let script = "exec 3<>/dev/tcp/127.0.0.1/$PORT; printf 'HELLO 1\\nBARRIER x\\n' >&3; \
                  echo sent; exec sleep 1000";
    std::process::Command::new("bash")
        .args(["-c", script])
        .env("PORT", addr.port().to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn bash")
}

fn wait_for_sent(child: &mut std::process::Child) {
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("piped"))
        .read_line(&mut line)
        .expect("read child");
    assert_eq!(line, "sent\n");
}

/// Milliseconds from SIGKILL of a node waiting at a barrier to `FAILED` at
/// another waiting node.
fn kill_to_failed(rt: &tokio::runtime::Runtime) -> f64 {
    let mut cfg = Config::new(3);
    cfg.timeout = Duration::from_secs(60);
    let c = rt
        .block_on(Controller::bind(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            cfg,
        ))
        .expect("bind");
    let addr = c.local_addr();
    // Node 0 is waiting at `x` before the child even exists, so the kill
    // hits a pending barrier that node 0 has reached.
    let mut node =
        BlockingBarrierNode::connect(addr, Some(multinode_wire::NodeId(0))).expect("connect");
    let waiter = thread::spawn(move || {
        let res = node.barrier("x", Some(Duration::from_secs(30)));
        assert!(res.is_err(), "the barrier must fail");
        Instant::now()
    });
    let mut child = waiting_child(addr);
    wait_for_sent(&mut child);
    let killed = Instant::now();
    child.kill().expect("kill");
    child.wait().expect("reap");
    let failed = waiter.join().expect("waiter");
    drop(c);
    (failed - killed).as_secs_f64() * 1e3
}

/// Milliseconds from SIGKILL of a connected child to end of stream at a raw
/// listener: the physical limit of noticing a dead peer.
fn kill_to_eof() -> f64 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let mut child = waiting_child(listener.local_addr().expect("addr"));
    let (conn, _) = listener.accept().expect("accept");
    wait_for_sent(&mut child);
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    r.read_line(&mut line).expect("hello");
    r.read_line(&mut line).expect("barrier");
    let killed = Instant::now();
    child.kill().expect("kill");
    child.wait().expect("reap");
    line.clear();
    let _ = r.read_line(&mut line);
    (Instant::now() - killed).as_secs_f64() * 1e3
}

fn main() {
    let (reps, rounds) = if quick() { (2, 100) } else { (5, 400) };
    // A thousand members (threads, each with its own connection) take
    // about a thousand times a member's work a round: fewer rounds.
    for (n, rounds) in [
        (4usize, rounds),
        (16, rounds),
        (64, rounds),
        (1000, rounds / 10),
    ] {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for rep in 0..reps {
            a.extend(ours(n, rounds, rep));
            b.extend(raw(n, rounds));
        }
        let (a50, b50) = (percentile(&mut a, 50.0), percentile(&mut b, 50.0));
        let (a99, b99) = (percentile(&mut a, 99.0), percentile(&mut b, 99.0));
        let base = "plain blocking line rendezvous";
        record(
            "barrier",
            &format!("round_n{n}_p50"),
            "us",
            a50,
            b50,
            base,
            Better::Lower,
            Some(1.5),
        );
        record(
            "barrier",
            &format!("round_n{n}_p99"),
            "us",
            a99,
            b99,
            base,
            Better::Lower,
            None,
        );
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let tries = if quick() { 3 } else { 9 };
    let (failed, eof) = multinode_benchkit::interleaved(tries, || kill_to_failed(&rt), kill_to_eof);
    record(
        "barrier",
        "sigkill_to_failed",
        "ms",
        failed,
        eof,
        "SIGKILL to end of stream at a raw listener",
        Better::Lower,
        None,
    );
}
