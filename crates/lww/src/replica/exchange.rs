//! Anti-entropy: a round's opening digests (with recent writes riding
//! along), the syncs that answer them, the deltas they carry within the
//! byte budget, and how received entries and watermarks are taken in.

use std::collections::btree_map::Range;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound::{Excluded, Included};

use multinode_wire::{Beyond, LwwEntry, LwwMessage, NodeId, Timestamp};
use rand::RngExt;
use rand_chacha::ChaCha8Rng;

use super::beyond::{fingerprint_of, of_peer};
use super::origins::{Origins, side_by_side};
use super::{HOT_PUSH_MAX, HOT_ROUNDS, NO_DIGEST, Outgoing, Received, Replica, TS_MIN, before};

impl Replica {
    /// Opens an exchange with each of `peers`: a digest, or a sync when
    /// recent changes ride along with it (rumour mongering over
    /// anti-entropy: one lost message then delays them less).
    pub(super) fn open(&mut self, peers: Vec<NodeId>) -> Outgoing {
        if peers.is_empty() {
            return Outgoing::new();
        }
        let watermarks = self.digest();
        let beyond = self.beyond();
        let hot = self.hot(&watermarks, &beyond);
        let mut out = Outgoing::with_capacity(peers.len());
        for to in peers {
            let hot: Vec<LwwEntry> = match self.refused_above(to) {
                Some(limit) => hot
                    .iter()
                    .filter(|e| e.version.physical_ms <= limit)
                    .cloned()
                    .collect(),
                None => hot.clone(),
            };
            let m = if hot.is_empty() {
                LwwMessage::Digest {
                    era: self.era,
                    watermarks: watermarks.clone(),
                    sent_ms: self.now_ms,
                    beyond: beyond.clone(),
                }
            } else {
                LwwMessage::Sync {
                    reply: true,
                    era: self.era,
                    answers: NO_DIGEST,
                    watermarks: watermarks.clone(),
                    entries: hot,
                    partial: Vec::new(),
                    sent_ms: self.now_ms,
                    beyond: beyond.clone(),
                }
            };
            self.count_sent(&m);
            self.opened.insert(to, Some(self.now_ms));
            out.push((to, m));
        }
        out
    }

    /// Takes in a message from `from` at wall time `now_ms`.
    pub fn receive(&mut self, from: NodeId, msg: LwwMessage, now_ms: u64) -> Received {
        self.now_ms = self.now_ms.max(now_ms);
        self.stats.messages_received += 1;
        self.stats.bytes_received += msg.encoded_len() as u64;
        if let Some(d) = self.peers.get_mut(&from) {
            d.heartbeat(now_ms);
            let sent_ms = match &msg {
                LwwMessage::Digest { sent_ms, .. } | LwwMessage::Sync { sent_ms, .. } => *sent_ms,
            };
            let (me, bound) = (self.cfg.node, self.cfg.max_drift_ms);
            self.offsets.observe(me, from, sent_ms, now_ms, bound);
            let (LwwMessage::Digest { watermarks, .. } | LwwMessage::Sync { watermarks, .. }) =
                &msg;
            self.own_progress(Some((from, watermarks)));
        }
        let mut out = Received::default();
        match msg {
            LwwMessage::Digest {
                era,
                watermarks,
                beyond,
                ..
            } => {
                self.maybe_resync(&watermarks);
                let reply = self.sync(from, true, era, &watermarks, &beyond);
                self.remember_opener(from, era, watermarks);
                out.replies.push((from, reply));
            }
            LwwMessage::Sync {
                reply,
                era,
                answers,
                watermarks,
                entries,
                partial,
                beyond,
                ..
            } => {
                if reply && answers != NO_DIGEST {
                    if let Some(at) = self.opened.get_mut(&from).and_then(Option::take) {
                        let took = self.now_ms.saturating_sub(at);
                        let was = self.answer_ms.unwrap_or(took);
                        self.answer_ms = Some(was.saturating_mul(7).saturating_add(took) / 8);
                    }
                }
                // A closing sync (`reply` unset) lists only the watermarks
                // above the ones we answered with (see `sync`): too little
                // to start a resynchronisation from.
                let closing = !reply;
                let reset = !closing && self.maybe_resync(&watermarks);
                // Resynchronising, from a peer that has not seen what the
                // dropped entries were: what it holds may have been deleted
                // since. Its entries (and watermarks) wait until it has
                // caught up; the exchange goes on.
                let stale = match &self.resync {
                    None => false,
                    Some(r) if closing => match r.openers.get(&from) {
                        // The peer's watermarks are at least what its
                        // opener listed (in the same era): enough to show
                        // it caught up.
                        Some((opened_era, opened)) if *opened_era == era => {
                            let whole = at_least(&watermarks, opened);
                            !self.covers(&whole, &r.target, true)
                        }
                        _ => true,
                    },
                    Some(r) => !self.covers(&watermarks, &r.target, true),
                };
                if closing {
                    if let Some(r) = &mut self.resync {
                        r.openers.remove(&from);
                    }
                }
                let rejected = if stale {
                    self.stats.rejected += entries.len() as u64;
                    BTreeSet::new()
                } else {
                    self.apply(entries, &mut out.changes)
                };
                if answers == NO_DIGEST {
                    // A round opener: answer it as a digest.
                    let m = self.sync(from, true, era, &watermarks, &beyond);
                    self.remember_opener(from, era, watermarks);
                    out.replies.push((from, m));
                    return out;
                }
                if !reset && !stale && answers == self.era {
                    self.advance(&watermarks, &partial, &rejected);
                }
                if reply {
                    let m = self.sync(from, false, era, &watermarks, &beyond);
                    out.replies.push((from, m));
                }
            }
        }
        out
    }

