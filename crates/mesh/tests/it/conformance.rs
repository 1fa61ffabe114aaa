//! One conformance suite, run against the in-memory channel and the TCP
//! channel alike: the semantics `Channel`'s documentation promises.

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use multinode_mesh::{Channel, ChannelError};

use crate::support::{Pair, join_soon, memory_pair, recv, tcp_pair};

/// Every message arrives once, in order, whatever its size (empty too),
/// and the two directions are independent.
fn ordered_exactly_once(pair: fn() -> Pair) {
    let (a, b) = pair();
    let msgs: Vec<Vec<u8>> = (0..300u32)
        .map(|i| {
            let len = (i as usize * 37) % 3000;
            (0..len).map(|j| (i as usize + j) as u8).collect()
        })
        .collect();
    for m in &msgs {
        a.send(m).expect("send");
    }
    b.send(b"back").expect("send back");
    for m in &msgs {
        assert_eq!(&recv(&*b), m);
    }
    assert_eq!(recv(&*a), b"back");
    assert_eq!(b.receive(Duration::from_millis(20)).expect("receive"), None);
    assert_eq!(a.receive(Duration::ZERO).expect("receive"), None);
    assert!(a.is_open() && b.is_open());
}

/// Close: this end fails at once; the peer drains what was sent, then
/// learns of the close; both report closed; close is idempotent.
fn close_semantics(pair: fn() -> Pair) {
    let (a, b) = pair();
    for i in 0..10u8 {
        a.send(&[i; 100]).expect("send");
    }
    a.close();
    a.close();
    assert!(!a.is_open());
    assert!(matches!(a.send(b"x"), Err(ChannelError::Closed)));
    assert!(matches!(
        a.receive(Duration::from_millis(10)),
        Err(ChannelError::Closed)
    ));
    for i in 0..10u8 {
        assert_eq!(recv(&*b), vec![i; 100], "sent before the close");
    }
    assert!(matches!(
        b.receive(Duration::from_secs(5)),
        Err(ChannelError::PeerClosed)
    ));
    assert!(matches!(b.send(b"x"), Err(ChannelError::PeerClosed)));
    assert!(matches!(
        b.receive(Duration::ZERO),
        Err(ChannelError::PeerClosed)
    ));
    assert!(!b.is_open());
}

/// A close wakes a receive blocked on the same end and one blocked on the
/// other end, long before their timeouts.
fn close_wakes_blocked_receivers(pair: fn() -> Pair) {
    let (a, b) = pair();
    let (a, b): (Arc<dyn Channel>, Arc<dyn Channel>) = (a.into(), b.into());
    let hour = Duration::from_secs(3600);
    let on_a = {
        let a = Arc::clone(&a);
        thread::spawn(move || a.receive(hour))
    };
    let on_b = {
        let b = Arc::clone(&b);
        thread::spawn(move || b.receive(hour))
    };
    // Both are (about to be) blocked; a message proves b's is live.
    a.send(b"wake").expect("send");
    assert_eq!(
        join_soon(on_b, "b's receive").expect("receive"),
        Some(b"wake".to_vec())
    );
    let on_b = {
        let b = Arc::clone(&b);
        thread::spawn(move || b.receive(hour))
    };
    a.close();
    assert!(matches!(
        join_soon(on_a, "a's own receive"),
        Err(ChannelError::Closed)
    ));
    assert!(matches!(
        join_soon(on_b, "the peer's receive"),
        Err(ChannelError::PeerClosed)
    ));
}

/// A receive blocked on one end never blocks a send on that end.
fn blocked_receive_never_blocks_send(pair: fn() -> Pair) {
    let (a, b) = pair();
    let (a, b): (Arc<dyn Channel>, Arc<dyn Channel>) = (a.into(), b.into());
    let blocked = {
        let a = Arc::clone(&a);
        thread::spawn(move || a.receive(Duration::from_secs(3600)))
    };
    let sender = {
        let a = Arc::clone(&a);
        thread::spawn(move || {
            for i in 0..100u8 {
                a.send(&[i]).expect("send while a receive is blocked");
            }
        })
    };
    join_soon(sender, "sending beside a blocked receive");
    for i in 0..100u8 {
        assert_eq!(recv(&*b), [i]);
    }
    b.send(b"reply").expect("send");
    assert_eq!(
        join_soon(blocked, "the blocked receive").expect("receive"),
        Some(b"reply".to_vec())
    );
}

/// Senders on several threads: everything arrives, each thread's messages
/// in that thread's order.
fn concurrent_senders_keep_their_order(pair: fn() -> Pair) {
    let (a, b) = pair();
    let a: Arc<dyn Channel> = a.into();
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let a = Arc::clone(&a);
            thread::spawn(move || {
                for i in 0..200u16 {
                    let mut m = vec![t];
                    m.extend_from_slice(&i.to_be_bytes());
                    a.send(&m).expect("send");
                }
            })
        })
        .collect();
    let mut next = [0u16; 4];
    for _ in 0..800 {
        let m = recv(&*b);
        let (t, i) = (m[0] as usize, u16::from_be_bytes([m[1], m[2]]));
        assert_eq!(i, next[t], "thread {t}'s messages out of order");
        next[t] += 1;
    }
    for t in threads {
        join_soon(t, "sender");
    }
    assert_eq!(next, [200; 4]);
}

/// A message over the maximum is refused with `TooLarge`, nothing is sent,
/// and the channel stays usable.
fn too_large_is_refused_and_harmless(pair: fn() -> Pair) {
    let (a, b) = pair();
    let huge = vec![0u8; multinode_wire::DEFAULT_MAX_FRAME];
    match a.send(&huge) {
        Err(ChannelError::TooLarge { len, max }) => {
            assert_eq!(len, huge.len());
            assert!(max < len);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    a.send(b"after").expect("send");
    assert_eq!(recv(&*b), b"after");
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[test] fn $name() { super::$name(super::memory_pair) })*
        }
        mod tcp {
            $(#[test] fn $name() { super::$name(super::tcp_pair) })*
        }
    };
}

conformance!(
    ordered_exactly_once,
    close_semantics,
    close_wakes_blocked_receivers,
    blocked_receive_never_blocks_send,
    concurrent_senders_keep_their_order,
    too_large_is_refused_and_harmless,
);
