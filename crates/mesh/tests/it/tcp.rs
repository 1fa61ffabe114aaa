//! The TCP channel beyond the conformance suite: the handshake, a real
//! SIGKILL of the peer process, partial frames, hostile peers, and full
//! buffers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use multinode_mesh::{Channel, ChannelError, TcpChannel, TcpChannelListener, TcpConfig};
use multinode_wire::{ClusterId, HandshakeField, Hello, NodeId, WireError};

use crate::support::{PATIENCE, join_soon, recv, tcp_pair_with};

const BRIEF: Duration = Duration::from_millis(50);

fn listener(cluster: u64) -> TcpChannelListener {
    TcpChannelListener::bind(
        "127.0.0.1:0",
        Hello::new(ClusterId(cluster), NodeId(1)),
        TcpConfig::default(),
    )
    .expect("bind")
}

fn handshake_field(r: Result<TcpChannel, ChannelError>) -> HandshakeField {
    match r {
        Err(ChannelError::Wire(WireError::Handshake { field, .. })) => field,
        other => panic!("expected a handshake error, got {other:?}"),
    }
}

#[test]
fn handshake_refuses_another_cluster_or_node_and_the_listener_carries_on() {
    let l = listener(9);
    let addr = l.local_addr().unwrap();
    let l = std::sync::Arc::new(l);
    let server = {
        let l = std::sync::Arc::clone(&l);
        std::thread::spawn(move || (l.accept(), l.accept(), l.accept()))
    };
    let cfg = TcpConfig::default();
    let other_cluster =
        TcpChannel::connect(addr, Hello::new(ClusterId(8), NodeId(0)), None, cfg.clone());
    assert_eq!(handshake_field(other_cluster), HandshakeField::ClusterId);
    let wrong_node = TcpChannel::connect(
        addr,
        Hello::new(ClusterId(9), NodeId(0)),
        Some(NodeId(2)),
        cfg.clone(),
    );
    assert_eq!(handshake_field(wrong_node), HandshakeField::NodeId);
    let good = TcpChannel::connect(
        addr,
        Hello::new(ClusterId(9), NodeId(0)),
        Some(NodeId(1)),
        cfg,
    )
    .expect("a matching peer connects");
    let (first, _second, third) = join_soon(server, "accepts");
    assert_eq!(handshake_field(first), HandshakeField::ClusterId);
    let third = third.expect("the listener survived the bad peers");
    assert_eq!(
        (third.peer_node(), good.peer_node()),
        (NodeId(0), NodeId(1))
    );
    good.send(b"hello").unwrap();
    assert_eq!(recv(&third), b"hello");
}

/// A child process, killed and reaped whatever happens to the test.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_sigkilled_peer_is_a_crash_after_its_last_message() {
    let l = listener(9);
    let port = l.local_addr().unwrap().port();
    let accept = std::thread::spawn(move || l.accept());
    // A peer in bash: Hello (cluster 9, node 5), read ours, one message,
    // then wait to be killed.
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{port}
         printf '\\x00\\x00\\x00\\x07MNOD\\x04\\x09\\x05' >&3
         head -c 11 <&3 >/dev/null
         printf '\\x00\\x00\\x00\\x03\\x00hi' >&3
         echo ready
         exec sleep 600"
    );
    let mut child = Reaped(
        Command::new("bash")
            .args(["-c", &script])
            .stdout(Stdio::piped())
            .spawn()
            .expect("bash"),
    );
    let ch = join_soon(accept, "accept").expect("handshake with the bash peer");
    assert_eq!(ch.peer_node(), NodeId(5));
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    assert_eq!(recv(&ch), b"hi");
    // SIGKILL, by the PID we started.
    child.0.kill().expect("kill");
    child.0.wait().expect("reap");
    assert!(matches!(
        ch.receive(PATIENCE),
        Err(ChannelError::PeerCrashed(NodeId(5)))
    ));
    assert!(!ch.is_open());
    assert!(matches!(
        ch.send(b"x"),
        Err(ChannelError::PeerCrashed(NodeId(5)))
    ));
}

