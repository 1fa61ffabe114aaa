use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use multinode_net::Lab;
use multinode_wire::NodeId;

pub(crate) fn n(i: u64) -> NodeId {
    NodeId(i)
}

/// A UDP socket bound on host `node`, with a read timeout.
pub(crate) fn udp(lab: &Lab, node: NodeId) -> UdpSocket {
    let addr = lab.addr(node).unwrap();
    let s = lab
        .within(node, move || UdpSocket::bind((addr, 0)).unwrap())
        .unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    s
}

/// Sends `count` datagrams from `a` to `b`; returns how many arrived.
pub(crate) fn datagrams(a: &UdpSocket, b: &UdpSocket, count: u32) -> u32 {
    let to = b.local_addr().unwrap();
    let mut got = 0;
    let mut buf = [0u8; 64];
    for i in 0..count {
        // A send to a host whose link is down fails; that is a lost datagram.
        let _ = a.send_to(&i.to_be_bytes(), to);
        // Drain without waiting, so the receiver's buffer never overflows.
        b.set_nonblocking(true).unwrap();
        while b.recv(&mut buf).is_ok() {
            got += 1;
        }
        b.set_nonblocking(false).unwrap();
    }
    // The last ones, with the read timeout as the deadline.
    while b.recv(&mut buf).is_ok() {
        got += 1;
    }
    got
}

#[test]
fn hosts_reach_each_other_by_address_and_see_only_their_own_link() {
    let lab = Lab::new(3).unwrap();
    let subnet = lab.subnet();
    assert_eq!(lab.addr(n(2)).unwrap(), subnet.host(n(2)).unwrap());
    let octets = lab.addr(n(0)).unwrap().octets();
    assert!(octets[0] == 198 && (octets[1] == 18 || octets[1] == 19));

    let a = udp(&lab, n(0));
    let b = udp(&lab, n(2));
    assert_eq!(datagrams(&a, &b, 5), 5);
    assert_eq!(datagrams(&b, &a, 5), 5);

    // Host 1 sees lo and its eth0 with its own address, nothing of ours.
    let out = lab
        .within(n(1), || {
            Command::new("ip")
                .args(["-o", "-4", "addr", "show"])
                .output()
                .unwrap()
        })
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let addrs: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .collect();
    assert_eq!(
        addrs,
        vec![
            "127.0.0.1/8".to_owned(),
            format!("{}/22", lab.addr(n(1)).unwrap())
        ],
        "{text}"
    );

    // The switch reaches every host; loopback of this process is not there.
    let switch = lab.switch_addr();
    let s = lab
        .within_switch(move || UdpSocket::bind((switch, 0)).unwrap())
        .unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert_eq!(datagrams(&a, &s, 3), 3);
    // A host's loopback is its own: a datagram host 0 sends to this
    // process's loopback port never arrives here, while one sent from here
    // does.
    let ours = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    ours.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let port = ours.local_addr().unwrap().port();
    let from_host = lab
        .within(n(0), || UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap())
        .unwrap();
    let here = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    from_host.send_to(b"from host 0", here).unwrap();
    let local = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    local.send_to(b"from here", here).unwrap();
    let mut buf = [0u8; 32];
    let n = ours.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"from here");
    assert!(
        ours.recv(&mut buf).is_err(),
        "host 0 reached this process's loopback"
    );
}

#[test]
fn two_labs_in_one_process_get_distinct_subnets() {
    let a = Lab::new(1).unwrap();
    let b = Lab::new(1).unwrap();
    assert_ne!(a.subnet(), b.subnet());
}

#[test]
fn a_lab_too_large_for_its_subnet_is_refused_before_anything_is_built() {
    let e = Lab::new(multinode_net::MAX_HOSTS + 1).unwrap_err();
    assert!(e.to_string().contains("at most 1021 hosts"), "{e}");
}
