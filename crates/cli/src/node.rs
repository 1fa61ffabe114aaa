//! `multinode node`: one LWW gossip node process over TCP, persisting to a
//! data directory, driven line by line on stdin (`docs/node-control.md`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use clap::Args;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use multinode_barrier::{BarrierError, BarrierNode, ENV_ADDR, env_identity, env_index};
use multinode_gossip::{GossipTransport, TcpTransport, TcpTransportConfig};
use multinode_lww::{Fanout, Inbox, LwwError, LwwNode, NodeConfig, ReplicaConfig};
use multinode_wire::{ClusterId, LwwEntry, NodeId, Timestamp};
use tokio::io::AsyncWriteExt;
use tokio_util::codec::{Decoder, FramedRead, LinesCodec, LinesCodecError};

use crate::control::{Command, DumpLine, MAX_LINE, encode};
use crate::control_pipe::{Input, Output, input, output};
use crate::faulty::Faulty;

#[derive(Args, Debug)]
pub(crate) struct NodeArgs {
    /// Where the node keeps its acknowledged writes (created if missing).
    #[arg(long)]
    data_dir: PathBuf,
    /// This node's id; default: `MULTINODE_NODE_INDEX`, else the rank an
    /// existing launcher gives (`OMPI_COMM_WORLD_RANK`, `PMI_RANK`,
    /// `SLURM_PROCID`, `JOB_COMPLETION_INDEX`).
    #[arg(long)]
    id: Option<u64>,
    /// Where the gossip transport listens.
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: SocketAddr,
    /// The cluster id: peers of another cluster are refused.
    #[arg(long, default_value_t = 1)]
    cluster: u64,
    /// Milliseconds between gossip rounds.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    round_ms: u64,
    /// Peers gossiped with each round.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=1024))]
    fanout: u64,
    /// Seeds the peer choice (default: the node id).
    #[arg(long)]
    seed: Option<u64>,
    /// A peer to gossip with, as `ID=HOST:PORT` (repeatable).
    #[arg(long = "peer", value_parser = parse_peer)]
    peers: Vec<(NodeId, SocketAddr)>,
    /// Under a barrier controller, do not exchange addresses at start; the
    /// `JOIN <label>` command does it later (`MULTINODE_NO_JOIN=1` does the
    /// same, as the node contract says).
    #[arg(long, env = "MULTINODE_NO_JOIN", value_parser = clap::builder::BoolishValueParser::new(), num_args = 0, default_missing_value = "true")]
    no_join: bool,
    /// The data-carrying barrier that exchanges listen addresses at start.
    #[arg(long, default_value = "join")]
    join_label: String,
    /// A file holding the cluster secret (16 to 4,096 bytes; a final line
    /// end is ignored): every peer must prove it in the handshake. Required
    /// with a non-loopback `--bind`.
    #[arg(long, env = "MULTINODE_SECRET_FILE")]
    secret_file: Option<PathBuf>,
}

/// Reads the cluster secret, refusing a file too large to be one before
/// reading it.
fn read_secret(path: &std::path::Path) -> Result<multinode_wire::Secret> {
    let what = || format!("cannot read the cluster secret from {}", path.display());
    let len = std::fs::metadata(path).with_context(what)?.len();
    if len > multinode_wire::MAX_SECRET_LEN as u64 + 2 {
        bail!(
            "{}: {len} bytes is too large for a cluster secret (at most {})",
            path.display(),
            multinode_wire::MAX_SECRET_LEN
        );
    }
    let bytes = std::fs::read(path).with_context(what)?;
    multinode_wire::Secret::from_file_contents(&bytes).with_context(what)
}

fn parse_peer(s: &str) -> Result<(NodeId, SocketAddr), String> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not ID=HOST:PORT"))?;
    let id = id.parse().map_err(|_| format!("{id:?} is not a node id"))?;
    let addr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not HOST:PORT"))?;
    Ok((NodeId(id), addr))
}

type Node = LwwNode<Faulty<TcpTransport>>;

/// How many control-line writes a node runs at once.
const PIPELINE: usize = 64;

/// A write's answer line, once it is done: `OK <version>` or `ERR <why>`.
async fn written(write: impl Future<Output = Result<Timestamp, LwwError>>) -> String {
    match write.await {
        Ok(version) => format!("OK {version}"),
        Err(e) => format!("ERR {}", crate::error_line(&e.into())),
    }
}

/// One place in the line of answers: a write's answer once it is
/// durable, or a read, served when its turn comes.
enum Turn {
    Answer(String),
    Read(String),
}

/// A write's place in the line of answers.
fn write_turn(
    write: impl Future<Output = Result<Timestamp, LwwError>> + Send + 'static,
) -> BoxFuture<'static, Turn> {
    Box::pin(async move { Turn::Answer(written(write).await) })
}

