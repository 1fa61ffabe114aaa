//! Gossip transport throughput, each figure beside its baseline in the
//! same run:
//! - TCP on loopback, one sender to one receiver, 64 B and 1 KiB payloads,
//!   against a plainly written tokio length-prefixed pair (`BufWriter`
//!   writing `[u32 length][payload]`, `BufReader` reading it back);
//! - the in-process transport, one sender to one receiver, against a bare
//!   tokio `mpsc::channel(4096)` carrying the same frames to a task.
//!
//! - connection set-up with the cluster secret (HMAC challenge-response
//!   both ways) against the same transports without one.
//!
//! Both sides of each comparison run on the same 2-worker runtime. A
//! sender refused for a full queue waits as each API offers: ours with
//! `GossipTransport::ready`, the mpsc baseline by yielding, the plain TCP
//! pair inside its own `write_all`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use multinode_benchkit::{Better, interleaved, quick, record};
use multinode_gossip::{
    GossipTransport, InProcessNetwork, RemoteMessageSink, SendError, TcpTransport,
    TcpTransportConfig,
};
use multinode_wire::{ClusterFrame, ClusterId, GossipPdu, NodeId, RemoteTell};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};

fn main() {
    let quick = quick();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // Loopback throughput here swings by 2x from run to run: 15 pairs keep
    // the medians steady.
    let reps = if quick { 3 } else { 15 };
    // The targets are issue 22's.
    for (size, frames, target) in [(64usize, 200_000u64, 0.5), (1024, 100_000, 0.8)] {
        let frames = if quick { frames / 10 } else { frames };
        let (ours, base) = interleaved(
            reps,
            || rt.block_on(tcp_ours(size, frames)),
            || rt.block_on(tcp_baseline(size, frames)),
        );
        record(
            "gossip",
            &format!("tcp_{size}b"),
            "frames/s",
            ours,
            base,
            "plain tokio length-prefixed writer/reader pair",
            Better::Higher,
            Some(target),
        );
    }
    let frames = if quick { 50_000 } else { 500_000 };
    let (ours, base) = interleaved(
        reps,
        || rt.block_on(inproc_ours(frames)),
        || rt.block_on(inproc_baseline(frames)),
    );
    record(
        "gossip",
        "in_process_64b",
        "frames/s",
        ours,
        base,
        "bare tokio mpsc::channel(4096) to a task",
        Better::Higher,
        Some(0.5),
    );
    let conns = if quick { 100 } else { 1000 };
    let (ours, base) = interleaved(
        reps,
        || rt.block_on(handshakes(true, conns)),
        || rt.block_on(handshakes(false, conns)),
    );
    record(
        "gossip",
        "tcp_connect_with_secret",
        "conns/s",
        ours,
        base,
        "the same dial and handshake without a cluster secret",
        Better::Higher,
        Some(0.5),
    );
}

/// Connections per second: a frame queued for a new peer makes the
/// transport dial it, both sides shake
/// hands (with the secret: challenge, HMAC proof and check, both ways),
/// then the peer is removed and dialled again.
async fn handshakes(secret: bool, conns: u64) -> f64 {
    let key = secret
        .then(|| multinode_wire::Secret::new(*b"a benchmark cluster secret").expect("secret"));
    let mut cb = TcpTransportConfig::new(ClusterId(5), NodeId(1));
    cb.secret = key.clone();
    let b = TcpTransport::bind(cb, Arc::new(Nothing))
        .await
        .expect("bind");
    let mut ca = TcpTransportConfig::new(ClusterId(5), NodeId(0));
    ca.secret = key;
    let a = TcpTransport::bind(ca, Arc::new(Nothing))
        .await
        .expect("bind");
    let started = Instant::now();
    for i in 1..=conns {
        a.add_peer(NodeId(1), b.local_addr()).expect("add");
        // A peer is dialled once a frame waits for it.
        a.send(NodeId(1), &frame(8)).expect("queued");
        let deadline = Instant::now() + Duration::from_secs(10);
        while a.stats().peer(NodeId(1)).connects < i {
            assert!(Instant::now() < deadline, "connection {i} never came up");
            tokio::task::yield_now().await;
        }
        a.remove_peer(NodeId(1));
    }
    let rate = conns as f64 / started.elapsed().as_secs_f64();
    a.shutdown().await;
    b.shutdown().await;
    rate
}

/// A sink that drops what it is given.
struct Nothing;

impl RemoteMessageSink for Nothing {
    fn on_gossip(&self, _: NodeId, _: GossipPdu) {}
    fn on_tell(&self, _: NodeId, _: RemoteTell) {}
    fn on_peer_restarted(&self, _: NodeId, _: u64) {}
}

fn frame(size: usize) -> ClusterFrame {
    frame_of(size, 1)
}

fn frame_of(size: usize, schema: u16) -> ClusterFrame {
    ClusterFrame::Gossip(GossipPdu::Opaque {
        schema,
        body: Bytes::from(vec![0x5a; size]),
    })
}

/// Counts frames and wakes the bench when the last one is in.
struct Counter {
    got: AtomicU64,
    want: AtomicU64,
    done: Notify,
}

impl Counter {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            got: AtomicU64::new(0),
            want: AtomicU64::new(u64::MAX),
            done: Notify::new(),
        })
    }

    fn bump(&self) {
        if self.got.fetch_add(1, Ordering::Relaxed) + 1 == self.want.load(Ordering::Relaxed) {
            self.done.notify_one();
        }
    }

    /// Resets for a run of `n` frames.
    fn expect(&self, n: u64) {
        self.got.store(0, Ordering::Relaxed);
        self.want.store(n, Ordering::Relaxed);
    }
}

