//! Helpers shared by the mesh tests.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use multinode_mesh::{Channel, InMemoryTransport, TcpChannel, TcpChannelListener, TcpConfig};
use multinode_wire::{ClusterId, Hello, NodeId};

pub(crate) use multinode_testkit::{proptest_config, seed};

/// Long enough for anything that should happen now; a test that waits this
/// long has failed.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

/// Waits for a thread that should finish promptly; fails the test if it
/// does not finish within [`PATIENCE`].
pub(crate) fn join_soon<T>(handle: JoinHandle<T>, what: &str) -> T {
    let deadline = Instant::now() + PATIENCE;
    while !handle.is_finished() {
        assert!(
            Instant::now() < deadline,
            "{what}: still blocked after {PATIENCE:?}"
        );
        std::thread::yield_now();
    }
    handle.join().expect("thread panicked")
}

/// A connected pair of channels, as the conformance suite sees them.
pub(crate) type Pair = (Box<dyn Channel>, Box<dyn Channel>);

pub(crate) fn memory_pair() -> Pair {
    let (a, b) = InMemoryTransport::new_pair();
    (Box::new(a), Box::new(b))
}

pub(crate) fn tcp_pair_with(config: TcpConfig) -> (TcpChannel, TcpChannel) {
    let listener = TcpChannelListener::bind(
        "127.0.0.1:0",
        Hello::new(ClusterId(9), NodeId(1)),
        config.clone(),
    )
    .expect("bind");
    let addr = listener.local_addr().expect("address");
    let accepter = std::thread::spawn(move || listener.accept());
    let a = TcpChannel::connect(
        addr,
        Hello::new(ClusterId(9), NodeId(0)),
        Some(NodeId(1)),
        config,
    )
    .expect("connect");
    let b = join_soon(accepter, "accept").expect("accept");
    (a, b)
}

pub(crate) fn tcp_pair() -> Pair {
    let (a, b) = tcp_pair_with(TcpConfig::default());
    (Box::new(a), Box::new(b))
}

/// Receives one message, failing the test if none comes within
/// [`PATIENCE`].
pub(crate) fn recv(ch: &dyn Channel) -> Vec<u8> {
    ch.receive(PATIENCE)
        .expect("receive")
        .expect("a message within the patience")
}

/// Node `i` of a group.
pub(crate) fn id(i: usize) -> NodeId {
    NodeId(i as u64)
}

/// Nodes `v` of a group.
pub(crate) fn ids(v: &[usize]) -> Vec<NodeId> {
    v.iter().map(|&i| id(i)).collect()
}
