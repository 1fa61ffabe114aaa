//! Barrier clients: async ([`BarrierNode`]) and blocking
//! ([`BlockingBarrierNode`]). Both match replies to the call in flight by
//! label, so a call that was dropped or timed out locally leaves nothing that
//! could be mistaken for the answer to the next one.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use multinode_wire::{
    BlockingReader, BlockingWriter, Fault, Label, LineCodec, NodeId, Reply, Request, Value,
};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::FramedWrite;

use crate::BarrierError;
use crate::identity::env_identity;
use crate::line_reader::LineReader;

/// Values gathered by a data-carrying barrier, one per node, by node id.
pub type Gathered = Vec<(NodeId, Value)>;

/// The call in flight: which reply answers it, and what it gathered so far.
struct Expect {
    label: Label,
    values: Gathered,
}

/// The most values a gather's list is sized for up front: the member count
/// is the controller's word, so it is a hint, not an allocation to trust.
const MAX_ROOM: u32 = 4096;

impl Expect {
    /// The call of `req` about `label`, by a client of `nodes` members: a
    /// gather makes room for every member's value at once.
    fn new(req: &Request, label: &Label, nodes: u32) -> Self {
        let room = match req {
            Request::Gather(..) => nodes.min(MAX_ROOM) as usize,
            _ => 0,
        };
        Self {
            label: label.clone(),
            values: Vec::with_capacity(room),
        }
    }

    /// Reads one line as a reply to this call (a `FAILED` line about a
    /// label of several words reads only when the label is known).
    fn parse(&self, line: &str) -> Result<Reply, BarrierError> {
        Reply::parse_about(line, &self.label).map_err(BarrierError::Wire)
    }

    /// Takes one reply; `Some` once the call is answered. Replies about
    /// other labels are answers to calls given up earlier: dropped.
    fn absorb(&mut self, reply: Reply) -> Option<Result<Gathered, BarrierError>> {
        if reply.label().is_some_and(|l| *l != self.label) {
            return None;
        }
        match reply {
            Reply::Ok(_) => Some(Ok(std::mem::take(&mut self.values))),
            Reply::Value { node, value, .. } => {
                // One value per node, kept in id order: a repeat replaces,
                // so the list stays bounded. The controller sends them in
                // id order, so each lands at the end: a gather of N nodes
                // costs N log N here, not N².
                if self.values.last().is_none_or(|(last, _)| *last < node) {
                    self.values.push((node, value));
                } else {
                    match self.values.binary_search_by_key(&node, |(n, _)| *n) {
                        Ok(at) => self.values[at].1 = value,
                        Err(at) => self.values.insert(at, (node, value)),
                    }
                }
                None
            }
            Reply::Timeout { label, missing } => {
                Some(Err(BarrierError::Timeout { label, missing }))
            }
            Reply::Failed { label, cause } => Some(Err(BarrierError::Failed { label, cause })),
            Reply::Err(reason) => Some(Err(BarrierError::Refused(reason))),
            _ => None,
        }
    }
}

fn parse_reply(line: &str) -> Result<Reply, BarrierError> {
    line.parse().map_err(BarrierError::Wire)
}

/// The answer to a conductor line: `OK <VERB> <report>` or `ERR`; other
/// replies answer calls given up earlier.
fn fault_reply(fault: &Fault, reply: Reply) -> Option<Result<String, BarrierError>> {
    match reply {
        Reply::Ok(label) => {
            let text = label.as_str();
            let (verb, report) = text.split_once(' ').unwrap_or((text, ""));
            (verb == fault.verb()).then(|| Ok(report.to_owned()))
        }
        Reply::Err(reason) => Some(Err(BarrierError::Refused(reason))),
        _ => None,
    }
}

fn welcome(reply: Reply) -> Option<Result<(NodeId, u32), BarrierError>> {
    match reply {
        Reply::Welcome { node, nodes } => Some(Ok((node, nodes))),
        Reply::Err(reason) => Some(Err(BarrierError::Refused(reason))),
        _ => None,
    }
}

/// An async barrier client: one member of the controller's cluster.
///
/// Cancellation-safe: dropping a call's future (or timing it out with
/// `tokio::time::timeout`) leaves the client usable, and the next call is
/// answered correctly.
pub struct BarrierNode {
    reader: LineReader<OwnedReadHalf>,
    writer: FramedWrite<OwnedWriteHalf, LineCodec>,
    node: NodeId,
    nodes: u32,
}

