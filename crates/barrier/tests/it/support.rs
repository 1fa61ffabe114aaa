use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use multinode_barrier::{Config, Controller};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// A bound on any wait in these tests: far above what a pass needs, far
/// below the 30 s barrier deadline a hang would otherwise run into.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

pub(crate) async fn controller(nodes: u32, timeout: Duration) -> Controller {
    let mut cfg = Config::new(nodes);
    cfg.timeout = timeout;
    Controller::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), cfg)
        .await
        .expect("bind loopback")
}

/// A client that speaks raw lines, as a child in another language would.
pub(crate) struct Raw {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Raw {
    pub(crate) async fn connect(addr: SocketAddr) -> Self {
        let (r, w) = TcpStream::connect(addr)
            .await
            .expect("connect")
            .into_split();
        Self {
            reader: BufReader::new(r),
            writer: w,
        }
    }

    pub(crate) async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("write");
    }

    /// The next line, or `None` at end of stream; panics after [`PATIENCE`].
    pub(crate) async fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        let n = tokio::time::timeout(PATIENCE, self.reader.read_line(&mut line))
            .await
            .expect("no line within the patience bound")
            .ok()?;
        (n > 0).then(|| line.trim_end().to_owned())
    }
}

/// Polls `f` until it holds or [`PATIENCE`] runs out.
pub(crate) async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !f() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Writes an executable bash script into `dir`.
pub(crate) fn script(dir: &std::path::Path, name: &str, body: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/usr/bin/env bash\nset -u\n{body}")).expect("write script");
    path
}

/// The bash helper every script child sources: `say LINE`, `hear` (one
/// reply into $REPLY), joining the controller from the environment.
pub(crate) const BASH_CLIENT: &str = r#"
exec 3<>"/dev/tcp/${MULTINODE_BARRIER_ADDR%:*}/${MULTINODE_BARRIER_ADDR##*:}"
say() { printf '%s\n' "$1" >&3; }
hear() { IFS= read -r REPLY <&3; REPLY=${REPLY%$'\r'}; }
say "HELLO $MULTINODE_NODE_INDEX"; hear
"#;

/// Connects as `id`, retrying while the controller has not yet seen the
/// previous holder of that id go (bounded by [`PATIENCE`]).
pub(crate) async fn connect_when_free(
    addr: SocketAddr,
    id: multinode_wire::NodeId,
) -> multinode_barrier::BarrierNode {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match multinode_barrier::BarrierNode::connect(addr, Some(id)).await {
            Ok(node) => return node,
            Err(e) => assert!(Instant::now() < deadline, "cannot connect as {id}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