    /// While resynchronising, keeps the watermarks a peer opened an
    /// exchange with until its closing sync (which lists only some) comes.
    fn remember_opener(&mut self, from: NodeId, era: u32, watermarks: Vec<Timestamp>) {
        if let Some(r) = &mut self.resync {
            r.openers.insert(from, (era, watermarks));
        }
    }

    /// Our watermark for ourselves: the clock, held below any write still
    /// being made durable, or (while resynchronising) what was pulled back.
    pub(super) fn own_watermark(&self) -> Option<Timestamp> {
        let me = self.cfg.node;
        if self.own_unknown.is_some() || self.resync.as_ref().is_some_and(|r| r.own_floor.is_some())
        {
            return self.watermarks.get(me);
        }
        Some(match self.inflight.first() {
            Some(t) => before(*t),
            None => self.clock.last(),
        })
    }

    fn digest(&mut self) -> Vec<Timestamp> {
        let me = self.cfg.node;
        match self.own_watermark() {
            Some(w) => self.watermarks.set(w),
            None => self.watermarks.remove(me),
        }
        self.watermarks.as_slice().to_vec()
    }

    /// The entries changed in the last few rounds, newest first, within an
    /// eighth of the delta budget and [`HOT_PUSH_MAX`].
    fn hot(&mut self, watermarks: &[Timestamp], beyond: &[Beyond]) -> Vec<LwwEntry> {
        let oldest = self.round.saturating_sub(HOT_ROUNDS);
        while self.hot.front().is_some_and(|(r, _, _)| *r < oldest) {
            self.hot.pop_front();
        }
        // An eighth of the budget: pushes duplicate what most peers have.
        let fixed = LwwMessage::sync_overhead(watermarks, beyond);
        let mut left = (self.cfg.delta_budget / 8).min(self.cfg.delta_budget.saturating_sub(fixed));
        let mut out = Vec::new();
        for (_, version, key) in self.hot.iter().rev() {
            let Some(e) = self.entries.get(key).filter(|e| e.version == *version) else {
                continue;
            };
            let len = e.encoded_len();
            if len > left || out.len() == HOT_PUSH_MAX {
                break;
            }
            left -= len;
            out.push(e.clone());
        }
        out
    }

    /// The physical time above which `peer` refuses a version (its clock
    /// plus the drift bound, by its last measured offset), if known.
    fn refused_above(&self, peer: NodeId) -> Option<u64> {
        let offset = self.offsets.of(peer)?;
        let theirs = self.now_ms.saturating_add_signed(offset);
        Some(theirs.saturating_add(self.cfg.max_drift_ms))
    }

