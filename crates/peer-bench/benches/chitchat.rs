//! The LWW replica's gossip beside chitchat's (quickwit-oss/chitchat, a
//! scuttlebutt membership and key-value gossip), on the same simulated
//! network: N nodes that all know each other, fanout 3 (chitchat's fixed
//! gossip count, ours configured to match), every message lost
//! independently at the same rate, one round a gossip interval.
//!
//! Each trial writes one key at a random node and counts the rounds until
//! every node holds it. Bytes are everything sent on the network in the
//! measured rounds (lost messages included), idle rounds included: after
//! the trials the cluster runs as many quiet rounds again.
//!
//! - Ours: the deterministic simulator (`multinode_lww::Simulator`), bytes
//!   as TCP frames (frame header and PDU tags included).
//! - Chitchat: its real server loops (`spawn_chitchat`) on a tokio runtime
//!   whose clock is paused, over its own in-process transport (which
//!   serializes each envelope and counts its bytes), each message lost at
//!   the loss rate. Its default
//!   protocol version (`V0`, the one its docs say a cluster must keep
//!   until every node reads `V1`) and, as a second figure, `V1` with its
//!   compressed digests.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chitchat::transport::{ChannelTransport, RecvOutcome, SendOutcome, Socket, Transport};
use chitchat::{
    ChitchatConfig, ChitchatEnvelope, ChitchatHandle, ChitchatId, FailureDetectorConfig,
    ProtocolVersion, spawn_chitchat,
};
use multinode_benchkit::{Better, quick, record};
use multinode_lww::{Fanout, Simulator};
use multinode_mesh::LinkFaults;
use multinode_wire::NodeId;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Virtual time between rounds (both sides).
const ROUND_MS: u64 = 1000;

/// What one side measured.
#[derive(Debug, Default)]
struct Outcome {
    /// Mean rounds for a write to reach every node.
    rounds: f64,
    /// Bytes sent a round, trial and idle rounds alike.
    bytes_per_round: f64,
}

fn main() {
    let quick = quick();
    let trials = if quick { 5 } else { 20 };
    for n in [50usize, 200] {
        for loss in [0.0, 0.2] {
            let ours = ours(n, loss, trials);
            let theirs = chitchat(n, loss, trials, ProtocolVersion::V0);
            let v1 = chitchat(n, loss, trials, ProtocolVersion::V1);
            let name = format!("n{n}_loss{}", (loss * 100.0) as u32);
            let lossy = if loss > 0.0 { ", 20% loss" } else { "" };
            record(
                "peers",
                &format!("chitchat_rounds_{name}"),
                "rounds",
                ours.rounds,
                theirs.rounds,
                &format!("chitchat 0.13, {n} nodes, fanout 3{lossy}: mean rounds to reach all"),
                Better::Lower,
                Some(1.0),
            );
            record(
                "peers",
                &format!("chitchat_bytes_{name}"),
                "bytes/round",
                ours.bytes_per_round,
                theirs.bytes_per_round,
                &format!("chitchat 0.13 (V0 digests), {n} nodes{lossy}, idle rounds included"),
                Better::Lower,
                Some(1.0),
            );
            record(
                "peers",
                &format!("chitchat_v1_bytes_{name}"),
                "bytes/round",
                ours.bytes_per_round,
                v1.bytes_per_round,
                &format!("chitchat 0.13 (V1, zstd digests), {n} nodes{lossy}, idle included"),
                Better::Lower,
                Some(1.0),
            );
        }
    }
}

fn ours(n: usize, loss: f64, trials: usize) -> Outcome {
    let mut s = Simulator::new(n, 0xc4a7 ^ n as u64, ROUND_MS, |c| {
        c.fanout = Fanout::Fixed(3);
    })
    .expect("config");
    // Settle the start-up resynchronisations first, as chitchat settles its
    // membership.
    s.run_until(100, |s| s.live().all(|r| !r.is_resyncing()))
        .expect("the replicas never settled");
    for _ in 0..5 {
        s.round();
    }
    s.faults().set_all_faults(&LinkFaults {
        drop: loss,
        ..LinkFaults::default()
    });
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let before = s.totals();
    let mut rounds = 0;
    for t in 0..trials {
        let at = NodeId(rng.random_range(0..n as u64));
        let e = s.set(at, &format!("t{t}"), b"v").expect("write");
        rounds += s
            .run_until(200, |s| s.holders(&e) == n)
            .expect("a write never spread");
    }
    for _ in 0..rounds {
        s.round();
    }
    let after = s.totals();
    Outcome {
        rounds: rounds as f64 / trials as f64,
        bytes_per_round: (after.bytes - before.bytes) as f64
            / (after.rounds - before.rounds) as f64,
    }
}