/// The raw side of a channel: a plain socket that has shaken hands.
fn raw_peer() -> (TcpChannel, TcpStream) {
    let raw = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = raw.local_addr().unwrap();
    let connect = std::thread::spawn(move || {
        TcpChannel::connect(
            addr,
            Hello::new(ClusterId(9), NodeId(0)),
            None,
            TcpConfig::default(),
        )
    });
    let (mut s, _) = raw.accept().unwrap();
    s.write_all(b"\x00\x00\x00\x07MNOD\x04\x09\x01").unwrap();
    let mut theirs = [0u8; 11];
    s.read_exact(&mut theirs).unwrap();
    assert_eq!(&theirs, b"\x00\x00\x00\x07MNOD\x04\x09\x00");
    (join_soon(connect, "connect").expect("handshake"), s)
}

#[test]
fn a_receive_timing_out_mid_frame_keeps_the_stream_in_sync() {
    let (ch, mut raw) = raw_peer();
    raw.write_all(b"\x00\x00\x00\x06\x00hel").unwrap();
    assert_eq!(ch.receive(BRIEF).expect("a timeout is not an error"), None);
    raw.write_all(b"lo\x00\x00\x00\x03\x00ok").unwrap();
    assert_eq!(recv(&ch), b"hello");
    assert_eq!(recv(&ch), b"ok");
}

#[test]
fn a_hostile_peer_breaks_only_its_own_connection() {
    // A frame claiming 4 GiB: refused from its header, nothing allocated.
    let (ch, mut raw) = raw_peer();
    raw.write_all(b"\xff\xff\xff\xff\x00").unwrap();
    match ch.receive(PATIENCE) {
        Err(ChannelError::Wire(WireError::FrameTooLarge { len, .. })) => {
            assert_eq!(len, u64::from(u32::MAX));
        }
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    assert!(!ch.is_open());
    assert!(matches!(ch.send(b"x"), Err(ChannelError::Wire(_))));
    assert!(matches!(ch.receive(BRIEF), Err(ChannelError::Wire(_))));

    // An unknown frame tag.
    let (ch2, mut raw2) = raw_peer();
    raw2.write_all(b"\x00\x00\x00\x02\x07x").unwrap();
    assert!(matches!(
        ch2.receive(PATIENCE),
        Err(ChannelError::Wire(WireError::Decode { .. }))
    ));

    // Another channel, untouched.
    let (a, b) = tcp_pair_with(TcpConfig::default());
    a.send(b"fine").unwrap();
    assert_eq!(recv(&b), b"fine");
}

#[test]
fn a_peer_that_stops_reading_fills_the_buffer_then_breaks_the_connection() {
    let config = TcpConfig::default()
        .send_buffer(64 * 1024)
        .write_timeout(Duration::from_millis(200));
    let (a, _b) = tcp_pair_with(config);
    let msg = [0u8; 1024];
    let deadline = std::time::Instant::now() + PATIENCE;
    let mut full = 0u64;
    // The buffer fills (QueueFull), the kernel's buffers fill, the writer
    // makes no progress for the write timeout: the connection breaks.
    let broken = loop {
        match a.send(&msg) {
            Ok(()) => {}
            Err(ChannelError::QueueFull { capacity }) => {
                assert_eq!(capacity, 64 * 1024);
                full += 1;
                std::thread::yield_now();
            }
            Err(e) => break e,
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the writer never gave up"
        );
    };
    assert!(full > 0, "the send buffer never filled");
    match &broken {
        ChannelError::Wire(WireError::Io(e)) => {
            assert!(e.to_string().contains("write failed"), "{e}");
        }
        other => panic!("expected a broken connection, got {other:?}"),
    }
    assert!(!a.is_open());
    let closing = std::thread::spawn(move || a.close());
    join_soon(closing, "close after the writer gave up");
}

#[test]
fn close_never_hangs_on_a_peer_that_stops_reading() {
    let config = TcpConfig::default()
        .send_buffer(64 * 1024 * 1024)
        .write_timeout(Duration::from_millis(200));
    let (a, _b) = tcp_pair_with(config);
    // Far more than loopback socket buffers hold: the writer is blocked
    // when close comes.
    let msg = vec![0u8; 1024 * 1024];
    for _ in 0..48 {
        a.send(&msg).expect("the buffer takes 48 MiB");
    }
    let closing = std::thread::spawn(move || a.close());
    join_soon(closing, "close with a wedged peer");
}
