use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use multinode_net::Lab;

use crate::hosts::{datagrams, n, udp};

#[test]
fn a_one_way_cut_stops_exactly_one_direction_and_counts_what_it_dropped() {
    let lab = Lab::new(3).unwrap();
    let (a, b, c) = (udp(&lab, n(0)), udp(&lab, n(1)), udp(&lab, n(2)));
    lab.cut(n(0), n(1)).unwrap();
    assert_eq!(datagrams(&a, &b, 20), 0, "0 → 1 is cut");
    assert_eq!(datagrams(&b, &a, 20), 20, "1 → 0 still flows");
    assert_eq!(datagrams(&a, &b, 20), 0, "answers from 0 are cut too");
    assert_eq!(datagrams(&a, &c, 20), 20, "0 → 2 is untouched");
    let k = lab.counters().unwrap();
    assert_eq!(k.links[&(n(0), n(1))].cut, 40, "{k:?}");
    assert_eq!(k.cut, 40, "{k:?}");
    assert!(!k.links.contains_key(&(n(1), n(0))), "{k:?}");

    lab.heal().unwrap();
    assert_eq!(datagrams(&a, &b, 20), 20, "healed");
    // The counters outlive the rule: what the cut did stays readable.
    assert_eq!(lab.counters().unwrap().cut, 40);

    // A drop of probability 1 is the same blackhole, counted as dropped.
    lab.drop_link(n(0), n(1), 1.0).unwrap();
    assert_eq!(datagrams(&a, &b, 5), 0);
    assert_eq!(datagrams(&b, &a, 5), 5);
    assert_eq!(lab.counters().unwrap().links[&(n(0), n(1))].dropped, 5);
}

#[test]
fn over_tcp_a_one_way_cut_times_out_the_connects_of_both_sides() {
    let lab = Lab::new(2).unwrap();
    let listen = |i: u64| {
        let addr = lab.addr(n(i)).unwrap();
        lab.within(n(i), move || TcpListener::bind((addr, 0)).unwrap())
            .unwrap()
    };
    let (l0, l1) = (listen(0), listen(1));
    lab.cut(n(0), n(1)).unwrap();
    assert!(
        !connects(&lab, 0, l1.local_addr().unwrap()),
        "0's SYN is cut"
    );
    assert!(
        !connects(&lab, 1, l0.local_addr().unwrap()),
        "0's SYN-ACK is cut"
    );
    let k = lab.counters().unwrap();
    assert!(k.links[&(n(0), n(1))].cut >= 2, "{k:?}");
    assert!(
        !k.links.contains_key(&(n(1), n(0))),
        "only 0 → 1 dropped: {k:?}"
    );
}

fn connects(lab: &Lab, from: u64, to: SocketAddr) -> bool {
    lab.within(n(from), move || {
        match TcpStream::connect_timeout(&to, Duration::from_millis(400)) {
            Ok(_) => true,
            Err(e) if e.kind() == ErrorKind::TimedOut => false,
            Err(e) => panic!("connect {to}: {e}"),
        }
    })
    .unwrap()
}

#[test]
fn a_partition_times_out_tcp_connects_both_ways_until_heal() {
    let lab = Lab::new(4).unwrap();
    let listeners: Vec<TcpListener> = (0..4)
        .map(|i| {
            let addr = lab.addr(n(i)).unwrap();
            lab.within(n(i), move || TcpListener::bind((addr, 0)).unwrap())
                .unwrap()
        })
        .collect();
    let at = |i: usize| listeners[i].local_addr().unwrap();
    lab.partition(&[vec![n(0), n(1)], vec![n(2), n(3)]])
        .unwrap();
    assert!(connects(&lab, 0, at(1)), "same side");
    assert!(connects(&lab, 3, at(2)), "same side");
    assert!(!connects(&lab, 0, at(2)), "across, one way");
    assert!(!connects(&lab, 3, at(1)), "across, the other way");
    let k = lab.counters().unwrap();
    assert!(k.links[&(n(0), n(2))].cut > 0, "{k:?}");
    assert!(k.links[&(n(3), n(1))].cut > 0, "{k:?}");

    lab.heal().unwrap();
    assert!(connects(&lab, 0, at(2)));
    assert!(connects(&lab, 3, at(1)));
}