    /// A sync for `to`, whose watermarks (of era `answers`) are `theirs`
    /// and whose `beyond` list is `their_beyond`.
    ///
    /// A closing sync (no `reply`: it answers `to`'s answer) lists only the
    /// watermarks above `to`'s, and ours for `to` itself: the others would
    /// move none of `to`'s, and in a settled cluster they are about half
    /// the list. Our watermark for `to` always goes, because a replica
    /// that does not know how far it had written counts the peers without
    /// one (see `own_progress`). Nor does it carry our `beyond` list: no
    /// sync answers it.
    fn sync(
        &mut self,
        to: NodeId,
        reply: bool,
        answers: u32,
        theirs: &[Timestamp],
        their_beyond: &[Beyond],
    ) -> LwwMessage {
        // Their lists come from the peer: walked beside ours, in origin
        // order, never scanned per origin.
        let theirs = Origins::of_peer(theirs);
        let their_beyond = of_peer(their_beyond);
        let mut watermarks = self.digest();
        let beyond = if reply { self.beyond() } else { Vec::new() };
        if !reply {
            watermarks = side_by_side(watermarks, theirs.iter().copied())
                .filter_map(|(o, mine, t)| mine.filter(|m| o == to || t.is_none_or(|t| *m > t)))
                .collect();
        }
        let fixed = LwwMessage::sync_overhead(&watermarks, &beyond);
        let room = self.cfg.delta_budget.saturating_sub(fixed);
        let refused_above = self.refused_above(to);
        let patience = self.patience();
        if patience == 0 {
            self.sent.clear();
        }
        let held = (self.sent).take(to, answers, &theirs, self.now_ms, patience);
        let upto = held.as_ref().map(|u| &u.upto);
        let delta = self.delta(&theirs, &their_beyond, upto, room, refused_above);
        let (entries, partial, ranges) = delta;
        if patience > 0 {
            (self.sent).put(to, answers, held, ranges, self.now_ms);
        }
        let m = LwwMessage::Sync {
            reply,
            era: self.era,
            answers,
            watermarks,
            entries,
            partial,
            sent_ms: self.now_ms,
            beyond,
        };
        self.count_sent(&m);
        m
    }