/// The simulated network chitchat's sockets send on: its own in-process
/// transport (which serializes every envelope and counts its bytes), with
/// each message lost at the receiver at the loss rate.
#[derive(Clone)]
struct Net {
    inner: ChannelTransport,
    fate: Arc<Mutex<(f64, ChaCha8Rng)>>,
}

impl Net {
    fn new(seed: u64) -> Self {
        Self {
            inner: ChannelTransport::default(),
            fate: Arc::new(Mutex::new((0.0, ChaCha8Rng::seed_from_u64(seed)))),
        }
    }

    fn set_loss(&self, loss: f64) {
        self.fate.lock().expect("net").0 = loss;
    }

    fn bytes(&self) -> u64 {
        self.inner.statistics().num_bytes_total
    }
}

#[async_trait]
impl Transport for Net {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        Ok(Box::new(LossySocket {
            inner: self.inner.open(listen_addr).await?,
            fate: self.fate.clone(),
        }))
    }
}

struct LossySocket {
    inner: Box<dyn Socket>,
    fate: Arc<Mutex<(f64, ChaCha8Rng)>>,
}

#[async_trait]
impl Socket for LossySocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.inner.local_addr()
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        self.inner.send(to, envelope).await
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let got = self.inner.recv().await?;
            let lost = {
                let (loss, rng) = &mut *self.fate.lock().expect("net");
                *loss > 0.0 && rng.random_bool(*loss)
            };
            if !lost {
                return Ok(got);
            }
        }
    }
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 20_000 + i as u16))
}

fn chitchat(n: usize, loss: f64, trials: usize, version: ProtocolVersion) -> Outcome {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(chitchat_run(n, loss, trials, version))
}

async fn chitchat_run(n: usize, loss: f64, trials: usize, version: ProtocolVersion) -> Outcome {
    let net = Net::new(0xc4a7 ^ n as u64);
    let round = Duration::from_millis(ROUND_MS);
    let mut nodes: Vec<ChitchatHandle> = Vec::with_capacity(n);
    let ids: Vec<ChitchatId> = (0..n)
        .map(|i| ChitchatId::new(format!("node-{i}"), 1, addr(i)))
        .collect();
    for (i, id) in ids.iter().enumerate() {
        let config = ChitchatConfig {
            chitchat_id: id.clone(),
            cluster_id: "bench".to_owned(),
            gossip_interval: round,
            listen_addr: addr(i),
            seed_nodes: vec![addr(0).to_string()],
            failure_detector_config: FailureDetectorConfig::default(),
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: version,
        };
        nodes.push(
            spawn_chitchat(config, Vec::new(), &net)
                .await
                .expect("spawn"),
        );
    }
    // Off the tick: every check sees whole rounds.
    tokio::time::sleep(round / 2).await;
    let mut settle = 0;
    loop {
        let mut all = true;
        for h in &nodes {
            let live = h.with_chitchat(|c| c.live_nodes().count()).await;
            all &= live == n;
        }
        if all {
            break;
        }
        settle += 1;
        assert!(settle < 300, "chitchat's membership never settled");
        tokio::time::sleep(round).await;
    }
    for _ in 0..5 {
        tokio::time::sleep(round).await;
    }
    net.set_loss(loss);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let before = net.bytes();
    let mut rounds = 0;
    for t in 0..trials {
        let at = rng.random_range(0..n);
        let key = format!("t{t}");
        nodes[at]
            .with_chitchat(|c| c.self_node_state().set(key.clone(), "v"))
            .await;
        let mut r = 0;
        loop {
            tokio::time::sleep(round).await;
            r += 1;
            assert!(r < 200, "a chitchat write never spread");
            let mut holders = 0;
            for h in &nodes {
                let has = h
                    .with_chitchat(|c| c.node_state(&ids[at]).and_then(|s| s.get(&key)).is_some())
                    .await;
                holders += usize::from(has);
            }
            if holders == n {
                break;
            }
        }
        rounds += r;
    }
    for _ in 0..rounds {
        tokio::time::sleep(round).await;
    }
    let bytes = net.bytes() - before;
    for h in nodes {
        let _ = h.shutdown().await;
    }
    Outcome {
        rounds: rounds as f64 / trials as f64,
        bytes_per_round: bytes as f64 / (2 * rounds) as f64,
    }
}