/// The answer to `GET key`.
fn read(node: &Node, key: &str) -> String {
    match node.with_replica(|r| r.entry(key).cloned()) {
        None => "NONE".into(),
        Some(LwwEntry {
            value: Some(v),
            version,
            ..
        }) => format!("VALUE {version} {}", encode(&v)),
        Some(LwwEntry { version, .. }) => format!("GONE {version}"),
    }
}

struct Proc {
    node: Node,
    id: NodeId,
    addr: SocketAddr,
    barrier: Option<BarrierNode>,
    out: Output,
}

pub(crate) async fn run(args: NodeArgs) -> Result<ExitCode> {
    let id = match args.id {
        Some(id) => NodeId(id),
        // Ours, or an existing launcher's rank (mpirun, srun, an Indexed Job).
        None => env_index().context("give --id, or run under a launcher")?,
    };
    let inbox = Inbox::new(4096);
    let mut tcp = TcpTransportConfig::new(ClusterId(args.cluster), id);
    tcp.bind = args.bind;
    // Gossip is periodic: frames a slow peer has not taken are soon stale,
    // and a node of a large cluster has many peers. A small queue each
    // bounds the memory an overloaded machine's slow peers can hold.
    tcp.queue_frames = 64;
    tcp.queue_bytes = 4 << 20;
    tcp.secret = args.secret_file.as_deref().map(read_secret).transpose()?;
    let transport = TcpTransport::bind(tcp, inbox.sink()).await?;
    let addr = transport.local_addr();
    let seed = args.seed.unwrap_or(id.0);
    let mut replica = ReplicaConfig::new(id);
    replica.round_interval_ms = args.round_ms;
    replica.fanout = Fanout::Fixed(args.fanout as usize);
    replica.seed = seed;
    let config = NodeConfig {
        replica,
        data_dir: Some(args.data_dir.clone()),
    };
    let node = LwwNode::start(config, Faulty::new(transport, id, seed ^ 0x5eed), inbox)
        .await
        .with_context(|| format!("cannot start on {}", args.data_dir.display()))?;
    let restored = node.with_replica(|r| r.entries().count());
    tracing::info!(node = %id, %addr, restored, "node started");
    let mut p = Proc {
        node,
        id,
        addr,
        barrier: None,
        out: output(),
    };
    for (peer, at) in &args.peers {
        p.add_peer(*peer, *at)?;
    }
    if std::env::var_os(ENV_ADDR).is_some() && !args.no_join {
        p.join(&args.join_label).await?;
    }
    // Set up before READY, which tells a driver it may write.
    let input = input();
    p.reply(&format!("READY {id} {addr} entries={restored}"))
        .await?;
    let outcome = p.serve(input).await;
    if let Some(b) = p.barrier.take() {
        // Leaving lets later barriers go on without us; best effort.
        match tokio::time::timeout(std::time::Duration::from_secs(2), b.leave()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(node = %id, "could not leave the barrier: {e}"),
            Err(_) => tracing::warn!(node = %id, "leaving the barrier took over 2 s"),
        }
    }
    p.node.transport().inner().shutdown().await;
    p.node.shutdown().await;
    tracing::info!(node = %id, "node stopped: {}", outcome.as_ref().map_or_else(|e| e.to_string(), |s| s.to_string()));
    outcome.map(|_| ExitCode::SUCCESS)
}

impl Proc {
    fn add_peer(&mut self, peer: NodeId, at: SocketAddr) -> Result<()> {
        self.node.transport().inner().add_peer(peer, at)?;
        self.node.add_peer(peer);
        Ok(())
    }