#[test]
fn a_drop_of_point_three_drops_about_thirty_percent_and_counts_them() {
    let lab = Lab::new(2).unwrap();
    let (a, b) = (udp(&lab, n(0)), udp(&lab, n(1)));
    lab.drop_all(0.3).unwrap();
    let sent = 2000;
    let got = datagrams(&a, &b, sent);
    let k = lab.counters().unwrap();
    let dropped = k.links[&(n(0), n(1))].dropped;
    // Each packet is dropped with p = 0.3 by the kernel's own generator:
    // 600 expected, sd 20.5, so ±100 is ±4.9 sd.
    assert!(
        (500..=700).contains(&dropped),
        "dropped {dropped} of {sent}"
    );
    assert_eq!(
        k.received,
        u64::from(sent),
        "every datagram reached host 1's input"
    );
    assert!(u64::from(got) <= u64::from(sent) - dropped, "got {got}");
    lab.drop_all(0.0).unwrap();
    assert_eq!(datagrams(&a, &b, 50), 50);
    assert!(lab.drop_all(1.5).is_err());
}

#[test]
fn a_flapped_link_loses_what_is_sent_while_down_then_carries_again() {
    let lab = Lab::new(2).unwrap();
    let (a, b) = (udp(&lab, n(0)), udp(&lab, n(1)));
    lab.link_down(n(1)).unwrap();
    assert_eq!(datagrams(&a, &b, 10), 0);
    lab.link_up(n(1)).unwrap();
    // The sender's ARP entry for host 1 failed while the link was down and
    // is probed again once a second: the link carries within a few probes.
    carries_again(&a, &b);
    assert_eq!(datagrams(&a, &b, 10), 10);
    lab.flap(n(0), Duration::from_millis(50)).unwrap();
    carries_again(&a, &b);
    assert_eq!(datagrams(&a, &b, 10), 10);
    assert_eq!(lab.counters().unwrap().flaps, 2);
}

fn carries_again(a: &std::net::UdpSocket, b: &std::net::UdpSocket) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while datagrams(a, b, 1) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the link never carried again"
        );
    }
}

#[test]
fn a_bandwidth_limit_is_a_token_bucket_on_the_senders_link() {
    let lab = Lab::new(2).unwrap();
    let (a, b) = (udp(&lab, n(0)), udp(&lab, n(1)));
    lab.bandwidth(n(0), Some(1_000_000)).unwrap();
    let qdisc = || {
        lab.within(n(0), || {
            std::process::Command::new("tc")
                .args(["-s", "qdisc", "show", "dev", "eth0"])
                .output()
                .unwrap()
        })
        .unwrap()
    };
    // 1 Mbit/s with a 50 ms queue holds ~8 KB: a 300 KB burst overflows it.
    let big = vec![0u8; 1400];
    let to = b.local_addr().unwrap();
    for _ in 0..200 {
        let _ = a.send_to(&big, to);
    }
    let out = String::from_utf8_lossy(&qdisc().stdout).into_owned();
    assert!(out.contains("tbf") && out.contains("rate 1Mbit"), "{out}");
    let dropped: u64 = out
        .split("dropped ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(dropped > 0, "{out}");
    // The lab reports what tc counted, and keeps it once the limit is gone.
    assert_eq!(lab.counters().unwrap().shaped, dropped, "{out}");
    lab.bandwidth(n(0), None).unwrap();
    assert_eq!(lab.counters().unwrap().shaped, dropped);
    assert!(!String::from_utf8_lossy(&qdisc().stdout).contains("tbf"));
    lab.bandwidth(n(0), None).unwrap();
    assert!(lab.bandwidth(n(0), Some(0)).is_err());
}

#[test]
fn unknown_hosts_are_errors_not_panics() {
    let lab = Lab::new(2).unwrap();
    assert!(lab.cut(n(0), n(9)).is_err());
    assert!(lab.partition(&[vec![n(7)]]).is_err());
    assert!(lab.addr(n(2)).is_err());
    assert!(lab.pause(n(1)).is_err(), "no process runs there");
}