impl RemoteMessageSink for Counter {
    fn on_gossip(&self, _: NodeId, pdu: GossipPdu) {
        std::hint::black_box(&pdu);
        self.bump();
    }
    fn on_tell(&self, _: NodeId, tell: RemoteTell) {
        std::hint::black_box(&tell);
        self.bump();
    }
}

/// Sends `n` copies of `f` to `to`, waiting for room when the queue is full.
async fn send_n(t: &impl GossipTransport, to: NodeId, f: &ClusterFrame, n: u64) {
    for _ in 0..n {
        loop {
            match t.send(to, f) {
                Ok(()) => break,
                Err(SendError::QueueFull { .. }) => t.ready(to).await,
                Err(e) => panic!("send: {e}"),
            }
        }
    }
}

/// Wakes the bench when a frame of schema [`LAST`] arrives. Frames keep
/// their order, so that frame is the run's last; the receiver's counters
/// then tell whether any went missing. No per-frame atomic: the baseline's
/// reader counts in a local too.
struct LastFrame {
    done: Notify,
}

/// The schema of a run's last frame.
const LAST: u16 = 2;

impl RemoteMessageSink for LastFrame {
    fn on_gossip(&self, _: NodeId, pdu: GossipPdu) {
        if matches!(pdu, GossipPdu::Opaque { schema: LAST, .. }) {
            self.done.notify_one();
        }
        std::hint::black_box(&pdu);
    }
    fn on_tell(&self, _: NodeId, tell: RemoteTell) {
        std::hint::black_box(&tell);
    }
}

async fn tcp_ours(size: usize, n: u64) -> f64 {
    let cluster = ClusterId(1);
    let sink = Arc::new(LastFrame {
        done: Notify::new(),
    });
    let a = TcpTransport::bind(TcpTransportConfig::new(cluster, NodeId(0)), Counter::new())
        .await
        .expect("bind");
    let b = TcpTransport::bind(TcpTransportConfig::new(cluster, NodeId(1)), sink.clone())
        .await
        .expect("bind");
    a.add_peer(NodeId(1), b.local_addr()).expect("add");
    let (f, last) = (frame(size), frame_of(size, LAST));
    // Warm up: the connection is up once one frame is through.
    send_n(&a, NodeId(1), &last, 1).await;
    sink.done.notified().await;
    let start = Instant::now();
    send_n(&a, NodeId(1), &f, n - 1).await;
    send_n(&a, NodeId(1), &last, 1).await;
    tokio::time::timeout(Duration::from_secs(120), sink.done.notified())
        .await
        .expect("the last frame never arrived");
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let got = b.stats().peer(NodeId(0)).frames_received;
    assert_eq!(got, n + 1, "frames lost in the bench");
    a.shutdown().await;
    b.shutdown().await;
    rate
}

async fn tcp_baseline(size: usize, n: u64) -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let reader = tokio::spawn(async move {
        let (s, _) = listener.accept().await.expect("accept");
        s.set_nodelay(true).expect("nodelay");
        let mut r = BufReader::with_capacity(64 << 10, s);
        let mut buf = vec![0u8; 64 << 10];
        let mut got = 0u64;
        while got < n + 1 {
            let len = r.read_u32().await.expect("read length") as usize;
            r.read_exact(&mut buf[..len]).await.expect("read payload");
            std::hint::black_box(&buf[..len]);
            got += 1;
        }
    });
    let s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let mut w = BufWriter::with_capacity(64 << 10, s);
    let payload = vec![0x5a; size];
    // The first frame stands for our warm-up frame: not timed.
    w.write_u32(size as u32).await.expect("write");
    w.write_all(&payload).await.expect("write");
    w.flush().await.expect("flush");
    let start = Instant::now();
    for _ in 0..n {
        w.write_u32(size as u32).await.expect("write");
        w.write_all(&payload).await.expect("write");
    }
    w.flush().await.expect("flush");
    reader.await.expect("reader");
    n as f64 / start.elapsed().as_secs_f64()
}

async fn inproc_ours(n: u64) -> f64 {
    let net = InProcessNetwork::new(2);
    let counter = Counter::new();
    let a = net.register(NodeId(0), Counter::new()).expect("register");
    let _b = net.register(NodeId(1), counter.clone()).expect("register");
    let f = frame(64);
    counter.expect(n);
    let done = counter.done.notified();
    let start = Instant::now();
    send_n(&a, NodeId(1), &f, n).await;
    done.await;
    n as f64 / start.elapsed().as_secs_f64()
}

async fn inproc_baseline(n: u64) -> f64 {
    let (tx, mut rx) = mpsc::channel::<(NodeId, ClusterFrame)>(4096);
    let counter = Counter::new();
    counter.expect(n);
    let c = counter.clone();
    let receiver = tokio::spawn(async move {
        while let Some((from, f)) = rx.recv().await {
            match f {
                ClusterFrame::Gossip(p) => c.on_gossip(from, p),
                ClusterFrame::Tell(t) => c.on_tell(from, t),
                _ => {}
            }
        }
    });
    let f = frame(64);
    let start = Instant::now();
    for _ in 0..n {
        let mut item = (NodeId(0), f.clone());
        loop {
            match tx.try_send(item) {
                Ok(()) => break,
                Err(mpsc::error::TrySendError::Full(back)) => {
                    item = back;
                    tokio::task::yield_now().await;
                }
                Err(e) => panic!("send: {e}"),
            }
        }
    }
    drop(tx);
    receiver.await.expect("receiver");
    let rate = n as f64 / start.elapsed().as_secs_f64();
    assert_eq!(counter.got.load(Ordering::Relaxed), n);
    rate
}