    async fn barrier(&mut self) -> Result<&mut BarrierNode> {
        if self.barrier.is_none() {
            if std::env::var_os(ENV_ADDR).is_none() {
                bail!("no barrier controller: {ENV_ADDR} is not set");
            }
            let (at, _) = env_identity()?;
            // A restarted node may beat the controller to noticing that its
            // previous process's connection closed: retry that, briefly.
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
            let b = loop {
                match BarrierNode::connect(at, Some(self.id)).await {
                    Err(BarrierError::Refused(why))
                        if why.ends_with("is already connected")
                            && tokio::time::Instant::now() < deadline =>
                    {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                    other => {
                        break other.with_context(|| {
                            format!("cannot join the barrier controller at {at}")
                        })?;
                    }
                }
            };
            self.barrier = Some(b);
        }
        Ok(self.barrier.as_mut().expect("connected above"))
    }

    /// Shares our address at the data-carrying barrier `label` and gossips
    /// with everyone else who did. Returns how many peers that is.
    async fn join(&mut self, label: &str) -> Result<usize> {
        let addr = self.addr.to_string();
        let all = self.barrier().await?.gather(label, &addr).await?;
        let mut peers = Vec::with_capacity(all.len());
        for (peer, value) in all {
            if peer == self.id {
                continue;
            }
            let at: SocketAddr = value
                .as_str()
                .parse()
                .with_context(|| format!("node {peer} shared {value:?}, not an address"))?;
            peers.push((peer, at));
        }
        // All at once: one lock each, and tables built in one pass.
        self.node.transport().inner().add_peers(&peers)?;
        self.node.add_peers(peers.iter().map(|(peer, _)| *peer));
        tracing::info!(node = %self.id, label, peers = peers.len(), "joined");
        Ok(peers.len())
    }

    async fn reply(&mut self, line: &str) -> Result<()> {
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        self.out.write_all(&buf).await?;
        self.out.flush().await?;
        Ok(())
    }

    /// Serves control lines until `QUIT`, end of input or a signal.
    ///
    /// `SET` and `DEL` lines run together, up to [`PIPELINE`] at a time,
    /// each taking its version as it is read: a client that sends several
    /// writes at once has them share the store's fsyncs. Answers come in
    /// the order of the lines. A `GET` among them holds nothing up: it is
    /// served at its turn, once every write before it is answered, so it
    /// sees them (and may see a write sent after it that is already
    /// durable). Any other line waits for the writes before it.
    async fn serve(&mut self, input: Input) -> Result<&'static str> {
        let mut lines = FramedRead::new(input, ControlLines::default());
        // One listener for the whole life of the node: a signal that lands
        // while a command is being served is still seen.
        let stop = crate::interrupted();
        tokio::pin!(stop);
        let mut writes: FuturesOrdered<BoxFuture<'static, Turn>> = FuturesOrdered::new();
        loop {
            let next = tokio::select! {
                Some(turn) = writes.next(), if !writes.is_empty() => {
                    self.answer(turn).await?;
                    continue;
                }
                next = lines.next(), if writes.len() < PIPELINE => next,
                why = &mut stop => return Ok(why),
            };
            let line = match next {
                None => Err(None),
                Some(Ok(Ok(line))) => Ok(line),
                Some(Ok(Err(problem))) => Err(Some(format!("ERR {problem}"))),
                Some(Err(e)) => bail!("control input failed: {e}"),
            };
            let cmd = line.map(|l| l.parse::<Command>().map_err(|e| format!("ERR {e}")));
            let cmd = match cmd {
                Ok(Ok(Command::Set(key, value))) => {
                    writes.push_back(write_turn(self.node.set(&key, value)));
                    continue;
                }
                Ok(Ok(Command::Del(key))) => {
                    writes.push_back(write_turn(self.node.delete(&key)));
                    continue;
                }
                Ok(Ok(Command::Get(key))) if !writes.is_empty() => {
                    writes.push_back(Box::pin(std::future::ready(Turn::Read(key))));
                    continue;
                }
                other => other,
            };
            // Anything else is answered after the writes before it.
            while let Some(turn) = writes.next().await {
                self.answer(turn).await?;
            }
            let cmd = match cmd {
                Err(None) => return Ok("end of input"),
                Ok(Ok(cmd)) => cmd,
                Err(Some(refused)) | Ok(Err(refused)) => {
                    self.reply(&refused).await?;
                    continue;
                }
            };
            if cmd == Command::Quit {
                self.reply("BYE").await?;
                return Ok("QUIT");
            }
            let answer = self
                .execute(cmd)
                .await
                .unwrap_or_else(|e| format!("ERR {}", crate::error_line(&e)));
            self.reply(&answer).await?;
        }
    }

    /// Writes the answer of `turn`, reading now if it is a read.
    async fn answer(&mut self, turn: Turn) -> Result<()> {
        match turn {
            Turn::Answer(line) => self.reply(&line).await,
            Turn::Read(key) => {
                let line = read(&self.node, &key);
                self.reply(&line).await
            }
        }
    }

