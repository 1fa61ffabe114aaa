//! The barrier core in virtual time: no sockets, and the clock read once
//! for an origin that every step offsets.

use std::time::Duration;

use super::*;

struct Harness {
    core: Core,
    t0: Instant,
    log: Vec<(ConnId, String)>,
}

impl Harness {
    fn new(nodes: u32) -> Self {
        let mut cfg = Config::new(nodes);
        cfg.timeout = Duration::from_secs(10);
        Self::with(cfg)
    }

    fn with(cfg: Config) -> Self {
        Self {
            core: Core::new(cfg),
            t0: Instant::now(),
            log: Vec::new(),
        }
    }

    fn at(&self, secs: u64) -> Instant {
        self.t0 + Duration::from_secs(secs)
    }

    fn pump(&mut self) {
        for o in self.core.drain() {
            match o {
                Output::Send(c, r) => self.log.push((c, r.to_string())),
                Output::SendAll(c, rs) => self.log.extend(rs.iter().map(|r| (c, r.to_string()))),
                Output::Close(c) => self.log.push((c, "<close>".into())),
            }
        }
    }

    fn connect(&mut self, conn: ConnId) {
        self.core.connect(conn);
        self.pump();
    }

    fn say(&mut self, conn: ConnId, line: &str, secs: u64) {
        let now = self.at(secs);
        self.core.line(conn, line, now);
        self.pump();
    }

    fn tick(&mut self, secs: u64) {
        let now = self.at(secs);
        self.core.tick(now);
        self.pump();
    }

    /// Connects `conn` as node `id` and drops the welcome.
    fn join(&mut self, conn: ConnId, id: u32) {
        self.connect(conn);
        self.say(conn, &format!("HELLO {id}"), 0);
        assert_eq!(self.take(conn).len(), 1, "a welcome");
    }

    /// Everything conn received since the last call.
    fn take(&mut self, conn: ConnId) -> Vec<String> {
        let (mine, rest) = self.log.drain(..).partition(|(c, _)| *c == conn);
        self.log = rest;
        mine.into_iter().map(|(_, l)| l).collect()
    }
}

#[test]
fn reference_clients_pass_with_assigned_ids() {
    let mut h = Harness::new(2);
    h.connect(1);
    h.connect(2);
    h.say(1, "BARRIER start", 0);
    assert!(h.take(1).is_empty(), "answered before everyone arrived");
    h.say(2, "BARRIER start", 1);
    assert_eq!(h.take(1), ["OK start"]);
    assert_eq!(h.take(2), ["OK start"]);
    assert_eq!(h.core.summary().nodes[0].passed, 1);
    assert_eq!(h.core.summary().nodes[1].passed, 1);
}

#[test]
fn a_timed_out_label_never_answers_ok() {
    let mut h = Harness::new(2);
    h.connect(1);
    h.connect(2);
    h.say(1, "HELLO 0", 0);
    h.take(1);
    h.say(1, "BARRIER x", 5);
    h.tick(14);
    assert!(
        h.take(1).is_empty(),
        "deadline runs from the first arrival, at 5 s"
    );
    h.tick(15);
    assert_eq!(h.take(1), ["TIMEOUT x missing=1"]);
    h.say(2, "BARRIER x", 16);
    assert_eq!(
        h.take(2),
        ["TIMEOUT x missing=1"],
        "a late arrival must not pass"
    );
    h.say(1, "BARRIER x", 17);
    assert_eq!(h.take(1), ["TIMEOUT x missing=1"]);
    assert_eq!(h.core.summary().failed, 1);
}

#[test]
fn a_lone_node_never_passes() {
    let mut h = Harness::new(2);
    h.connect(1);
    h.say(1, "BARRIER x", 0);
    assert_eq!(h.core.next_deadline(), Some(h.at(10)));
    h.tick(10);
    assert_eq!(h.take(1), ["TIMEOUT x missing=1"]);
}

#[test]
fn one_connection_too_many_is_refused() {
    let mut h = Harness::new(2);
    h.join(1, 0);
    h.join(2, 1);
    h.connect(3);
    assert_eq!(
        h.take(3),
        ["ERR cluster full: 2 of 2 nodes are connected", "<close>"]
    );
    h.say(3, "BARRIER x", 0);
    h.say(1, "BARRIER x", 0);
    assert!(
        h.take(3).is_empty() && h.take(1).is_empty(),
        "a refused connection counted"
    );
    h.say(2, "BARRIER x", 0);
    assert_eq!(h.take(1), ["OK x"]);
}

#[test]
fn idle_connections_take_no_slot() {
    // Three connections that never speak, opened before the members.
    let mut h = Harness::new(3);
    for squatter in 100..103 {
        h.connect(squatter);
    }
    for c in 0..3 {
        h.join(c, c as u32);
    }
    for c in 0..3 {
        h.say(c, "BARRIER x", 1);
    }
    for c in 0..3 {
        assert_eq!(h.take(c), ["OK x"]);
    }
    // Now every slot is live: the next connection is refused.
    h.connect(200);
    assert_eq!(
        h.take(200),
        ["ERR cluster full: 3 of 3 nodes are connected", "<close>"]
    );
}