    /// The entries a peer with watermarks `theirs` (in origin order) lacks,
    /// but for the origins where it holds what we hold past its watermark
    /// (by its `beyond` list) and the ranges it was sent and has not
    /// confirmed (`held`, see `replica/unconfirmed.rs`), within `room`
    /// bytes: origins take turns, one entry each, from a seeded starting
    /// origin, so a large backlog of one origin never starves the others;
    /// entries past our own watermark at most [`RIDE_ALONG_MAX`] of them.
    /// An origin stops short (as at the budget) at its first version past
    /// `refused_above`: the peer would refuse it, and sending it again each
    /// round would cost bytes and change nothing.
    ///
    /// Returns the entries, the `partial` list, and each origin's range
    /// sent (ending at its last version sent), in origin order.
    fn delta(
        &mut self,
        theirs: &[Timestamp],
        their_beyond: &[Beyond],
        held: Option<&Origins>,
        room: usize,
        refused_above: Option<u64>,
    ) -> (Vec<LwwEntry>, Vec<Timestamp>, Vec<Timestamp>) {
        let mut cursors = Vec::new();
        let mut partial = Vec::new();
        // What a left-out range cannot vouch for: the peer's watermark of
        // the origin stays where it is (see `advance`).
        let not_past = |origin: NodeId, from: Option<Timestamp>, mine: Timestamp| {
            let at = from.unwrap_or(Timestamp {
                physical_ms: 0,
                logical: 0,
                node: origin,
            });
            at.min(mine)
        };
        // Everything held above their watermark: up to ours it completes a
        // range; past ours (writes pushed to us ahead of our watermark) it
        // rides along, vouched for by nothing, a few a sync.
        // Only the origins of which we hold something newer than their
        // watermark: in a settled cluster, none.
        let newest = self.newest.as_slice().iter().copied();
        for (origin, newest, from) in side_by_side(newest, theirs.iter().copied()) {
            let Some(newest) = newest.filter(|n| from.is_none_or(|f| *n > f)) else {
                continue;
            };
            let same = fingerprint_of(their_beyond, origin)
                .is_some_and(|theirs| theirs == self.fingerprint_past(origin, from));
            if same {
                continue;
            }
            // A range already sent and not yet confirmed is left out: what
            // goes starts past it, and vouches for nothing below it.
            let sent = held
                .and_then(|h| h.get(origin))
                .filter(|s| from.is_none_or(|f| *s > f));
            if let Some(sent) = sent {
                if let Some(mine) = self.watermarks.get(origin) {
                    partial.push(not_past(origin, from, mine));
                }
                if newest <= sent {
                    continue;
                }
            }
            let mine = self.watermarks.get(origin);
            let range = in_turn(
                &self.by_origin,
                origin,
                sent.or(from),
                mine,
                newest,
                &mut self.rng,
            );
            let plain = sent.is_none();
            cursors.push((origin, from, plain, range, None::<Timestamp>, mine));
        }
        let mut entries = Vec::new();
        let mut ranges = Vec::new();
        let room = room.saturating_sub(partial.len() * LwwMessage::MAX_PARTIAL_LEN);
        if cursors.is_empty() {
            partial.sort_unstable_by_key(|t| t.node);
            return (entries, partial, ranges);
        }
        // Each plain origin still open may yet be cut short and named in
        // `partial`: room for that stays set aside until it completes.
        let mut spent = 0;
        let mut turn = self.rng.random_range(0..cursors.len());
        let mut open = cursors.len();
        let mut open_plain = cursors.iter().filter(|c| c.2).count();
        let mut done = vec![false; cursors.len()];
        let mut rides = 0;
        while open > 0 {
            let i = turn % cursors.len();
            turn += 1;
            if done[i] {
                continue;
            }
            let (_, _, plain, range, last, mine) = &mut cursors[i];
            // Past our watermark (the range's tail) only while the
            // allowance lasts: what is sent up to it vouches all the same.
            let past = |v: &Timestamp| mine.is_none_or(|m| *v > m);
            let next = range
                .next()
                .filter(|((_, v), _)| rides < RIDE_ALONG_MAX || !past(v));
            let Some((&(_, version), key)) = next else {
                done[i] = true;
                open -= 1;
                open_plain -= usize::from(*plain);
                continue;
            };
            let e = &self.entries[key];
            let len = e.encoded_len();
            let refused = refused_above.is_some_and(|limit| version.physical_ms > limit);
            let set_aside = open_plain * LwwMessage::MAX_PARTIAL_LEN;
            if spent + len + set_aside > room || refused {
                done[i] = true;
                open -= 1;
                open_plain -= usize::from(*plain);
                // Cut short: this origin's range ends at the last entry
                // sent, and never past our own watermark.
                let (origin, from, plain, _, last, _) = &cursors[i];
                if let Some(mine) = self.watermarks.get(*origin).filter(|_| *plain) {
                    partial
                        .push(last.map_or_else(|| not_past(*origin, *from, mine), |l| l.min(mine)));
                }
                continue;
            }
            spent += len;
            // Past our watermark the range comes around: its end is the
            // newest sent (a hold on it, see `unconfirmed.rs`, may then
            // keep back a few ride-alongs not sent, within the patience).
            *last = (*last).max(Some(version));
            rides += usize::from(past(&version));
            entries.push(e.clone());
        }
        ranges.extend(cursors.iter().filter_map(|c| c.4));
        // In origin order, it packs tightest.
        partial.sort_unstable_by_key(|t| t.node);
        (entries, partial, ranges)
    }

    fn count_sent(&mut self, m: &LwwMessage) {
        self.stats.messages_sent += 1;
        self.stats.bytes_sent += m.encoded_len() as u64;
        if let LwwMessage::Sync { entries, .. } = m {
            self.stats.entries_sent += entries.len() as u64;
        }
    }

    /// Merges received entries; returns the origins some of whose entries
    /// were refused, whose watermarks must then not move.
    fn apply(&mut self, entries: Vec<LwwEntry>, changes: &mut Vec<LwwEntry>) -> BTreeSet<NodeId> {
        let limit = self.now_ms.saturating_add(self.cfg.max_drift_ms);
        let mut rejected = BTreeSet::new();
        let mut newest: Option<Timestamp> = None;
        for e in entries {
            self.stats.entries_received += 1;
            if e.version.physical_ms > limit {
                self.stats.rejected += 1;
                rejected.insert(e.version.node);
                continue;
            }
            newest = newest.max(Some(e.version));
            // Most of a burst arrives more than once: a copy only of what
            // changes the state.
            if self
                .entries
                .get(&e.key)
                .is_some_and(|cur| cur.version >= e.version)
            {
                continue;
            }
            if self.merge(e.clone()) {
                self.stats.entries_applied += 1;
                changes.push(e);
            }
        }
        if let Some(v) = newest {
            // Checked against the drift bound above: never refused.
            let _ = self.clock.observe(v, self.now_ms);
        }
        rejected
    }

