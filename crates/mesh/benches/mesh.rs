//! Mesh throughput, each figure beside its baseline in the same run:
//! - one in-memory link, 64-byte messages, a producer thread and a consumer
//!   thread, against crossbeam-channel `bounded(1024)` carrying the same
//!   `Vec<u8>` messages;
//! - one TCP channel on loopback, 1 KiB messages, against a plainly written
//!   framed `std::net` socket (buffered writer, `[u32 length][payload]`).

use std::hint::black_box;
use std::thread;
use std::time::{Duration, Instant};

use multinode_benchkit::{Better, interleaved, quick, record};
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};

use multinode_mesh::{
    Channel, ChannelError, InMemoryGroup, MeshConfig, TcpChannel, TcpChannelListener, TcpConfig,
};
use multinode_wire::{ClusterId, Hello, NodeId};

fn main() {
    let quick = quick();
    pin(0);
    in_memory(quick);
    tcp(quick);
}

/// Sends until the queue takes the message (the mesh's full-queue policy
/// is to refuse, not to block).
fn send_all(ch: &impl Channel, msg: &[u8]) {
    loop {
        match ch.send(msg) {
            Ok(()) => return,
            Err(ChannelError::QueueFull { .. }) => thread::yield_now(),
            Err(e) => panic!("send: {e}"),
        }
    }
}

/// Pins the calling thread to one CPU (Linux), so the producer and the
/// consumer of both sides of a comparison always run on different cores:
/// left to the scheduler they sometimes share one, which changes the
/// regime (and the absolute rate) between repetitions.
#[allow(unsafe_code, reason = "sched_setaffinity has no safe std wrapper")]
fn pin(cpu: usize) {
    #[cfg(target_os = "linux")]
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within
    // it; sched_setaffinity reads `size_of::<cpu_set_t>()` bytes of it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu % 2.max(num_cpus()), &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cpu;
}

fn num_cpus() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

/// Sends `count` messages with `send` on this thread while a pinned
/// consumer thread receives them from `rx`; returns million messages a
/// second.
fn pump(count: usize, rx: impl Channel + 'static, mut send: impl FnMut()) -> f64 {
    let start = Instant::now();
    let consumer = thread::spawn(move || {
        pin(1);
        for _ in 0..count {
            let m = rx
                .receive(Duration::from_secs(10))
                .unwrap()
                .expect("message");
            black_box(m);
        }
    });
    for _ in 0..count {
        send();
    }
    consumer.join().unwrap();
    count as f64 / start.elapsed().as_secs_f64() / 1e6
}

fn in_memory(quick: bool) {
    let count: usize = if quick { 200_000 } else { 2_000_000 };
    let reps = if quick { 3 } else { 7 };
    let msg = [7u8; 64];

    let ours = || {
        let group = InMemoryGroup::with_config(2, MeshConfig::default().capacity(1024));
        let (a, b) = (
            group.channel(NodeId(0), NodeId(1)).unwrap(),
            group.channel(NodeId(1), NodeId(0)).unwrap(),
        );
        pump(count, b, || {
            a.send_timeout(&msg, Duration::from_secs(10)).unwrap();
        })
    };
    let baseline = || {
        let (tx, rx) = crossbeam_channel::bounded::<Vec<u8>>(1024);
        let start = Instant::now();
        let consumer = thread::spawn(move || {
            pin(1);
            for _ in 0..count {
                black_box(rx.recv().unwrap());
            }
        });
        for _ in 0..count {
            tx.send(msg.to_vec()).unwrap();
        }
        consumer.join().unwrap();
        count as f64 / start.elapsed().as_secs_f64() / 1e6
    };
    let (o, b) = interleaved(reps, ours, baseline);
    record(
        "mesh",
        "in_memory_64b",
        "Mmsg/s",
        o,
        b,
        "crossbeam-channel bounded(1024), Vec<u8>",
        Better::Higher,
        Some(0.9),
    );
}

fn tcp(quick: bool) {
    let count: usize = if quick { 100_000 } else { 1_000_000 };
    let reps = if quick { 3 } else { 7 };
    let msg = [9u8; 1024];

    let ours = || {
        let listener = TcpChannelListener::bind(
            "127.0.0.1:0",
            Hello::new(ClusterId(1), NodeId(1)),
            TcpConfig::default(),
        )
        .unwrap();
        let addr = listener.local_addr().unwrap();
        let accepter = thread::spawn(move || listener.accept().unwrap());
        let a = TcpChannel::connect(
            addr,
            Hello::new(ClusterId(1), NodeId(0)),
            Some(NodeId(1)),
            TcpConfig::default(),
        )
        .unwrap();
        let b = accepter.join().unwrap();
        pump(count, b, || send_all(&a, &msg))
    };
    let baseline = || {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let a = TcpStream::connect(addr).unwrap();
        let (b, _) = listener.accept().unwrap();
        a.set_nodelay(true).unwrap();
        let start = Instant::now();
        let consumer = thread::spawn(move || {
            pin(1);
            let mut r = BufReader::new(b);
            let mut len = [0u8; 4];
            for _ in 0..count {
                r.read_exact(&mut len).unwrap();
                let mut m = vec![0u8; u32::from_be_bytes(len) as usize];
                r.read_exact(&mut m).unwrap();
                black_box(m);
            }
        });
        let mut w = BufWriter::new(a);
        for _ in 0..count {
            w.write_all(&(msg.len() as u32).to_be_bytes()).unwrap();
            w.write_all(&msg).unwrap();
        }
        w.flush().unwrap();
        consumer.join().unwrap();
        count as f64 / start.elapsed().as_secs_f64() / 1e6
    };
    let (o, b) = interleaved(reps, ours, baseline);
    record(
        "mesh",
        "tcp_1kib",
        "Mmsg/s",
        o,
        b,
        "framed std::net socket, BufWriter/BufReader",
        Better::Higher,
        Some(0.7),
    );
}
