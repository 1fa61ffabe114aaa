//! The barrier protocol as a state machine: fed connections, lines,
//! disconnects, process exits and the time; polled for replies to send and
//! connections to close. No I/O, no clock, no tokio.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

use multinode_wire::{Label, NodeId, Reply, Request, Value};

pub(crate) use crate::config::Config;
pub(crate) use crate::summary::{NodeRecord, Summary};

/// Identifies one connection to the controller, assigned by the I/O layer.
pub(crate) type ConnId = u64;

/// Barriers one node may have outstanding at once (it gave up waiting on the
/// others locally, but the controller still counts its arrival).
const MAX_OUTSTANDING: usize = 16;

/// Connections that have not yet said who they are, beyond the cluster
/// size, that wait at once; a new one beyond that closes the oldest.
const MAX_UNIDENTIFIED_EXTRA: usize = 64;

/// Labels whose outcome is remembered, so a late arrival at a failed label
/// is still told it failed. The oldest outcomes are forgotten first.
const MAX_REMEMBERED: usize = 65_536;

/// What the I/O layer must do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Output {
    /// Write this line to the connection.
    Send(ConnId, Reply),
    /// Write these lines to the connection: a gather's `VALUE` lines, the
    /// same for every member, built once and shared, so a gather of N
    /// members makes N values, not N².
    SendAll(ConnId, std::sync::Arc<[Reply]>),
    /// Flush what was sent, then close the connection.
    Close(ConnId),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Slot {
    Vacant,
    Live(ConnId),
    /// Disconnected; may come back with `HELLO <id>`.
    Down,
    /// The process is gone for good (reported by the launcher).
    Exited(String),
    Left,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Barrier,
    Gather,
}

struct Pending {
    kind: Kind,
    deadline: Instant,
    /// Arrived slots, with the connection to answer and the gathered value.
    arrived: BTreeMap<u32, (ConnId, Option<Value>)>,
}

#[derive(Clone, Debug)]
enum Outcome {
    Passed,
    TimedOut(Vec<NodeId>),
    Failed(String),
}

pub(crate) struct Core {
    cfg: Config,
    slots: Vec<Slot>,
    /// Live connections, with the slot each is bound to once identified.
    conns: HashMap<ConnId, Option<u32>>,
    /// How many of `conns` are not bound to a slot yet.
    unidentified: usize,
    /// Slots in `Slot::Live`.
    live: usize,
    pending: BTreeMap<Label, Pending>,
    /// Slots that have not left: how many arrivals complete a barrier.
    members: usize,
    /// Slots in `Slot::Exited`: while any, every barrier fails at once.
    exited: usize,
    outcomes: HashMap<Label, Outcome>,
    remembered: VecDeque<Label>,
    /// Disconnects waiting for an exit status: (slot, when to give up).
    grace: Vec<(u32, Instant)>,
    summary: Summary,
    out: Vec<Output>,
}

impl Core {
    pub(crate) fn new(cfg: Config) -> Self {
        let n = cfg.nodes as usize;
        Self {
            cfg,
            slots: vec![Slot::Vacant; n],
            conns: HashMap::new(),
            unidentified: 0,
            live: 0,
            pending: BTreeMap::new(),
            members: n,
            exited: 0,
            outcomes: HashMap::new(),
            remembered: VecDeque::new(),
            grace: Vec::new(),
            summary: Summary {
                nodes: vec![NodeRecord::default(); n],
                ..Summary::default()
            },
            out: Vec::new(),
        }
    }

    pub(crate) fn nodes(&self) -> u32 {
        self.cfg.nodes
    }