#[test]
fn unidentified_connections_are_bounded_oldest_closed_first() {
    let mut h = Harness::new(1);
    let cap = 1 + MAX_UNIDENTIFIED_EXTRA as ConnId;
    for c in 0..cap {
        h.connect(c);
    }
    assert!(h.log.is_empty(), "{:?}", h.log);
    h.connect(cap);
    assert_eq!(
        h.take(0),
        [
            "ERR closed: too many connections waiting to identify themselves",
            "<close>"
        ]
    );
    h.say(cap, "HELLO", 0);
    assert_eq!(h.take(cap), ["WELCOME 0 1"], "the newest got in");
}

#[test]
fn a_member_that_dies_before_its_first_line_fails_the_pending_barrier() {
    let mut h = Harness::new(3);
    for c in 0..3 {
        h.connect(c);
    }
    h.say(0, "BARRIER x", 0);
    h.say(1, "BARRIER x", 0);
    h.core.disconnect(2, h.at(1));
    h.pump();
    let want = "FAILED x a connection closed before identifying itself; \
                2 of 3 members remain connected";
    assert_eq!(h.take(0), [want]);
    assert_eq!(h.take(1), [want]);
    // With nothing pending, an unidentified close fails nothing later.
    h.connect(3);
    h.core.disconnect(3, h.at(2));
    h.pump();
    assert!(h.log.is_empty(), "{:?}", h.log);
}

#[test]
fn an_extra_connection_that_closes_unidentified_fails_nothing() {
    let mut h = Harness::new(2);
    h.connect(9); // a probe, say
    h.join(0, 0);
    h.join(1, 1);
    h.say(0, "BARRIER x", 0);
    h.core.disconnect(9, h.at(1));
    h.pump();
    assert!(h.take(0).is_empty(), "two members are still connected");
    h.say(1, "BARRIER x", 1);
    assert_eq!(h.take(0), ["OK x"]);
}

#[test]
fn an_over_long_line_frees_the_slot_and_fails_the_pending_barrier() {
    let mut h = Harness::new(2);
    h.join(0, 0);
    h.join(1, 1);
    h.say(0, "BARRIER x", 0);
    h.core.line_too_long(1, 4096, h.at(1));
    h.pump();
    assert_eq!(h.take(1), ["ERR line longer than 4096 bytes", "<close>"]);
    assert_eq!(h.take(0), ["FAILED x node 1 disconnected"]);
    // The I/O layer reports the close afterwards: nothing more happens.
    h.core.disconnect(1, h.at(1));
    h.pump();
    assert!(h.log.is_empty(), "{:?}", h.log);
    // The node comes back under its id, and barriers pass again.
    h.connect(5);
    h.say(5, "HELLO 1", 2);
    assert_eq!(h.take(5), ["WELCOME 1 2"]);
    h.say(0, "BARRIER y", 2);
    h.say(5, "BARRIER y", 2);
    assert_eq!(h.take(0), ["OK y"]);
}

#[test]
fn identities_are_unique_and_in_range() {
    let mut h = Harness::new(2);
    h.connect(1);
    h.connect(2);
    h.say(1, "HELLO 1", 0);
    assert_eq!(h.take(1), ["WELCOME 1 2"]);
    h.say(2, "HELLO 1", 0);
    assert_eq!(h.take(2), ["ERR node 1 is already connected", "<close>"]);
    h.connect(3);
    h.say(3, "HELLO 2", 0);
    assert_eq!(h.take(3), ["ERR node id 2 out of range 0..2", "<close>"]);
    h.connect(4);
    h.say(4, "HELLO", 0);
    assert_eq!(h.take(4), ["WELCOME 0 2"]);
}

#[test]
fn a_disconnect_fails_every_pending_barrier_at_once() {
    let mut h = Harness::new(3);
    for c in 1..=3 {
        h.join(c, (c - 1) as u32);
    }
    h.say(1, "BARRIER x", 0);
    h.say(2, "BARRIER x", 0);
    // Node 1 (conn 2) dies while waiting: its arrival must not count.
    h.core.disconnect(2, h.at(1));
    h.pump();
    assert_eq!(h.take(1), ["FAILED x node 1 disconnected"]);
    h.say(3, "BARRIER x", 2);
    assert_eq!(h.take(3), ["FAILED x node 1 disconnected"]);
    let first = &h.core.summary().nodes[2].first_failure;
    assert_eq!(first.as_ref().map(|(l, _)| l.as_str()), Some("x"));
}

#[test]
fn a_node_may_come_back_between_barriers() {
    let mut h = Harness::new(2);
    h.connect(1);
    h.connect(2);
    h.say(1, "HELLO 0", 0);
    h.say(2, "HELLO 1", 0);
    h.say(1, "BARRIER a", 0);
    h.say(2, "BARRIER a", 0);
    h.take(1);
    h.take(2);
    h.core.disconnect(2, h.at(1)); // nothing pending: nothing fails
    h.say(1, "BARRIER b", 2);
    assert!(h.take(1).is_empty(), "b waits for node 1 to come back");
    h.connect(5);
    h.say(5, "HELLO 1", 3);
    assert_eq!(h.take(5), ["WELCOME 1 2"]);
    h.say(5, "BARRIER b", 3);
    assert_eq!(h.take(1), ["OK b"]);
    assert_eq!(h.take(5), ["OK b"]);
}