impl BarrierNode {
    /// Connects as node `id`, or with the id the controller assigns.
    pub async fn connect(addr: SocketAddr, id: Option<NodeId>) -> Result<Self, BarrierError> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (read, write) = stream.into_split();
        let mut reader = LineReader::new(read);
        let mut writer = FramedWrite::new(write, LineCodec::new());
        writer.send(Request::Hello(id)).await?;
        loop {
            let line = reader.next().await.ok_or(BarrierError::Closed)??;
            if let Some(res) = welcome(parse_reply(&line)?) {
                let (node, nodes) = res?;
                return Ok(Self {
                    reader,
                    writer,
                    node,
                    nodes,
                });
            }
        }
    }

    /// Connects with the identity a launcher put in the environment
    /// (`MULTINODE_BARRIER_ADDR`, `MULTINODE_NODE_INDEX`).
    pub async fn from_env() -> Result<Self, BarrierError> {
        let (addr, id) = env_identity()?;
        Self::connect(addr, Some(id)).await
    }

    /// This node's id.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// How many members each barrier waits for.
    pub fn nodes(&self) -> u32 {
        self.nodes
    }

    /// Waits until every member has reached `label`.
    pub async fn barrier(&mut self, label: &str) -> Result<(), BarrierError> {
        let label = Label::new(label)?;
        self.call(Request::Barrier(label.clone()), &label)
            .await
            .map(drop)
    }

    /// A barrier that also shares `value` (a listen address, say): returns
    /// every member's value, ordered by node id.
    pub async fn gather(&mut self, label: &str, value: &str) -> Result<Gathered, BarrierError> {
        let label = Label::new(label)?;
        let value = Value::new(value)?;
        self.call(Request::Gather(label.clone(), value), &label)
            .await
    }

    /// Leaves the cluster in order: later barriers no longer wait for us.
    pub async fn leave(mut self) -> Result<(), BarrierError> {
        self.writer.send(Request::Leave).await?;
        while let Some(line) = self.reader.next().await {
            if parse_reply(&line?)? == Reply::Bye {
                return Ok(());
            }
        }
        Err(BarrierError::Closed)
    }

    /// Asks the controller's conductor for a fault (`PARTITION 0,1 2`,
    /// `KILL 3`, ...; see [`Fault`]) and returns its report, the fault
    /// counters as `key=value` words. A run without faults enabled answers
    /// [`BarrierError::Refused`].
    pub async fn fault(&mut self, fault: &Fault) -> Result<String, BarrierError> {
        self.writer.send(Request::Fault(fault.clone())).await?;
        loop {
            let line = self.reader.next().await.ok_or(BarrierError::Closed)??;
            if let Some(res) = fault_reply(fault, parse_reply(&line)?) {
                return res;
            }
        }
    }

    async fn call(&mut self, req: Request, label: &Label) -> Result<Gathered, BarrierError> {
        let mut expect = Expect::new(&req, label, self.nodes);
        self.writer.send(req).await?;
        loop {
            // Each line read where it lies: a gather's N lines are parsed
            // without a copy of each.
            let read = self.reader.next_with(|line| expect.parse(line)).await;
            let reply = read.ok_or(BarrierError::Closed)???;
            if let Some(res) = expect.absorb(reply) {
                return res;
            }
        }
    }
}

/// A blocking barrier client on `std::net`, for code without an async runtime.
///
/// A call with a timeout that expires returns [`BarrierError::LocalTimeout`]
/// and leaves the client in sync for the next call.
pub struct BlockingBarrierNode {
    reader: BlockingReader<TcpStream, LineCodec>,
    /// The socket's read timeout as last set, to skip redundant syscalls.
    read_timeout: Option<Duration>,
    writer: BlockingWriter<TcpStream, LineCodec>,
    node: NodeId,
    nodes: u32,
}

