//! A small cluster of either transport, driven the same way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use multinode_gossip::{
    GossipTransport, InProcessConfig, InProcessNetwork, InProcessTransport, SendError,
    TcpTransport, TcpTransportConfig,
};
use multinode_wire::{
    ClusterFrame, ClusterId, GossipPdu, Hello, MessageCodec, NodeId, PROTOCOL_VERSION, RemoteTell,
    Session,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Encoder, Framed};

use crate::recording::{Inbound, RecordingSink};

/// Long enough for any honest wait on a loaded 2-core machine.
pub(crate) const DEADLINE: Duration = Duration::from_secs(20);

pub(crate) const CLUSTER: ClusterId = ClusterId(0x9055);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    InProcess,
    Tcp,
}

pub(crate) const KINDS: [Kind; 2] = [Kind::InProcess, Kind::Tcp];

pub(crate) enum Handle {
    InProcess(InProcessTransport),
    Tcp(TcpTransport),
}

impl Handle {
    pub(crate) fn transport(&self) -> &dyn GossipTransport {
        match self {
            Handle::InProcess(t) => t,
            Handle::Tcp(t) => t,
        }
    }

    pub(crate) fn incarnation(&self) -> u64 {
        match self {
            Handle::InProcess(t) => t.incarnation(),
            Handle::Tcp(t) => t.incarnation(),
        }
    }

    pub(crate) async fn shutdown(&self) {
        match self {
            Handle::InProcess(t) => t.shutdown().await,
            Handle::Tcp(t) => t.shutdown().await,
        }
    }
}

pub(crate) struct Node {
    pub(crate) sink: Arc<RecordingSink>,
    pub(crate) handle: Handle,
    pub(crate) addr: Option<SocketAddr>,
}

impl Node {
    pub(crate) fn t(&self) -> &dyn GossipTransport {
        self.handle.transport()
    }
}

/// Settings both transports share in a test.
#[derive(Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) max_frame: usize,
    pub(crate) queue_frames: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_frame: 1 << 20,
            queue_frames: 4096,
        }
    }
}

pub(crate) struct Cluster {
    pub(crate) kind: Kind,
    pub(crate) settings: Settings,
    net: Option<InProcessNetwork>,
    pub(crate) nodes: Vec<Node>,
}

pub(crate) fn tcp_config(id: u64, s: Settings) -> TcpTransportConfig {
    let mut c = TcpTransportConfig::new(CLUSTER, NodeId(id));
    c.max_frame = s.max_frame;
    c.queue_frames = s.queue_frames;
    c.backoff_min = Duration::from_millis(5);
    c.backoff_max = Duration::from_millis(100);
    c
}

impl Cluster {
    pub(crate) async fn start(kind: Kind, n: usize, settings: Settings) -> Self {
        let mut c = Cluster {
            kind,
            settings,
            net: None,
            nodes: Vec::new(),
        };
        if kind == Kind::InProcess {
            let mut config = InProcessConfig::default();
            config.max_frame = settings.max_frame;
            config.queue_frames = settings.queue_frames;
            c.net = Some(InProcessNetwork::with_config(n, config));
        }
        for i in 0..n {
            let node = c.start_node(i, None).await;
            c.nodes.push(node);
        }
        c.connect_all();
        c
    }

    async fn start_node(&self, i: usize, addr: Option<SocketAddr>) -> Node {
        let sink = RecordingSink::new();
        match self.kind {
            Kind::InProcess => {
                let net = self.net.as_ref().expect("network");
                let t = net
                    .register(NodeId(i as u64), sink.clone())
                    .expect("register");
                Node {
                    sink,
                    handle: Handle::InProcess(t),
                    addr: None,
                }
            }
            Kind::Tcp => {
                let mut config = tcp_config(i as u64, self.settings);
                if let Some(addr) = addr {
                    config.bind = addr;
                }
                let t = TcpTransport::bind(config, sink.clone())
                    .await
                    .expect("bind");
                let addr = Some(t.local_addr());
                Node {
                    sink,
                    handle: Handle::Tcp(t),
                    addr,
                }
            }
        }
    }