    /// Replies and closes to carry out, in order.
    pub(crate) fn drain(&mut self) -> std::vec::Drain<'_, Output> {
        self.out.drain(..)
    }

    pub(crate) fn summary(&self) -> &Summary {
        &self.summary
    }

    /// Whether every member has left in order.
    pub(crate) fn all_left(&self) -> bool {
        self.slots.iter().all(|s| *s == Slot::Left)
    }

    /// The earliest moment [`Core::tick`] has work to do.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let barriers = self.pending.values().map(|p| p.deadline);
        let grace = self.grace.iter().map(|&(_, at)| at);
        barriers.chain(grace).min()
    }

    /// A new connection. It takes no slot until its first line identifies
    /// it (`HELLO`, or a barrier from a client that skips `HELLO`), but it
    /// counts as a possible member from now on. When every slot is live it
    /// is refused; when too many connections wait unidentified, the oldest
    /// of them is closed to make room.
    pub(crate) fn connect(&mut self, conn: ConnId) {
        let n = self.cfg.nodes;
        if self.live >= n as usize {
            return self.refuse(
                conn,
                format!("cluster full: {n} of {n} nodes are connected"),
            );
        }
        if self.unidentified >= n as usize + MAX_UNIDENTIFIED_EXTRA {
            let oldest = self
                .conns
                .iter()
                .filter(|(_, slot)| slot.is_none())
                .map(|(&c, _)| c)
                .min();
            if let Some(oldest) = oldest {
                // It holds no slot: its close fails nothing.
                self.refuse(
                    oldest,
                    "closed: too many connections waiting to identify themselves".into(),
                );
            }
        }
        self.conns.insert(conn, None);
        self.unidentified += 1;
    }

    /// A connection closed (or was dropped).
    ///
    /// A member's connection frees its slot, and fails every pending
    /// barrier (at once, or after the exit-status grace). A connection that
    /// closes before identifying itself fails the pending barriers when the
    /// connections left can no longer make up every member: it was one of
    /// them, and it can never arrive.
    pub(crate) fn disconnect(&mut self, conn: ConnId, now: Instant) {
        let Some(bound) = self.forget(conn) else {
            return;
        };
        let Some(slot) = bound else {
            let remaining = self.live + self.unidentified;
            if !self.pending.is_empty() && remaining < self.members {
                let members = self.members;
                self.fail_all_pending(&format!(
                    "a connection closed before identifying itself; \
                     {remaining} of {members} members remain connected"
                ));
            }
            return;
        };
        if self.slots[slot as usize] != Slot::Live(conn) {
            return;
        }
        self.set_slot(slot, Slot::Down);
        if self.pending.is_empty() {
            return;
        }
        if self.cfg.disconnect_grace.is_zero() {
            self.fail_all_pending(&format!("node {slot} disconnected"));
        } else {
            self.grace.push((slot, now + self.cfg.disconnect_grace));
        }
    }

    /// The process of node `node` exited (reported by a launcher): it can
    /// never arrive again, so every barrier waiting for it fails now and any
    /// later one fails at once.
    pub(crate) fn exited(&mut self, node: u32, cause: String) {
        let Some(slot) = self.slots.get(node as usize).cloned() else {
            return;
        };
        match slot {
            Slot::Left | Slot::Exited(_) => return,
            Slot::Live(conn) => {
                // Its socket closes any moment now; that event finds the
                // connection gone.
                self.conns.remove(&conn);
            }
            Slot::Vacant | Slot::Down => {}
        }
        self.grace.retain(|&(s, _)| s != node);
        self.set_slot(node, Slot::Exited(cause.clone()));
        self.fail_all_pending(&format!("node {node} {cause}"));
    }

    /// Expires deadlines and disconnect grace periods.
    pub(crate) fn tick(&mut self, now: Instant) {
        let expired: Vec<Label> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(l, _)| l.clone())
            .collect();
        for label in expired {
            let p = self.pending.remove(&label).expect("listed above");
            let missing: Vec<NodeId> = (0..self.cfg.nodes)
                .filter(|&s| self.slots[s as usize] != Slot::Left && !p.arrived.contains_key(&s))
                .map(|s| NodeId(u64::from(s)))
                .collect();
            for &(conn, _) in p.arrived.values() {
                self.out.push(Output::Send(
                    conn,
                    Reply::Timeout {
                        label: label.clone(),
                        missing: missing.clone(),
                    },
                ));
            }
            let ids: Vec<String> = missing.iter().map(ToString::to_string).collect();
            let why = format!("timed out waiting for node(s) {}", ids.join(","));
            self.finish(label, Outcome::TimedOut(missing), Some(why));
        }
        let due: Vec<u32> = self
            .grace
            .iter()
            .filter(|&&(_, at)| at <= now)
            .map(|&(s, _)| s)
            .collect();
        self.grace.retain(|&(_, at)| at > now);
        for slot in due {
            if self.slots[slot as usize] == Slot::Down {
                self.fail_all_pending(&format!("node {slot} disconnected"));
            }
        }
    }

    /// One line from a connection.
    pub(crate) fn line(&mut self, conn: ConnId, line: &str, now: Instant) {
        if !self.conns.contains_key(&conn) {
            return;
        }
        match line.parse::<Request>() {
            Err(e) => self.send(conn, Reply::Err(e.to_string())),
            Ok(Request::Hello(id)) => self.hello(conn, id),
            Ok(Request::Barrier(label)) => self.arrive(conn, label, Kind::Barrier, None, now),
            Ok(Request::Gather(label, value)) => {
                self.arrive(conn, label, Kind::Gather, Some(value), now)
            }
            Ok(Request::Leave) => self.leave(conn),
            Ok(Request::Fault(f)) => self.send(
                conn,
                Reply::Err(format!(
                    "{} refused: faults are not enabled in this run (start it with --faults)",
                    f.verb()
                )),
            ),
            Ok(other) => self.send(conn, Reply::Err(format!("unsupported request {other}"))),
        }
    }

    /// A line over the cap: refused, and the connection closed, since the
    /// rest of that line cannot be told from the next. The connection is
    /// gone from this moment: a member's slot is freed (it may come back
    /// with `HELLO <id>`) and its pending barriers fail, as on any
    /// disconnect.
    pub(crate) fn line_too_long(&mut self, conn: ConnId, max: usize, now: Instant) {
        if !self.conns.contains_key(&conn) {
            return;
        }
        self.disconnect(conn, now);
        self.out.push(Output::Send(
            conn,
            Reply::Err(format!("line longer than {max} bytes")),
        ));
        self.out.push(Output::Close(conn));
    }

    fn hello(&mut self, conn: ConnId, id: Option<NodeId>) {
        let nodes = self.cfg.nodes;
        if let Some(Some(bound)) = self.conns.get(&conn).copied() {
            if id.is_none_or(|id| id.0 == u64::from(bound)) {
                let node = NodeId(u64::from(bound));
                self.send(conn, Reply::Welcome { node, nodes });
            } else {
                self.send(
                    conn,
                    Reply::Err(format!("already identified as node {bound}")),
                );
            }
            return;
        }
        let slot = match id {
            None => match self.free_slot() {
                Some(s) => s,
                None => return self.refuse(conn, "no free node id".into()),
            },
            Some(NodeId(id)) if id >= u64::from(nodes) => {
                return self.refuse(conn, format!("node id {id} out of range 0..{nodes}"));
            }
            Some(NodeId(id)) => id as u32,
        };
        match self.slots[slot as usize] {
            Slot::Live(_) => self.refuse(conn, format!("node {slot} is already connected")),
            Slot::Left => self.refuse(conn, format!("node {slot} has left")),
            Slot::Vacant | Slot::Down | Slot::Exited(_) => {
                self.bind(conn, slot);
                let node = NodeId(u64::from(slot));
                self.send(conn, Reply::Welcome { node, nodes });
            }
        }
    }

    fn free_slot(&self) -> Option<u32> {
        let first = |want: fn(&Slot) -> bool| self.slots.iter().position(want);
        first(|s| *s == Slot::Vacant)
            .or_else(|| first(|s| matches!(s, Slot::Down | Slot::Exited(_))))
            .map(|s| s as u32)
    }

    /// Changes a slot's state, keeping the member and exit counts.
    fn set_slot(&mut self, slot: u32, state: Slot) {
        let old = std::mem::replace(&mut self.slots[slot as usize], state);
        let new = &self.slots[slot as usize];
        self.members =
            self.members + usize::from(old == Slot::Left) - usize::from(*new == Slot::Left);
        self.exited = self.exited + usize::from(matches!(new, Slot::Exited(_)))
            - usize::from(matches!(old, Slot::Exited(_)));
        self.live = self.live + usize::from(matches!(new, Slot::Live(_)))
            - usize::from(matches!(old, Slot::Live(_)));
    }

    fn bind(&mut self, conn: ConnId, slot: u32) {
        if self.conns.insert(conn, Some(slot)) == Some(None) {
            self.unidentified -= 1;
        }
        self.set_slot(slot, Slot::Live(conn));
        self.grace.retain(|&(s, _)| s != slot);
    }

    fn arrive(
        &mut self,
        conn: ConnId,
        label: Label,
        kind: Kind,
        value: Option<Value>,
        now: Instant,
    ) {
        let slot = match self.conns.get(&conn).copied().flatten() {
            Some(s) => s,
            // A client that never said HELLO (the reference protocol) gets
            // the lowest free id at its first barrier.
            None => match self.free_slot() {
                Some(s) => {
                    self.bind(conn, s);
                    s
                }
                None => return self.reject(conn, label, "no free node id"),
            },
        };
        match self.outcomes.get(&label) {
            Some(Outcome::Passed) => {
                return self.reject(conn, label, "already completed; labels are single-use");
            }
            Some(Outcome::TimedOut(missing)) => {
                let missing = missing.clone();
                return self.send(conn, Reply::Timeout { label, missing });
            }
            Some(Outcome::Failed(cause)) => {
                let cause = cause.clone();
                return self.send(conn, Reply::Failed { label, cause });
            }
            None => {}
        }
        let outstanding = self
            .pending
            .values()
            .filter(|p| p.arrived.contains_key(&slot))
            .count();
        if outstanding >= MAX_OUTSTANDING && !self.pending.contains_key(&label) {
            return self.reject(conn, label, "too many outstanding barriers for this node");
        }
        let timeout = self.cfg.timeout;
        let p = self
            .pending
            .entry(label.clone())
            .or_insert_with(|| Pending {
                kind,
                deadline: now + timeout,
                arrived: BTreeMap::new(),
            });
        if p.kind != kind {
            return self.reject(conn, label, "BARRIER and GATHER mixed on one label");
        }
        // Arriving again (a client that gave up and retried) just refreshes
        // which connection to answer.
        p.arrived.insert(slot, (conn, value));
        // The count only spares the scan when nobody has exited.
        let gone = (self.exited > 0)
            .then(|| {
                self.slots.iter().enumerate().find_map(|(i, s)| match s {
                    Slot::Exited(c) => Some((i, c.clone())),
                    _ => None,
                })
            })
            .flatten();
        if let Some((node, cause)) = gone {
            return self.fail(&label, &format!("node {node} {cause}"));
        }
        self.try_complete(&label);
    }

    fn leave(&mut self, conn: ConnId) {
        if let Some(Some(slot)) = self.conns.get(&conn).copied() {
            self.set_slot(slot, Slot::Left);
            self.grace.retain(|&(s, _)| s != slot);
            for p in self.pending.values_mut() {
                p.arrived.remove(&slot);
            }
            let labels: Vec<Label> = self.pending.keys().cloned().collect();
            for label in labels {
                self.try_complete(&label);
            }
        }
        self.forget(conn);
        self.out.push(Output::Send(conn, Reply::Bye));
        self.out.push(Output::Close(conn));
    }

    fn try_complete(&mut self, label: &Label) {
        let Some(p) = self.pending.get(label) else {
            return;
        };
        if self.members == 0 {
            self.pending.remove(label);
            return;
        }
        // Only members arrive (a slot that left has no arrivals), so a full
        // count means everyone is here.
        if p.arrived.len() < self.members {
            return;
        }
        let p = self.pending.remove(label).expect("checked above");
        // Every arrival at a GATHER label carries a value (mixed kinds are
        // refused before arriving).
        let values: Option<std::sync::Arc<[Reply]>> = (p.kind == Kind::Gather).then(|| {
            p.arrived
                .iter()
                .filter_map(|(&from, (_, v))| {
                    Some(Reply::Value {
                        label: label.clone(),
                        node: NodeId(u64::from(from)),
                        value: v.clone()?,
                    })
                })
                .collect()
        });
        for (&slot, &(conn, _)) in &p.arrived {
            if let Some(values) = &values {
                self.out
                    .push(Output::SendAll(conn, std::sync::Arc::clone(values)));
            }
            self.out.push(Output::Send(conn, Reply::Ok(label.clone())));
            self.summary.nodes[slot as usize].passed += 1;
        }
        self.finish(label.clone(), Outcome::Passed, None);
    }

    fn fail_all_pending(&mut self, cause: &str) {
        let labels: Vec<Label> = self.pending.keys().cloned().collect();
        for label in labels {
            self.fail(&label, cause);
        }
    }

    fn fail(&mut self, label: &Label, cause: &str) {
        let Some(p) = self.pending.remove(label) else {
            return;
        };
        for &(conn, _) in p.arrived.values() {
            self.out.push(Output::Send(
                conn,
                Reply::Failed {
                    label: label.clone(),
                    cause: cause.to_owned(),
                },
            ));
        }
        self.finish(
            label.clone(),
            Outcome::Failed(cause.to_owned()),
            Some(cause.to_owned()),
        );
    }

    fn finish(&mut self, label: Label, outcome: Outcome, failure: Option<String>) {
        if let Some(why) = failure {
            self.summary.failed += 1;
            for (slot, rec) in self.summary.nodes.iter_mut().enumerate() {
                if self.slots[slot] != Slot::Left && rec.first_failure.is_none() {
                    rec.first_failure = Some((label.clone(), why.clone()));
                }
            }
        } else {
            self.summary.passed += 1;
        }
        if self.remembered.len() >= MAX_REMEMBERED {
            if let Some(old) = self.remembered.pop_front() {
                self.outcomes.remove(&old);
            }
        }
        self.remembered.push_back(label.clone());
        self.outcomes.insert(label, outcome);
    }

    /// Refuses a request about `label` from one node only: the barrier
    /// itself goes on for the others.
    fn reject(&mut self, conn: ConnId, label: Label, why: &str) {
        self.send(
            conn,
            Reply::Failed {
                label,
                cause: why.to_owned(),
            },
        );
    }

    /// Refuses a connection that is not a member (it holds no slot): an
    /// `ERR` line, then close. Its close then fails nothing.
    fn refuse(&mut self, conn: ConnId, why: String) {
        self.forget(conn);
        self.out.push(Output::Send(conn, Reply::Err(why)));
        self.out.push(Output::Close(conn));
    }

    /// Drops a connection from the books: what it was bound to, if known.
    fn forget(&mut self, conn: ConnId) -> Option<Option<u32>> {
        let bound = self.conns.remove(&conn);
        if bound == Some(None) {
            self.unidentified -= 1;
        }
        bound
    }

    fn send(&mut self, conn: ConnId, reply: Reply) {
        self.out.push(Output::Send(conn, reply));
    }
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
