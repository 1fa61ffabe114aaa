//! Where a lab's addresses come from: one /22 of 198.18.0.0/15, the range
//! RFC 2544 reserves for network test labs and no router forwards.

use core::net::Ipv4Addr;

use multinode_wire::NodeId;

/// The first address of 198.18.0.0/15.
const RANGE: u32 = u32::from_be_bytes([198, 18, 0, 0]);
/// Addresses in one lab's subnet (a /22).
const SIZE: u32 = 1024;
/// How many /22s the /15 holds.
const SLOTS: u32 = (1 << 17) / SIZE;

/// The most hosts one lab holds: a /22 less its network address, the
/// switch's address and the broadcast address.
pub const MAX_HOSTS: u32 = SIZE - 3;

/// One lab's subnet: the switch (the bridge) at its first host address,
/// host `i` at the next `i`-th.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subnet {
    base: u32,
}

impl Subnet {
    /// The `slot`-th /22 of 198.18.0.0/15 (taken modulo the 128 there are).
    pub fn slot(slot: u32) -> Self {
        Self {
            base: RANGE + (slot % SLOTS) * SIZE,
        }
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base)
    }

    /// The prefix length: 22.
    pub fn prefix_len(&self) -> u8 {
        22
    }

    /// The switch's address: where the lab's owner listens.
    pub fn switch(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1)
    }

    /// Host `node`'s address, if the subnet has room for it.
    pub fn host(&self, node: NodeId) -> Option<Ipv4Addr> {
        let i = u32::try_from(node.0).ok().filter(|&i| i < MAX_HOSTS)?;
        Some(Ipv4Addr::from(self.base + 2 + i))
    }

    /// Which host has `addr`, if any.
    pub fn node(&self, addr: Ipv4Addr) -> Option<NodeId> {
        let a = u32::from(addr);
        (a >= self.base + 2 && a < self.base + 2 + MAX_HOSTS)
            .then(|| NodeId(u64::from(a - self.base - 2)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_follow_the_switch_inside_one_slash_22() {
        let s = Subnet::slot(3);
        assert_eq!(s.network(), Ipv4Addr::new(198, 18, 12, 0));
        assert_eq!(s.switch(), Ipv4Addr::new(198, 18, 12, 1));
        assert_eq!(s.host(NodeId(0)), Some(Ipv4Addr::new(198, 18, 12, 2)));
        assert_eq!(s.host(NodeId(300)), Some(Ipv4Addr::new(198, 18, 13, 46)));
        assert_eq!(
            s.host(NodeId(u64::from(MAX_HOSTS) - 1)),
            Some(Ipv4Addr::new(198, 18, 15, 254))
        );
        assert_eq!(s.host(NodeId(u64::from(MAX_HOSTS))), None);
        assert_eq!(s.node(Ipv4Addr::new(198, 18, 13, 46)), Some(NodeId(300)));
        assert_eq!(s.node(s.switch()), None);
        assert_eq!(s.node(Ipv4Addr::new(198, 18, 16, 2)), None);
    }

    #[test]
    fn every_slot_stays_inside_198_18_0_0_slash_15() {
        for slot in [0, 1, 127, 128, 5000, u32::MAX] {
            let s = Subnet::slot(slot);
            let last = s.host(NodeId(u64::from(MAX_HOSTS) - 1)).unwrap();
            for a in [s.network(), s.switch(), last] {
                let o = a.octets();
                assert_eq!(o[0], 198, "{a}");
                assert!(o[1] == 18 || o[1] == 19, "{a}");
            }
        }
        assert_eq!(Subnet::slot(127).network(), Ipv4Addr::new(198, 19, 252, 0));
        assert_eq!(Subnet::slot(128), Subnet::slot(0));
    }
}
