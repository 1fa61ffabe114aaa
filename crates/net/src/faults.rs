//! Network faults the kernel makes: partitions, one-way cuts and random
//! drops with nftables on each receiver's input, bandwidth with a `tbf`
//! qdisc, and link flaps. The vocabulary is the mesh's fault model's.

use std::time::Duration;

use multinode_wire::NodeId;

use crate::lab::LINK;
use crate::rules::Rules;
use crate::{Lab, NetError};

impl Lab {
    /// Cuts every link between different `groups`, both ways. Hosts in no
    /// group form one group more. Cuts already in force stay.
    pub fn partition(&self, groups: &[Vec<NodeId>]) -> Result<(), NetError> {
        let n = self.hosts();
        let mut group = vec![groups.len(); n as usize];
        for (g, members) in groups.iter().enumerate() {
            for &m in members {
                let i = self.host_index(m)?;
                group[i] = g;
            }
        }
        self.change(|r| {
            for a in 0..n {
                for b in 0..n {
                    if group[a as usize] != group[b as usize] {
                        r.cut(a, b);
                    }
                }
            }
        })
    }

    /// Cuts `from → to` one way: every packet from `from` is dropped when
    /// it reaches `to`; packets from `to` to `from` flow. Over UDP exactly
    /// one direction stops; over TCP the other direction starves too, after
    /// a window's worth of segments, since `from`'s acknowledgements are
    /// what is dropped.
    pub fn cut(&self, from: NodeId, to: NodeId) -> Result<(), NetError> {
        let (f, t) = (self.host_index(from)? as u32, self.host_index(to)? as u32);
        self.change(|r| r.cut(f, t))
    }

    /// Restores every cut link. Random drops stay.
    pub fn heal(&self) -> Result<(), NetError> {
        self.change(Rules::heal)
    }

    /// Drops each packet between any two hosts with probability `p`
    /// (0 stops dropping).
    pub fn drop_all(&self, p: f64) -> Result<(), NetError> {
        check_probability(p)?;
        let n = self.hosts();
        self.change(|r| {
            for a in 0..n {
                for b in 0..n {
                    r.drop(a, b, p);
                }
            }
        })
    }

    /// Drops each packet on `from → to` with probability `p`.
    pub fn drop_link(&self, from: NodeId, to: NodeId, p: f64) -> Result<(), NetError> {
        check_probability(p)?;
        let (f, t) = (self.host_index(from)? as u32, self.host_index(to)? as u32);
        self.change(|r| r.drop(f, t, p))
    }

    /// Applies a change to the rules, then rewrites the nft table of each
    /// host whose rules moved, each in one transaction.
    fn change(&self, edit: impl FnOnce(&mut Rules)) -> Result<(), NetError> {
        let mut rules = self.rules.lock();
        let mut next = rules.clone();
        edit(&mut next);
        for to in next.changed(&rules, self.hosts()) {
            let script = next.script(&self.subnet, self.hosts(), to);
            self.hosts[to as usize].run("nft", &["-f", "-"], Some(&script))?;
            self.tables.lock().insert(to);
        }
        *rules = next;
        Ok(())
    }

    /// Limits what host `node` sends to `bits_per_sec` with a token bucket
    /// (`tbf`) on its link; `None` removes the limit.
    pub fn bandwidth(&self, node: NodeId, bits_per_sec: Option<u64>) -> Result<(), NetError> {
        let host = self.host(node)?;
        let i = self.host_index(node)? as u32;
        match bits_per_sec {
            Some(0) => Err(NetError::BadFault(
                "a bandwidth of 0 bit/s: use a cut".into(),
            )),
            Some(rate) => {
                // A bucket of at least one full-size frame, and ~4 ms of the rate.
                let burst = (rate / 8 / 250).max(1600).to_string();
                let rate = format!("{rate}bit");
                host.run(
                    "tc",
                    &[
                        "qdisc", "replace", "dev", LINK, "root", "tbf", "rate", &rate, "burst",
                        &burst, "latency", "50ms",
                    ],
                    None,
                )?;
                // A `replace` of a tbf by a tbf changes it in place: its
                // counts go on.
                self.shaped.lock().insert(i);
                Ok(())
            }
            None => {
                // A limit removed takes its counts with it: keep them.
                if self.shaped.lock().remove(&i) {
                    let drops = self.tbf_drops(i)?;
                    self.tally.lock().shaped += drops;
                }
                self.remove_limit(host)
            }
        }
    }

    fn remove_limit(&self, host: &crate::namespace::Netns) -> Result<(), NetError> {
        match host.run("tc", &["qdisc", "del", "dev", LINK, "root"], None) {
            // No limit was set: nothing to remove.
            Err(NetError::Tool { stderr, .. })
                if stderr.contains("No such file")
                    || stderr.contains("Cannot delete qdisc with handle of zero") =>
            {
                Ok(())
            }
            other => other.map(drop),
        }
    }

    /// Takes host `node`'s link down: nothing reaches it or leaves it, and
    /// its sockets see the kernel's errors for an interface that is down.
    pub fn link_down(&self, node: NodeId) -> Result<(), NetError> {
        self.host(node)?
            .run("ip", &["link", "set", LINK, "down"], None)
            .map(drop)
    }

    /// Brings host `node`'s link back up (with its address and route); one
    /// flap is counted.
    pub fn link_up(&self, node: NodeId) -> Result<(), NetError> {
        self.host(node)?
            .run("ip", &["link", "set", LINK, "up"], None)?;
        self.tally.lock().flaps += 1;
        Ok(())
    }

    /// A flap: host `node`'s link down for `down`, then up again.
    pub fn flap(&self, node: NodeId, down: Duration) -> Result<(), NetError> {
        self.link_down(node)?;
        std::thread::sleep(down);
        self.link_up(node)
    }
}

fn check_probability(p: f64) -> Result<(), NetError> {
    if (0.0..=1.0).contains(&p) {
        Ok(())
    } else {
        Err(NetError::BadFault(format!(
            "{p} is not a drop probability in [0, 1]"
        )))
    }
}