#[test]
fn leave_shrinks_the_set() {
    let mut h = Harness::new(3);
    for c in 0..3 {
        h.join(c, c as u32);
    }
    h.say(0, "BARRIER x", 0);
    h.say(1, "BARRIER x", 0);
    h.say(2, "LEAVE", 0);
    assert_eq!(h.take(2), ["BYE", "<close>"]);
    assert_eq!(h.take(0), ["OK x"], "the leaver no longer counts");
    assert!(!h.core.all_left());
    h.say(0, "LEAVE", 1);
    h.say(1, "LEAVE", 1);
    assert!(h.core.all_left());
}

#[test]
fn an_exited_node_fails_barriers_even_if_it_never_connected() {
    let mut h = Harness::new(3);
    h.connect(0);
    h.say(0, "HELLO 0", 0);
    h.take(0);
    h.core.exited(2, "killed by signal 9".into());
    h.say(0, "BARRIER x", 1);
    assert_eq!(h.take(0), ["FAILED x node 2 killed by signal 9"]);
}

#[test]
fn the_exit_status_wins_over_a_plain_disconnect_within_the_grace() {
    let mut cfg = Config::new(2);
    cfg.disconnect_grace = Duration::from_secs(1);
    let mut h = Harness::with(cfg);
    h.connect(0);
    h.connect(1);
    h.say(0, "HELLO 0", 0);
    h.say(1, "HELLO 1", 0);
    h.say(0, "BARRIER x", 0);
    h.take(0);
    h.core.disconnect(1, h.at(0));
    h.pump();
    assert!(h.take(0).is_empty(), "waits for the exit status");
    assert_eq!(h.core.next_deadline(), Some(h.at(1)));
    h.core.exited(1, "exited with status 3".into());
    h.pump();
    assert_eq!(h.take(0), ["FAILED x node 1 exited with status 3"]);

    // Without an exit report, the grace ends in a plain disconnect.
    let mut cfg = Config::new(2);
    cfg.disconnect_grace = Duration::from_secs(1);
    let mut h = Harness::with(cfg);
    h.connect(0);
    h.connect(1);
    h.say(0, "BARRIER y", 0);
    h.say(1, "HELLO", 0);
    h.take(0);
    h.core.disconnect(1, h.at(0));
    h.tick(1);
    assert_eq!(h.take(0), ["FAILED y node 1 disconnected"]);
}

#[test]
fn gather_shares_every_value_then_ok() {
    let mut h = Harness::new(2);
    h.connect(0);
    h.connect(1);
    h.say(1, "HELLO 1", 0);
    h.say(0, "HELLO 0", 0);
    h.take(0);
    h.take(1);
    h.say(1, "GATHER addrs b:2", 0);
    h.say(0, "GATHER addrs a:1", 0);
    let want = ["VALUE addrs 0 a:1", "VALUE addrs 1 b:2", "OK addrs"];
    assert_eq!(h.take(0), want);
    assert_eq!(h.take(1), want);
}

#[test]
fn labels_are_single_use_and_kinds_do_not_mix() {
    let mut h = Harness::new(1);
    h.connect(0);
    h.say(0, "BARRIER a", 0);
    assert_eq!(h.take(0), ["OK a"]);
    h.say(0, "BARRIER a", 0);
    assert_eq!(
        h.take(0),
        ["FAILED a already completed; labels are single-use"]
    );

    let mut h = Harness::new(2);
    h.connect(0);
    h.connect(1);
    h.say(0, "GATHER g v", 0);
    h.say(1, "BARRIER g", 0);
    assert_eq!(
        h.take(1),
        ["FAILED g BARRIER and GATHER mixed on one label"]
    );
    assert!(h.take(0).is_empty(), "the refusal is for that node only");
}

#[test]
fn bad_lines_get_err_and_the_node_carries_on() {
    let mut h = Harness::new(1);
    h.connect(0);
    for bad in ["JUMP", "BARRIER a ", "BARRIER", "", "HELLO x"] {
        h.say(0, bad, 0);
        let got = h.take(0);
        assert_eq!(got.len(), 1, "{bad:?}: {got:?}");
        assert!(got[0].starts_with("ERR "), "{bad:?}: {got:?}");
    }
    h.core.line_too_long(0, 4096, h.at(0));
    h.pump();
    assert_eq!(h.take(0), ["ERR line longer than 4096 bytes", "<close>"]);
}

#[test]
fn outstanding_barriers_per_node_are_bounded() {
    let mut h = Harness::new(2);
    h.connect(0);
    for i in 0..MAX_OUTSTANDING {
        h.say(0, &format!("BARRIER b{i}"), 0);
    }
    assert!(h.take(0).is_empty());
    h.say(0, "BARRIER one-more", 0);
    assert_eq!(
        h.take(0),
        ["FAILED one-more too many outstanding barriers for this node"]
    );
}
