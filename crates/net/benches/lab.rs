//! What the lab costs, each figure beside its baseline in the same run:
//! - gossip TCP throughput (1 KiB frames, one sender to one receiver)
//!   between two lab hosts, against the same transport between two
//!   loopback sockets (the veth pair and the bridge are the difference);
//! - a barrier round at N = 16, every client on its own host and the
//!   controller on the switch, against the same on loopback;
//! - a lab's set-up and tear-down at 16 and 64 hosts, beside starting and
//!   reaping as many bare processes (`true`).
//!
//! Each side of the throughput pair runs on a thread of its own with a
//! current-thread runtime, inside its host's network namespace (or not,
//! for loopback), so both figures run the same code on the same threads.

fn main() {
    #[cfg(target_os = "linux")]
    linux::main();
}

/// The lab is Linux's: elsewhere there is nothing to measure.
#[cfg(target_os = "linux")]
mod linux {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use std::sync::Arc;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use multinode_barrier::{BlockingBarrierNode, Config, Controller};
    use multinode_benchkit::{Better, interleaved, median, quick, record};
    use multinode_gossip::{
        GossipTransport, RemoteMessageSink, SendError, TcpTransport, TcpTransportConfig,
    };
    use multinode_net::Lab;
    use multinode_wire::{ClusterFrame, ClusterId, GossipPdu, NodeId, RemoteTell};
    use tokio::sync::Notify;

    pub(super) fn main() {
        let quick = quick();
        let reps = if quick { 3 } else { 11 };
        let lab = Lab::new(16).expect("a lab (needs root)");

        let frames = if quick { 20_000 } else { 100_000 };
        let (ours, base) =
            interleaved(reps, || gossip(frames, Some(&lab)), || gossip(frames, None));
        record(
            "net",
            "gossip_tcp_1kib_lab",
            "frames/s",
            ours,
            base,
            "the same gossip transport between two loopback sockets",
            Better::Higher,
            Some(0.8),
        );

        let rounds = if quick { 100 } else { 400 };
        let (ours, base) = interleaved(
            if quick { 2 } else { 5 },
            || barrier_round(16, rounds, Some(&lab)),
            || barrier_round(16, rounds, None),
        );
        record(
            "net",
            "barrier_round_n16_lab",
            "us",
            ours,
            base,
            "the same controller and clients on loopback",
            Better::Lower,
            Some(1.3),
        );
        drop(lab);

        for hosts in [16u32, 64] {
            let (ours, base) = interleaved(
                if quick { 2 } else { 5 },
                || lab_lifetime(hosts),
                || bare_processes(hosts),
            );
            record(
                "net",
                &format!("setup_teardown_{hosts}_hosts"),
                "ms",
                ours,
                base,
                &format!("starting and reaping {hosts} bare processes"),
                Better::Lower,
                None,
            );
        }
    }

    /// Runs `f` inside host `node` of `lab`, or here when there is no lab.
    fn on<T: Send>(lab: Option<&Lab>, node: u64, f: impl FnOnce() -> T + Send) -> T {
        match lab {
            Some(lab) => lab.within(NodeId(node), f).expect("enter the host"),
            None => f(),
        }
    }