    fn connect_all(&self) {
        if self.kind != Kind::Tcp {
            return;
        }
        for (i, a) in self.nodes.iter().enumerate() {
            for (j, b) in self.nodes.iter().enumerate() {
                if i != j {
                    if let Handle::Tcp(t) = &a.handle {
                        t.add_peer(NodeId(j as u64), b.addr.expect("addr"))
                            .expect("add peer");
                    }
                }
            }
        }
    }

    /// Shuts node `i` down and starts it again under the same id (and, on
    /// TCP, the same port): a restart with a new incarnation.
    pub(crate) async fn restart(&mut self, i: usize) {
        self.nodes[i].handle.shutdown().await;
        let addr = self.nodes[i].addr;
        let node = self.start_node(i, addr).await;
        self.nodes[i] = node;
        if let Handle::Tcp(t) = &self.nodes[i].handle {
            for (j, b) in self.nodes.iter().enumerate() {
                if j != i {
                    t.add_peer(NodeId(j as u64), b.addr.expect("addr"))
                        .expect("add peer");
                }
            }
        }
    }

    pub(crate) async fn shutdown(&self) {
        for n in &self.nodes {
            n.handle.shutdown().await;
        }
    }
}

pub(crate) fn pdu(i: u64) -> ClusterFrame {
    ClusterFrame::Gossip(GossipPdu::Opaque {
        schema: 1,
        body: Bytes::from(i.to_be_bytes().to_vec()),
    })
}

pub(crate) fn tell(i: u64) -> ClusterFrame {
    ClusterFrame::Tell(RemoteTell {
        target_path: "/user/counter".into(),
        manifest: "u64".into(),
        payload: Bytes::from(i.to_be_bytes().to_vec()),
        sender_path: Some(format!("/user/{i}")),
    })
}

/// The sequence number a test frame carries.
pub(crate) fn seq_of(e: &Inbound) -> Option<u64> {
    let bytes = match e {
        Inbound::Gossip {
            pdu: GossipPdu::Opaque { body, .. },
            ..
        } => body,
        Inbound::Tell { tell, .. } => &tell.payload,
        _ => return None,
    };
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
}

/// Sends, retrying while the peer's queue is full (each refusal is counted
/// by the transport); returns how many refusals there were.
pub(crate) async fn send_retrying(t: &dyn GossipTransport, to: NodeId, frame: ClusterFrame) -> u64 {
    let mut refused = 0;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match t.send(to, &frame) {
            Ok(()) => return refused,
            Err(SendError::QueueFull { .. }) if tokio::time::Instant::now() < deadline => {
                refused += 1;
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            Err(e) => panic!("send to {to}: {e}"),
        }
    }
}

/// Polls `cond` until it holds or the deadline passes.
pub(crate) async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

pub(crate) fn handshake_bytes(cluster: ClusterId, node: NodeId, version: u16) -> BytesMut {
    let mut buf = BytesMut::new();
    let mut hello = Hello::new(cluster, node);
    hello.protocol_version = version;
    MessageCodec::<Hello>::new()
        .encode(hello, &mut buf)
        .expect("encode hello");
    MessageCodec::<Session>::new()
        .encode(
            Session {
                incarnation: 1,
                wall_ms: wall_ms(),
                challenge: None,
            },
            &mut buf,
        )
        .expect("encode session");
    buf
}

pub(crate) fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Connects as node `node` and completes the handshake by hand.
pub(crate) async fn raw_peer(addr: SocketAddr, node: NodeId) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(&handshake_bytes(CLUSTER, node, PROTOCOL_VERSION))
        .await
        .expect("write handshake");
    let mut f = Framed::new(s, MessageCodec::<Hello>::new());
    f.next().await.expect("their hello").expect("valid hello");
    let mut f = f.map_codec(|_| MessageCodec::<Session>::new());
    f.next()
        .await
        .expect("their session")
        .expect("valid session");
    let parts = f.into_parts();
    assert!(parts.read_buf.is_empty());
    parts.io
}

/// Whether the other end closed `s` (EOF or reset) before the deadline.
pub(crate) async fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// A cluster frame as it goes on the wire.
pub(crate) fn frame_bytes(frame: &ClusterFrame) -> BytesMut {
    let mut buf = BytesMut::new();
    MessageCodec::<ClusterFrame>::new()
        .encode(frame.clone(), &mut buf)
        .expect("encode");
    buf
}