    /// Moves watermarks up to a sync's (or its `partial` ones).
    fn advance(
        &mut self,
        theirs: &[Timestamp],
        partial: &[Timestamp],
        rejected: &BTreeSet<NodeId>,
    ) {
        let me = self.cfg.node;
        // Both lists come from the peer: walked side by side, in origin
        // order.
        let (theirs, partial) = (Origins::of_peer(theirs), Origins::of_peer(partial));
        let limit = self.now_ms.saturating_add(self.cfg.max_drift_ms);
        let own_pull = self.own_unknown.is_some()
            || self.resync.as_ref().is_some_and(|r| r.own_floor.is_some());
        let to = side_by_side(theirs.iter().copied(), partial.iter().copied());
        let to = to.filter_map(|(o, w, p)| {
            let w = w?;
            if rejected.contains(&o) || (o == me && !own_pull) {
                return None;
            }
            // A watermark past our clock plus the drift bound (a peer whose
            // clock is ahead) vouches for what we hold only up to that
            // bound: nothing of its origin past it was sent to us (the
            // sender stops there) or would have been taken. Moving that
            // far, not refusing the watermark outright, keeps the sender
            // from sending again each round what we already hold.
            let cap = Timestamp {
                physical_ms: limit,
                logical: u32::MAX,
                node: o,
            };
            Some(p.unwrap_or(w).min(cap))
        });
        let raised = self.watermarks.raise(to);
        if !raised.is_empty() {
            self.beyond = None;
        }
        for o in raised {
            if let Some(d) = self.peers.get_mut(&o) {
                d.heartbeat(self.now_ms);
            }
        }
        self.resync_progress();
        self.own_progress(None);
    }
}

/// Entries past our own watermark one sync carries at most. No range
/// vouches for them, so every replica that holds them sends them to every
/// peer that lacks their range, however many already have: in a burst of
/// writes, where most entries travel ahead of the watermarks that cover
/// them, each replica was sent the burst by every peer it exchanged with
/// until the watermarks caught up. The ranges bring them as watermarks
/// spread; these few keep moving what no range will bring (the entries of
/// an origin that pushed them and died).
const RIDE_ALONG_MAX: usize = 64;

/// One origin's entries in a sync's turn: past `start`, up to `mine` (our
/// watermark) in version order, then the ones held past it, up to
/// `newest`, from a seeded one on and around. With the ride-along
/// allowance spent partway, syncs to the same peer do not all carry the
/// same few past our watermark.
fn in_turn<'a>(
    index: &'a BTreeMap<(NodeId, Timestamp), String>,
    origin: NodeId,
    start: Option<Timestamp>,
    mine: Option<Timestamp>,
    newest: Timestamp,
    rng: &mut ChaCha8Rng,
) -> impl Iterator<Item = (&'a (NodeId, Timestamp), &'a String)> + 'a {
    type Part<'a> = Option<Range<'a, (NodeId, Timestamp), String>>;
    let lo = |t: Option<Timestamp>| match t {
        Some(t) => Excluded((origin, t)),
        None => Included((origin, TS_MIN)),
    };
    let end = Included((origin, newest));
    let head = mine
        .filter(|m| start.is_none_or(|s| *m > s))
        .map(|m| index.range((lo(start), Included((origin, m.min(newest))))));
    let (mut high, mut low): (Part<'a>, Part<'a>) = (None, None);
    if mine.is_none_or(|m| m < newest) {
        let past = lo(start.max(mine));
        let held = index.range((past, end)).count();
        let k = if held > 1 {
            rng.random_range(0..held)
        } else {
            0
        };
        match index.range((past, end)).nth(k) {
            Some((&(_, pivot), _)) if k > 0 => {
                high = Some(index.range((Included((origin, pivot)), end)));
                low = Some(index.range((past, Excluded((origin, pivot)))));
            }
            _ => high = Some(index.range((past, end))),
        }
    }
    let parts = [head, high, low];
    parts.into_iter().flatten().flatten()
}

/// A closing sync's watermarks (`listed`), completed for the origins it
/// left out by the ones the same peer opened the exchange with: a peer's
/// watermarks only move up within its era, so each is a lower bound.
fn at_least(listed: &[Timestamp], opened: &[Timestamp]) -> Vec<Timestamp> {
    let (listed, opened) = (Origins::of_peer(listed), Origins::of_peer(opened));
    side_by_side(listed.iter().copied(), opened.iter().copied())
        .filter_map(|(_, l, o)| l.max(o))
        .collect()
}