    fn addr(lab: Option<&Lab>, node: u64) -> IpAddr {
        match lab {
            Some(lab) => IpAddr::V4(lab.addr(NodeId(node)).expect("host")),
            None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// Wakes the sender when the frame of schema [`LAST`] arrives (frames keep
    /// their order, so it is the run's last).
    struct LastFrame(Notify);

    const LAST: u16 = 2;

    impl RemoteMessageSink for LastFrame {
        fn on_gossip(&self, _: NodeId, pdu: GossipPdu) {
            if matches!(pdu, GossipPdu::Opaque { schema: LAST, .. }) {
                self.0.notify_one();
            }
            std::hint::black_box(pdu);
        }
        fn on_tell(&self, _: NodeId, tell: RemoteTell) {
            std::hint::black_box(tell);
        }
    }

    /// A lab host binds a non-loopback address, which needs a cluster secret;
    /// loopback uses it too, so both sides shake hands alike (the secret costs
    /// only at connect).
    fn secret() -> multinode_wire::Secret {
        multinode_wire::Secret::new(*b"a benchmark cluster secret").expect("secret")
    }

    fn frame(schema: u16) -> ClusterFrame {
        ClusterFrame::Gossip(GossipPdu::Opaque {
            schema,
            body: Bytes::from(vec![0x5a; 1024]),
        })
    }

    async fn send_n(t: &TcpTransport, f: &ClusterFrame, n: u64) {
        for _ in 0..n {
            loop {
                match t.send(NodeId(1), f) {
                    Ok(()) => break,
                    Err(SendError::QueueFull { .. }) => t.ready(NodeId(1)).await,
                    Err(e) => panic!("send: {e}"),
                }
            }
        }
    }

    /// Frames per second from node 0 to node 1.
    fn gossip(n: u64, lab: Option<&Lab>) -> f64 {
        let sink = Arc::new(LastFrame(Notify::new()));
        let stop = Arc::new(Notify::new());
        let (at_tx, at_rx) = mpsc::channel();
        std::thread::scope(|s| {
            let (sink2, stop2) = (Arc::clone(&sink), Arc::clone(&stop));
            s.spawn(move || {
                on(lab, 1, || {
                    runtime().block_on(async {
                        let mut c = TcpTransportConfig::new(ClusterId(1), NodeId(1));
                        c.bind = SocketAddr::new(addr(lab, 1), 0);
                        c.secret = Some(secret());
                        let b = TcpTransport::bind(c, sink2).await.expect("bind");
                        at_tx.send(b.local_addr()).expect("address");
                        stop2.notified().await;
                        b.shutdown().await;
                    })
                })
            });
            let to = at_rx.recv().expect("receiver address");
            on(lab, 0, || {
                runtime().block_on(async {
                    let mut c = TcpTransportConfig::new(ClusterId(1), NodeId(0));
                    c.bind = SocketAddr::new(addr(lab, 0), 0);
                    c.secret = Some(secret());
                    let a = TcpTransport::bind(c, Arc::new(LastFrame(Notify::new())))
                        .await
                        .expect("bind");
                    a.add_peer(NodeId(1), to).expect("add");
                    // Warm up: the connection is up once one frame is through.
                    send_n(&a, &frame(LAST), 1).await;
                    sink.0.notified().await;
                    let start = Instant::now();
                    send_n(&a, &frame(1), n - 1).await;
                    send_n(&a, &frame(LAST), 1).await;
                    tokio::time::timeout(Duration::from_secs(120), sink.0.notified())
                        .await
                        .expect("the last frame never arrived");
                    let rate = n as f64 / start.elapsed().as_secs_f64();
                    stop.notify_one();
                    a.shutdown().await;
                    rate
                })
            })
        })
    }

    /// The median barrier round, in µs, for `n` clients (one per host on a
    /// lab, the controller on the switch).
    fn barrier_round(n: u64, rounds: usize, lab: Option<&Lab>) -> f64 {
        let listener = match lab {
            Some(lab) => {
                let sw = lab.switch_addr();
                lab.within_switch(move || std::net::TcpListener::bind((sw, 0)))
                    .expect("switch")
                    .expect("bind")
            }
            None => std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind"),
        };
        let at = listener.local_addr().expect("address");
        listener.set_nonblocking(true).expect("nonblocking");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let mut cfg = Config::new(n as u32);
        cfg.timeout = Duration::from_secs(60);
        let controller = rt.block_on(async {
            let l = tokio::net::TcpListener::from_std(listener).expect("listener");
            Controller::start(l, cfg).expect("controller")
        });
        let nodes: Vec<BlockingBarrierNode> = (0..n)
            .map(|i| {
                on(lab, i, || {
                    BlockingBarrierNode::connect(at, Some(NodeId(i))).expect("connect")
                })
            })
            .collect();
        let start = Arc::new(std::sync::Barrier::new(n as usize));
        let mut samples = std::thread::scope(|s| {
            let handles: Vec<_> = nodes
                .into_iter()
                .map(|mut node| {
                    let start = Arc::clone(&start);
                    s.spawn(move || {
                        start.wait();
                        let mut stamps = Vec::with_capacity(rounds);
                        let mut last = Instant::now();
                        for r in 0..rounds {
                            node.barrier(&format!("r{r}"), None).expect("barrier");
                            let now = Instant::now();
                            stamps.push((now - last).as_secs_f64() * 1e6);
                            last = now;
                        }
                        stamps
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("client"))
                .next_back()
                .expect("one client at least")
        });
        rt.block_on(controller.shutdown());
        median(&mut samples[1..])
    }

    /// Milliseconds to build a lab of `hosts` hosts and tear it down.
    fn lab_lifetime(hosts: u32) -> f64 {
        let start = Instant::now();
        let lab = Lab::new(hosts).expect("lab");
        drop(lab);
        start.elapsed().as_secs_f64() * 1e3
    }

    /// Milliseconds to start `n` processes and reap them.
    fn bare_processes(n: u32) -> f64 {
        let start = Instant::now();
        let children: Vec<_> = (0..n)
            .map(|_| std::process::Command::new("true").spawn().expect("spawn"))
            .collect();
        for mut c in children {
            c.wait().expect("reap");
        }
        start.elapsed().as_secs_f64() * 1e3
    }
}