impl BlockingBarrierNode {
    /// Connects as node `id`, or with the id the controller assigns.
    pub fn connect(addr: SocketAddr, id: Option<NodeId>) -> Result<Self, BarrierError> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        let mut writer = BlockingWriter::new(stream.try_clone()?, LineCodec::new());
        let mut reader = BlockingReader::new(stream, LineCodec::new());
        writer.send(Request::Hello(id))?;
        loop {
            let line = reader.read()?.ok_or(BarrierError::Closed)?;
            if let Some(res) = welcome(parse_reply(&line)?) {
                let (node, nodes) = res?;
                return Ok(Self {
                    reader,
                    read_timeout: None,
                    writer,
                    node,
                    nodes,
                });
            }
        }
    }

    /// Connects with the identity a launcher put in the environment.
    pub fn from_env() -> Result<Self, BarrierError> {
        let (addr, id) = env_identity()?;
        Self::connect(addr, Some(id))
    }

    /// This node's id.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// How many members each barrier waits for.
    pub fn nodes(&self) -> u32 {
        self.nodes
    }

    /// Waits until every member has reached `label`, or until `timeout`.
    pub fn barrier(&mut self, label: &str, timeout: Option<Duration>) -> Result<(), BarrierError> {
        let label = Label::new(label)?;
        self.call(Request::Barrier(label.clone()), &label, timeout)
            .map(drop)
    }

    /// A barrier that also shares `value`; returns every member's value.
    pub fn gather(
        &mut self,
        label: &str,
        value: &str,
        timeout: Option<Duration>,
    ) -> Result<Gathered, BarrierError> {
        let label = Label::new(label)?;
        let value = Value::new(value)?;
        self.call(Request::Gather(label.clone(), value), &label, timeout)
    }

    /// Leaves the cluster in order.
    pub fn leave(mut self) -> Result<(), BarrierError> {
        self.writer.send(Request::Leave)?;
        if self.read_timeout.is_some() {
            self.reader.get_mut().set_read_timeout(None)?;
        }
        while let Some(line) = self.reader.read()? {
            if parse_reply(&line)? == Reply::Bye {
                return Ok(());
            }
        }
        Err(BarrierError::Closed)
    }

    /// Asks the controller's conductor for a fault, waiting at most
    /// `timeout`; see [`BarrierNode::fault`].
    pub fn fault(
        &mut self,
        fault: &Fault,
        timeout: Option<Duration>,
    ) -> Result<String, BarrierError> {
        self.exchange(Request::Fault(fault.clone()), timeout, |line| {
            Ok(fault_reply(fault, parse_reply(line)?))
        })
    }

    fn call(
        &mut self,
        req: Request,
        label: &Label,
        timeout: Option<Duration>,
    ) -> Result<Gathered, BarrierError> {
        let mut expect = Expect::new(&req, label, self.nodes);
        self.exchange(req, timeout, |line| Ok(expect.absorb(expect.parse(line)?)))
    }

    /// Sends `req`, then reads lines into `absorb` until it has an answer or
    /// `timeout` passes.
    fn exchange<T>(
        &mut self,
        req: Request,
        timeout: Option<Duration>,
        mut absorb: impl FnMut(&str) -> Result<Option<Result<T, BarrierError>>, BarrierError>,
    ) -> Result<T, BarrierError> {
        self.writer.send(req)?;
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let left = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Err(BarrierError::LocalTimeout(timeout.unwrap_or_default())),
                },
                None => None,
            };
            if left != self.read_timeout {
                self.reader.get_mut().set_read_timeout(left)?;
                self.read_timeout = left;
            }
            match self.reader.read() {
                Ok(Some(line)) => {
                    if let Some(res) = absorb(&line)? {
                        return res;
                    }
                }
                Ok(None) => return Err(BarrierError::Closed),
                Err(e) if e.is_timeout() => {
                    return Err(BarrierError::LocalTimeout(timeout.unwrap_or_default()));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(label: &Label, node: u64, v: &str) -> Reply {
        Reply::Value {
            label: label.clone(),
            node: NodeId(node),
            value: Value::new(v).unwrap(),
        }
    }

    /// Values come back by node id whatever order they arrive in, and a
    /// repeat replaces the earlier value instead of growing the list.
    #[test]
    fn gathered_values_are_kept_by_id_and_a_repeat_replaces() {
        let label = Label::new("join").unwrap();
        let mut e = Expect::new(&Request::Barrier(label.clone()), &label, 0);
        for (node, v) in [(3, "c"), (0, "a"), (7, "x"), (3, "c2"), (1, "b")] {
            assert!(e.absorb(value(&label, node, v)).is_none());
        }
        let got = e.absorb(Reply::Ok(label.clone())).unwrap().unwrap();
        let got: Vec<(u64, &str)> = got.iter().map(|(n, v)| (n.0, v.as_str())).collect();
        assert_eq!(got, [(0, "a"), (1, "b"), (3, "c2"), (7, "x")]);
    }
}