    async fn execute(&mut self, cmd: Command) -> Result<String> {
        let node = &self.node;
        Ok(match cmd {
            Command::Ping => "PONG".into(),
            Command::Set(key, value) => written(node.set(&key, value)).await,
            Command::Del(key) => written(node.delete(&key)).await,
            Command::Get(key) => read(node, &key),
            Command::Digest => {
                let (fp, live, all, resync, clock) = node.with_replica(|r| {
                    (
                        r.fingerprint(),
                        r.len(),
                        r.entries().count(),
                        r.is_resyncing(),
                        clock_ahead(r),
                    )
                });
                format!(
                    "DIGEST {fp:016x} live={live} entries={all} resyncing={} clock_ahead_ms={clock}",
                    u8::from(resync)
                )
            }
            Command::Dump => {
                let mut entries: Vec<DumpLine> = node.with_replica(|r| {
                    r.entries()
                        .map(|e| DumpLine {
                            key: e.key.clone(),
                            version: e.version,
                            value: e.value.as_ref().map(|v| v.to_vec()),
                        })
                        .collect()
                });
                entries.sort_by(|a, b| a.key.cmp(&b.key));
                let mut text = String::new();
                for e in &entries {
                    text.push_str(&e.to_string());
                    text.push('\n');
                }
                text.push_str(&format!("END {}", entries.len()));
                text
            }
            Command::Stats => stats_line(node),
            Command::Peer(peer, at) => {
                self.add_peer(peer, at)?;
                "OK".into()
            }
            Command::Join(label) => format!("OK peers={}", self.join(&label).await?),
            Command::Barrier(label) => {
                self.barrier().await?.barrier(&label).await?;
                format!("OK {label}")
            }
            Command::Fault(verb) => {
                node.transport().apply(verb);
                "OK".into()
            }
            Command::Faults => faults_line(node),
            Command::Quit => "BYE".into(),
        })
    }
}

/// Control lines, bounded: a line that is too long or not UTF-8 is an
/// item (answered with an error), not the end of the stream.
struct ControlLines(LinesCodec);

impl Default for ControlLines {
    fn default() -> Self {
        Self(LinesCodec::new_with_max_length(MAX_LINE))
    }
}

type LineItem = Result<String, String>;

fn bad_line(e: LinesCodecError) -> Result<Option<LineItem>, std::io::Error> {
    match e {
        LinesCodecError::MaxLineLengthExceeded => {
            Ok(Some(Err(format!("line longer than {MAX_LINE} bytes"))))
        }
        // The codec consumed the line before it checked the encoding.
        LinesCodecError::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            Ok(Some(Err("line is not UTF-8".into())))
        }
        LinesCodecError::Io(e) => Err(e),
    }
}

impl Decoder for ControlLines {
    type Item = LineItem;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<LineItem>, std::io::Error> {
        self.0.decode(buf).map_or_else(bad_line, |l| Ok(l.map(Ok)))
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<LineItem>, std::io::Error> {
        self.0
            .decode_eof(buf)
            .map_or_else(bad_line, |l| Ok(l.map(Ok)))
    }
}

/// How far this node's clock is ahead of its cluster's (ms), or `-` before
/// any peer's clock was measured.
fn clock_ahead(r: &multinode_lww::Replica) -> String {
    r.clock_offset()
        .map_or_else(|| "-".to_owned(), |o| o.ahead_ms.to_string())
}

fn faults_line(node: &Node) -> String {
    let (c, trace) = node.transport().counters();
    format!(
        "FAULTS sent={} dropped={} cut={} duplicated={} delayed={} reordered={} held={} \
         corrupted={} lost={} trace={trace:016x}",
        c.sent, c.dropped, c.cut, c.duplicated, c.delayed, c.reordered, c.held, c.corrupted, c.lost
    )
}

fn stats_line(node: &Node) -> String {
    let s = node.stats();
    let t = node.transport().stats();
    let (mut frames_sent, mut bytes_sent, mut frames_received, mut bytes_received, mut drops) =
        (0, 0, 0, 0, 0);
    for p in t.peers.values() {
        frames_sent += p.frames_sent;
        bytes_sent += p.bytes_sent;
        frames_received += p.frames_received;
        bytes_received += p.bytes_received;
        drops += p.drops.total();
    }
    let r = &s.replica;
    let (clock, clock_peers, limit, off, peer_max) = node.with_replica(|rep| {
        let worst = rep
            .peer_clock_offsets()
            .values()
            .copied()
            .max_by_key(|o| o.unsigned_abs());
        (
            clock_ahead(rep),
            rep.peer_clock_offsets().len(),
            rep.clock_limit_ms(),
            rep.clock_is_off().is_some(),
            worst.map_or_else(|| "-".to_owned(), |o| o.to_string()),
        )
    });
    format!(
        "STATS rounds={} frames_sent={frames_sent} bytes_sent={bytes_sent} \
         frames_received={frames_received} bytes_received={bytes_received} \
         entries_sent={} entries_applied={} transport_drops={drops} fault_drops={} \
         send_failed={} inbox_full={} resyncs={} retries={} rejected={} \
         clock_ahead_ms={clock} clock_peers={clock_peers} clock_limit_ms={limit} \
         clock_off={} peer_clock_max_ms={peer_max}",
        r.rounds,
        r.entries_sent,
        r.entries_applied,
        node.transport().kept_back(),
        s.send_failed,
        s.inbox_full,
        r.resyncs,
        r.retries,
        r.rejected,
        u8::from(off)
    )
}
